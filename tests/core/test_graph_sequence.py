"""The lead graph compiled with InMemorySaver: the timed sequence end to end on a virtual clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver

from ghl_real_estate_ai.agents.lead_bot import build_graph
from ghl_real_estate_ai.errors import TransientIntegrationError
from ghl_real_estate_ai.sandbox.simulation import Simulation
from ghl_real_estate_ai.sequence import QuietHours, is_allowed, iso, resolve_locale
from ghl_real_estate_ai.services.runner import LeadBotRunner
from ghl_real_estate_ai.testing.fakes import make_contact

# Monday 2026-03-02 10:00 in Austin (CST): the run crosses the DST change of 2026-03-08.
START = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def test_graph_has_the_contract_node_names() -> None:
    nodes = set(build_graph().compile().get_graph().nodes)
    assert {"determine_path", "day_3", "day_7", "day_14", "day_30", "stall_breaker", "nurture"} <= nodes


async def test_an_event_is_two_supersteps_with_the_plan_in_the_action() -> None:
    """The router's decision, then the action together with the next-step plan: each event adds four
    checkpoints (its input, the input applied, the router, the action) and the action's checkpoint
    already carries the next step (written with durability "sync", as a notebook steps through it)."""
    sim = Simulation(START, durability="sync")
    cid = sim.add_lead(make_contact("c-steps"))
    config = sim.runner.config(cid)
    await sim.enroll_all()
    await sim.run_until(START + timedelta(hours=1))  # day_3 runs at enrollment

    history = [snap async for snap in sim.graph.aget_state_history(config)]
    sources = [(snap.metadata or {}).get("source") for snap in reversed(history)]
    assert sources == ["input", "loop", "loop", "loop"] * 2  # enroll, then the due day_3
    latest = history[0]
    assert latest.next == ()
    seq = latest.values["sequence"]
    assert seq["completed"].keys() == {"day_3"}
    assert seq["next_step"] == "day_7"  # planned in the same superstep as the send
    assert seq["next_due_at"] == (START + timedelta(days=4)).isoformat().replace("+00:00", "Z")
    router = history[1]
    assert router.next == ("day_3",) and router.values["route"] == "day_3"


async def test_the_service_writes_one_checkpoint_per_event() -> None:
    """The runner's default durability ("exit"): each event's run leaves one checkpoint, the state after
    its action, the same state "sync" ends with."""
    sims = {mode: Simulation(START, durability=mode) for mode in ("exit", "sync")}
    ends = {}
    for mode, sim in sims.items():
        cid = sim.add_lead(make_contact("c-steps"))
        await sim.enroll_all()
        await sim.run_until(START + timedelta(hours=1))
        history = [snap async for snap in sim.graph.aget_state_history(sim.runner.config(cid))]
        if mode == "exit":
            assert len(history) == 2 and all(snap.next == () for snap in history)  # enroll, day_3
        ends[mode] = history[0].values
    assert sims["exit"].runner.durability == "exit" == Simulation(START).runner.durability
    assert ends["exit"]["sequence"] == ends["sync"]["sequence"]
    assert [e["action"] for e in ends["exit"]["timeline"]] == [e["action"] for e in ends["sync"]["timeline"]]


async def test_silent_lead_gets_the_whole_sequence_at_the_right_times(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-silent"))
    await sim.enroll_all()
    await sim.run_until(START + timedelta(days=150))

    touches = sim.crm.sent_to(cid)
    assert [(t.channel, (t.at - START).days) for t in touches] == [
        ("sms", 0),
        ("call", 4),
        ("email", 11),
        ("sms", 27),
        ("sms", 57),
        ("sms", 87),
        ("sms", 117),
        ("sms", 147),
    ]
    # Due times are anchored to enrollment: each touch is at the enrollment's time of day (UTC), and
    # never inside quiet hours in the lead's zone.
    locale = resolve_locale(QuietHours(), timezone="America/Chicago", state="TX", phone=None)
    for touch in touches:
        assert touch.at - START == timedelta(days=(touch.at - START).days)
        assert is_allowed(touch.at, locale)
    call = sim.voice.placed[0]
    assert call.metadata["metadata"] == {
        "ghl_contact_id": cid,
        "ghl_location_id": "loc-1",
        "sequence_step": "day_7",
        "lead_bot_send_key": f"{cid}|2026-03-02T16:00:00Z|day_7|0",  # matched by a read-back
    }
    state = await sim.state(cid)
    assert state["sequence"]["status"] == "nurture"
    assert set(state["sequence"]["completed"]) == {"day_3", "day_7", "day_14", "day_30"}
    assert state["sequence"]["nurture_sent"] == 4


async def test_steps_due_at_night_wait_for_the_leads_morning(checkpointer: BaseCheckpointSaver[Any]) -> None:
    # Enrolled at 02:30 UTC = 21:30 EST the evening before, for a Florida lead (window 08:00-20:00).
    start = datetime(2026, 1, 13, 2, 30, tzinfo=UTC)
    sim = Simulation(start, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-fl", timezone="America/New_York", state="FL", phone="+13055550100"))
    await sim.enroll_all()
    state = await sim.state(cid)
    assert state["sequence"]["next_due_at"] == "2026-01-13T13:00:00Z"  # 08:00 EST
    await sim.run_until(start + timedelta(days=40))
    eastern = ZoneInfo("America/New_York")
    for touch in sim.crm.sent_to(cid):
        local = touch.at.astimezone(eastern)
        assert 8 <= local.hour < 20, touch
    assert [t.channel for t in sim.crm.sent_to(cid)] == ["sms", "call", "email", "sms"]


async def test_lead_without_timezone_uses_the_area_code_and_without_phone_skips_sms(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    no_tz = sim.add_lead(make_contact("c-area", timezone=None, state=None, phone="+12065550100"))  # Seattle
    no_phone = sim.add_lead(make_contact("c-nophone", phone=None))
    await sim.enroll_all()
    await sim.run_until(START + timedelta(days=30))
    pacific = ZoneInfo("America/Los_Angeles")
    assert all(8 <= t.at.astimezone(pacific).hour < 20 for t in sim.crm.sent_to(no_tz))
    # No phone: SMS steps and the call are skipped with a reason; the email still goes.
    assert [t.channel for t in sim.crm.sent_to(no_phone)] == ["email"]
    timeline = (await sim.state(no_phone))["timeline"]
    reasons = {e["action"]: e["reason"] for e in timeline if e["outcome"] == "skipped"}
    assert reasons["day_3"] == "no phone number"
    assert reasons["day_7"] == "no phone number for the call"
    assert reasons["day_30"] == "no phone number"


async def test_no_email_falls_back_to_sms(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-noemail", email=None))
    await sim.enroll_all()
    await sim.run_until(START + 12 * DAY)
    assert [t.channel for t in sim.crm.sent_to(cid)] == ["sms", "call", "sms"]
    entry = [e for e in (await sim.state(cid))["timeline"] if e["action"] == "day_14"][-1]
    assert entry["outcome"] == "sent" and "falling back to SMS" in entry["reason"]


async def test_replayed_due_event_sends_nothing(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-replay"))
    await sim.enroll_all()
    await sim.run_until(START + timedelta(hours=1))
    assert len(sim.crm.sent_to(cid)) == 1
    for _ in range(3):
        await sim.dispatch(cid, {"type": "step_due", "step": "day_3"})
        await sim.dispatch(cid, {"type": "enroll"})
    assert len(sim.crm.sent_to(cid)) == 1
    # A job for the next step that fires early (or twice) sends nothing either.
    await sim.dispatch(cid, {"type": "step_due", "step": "day_7"})
    assert len(sim.crm.sent_to(cid)) == 1
    reasons = [e["reason"] for e in (await sim.state(cid))["timeline"] if e["outcome"] == "skipped"]
    assert any("already ran" in r for r in reasons)
    assert any("already enrolled" in r for r in reasons)
    assert any("not due until" in r for r in reasons)


async def test_lost_checkpoint_cannot_resend_thanks_to_the_send_key(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    """A crash after the send but before the checkpoint: the send key still stops a second text."""
    sim = Simulation(START, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-crash"))
    await sim.enroll_all()
    before = await sim.graph.aget_state(sim.runner.config(cid))
    await sim.run_until(START + timedelta(hours=1))
    assert len(sim.crm.sent_to(cid)) == 1
    # Roll the thread back to the checkpoint before day_3 ran (as if its checkpoint were lost).
    await sim.graph.ainvoke(
        {"contact_id": cid, "event": {"type": "step_due", "step": "day_3"}},
        before.config,
        context=sim.context,
    )
    assert len(sim.crm.sent_to(cid)) == 1
    assert any("send key" in e["reason"] for e in (await sim.state(cid))["timeline"])


async def test_pause_resume_cancel(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-ops"))
    await sim.enroll_all()
    await sim.run_until(START + DAY)
    await sim.dispatch(cid, {"type": "pause", "reason": "agent is talking to them"})
    state = await sim.state(cid)
    assert state["sequence"]["status"] == "paused" and state["sequence"]["next_due_at"] is None
    await sim.run_until(START + 20 * DAY)
    assert [t.channel for t in sim.crm.sent_to(cid)] == ["sms"]  # nothing while paused
    await sim.dispatch(cid, {"type": "resume"})
    # Resumed on day 20: day_7 and day_14 came due meanwhile. Nothing is dropped: the call goes now, the
    # email 24 hours later (no burst), and day_30 keeps its enrollment-anchored due time.
    state = await sim.state(cid)
    assert state["sequence"]["next_step"] == "day_7"
    await sim.run_until(START + 28 * DAY)
    assert [(t.channel, t.at - START) for t in sim.crm.sent_to(cid)] == [
        ("sms", timedelta(0)),
        ("call", 20 * DAY),
        ("email", 21 * DAY),
        ("sms", 27 * DAY),
    ]
    await sim.dispatch(cid, {"type": "cancel"})
    await sim.run_until(START + 120 * DAY)
    assert len(sim.crm.sent_to(cid)) == 4
    state = await sim.state(cid)
    assert state["sequence"]["status"] == "cancelled" and state["sequence"]["next_step"] is None
    # A cancelled lead can be enrolled again: a fresh sequence from day_3.
    await sim.dispatch(cid, {"type": "enroll"})
    await sim.run_until(START + 121 * DAY)
    assert [t.channel for t in sim.crm.sent_to(cid)][-1] == "sms" and len(sim.crm.sent_to(cid)) == 5


async def test_opt_out_stops_everything_for_good(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-out"))
    await sim.enroll_all()
    await sim.run_until(START + 5 * DAY)
    await sim.dispatch(cid, {"type": "opt_out", "reason": "operator: lead asked by phone"})
    await sim.run_until(START + 200 * DAY)
    assert [t.channel for t in sim.crm.sent_to(cid)] == ["sms", "call"]
    # DND and a tag were set in GHL; the lead cannot be resumed or re-enrolled.
    assert sim.crm.contacts[cid]["dndSettings"]["SMS"]["status"] == "active"
    assert "lead-bot-opted-out" in sim.crm.contacts[cid]["tags"]
    for event in ({"type": "resume"}, {"type": "enroll"}, {"type": "step_due", "step": "day_14"}):
        await sim.dispatch(cid, event)  # type: ignore[arg-type]
    await sim.run_until(START + 300 * DAY)
    assert len(sim.crm.sent_to(cid)) == 2
    assert (await sim.state(cid))["sequence"]["status"] == "opted_out"


async def test_dnd_set_in_ghl_is_respected_before_every_send(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-dnd", dnd_channels={"SMS": "active"}))
    await sim.enroll_all()
    await sim.run_until(START + 12 * DAY)
    # No SMS request is ever made for a contact whose SMS DND is on; the call and email still go.
    assert not [c for c in sim.crm.calls if c[0] == "send_sms"]
    assert [t.channel for t in sim.crm.sent_to(cid)] == ["call", "email"]
    skipped = [e for e in (await sim.state(cid))["timeline"] if e["action"] == "day_3"]
    assert skipped[-1]["reason"] == "SMS DND is active"


async def test_opt_out_tag_added_in_ghl_stops_the_next_step(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-tag"))
    await sim.enroll_all()
    await sim.run_until(START + DAY)
    sim.crm.contacts[cid]["tags"].append("do-not-contact")
    await sim.run_until(START + 60 * DAY)
    assert len(sim.crm.sent_to(cid)) == 1
    assert (await sim.state(cid))["sequence"]["status"] == "opted_out"


async def test_daily_cap_defers_the_fourth_automated_message(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-cap"))
    await sim.enroll_all()
    await sim.run_until(START + 10 * DAY)
    state = await sim.state(cid)
    # Pretend three automated messages went out in the last hours, then fire day_14 when due.
    recent = [(START + 11 * DAY - timedelta(hours=h)).isoformat().replace("+00:00", "Z") for h in (1, 2, 3)]
    await sim.graph.aupdate_state(
        sim.runner.config(cid), {"engagement": {**state["engagement"], "automated_sends": recent}}
    )
    sim.clock.set(START + 11 * DAY)
    await sim.dispatch(cid, {"type": "step_due", "step": "day_14"})
    state = await sim.state(cid)
    assert state["timeline"][-1]["outcome"] == "deferred" or state["timeline"][-2]["outcome"] == "deferred"
    assert len(sim.crm.sent_to(cid, "email")) == 0
    assert state["sequence"]["next_due_at"] == (START + 11 * DAY + timedelta(hours=21)).isoformat().replace(
        "+00:00", "Z"
    )


async def test_transient_send_error_raises_for_retry_and_releases_the_key(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-flaky"))
    await sim.enroll_all()
    failure = TransientIntegrationError("ghl", "send message", "HTTP 503", status=503)
    sim.crm.fail_next(failure, failure)  # both attempts of the node's retry policy
    with pytest.raises(TransientIntegrationError):
        await sim.dispatch(cid, {"type": "step_due", "step": "day_3"})
    assert sim.crm.sent_to(cid) == []
    # The step is still the next one; a later retry sends it exactly once.
    state = await sim.state(cid)
    assert state["sequence"]["next_step"] == "day_3"
    await sim.dispatch(cid, {"type": "step_due", "step": "day_3"})
    await sim.dispatch(cid, {"type": "step_due", "step": "day_3"})
    assert len(sim.crm.sent_to(cid)) == 1


async def test_under_a_compressed_clock_a_nodes_retry_waits_the_same_virtual_time() -> None:
    """LangGraph sleeps a node's retry interval in real time, and its jitter adds up to a real second: at
    86400 virtual seconds per second a send retried after one transient error went out 5 to 29 virtual
    hours later (seen outside-in: a day_7 call pushed past its window). Built for the service's scale, the
    retry waits 0.2 s of virtual time there, as it does at scale 1."""
    sim = Simulation(START)
    sim.graph = build_graph(time_scale=86400).compile(checkpointer=sim.checkpointer)
    sim.runner = LeadBotRunner(sim.graph, sim.context, durability="exit")
    cid = sim.add_lead(make_contact("c-flaky"))
    await sim.enroll_all()
    sim.crm.fail_next(TransientIntegrationError("ghl", "send message", "HTTP 503", status=503))
    started = time.monotonic()
    await sim.dispatch(cid, {"type": "step_due", "step": "day_3"})
    waited = time.monotonic() - started
    assert len(sim.crm.sent_to(cid)) == 1  # the node's own retry sent it
    assert waited < 0.15, f"the retry waited {waited:.2f} real s, {waited * 24:.1f} virtual hours"


async def test_contact_deleted_cancels(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-del"))
    await sim.enroll_all()
    del sim.crm.contacts[cid]
    await sim.run_until(START + DAY)
    state = await sim.state(cid)
    assert state["sequence"]["status"] == "cancelled"
    assert state["sequence"]["next_step"] is None


async def test_pause_until_resumes_by_itself(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-vacation"))
    await sim.enroll_all()
    await sim.run_until(START + DAY)
    until = START + 6 * DAY
    await sim.dispatch(cid, {"type": "pause", "until": until.isoformat().replace("+00:00", "Z")})
    state = await sim.state(cid)
    assert state["sequence"]["next_step"] == "resume"
    await sim.run_until(START + 6 * DAY + timedelta(hours=1))
    # Resumed on day 6: the overdue day_7 call goes right away, day_14 keeps its time.
    assert [(t.channel, (t.at - START).days) for t in sim.crm.sent_to(cid)] == [("sms", 0), ("call", 6)]
    assert (await sim.state(cid))["sequence"]["status"] == "active"


async def test_an_enrollment_that_waited_counts_its_days_from_when_it_was_accepted() -> None:
    """An enroll event applied two days after it was accepted (its worker was down): the cadence counts
    from the acceptance, the overdue day_3 goes at once, and day_7 keeps its day."""
    sim = Simulation(START)
    cid = sim.add_lead(make_contact("c-waited"))
    accepted = START - 2 * DAY
    values = await sim.dispatch(cid, {"type": "enroll", "source": "webhook", "at": iso(accepted)})
    seq = values["sequence"]
    assert seq["enrolled_at"] == iso(accepted)
    enroll_entry = values["timeline"][-1]
    assert enroll_entry["action"] == "enroll" and enroll_entry["at"] == iso(START)  # applied now
    assert enroll_entry["detail"] == {"accepted_at": iso(accepted)}
    await sim.run_until(START + timedelta(hours=1))
    assert [m.step for m in sim.crm.sent] == ["day_3"]  # overdue since acceptance: sent at once
    state = await sim.runner.state(cid)
    assert state["sequence"]["next_step"] == "day_7"
    # day_7 is due four days after day_3, which was due at the acceptance
    assert state["sequence"]["cadence_due_at"] == iso(accepted + 4 * DAY)
    # An "at" in the future (a clock ahead of this one) never moves the enrollment later than now.
    later = sim.add_lead(make_contact("c-future"))
    values = await sim.dispatch(later, {"type": "enroll", "at": iso(START + 5 * DAY)})
    assert values["sequence"]["enrolled_at"] == iso(sim.clock.now())
