"""The retry loop and error translation shared by the GHL and Retell clients (private to ``integrations``).

One rule decides what may be retried:

* an HTTP 408, 429 or 5xx answer: the server said "not now", retry with backoff (``Retry-After`` wins).
  This is taken as safe for sends too: neither API documents carrying out a request it answered with
  429/5xx (an assumption; a gateway 502/504 in front of a slow backend is the residual risk);
* a transport error raised *before the request left* (connect error or timeout, pool timeout): the
  server never saw it, retry;
* a transport error raised *after the request may have left* (read/write timeout, connection dropped
  mid-answer): retry only when the operation is idempotent or the caller said so
  (``retry_unknown_outcome=True``); otherwise raise :class:`OutcomeUnknownError`, because blindly
  re-sending a text or a call can reach the lead twice;
* anything else is returned to the client, which maps 4xx answers to permanent errors.

httpx exceptions never leave this module: everything becomes an ``IntegrationError``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ghl_real_estate_ai.errors import OutcomeUnknownError, TransientIntegrationError

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[Any]]

RETRYABLE_STATUSES = frozenset({408, 429})

# Raised before any byte of the request reached the server, so a retry cannot duplicate anything.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt ``n`` waits ``uniform(0, min(cap, base * 2**n))``.

    ``max_retries`` counts retries after the first try. A ``Retry-After`` longer than ``max_retry_after``
    is not slept through: the call fails at once with a transient error that carries ``retry_after``,
    so the scheduler can come back later instead of holding a worker.
    """

    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    max_retry_after: float = 30.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * (2**attempt)))


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now())


def error_message(response: httpx.Response) -> str:
    """The human message of an error answer: GHL's ``message`` (a string or a list) or Retell's."""
    try:
        payload = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:300] or response.reason_phrase or f"HTTP {response.status_code}"
    if isinstance(payload, dict):
        message = payload.get("message") or payload.get("error") or payload.get("msg")
        if isinstance(message, list):
            return "; ".join(str(part) for part in message)
        if message:
            return str(message)
    return str(payload)[:300]


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful answer, or ``{}`` when the body is empty or not an object."""
    if not response.content:
        return {}
    try:
        payload = response.json()
    except ValueError:
        logger.warning("%s %s answered %s with a non-JSON body", response.request.method,
                       response.request.url.path, response.status_code)
        return {}
    return payload if isinstance(payload, dict) else {}


async def send_with_retries(
    send: Callable[[], Awaitable[httpx.Response]],
    *,
    service: str,
    operation: str,
    policy: RetryPolicy,
    idempotent: bool,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
) -> httpx.Response:
    """Run ``send`` until it yields an answer that is not worth retrying, and return that answer.

    The answer returned may be any status except 408/429/5xx; the caller maps 4xx to permanent errors.
    Raises :class:`TransientIntegrationError` when retries run out and :class:`OutcomeUnknownError` when a
    non-idempotent request may have gone through.
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        try:
            response = await send()
        except httpx.RequestError as exc:
            reached = not isinstance(exc, _NOT_SENT)
            kind = type(exc).__name__
            if reached and not idempotent:
                raise OutcomeUnknownError(
                    service, operation, f"{kind} after the request was sent; it may have been carried out"
                ) from exc
            if attempt >= policy.max_retries:
                raise TransientIntegrationError(
                    service, operation, f"{kind} after {attempt + 1} attempts: {exc}"
                ) from exc
            delay = policy.backoff(attempt, rng)
            logger.warning("%s %s: %s; retry %d/%d in %.2fs", service, operation, kind,
                           attempt + 1, policy.max_retries, delay)
        else:
            status = response.status_code
            if status not in RETRYABLE_STATUSES and status < 500:
                return response
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            message = error_message(response)
            if retry_after is not None and retry_after > policy.max_retry_after:
                raise TransientIntegrationError(
                    service, operation, message, status=status, retry_after=retry_after
                )
            if attempt >= policy.max_retries:
                raise TransientIntegrationError(
                    service, operation, f"{message} (gave up after {attempt + 1} attempts)",
                    status=status, retry_after=retry_after,
                )
            delay = retry_after if retry_after is not None else policy.backoff(attempt, rng)
            logger.warning("%s %s answered %s; retry %d/%d in %.2fs", service, operation, status,
                           attempt + 1, policy.max_retries, delay)
        attempt += 1
        await sleep(delay)
