"""``create_app(settings)``: the FastAPI app. Thin: routes validate, verify, store and return.

Without ``service`` the app owns a :class:`~ghl_real_estate_ai.service.LeadBotService` in its lifespan
(Redis, checkpointer, clients, scheduler and intake worker start before the first request and stop after
the last). With ``service`` the caller owns it (``lead-bot serve`` starts it before binding the port, so a
bad configuration is a one-line error; tests share one service between apps).

Every error leaves as JSON ``{"error": ...}``: refusals with their 4xx, validation errors as 422, Redis
being unreachable as 503, an unexpected exception as 500; on ``POST /webhooks/ghl`` any 5xx becomes a 429
so that GHL redelivers the event rather than losing it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ghl_real_estate_ai import __version__
from ghl_real_estate_ai.api.deps import ApiError
from ghl_real_estate_ai.api.routes import health, leads, oauth, webhooks_ghl, webhooks_retell
from ghl_real_estate_ai.config import Settings
from ghl_real_estate_ai.errors import InvalidEventError
from ghl_real_estate_ai.service import LeadBotService

log = logging.getLogger(__name__)


def _error(status_code: int, message: str, headers: dict[str, str] | None = None,
           **extra: object) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status_code, headers=headers)


def _for_ghl(request: Request) -> bool:
    return request.url.path.rstrip("/") == "/webhooks/ghl"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if exc.status >= 500 and _for_ghl(request):  # GHL redelivers only after a 429
        return _error(429, exc.message, {"Retry-After": "30", **exc.headers}, **exc.extra)
    return _error(exc.status, exc.message, exc.headers or None, **exc.extra)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _error(exc.status_code, str(exc.detail), dict(exc.headers) if exc.headers else None)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for item in exc.errors():
        where = ".".join(str(part) for part in item.get("loc", ()))
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    return _error(422, "; ".join(problems) or "invalid request")


async def _invalid_event(request: Request, exc: Exception) -> JSONResponse:
    return _error(400, str(exc))


async def _redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis unavailable during %s %s: %s", request.method, request.url.path, exc)
    if _for_ghl(request):
        return _error(429, "storage unavailable; redeliver later", {"Retry-After": "30"})
    return _error(503, f"storage unavailable: {type(exc).__name__}", {"Retry-After": "5"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    service = getattr(request.app.state, "service", None)
    if service is not None:
        service.metrics.error("unhandled")
    if _for_ghl(request):
        return _error(429, "internal error; redeliver later", {"Retry-After": "30"})
    return _error(500, "internal error")


def create_app(settings: Settings, *, service: LeadBotService | None = None) -> FastAPI:
    """The Lead Bot's web app. See the module docstring for who owns ``service``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service is not None:
            app.state.service = service
            yield
            return
        owned = LeadBotService(settings)
        await owned.start()
        app.state.service = owned
        try:
            yield
        finally:
            app.state.service = None
            await owned.stop()

    app = FastAPI(
        title="Lead Bot",
        version=__version__,
        description="3-7-30 follow-up sequences for GoHighLevel leads: webhooks, operator API, health.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        redirect_slashes=False,  # a redirect is no answer for a webhook sender: unknown paths get a JSON 404
    )
    app.state.service = service
    app.state.settings = settings
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InvalidEventError, _invalid_event)
    app.add_exception_handler(RedisError, _redis_unavailable)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(webhooks_ghl.router)
    app.include_router(webhooks_retell.router)
    app.include_router(leads.router)
    app.include_router(health.router)
    app.include_router(oauth.router)
    return app
