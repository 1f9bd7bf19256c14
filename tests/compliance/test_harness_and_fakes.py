"""What the simulator stands on: in-process fakes that record every send's step and key and refuse what GHL
and Retell refuse; a ``Simulation`` whose next due step comes from a heap; a saver that keeps only each
lead's latest checkpoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from ghl_real_estate_ai.compliance.world import LatestOnlySaver
from ghl_real_estate_ai.errors import PermanentIntegrationError, SendBlockedError
from ghl_real_estate_ai.integrations.send_label import labelled
from ghl_real_estate_ai.sandbox.simulation import Simulation
from ghl_real_estate_ai.testing.fakes import FakeCrm, FakeVoice, make_contact

START = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)
DAY = timedelta(days=1)


async def test_fakes_record_step_and_key_and_refuse_like_ghl_and_retell() -> None:
    crm = FakeCrm()
    voice = FakeVoice(crm)
    crm.add_contact(make_contact("ok"))
    crm.add_contact(make_contact("no-phone", phone=None))
    crm.add_contact(make_contact("no-call", dnd_channels={"Call": "active"}))
    with labelled("day_3", "ok|e|day_3|0"):
        await crm.send_sms("ok", "hello")
    assert (crm.sent[-1].step, crm.sent[-1].key) == ("day_3", "ok|e|day_3|0")
    with pytest.raises(PermanentIntegrationError):
        await crm.send_sms("no-phone", "hello")
    with labelled("day_7", "no-call|e|day_7|0"), pytest.raises(SendBlockedError):
        await voice.create_phone_call("+15125550123", {"ghl_contact_id": "no-call"}, {})
    with pytest.raises(PermanentIntegrationError):
        await voice.create_phone_call("", {"ghl_contact_id": "ok"}, {})
    assert [(r.contact_id, r.channel, r.refused) for r in crm.refused] == [
        ("no-phone", "sms", "no phone number"),
        ("no-call", "call", "call DND is active"),
        ("ok", "call", "to_number is required"),
    ]
    assert crm.refused[1].step == "day_7" and len(crm.sent) == 1 and voice.placed == []


class CountingSaver(InMemorySaver):
    reads = 0

    async def aget_tuple(self, config: Any) -> Any:
        CountingSaver.reads += 1
        return await super().aget_tuple(config)


async def _reads_per_event(leads: int) -> float:
    CountingSaver.reads = 0
    sim = Simulation(START, checkpointer=CountingSaver())
    for i in range(leads):
        sim.add_lead(make_contact(f"c{i}"))
    await sim.enroll_all()
    await sim.run_until(START + 40 * DAY)
    assert sim.events_run >= leads * 5  # enroll, day_3 ... day_30
    return CountingSaver.reads / sim.events_run


async def test_the_next_due_step_costs_the_same_however_many_leads() -> None:
    assert await _reads_per_event(40) == await _reads_per_event(5)


async def test_refresh_picks_up_a_thread_changed_directly() -> None:
    sim = Simulation(START)
    cid = sim.add_lead(make_contact("c-direct"))
    await sim.enroll_all()
    await sim.run_until(START + timedelta(hours=1))
    due = await sim.next_due()
    assert due is not None and due[2] == "day_7"
    earlier = START + DAY
    await sim.graph.aupdate_state(sim.runner.config(cid), {"sequence": {"next_due_at": earlier.isoformat()}})
    assert (await sim.next_due())[0] != earlier  # type: ignore[index]
    await sim.refresh([cid])
    assert (await sim.next_due())[0] == earlier  # type: ignore[index]


async def test_a_late_and_double_firing_scheduler_sends_each_step_once() -> None:
    sim = Simulation(START)
    cid = sim.add_lead(make_contact("c-fires"))
    sim.fire = lambda due, contact_id, step: [timedelta(minutes=9), timedelta(minutes=11)]
    await sim.enroll_all()
    await sim.run_until(START + 40 * DAY)
    steps = [s.step for s in sim.crm.sent_to(cid)]
    assert steps == ["day_3", "day_7", "day_14", "day_30"]
    assert sim.crm.sent_to(cid)[0].at == START + timedelta(minutes=9)


async def test_latest_only_saver_keeps_one_checkpoint_and_the_same_state() -> None:
    lean = Simulation(START, checkpointer=LatestOnlySaver(), durability="exit")
    full = Simulation(START)
    for sim in (lean, full):
        for i in range(3):
            sim.add_lead(make_contact(f"c{i}"))
        await sim.enroll_all()
        sim.schedule(START + 5 * DAY, "c1", {"type": "inbound_message", "text": "Any with a pool?",
                                             "channel": "sms", "message_id": "m1"})
        await sim.run_until(START + 70 * DAY)
    for i in range(3):
        a, b = await lean.state(f"c{i}"), await full.state(f"c{i}")
        # (the bot's own replies get random message ids)
        assert [(m.type, m.content) for m in a.pop("messages", [])] == [
            (m.type, m.content) for m in b.pop("messages", [])
        ]
        assert a == b
    saver = lean.checkpointer
    assert isinstance(saver, LatestOnlySaver)
    assert all(len(ns) == 1 for thread in saver.storage.values() for ns in thread.values())
    channels_per_thread = len(saver.blobs) / 3
    assert channels_per_thread <= 20  # one blob per channel, not one per version
    assert len(full.checkpointer.blobs) > 3 * len(saver.blobs)  # type: ignore[attr-defined]
