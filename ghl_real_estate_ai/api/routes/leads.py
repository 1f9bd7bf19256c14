"""The operator API: ``GET /api/leads/{contact_id}`` and ``POST /api/leads/{contact_id}/enroll|pause|
resume|cancel`` (bearer ``LEAD_BOT_API_TOKEN``).

Actions are not applied here: they go onto the same intake stream as the webhooks, so the worker applies
them under the lead's lock, in order with the lead's other events, and reschedules it. The answer is
202 ``{"status": "queued", "request_id"}``; with ``?wait=SECONDS`` the route waits for the worker and
answers 200 ``{"status": "applied", "lead"}``, 409 when the action did not apply to the lead's state
(pausing a cancelled lead), 422 when it failed (an unknown contact), or 202 if the wait ran out.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ghl_real_estate_ai.api.deps import ApiError, ApiToken, ServiceDep
from ghl_real_estate_ai.api.intake import IntakeUnavailableError
from ghl_real_estate_ai.errors import LeadNotFoundError
from ghl_real_estate_ai.sequence import parse_time

router = APIRouter(prefix="/api/leads", tags=["leads"])

ContactId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}$",
                                description="the GHL contact id")]
Action = Literal["enroll", "pause", "resume", "cancel"]


class ActionBody(BaseModel):
    """Optional body of an operator action."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500, description="kept in the lead's timeline")
    until: str | None = Field(default=None, description="pause only: resume by itself at this virtual time")
    location_id: str | None = Field(default=None, max_length=100,
                                    description="enroll in Marketplace mode: the contact's GHL location")

    @field_validator("until")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parsed = parse_time(value)
        except ValueError:
            raise ValueError("until must be an ISO 8601 time") from None
        if parsed is None:
            raise ValueError("until must be an ISO 8601 time")
        return value


def operator_event(action: Action, reason: str | None = None, until: str | None = None) -> dict[str, Any]:
    """The graph event for an operator action."""
    event: dict[str, Any] = {"type": action, "source": "operator"}
    if reason:
        event["reason"] = reason
    if until and action == "pause":
        event["until"] = until
    return event


@router.get("/{contact_id}")
async def get_lead(contact_id: ContactId, _auth: ApiToken, service: ServiceDep) -> JSONResponse:
    """The lead's status, current and next step (virtual ISO 8601 UTC), engagement and timeline."""
    try:
        view = await service.lead_view(contact_id)
    except LeadNotFoundError as exc:
        raise ApiError(404, str(exc)) from None
    return JSONResponse(view)


async def _act(action: Action, contact_id: str, body: ActionBody | None, wait: float,
               service: ServiceDep) -> JSONResponse:
    event = operator_event(action, body.reason if body else None, body.until if body else None)
    if body is not None and body.location_id and action == "enroll":
        if not service.settings.marketplace:
            raise ApiError(400, "location_id is for Marketplace mode; this service serves one location")
        state = (await service.vault.state(body.location_id) or {}).get("state")
        if state != "installed":
            raise ApiError(403, f"location {body.location_id!r} has not installed the app")
        event["location_id"] = body.location_id
    try:
        queued = await service.intake.request(contact_id, event, source="operator")
    except IntakeUnavailableError as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "5"}) from None
    pending = {"status": "queued", "request_id": queued.request_id, "id": queued.entry_id}
    if wait <= 0:
        return JSONResponse(pending, status_code=202)
    result = await service.intake.wait_result(queued.request_id, wait)
    if result is None:
        return JSONResponse({**pending, "detail": f"not applied within {wait:g}s"}, status_code=202)
    if not result.get("ok"):
        raise ApiError(422, str(result.get("error") or "the action failed"), request_id=queued.request_id)
    if not result.get("applied", True):
        raise ApiError(409, str(result.get("reason") or "the action does not apply"),
                       status="skipped", lead=result.get("lead"))
    return JSONResponse({"status": "applied", "lead": result.get("lead")})


WaitQuery = Annotated[
    float, Query(ge=0, le=120, description="seconds to wait for the worker (0: do not wait)")
]
OptionalBody = Annotated[ActionBody | None, Body()]


@router.post("/{contact_id}/enroll")
async def enroll(contact_id: ContactId, _auth: ApiToken, service: ServiceDep,
                 body: OptionalBody = None, wait: WaitQuery = 0) -> JSONResponse:
    return await _act("enroll", contact_id, body, wait, service)


@router.post("/{contact_id}/pause")
async def pause(contact_id: ContactId, _auth: ApiToken, service: ServiceDep,
                body: OptionalBody = None, wait: WaitQuery = 0) -> JSONResponse:
    return await _act("pause", contact_id, body, wait, service)


@router.post("/{contact_id}/resume")
async def resume(contact_id: ContactId, _auth: ApiToken, service: ServiceDep,
                 body: OptionalBody = None, wait: WaitQuery = 0) -> JSONResponse:
    return await _act("resume", contact_id, body, wait, service)


@router.post("/{contact_id}/cancel")
async def cancel(contact_id: ContactId, _auth: ApiToken, service: ServiceDep,
                 body: OptionalBody = None, wait: WaitQuery = 0) -> JSONResponse:
    return await _act("cancel", contact_id, body, wait, service)
