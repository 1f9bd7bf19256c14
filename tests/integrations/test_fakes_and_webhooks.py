"""The fakes' wire fidelity (auth, rate-limit headers and 429s, fault injection, throughput) and the webhook
emitter (payload shapes, exact-byte signing, redelivery rules)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from ghl_real_estate_ai.api.signatures import verify_ghl_webhook, verify_retell_signature
from ghl_real_estate_ai.testing import webhooks
from ghl_real_estate_ai.testing.fake_http import Fault, VirtualTime
from ghl_real_estate_ai.testing.ghl_server import FakeGHLServer
from ghl_real_estate_ai.testing.keys import TEST_ED25519_PUBLIC_PEM, TEST_RETELL_API_KEY, rsa_public_pem
from ghl_real_estate_ai.testing.retell_server import FakeRetellServer

RATE_HEADERS = ("x-ratelimit-limit-daily", "x-ratelimit-daily-remaining", "x-ratelimit-interval-milliseconds",
                "x-ratelimit-max", "x-ratelimit-remaining")


def auth(server: FakeGHLServer, version: str = "2021-07-28", token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or server.token}", "Version": version}


def test_ghl_fake_requires_bearer_token(ghl: FakeGHLServer) -> None:
    contact = ghl.add_contact()
    with httpx.Client(base_url=ghl.base_url) as raw:  # the fakes serve sync callers too
        none = raw.get(f"/contacts/{contact['id']}", headers={"Version": "2021-07-28"})
        basic = raw.get(f"/contacts/{contact['id']}", headers={"Authorization": "Basic abc",
                                                               "Version": "2021-07-28"})
        ok = raw.get(f"/contacts/{contact['id']}", headers=auth(ghl))
        unknown = raw.get("/opportunities/search", headers=auth(ghl))
    assert none.status_code == basic.status_code == 401
    assert none.json() == {"statusCode": 401, "message": "Invalid token: access token is invalid",
                           "error": "Unauthorized"}
    assert ok.status_code == 200 and ok.json()["contact"]["id"] == contact["id"]
    assert unknown.status_code == 404


def test_contacts_are_scoped_to_their_location(ghl: FakeGHLServer) -> None:
    ghl.add_token("pit-other-location", "OtherLocation0000001")
    contact = ghl.add_contact()
    with httpx.Client(base_url=ghl.base_url) as raw:
        response = raw.get(f"/contacts/{contact['id']}", headers=auth(ghl, token="pit-other-location"))
    assert response.status_code == 400 and response.json()["message"] == "Contact not found"


def test_rate_limit_headers_and_429(vtime: VirtualTime) -> None:
    with FakeGHLServer(clock=vtime.clock, rate_limit=3, rate_window=10.0) as ghl, \
            httpx.Client(base_url=ghl.base_url) as raw:
        ghl.add_token("pit-other", "OtherLocation0000001")
        contact = ghl.add_contact()
        answers = [raw.get(f"/contacts/{contact['id']}", headers=auth(ghl)) for _ in range(4)]
        other = raw.get(f"/contacts/{contact['id']}", headers=auth(ghl, token="pit-other"))
        vtime.advance(10.0)
        after_window = raw.get(f"/contacts/{contact['id']}", headers=auth(ghl))
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
    for name in RATE_HEADERS:
        assert name in answers[0].headers
    assert answers[0].headers["x-ratelimit-max"] == "3"
    assert answers[0].headers["x-ratelimit-interval-milliseconds"] == "10000"
    assert answers[0].headers["x-ratelimit-limit-daily"] == "200000"
    assert answers[3].json() == {"statusCode": 429, "message": "Too Many Requests"}
    assert other.status_code == 400  # its own budget; the contact just belongs elsewhere
    assert after_window.status_code == 200


def test_scripted_faults_only_hit_matching_requests(ghl: FakeGHLServer) -> None:
    contact = ghl.add_contact()
    ghl.script_faults([Fault(status=503, retry_after=2), 500], method="POST", path="/conversations/messages")
    with httpx.Client(base_url=ghl.base_url) as raw:
        read = raw.get(f"/contacts/{contact['id']}", headers=auth(ghl))
        body = {"type": "SMS", "contactId": contact["id"], "message": "hi"}
        sends = [raw.post("/conversations/messages", headers=auth(ghl, "2021-04-15"), json=body)
                 for _ in range(3)]
    assert read.status_code == 200
    assert [s.status_code for s in sends] == [503, 500, 200]
    assert sends[0].headers["retry-after"] == "2"
    assert ghl.sent_sms(contact["id"]) == ["hi"]  # faulted requests have no effect


def test_random_faults_are_repeatable() -> None:
    def run() -> list[int]:
        with FakeGHLServer(seed=5) as ghl, httpx.Client(base_url=ghl.base_url) as raw:
            contact = ghl.add_contact()
            ghl.set_random_faults(error_rate=0.5, statuses=(429, 500, 503), seed=42)
            return [raw.get(f"/contacts/{contact['id']}", headers=auth(ghl)).status_code for _ in range(30)]

    first, second = run(), run()
    assert first == second
    assert {429, 500, 503} & set(first) and 200 in first


def test_fake_validates_bodies(ghl: FakeGHLServer) -> None:
    contact = ghl.add_contact(phone=None)
    with httpx.Client(base_url=ghl.base_url) as raw:
        no_type = raw.post("/conversations/messages", headers=auth(ghl, "2021-04-15"),
                           json={"contactId": contact["id"], "message": "x"})
        no_phone = raw.post("/conversations/messages", headers=auth(ghl, "2021-04-15"),
                            json={"type": "SMS", "contactId": contact["id"], "message": "x"})
        bad_tags = raw.post(f"/contacts/{contact['id']}/tags", headers=auth(ghl), json={"tags": "vip"})
        bad_task = raw.post(f"/contacts/{contact['id']}/tasks", headers=auth(ghl),
                            json={"title": "x", "dueDate": "tomorrow"})
        v2_keys_on_v3 = raw.put(f"/contacts/{contact['id']}", headers=auth(ghl, "v3"),
                                json={"dndSettings": {"SMS": {"status": "active"}}})
    assert no_type.status_code == 422 and isinstance(no_type.json()["message"], list)
    assert no_phone.status_code == 400
    assert bad_tags.status_code == 422
    assert bad_task.status_code == 422 and len(bad_task.json()["message"]) == 2
    assert v2_keys_on_v3.status_code == 422


async def test_fake_sustains_a_few_hundred_requests_per_second(ghl: FakeGHLServer) -> None:
    ghl.rate_limit = None
    contact = ghl.add_contact()
    # Ten callers at a time, as a worker pool would be: a deep httpx pool queue is slow on the client side.
    gate = asyncio.Semaphore(10)
    async with httpx.AsyncClient(base_url=ghl.base_url) as raw:

        async def one() -> httpx.Response:
            async with gate:
                return await raw.get(f"/contacts/{contact['id']}", headers=auth(ghl))

        started = time.perf_counter()
        answers = await asyncio.gather(*(one() for _ in range(400)))
        elapsed = time.perf_counter() - started
    assert {a.status_code for a in answers} == {200}
    # Client and server share this process (and CI shares the machine): ~600/s idle, 100 is the floor.
    assert 400 / elapsed > 100, f"only {400 / elapsed:.0f} req/s"


async def test_slow_answer_does_not_block_stop() -> None:
    server = FakeRetellServer().start()
    server.script_faults([Fault(delay=30.0)])
    async with httpx.AsyncClient(base_url=server.base_url, timeout=0.2) as raw:
        with pytest.raises(httpx.ReadTimeout):
            await raw.post("/v2/create-phone-call", headers={"Authorization": f"Bearer {server.api_key}"},
                           json={"from_number": "+15125550100", "to_number": "+15125550123"})
    started = time.perf_counter()
    server.stop()
    assert time.perf_counter() - started < 3.0


def test_retell_fake_requires_numbers(retell: FakeRetellServer) -> None:
    with httpx.Client(base_url=retell.base_url) as raw:
        headers = {"Authorization": f"Bearer {retell.api_key}"}
        missing = raw.post("/v2/create-phone-call", headers=headers, json={"to_number": "+15125550123"})
        unauth = raw.post("/v2/create-phone-call", json={"from_number": "+15125550100",
                                                          "to_number": "+15125550123"})
    assert missing.status_code == 400 and missing.json()["status"] == "error"
    assert unauth.status_code == 401 and unauth.json() == {"status": "error",
                                                           "message": "API key is missing or invalid."}


# -- webhook emitter -------------------------------------------------------------------------------


def test_inbound_message_shape() -> None:
    payload = webhooks.inbound_message("cI08i1Bls3iTB9bKgFJh", "Yes, Saturday works",
                                       date_added="2026-07-05T18:31:45.750Z")
    assert payload["type"] == "InboundMessage" and payload["direction"] == "inbound"
    for key in ("locationId", "contactId", "messageId", "conversationId", "body", "messageType",
                "dateAdded", "timestamp", "webhookId"):
        assert payload[key], key
    assert payload["timestamp"] == "2026-07-05T18:31:45.750Z"
    email = webhooks.inbound_message("c1", "<p>hi</p>", message_type="Email", subject="Re: Oak St")
    assert email["subject"] == "Re: Oak St" and email["emailMessageId"]


def test_outbound_message_shape() -> None:
    payload = webhooks.outbound_message("c1", "Hi from a human", message_id="m1")
    assert payload["type"] == "OutboundMessage"
    assert (payload["direction"], payload["source"]) == ("outbound", "app")
    assert payload["userId"] and payload["messageId"] == "m1"


def test_contact_events_use_id(ghl: FakeGHLServer) -> None:
    contact = ghl.add_contact()
    dnd = webhooks.contact_dnd_update(contact)
    assert dnd["type"] == "ContactDndUpdate" and dnd["id"] == contact["id"] and "contactId" not in dnd
    assert dnd["dnd"] is True and dnd["dndSettings"]["SMS"]["status"] == "active"
    assert dnd["locationId"] == ghl.location_id and dnd["phone"] == contact["phone"]
    deleted = webhooks.contact_delete(contact["id"], location_id="L1")
    assert (deleted["type"], deleted["id"], deleted["locationId"]) == ("ContactDelete", contact["id"], "L1")
    tagged = webhooks.contact_tag_update(contact, ["buyer", "hot"])
    assert tagged["type"] == "ContactTagUpdate" and tagged["tags"] == ["buyer", "hot"]
    assert len({dnd["webhookId"], deleted["webhookId"], tagged["webhookId"]}) == 3


def test_inbound_payload_from_the_fake_uses_the_contacts_conversation(ghl: FakeGHLServer) -> None:
    contact = ghl.add_contact()
    payload = ghl.inbound_message_payload(contact["id"], "STOP")
    assert payload["conversationId"] == ghl.conversation_id(contact["id"])
    assert payload["locationId"] == ghl.location_id


def test_signed_webhook_verifies_over_exact_bytes() -> None:
    signed = webhooks.sign_ghl_webhook(webhooks.inbound_message("c1", "héllo ✓"), rsa_legacy=True)
    assert signed.body == json.dumps(signed.payload, separators=(",", ":"), ensure_ascii=False).encode()
    scheme = verify_ghl_webhook(signed.body, signed.headers, TEST_ED25519_PUBLIC_PEM, rsa_public_pem())
    assert scheme == "ed25519"
    started = webhooks.call_started(webhooks.retell_call("call1"))
    retell_signed = webhooks.sign_retell_webhook(started, ts_ms=5)
    assert verify_retell_signature(retell_signed.body, retell_signed.headers["x-retell-signature"],
                                   TEST_RETELL_API_KEY, now_ms=5) == 5


def recording_transport(statuses: list[int], seen: list[httpx.Request]) -> httpx.MockTransport:
    answers = iter(statuses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(next(answers))

    return httpx.MockTransport(handler)


async def test_ghl_delivery_redelivers_only_on_429() -> None:
    signed = webhooks.sign_ghl_webhook(webhooks.inbound_message("c1", "hi"))
    seen: list[httpx.Request] = []
    result = await webhooks.deliver_ghl("http://bot.test/webhooks/ghl", signed,
                                        transport=recording_transport([429, 429, 200], seen))
    assert result.statuses == [429, 429, 200] and result.delivered
    assert {r.content for r in seen} == {signed.body}  # the same bytes every time
    assert seen[0].headers["x-ghl-signature"] == signed.headers["X-GHL-Signature"]

    seen.clear()
    gave_up = await webhooks.deliver_ghl("http://bot.test/webhooks/ghl", signed,
                                         transport=recording_transport([429] * 10, seen))
    assert gave_up.attempts == 7 and not gave_up.delivered  # the first try plus 6 redeliveries

    seen.clear()
    final = await webhooks.deliver_ghl("http://bot.test/webhooks/ghl", signed,
                                       transport=recording_transport([500, 200], seen))
    assert final.statuses == [500]  # anything but 429 is final: the event is lost


async def test_retell_delivery_retries_non_2xx_and_resigns() -> None:
    clock = iter([1_000, 2_000, 3_000])
    seen: list[httpx.Request] = []
    payload = webhooks.call_ended(webhooks.retell_call("call1"))
    result = await webhooks.deliver_retell("http://bot.test/webhooks/retell", payload,
                                           now_ms=lambda: next(clock),
                                           transport=recording_transport([500, 401, 204], seen))
    assert result.statuses == [500, 401, 204] and result.delivered
    signatures = [r.headers["x-retell-signature"] for r in seen]
    assert len(set(signatures)) == 3
    for request, stamp in zip(seen, (1_000, 2_000, 3_000), strict=True):
        verify_retell_signature(request.content, request.headers["x-retell-signature"], TEST_RETELL_API_KEY,
                                now_ms=stamp)


async def test_delivery_transport_failure_is_recorded_as_none() -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    signed = webhooks.sign_ghl_webhook(webhooks.inbound_message("c1", "hi"))
    result = await webhooks.deliver_ghl("http://bot.test/x", signed, transport=httpx.MockTransport(boom))
    assert result.statuses == [None] and not result.delivered
