"""FastAPI dependencies: the service, bearer auth for ``/api/*`` and the workflow webhook, and the webhook
signature checks (over the raw body, before anything is parsed). Routes take them as ``Annotated`` aliases.

Every refusal raises :class:`ApiError`, which the app renders as ``{"error": ...}`` with its status.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import Depends, Request

from ghl_real_estate_ai.api.signatures import (
    GHL_ED25519_PUBLIC_KEY_PEM,
    GHL_RSA_PUBLIC_KEY_PEM,
    SignatureError,
    verify_ghl_webhook,
    verify_retell_signature,
)
from ghl_real_estate_ai.errors import ConfigurationError
from ghl_real_estate_ai.service import LeadBotService

MAX_BODY_BYTES = 1_048_576  # GHL and Retell payloads are a few KB; a Retell transcript can reach ~100 KB


class ApiError(Exception):
    """A refusal with an HTTP status; rendered as ``{"error": message, **extra}``."""

    def __init__(self, status_code: int, message: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        self.status = status_code
        self.message = message
        self.headers = headers or {}
        self.extra = extra
        super().__init__(message)


# Dependencies are ``async def`` although they do not await: FastAPI runs plain ``def`` dependencies in a
# thread pool, a thread hop per request that halves the webhook throughput.


async def get_service(request: Request) -> LeadBotService:
    service = getattr(request.app.state, "service", None)
    if service is None:  # only between app creation and lifespan startup
        raise ApiError(503, "the service is starting")
    return cast(LeadBotService, service)


ServiceDep = Annotated[LeadBotService, Depends(get_service)]


async def require_api_token(request: Request, service: ServiceDep) -> None:
    """Bearer ``LEAD_BOT_API_TOKEN``: 401 while it is unset, missing or wrong (constant-time compare)."""
    expected = service.settings.api_token
    if not expected:
        raise ApiError(401, "LEAD_BOT_API_TOKEN is not set on the server; operator routes are disabled",
                       headers={"WWW-Authenticate": "Bearer"})
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise ApiError(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


ApiToken = Annotated[None, Depends(require_api_token)]


async def read_body(request: Request) -> bytes:
    """The raw request body, refusing oversized ones with 413 before reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > MAX_BODY_BYTES:
                raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        except ValueError:
            raise ApiError(400, "unreadable Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


RawBody = Annotated[bytes, Depends(read_body)]


@dataclass(frozen=True)
class VerifiedBody:
    """A body whose signature checked out; ``scheme`` says which one (``ed25519``, ``rsa``, ``retell``).
    Carries the service too: the webhook routes need nothing else, and one dependency per request
    instead of a tree of them is measurably cheaper on this hot path."""

    raw: bytes
    scheme: str
    service: LeadBotService


async def verify_ghl(request: Request) -> VerifiedBody:
    """``X-GHL-Signature`` (Ed25519) else ``x-wh-signature`` (RSA) over the raw bytes; 401 otherwise."""
    service = await get_service(request)
    body = await read_body(request)
    settings = service.settings
    try:
        scheme = verify_ghl_webhook(
            body,
            request.headers,
            settings.ghl_webhook_public_key or GHL_ED25519_PUBLIC_KEY_PEM,
            settings.ghl_webhook_rsa_public_key or GHL_RSA_PUBLIC_KEY_PEM,
        )
    except SignatureError as exc:
        service.metrics.webhook("ghl", "-", f"unauthorized_{exc.reason}")
        raise ApiError(401, str(exc)) from None
    return VerifiedBody(body, scheme, service)


GHLVerified = Annotated[VerifiedBody, Depends(verify_ghl)]


async def verify_retell(request: Request) -> VerifiedBody:
    """``x-retell-signature`` (HMAC-SHA256 keyed with ``RETELL_API_KEY``, within the tolerance window);
    401 otherwise."""
    service = await get_service(request)
    body = await read_body(request)
    api_key = service.settings.retell_api_key
    if not api_key:
        service.metrics.webhook("retell", "-", "unauthorized_unconfigured")
        raise ApiError(401, "RETELL_API_KEY is not set on the server; Retell webhooks cannot be verified")
    tolerance_ms = int(service.settings.ghl_webhook_tolerance_seconds * 1000)
    try:
        verify_retell_signature(body, request.headers.get("x-retell-signature"), api_key,
                                int(time.time() * 1000), tolerance_ms)
    except SignatureError as exc:
        service.metrics.webhook("retell", "-", f"unauthorized_{exc.reason}")
        raise ApiError(401, str(exc)) from None
    except ConfigurationError as exc:  # pragma: no cover - the key is checked at startup
        raise ApiError(401, str(exc)) from None
    return VerifiedBody(body, "retell", service)


RetellVerified = Annotated[VerifiedBody, Depends(verify_retell)]
