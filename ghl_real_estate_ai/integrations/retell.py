"""``RetellClient``: the typed async client of the Retell AI API that places the day-7 call (``VoiceCaller``).

Errors leave this module only as the ``ghl_real_estate_ai.errors`` tree. Retell answers errors as
``{"status": "error", "message": ...}``: 429 and 5xx are retried and end as
``TransientIntegrationError``; 401/403 -> ``AuthenticationError``; 404 -> ``NotFoundError``; 400, 402
(payment), 422 (agent or number not found under this key) and other 4xx -> ``PermanentIntegrationError``.
A call whose request may have reached Retell without an answer raises ``OutcomeUnknownError``.

``find_call`` reads such a call back and never raises for HTTP problems (it answers a ``SendLookup``).
Endpoint facts it relies on (Retell's Python SDK up to 2026-05; later SDKs call ``POST /v3/list-calls``
with another filter syntax): ``POST /v2/list-calls`` with ``{"filter_criteria": {"agent_id": [...],
"to_number": [...], ...}, "sort_order": "ascending"|"descending", "limit": n, "pagination_key": <call
id>}`` answers a JSON array of call objects sorted by ``start_timestamp`` (epoch ms); ``limit`` defaults
to 50, at most 1000; ``pagination_key`` is the last call id of the previous page (exclusive).
[assumed] that Retell honours the ``to_number`` filter (the match is also made here, on every call), and
that a call not yet started (``registered``, no ``start_timestamp``) sorts among the newest.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import httpx

from ghl_real_estate_ai import __version__
from ghl_real_estate_ai.errors import (
    AuthenticationError,
    IntegrationError,
    NotFoundError,
    PermanentIntegrationError,
)
from ghl_real_estate_ai.integrations._http import (
    OutcomeUnknownError,
    RetryPolicy,
    Sleep,
    error_message,
    json_body,
    send_with_retries,
)
from ghl_real_estate_ai.integrations.models import CallResult, SendLookup
from ghl_real_estate_ai.integrations.send_window import check_send_window

__all__ = ["DEFAULT_BASE_URL", "OutcomeUnknownError", "RetellClient"]

logger = logging.getLogger(__name__)

SERVICE: Final = "Retell"
DEFAULT_BASE_URL: Final = "https://api.retellai.com"


class RetellClient:
    """Async Retell client: outbound calls from ``from_number`` handled by ``agent_id``.

    Implements ``integrations.models.VoiceCaller``. ``transport`` replaces httpx's network transport
    (tests). Use it as an async context manager, or call :meth:`aclose`.
    """

    readback_page_size: int = 100
    """Calls asked for per page when reading back a call (Retell allows up to 1000)."""
    readback_max_pages: int = 10
    """Pages read before a read-back gives up as "unknown"."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        from_number: str,
        agent_id: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | httpx.Timeout = 60.0,
        max_retries: int = 3,
        retry_policy: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("RetellClient needs an API key")
        if not from_number:
            raise ValueError("RetellClient needs a from_number")
        self.from_number = from_number
        self.agent_id = agent_id or None
        self._policy = retry_policy or RetryPolicy(max_retries=max_retries)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            transport=transport,
            timeout=timeout,
            headers={
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": f"ghl-real-estate-ai/{__version__}",
            },
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RetellClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def create_phone_call(
        self,
        to_number: str,
        metadata: dict[str, Any],
        dynamic_variables: Mapping[str, Any],
        *,
        retry_unknown_outcome: bool = False,
    ) -> CallResult:
        """``POST /v2/create-phone-call``; Retell answers 201 with the call (``call_status`` "registered").

        Sends ``from_number``, ``to_number``, ``override_agent_id`` (when an agent is set), ``metadata``
        and ``retell_llm_dynamic_variables``. Retell only takes string variables: other values are
        converted with ``str()`` and ``None`` values are dropped.

        Like ``GHLClient.send_sms``: 429/5xx/connect failures are retried; a timeout after the request
        left raises ``OutcomeUnknownError`` unless ``retry_unknown_outcome`` (which risks calling the
        lead twice). Look the call up by its metadata before placing it again.
        """
        payload: dict[str, Any] = {"from_number": self.from_number, "to_number": to_number}
        if self.agent_id:
            payload["override_agent_id"] = self.agent_id
        if metadata:
            payload["metadata"] = dict(metadata)
        variables = {str(k): v if isinstance(v, str) else str(v)
                     for k, v in dynamic_variables.items() if v is not None}
        if variables:
            payload["retell_llm_dynamic_variables"] = variables
        response = await self._request("POST", "/v2/create-phone-call", "create phone call", payload,
                                       idempotent=retry_unknown_outcome, send=True)
        body = json_body(response)
        call_id = body.get("call_id")
        if not call_id:
            # The call was created (2xx); failing here would invite a second call on retry.
            logger.warning("Retell created a call without returning a call_id")
        status = body.get("call_status") or "registered"
        return CallResult(call_id=str(call_id or ""), call_status=str(status))

    async def get_call(self, call_id: str) -> dict[str, Any]:
        """``GET /v2/get-call/{call_id}``: the call object as Retell returns it."""
        if not call_id:
            raise ValueError("call_id must be non-empty")
        response = await self._request("GET", f"/v2/get-call/{quote(call_id, safe='')}", "get call", None,
                                       idempotent=True)
        return json_body(response)

    async def find_call(self, to_number: str, metadata: Mapping[str, str], *, since: datetime) -> SendLookup:
        """Read back whether a call went out after :meth:`create_phone_call`'s answer was lost.

        Lists calls newest first (``POST /v2/list-calls``, filtered by this client's agent and by
        ``to_number``) and matches ``to_number`` plus every key/value of ``metadata`` (the bot's unique
        send key) on each call. Paging stops at a short page (the listing is covered), or at a call that
        started before ``since``; calls not yet started carry no ``start_timestamp`` and are matched
        whatever ``since`` says.

        Answers ``found`` (call id; ``start_timestamp`` as ``at`` when the call has started), ``absent``
        or ``unknown`` (a failed or malformed read, a missing endpoint, more than
        :attr:`readback_max_pages` pages). Raises ``ValueError`` only for bad arguments.
        """
        if not to_number:
            raise ValueError("to_number must be the E.164 number the call was placed to")
        if not metadata:
            raise ValueError("metadata must hold at least the send key that tells this call from others")
        if since.tzinfo is None:
            raise ValueError("since must be a timezone-aware datetime")
        wanted = dict(metadata)
        since_ms = int(since.timestamp() * 1000)
        criteria: dict[str, list[str]] = {"to_number": [to_number]}  # [assumed] honoured; matched below too
        if self.agent_id:
            criteria["agent_id"] = [self.agent_id]
        cursor: str | None = None
        for page in range(1, self.readback_max_pages + 1):
            payload: dict[str, Any] = {"filter_criteria": criteria, "sort_order": "descending",
                                       "limit": self.readback_page_size}
            if cursor:
                payload["pagination_key"] = cursor
            try:
                response = await self._request("POST", "/v2/list-calls", "list calls", payload,
                                               idempotent=True)
            except IntegrationError as exc:
                missing = exc.status in (404, 405)
                detail = (f"Retell list calls: the endpoint is missing (HTTP {exc.status}): {exc.detail}"
                          if missing else str(exc))
                return SendLookup("unknown", detail=" ".join(detail.split()))
            try:
                calls = response.json()
            except ValueError:
                calls = None
            if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
                return SendLookup("unknown", detail="Retell list calls answered something other than a "
                                                    "list of call objects")
            reached_since = False
            for call in calls:
                started = call.get("start_timestamp")
                started_ok = isinstance(started, int) and not isinstance(started, bool)
                if started_ok and started < since_ms:
                    reached_since = True
                    continue
                if call.get("to_number") != to_number:
                    continue
                stored = call.get("metadata")
                if isinstance(stored, dict) and all(stored.get(k) == v for k, v in wanted.items()):
                    call_id = str(call.get("call_id") or "")
                    at = datetime.fromtimestamp(started / 1000, UTC) if started_ok else None
                    when = f"started {at.isoformat(timespec='seconds')}" if at else "not started yet"
                    return SendLookup("found", id=call_id, at=at, detail=(
                        f"Retell has call {call_id} to {to_number} ({call.get('call_status') or '?'}, {when})"
                    ))
            if reached_since or len(calls) < self.readback_page_size:
                return SendLookup("absent", detail=(
                    f"no call to {to_number} with that metadata since {since.astimezone(UTC).isoformat()} "
                    f"({page} page(s) of calls read)"
                ))
            following = calls[-1].get("call_id")
            if not isinstance(following, str) or not following or following == cursor:
                return SendLookup("unknown", detail="Retell list calls gave a full page without a call id "
                                                    "to page on")
            cursor = following
        return SendLookup("unknown", detail=f"Retell list calls: not read back to {since.isoformat()} within "
                                            f"{self.readback_max_pages} pages")

    async def _request(
        self, method: str, path: str, operation: str, payload: Any, *, idempotent: bool, send: bool = False
    ) -> httpx.Response:
        """``send``: a call to the lead; each attempt first checks the caller's send window."""

        async def attempt() -> httpx.Response:
            if send:
                check_send_window(SERVICE, operation)
            return await self._http.request(method, path, json=payload)

        response = await send_with_retries(
            attempt, service=SERVICE, operation=operation, policy=self._policy, idempotent=idempotent,
            sleep=self._sleep, rng=self._rng,
        )
        if response.is_success:
            return response
        raise _error(response, operation)


def _error(response: httpx.Response, operation: str) -> IntegrationError:
    status = response.status_code
    message = error_message(response)
    if status in (401, 403):
        return AuthenticationError(SERVICE, operation, message, status=status)
    if status == 404:
        return NotFoundError(SERVICE, operation, message, status=status)
    return PermanentIntegrationError(SERVICE, operation, message, status=status)
