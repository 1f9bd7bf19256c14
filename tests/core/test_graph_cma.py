"""A CMA request through the graph: the bot promises only what will happen (issue 13). Judged by what
reached the in-process GHL fake, and by the timeline."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

from ghl_real_estate_ai.comps import IndexedComps
from ghl_real_estate_ai.conversation.cma import Sale, Subject
from ghl_real_estate_ai.errors import TransientIntegrationError
from ghl_real_estate_ai.sandbox.simulation import Simulation
from ghl_real_estate_ai.testing.fakes import make_contact

START = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)


def _inbound(text: str, message_id: str, channel: str = "sms") -> dict[str, Any]:
    return {"type": "inbound_message", "text": text, "channel": channel, "message_id": message_id}


async def _lead(sim: Simulation, cid: str = "c1", **contact: Any) -> str:
    sim.add_lead(make_contact(cid, **contact))
    await sim.dispatch(cid, {"type": "enroll"})
    await sim.run_until(sim.clock.now() + timedelta(hours=1))
    return cid


def _after(sim: Simulation, cid: str, at: datetime) -> list[Any]:
    return [s for s in sim.crm.sent_to(cid) if s.at >= at]


async def test_a_lead_where_no_comps_exist_gets_an_honest_answer_and_a_human_task(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim, first_name="Cara", address="1200 N Ogden St", city="Denver", state="CO",
                      postal_code="80218", timezone="America/Denver", assigned_to="user-9")
    asked = sim.clock.now()
    await sim.dispatch(cid, _inbound("what's my house worth?", "m1"))
    sent = _after(sim, cid, asked)
    assert len(sent) == 1 and sent[0].channel == "sms"
    assert "will prepare your home value report personally" in sent[0].body
    assert "in a moment" not in sent[0].body and "$" not in sent[0].body
    assert len(sim.crm.tasks) == 1
    task = sim.crm.tasks[0]
    assert task["title"] == "Prepare a CMA for 1200 N Ogden St" and task["assigned_to"] == "user-9"
    note = sim.crm.notes[-1][1]
    assert "1200 N Ogden St, Denver, CO, 80218" in note and "what's my house worth?" in note
    state = await sim.state(cid)
    actions = [(e["action"], e["outcome"]) for e in state["timeline"] if e["at"] >= asked.isoformat()]
    assert ("cma_handoff", "done") in actions and ("reply", "sent") in actions
    assert "comparable" in state["cma"]["outcome"] and state["cma"]["handed_off_at"]
    assert state["sequence"]["status"] not in ("qualified", "completed")  # the sequence goes on
    # A redelivered webhook: no second task, no second answer.
    await sim.dispatch(cid, _inbound("what's my house worth?", "m1"))
    assert len(sim.crm.tasks) == 1 and len(_after(sim, cid, asked)) == 1


async def test_an_estimate_is_promised_and_then_follows(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim, address="1402 S Congress Ave", postal_code="78704", city="Austin")
    asked = sim.clock.now()
    await sim.dispatch(cid, _inbound("what's my house worth?", "m1"))
    reply, report = _after(sim, cid, asked)
    assert reply.channel == "sms" and "I'll send your estimate in a moment" in reply.body
    assert report.channel == "email" and report.step == "cma" and "<table" in report.body
    # The contact has no living area: the email says how the prices were used and asks for it.
    assert "adjusted for the local market&#x27;s trend" in report.body
    assert not sim.crm.tasks
    cma = (await sim.state(cid))["cma"]
    assert cma["valuation"]["confidence"] in ("high", "medium", "low") and cma["channel"] == "email"


async def test_without_an_address_the_bot_asks_and_the_next_message_carries_the_cma_on(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim, address=None, postal_code=None, city=None, email=None)
    asked = sim.clock.now()
    await sim.dispatch(cid, _inbound("How much could I sell my place for?", "m1"))
    (question,) = _after(sim, cid, asked)
    assert "What's the property's address" in question.body
    state = await sim.state(cid)
    assert state["cma"]["awaiting_address"] is True
    assert any(e["action"] == "cma" and e["outcome"] == "deferred" for e in state["timeline"])

    sim.clock.advance(timedelta(minutes=3))
    answered = sim.clock.now()
    await sim.dispatch(cid, _inbound("It's 1402 S Congress Ave, Austin, TX 78704", "m2"))
    reply, report = _after(sim, cid, answered)
    assert "1402 S Congress Ave" in reply.body and "in a moment" in reply.body
    assert report.step == "cma" and report.channel == "sms" and "$" in report.body and len(report.body) <= 320
    state = await sim.state(cid)
    assert state["cma"]["awaiting_address"] is False and state["cma"]["subject"]["zip"] == "78704"
    # An address in an ordinary message, when none was asked for, is just a message.
    sim.clock.advance(timedelta(minutes=3))
    later = sim.clock.now()
    await sim.dispatch(cid, _inbound("We also own 9 Elm St, Austin, TX 78704", "m3"))
    assert not [s for s in _after(sim, cid, later) if s.step == "cma"]


class _DownComps:
    async def area_sales(self, subject: Subject, *, as_of: date, **_: Any) -> list[Sale]:
        raise TransientIntegrationError("RESO", "Property", "connection refused")


async def test_a_provider_that_is_down_hands_off(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer, comps=_DownComps())
    cid = await _lead(sim, address="1402 S Congress Ave", postal_code="78704", city="Austin")
    await sim.dispatch(cid, _inbound("what's my home worth", "m1"))
    assert sim.crm.tasks[0]["title"] == "Prepare a CMA for 1402 S Congress Ave"
    state = await sim.state(cid)
    assert "comps provider failed" in state["cma"]["outcome"]
    assert not [s for s in sim.crm.sent_to(cid) if s.step == "cma"]


async def test_an_unknown_property_hands_off(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer, comps=IndexedComps([]))
    cid = await _lead(sim, address="12 Oak St", postal_code=None, city=None, state=None)
    await sim.dispatch(cid, _inbound("what's my home worth", "m1"))
    assert sim.crm.tasks[0]["title"] == "Prepare a CMA for 12 Oak St"
    assert "property is unknown" in (await sim.state(cid))["cma"]["outcome"]
