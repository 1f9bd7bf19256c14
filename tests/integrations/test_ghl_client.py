"""GHLClient against FakeGHLServer over real loopback HTTP: every Crm method, headers, error mapping,
retries and the unknown-outcome rule for sends."""

from __future__ import annotations

import random
import socket
import time
from typing import Any

import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from ghl_real_estate_ai.errors import (
    AuthenticationError,
    NotFoundError,
    PermanentIntegrationError,
    SendBlockedError,
    TransientIntegrationError,
)
from ghl_real_estate_ai.integrations._http import RetryPolicy
from ghl_real_estate_ai.integrations.ghl import GHLClient, OutcomeUnknownError
from ghl_real_estate_ai.integrations.models import Contact, Crm, SendResult
from ghl_real_estate_ai.integrations.rate_limit import SlidingWindowLimiter, Ticket
from ghl_real_estate_ai.testing.fake_http import Fault, VirtualTime
from ghl_real_estate_ai.testing.ghl_server import FakeGHLServer


def make_client(ghl: FakeGHLServer, vtime: VirtualTime, **kwargs: Any) -> GHLClient:
    """A client whose backoff and rate-limit waits run on virtual time."""
    kwargs.setdefault("rng", random.Random(7))
    kwargs.setdefault("rate_limiter", SlidingWindowLimiter(clock=vtime.clock, sleep=vtime.sleep))
    token = kwargs.pop("token", ghl.token)
    return GHLClient(ghl.base_url, token, ghl.location_id, sleep=vtime.sleep, **kwargs)


def test_client_satisfies_the_crm_protocol(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    client: Crm = make_client(ghl, vtime)
    assert client is not None


async def test_get_contact_unwraps_and_parses(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    stored = ghl.add_contact(
        first_name="Jane",
        timezone="America/Denver",
        tags=["buyer", "lead-bot"],
        dnd_email=True,
        assigned_to="USR1",
    )
    async with make_client(ghl, vtime) as client:
        contact = await client.get_contact(stored["id"])
    assert isinstance(contact, Contact)
    assert contact.id == stored["id"]
    assert contact.first_name == "Jane"
    assert contact.timezone == "America/Denver"
    assert contact.tags == ("buyer", "lead-bot")
    assert contact.assigned_to == "USR1"
    assert contact.blocks("email") and not contact.blocks("sms")
    request = ghl.requests[-1]
    assert (request.method, request.path) == ("GET", f"/contacts/{stored['id']}")
    assert request.header("authorization") == f"Bearer {ghl.token}"
    assert request.header("version") == "2021-07-28"


async def test_send_sms_minimal_body_and_version(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    async with make_client(ghl, vtime) as client:
        result = await client.send_sms(contact["id"], "Hi Jane, it's Sam. Reply STOP to opt out.")
    assert isinstance(result, SendResult)
    assert result.message_id and result.conversation_id == ghl.conversation_id(contact["id"])
    assert result.status == "pending"
    request = ghl.requests_to("POST", "/conversations/messages")[0]
    assert request.header("version") == "2021-04-15"
    assert request.header("content-type") == "application/json"
    assert request.json == {
        "type": "SMS",
        "contactId": contact["id"],
        "message": "Hi Jane, it's Sam. Reply STOP to opt out.",
    }
    assert ghl.sent_sms(contact["id"]) == ["Hi Jane, it's Sam. Reply STOP to opt out."]


async def test_send_email(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    async with make_client(ghl, vtime) as client:
        result = await client.send_email(contact["id"], "Homes near Oak St", "<p>Hi Jane</p>")
    assert result.message_id
    assert ghl.requests[-1].json == {
        "type": "Email",
        "contactId": contact["id"],
        "subject": "Homes near Oak St",
        "html": "<p>Hi Jane</p>",
    }
    [email] = ghl.sent_emails(contact["id"])
    assert (email["subject"], email["html"]) == ("Homes near Oak St", "<p>Hi Jane</p>")


async def test_set_dnd_v2_keys(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    async with make_client(ghl, vtime) as client:
        await client.set_dnd(contact["id"], "sms", True, "Opted out via STOP")
        assert (await client.get_contact(contact["id"])).blocks("sms")
        await client.set_dnd(contact["id"], "sms", False)
        assert not (await client.get_contact(contact["id"])).blocks("sms")
    put = ghl.requests_to("PUT")[0]
    assert put.header("version") == "2021-07-28"
    assert put.json == {"dndSettings": {"SMS": {"status": "active", "message": "Opted out via STOP"}}}


async def test_set_dnd_v3_uses_lower_camel_keys(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    async with make_client(ghl, vtime, versions={"contacts": "v3"}) as client:
        await client.set_dnd(contact["id"], "call", True)
        fetched = await client.get_contact(contact["id"])
    assert fetched.blocks("call")
    put = ghl.requests_to("PUT")[0]
    assert put.header("version") == "v3"
    assert put.json == {"dndSettings": {"call": {"status": "active", "message": ""}}}


async def test_set_dnd_rejects_unknown_channel(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    async with make_client(ghl, vtime) as client:
        with pytest.raises(ValueError, match="unknown DND channel"):
            await client.set_dnd("abc", "fax", True)
    assert ghl.requests == []


async def test_tags_add_and_remove(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact(tags=["buyer"])
    async with make_client(ghl, vtime) as client:
        await client.add_tags(contact["id"], ["day3-sms-sent", "lead-bot"])
        await client.remove_tags(contact["id"], ["buyer"])
        await client.add_tags(contact["id"], [])  # nothing to do: no request
    assert ghl.contact(contact["id"])["tags"] == ["day3-sms-sent", "lead-bot"]  # type: ignore[index]
    post, delete = ghl.requests
    assert (post.method, post.status, post.json) == ("POST", 201, {"tags": ["day3-sms-sent", "lead-bot"]})
    assert (delete.method, delete.status, delete.json) == ("DELETE", 200, {"tags": ["buyer"]})
    assert delete.path == f"/contacts/{contact['id']}/tags"


async def test_add_note_and_task(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    async with make_client(ghl, vtime) as client:
        await client.add_note(contact["id"], "Day 7 call placed.")
        await client.add_task(
            contact["id"], "Call Jane back", "She asked about Saturday.", "2026-07-06T15:00:00Z", "USR1"
        )
        await client.add_task(contact["id"], "Follow up", "", "2026-07-07T15:00:00Z", None)
    assert [n["body"] for n in ghl.notes(contact["id"])] == ["Day 7 call placed."]
    first, _ = ghl.tasks(contact["id"])
    assert first["assignedTo"] == "USR1" and first["completed"] is False
    task_requests = ghl.requests_to("POST", f"/contacts/{contact['id']}/tasks")
    assert task_requests[0].json == {
        "title": "Call Jane back",
        "body": "She asked about Saturday.",
        "dueDate": "2026-07-06T15:00:00Z",
        "completed": False,
        "assignedTo": "USR1",
    }
    assert "assignedTo" not in task_requests[1].json
    assert all(r.status == 201 for r in ghl.requests)


async def test_update_contact_and_custom_fields(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact(timezone=None)
    async with make_client(ghl, vtime) as client:
        updated = await client.update_contact(contact["id"], {"timezone": "America/New_York"})
        assert updated.timezone == "America/New_York"
        await client.update_custom_fields(contact["id"], {"MgobCB14YMVKuE4Ka8p1": "day7-call-placed"})
    assert ghl.requests[-1].json == {
        "customFields": [{"id": "MgobCB14YMVKuE4Ka8p1", "field_value": "day7-call-placed"}]
    }
    stored = ghl.contact(contact["id"])
    assert stored is not None
    assert {"id": "MgobCB14YMVKuE4Ka8p1", "value": "day7-call-placed"} in stored["customFields"]


async def test_custom_fields_v3_use_field_value(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    async with make_client(ghl, vtime, versions={"contacts": "v3", "conversations": "v3"}) as client:
        await client.update_custom_fields(contact["id"], {"F1": ["a", "b"]})
    assert ghl.requests[-1].json == {"customFields": [{"id": "F1", "fieldValue": ["a", "b"]}]}


async def test_unknown_contact_is_not_found(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    async with make_client(ghl, vtime) as client:
        with pytest.raises(NotFoundError) as caught:
            await client.get_contact("doesNotExist00000000")
        with pytest.raises(NotFoundError):
            await client.send_sms("doesNotExist00000000", "hello")
    assert caught.value.status == 400
    assert not caught.value.transient
    assert len(ghl.requests) == 2  # not retried


@pytest.mark.parametrize("status", [404, 422])
async def test_not_found_variants(status: int, vtime: VirtualTime) -> None:
    with FakeGHLServer(not_found_status=status) as ghl:
        async with make_client(ghl, vtime) as client:
            with pytest.raises(NotFoundError):
                await client.get_contact("nope")


async def test_sms_dnd_is_send_blocked_and_not_retried(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact(dnd_sms=True)
    async with make_client(ghl, vtime) as client:
        with pytest.raises(SendBlockedError) as caught:
            await client.send_sms(contact["id"], "hello")
    assert caught.value.status == 400
    assert "DND is active for SMS" in caught.value.detail
    assert isinstance(caught.value, PermanentIntegrationError)
    assert len(ghl.requests_to("POST", "/conversations/messages")) == 1
    assert ghl.sent_sms() == []
    assert ghl.requests[0].status == 400


async def test_dnd_set_by_ghl_itself_blocks_email_too(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact(dnd=True)
    async with make_client(ghl, vtime) as client:
        with pytest.raises(SendBlockedError):
            await client.send_email(contact["id"], "s", "<p>x</p>")


@pytest.mark.parametrize("script", [[429], [500], [429, 503, 500], [502, 429]])
async def test_retryable_statuses_then_success(
    ghl: FakeGHLServer, vtime: VirtualTime, script: list[int]
) -> None:
    contact = ghl.add_contact()
    ghl.script_faults(script, path="/conversations/messages")
    async with make_client(ghl, vtime) as client:
        result = await client.send_sms(contact["id"], "hello")
    assert result.message_id
    posts = ghl.requests_to("POST", "/conversations/messages")
    assert [r.status for r in posts] == [*script, 200]
    assert ghl.sent_sms(contact["id"]) == ["hello"]
    assert len(vtime.slept) == len(script)
    # Full jitter: each wait lies in [0, base * 2**attempt].
    assert all(0 <= wait <= 0.5 * 2**i for i, wait in enumerate(vtime.slept))


async def test_retry_after_is_honoured(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    ghl.script_faults([Fault(status=429, retry_after=7)], path="/contacts")
    async with make_client(ghl, vtime) as client:
        await client.get_contact(contact["id"])
    assert 7 in vtime.slept


async def test_long_retry_after_fails_fast_with_the_hint(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    ghl.script_faults([Fault(status=503, retry_after=3600)])
    async with make_client(ghl, vtime) as client:
        with pytest.raises(TransientIntegrationError) as caught:
            await client.get_contact(contact["id"])
    assert caught.value.retry_after == 3600
    assert len(ghl.requests) == 1


async def test_exhausted_retries_are_transient(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    ghl.script_faults([500] * 10)
    async with make_client(ghl, vtime, max_retries=2) as client:
        with pytest.raises(TransientIntegrationError) as caught:
            await client.add_tags(contact["id"], ["x"])
    assert caught.value.transient and caught.value.status == 500
    assert getattr(caught.value, "outcome_unknown", False) is False
    assert len(ghl.requests) == 3


async def test_other_4xx_is_permanent(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    async with make_client(ghl, vtime) as client:
        with pytest.raises(PermanentIntegrationError) as caught:
            await client.update_contact(contact["id"], {"favouriteColour": "blue"})
    assert caught.value.status == 422
    assert "favouriteColour should not exist" in caught.value.detail
    assert type(caught.value) is PermanentIntegrationError
    assert len(ghl.requests) == 1


async def test_bad_pit_is_authentication_error_without_retry(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    async with make_client(ghl, vtime, token="pit-wrong") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get_contact("abc")
    assert caught.value.status == 401
    assert "access token is invalid" in caught.value.detail
    assert len(ghl.requests) == 1


async def test_forbidden_is_authentication_error(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    ghl.script_faults(
        [
            Fault(
                status=403, body={"statusCode": 403, "message": "The token is not authorized for this scope."}
            )
        ]
    )
    async with make_client(ghl, vtime) as client:
        with pytest.raises(AuthenticationError):
            await client.add_note("abc", "x")


async def test_fake_rejects_missing_or_wrong_version(ghl: FakeGHLServer) -> None:
    contact = ghl.add_contact()
    async with httpx.AsyncClient(base_url=ghl.base_url) as raw:
        auth = {"Authorization": f"Bearer {ghl.token}"}
        missing = await raw.get(f"/contacts/{contact['id']}", headers=auth)
        wrong = await raw.post(
            "/conversations/messages",
            headers={**auth, "Version": "2021-07-28"},
            json={"type": "SMS", "contactId": contact["id"], "message": "x"},
        )
    assert missing.status_code == 400 and "Version" in missing.json()["message"]
    assert wrong.status_code == 400
    assert ghl.sent_sms() == []


async def test_send_timeout_is_outcome_unknown_and_not_resent(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    ghl.script_faults([Fault(delay=2.0)], path="/conversations/messages")
    async with make_client(ghl, vtime, timeout=0.3) as client:
        with pytest.raises(OutcomeUnknownError) as caught:
            await client.send_sms(contact["id"], "hello")
    error = caught.value
    assert isinstance(error, TransientIntegrationError)
    assert error.outcome_unknown is True
    assert len(ghl.requests_to("POST", "/conversations/messages")) == 1
    # The fake did deliver it: exactly the situation where a blind retry would text the lead twice.
    assert ghl.sent_sms(contact["id"]) == ["hello"]


async def test_send_timeout_retried_when_caller_accepts_duplicates(
    ghl: FakeGHLServer, vtime: VirtualTime
) -> None:
    contact = ghl.add_contact()
    ghl.script_faults([Fault(delay=2.0)], path="/conversations/messages")
    async with make_client(ghl, vtime, timeout=0.3) as client:
        result = await client.send_sms(contact["id"], "hello", retry_unknown_outcome=True)
    assert result.message_id
    assert len(ghl.requests_to("POST", "/conversations/messages")) == 2


async def test_idempotent_read_is_retried_after_timeout(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    ghl.script_faults([Fault(delay=2.0)], path="/contacts")
    async with make_client(ghl, vtime, timeout=0.3) as client:
        fetched = await client.get_contact(contact["id"])
    assert fetched.id == contact["id"]
    assert len(ghl.requests) == 2


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connect_errors_are_retried_even_for_sends(vtime: VirtualTime) -> None:
    client = GHLClient(f"http://127.0.0.1:{_closed_port()}", "pit-x", "LOC", sleep=vtime.sleep, max_retries=2)
    async with client:
        with pytest.raises(TransientIntegrationError) as caught:
            await client.send_sms("abc", "hello")
    assert not isinstance(caught.value, OutcomeUnknownError)
    assert "ConnectError" in str(caught.value)
    assert len(vtime.slept) == 2  # two retries happened


async def test_mock_transport_is_injectable(vtime: VirtualTime) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"contact": {"id": "c1", "firstName": "Ann"}})

    async with GHLClient(
        "https://services.leadconnectorhq.com",
        "pit-x",
        "LOC",
        transport=httpx.MockTransport(handler),
        sleep=vtime.sleep,
    ) as client:
        contact = await client.get_contact("c1")
    assert contact.first_name == "Ann"
    assert str(seen[0].url) == "https://services.leadconnectorhq.com/contacts/c1"


async def test_contact_ids_are_path_escaped(vtime: VirtualTime) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(201, json={"tags": []})

    async with GHLClient(
        "https://x.test", "pit-x", "LOC", transport=httpx.MockTransport(handler), sleep=vtime.sleep
    ) as client:
        await client.add_tags("a/../b", ["t"])
        with pytest.raises(ValueError):
            await client.add_tags("", ["t"])
    assert seen == ["/contacts/a%2F..%2Fb/tags"]


async def test_random_faults_are_survived(vtime: VirtualTime) -> None:
    with FakeGHLServer(seed=3) as ghl:
        contact = ghl.add_contact()
        ghl.set_random_faults(error_rate=0.3, statuses=(429, 500, 502), seed=11)
        async with make_client(ghl, vtime, max_retries=8) as client:
            for i in range(20):
                await client.add_tags(contact["id"], [f"t{i}"])
        statuses = [r.status for r in ghl.requests]
    assert len(ghl.contact(contact["id"])["tags"]) == 21  # type: ignore[index]
    assert any(s in (429, 500, 502) for s in statuses)
    assert statuses.count(201) == 20


class _BrokenLimiter(SlidingWindowLimiter):
    """A shared limiter whose Redis fails: before the request (``slot``) or after it (``observe``)."""

    def __init__(self, *, fail_on: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_on = fail_on

    def slot(self, key: str) -> Any:
        if self.fail_on == "slot":
            raise RedisConnectionError("Connection refused")
        return super().slot(key)

    async def observe(self, key: str, headers: Any, ticket: Ticket | None = None) -> None:
        if self.fail_on == "observe":
            raise RedisConnectionError("Connection reset")
        await super().observe(key, headers, ticket)


async def test_limiter_failure_before_the_request_is_transient_and_sends_nothing(
    ghl: FakeGHLServer, vtime: VirtualTime
) -> None:
    contact = ghl.add_contact()
    limiter = _BrokenLimiter(fail_on="slot", clock=vtime.clock, sleep=vtime.sleep)
    async with make_client(ghl, vtime, rate_limiter=limiter) as client:
        with pytest.raises(TransientIntegrationError) as caught:
            await client.send_sms(contact["id"], "hello")
    assert not caught.value.outcome_unknown
    assert ghl.sent_sms(contact["id"]) == []


async def test_limiter_failure_after_the_answer_keeps_the_answer(
    ghl: FakeGHLServer, vtime: VirtualTime
) -> None:
    contact = ghl.add_contact()
    limiter = _BrokenLimiter(fail_on="observe", clock=vtime.clock, sleep=vtime.sleep)
    async with make_client(ghl, vtime, rate_limiter=limiter) as client:
        result = await client.send_sms(contact["id"], "hello")
    assert result.message_id
    assert ghl.sent_sms(contact["id"]) == ["hello"]


async def test_a_read_that_hangs_is_abandoned_and_retried_but_a_send_is_not(ghl: FakeGHLServer) -> None:
    contact = ghl.add_contact()
    ghl.script_faults([Fault(delay=3.0)], method="GET", path=f"/contacts/{contact['id']}")
    ghl.script_faults([Fault(delay=3.0)], method="POST", path="/conversations/messages")
    async with GHLClient(ghl.base_url, ghl.token, ghl.location_id, timeout=1.0, read_timeout=0.2,
                         retry_policy=RetryPolicy(backoff_base=0.01, backoff_cap=0.01)) as client:
        started = time.monotonic()
        found = await client.get_contact(contact["id"])
        assert found.id == contact["id"] and time.monotonic() - started < 1.0  # not the 3 s hang
        assert len(ghl.requests_to("GET", f"/contacts/{contact['id']}")) == 2
        with pytest.raises(OutcomeUnknownError):  # the text may be out: never resent blindly
            await client.send_sms(contact["id"], "hello")
        assert len(ghl.requests_to("POST", "/conversations/messages")) == 1
