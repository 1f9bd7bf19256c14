"""Where the GHL bearer token comes from: a static Private Integration token, or OAuth with refresh.

``GHLClient`` asks its provider for a token before each request and, on a 401, calls
``refresh(rejected_token)`` once and retries with what it gets back (None means "cannot refresh", which
ends in ``AuthenticationError``).

OAuth (GHL marketplace apps): access tokens live about a day; a refresh token lives a year until used, and
each use returns a *new* refresh token. So every refreshed pair is saved to a :class:`TokenStore` before
it is used (in Redis for the service, in memory for tests and the demo). Concurrent 401s on one provider
cause one refresh: refreshes run under an ``asyncio.Lock``, and a caller whose rejected token has already
been replaced just takes the new one. Across processes, GHL itself answers refreshes that reuse one
refresh token within 30 s with the same new pair, which keeps racing processes consistent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import httpx

from ghl_real_estate_ai.errors import AuthenticationError, PermanentIntegrationError
from ghl_real_estate_ai.integrations._http import (
    RetryPolicy,
    Sleep,
    error_message,
    json_body,
    send_with_retries,
)

logger = logging.getLogger(__name__)

SERVICE = "GHL"


class TokenProvider(Protocol):
    """Supplies the bearer token of one location."""

    async def get_token(self) -> str:
        """The token to send now."""
        ...

    async def refresh(self, rejected_token: str) -> str | None:
        """A replacement for ``rejected_token`` (which got a 401), or None when it cannot be replaced."""
        ...


class StaticTokenProvider:
    """A Private Integration token (or any fixed token): never refreshes, so a 401 is final."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty GHL token was given")
        self._token = token

    async def get_token(self) -> str:
        return self._token

    async def refresh(self, rejected_token: str) -> str | None:
        return None

    def __repr__(self) -> str:
        return "StaticTokenProvider(token=***)"


@dataclass(frozen=True)
class TokenPair:
    """An OAuth access/refresh token pair. ``expires_at`` is epoch seconds (None when unknown)."""

    access_token: str
    refresh_token: str
    expires_at: float | None = None
    scope: str = ""
    location_id: str | None = None

    @classmethod
    def from_token_response(cls, body: dict[str, Any], *, now: float) -> TokenPair:
        """Build from a ``POST /oauth/token`` answer (``access_token``, ``refresh_token``, ``expires_in``)."""
        access = body.get("access_token")
        refresh = body.get("refresh_token")
        if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
            raise ValueError("token response lacks access_token or refresh_token")
        expires_in = body.get("expires_in")
        expires_at = now + float(expires_in) if isinstance(expires_in, int | float) else None
        return cls(
            access_token=access,
            refresh_token=refresh,
            expires_at=expires_at,
            scope=str(body.get("scope") or ""),
            location_id=body.get("locationId") or None,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> TokenPair:
        data = json.loads(raw)
        return cls(
            access_token=data["access_token"],
            refresh_token=data["refresh_token"],
            expires_at=data.get("expires_at"),
            scope=data.get("scope") or "",
            location_id=data.get("location_id"),
        )

    def __repr__(self) -> str:
        return f"TokenPair(access_token=***, refresh_token=***, expires_at={self.expires_at!r})"


class TokenStore(Protocol):
    """Durable home of each location's current token pair."""

    async def load(self, location_id: str) -> TokenPair | None: ...

    async def save(self, location_id: str, pair: TokenPair) -> None: ...


class InMemoryTokenStore:
    """A process-local store, for tests and the demo."""

    def __init__(self) -> None:
        self._pairs: dict[str, TokenPair] = {}

    async def load(self, location_id: str) -> TokenPair | None:
        return self._pairs.get(location_id)

    async def save(self, location_id: str, pair: TokenPair) -> None:
        self._pairs[location_id] = pair


class RedisTokenStore:
    """One JSON value per location under ``{key_prefix}:{location_id}``, with no expiry.

    ``redis`` is a ``redis.asyncio.Redis`` owned by the caller. Refresh tokens are secrets: point this at
    a Redis that is not shared with untrusted tenants.
    """

    def __init__(self, redis: Any, *, key_prefix: str = "lead-bot:ghl-oauth") -> None:
        self._redis = redis
        self.key_prefix = key_prefix

    def key(self, location_id: str) -> str:
        return f"{self.key_prefix}:{location_id}"

    async def load(self, location_id: str) -> TokenPair | None:
        raw = await self._redis.get(self.key(location_id))
        if raw is None:
            return None
        return TokenPair.from_json(raw)

    async def save(self, location_id: str, pair: TokenPair) -> None:
        await self._redis.set(self.key(location_id), pair.to_json())


class OAuthTokenProvider:
    """OAuth tokens for one location, refreshed through ``POST {base_url}/oauth/token``.

    ``initial`` seeds the store when it holds nothing yet (e.g. the pair from the app install). Tokens
    that expire within ``refresh_margin`` seconds are refreshed before use; a 401 refreshes at once.
    The refresh request is form-encoded: ``grant_type=refresh_token``, ``client_id``, ``client_secret``,
    ``refresh_token``, ``user_type`` (``Location`` by default).

    Errors: a refresh the server refuses (4xx) raises ``AuthenticationError`` (re-install the app);
    429/5xx/transport failures raise ``TransientIntegrationError`` after retries.
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        location_id: str,
        store: TokenStore,
        *,
        initial: TokenPair | None = None,
        user_type: str = "Location",
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 15.0,
        refresh_margin: float = 300.0,
        retry_policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.location_id = location_id
        self._client_id = client_id
        self._client_secret = client_secret
        self._store = store
        self._initial = initial
        self._user_type = user_type
        self._refresh_margin = refresh_margin
        self._policy = retry_policy or RetryPolicy(max_retries=2)
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), transport=transport, timeout=timeout)
        self.refresh_count = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> OAuthTokenProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def current(self) -> TokenPair:
        """The stored pair (seeding the store from ``initial`` on first use)."""
        pair = await self._store.load(self.location_id)
        if pair is None and self._initial is not None:
            pair = self._initial
            await self._store.save(self.location_id, pair)
        if pair is None:
            raise AuthenticationError(
                SERVICE, "oauth", f"no OAuth token stored for location {self.location_id}; install the app"
            )
        return pair

    def _expiring(self, pair: TokenPair) -> bool:
        return pair.expires_at is not None and pair.expires_at - self._refresh_margin <= self._clock()

    async def get_token(self) -> str:
        pair = await self.current()
        if self._expiring(pair):
            replaced = await self.refresh(pair.access_token)
            if replaced is not None:
                return replaced
        return pair.access_token

    async def refresh(self, rejected_token: str) -> str | None:
        async with self._lock:
            pair = await self.current()
            if pair.access_token != rejected_token and not self._expiring(pair):
                return pair.access_token  # someone refreshed while we waited for the lock
            fresh = await self._exchange(pair)
            await self._store.save(self.location_id, fresh)
            self.refresh_count += 1
            logger.info("refreshed the GHL OAuth token of location %s", self.location_id)
            return fresh.access_token

    async def _exchange(self, pair: TokenPair) -> TokenPair:
        form = {
            "grant_type": "refresh_token",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "refresh_token": pair.refresh_token,
            "user_type": self._user_type,
        }

        async def send() -> httpx.Response:
            return await self._http.post("/oauth/token", data=form, headers={"Accept": "application/json"})

        # Reusing one refresh token within 30 s yields the same new pair, so a retry is harmless.
        response = await send_with_retries(
            send, service=SERVICE, operation="oauth refresh", policy=self._policy, idempotent=True,
            sleep=self._sleep,
        )
        if response.status_code >= 400:
            raise AuthenticationError(
                SERVICE, "oauth refresh", error_message(response), status=response.status_code
            )
        try:
            fresh = TokenPair.from_token_response(json_body(response), now=self._clock())
        except ValueError as exc:
            raise PermanentIntegrationError(SERVICE, "oauth refresh", str(exc)) from exc
        return replace(fresh, location_id=fresh.location_id or pair.location_id or self.location_id)
