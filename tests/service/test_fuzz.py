"""Property-based fuzzing of the webhook routes (in-process through ``httpx.ASGITransport``, real Redis):
whatever arrives, the answer is a JSON 2xx/4xx, never a 500."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ghl_real_estate_ai.api.app import create_app
from ghl_real_estate_ai.config import Settings
from ghl_real_estate_ai.service import LeadBotService
from ghl_real_estate_ai.testing import keys, webhooks
from ghl_real_estate_ai.testing.fakes import FakeCrm, FakeVoice

LOCATION = webhooks.DEFAULT_LOCATION_ID
ALLOWED = {200, 400, 401, 413, 422, 429}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

ascii_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=120)
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


def _timestamps() -> st.SearchStrategy[Any]:
    now = time.time()
    return st.one_of(
        st.floats(min_value=now - 900, max_value=now + 900).map(
            lambda t: webhooks.iso(datetime.fromtimestamp(t, UTC))),
        json_value,
    )


ghl_payloads = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(["InboundMessage", "OutboundMessage", "ContactDndUpdate",
                                           "ContactTagUpdate", "ContactDelete", "NoteCreate"]), json_value),
        "locationId": st.one_of(st.just(LOCATION), json_value),
        "contactId": st.one_of(st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True), json_value),
        "id": st.one_of(st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True), json_value),
        "messageType": st.one_of(st.sampled_from(["SMS", "Email", "CALL", "TYPE_SMS"]), json_value),
        "body": json_value,
        "messageId": json_value,
        "webhookId": json_value,
        "userId": json_value,
        "source": st.one_of(st.sampled_from(["app", "api", "workflow"]), json_value),
        "timestamp": _timestamps(),
        "tags": json_value,
        "dndSettings": json_value,
        "dnd": json_value,
    },
)

retell_payloads = st.fixed_dictionaries(
    {},
    optional={
        "event": st.one_of(
            st.sampled_from(["call_started", "call_ended", "call_analyzed", "transcript_updated"]), json_value
        ),
        "call": st.one_of(
            st.fixed_dictionaries({}, optional={
                "call_id": st.one_of(st.from_regex(r"[a-z0-9]{1,32}", fullmatch=True), json_value),
                "metadata": st.one_of(
                    st.fixed_dictionaries({"ghl_contact_id": st.one_of(
                        st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True), json_value)}),
                    json_value),
                "call_analysis": json_value,
                "transcript": json_value,
                "disconnection_reason": json_value,
            }),
            json_value,
        ),
    },
)


@pytest.fixture
async def app(redis_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, LeadBotService]]:
    config = Settings(
        redis_url=redis_url, ghl_api_token="pit-test", ghl_location_id=LOCATION,
        ghl_webhook_public_key=keys.TEST_ED25519_PUBLIC_PEM, ghl_webhook_rsa_public_key=keys.rsa_public_pem(),
        retell_api_key=keys.TEST_RETELL_API_KEY, api_token="operator-token",
    )
    crm = FakeCrm()
    service = LeadBotService(config, crm=crm, voice=FakeVoice(crm), run_worker=False, run_scheduler=False)
    await service.start()
    transport = httpx.ASGITransport(app=create_app(config, service=service))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://lead-bot.test") as client:
            yield client, service
    finally:
        await service.stop()
    assert service.metrics.errors.labels("unhandled")._value.get() == 0


def check(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in ALLOWED, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict)
    if response.status_code >= 400:
        assert isinstance(body.get("error"), str) and body["error"]
    else:
        assert body["status"] in {"accepted", "duplicate", "ignored"}
    return body


@FUZZ
@given(payload=ghl_payloads, legacy=st.booleans())
async def test_signed_ghl_payloads_never_500(app: tuple[httpx.AsyncClient, LeadBotService],
                                             payload: dict[str, Any], legacy: bool) -> None:
    client, _ = app
    body = json.dumps(payload).encode()
    headers = keys.sign_ghl(body, ed25519=not legacy, rsa_legacy=legacy)
    check(await client.post("/webhooks/ghl", content=body, headers=headers))


@FUZZ
@given(body=st.binary(max_size=300), signature=st.one_of(st.none(), ascii_text),
       legacy=st.one_of(st.none(), ascii_text), sign=st.booleans())
async def test_arbitrary_ghl_bytes_never_500(app: tuple[httpx.AsyncClient, LeadBotService], body: bytes,
                                            signature: str | None, legacy: str | None, sign: bool) -> None:
    client, _ = app
    headers = keys.sign_ghl(body) if sign else {}
    if signature is not None:
        headers["X-GHL-Signature"] = signature
    if legacy is not None:
        headers["x-wh-signature"] = legacy
    response = await client.post("/webhooks/ghl", content=body, headers=headers)
    check(response)
    if not sign or signature is not None:  # no valid signature on these bytes
        assert response.status_code == 401


@FUZZ
@given(payload=retell_payloads, skew=st.integers(min_value=-600_000, max_value=600_000))
async def test_signed_retell_payloads_never_500(app: tuple[httpx.AsyncClient, LeadBotService],
                                                payload: dict[str, Any], skew: int) -> None:
    client, _ = app
    body = json.dumps(payload).encode()
    headers = keys.sign_retell(body, keys.TEST_RETELL_API_KEY, int(time.time() * 1000) + skew)
    response = await client.post("/webhooks/retell", content=body, headers=headers)
    check(response)
    if abs(skew) > 301_000:
        assert response.status_code == 401


@FUZZ
@given(body=st.binary(max_size=300), signature=st.one_of(st.none(), ascii_text))
async def test_arbitrary_retell_bytes_never_500(app: tuple[httpx.AsyncClient, LeadBotService], body: bytes,
                                               signature: str | None) -> None:
    client, _ = app
    headers = {"x-retell-signature": signature} if signature is not None else {}
    assert check(await client.post("/webhooks/retell", content=body, headers=headers)) is not None


@FUZZ
@given(contact_id=st.text(max_size=40), action=st.sampled_from(["enroll", "pause", "resume", "cancel"]),
       body=st.one_of(st.none(), json_value))
async def test_operator_routes_never_500(app: tuple[httpx.AsyncClient, LeadBotService], contact_id: str,
                                         action: str, body: Any) -> None:
    client, _ = app
    path = "/api/leads/" + quote(contact_id, safe="")
    auth = {"Authorization": "Bearer operator-token"}
    get = await client.get(path, headers=auth)
    assert get.status_code in {200, 401, 404, 405, 422} and "error" in get.json()
    post = await client.post(f"{path}/{action}", headers=auth, json=body)
    assert post.status_code in {202, 404, 405, 422}, post.text
    assert isinstance(post.json(), dict)


async def test_oversized_bodies_are_refused(app: tuple[httpx.AsyncClient, LeadBotService]) -> None:
    client, _ = app
    body = b"x" * (1_048_576 + 1)
    response = await client.post("/webhooks/ghl", content=body, headers=keys.sign_ghl(body))
    assert response.status_code == 413 and response.json()["error"]
