"""Sends whose answer never came: the step reads GHL or Retell back instead of guessing, on the graph with
the in-process fakes (the HTTP read-backs themselves are tested in tests/integrations/test_readback.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ghl_real_estate_ai.errors import OutcomeUnknownError
from ghl_real_estate_ai.sandbox.simulation import Simulation
from ghl_real_estate_ai.sequence import touch_key
from ghl_real_estate_ai.services.send_ledger import InMemorySendLedger
from ghl_real_estate_ai.testing.fakes import make_contact

START = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)  # Monday 10:00 in Austin
ENROLLED = "2026-03-02T16:00:00Z"


def lost(operation: str = "send SMS") -> OutcomeUnknownError:
    return OutcomeUnknownError("GHL", operation, "ReadTimeout after the request was sent")


def entries(state: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [e for e in state["timeline"] if e["action"] == action]


async def test_a_send_whose_answer_was_lost_is_confirmed_by_reading_back() -> None:
    sim = Simulation(START)
    cid = sim.add_lead(make_contact("c-lost"))
    sim.crm.lose_next_answer(lost())  # GHL took the text; its answer never came back
    await sim.enroll_all()
    await sim.run_until(START + timedelta(hours=1))
    assert len(sim.crm.sent_to(cid, "sms")) == 1  # not sent twice
    assert [c[0] for c in sim.crm.calls].count("find_sent_message") == 1
    (sent,) = entries(await sim.state(cid), "day_3")
    assert sent["outcome"] == "sent" and "read-back found it" in sent["reason"]
    assert sent["detail"]["confirmed_by"] == "read-back"
    assert sent["due_at"] == ENROLLED
    # The sequence goes on as after any send: the call four days later.
    await sim.run_until(START + timedelta(days=5))
    assert len(sim.voice.placed) == 1


async def test_a_send_that_never_reached_ghl_is_sent_once_more() -> None:
    sim = Simulation(START)
    cid = sim.add_lead(make_contact("c-never"))
    sim.crm.fail_next_send(lost())  # the connection dropped before GHL took it
    await sim.enroll_all()
    await sim.run_until(START + timedelta(hours=1))
    assert len(sim.crm.sent_to(cid, "sms")) == 1
    (sent,) = entries(await sim.state(cid), "day_3")
    assert sent["outcome"] == "sent" and "sent again" in sent["reason"]


async def test_an_outcome_nobody_can_tell_is_not_resent_and_says_so() -> None:
    sim = Simulation(START)
    cid = sim.add_lead(make_contact("c-unknown"))
    sim.crm.lookup_unknown = "GHL's message listing answered 500"
    sim.crm.fail_next_send(lost())
    await sim.enroll_all()
    await sim.run_until(START + timedelta(hours=1))
    assert sim.crm.sent_to(cid, "sms") == []  # at most once: no second try when GHL cannot tell
    (failed,) = entries(await sim.state(cid), "day_3")
    assert failed["outcome"] == "failed"
    assert "could not tell (GHL's message listing answered 500)" in failed["reason"]
    # The lead is not lost: the sequence goes on.
    sim.crm.lookup_unknown = None
    await sim.run_until(START + timedelta(days=5))
    assert len(sim.voice.placed) == 1


async def test_a_lost_answer_and_a_lost_resend_stop_at_two_attempts() -> None:
    sim = Simulation(START)
    cid = sim.add_lead(make_contact("c-twice"))
    sim.crm.fail_next_send(lost(), lost())  # neither request reached GHL, and neither answer came
    await sim.enroll_all()
    await sim.run_until(START + timedelta(hours=1))
    assert sim.crm.sent_to(cid, "sms") == []
    (failed,) = entries(await sim.state(cid), "day_3")
    assert failed["outcome"] == "failed" and "not sent a third time" in failed["reason"]


async def test_a_claim_left_by_a_crash_is_resolved_on_the_next_run() -> None:
    # The process died after claiming day_7's key: in one lead Retell had placed the call, in the other
    # the request never left. The restarted service's run reads Retell back and acts on what it finds.
    ledger = InMemorySendLedger()
    sim = Simulation(START, ledger=ledger)
    placed = sim.add_lead(make_contact("c-placed"))
    missing = sim.add_lead(make_contact("c-missing"))
    await sim.enroll_all()
    await sim.run_until(START + timedelta(days=3))
    for cid in (placed, missing):
        await ledger.claim(touch_key(cid, f"{ENROLLED}|day_7", 0), {"channel": "call"})
    await sim.voice.create_phone_call(
        "+15125550123",
        {"ghl_contact_id": placed, "ghl_location_id": "loc-1", "sequence_step": "day_7",
         "lead_bot_send_key": touch_key(placed, f"{ENROLLED}|day_7", 0)},
        {},
    )
    await sim.run_until(START + timedelta(days=5))
    calls = [c.metadata["metadata"]["ghl_contact_id"] for c in sim.voice.placed]
    assert sorted(calls) == sorted([placed, missing])  # one call each: none repeated, none lost
    (confirmed,) = entries(await sim.state(placed), "day_7")
    assert confirmed["outcome"] == "sent" and confirmed["detail"]["confirmed_by"] == "read-back"
    (sent,) = entries(await sim.state(missing), "day_7")
    assert sent["outcome"] == "sent" and "confirmed_by" not in sent.get("detail", {})


async def test_a_reply_whose_answer_was_lost_is_not_sent_twice() -> None:
    sim = Simulation(START)
    cid = sim.add_lead(make_contact("c-question"))
    await sim.enroll_all()
    await sim.run_until(START + timedelta(hours=1))
    before = len(sim.crm.sent_to(cid, "sms"))
    sim.crm.lose_next_answer(lost())
    event: Any = {"type": "inbound_message", "text": "Is the garage heated?", "channel": "sms",
                  "message_id": "m-1"}
    await sim.dispatch(cid, event)
    await sim.dispatch(cid, event)  # GHL redelivers the webhook: still one answer
    assert len(sim.crm.sent_to(cid, "sms")) == before + 1
    replies = entries(await sim.state(cid), "reply")
    assert replies and replies[0]["outcome"] == "sent" and "read-back found it" in replies[0]["reason"]


async def test_a_claim_from_before_read_backs_keeps_the_at_most_once_rule() -> None:
    # A claim written by an earlier version ({"state": "claimed"}, no time): nothing bounds a read-back.
    ledger = InMemorySendLedger()
    sim = Simulation(START, ledger=ledger)
    cid = sim.add_lead(make_contact("c-legacy"))
    ledger._entries[touch_key(cid, f"{ENROLLED}|day_3", 0)] = {"state": "claimed"}
    await sim.enroll_all()
    await sim.run_until(START + timedelta(hours=1))
    assert sim.crm.sent_to(cid, "sms") == []
    (failed,) = entries(await sim.state(cid), "day_3")
    assert failed["outcome"] == "failed" and "does not say when" in failed["reason"]
