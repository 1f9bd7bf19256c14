"""``LeadSequenceScheduler`` in one process: jobs mirror the graph state, due steps fire once, deferrals,
cancellations, retries, lock contention, downtime and leadership reach the job store."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from apscheduler.jobstores.redis import RedisJobStore

from ghl_real_estate_ai.errors import AuthenticationError, TransientIntegrationError
from ghl_real_estate_ai.sequence import parse_time
from ghl_real_estate_ai.services.lead_sequence_scheduler import JOB_FUNC_REF, fire_due_step
from ghl_real_estate_ai.testing.fakes import make_contact
from scheduling.support import START, Bot, wait_for

MakeBot = Callable[..., Any]


async def enroll(bot: Bot, *contact_ids: str, **contact: Any) -> None:
    for cid in contact_ids:
        bot.crm.add_contact(make_contact(cid, **contact))
        await bot.runner.enroll(cid)


def sent(bot: Bot, cid: str) -> list[str]:
    return [s.channel for s in bot.crm.sent_to(cid)]


async def seq(bot: Bot, cid: str) -> dict[str, Any]:
    return dict((await bot.runner.state(cid))["sequence"])


async def test_enroll_writes_one_deterministic_job_that_apscheduler_loads(
    make_bot: MakeBot, redis_url: str
) -> None:
    async with make_bot() as bot:
        await enroll(bot, "lead-1")
        await bot.runner.enroll("lead-1")  # a second enroll is skipped: still one job
        assert await bot.scheduler.jobs.count() == 1
        state = await seq(bot, "lead-1")
        job = await bot.scheduler.job_for("lead-1")
        assert job is not None
        assert (job.step, job.due_at, job.attempt) == ("day_3", state["next_due_at"], 0)
        assert job.run_at == bot.timebase.to_real(parse_time(state["next_due_at"]))

        # What APScheduler itself reads back from the same keys.
        import redis

        store = RedisJobStore(
            jobs_key=bot.scheduler.jobs.jobs_key,
            run_times_key=bot.scheduler.jobs.run_times_key,
            connection_pool=redis.ConnectionPool.from_url(redis_url),
        )
        loaded = store.lookup_job("lead:lead-1")
        store.shutdown()
        assert loaded.func is fire_due_step and loaded.func_ref == JOB_FUNC_REF
        assert loaded.args == ("test", "lead-1", "day_3", state["next_due_at"], 0)
        assert loaded.misfire_grace_time is None and loaded.coalesce is True
        assert loaded.next_run_time == job.run_at


async def test_due_steps_fire_once_each_and_the_job_follows_the_state(make_bot: MakeBot) -> None:
    async with make_bot(scale=864_000) as bot:  # ten virtual days per real second
        await enroll(bot, "a", "b", "c")
        await bot.scheduler.start()
        await wait_for(lambda: all(len(bot.crm.sent_to(c)) == 4 for c in "abc"), within=15, message="day_30")
        await bot.scheduler.stop()  # stops firing; the hooks of runs in flight have finished
        for cid in "abc":
            assert sent(bot, cid) == ["sms", "call", "email", "sms"]
            state = await seq(bot, cid)
            assert state["next_step"] == "nurture"
            job = await bot.scheduler.job_for(cid)
            assert job is not None and (job.step, job.due_at) == ("nurture", state["next_due_at"])
        assert bot.scheduler.stats["fired"] >= 12
        assert bot.scheduler.stats["failed"] == 0


async def test_quiet_hours_deferral_moves_the_job(make_bot: MakeBot) -> None:
    async with make_bot(scale=21_600) as bot:  # six virtual hours per real second
        await enroll(bot, "lead-1")
        # The lead moved to Tokyo before day_3 fired: 15:00 UTC is midnight there, inside quiet hours.
        bot.crm.contacts["lead-1"]["timezone"] = "Asia/Tokyo"
        await bot.scheduler.start()

        async def deferred() -> bool:
            timeline = (await bot.runner.state("lead-1")).get("timeline", [])
            return any(e["outcome"] == "deferred" for e in timeline)

        await wait_for(deferred, message="the deferral")
        state = await bot.runner.state("lead-1")
        entry = next(e for e in state["timeline"] if e["outcome"] == "deferred")
        until = entry["detail"]["until"]
        assert parse_time(until) == START.replace(hour=23)  # 08:00 in Tokyo

        async def job_moved() -> bool:  # the state is checkpointed just before the hook runs
            job = await bot.scheduler.job_for("lead-1")
            return job is not None and job.due_at == until

        await wait_for(job_moved, message="the job to move")
        job = await bot.scheduler.job_for("lead-1")
        assert job is not None and job.step == "day_3"
        assert job.due_at == state["sequence"]["next_due_at"] == until
        assert job.run_at == bot.timebase.to_real(parse_time(until))
        assert sent(bot, "lead-1") == []
        await wait_for(lambda: sent(bot, "lead-1") == ["sms"], message="the deferred send")
        assert bot.crm.sent_to("lead-1")[0].at >= parse_time(until)


async def test_cancel_opt_out_and_pause_remove_the_job(make_bot: MakeBot) -> None:
    async with make_bot() as bot:
        await enroll(bot, "cancelled", "opted-out", "paused")
        assert await bot.scheduler.jobs.count() == 3
        await bot.runner.dispatch("cancelled", {"type": "cancel", "source": "operator"})
        await bot.runner.dispatch("opted-out", {"type": "opt_out", "reason": "STOP", "source": "webhook"})
        await bot.runner.dispatch("paused", {"type": "pause", "source": "operator"})
        assert await bot.scheduler.job_for("cancelled") is None
        assert await bot.scheduler.job_for("opted-out") is None
        assert await bot.scheduler.job_for("paused") is None
        await bot.runner.dispatch("paused", {"type": "resume", "source": "operator"})
        job = await bot.scheduler.job_for("paused")
        assert job is not None and job.step == "day_3"
        # And a STOP reply through the conversation path removes it as well.
        await bot.runner.dispatch(
            "paused",
            {
                "type": "inbound_message",
                "text": "STOP",
                "channel": "sms",
                "message_id": "m-1",
                "source": "webhook",
            },
        )
        assert (await seq(bot, "paused"))["status"] == "opted_out"
        assert await bot.scheduler.job_for("paused") is None


async def test_a_pause_with_an_end_keeps_a_job_that_resumes_the_lead(make_bot: MakeBot) -> None:
    async with make_bot() as bot:
        await enroll(bot, "vacation")
        until = bot.timebase.now() + timedelta(days=2)
        await bot.runner.dispatch(
            "vacation", {"type": "pause", "until": until.isoformat(), "source": "operator"}
        )
        job = await bot.scheduler.job_for("vacation")
        assert job is not None and job.step == "resume"
        await bot.scheduler.start()

        async def resumed() -> bool:
            return (await seq(bot, "vacation"))["status"] == "active"

        await wait_for(resumed, message="the lead resumes when the pause ends")
        await bot.scheduler.stop()


async def test_transient_failures_retry_at_5_15_30_minutes_then_fail(
    make_bot: MakeBot, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_bot(scale=600) as bot:  # ten virtual minutes per real second
        await enroll(bot, "lead-1")
        bot.crm.attempts.clear()
        # Each scheduler attempt runs the node twice (the graph's own quick retry), so 4 attempts = 8 faults.
        bot.crm.fail_next(
            *(TransientIntegrationError("ghl", "get contact", "503", status=503) for _ in range(8))
        )
        with caplog.at_level(logging.WARNING, logger="ghl_real_estate_ai.services.lead_sequence_scheduler"):
            await bot.scheduler.start()
            await wait_for(lambda: bot.scheduler.stats["failed"] == 1, within=20, message="the failure")
            await wait_for(lambda: _status(bot, "lead-1", "failed"), message="status failed")
        times = [at for name, _, at in bot.crm.attempts if name == "get_contact"]
        assert len(times) == 8
        attempts = [times[i : i + 2] for i in range(0, 8, 2)]
        for ((_, end), (start, _)), delay in zip(itertools.pairwise(attempts), (5, 15, 30), strict=True):
            gap = start - end
            assert timedelta(minutes=delay) <= gap < timedelta(minutes=delay + 2), gap
        state = await bot.runner.state("lead-1")
        assert state["sequence"]["status"] == "failed"
        last = state["timeline"][-1]
        assert last["outcome"] == "failed"
        assert "day_3 failed after 4 attempts" in last["reason"] and "503" in last["reason"]
        assert bot.scheduler.stats["retried"] == 3

        async def cleaned_up() -> bool:  # the failed run's hook removes the job and the retry record
            return (
                await bot.scheduler.job_for("lead-1") is None
                and await bot.scheduler.retries.get("lead-1") is None
            )

        await wait_for(cleaned_up, message="the job and retry record to go")
        assert sent(bot, "lead-1") == []
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "lead-1" in r.getMessage()]
        assert errors and "marked failed" in errors[0].getMessage()


def _status(bot: Bot, cid: str, status: str) -> Any:
    async def check() -> bool:
        return (await seq(bot, cid)).get("status") == status

    return check()


async def test_a_permanent_error_fails_at_once(make_bot: MakeBot) -> None:
    async with make_bot(scale=600) as bot:
        await enroll(bot, "lead-1")
        bot.crm.fail_next(AuthenticationError("ghl", "get contact", "token revoked", status=401))
        await bot.scheduler.start()
        await wait_for(lambda: bot.scheduler.stats["failed"] == 1, message="the failure")
        await wait_for(lambda: _status(bot, "lead-1", "failed"), message="status failed")
        state = await bot.runner.state("lead-1")
        assert (
            "day_3 failed: ghl get contact failed (HTTP 401): token revoked"
            in state["timeline"][-1]["reason"]
        )
        assert bot.scheduler.stats["retried"] == 0


async def test_the_attempt_count_survives_a_restart_and_a_lost_job(make_bot: MakeBot) -> None:
    faults = [TransientIntegrationError("ghl", "get contact", "503", status=503) for _ in range(8)]
    async with make_bot(scale=600) as bot:
        await enroll(bot, "lead-1")
        bot.crm.fail_next(*faults[:2])
        await bot.scheduler.start()
        await wait_for(lambda: bot.scheduler.stats["retried"] == 1, message="the first retry")
        await bot.scheduler.stop()
        record = await bot.scheduler.retries.get("lead-1")
        assert record is not None and record.attempts == 1
        await bot.scheduler.jobs.remove("lead-1")  # and the retry job is lost too
        crm = bot.crm
        crm.attempts.clear()
    async with make_bot(scale=600, crm=crm) as again:  # a new process: nothing in memory carries over
        crm.fail_next(*faults[2:])
        await again.scheduler.start()  # becoming leader reconciles: the job comes back with attempt 1
        await wait_for(lambda: again.scheduler.stats["failed"] == 1, within=20, message="the failure")
        await wait_for(lambda: _status(again, "lead-1", "failed"), message="status failed")
        state = await again.runner.state("lead-1")
        assert "day_3 failed after 4 attempts" in state["timeline"][-1]["reason"]
        assert again.scheduler.stats["retried"] == 2
        assert len([a for a in crm.attempts if a[0] == "get_contact"]) == 6


async def test_a_busy_lead_is_tried_again_after_a_lock_timeout(make_bot: MakeBot) -> None:
    async with make_bot(scale=2, lock_wait=0.05, lock_retry_seconds=0.05) as bot:
        await enroll(bot, "lead-1")
        token = await bot.lock.acquire("lead-1")  # e.g. a long webhook turn in another process
        await bot.scheduler.start()
        await wait_for(lambda: bot.scheduler.stats["lock_timeouts"] >= 2, message="lock timeouts")
        assert sent(bot, "lead-1") == []
        assert await bot.lock.release("lead-1", token)
        await wait_for(lambda: sent(bot, "lead-1") == ["sms"], message="the send")
        await asyncio.sleep(0.2)
        assert sent(bot, "lead-1") == ["sms"]


async def test_steps_due_during_downtime_run_once_when_the_scheduler_returns(make_bot: MakeBot) -> None:
    scale = 3 * 86_400  # day_7 comes due 4/3 s after enrollment
    async with make_bot(scale=scale) as bot:
        await enroll(bot, "lead-1")
        await bot.scheduler.start()
        await wait_for(lambda: sent(bot, "lead-1") == ["sms"], message="day_3")
        await bot.scheduler.stop()
        crm = bot.crm
        due = parse_time((await seq(bot, "lead-1"))["next_due_at"])
        # Stay down until day_7 is overdue by more than APScheduler's default 1 s misfire grace time.
        await asyncio.sleep(bot.timebase.real_delay(due) + 1.3)
    async with make_bot(scale=scale, crm=crm) as again:
        back = again.timebase.now()
        assert back > due + again.timebase.virtual_delta(1.2)
        await again.scheduler.start()
        await wait_for(lambda: sent(again, "lead-1")[:2] == ["sms", "call"], message="the overdue day_7")
        await asyncio.sleep(0.1)
        assert [s.channel for s in crm.sent_to("lead-1")].count("call") == 1
        call = crm.sent_to("lead-1", "call")[0]
        assert call.at >= back


async def test_only_the_lease_holder_fires_and_a_follower_takes_over(make_bot: MakeBot) -> None:
    async with make_bot(scale=864_000) as first, make_bot(scale=864_000, crm=first.crm) as second:
        await enroll(first, *(f"lead-{i}" for i in range(5)))
        await first.scheduler.start()
        await second.scheduler.start()
        leads = [f"lead-{i}" for i in range(5)]
        await wait_for(
            lambda: all(len(first.crm.sent_to(c)) >= 2 for c in leads), within=15, message="sends"
        )
        fired = [b.scheduler.stats["fired"] for b in (first, second)]
        assert sorted(fired)[0] == 0, fired  # exactly one of them fired
        leader, follower = (first, second) if fired[0] else (second, first)
        await leader.scheduler.stop()  # releases the lease
        await wait_for(lambda: follower.scheduler.is_leader, within=5, message="the takeover")
        await wait_for(
            lambda: all(len(first.crm.sent_to(c)) >= 4 for c in leads), within=15, message="more"
        )
        assert follower.scheduler.stats["fired"] > 0
        for cid in leads:
            channels = [s.channel for s in first.crm.sent_to(cid)]
            assert channels[:4] == ["sms", "call", "email", "sms"]


async def test_reconcile_restores_lost_jobs_moves_wrong_ones_and_removes_orphans(make_bot: MakeBot) -> None:
    from ghl_real_estate_ai.services.lead_sequence_scheduler import LeadJob

    async with make_bot(scale=2) as bot:  # not started: nothing fires while the store is tampered with
        await enroll(bot, "a", "b", "c", "d", "e", "f")
        await bot.runner.dispatch("e", {"type": "cancel", "source": "operator"})
        jobs = bot.scheduler.jobs
        assert await jobs.remove("a") and await jobs.remove("b")  # lost mid-run (APScheduler removed them)
        c = await jobs.get("c")
        assert c is not None
        await jobs.put(LeadJob("c", c.step, c.due_at, 0, c.run_at + timedelta(hours=1)))  # wrong run time
        later = bot.timebase.to_real(bot.timebase.now() + timedelta(days=1))
        await jobs.put(LeadJob("e", "day_3", "2026-01-06T15:00:00Z", 0, later))  # lead was cancelled
        await jobs.put(LeadJob("ghost", "day_3", "2026-01-06T15:00:00Z", 0, later))  # never enrolled
        await bot.index.remove("f")  # a stale index: f keeps its job, and the index entry comes back

        report = await bot.scheduler.reconcile()
        assert (report.restored, report.moved, report.removed) == (2, 1, 2)
        assert report.overdue == 3  # a, b and c were due at enrollment: they run as soon as a leader fires
        assert report.index_repaired == 1
        assert await bot.index.get("f") is not None
        for cid in "abcdf":
            state = await seq(bot, cid)
            job = await jobs.get(cid)
            assert job is not None and (job.step, job.due_at) == (state["next_step"], state["next_due_at"])
            assert job.run_at == bot.timebase.to_real(parse_time(state["next_due_at"]))
        assert await jobs.get("e") is None and await jobs.get("ghost") is None

        again = await bot.scheduler.reconcile()
        assert (again.restored, again.moved, again.removed, again.state_reads) == (0, 0, 0, 0)
        assert again.checked == 5

        await bot.scheduler.start()  # the restored overdue steps run once
        await wait_for(lambda: all(sent(bot, cid) == ["sms"] for cid in "abcdf"), message="the overdue sends")
        assert sent(bot, "e") == []


async def test_reconcile_once_for_the_cli_keeps_the_service_clock(make_bot: MakeBot) -> None:
    from ghl_real_estate_ai.services.lead_sequence_scheduler import reconcile_once

    async with make_bot(scale=86_400) as bot:
        await enroll(bot, "a", "b")
        await bot.scheduler.jobs.remove("a")
        epoch = await bot.redis.hgetall("t:timebase")
        lines: list[str] = []
        # The CLI builds its own runner and clients; it passes no timebase, so the stored epoch is adopted.
        report = await reconcile_once(bot.runner, redis=bot.redis, index=bot.index, prefix="t", name="test",
                                      echo=lines.append)
        assert (report.restored, report.moved, report.removed) == (1, 0, 0)
        assert lines == [report.summary()] and lines[0].startswith("checked 2 leads: 1 jobs restored")
        after = await bot.redis.hgetall("t:timebase")
        assert {k: v for k, v in after.items() if k != b"high_water"} == {
            k: v for k, v in epoch.items() if k != b"high_water"
        }
        job = await bot.scheduler.job_for("a")
        assert job is not None and job.due_at == (await seq(bot, "a"))["next_due_at"]


async def test_a_step_lost_to_a_redis_outage_is_put_back_not_dropped(make_bot: MakeBot) -> None:
    # Redis went away mid-run: the step failed and the lead's state could not be read either. The job
    # (which APScheduler removed before running it) must come back, and the step must go out once.
    from redis.exceptions import ConnectionError as RedisConnectionError

    async with make_bot(scale=2, lock_retry_seconds=0.05) as bot:
        await enroll(bot, "lead-1")
        dispatch, state = bot.runner.dispatch, bot.runner.state
        outage = {"dispatch": 1, "state": 1}

        async def failing_dispatch(contact_id: str, event: Any) -> Any:
            if event.get("type") == "step_due" and outage["dispatch"]:
                outage["dispatch"] -= 1
                raise RedisConnectionError("Error 111 connecting to 127.0.0.1. Connection refused.")
            return await dispatch(contact_id, event)

        async def failing_state(contact_id: str) -> Any:
            if outage["state"] and not outage["dispatch"]:
                outage["state"] -= 1
                raise RedisConnectionError("Error 111 connecting to 127.0.0.1. Connection refused.")
            return await state(contact_id)

        bot.runner.dispatch, bot.runner.state = failing_dispatch, failing_state  # type: ignore[method-assign]
        await bot.scheduler.start()
        await wait_for(lambda: sent(bot, "lead-1") == ["sms"], message="day_3 after the outage")
        assert outage == {"dispatch": 0, "state": 0}

        async def day_7_scheduled() -> bool:  # the after-run hook writes it just after the send
            job = await bot.scheduler.job_for("lead-1")
            return job is not None and job.step == "day_7"

        await wait_for(day_7_scheduled, message="the day_7 job after the outage")
        assert sent(bot, "lead-1") == ["sms"]
