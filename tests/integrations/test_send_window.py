"""A send only leaves inside the lead's window: the GHL and Retell clients check the step's guard right
before every attempt, so a retry backoff (or a rate-limit wait) that outlasts the window defers the step
instead of texting at night. Real HTTP to the wire fakes; the graph on a virtual clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from ghl_real_estate_ai.agents.lead_bot import Context, Rules, build_graph
from ghl_real_estate_ai.clock import FakeClock
from ghl_real_estate_ai.errors import SendWindowClosedError
from ghl_real_estate_ai.integrations.ghl import GHLClient
from ghl_real_estate_ai.integrations.retell import RetellClient
from ghl_real_estate_ai.integrations.send_window import send_window
from ghl_real_estate_ai.services.runner import LeadBotRunner
from ghl_real_estate_ai.testing.fakes import FakeVoice
from ghl_real_estate_ai.testing.ghl_server import FakeGHLServer
from ghl_real_estate_ai.testing.retell_server import DEFAULT_FROM_NUMBER, FakeRetellServer

EVENING = datetime(2026, 3, 11, 1, 50, tzinfo=UTC)  # 20:50 CDT in Austin: ten minutes of window left
NEXT_MORNING = datetime(2026, 3, 11, 13, 0, tzinfo=UTC)  # 08:00 CDT


def runner_on(client: GHLClient, clock: FakeClock) -> LeadBotRunner:
    """The graph on GHL over HTTP and a virtual clock, with a 5-minute send margin."""
    rules = Rules(send_margin=timedelta(minutes=5))
    context = Context(crm=client, voice=FakeVoice(), clock=clock, rules=rules)
    return LeadBotRunner(build_graph().compile(checkpointer=InMemorySaver()), context)


async def test_a_retry_after_the_window_closed_is_deferred_not_sent() -> None:
    clock = FakeClock(EVENING)

    async def backoff(seconds: float) -> None:  # every retry backoff costs half an hour of virtual time
        clock.advance(timedelta(minutes=30))

    with FakeGHLServer() as ghl:
        contact = ghl.add_contact(timezone="America/Chicago", state="TX")
        cid = contact["id"]
        ghl.script_faults([500], method="POST", path="/conversations/messages")
        client = GHLClient(ghl.base_url, ghl.token, ghl.location_id, sleep=backoff, rng=random.Random(3))
        runner = runner_on(client, clock)
        try:
            await runner.dispatch(cid, {"type": "enroll"})
            await runner.dispatch(cid, {"type": "step_due", "step": "day_3"})
            sends = ghl.requests_to("POST", "/conversations/messages")
            assert [r.status for r in sends] == [500]  # the retry never left: it was 21:20 by then
            state = await runner.state(cid)
            assert state["sequence"]["next_step"] == "day_3"
            assert state["sequence"]["next_due_at"] == "2026-03-11T13:00:00Z"
            deferred = state["timeline"][-1]
            assert deferred["outcome"] == "deferred" and "before the send could leave" in deferred["reason"]

            clock.set(NEXT_MORNING)
            await runner.dispatch(cid, {"type": "step_due", "step": "day_3"})
            sends = ghl.requests_to("POST", "/conversations/messages")
            assert [r.status for r in sends] == [500, 200]
            sent = (await runner.state(cid))["timeline"][-1]
            assert sent["outcome"] == "sent" and sent["at"] == "2026-03-11T13:00:00Z"
            assert sent["due_at"] == "2026-03-11T13:00:00Z"
        finally:
            await client.aclose()


async def test_a_step_does_not_start_a_send_inside_the_margin() -> None:
    clock = FakeClock(EVENING + timedelta(minutes=6))  # 20:56 CDT, the margin is 5 minutes
    with FakeGHLServer() as ghl:
        cid = ghl.add_contact(timezone="America/Chicago", state="TX")["id"]
        client = GHLClient(ghl.base_url, ghl.token, ghl.location_id)
        runner = runner_on(client, clock)
        try:
            await runner.dispatch(cid, {"type": "enroll"})
            await runner.dispatch(cid, {"type": "step_due", "step": "day_3"})
            assert ghl.requests_to("POST", "/conversations/messages") == []
            state = await runner.state(cid)
            assert state["sequence"]["next_due_at"] == "2026-03-11T13:00:00Z"
        finally:
            await client.aclose()


async def test_the_retell_client_checks_the_window_before_each_attempt() -> None:
    with FakeRetellServer() as retell:
        client = RetellClient(retell.base_url, retell.api_key, DEFAULT_FROM_NUMBER, None, sleep=_no_wait)
        try:
            with send_window(lambda: "quiet hours began"), pytest.raises(SendWindowClosedError):
                await client.create_phone_call("+15125550123", {"ghl_contact_id": "c1"}, {})
            assert retell.requests == []
            with send_window(lambda: None):
                await client.create_phone_call("+15125550123", {"ghl_contact_id": "c1"}, {})
            assert len(retell.calls()) == 1
        finally:
            await client.aclose()


async def _no_wait(seconds: float) -> None:
    return None
