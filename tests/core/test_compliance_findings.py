"""Regression tests for the four findings of the 10,000-lead compliance quarter (issue 18), judged by what
reached the in-process fakes, not by the bot's timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

from ghl_real_estate_ai.sandbox.simulation import Simulation
from ghl_real_estate_ai.sequence import QuietHours, is_allowed, next_allowed, resolve_locale
from ghl_real_estate_ai.testing.fakes import make_contact

START = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)  # 10:00 in Austin
DAY = timedelta(days=1)


def _inbound(text: str, message_id: str, channel: str = "sms") -> dict[str, Any]:
    return {"type": "inbound_message", "text": text, "channel": channel, "message_id": message_id}


async def _lead(sim: Simulation, cid: str = "c1", **contact: Any) -> str:
    sim.add_lead(make_contact(cid, **contact))
    await sim.dispatch(cid, {"type": "enroll"})
    await sim.run_until(sim.clock.now() + timedelta(hours=1))
    return cid


async def test_a_redelivered_home_value_request_gets_one_cma(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim, address="1402 S Congress Ave", postal_code="78704", city="Austin")
    ask = _inbound("what's my house worth?", "m-cma")
    await sim.dispatch(cid, ask)
    sim.clock.advance(timedelta(minutes=7))  # GHL redelivers the webhook minutes later
    await sim.dispatch(cid, ask)
    sim.clock.advance(timedelta(hours=5))
    await sim.dispatch(cid, ask)
    cmas = [s for s in sim.crm.sent_to(cid, "email") if "$" in (s.subject or "")]
    assert len(cmas) == 1
    assert cmas[0].step == "cma" and cmas[0].key == f"{cid}|cma|m-cma"


async def test_stall_breakers_after_a_second_question_are_sent(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    await sim.dispatch(cid, _inbound("Do any of them have a pool?", "q1"))
    await sim.run_until(sim.clock.now() + 7 * DAY)
    first = [s for s in sim.crm.sent_to(cid) if s.step == "stall_breaker"]
    assert len(first) == 3
    await sim.dispatch(cid, _inbound("And what about schools?", "q2"))
    asked = sim.clock.now()
    await sim.run_until(asked + 7 * DAY)
    second = [s for s in sim.crm.sent_to(cid) if s.step == "stall_breaker" and s.at > asked]
    assert [s.at - asked for s in second] == [2 * DAY, 4 * DAY, 6 * DAY]
    assert len({s.key for s in [*first, *second]}) == 6


async def test_an_email_opt_out_is_confirmed_by_email_not_sms(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    before = len(sim.crm.sent_to(cid))
    await sim.dispatch(cid, _inbound("Please unsubscribe me from these emails", "e1", channel="email"))
    after = sim.crm.sent_to(cid)[before:]
    assert [(s.channel, s.step) for s in after] == [("email", "opt_out_confirmation")]
    assert "unsubscribed" in after[0].body.lower()
    dnd = sim.crm.contacts[cid]["dndSettings"]
    assert dnd["SMS"]["status"] == "active" and dnd["Email"]["status"] == "active"
    assert (await sim.state(cid))["sequence"]["status"] == "opted_out"


async def test_an_opt_out_is_not_confirmed_on_a_channel_the_lead_lacks(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim, phone=None)  # email only: day_3 SMS was skipped
    await sim.dispatch(cid, _inbound("STOP", "s1", channel="sms"))
    assert sim.crm.sent_to(cid) == [] and sim.crm.refused == []
    assert (await sim.state(cid))["sequence"]["status"] == "opted_out"
    mail_only = await _lead(sim, "c2", phone=None)
    await sim.dispatch(mail_only, _inbound("unsubscribe", "s2", channel="email"))
    assert [s.channel for s in sim.crm.sent_to(mail_only)] == ["email"]


def test_quiet_hours_take_the_strictest_of_zone_state_and_area_code() -> None:
    quiet = QuietHours()
    # A New York time zone with a Washington number: 08:00 EST is 05:00 in Seattle.
    wa = resolve_locale(quiet, timezone="America/New_York", state="NY", phone="+12065550100")
    assert not is_allowed(datetime(2026, 3, 3, 13, 0, tzinfo=UTC), wa)
    opens = next_allowed(datetime(2026, 3, 3, 13, 0, tzinfo=UTC), wa)
    assert opens == datetime(2026, 3, 3, 16, 0, tzinfo=UTC)
    # ... and Washington's 20:00 end applies in both zones.
    assert not is_allowed(datetime(2026, 3, 4, 1, 30, tzinfo=UTC), wa)  # 20:30 EST, 17:30 PST
    # A Hawaii contact with a Maryland number: 23:24 EST is 18:24 in Honolulu, still out.
    md = resolve_locale(quiet, timezone="Pacific/Honolulu", state="HI", phone="+14105550100")
    assert not is_allowed(datetime(2026, 3, 4, 4, 24, tzinfo=UTC), md)
    # Inside every window: 14:00 EST = 11:00 PST.
    assert is_allowed(datetime(2026, 3, 3, 19, 0, tzinfo=UTC), wa)


async def test_no_send_outside_the_area_codes_state_window(checkpointer: BaseCheckpointSaver[Any]) -> None:
    early = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)  # 08:00 in New York, 05:00 in Seattle
    sim = Simulation(early, checkpointer=checkpointer)
    cid = "wa-number"
    sim.add_lead(make_contact(cid, timezone="America/New_York", state="NY", phone="+12065550100"))
    await sim.dispatch(cid, {"type": "enroll"})
    await sim.run_until(early + DAY)
    first = sim.crm.sent_to(cid)[0]
    assert first.step == "day_3" and first.at == datetime(2026, 3, 2, 16, 0, tzinfo=UTC)  # 08:00 in Seattle
