"""The scheduler, the lead lock, the leader lease and the send ledger on a three-master Redis Cluster.

``redis_url`` is overridden here to a cluster node, so ``make_bot`` builds the whole in-process bot (graph
with the plain saver, runner, lock, ledger, lead index, scheduler with APScheduler) on cluster clients.
A script, MULTI or multi-key command whose keys fall in two slots fails there with ``CROSSSLOT``, and a
command sent to a node that does not own its key with ``MOVED``: running leads through their whole
sequence here catches either in any component a lead's run touches. Tests imported from the
single-server modules run unchanged on the cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.asyncio.cluster as acluster
import redis.cluster
from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError

from ghl_real_estate_ai.services.lead_sequence_scheduler import JOB_FUNC_REF, LeadJob, fire_due_step
from ghl_real_estate_ai.services.locks import RedisLeadLock
from ghl_real_estate_ai.services.send_ledger import RedisSendLedger
from scheduling import test_locks as locks_on_one_server
from scheduling import test_scheduler as scheduler_on_one_server
from scheduling.support import wait_for
from scheduling.test_scheduler import enroll, seq

# Tests of the single-server modules, collected again here, where ``redis_url`` names a cluster node.
test_release_is_compare_and_delete = locks_on_one_server.test_release_is_compare_and_delete
test_a_long_run_keeps_its_lock_through_renewal = (
    locks_on_one_server.test_a_long_run_keeps_its_lock_through_renewal
)
test_a_crashed_holders_lock_expires_after_its_ttl = (
    locks_on_one_server.test_a_crashed_holders_lock_expires_after_its_ttl
)
test_two_runners_racing_on_one_lead_never_overlap_and_never_double_send = (
    locks_on_one_server.test_two_runners_racing_on_one_lead_never_overlap_and_never_double_send
)
test_exactly_one_leader_and_a_clean_handover = (
    locks_on_one_server.test_exactly_one_leader_and_a_clean_handover
)
test_due_steps_fire_once_each_and_the_job_follows_the_state = (
    scheduler_on_one_server.test_due_steps_fire_once_each_and_the_job_follows_the_state
)
test_cancel_opt_out_and_pause_remove_the_job = (
    scheduler_on_one_server.test_cancel_opt_out_and_pause_remove_the_job
)
test_a_permanent_error_fails_at_once = scheduler_on_one_server.test_a_permanent_error_fails_at_once
test_only_the_lease_holder_fires_and_a_follower_takes_over = (
    scheduler_on_one_server.test_only_the_lease_holder_fires_and_a_follower_takes_over
)
test_reconcile_restores_lost_jobs_moves_wrong_ones_and_removes_orphans = (
    scheduler_on_one_server.test_reconcile_restores_lost_jobs_moves_wrong_ones_and_removes_orphans
)

MakeBot = Callable[..., Any]


@pytest.fixture
def redis_url(redis_cluster_url: str) -> str:
    return redis_cluster_url


@pytest.fixture
async def clients(redis_cluster_url: str) -> AsyncIterator[Callable[[], aioredis.Redis]]:
    """Separate cluster clients (as separate processes would have)."""
    made: list[acluster.RedisCluster] = []

    def new() -> aioredis.Redis:
        client = acluster.RedisCluster.from_url(redis_cluster_url)
        made.append(client)
        return client  # type: ignore[return-value]  # the same commands; the tests need no more

    yield new
    for client in made:
        await client.aclose()


async def test_the_bot_runs_on_cluster_clients(make_bot: MakeBot) -> None:
    async with make_bot() as bot:
        assert isinstance(bot.redis, acluster.RedisCluster)
        await enroll(bot, "lead-1")
        assert (await seq(bot, "lead-1"))["next_step"] == "day_3"


async def test_the_scheduler_keys_share_one_slot_and_leads_spread_over_the_masters(
    make_bot: MakeBot, redis_cluster_url: str
) -> None:
    async with make_bot() as bot:
        leads = [f"lead-{i}" for i in range(12)]
        await enroll(bot, *leads)
        jobs = bot.scheduler.jobs
        client = bot.redis
        slots = {
            await client.cluster_keyslot(k) for k in (jobs.jobs_key, jobs.run_times_key, jobs.retries_key)
        }
        assert len(slots) == 1
        # every lead's lock and checkpoint keys live where its own tag puts them: all three masters are used
        sync = redis.cluster.RedisCluster.from_url(redis_cluster_url)
        try:
            used = [n.name for n in sync.get_primaries() if sync.dbsize(target_nodes=n) > 0]
        finally:
            sync.close()
        assert len(used) == 3


async def test_apschedulers_own_store_reads_and_writes_the_job_table_on_the_cluster(
    make_bot: MakeBot, redis_cluster_url: str
) -> None:
    async with make_bot() as bot:
        await enroll(bot, "lead-1")
        state = await seq(bot, "lead-1")
        store = bot.scheduler.jobs.apscheduler_store(redis_cluster_url)
        try:
            assert isinstance(store.redis, redis.cluster.RedisCluster)
            loaded = store.lookup_job("lead:lead-1")
            assert loaded is not None and loaded.func is fire_due_step and loaded.func_ref == JOB_FUNC_REF
            assert loaded.args == ("test", "lead-1", "day_3", state["next_due_at"], 0)
            assert [j.id for j in store.get_all_jobs()] == ["lead:lead-1"]
            assert store.get_next_run_time() == loaded.next_run_time
            assert store.get_due_jobs(loaded.next_run_time - timedelta(seconds=1)) == []
            # due jobs leave the store in the script that reads them (hash and ZSET: one slot)
            due = store.get_due_jobs(loaded.next_run_time + timedelta(seconds=1))
            assert [j.id for j in due] == ["lead:lead-1"]
            assert (
                await bot.scheduler.jobs.get("lead-1") is None and await bot.scheduler.jobs.run_times() == {}
            )
            store.remove_job("lead:lead-1")  # what APScheduler does next: answered without Redis

            # APScheduler's writes (MULTI on the hash and the ZSET) go through on the cluster
            store.add_job(loaded)
            with pytest.raises(ConflictingIdError):
                store.add_job(loaded)
            moved = Job.__new__(Job)
            moved.__setstate__(
                {**loaded.__getstate__(), "next_run_time": loaded.next_run_time + timedelta(hours=1)}
            )
            store.update_job(moved)
            job = await bot.scheduler.jobs.get("lead-1")
            assert job is not None and job.run_at == loaded.next_run_time + timedelta(hours=1)
            store.remove_job("lead:lead-1")
            assert await bot.scheduler.jobs.get("lead-1") is None
            with pytest.raises(JobLookupError):
                store.remove_job("lead:lead-1")
            store.add_job(moved)
            assert (await bot.scheduler.jobs.run_times())["lead-1"] == moved.next_run_time.timestamp()
            store.remove_all_jobs()
            assert await bot.scheduler.jobs.count() == 0
        finally:
            store.shutdown()


async def test_job_table_scripts_and_transactions_on_the_cluster(make_bot: MakeBot) -> None:
    async with make_bot() as bot:
        jobs = bot.scheduler.jobs
        await enroll(bot, "a", "b")
        a = await jobs.get("a")
        assert a is not None
        later = LeadJob("a", a.step, a.due_at, 0, a.run_at + timedelta(hours=2))
        await jobs.put(later)  # MULTI
        assert (await jobs.get("a")) == later
        assert not await jobs.put_if_absent(later)  # script on jobs + run_times
        assert await jobs.drop("a") and await jobs.get("a") is None  # script on jobs + run_times + retries
        assert await jobs.put_unless_retrying(later)  # script on all three
        raw = (await jobs.all_raw())["a"]
        applied = await jobs.compare_and_set([("a", raw, b"", 0.0), ("b", b"wrong", b"", 0.0)])
        assert applied == [True, False]
        assert await jobs.remove("b") and await jobs.count() == 0


async def test_a_lock_renews_many_leads_on_different_masters_in_one_pipeline(
    clients: Callable[[], aioredis.Redis],
) -> None:
    client = clients()
    lock = RedisLeadLock(client, prefix="t", ttl_seconds=0.3)
    leads = [f"lead-{i}" for i in range(9)]
    slots = {await client.cluster_keyslot(lock.key(c)) for c in leads}  # type: ignore[attr-defined]
    assert len(slots) > 3
    tokens = [await lock.acquire(c) for c in leads]
    await asyncio.sleep(1.0)  # three TTLs: only the renewal pipeline keeps them
    for cid in leads:
        assert await client.pttl(lock.key(cid)) > 0
    assert lock.lost == []
    for cid, token in zip(leads, tokens, strict=True):
        assert await lock.release(cid, token)
    await lock.aclose()


async def test_the_send_ledger_on_the_cluster(clients: Callable[[], aioredis.Redis]) -> None:
    ledger = RedisSendLedger(clients(), prefix="t")
    keys = [f"lead-{i}:day_3" for i in range(9)]
    for key in keys:
        assert await ledger.claim(key, {"channel": "sms"})
        assert not await ledger.claim(key)
    await ledger.release(keys[0])  # a claim given back (compare-and-delete script)
    assert await ledger.get(keys[0]) is None
    await ledger.confirm(keys[1], {"channel": "sms"})
    await ledger.release(keys[1])  # a confirmed send is never released
    assert (await ledger.get(keys[1]) or {})["state"] == "sent"
    assert (await ledger.get(keys[2]) or {})["state"] == "claimed"


async def test_a_whole_sequence_with_replies_and_operator_actions_on_the_cluster(make_bot: MakeBot) -> None:
    """Every path a lead's runs take (enroll, due steps, an inbound reply, pause/resume, cancel) on the
    cluster: any cross-slot command in the graph, runner, hooks, index or scheduler fails here."""
    async with make_bot(scale=864_000) as bot:
        await enroll(bot, "quiet", "talker", "stopper")
        await bot.runner.dispatch(
            "talker",
            {
                "type": "inbound_message",
                "text": "What's my home worth?",
                "channel": "sms",
                "message_id": "m-1",
                "source": "webhook",
            },
        )
        await bot.runner.dispatch("stopper", {"type": "pause", "source": "operator"})
        await bot.runner.dispatch("stopper", {"type": "resume", "source": "operator"})
        await bot.scheduler.start()
        await wait_for(lambda: len(bot.crm.sent_to("quiet")) == 4, within=15, message="quiet's day_30")
        await bot.runner.dispatch("stopper", {"type": "cancel", "source": "operator"})
        await bot.scheduler.stop()
        assert [s.channel for s in bot.crm.sent_to("quiet")] == ["sms", "call", "email", "sms"]
        assert (await seq(bot, "quiet"))["next_step"] == "nurture"
        assert (await seq(bot, "stopper"))["status"] == "cancelled"
        assert await bot.scheduler.job_for("stopper") is None
        assert (await bot.index.get("stopper") or {})["status"] == "cancelled"
        history = [
            s async for s in bot.runner.graph.aget_state_history({"configurable": {"thread_id": "quiet"}})
        ]
        assert len(history) >= 5  # a checkpoint per run at least: enrollment and four steps
        # a job APScheduler took out just as the scheduler stopped is restored by the first pass; after it,
        # every job matches its lead's state
        await bot.scheduler.reconcile(deep=True)
        report = await bot.scheduler.reconcile(deep=True)
        assert (report.restored, report.moved, report.removed) == (0, 0, 0)
        assert report.checked == 3
        assert bot.scheduler.stats["failed"] == 0
