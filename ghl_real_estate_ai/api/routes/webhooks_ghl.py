"""``POST /webhooks/ghl`` (marketplace events) and ``POST /webhooks/ghl/workflow`` (workflow enrollment).

The route verifies the signature (dependency), checks freshness, translates the payload into a graph event
(:func:`translate_ghl_event`, pure), appends it to the intake stream with its dedupe key, and answers:

* 200 ``{"status": "accepted", "id": ...}`` once Redis stored it; 200 ``{"status": "duplicate"}`` for a
  redelivery; 200 ``{"status": "ignored", "reason": ...}`` for events the bot does not act on;
* 401 bad/missing signature or stale ``timestamp``; 400 malformed JSON or missing fields;
* 429 when the event cannot be stored (GHL redelivers only after a 429).

OutboundMessage rule (who wrote it): GHL reports every outbound message, the bot's own included. An
OutboundMessage is taken as a human's (and pauses the bot: ``human_message``) only when it carries a
``userId`` (a GHL user wrote it), its ``source`` is not an automated one (``api``, ``workflow``,
``campaign``, ``bulk_actions``, ``automation``, ``trigger``) and its ``messageId`` is not one the bot's own
sends returned. The bot records those ids in Redis when each send returns; the intake worker checks them
under the lead's lock, so a webhook that overtakes the send's answer still finds the id.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ghl_real_estate_ai.api.deps import ApiError, ApiToken, GHLVerified, RawBody, ServiceDep
from ghl_real_estate_ai.api.intake import IntakeUnavailableError
from ghl_real_estate_ai.api.signatures import SignatureError, check_timestamp
from ghl_real_estate_ai.errors import IntegrationError, InvalidEventError, TransientIntegrationError

router = APIRouter(tags=["webhooks"])

HUMAN_OUTBOUND_GUARD = "human_outbound"
AUTOMATED_SOURCES = frozenset({"api", "workflow", "campaign", "bulk_actions", "automation", "trigger"})
_CHANNELS = {"sms": "sms", "type_sms": "sms", "email": "email", "type_email": "email"}
_CONTACT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}")
_TAGS = re.compile(r"<[^>]*>")
_MAX_TEXT = 5000


@dataclass(frozen=True)
class Translated:
    """A GHL event as the bot will queue it, or ``ignored`` with the reason it is not queued."""

    event_type: str
    contact_id: str = ""
    event: dict[str, Any] = field(default_factory=dict)
    dedupe: str = ""
    guard: str = ""
    ignored: str | None = None


def valid_contact_id(value: Any, what: str = "contactId") -> str:
    """A GHL contact id, or ``InvalidEventError``: 1-128 characters, letters, digits and ``_.:@+-``."""
    if not isinstance(value, str) or not _CONTACT_ID.fullmatch(value):
        raise InvalidEventError(f"{what} must be a contact id (letters, digits, _.:@+-; at most 128)")
    return value


def _text(payload: dict[str, Any], channel: str) -> str:
    body = payload.get("body")
    if not isinstance(body, str):
        body = ""
    if channel == "email":  # email bodies arrive as HTML
        body = re.sub(r"\s+", " ", _TAGS.sub(" ", body)).strip()
    return body[:_MAX_TEXT]


def _channel(payload: dict[str, Any]) -> str | None:
    kind = payload.get("messageType")
    return _CHANNELS.get(kind.strip().lower()) if isinstance(kind, str) else None


def _dedupe(payload: dict[str, Any], raw: bytes) -> str:
    webhook_id = payload.get("webhookId")
    if isinstance(webhook_id, str) and webhook_id:
        return f"ghl:webhook:{webhook_id[:200]}"
    message_id = payload.get("messageId")
    if isinstance(message_id, str) and message_id:
        return f"ghl:message:{message_id[:200]}"
    return f"ghl:body:{hashlib.sha256(raw).hexdigest()}"  # same bytes again = the same delivery


def translate_ghl_event(payload: dict[str, Any], raw: bytes, location_id: str | None = None) -> Translated:
    """Map a verified GHL payload to the event to queue. Raises ``InvalidEventError`` for missing fields."""
    kind = payload.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidEventError("the event has no 'type'")
    kind = kind[:60]
    where = payload.get("locationId")
    if location_id and isinstance(where, str) and where and where != location_id:
        return Translated(kind, ignored=f"event for location {where[:40]!r}, not {location_id!r}")
    if kind in ("InboundMessage", "OutboundMessage"):
        contact_id = valid_contact_id(payload.get("contactId"))
        channel = _channel(payload)
        if channel is None:
            shown = str(payload.get("messageType"))[:30]
            return Translated(kind, contact_id, ignored=f"messageType {shown!r} is not SMS or Email")
        message_id = payload.get("messageId") if isinstance(payload.get("messageId"), str) else ""
        text = _text(payload, channel)
        if kind == "InboundMessage":
            event = {"type": "inbound_message", "text": text, "channel": channel, "source": "webhook"}
            if message_id:
                event["message_id"] = message_id
            return Translated(kind, contact_id, event, _dedupe(payload, raw))
        source = payload.get("source")
        user_id = payload.get("userId")
        if not (isinstance(user_id, str) and user_id):
            return Translated(kind, contact_id, ignored="outbound message without a userId: not a human")
        if isinstance(source, str) and source.strip().lower() in AUTOMATED_SOURCES:
            return Translated(kind, contact_id, ignored=f"outbound message from source {source!r}: automated")
        event = {"type": "human_message", "text": text, "source": "webhook"}
        if message_id:
            event["message_id"] = message_id
        return Translated(kind, contact_id, event, _dedupe(payload, raw), guard=HUMAN_OUTBOUND_GUARD)
    if kind in ("ContactDndUpdate", "ContactTagUpdate"):
        contact_id = valid_contact_id(payload.get("id") or payload.get("contactId"), "id")
        contact = {k: v for k, v in payload.items() if k not in ("type", "timestamp", "webhookId")}
        if "tags" in contact and not (isinstance(contact["tags"], list)
                                      and all(isinstance(t, str) for t in contact["tags"])):
            raise InvalidEventError("tags must be a list of strings")
        if "dndSettings" in contact and not isinstance(contact["dndSettings"], dict):
            raise InvalidEventError("dndSettings must be an object")
        update: dict[str, Any] = {"type": "contact_update", "contact": contact, "source": "webhook"}
        return Translated(kind, contact_id, update, _dedupe(payload, raw))
    if kind == "ContactDelete":
        contact_id = valid_contact_id(payload.get("id") or payload.get("contactId"), "id")
        return Translated(kind, contact_id, {"type": "contact_deleted", "source": "webhook"},
                          _dedupe(payload, raw))
    return Translated(kind, ignored=f"event type {kind!r} is not used by the bot")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ``InvalidEventError``."""
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidEventError("the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidEventError("the body must be a JSON object")
    return payload


@router.post("/webhooks/ghl")
async def ghl_webhook(verified: GHLVerified) -> JSONResponse:
    started = time.perf_counter()
    service = verified.service
    metrics = service.metrics
    try:
        payload = parse_json_object(verified.raw)
        tolerance = timedelta(seconds=service.settings.ghl_webhook_tolerance_seconds)
        try:
            check_timestamp(payload.get("timestamp"), service.wall_now(), tolerance)
        except SignatureError as exc:
            if exc.reason == "stale":
                metrics.webhook("ghl", str(payload.get("type"))[:40], "stale")
                raise ApiError(401, str(exc)) from None
            raise InvalidEventError(exc.detail) from None
        location: str | None = None
        if service.settings.marketplace:
            if payload.get("type") in ("INSTALL", "UNINSTALL"):
                return await _lifecycle(service, payload)
            location = await _installed_location(service, payload)
        translated = translate_ghl_event(payload, verified.raw,
                                         None if location else service.settings.ghl_location_id)
        if location and translated.ignored is None:
            translated.event["location_id"] = location
    except InvalidEventError as exc:
        metrics.webhook("ghl", "-", "invalid")
        raise ApiError(400, str(exc)) from None
    if translated.ignored is not None:
        metrics.webhook("ghl", translated.event_type, "ignored", time.perf_counter() - started)
        return JSONResponse({"status": "ignored", "reason": translated.ignored})
    try:
        result = await service.intake.append(
            translated.contact_id, translated.event, source="ghl", dedupe=translated.dedupe,
            guard=translated.guard,
        )
    except IntakeUnavailableError as exc:
        metrics.webhook("ghl", translated.event_type, "unavailable")
        metrics.error("intake_append")
        raise ApiError(429, f"cannot store the event right now ({exc.detail}); redeliver later",
                       headers={"Retry-After": "30"}) from None
    seconds = time.perf_counter() - started
    if result.duplicate:
        metrics.webhook("ghl", translated.event_type, "duplicate", seconds)
        return JSONResponse({"status": "duplicate"})
    metrics.webhook("ghl", translated.event_type, "accepted", seconds)
    return JSONResponse({"status": "accepted", "id": result.entry_id})


def event_location(payload: dict[str, Any]) -> str | None:
    """Where an event belongs: ``locationId``, else (agency events) ``companyId``."""
    for key in ("locationId", "companyId"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value[:100]
    return None


async def _installed_location(service: Any, payload: dict[str, Any]) -> str:
    """Marketplace mode: the event's location, which must have installed the app (else 403, stored
    nowhere). A location waiting for a reinstall still receives its events (they wait with its steps)."""
    location = event_location(payload)
    if location is None:
        raise InvalidEventError("the event names no locationId")
    state = (await service.vault.state(location) or {}).get("state")
    if state not in ("installed", "needs_reinstall"):
        service.metrics.webhook("ghl", str(payload.get("type"))[:40], "not_installed")
        raise ApiError(403, f"location {location!r} has not installed the app")
    return location


async def _lifecycle(service: Any, payload: dict[str, Any]) -> JSONResponse:
    """INSTALL / UNINSTALL (signature verified): applied at once; GHL retries only after a 429."""
    kind = str(payload.get("type"))
    handler = service.installations.on_install if kind == "INSTALL" else service.installations.on_uninstall
    try:
        outcome = await handler(payload)
    except TransientIntegrationError as exc:
        service.metrics.webhook("ghl", kind, "unavailable")
        raise ApiError(429, f"cannot apply {kind} right now ({exc}); redeliver later",
                       headers={"Retry-After": "30"}) from None
    except IntegrationError as exc:
        service.metrics.webhook("ghl", kind, "invalid")
        raise ApiError(400, str(exc)) from None
    service.metrics.webhook("ghl", kind, "accepted")
    return JSONResponse({"status": "applied", "detail": outcome})


@router.post("/webhooks/ghl/workflow")
async def ghl_workflow_webhook(_auth: ApiToken, body: RawBody, service: ServiceDep) -> JSONResponse:
    """A GHL workflow "Webhook" action enrolling a contact: snake_case ``contact_id`` and ``location.id``."""
    try:
        payload = parse_json_object(body)
        contact_id = valid_contact_id(payload.get("contact_id"), "contact_id")
        location = payload.get("location")
        location_id = location.get("id") if isinstance(location, dict) else None
        if location is not None and not (isinstance(location, dict) and isinstance(location_id, str | None)):
            raise InvalidEventError("location must be an object with a string id")
    except InvalidEventError as exc:
        service.metrics.webhook("workflow", "enroll", "invalid")
        raise ApiError(400, str(exc)) from None
    configured = service.settings.ghl_location_id
    event: dict[str, Any] = {"type": "enroll", "source": "workflow"}
    if service.settings.marketplace:
        if not location_id:
            service.metrics.webhook("workflow", "enroll", "invalid")
            raise ApiError(400, "location.id is required in Marketplace mode")
        event["location_id"] = await _installed_location(service, {"locationId": location_id})
    elif configured and location_id and location_id != configured:
        service.metrics.webhook("workflow", "enroll", "ignored")
        reason = f"location {location_id!r} is not {configured!r}"
        return JSONResponse({"status": "ignored", "reason": reason})
    try:
        result = await service.intake.append(contact_id, event, source="workflow")
    except IntakeUnavailableError as exc:
        service.metrics.webhook("workflow", "enroll", "unavailable")
        raise ApiError(429, f"cannot store the enrollment right now ({exc.detail}); retry later",
                       headers={"Retry-After": "30"}) from None
    service.metrics.webhook("workflow", "enroll", "accepted")
    return JSONResponse({"status": "accepted", "id": result.entry_id})
