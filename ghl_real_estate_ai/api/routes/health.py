"""``GET /healthz`` (Redis, scheduler and intake worker up, with the service's virtual now) and
``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ghl_real_estate_ai.api.deps import ServiceDep
from ghl_real_estate_ai.api.metrics import CONTENT_TYPE_LATEST
from ghl_real_estate_ai.sequence import iso

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(service: ServiceDep) -> JSONResponse:
    """200 ``{"status": "ok", "now": <virtual now>}`` when everything is up; else 503 with the problems."""
    problems = await service.health_problems()
    now = iso(service.now())
    details = await service.health()
    if problems:
        return JSONResponse({"status": "unavailable", "now": now, "error": "; ".join(problems), **details},
                            status_code=503)
    return JSONResponse({"status": "ok", "now": now, **details})


@router.get("/metrics")
async def metrics(service: ServiceDep) -> Response:
    body = await service.metrics.render(service.refresh_metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
