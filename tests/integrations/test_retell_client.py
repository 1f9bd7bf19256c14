"""RetellClient against FakeRetellServer over real loopback HTTP."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from ghl_real_estate_ai.errors import (
    AuthenticationError,
    PermanentIntegrationError,
    TransientIntegrationError,
)
from ghl_real_estate_ai.integrations.models import CallResult, VoiceCaller
from ghl_real_estate_ai.integrations.retell import OutcomeUnknownError, RetellClient
from ghl_real_estate_ai.testing.fake_http import Fault, VirtualTime
from ghl_real_estate_ai.testing.retell_server import DEFAULT_FROM_NUMBER, FakeRetellServer

AGENT = "oBeDLoLOeuAbiuaMFXRtDOLriTJ5tSxD"
METADATA = {"ghl_contact_id": "cI08i1Bls3iTB9bKgFJh", "ghl_location_id": "LOC", "sequence_step": "day_7"}


def make_client(retell: FakeRetellServer, vtime: VirtualTime, **kwargs: Any) -> RetellClient:
    kwargs.setdefault("rng", random.Random(3))
    api_key = kwargs.pop("api_key", retell.api_key)
    agent = kwargs.pop("agent_id", AGENT)
    return RetellClient(retell.base_url, api_key, DEFAULT_FROM_NUMBER, agent, sleep=vtime.sleep, **kwargs)


def test_client_satisfies_voice_caller(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    caller: VoiceCaller = make_client(retell, vtime)
    assert caller is not None


async def test_create_phone_call(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    async with make_client(retell, vtime) as client:
        result = await client.create_phone_call(
            "+15125550123", METADATA, {"first_name": "Jane", "property_address": "12 Oak St", "beds": 3,
                                       "missing": None},
        )
    assert isinstance(result, CallResult)
    assert result.call_status == "registered" and result.call_id
    request = retell.requests[0]
    assert (request.method, request.path, request.status) == ("POST", "/v2/create-phone-call", 201)
    assert request.header("authorization") == f"Bearer {retell.api_key}"
    assert request.json == {
        "from_number": DEFAULT_FROM_NUMBER,
        "to_number": "+15125550123",
        "override_agent_id": AGENT,
        "metadata": METADATA,
        "retell_llm_dynamic_variables": {"first_name": "Jane", "property_address": "12 Oak St", "beds": "3"},
    }
    [call] = retell.calls_for_contact("cI08i1Bls3iTB9bKgFJh")
    assert call["call_id"] == result.call_id and call["agent_id"] == AGENT


async def test_without_agent_override(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    async with make_client(retell, vtime, agent_id=None) as client:
        await client.create_phone_call("+15125550123", {}, {})
    assert retell.requests[0].json == {"from_number": DEFAULT_FROM_NUMBER, "to_number": "+15125550123"}


async def test_get_call(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    async with make_client(retell, vtime) as client:
        created = await client.create_phone_call("+15125550123", METADATA, {})
        fetched = await client.get_call(created.call_id)
    assert fetched["call_id"] == created.call_id
    assert fetched["metadata"] == METADATA


async def test_invalid_number_is_permanent(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    async with make_client(retell, vtime) as client:
        with pytest.raises(PermanentIntegrationError) as caught:
            await client.create_phone_call("5125550123", METADATA, {})
    assert caught.value.status == 400
    assert "to_number" in caught.value.detail
    assert len(retell.requests) == 1


@pytest.fixture
def strict_retell() -> Iterator[FakeRetellServer]:
    with FakeRetellServer(agents=["some-other-agent"]) as server:
        yield server


async def test_unknown_agent_is_permanent_422(strict_retell: FakeRetellServer, vtime: VirtualTime) -> None:
    async with make_client(strict_retell, vtime) as client:
        with pytest.raises(PermanentIntegrationError) as caught:
            await client.create_phone_call("+15125550123", METADATA, {})
    assert caught.value.status == 422
    assert not caught.value.transient


async def test_payment_required_is_permanent(vtime: VirtualTime) -> None:
    with FakeRetellServer(payment_required=True) as retell:
        async with make_client(retell, vtime) as client:
            with pytest.raises(PermanentIntegrationError) as caught:
                await client.create_phone_call("+15125550123", METADATA, {})
    assert caught.value.status == 402
    assert "payment" in caught.value.detail


async def test_bad_key_is_authentication_error(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    async with make_client(retell, vtime, api_key="key_wrong") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.create_phone_call("+15125550123", METADATA, {})
    assert caught.value.status == 401


async def test_429_and_500_are_retried(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    retell.script_faults([429, 500])
    async with make_client(retell, vtime) as client:
        result = await client.create_phone_call("+15125550123", METADATA, {})
    assert [r.status for r in retell.requests] == [429, 500, 201]
    assert len(retell.calls()) == 1 and retell.calls()[0]["call_id"] == result.call_id


async def test_exhausted_retries_are_transient(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    retell.script_faults([429] * 10)
    async with make_client(retell, vtime, max_retries=2) as client:
        with pytest.raises(TransientIntegrationError) as caught:
            await client.create_phone_call("+15125550123", METADATA, {})
    assert caught.value.status == 429
    assert "throttle" in caught.value.detail
    assert len(retell.requests) == 3


async def test_timeout_is_outcome_unknown_without_a_second_call(
    retell: FakeRetellServer, vtime: VirtualTime
) -> None:
    retell.script_faults([Fault(delay=2.0)])
    async with make_client(retell, vtime, timeout=0.3) as client:
        with pytest.raises(OutcomeUnknownError) as caught:
            await client.create_phone_call("+15125550123", METADATA, {})
    assert caught.value.outcome_unknown and caught.value.transient
    assert len(retell.requests) == 1
    assert len(retell.calls()) == 1  # Retell did place it


async def test_finish_call_builds_webhook_events(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    async with make_client(retell, vtime) as client:
        answered = await client.create_phone_call("+15125550123", METADATA, {"first_name": "Jane"})
        unanswered = await client.create_phone_call("+15125550124", METADATA, {})
    events = retell.finish_call(answered.call_id, summary="Wants a Saturday showing.")
    assert [e["event"] for e in events] == ["call_started", "call_ended", "call_analyzed"]
    assert events[0]["call"]["call_status"] == "ongoing" and "transcript" not in events[0]["call"]
    assert "call_analysis" not in events[1]["call"]
    assert events[2]["call"]["call_analysis"]["call_summary"] == "Wants a Saturday showing."
    assert events[2]["call"]["metadata"] == METADATA
    missed = retell.finish_call(unanswered.call_id, disconnection_reason="dial_no_answer")
    assert [e["event"] for e in missed] == ["call_ended", "call_analyzed"]
    assert missed[0]["call"]["call_status"] == "not_connected"
    assert retell.call(unanswered.call_id)["disconnection_reason"] == "dial_no_answer"  # type: ignore[index]
