"""``POST /webhooks/retell``: Retell call events, verified by ``x-retell-signature``.

``call_ended`` and ``call_analyzed`` become ``call_result`` events for the contact named in the call's
``metadata.ghl_contact_id`` (deduplicated by ``(call_id, event)``); ``call_started`` and other events are
acknowledged and ignored. Answers 200 once stored, 401 for a bad signature, 400 for a malformed body, and
429 when the event cannot be stored (Retell retries any non-2xx answer).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ghl_real_estate_ai.api.deps import ApiError, RetellVerified
from ghl_real_estate_ai.api.intake import IntakeUnavailableError
from ghl_real_estate_ai.api.routes.webhooks_ghl import parse_json_object, valid_contact_id
from ghl_real_estate_ai.errors import InvalidEventError

router = APIRouter(tags=["webhooks"])

RESULT_EVENTS = frozenset({"call_ended", "call_analyzed"})
# What the graph needs from a call; transcripts with word timings are dropped to keep the state small.
CALL_FIELDS = (
    "call_id", "call_status", "call_type", "direction", "from_number", "to_number", "agent_id",
    "start_timestamp", "end_timestamp", "duration_ms", "disconnection_reason", "metadata", "call_analysis",
    "transcript", "recording_url", "public_log_url",
)
MAX_TRANSCRIPT = 8000


def translate_retell_event(payload: dict[str, Any]) -> tuple[str, str, dict[str, Any], str] | str:
    """``(event name, contact id, call_result event, dedupe key)``, or the reason the event is ignored.
    Raises ``InvalidEventError`` for a malformed payload."""
    name = payload.get("event")
    if not isinstance(name, str) or not name:
        raise InvalidEventError("the event has no 'event' name")
    call = payload.get("call", payload.get("data"))
    if not isinstance(call, dict):
        raise InvalidEventError("the event has no 'call' object")
    if name not in RESULT_EVENTS:
        return f"{name[:40]} is acknowledged and not used"
    call_id = call.get("call_id")
    if not isinstance(call_id, str) or not call_id or len(call_id) > 200:
        raise InvalidEventError("call.call_id must be a non-empty string")
    metadata = call.get("metadata")
    contact = metadata.get("ghl_contact_id") if isinstance(metadata, dict) else None
    if contact is None:
        return "the call carries no metadata.ghl_contact_id: not a Lead Bot call"
    contact_id = valid_contact_id(contact, "call.metadata.ghl_contact_id")
    slim = {k: call[k] for k in CALL_FIELDS if k in call}
    if isinstance(slim.get("transcript"), str):
        slim["transcript"] = slim["transcript"][:MAX_TRANSCRIPT]
    if "call_analysis" in slim and not isinstance(slim["call_analysis"], dict):
        raise InvalidEventError("call.call_analysis must be an object")
    event = {"type": "call_result", "call": slim, "reason": name, "source": "webhook"}
    return name, contact_id, event, f"retell:{call_id}:{name}"


@router.post("/webhooks/retell")
async def retell_webhook(verified: RetellVerified) -> JSONResponse:
    started = time.perf_counter()
    service = verified.service
    metrics = service.metrics
    try:
        translated = translate_retell_event(parse_json_object(verified.raw))
    except InvalidEventError as exc:
        metrics.webhook("retell", "-", "invalid")
        raise ApiError(400, str(exc)) from None
    if isinstance(translated, str):
        metrics.webhook("retell", "-", "ignored", time.perf_counter() - started)
        return JSONResponse({"status": "ignored", "reason": translated})
    name, contact_id, event, dedupe = translated
    try:
        result = await service.intake.append(contact_id, event, source="retell", dedupe=dedupe)
    except IntakeUnavailableError as exc:
        metrics.webhook("retell", name, "unavailable")
        metrics.error("intake_append")
        raise ApiError(429, f"cannot store the event right now ({exc.detail})",
                       headers={"Retry-After": "30"}) from None
    seconds = time.perf_counter() - started
    if result.duplicate:
        metrics.webhook("retell", name, "duplicate", seconds)
        return JSONResponse({"status": "duplicate"})
    metrics.webhook("retell", name, "accepted", seconds)
    return JSONResponse({"status": "accepted", "id": result.entry_id})
