"""Build, sign and deliver webhook payloads the way GHL and Retell send them (tests, demo, benchmarks).

GHL marketplace events (``InboundMessage``, ``OutboundMessage``, ``ContactDndUpdate``, ``ContactDelete``,
``ContactTagUpdate``) are camelCase JSON objects carrying ``type``, ``locationId``, ``timestamp`` and
``webhookId``; they are serialised once to exact bytes (:func:`encode`) and those bytes are signed with
the test keys of :mod:`ghl_real_estate_ai.testing.keys`. Retell events are ``{"event", "call"}`` signed
with ``x-retell-signature``.

Delivery follows each sender's retry rule: GHL redelivers the same bytes only after a 429 (at most 6
times); Retell retries any non-2xx answer or timeout (at most 3 times), signing each attempt anew.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from ghl_real_estate_ai.testing.keys import TEST_RETELL_API_KEY, sign_ghl, sign_retell

__all__ = [
    "DEFAULT_LOCATION_ID",
    "DeliveryResult",
    "SignedWebhook",
    "call_analyzed",
    "call_ended",
    "call_started",
    "contact_delete",
    "contact_dnd_update",
    "contact_tag_update",
    "deliver",
    "deliver_ghl",
    "deliver_retell",
    "encode",
    "ghl_id",
    "inbound_message",
    "iso",
    "outbound_message",
    "retell_call",
    "retell_call_events",
    "sign_ghl_webhook",
    "sign_retell_webhook",
]

DEFAULT_LOCATION_ID = "LeadBotTestLocation1"
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

Sleep = Callable[[float], Awaitable[Any]]


def ghl_id(rng: random.Random | None = None) -> str:
    """A 20-character alphanumeric id like GHL's."""
    rng = rng or random.Random()
    return "".join(rng.choice(_ID_ALPHABET) for _ in range(20))


def iso(when: datetime | str | None = None) -> str:
    """ISO 8601 UTC with milliseconds and ``Z`` (GHL's style); strings pass through unchanged."""
    if isinstance(when, str):
        return when
    when = when or datetime.now(UTC)
    if when.tzinfo is None:
        raise ValueError("webhook times must be timezone-aware")
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent: compact JSON (as ``JSON.stringify`` writes it), UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _envelope(event_type: str, location_id: str) -> dict[str, Any]:
    return {"type": event_type, "locationId": location_id}


def _finish(payload: dict[str, Any], timestamp: datetime | str | None, webhook_id: str | None,
            extra: Mapping[str, Any]) -> dict[str, Any]:
    payload.update(extra)
    payload["timestamp"] = iso(timestamp)
    payload["webhookId"] = webhook_id or str(uuid.uuid4())
    return payload


def _message_event(
    event_type: str,
    direction: str,
    contact_id: str,
    body: str,
    *,
    location_id: str,
    message_type: str,
    conversation_id: str | None,
    message_id: str | None,
    date_added: datetime | str | None,
    timestamp: datetime | str | None,
    webhook_id: str | None,
    subject: str | None,
    rng: random.Random | None,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    rng = rng or random.Random()
    added = iso(date_added)
    payload = _envelope(event_type, location_id)
    payload.update({
        "attachments": [],
        "body": body,
        "contactId": contact_id,
        "contentType": "text/plain" if message_type != "Email" else "text/html",
        "conversationId": conversation_id or ghl_id(rng),
        "dateAdded": added,
        "direction": direction,
        "messageType": message_type,
        "status": "delivered",
        "messageId": message_id or ghl_id(rng),
        "conversationProviderId": ghl_id(rng),
    })
    if message_type == "Email":
        payload.update({
            "emailMessageId": ghl_id(rng),
            "threadId": payload["messageId"],
            "provider": "Leadconnector Gmail",
            "subject": subject or "Re: your home search",
            "from": "Jane Doe <jane@example.com>",
            "to": ["agent@acmerealty.example"],
            "cc": [],
            "bcc": [],
        })
    return _finish(payload, timestamp if timestamp is not None else date_added, webhook_id, extra)


def inbound_message(
    contact_id: str,
    body: str,
    *,
    location_id: str = DEFAULT_LOCATION_ID,
    message_type: str = "SMS",
    conversation_id: str | None = None,
    message_id: str | None = None,
    date_added: datetime | str | None = None,
    timestamp: datetime | str | None = None,
    webhook_id: str | None = None,
    subject: str | None = None,
    rng: random.Random | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An ``InboundMessage`` event: the lead wrote ``body`` (SMS by default; ``message_type="Email"``
    adds the email fields). ``timestamp`` defaults to ``date_added`` (itself defaulting to now); ids are
    random unless given. ``extra`` keys are added (or override) as they are.
    """
    return _message_event("InboundMessage", "inbound", contact_id, body, location_id=location_id,
                          message_type=message_type, conversation_id=conversation_id, message_id=message_id,
                          date_added=date_added, timestamp=timestamp, webhook_id=webhook_id, subject=subject,
                          rng=rng, extra=extra)


def outbound_message(
    contact_id: str,
    body: str,
    *,
    location_id: str = DEFAULT_LOCATION_ID,
    message_type: str = "SMS",
    user_id: str | None = "AgentUser00000000001",
    source: str = "app",
    conversation_id: str | None = None,
    message_id: str | None = None,
    date_added: datetime | str | None = None,
    timestamp: datetime | str | None = None,
    webhook_id: str | None = None,
    subject: str | None = None,
    rng: random.Random | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An ``OutboundMessage`` event: someone (by default a human user in the GHL app) sent ``body``.

    For the bot's own sends pass ``source="api"`` and the ``message_id`` GHL returned.
    """
    fields: dict[str, Any] = {"source": source}
    if user_id is not None:
        fields["userId"] = user_id
    fields.update(extra)
    return _message_event("OutboundMessage", "outbound", contact_id, body, location_id=location_id,
                          message_type=message_type, conversation_id=conversation_id, message_id=message_id,
                          date_added=date_added, timestamp=timestamp, webhook_id=webhook_id, subject=subject,
                          rng=rng, extra=fields)


_CONTACT_EVENT_FIELDS = (
    "address1", "city", "state", "companyName", "country", "source", "dateAdded", "dateOfBirth", "dnd",
    "email", "name", "firstName", "lastName", "phone", "postalCode", "tags", "website", "attachments",
    "assignedTo", "customFields", "timezone",
)


def _contact_event(event_type: str, contact: Mapping[str, Any] | str, location_id: str | None,
                   timestamp: datetime | str | None, webhook_id: str | None,
                   extra: Mapping[str, Any]) -> dict[str, Any]:
    data: Mapping[str, Any] = {"id": contact} if isinstance(contact, str) else contact
    location = location_id or data.get("locationId") or DEFAULT_LOCATION_ID
    payload = _envelope(event_type, location)
    payload["id"] = data["id"]
    for key in _CONTACT_EVENT_FIELDS:
        if key in data:
            payload[key] = data[key]
    payload.setdefault("tags", [])
    payload.setdefault("customFields", [])
    payload.setdefault("attachments", [])
    return _finish(payload, timestamp, webhook_id, extra)


def contact_dnd_update(
    contact: Mapping[str, Any] | str,
    *,
    sms: str | None = "active",
    email: str | None = "inactive",
    call: str | None = "inactive",
    message: str = "Opted out via STOP",
    location_id: str | None = None,
    timestamp: datetime | str | None = None,
    webhook_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``ContactDndUpdate`` event for ``contact`` (a GHL contact object or just an id).

    ``sms``/``email``/``call`` give each channel's status (``active``, ``inactive``, ``permanent``, or None
    to leave the key out); ``dnd`` is true when any channel is active unless ``extra`` says otherwise.
    """
    settings: dict[str, Any] = {}
    for key, status in (("SMS", sms), ("Email", email), ("Call", call)):
        if status is not None:
            entry: dict[str, Any] = {"status": status}
            if status in ("active", "permanent"):
                entry.update({"message": message, "code": "101"})
            settings[key] = entry
    fields: dict[str, Any] = {
        "dnd": any(v in ("active", "permanent") for v in (sms, email, call)),
        "dndSettings": settings,
    }
    fields.update(extra)
    return _contact_event("ContactDndUpdate", contact, location_id, timestamp, webhook_id, fields)


def contact_delete(
    contact: Mapping[str, Any] | str,
    *,
    location_id: str | None = None,
    timestamp: datetime | str | None = None,
    webhook_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``ContactDelete`` event (the contact id is under ``id``)."""
    return _contact_event("ContactDelete", contact, location_id, timestamp, webhook_id, extra)


def contact_tag_update(
    contact: Mapping[str, Any] | str,
    tags: Sequence[str],
    *,
    location_id: str | None = None,
    timestamp: datetime | str | None = None,
    webhook_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``ContactTagUpdate`` event: ``tags`` is the contact's full tag list after the change."""
    fields = {"tags": list(tags), **extra}
    return _contact_event("ContactTagUpdate", contact, location_id, timestamp, webhook_id, fields)


# -- Retell ----------------------------------------------------------------------------------------


def app_install(app_id: str, *, company_id: str, location_id: str | None = None,
                timestamp: datetime | str | None = None, webhook_id: str | None = None,
                **extra: Any) -> dict[str, Any]:
    """An ``INSTALL`` event: location-level with ``location_id``; agency-level (only ``companyId``)
    without."""
    payload: dict[str, Any] = {"type": "INSTALL", "appId": app_id, "companyId": company_id,
                               "userId": "LeadBotTestUser00001", "planId": "", "installType":
                               "location" if location_id else "agency"}
    if location_id:
        payload["locationId"] = location_id
    return _finish(payload, timestamp, webhook_id, extra)


def app_uninstall(app_id: str, *, location_id: str | None = None, company_id: str | None = None,
                  timestamp: datetime | str | None = None, webhook_id: str | None = None,
                  **extra: Any) -> dict[str, Any]:
    """An ``UNINSTALL`` event: ``{type, appId, locationId}``, or agency-level
    ``{type, appId, companyId}``."""
    payload: dict[str, Any] = {"type": "UNINSTALL", "appId": app_id}
    if location_id:
        payload["locationId"] = location_id
    else:
        payload["companyId"] = company_id
    return _finish(payload, timestamp, webhook_id, extra)


def retell_call(
    call_id: str | None = None,
    *,
    from_number: str = "+15125550100",
    to_number: str = "+15125550123",
    agent_id: str = "agent_test_lead_bot_000000000001",
    metadata: Mapping[str, Any] | None = None,
    dynamic_variables: Mapping[str, str] | None = None,
    start_timestamp: int | None = None,
    duration_ms: int = 121_000,
    disconnection_reason: str = "user_hangup",
    transcript: str = "Agent: Hi, this is Sam from Acme Realty.\nUser: Saturday works.\n",
) -> dict[str, Any]:
    """A finished Retell phone-call object (``call_status`` "ended"). ``start_timestamp`` is epoch ms.

    For calls that never connected (``dial_no_answer``, ``dial_busy``, ``dial_failed``) pass that
    ``disconnection_reason`` with ``duration_ms=0``: the transcript is then empty and ``call_status``
    is "not_connected".
    """
    start = start_timestamp if start_timestamp is not None else int(time.time() * 1000)
    connected = not disconnection_reason.startswith("dial_")
    call: dict[str, Any] = {
        "call_id": call_id or uuid.uuid4().hex,
        "call_type": "phone_call",
        "direction": "outbound",
        "agent_id": agent_id,
        "agent_version": 1,
        "call_status": "ended" if connected else "not_connected",
        "from_number": from_number,
        "to_number": to_number,
        "start_timestamp": start,
        "end_timestamp": start + duration_ms,
        "duration_ms": duration_ms,
        "disconnection_reason": disconnection_reason,
        "transcript": transcript if connected else "",
    }
    if metadata:
        call["metadata"] = dict(metadata)
    if dynamic_variables:
        call["retell_llm_dynamic_variables"] = dict(dynamic_variables)
    return call


_NOT_STARTED_FIELDS = ("end_timestamp", "duration_ms", "disconnection_reason", "transcript", "call_analysis")


def call_started(call: Mapping[str, Any]) -> dict[str, Any]:
    """``{"event": "call_started", "call": ...}`` with ``call_status`` "ongoing" and no end fields."""
    started = {k: v for k, v in call.items() if k not in _NOT_STARTED_FIELDS}
    started["call_status"] = "ongoing"
    return {"event": "call_started", "call": started}


def call_ended(call: Mapping[str, Any]) -> dict[str, Any]:
    """``{"event": "call_ended", "call": ...}``: the full call without ``call_analysis``."""
    return {"event": "call_ended", "call": {k: v for k, v in call.items() if k != "call_analysis"}}


def call_analyzed(
    call: Mapping[str, Any],
    *,
    summary: str = "Lead agreed to a Saturday showing.",
    user_sentiment: str = "Positive",
    call_successful: bool = True,
    in_voicemail: bool = False,
    custom_analysis_data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"event": "call_analyzed", "call": ...}``: the full call with ``call_analysis``."""
    analysed = dict(call)
    analysed["call_analysis"] = {
        "call_summary": summary,
        "in_voicemail": in_voicemail,
        "user_sentiment": user_sentiment,
        "call_successful": call_successful,
        "custom_analysis_data": dict(custom_analysis_data or {}),
    }
    return {"event": "call_analyzed", "call": analysed}


def retell_call_events(call: Mapping[str, Any], **analysis: Any) -> list[dict[str, Any]]:
    """The events Retell sends for ``call``, in order: ``call_started`` (only if it connected),
    ``call_ended``, ``call_analyzed`` (``analysis`` goes to :func:`call_analyzed`).
    """
    events: list[dict[str, Any]] = []
    if not str(call.get("disconnection_reason", "")).startswith("dial_"):
        events.append(call_started(call))
    events.append(call_ended(call))
    events.append(call_analyzed(call, **analysis))
    return events


# -- signing and delivery --------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedWebhook:
    """A payload, its exact bytes, and the headers a real sender would put on the POST."""

    payload: dict[str, Any]
    body: bytes
    headers: dict[str, str]


def sign_ghl_webhook(
    payload: Mapping[str, Any], *, ed25519: bool = True, rsa_legacy: bool = False
) -> SignedWebhook:
    """Encode ``payload`` and sign the bytes with the test keys (``X-GHL-Signature``, optionally
    ``x-wh-signature``)."""
    body = encode(payload)
    return SignedWebhook(dict(payload), body, sign_ghl(body, ed25519=ed25519, rsa_legacy=rsa_legacy))


def sign_retell_webhook(
    payload: Mapping[str, Any], api_key: str = TEST_RETELL_API_KEY, ts_ms: int | None = None
) -> SignedWebhook:
    """Encode a Retell event and sign it (``x-retell-signature``) at ``ts_ms`` (default: now)."""
    body = encode(payload)
    stamp = ts_ms if ts_ms is not None else int(time.time() * 1000)
    return SignedWebhook(dict(payload), body, sign_retell(body, api_key, stamp))


@dataclass
class DeliveryResult:
    """What happened to one webhook: the status of each attempt (None when it failed in transport)."""

    statuses: list[int | None] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        return len(self.statuses)

    @property
    def delivered(self) -> bool:
        last = self.statuses[-1] if self.statuses else None
        return last is not None and 200 <= last < 300

    @property
    def status(self) -> int | None:
        return self.statuses[-1] if self.statuses else None


async def deliver(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    max_redeliveries: int = 6,
    redeliver: Callable[[int | None], bool] = lambda status: status == 429,
    delay: float = 0.0,
    request_timeout: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
    sign: Callable[[], Mapping[str, str]] | None = None,
    sleep: Sleep = asyncio.sleep,
) -> DeliveryResult:
    """POST ``body`` to ``url``, then again while ``redeliver(status)`` says so, at most
    ``max_redeliveries`` more times, ``delay`` seconds apart. The default rule is GHL's: only a 429 is
    redelivered (any other answer, or a transport failure reported as None, is final).

    ``sign`` (when given) makes fresh headers for each attempt, as Retell re-signs its retries.
    ``transport`` lets tests deliver straight into an ASGI app (``httpx.ASGITransport``).
    """
    result = DeliveryResult()
    async with httpx.AsyncClient(transport=transport, timeout=request_timeout) as client:
        for attempt in range(max_redeliveries + 1):
            if attempt and delay:
                await sleep(delay)
            attempt_headers = dict(sign()) if sign is not None else dict(headers)
            try:
                response = await client.post(url, content=body, headers=attempt_headers)
                status: int | None = response.status_code
            except httpx.HTTPError:
                status = None
            result.statuses.append(status)
            if not redeliver(status):
                break
    return result


async def deliver_ghl(
    url: str,
    webhook: SignedWebhook,
    *,
    max_redeliveries: int = 6,
    delay: float = 0.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> DeliveryResult:
    """Deliver a signed GHL event like GHL does: the same bytes again only after a 429, up to 6 times."""
    return await deliver(url, webhook.body, webhook.headers, max_redeliveries=max_redeliveries,
                         delay=delay, transport=transport)


async def deliver_retell(
    url: str,
    payload: Mapping[str, Any],
    api_key: str = TEST_RETELL_API_KEY,
    *,
    now_ms: Callable[[], int] | None = None,
    max_retries: int = 3,
    delay: float = 0.0,
    request_timeout: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> DeliveryResult:
    """Deliver a Retell event like Retell does: retried on any non-2xx answer or failure (10 s timeout),
    up to 3 times, each attempt signed with the current ``now_ms()``.
    """
    body = encode(payload)
    clock = now_ms or (lambda: int(time.time() * 1000))
    return await deliver(
        url, body, {}, max_redeliveries=max_retries,
        redeliver=lambda status: status is None or not 200 <= status < 300,
        delay=delay, request_timeout=request_timeout, transport=transport,
        sign=lambda: sign_retell(body, api_key, clock()),
    )
