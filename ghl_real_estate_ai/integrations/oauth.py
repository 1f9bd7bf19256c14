"""Marketplace mode: the GHL OAuth app, each location's encrypted tokens in Redis, and their refresh.

* :class:`MarketplaceApp` speaks to GHL's OAuth endpoints (form-encoded, ``Version: 2021-07-28``):
  ``POST /oauth/token`` (code exchange and refresh), ``POST /oauth/locationToken`` (a location token
  from an agency token) and ``GET /oauth/installedLocations``.
* :class:`TokenVault` keeps one token record per location (``{prefix}:oauth:location:{id}``) and per
  agency (``{prefix}:oauth:company:{id}``), each a Fernet token (``MultiFernet``: the first key encrypts,
  every listed key decrypts; a record under an old key is re-encrypted with the newest when read), plus
  the install state of every location in the hash ``{prefix}:locations`` (``installed``,
  ``needs_reinstall``, ``uninstalled``) and the locations of each agency.
* :class:`LocationTokenProvider` is the ``TokenProvider`` of one location's ``GHLClient``. A refresh runs
  under a Redis lock per location (``SET NX PX``), so across every process one refresh per location runs
  at a time; after taking the lock it re-reads the record and uses a token another process already
  refreshed. The rotated pair is stored before the new access token is used. A refresh GHL refuses (4xx)
  falls back to minting a location token from the agency token when the location came from an agency
  install; when that fails too the location is marked ``needs_reinstall`` and
  :class:`LocationUnavailableError` (transient: nothing was sent) is raised, so its due steps wait.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import urlencode

import httpx
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ghl_real_estate_ai.errors import (
    AuthenticationError,
    ConfigurationError,
    PermanentIntegrationError,
    TransientIntegrationError,
)
from ghl_real_estate_ai.integrations._http import RetryPolicy, error_message, json_body, send_with_retries

logger = logging.getLogger(__name__)

SERVICE = "GHL"
OAUTH_VERSION = "2021-07-28"
CONSENT_URL = "https://marketplace.gohighlevel.com/v2/oauth/chooselocation"
# What the bot needs: read contacts and DND, tag/note/task, read and send messages; oauth.* for agency
# (bulk) installs, which list the installed locations and mint a token for each.
SCOPES = (
    "contacts.readonly", "contacts.write", "conversations.readonly", "conversations/message.readonly",
    "conversations/message.write", "locations.readonly", "oauth.readonly", "oauth.write",
)

_SET_IF_UNCHANGED = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end"

INSTALLED = "installed"
NEEDS_REINSTALL = "needs_reinstall"
UNINSTALLED = "uninstalled"


def consent_url(client_id: str, redirect_uri: str, scopes: Sequence[str] = SCOPES) -> str:
    """The chooselocation URL an agency or sub-account admin opens to install the app."""
    query = urlencode({"response_type": "code", "redirect_uri": redirect_uri, "client_id": client_id,
                       "scope": " ".join(scopes)})
    return f"{CONSENT_URL}?{query}"


class LocationUnavailableError(TransientIntegrationError):
    """The location cannot be served now (not installed, uninstalled, or its tokens need a reinstall).
    Raised before anything is sent; due steps wait for the location instead of failing."""

    def __init__(self, location_id: str, state: str) -> None:
        super().__init__(SERVICE, "location", f"location {location_id!r} is {state}")
        self.location_id = location_id
        self.state = state


def fernet_from_keys(spec: str) -> list[Fernet]:
    """``LEAD_BOT_SECRET_KEY``: comma-separated Fernet keys, newest first; ``ConfigurationError`` if bad."""
    keys = [part.strip() for part in spec.split(",") if part.strip()]
    if not keys:
        raise ConfigurationError("LEAD_BOT_SECRET_KEY", "is empty")
    fernets = []
    for number, key in enumerate(keys, 1):
        try:
            fernets.append(Fernet(key.encode()))
        except (ValueError, TypeError):
            raise ConfigurationError(
                "LEAD_BOT_SECRET_KEY", f"key {number} is not a Fernet key (32 url-safe base64 bytes; make "
                "one with `python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`)"
            ) from None
    return fernets


@dataclass(frozen=True)
class TokenRecord:
    """One OAuth pair as stored. ``user_type`` is ``Location`` or ``Company``; ``expires_at`` epoch s."""

    access_token: str
    refresh_token: str
    expires_at: float
    user_type: str = "Location"
    location_id: str | None = None
    company_id: str | None = None
    scope: str = ""
    from_company: bool = False  # minted from an agency token: can be minted again from it

    @classmethod
    def from_response(cls, body: dict[str, Any], *, now: float) -> TokenRecord:
        access, refresh = body.get("access_token"), body.get("refresh_token")
        if not isinstance(access, str) or not access:
            raise ValueError("token response lacks access_token")
        expires_in = body.get("expires_in")
        seconds = float(expires_in) if isinstance(expires_in, int | float) else 86399.0
        return cls(
            access_token=access,
            refresh_token=refresh if isinstance(refresh, str) else "",
            expires_at=now + seconds,
            user_type=str(body.get("userType") or "Location"),
            location_id=body.get("locationId") or None,
            company_id=body.get("companyId") or None,
            scope=str(body.get("scope") or ""),
        )

    def __repr__(self) -> str:
        return f"TokenRecord(user_type={self.user_type!r}, location_id={self.location_id!r}, ***)"


class TokenVault:
    """Encrypted token records and install states in Redis (see the module docstring for the keys)."""

    def __init__(self, redis: Any, fernets: Sequence[Fernet], *, prefix: str = "lead-bot") -> None:
        self.redis = redis
        self._newest = fernets[0]
        self._fernet = MultiFernet(list(fernets))
        self.prefix = prefix
        self._cache: dict[bytes, TokenRecord] = {}

    def token_key(self, kind: str, resource_id: str) -> str:
        return f"{self.prefix}:oauth:{kind}:{resource_id}"

    @property
    def states_key(self) -> str:
        return f"{self.prefix}:locations"

    def company_key(self, company_id: str) -> str:
        return f"{self.prefix}:company-locations:{company_id}"

    async def load(self, kind: str, resource_id: str) -> TokenRecord | None:
        key = self.token_key(kind, resource_id)
        return await self._decode(key, await self.redis.get(key), kind, resource_id)

    async def load_installed(self, location_id: str) -> tuple[str, TokenRecord | None]:
        """The location's install state and token record, read in one round trip (every GHL request)."""
        key = self.token_key("location", location_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.states_key, location_id)
        pipe.get(key)
        state_raw, raw = await pipe.execute()
        state = json.loads(state_raw).get("state", "not installed") if state_raw else "not installed"
        return state, await self._decode(key, raw, "location", location_id)

    async def _decode(self, key: str, raw: bytes | None, kind: str, resource_id: str) -> TokenRecord | None:
        if raw is None:
            return None
        cached = self._cache.get(raw)
        if cached is not None:
            return cached
        try:
            plain = self._newest.decrypt(raw)
        except InvalidToken:
            try:
                plain = self._fernet.decrypt(raw)
            except InvalidToken:
                logger.error("the stored %s token of %s cannot be decrypted with LEAD_BOT_SECRET_KEY", kind,
                             resource_id)
                return None
            # An old key's record: re-encrypt it, unless a refresh replaced it meanwhile.
            await self.redis.eval(_SET_IF_UNCHANGED, 1, key, raw, self._newest.encrypt(plain))
            return TokenRecord(**json.loads(plain))
        record = TokenRecord(**json.loads(plain))
        if len(self._cache) >= 4096:  # decrypted records by ciphertext: a changed record is a new key
            self._cache.clear()
        self._cache[raw] = record
        return record

    async def save(self, kind: str, resource_id: str, record: TokenRecord) -> None:
        data = json.dumps(asdict(record), separators=(",", ":")).encode()
        await self.redis.set(self.token_key(kind, resource_id), self._fernet.encrypt(data))

    async def delete(self, kind: str, resource_id: str) -> None:
        await self.redis.delete(self.token_key(kind, resource_id))

    # -- install states --------------------------------------------------------------------------

    async def state(self, location_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.states_key, location_id)
        return json.loads(raw) if raw is not None else None

    async def states(self) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(self.states_key)
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}

    async def set_state(self, location_id: str, state: str, **detail: Any) -> None:
        current = await self.state(location_id) or {}
        current.update({k: v for k, v in detail.items() if v is not None})
        current.update(state=state, updated_at=time.time())
        if state == INSTALLED:
            current.pop("reason", None)
        await self.redis.hset(self.states_key, location_id, json.dumps(current))
        company = current.get("company_id")
        if company:
            await self.redis.sadd(self.company_key(company), location_id)

    async def company_locations(self, company_id: str) -> list[str]:
        members = await self.redis.smembers(self.company_key(company_id))
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)


class MarketplaceApp:
    """The bot's GHL Marketplace app: OAuth calls with its client id and secret."""

    def __init__(self, base_url: str, client_id: str, client_secret: str, *,
                 transport: httpx.AsyncBaseTransport | None = None, timeout: float = 15.0,
                 retry_policy: RetryPolicy | None = None, clock: Callable[[], float] = time.time) -> None:
        self.client_id = client_id
        self._secret = client_secret
        self._policy = retry_policy or RetryPolicy(max_retries=2)
        self._clock = clock
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), transport=transport, timeout=timeout)

    @property
    def app_id(self) -> str:
        """GHL's ``appId``: the client id up to its first ``-``."""
        return self.client_id.split("-")[0]

    async def aclose(self) -> None:
        await self._http.aclose()

    def consent_url(self, redirect_uri: str, scopes: Sequence[str] = SCOPES) -> str:
        return consent_url(self.client_id, redirect_uri, scopes)

    async def _call(self, operation: str, method: str, path: str, *, form: dict[str, str] | None = None,
                    params: dict[str, str] | None = None, bearer: str | None = None) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Version": OAUTH_VERSION}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"

        async def send() -> httpx.Response:
            return await self._http.request(method, path, data=form, params=params, headers=headers)

        # Reusing a refresh token is harmless within GHL's 30 s grace; a code is single-use, so its
        # exchange is not retried after it may have reached GHL.
        response = await send_with_retries(send, service=SERVICE, operation=operation, policy=self._policy,
                                           idempotent=operation != "oauth code exchange")
        if response.status_code >= 400:
            raise AuthenticationError(SERVICE, operation, error_message(response),
                                      status=response.status_code)
        return json_body(response)

    def _record(self, body: dict[str, Any], operation: str) -> TokenRecord:
        try:
            return TokenRecord.from_response(body, now=self._clock())
        except ValueError as exc:
            raise PermanentIntegrationError(SERVICE, operation, str(exc)) from exc

    async def exchange_code(self, code: str, redirect_uri: str | None) -> tuple[TokenRecord, dict[str, Any]]:
        form = {"client_id": self.client_id, "client_secret": self._secret,
                "grant_type": "authorization_code", "code": code}
        if redirect_uri:
            form["redirect_uri"] = redirect_uri
        body = await self._call("oauth code exchange", "POST", "/oauth/token", form=form)
        return self._record(body, "oauth code exchange"), body

    async def refresh(self, record: TokenRecord) -> TokenRecord:
        form = {"client_id": self.client_id, "client_secret": self._secret, "grant_type": "refresh_token",
                "refresh_token": record.refresh_token, "user_type": record.user_type}
        fresh = self._record(await self._call("oauth refresh", "POST", "/oauth/token", form=form),
                             "oauth refresh")
        return replace(fresh, location_id=fresh.location_id or record.location_id,
                       company_id=fresh.company_id or record.company_id, from_company=record.from_company)

    async def location_token(self, company: TokenRecord, location_id: str) -> TokenRecord:
        assert company.company_id is not None
        body = await self._call("oauth location token", "POST", "/oauth/locationToken",
                                form={"companyId": company.company_id, "locationId": location_id},
                                bearer=company.access_token)
        fresh = self._record(body, "oauth location token")
        return replace(fresh, user_type="Location", location_id=location_id, company_id=company.company_id,
                       from_company=True)

    async def installed_locations(self, company: TokenRecord) -> list[str]:
        """Every location of the agency where the app is installed (paged by ``skip``/``limit``)."""
        assert company.company_id is not None
        found: list[str] = []
        skip = 0
        while True:
            body = await self._call(
                "oauth installed locations", "GET", "/oauth/installedLocations", bearer=company.access_token,
                params={"companyId": company.company_id, "appId": self.app_id, "isInstalled": "true",
                        "skip": str(skip), "limit": "100"})
            page = [item.get("_id") for item in body.get("locations") or [] if isinstance(item, dict)]
            found.extend(p for p in page if isinstance(p, str) and p)
            skip += len(page)
            if not page or skip >= int(body.get("count") or 0):
                return found


class RedisRefreshLock:
    """``SET key owner NX PX ttl`` per resource; released only by its owner (compare-and-delete)."""

    _RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

    def __init__(self, redis: Any, *, prefix: str, ttl_ms: int = 20_000, wait_seconds: float = 25.0) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = ttl_ms
        self._wait = wait_seconds

    async def acquire(self, resource: str) -> str:
        key = f"{self._prefix}:oauth-refresh-lock:{resource}"
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + self._wait
        while not await self._redis.set(key, owner, nx=True, px=self._ttl_ms):
            if time.monotonic() > deadline:
                raise TransientIntegrationError(SERVICE, "oauth refresh",
                                                f"another process holds the refresh lock of {resource}")
            await asyncio.sleep(0.02)
        return owner

    async def release(self, resource: str, owner: str) -> None:
        await self._redis.eval(self._RELEASE, 1, f"{self._prefix}:oauth-refresh-lock:{resource}", owner)


class LocationTokenProvider:
    """The ``TokenProvider`` of one installed location (see the module docstring)."""

    def __init__(self, vault: TokenVault, app: MarketplaceApp, location_id: str, lock: RedisRefreshLock, *,
                 refresh_margin: float = 300.0, clock: Callable[[], float] = time.time,
                 on_refresh: Callable[[str], None] | None = None) -> None:
        self.location_id = location_id
        self._vault = vault
        self._app = app
        self._lock = lock
        self._margin = refresh_margin
        self._clock = clock
        self._on_refresh = on_refresh

    def _expiring(self, record: TokenRecord) -> bool:
        return record.expires_at - self._margin <= self._clock()

    async def _usable(self) -> TokenRecord:
        status, record = await self._vault.load_installed(self.location_id)
        if status != INSTALLED:
            raise LocationUnavailableError(self.location_id, status)
        if record is None:
            raise LocationUnavailableError(self.location_id, "without tokens")
        return record

    async def get_token(self) -> str:
        record = await self._usable()
        if self._expiring(record):
            return await self._refresh(record.access_token)
        return record.access_token

    async def refresh(self, rejected_token: str) -> str | None:
        return await self._refresh(rejected_token)

    async def _refresh(self, rejected: str) -> str:
        owner = await self._lock.acquire(self.location_id)
        try:
            record = await self._usable()  # another process may have refreshed while we waited
            if record.access_token != rejected and not self._expiring(record):
                return record.access_token
            fresh = await self._renew(record)
            await self._vault.save("location", self.location_id, fresh)  # stored before it is used
            if self._on_refresh is not None:
                self._on_refresh(self.location_id)
            logger.info("refreshed the GHL token of location %s", self.location_id)
            return fresh.access_token
        finally:
            await self._lock.release(self.location_id, owner)

    async def _renew(self, record: TokenRecord) -> TokenRecord:
        problem = ""
        if record.refresh_token:
            try:
                return await self._app.refresh(record)
            except AuthenticationError as exc:
                problem = str(exc)
        if record.company_id:
            try:
                company = await company_token(self._vault, self._app, self._lock, record.company_id)
                if company is not None:
                    return await self._app.location_token(company, self.location_id)
            except AuthenticationError as exc:
                problem = f"{problem}; {exc}" if problem else str(exc)
        await self._vault.set_state(self.location_id, NEEDS_REINSTALL,
                                    reason=problem or "no refresh token stored")
        logger.error("location %s needs a reinstall: its token cannot be refreshed (%s)", self.location_id,
                     problem)
        raise LocationUnavailableError(self.location_id, NEEDS_REINSTALL)


async def company_token(vault: TokenVault, app: MarketplaceApp, lock: RedisRefreshLock, company_id: str,
                        *, margin: float = 300.0) -> TokenRecord | None:
    """The agency's stored token, refreshed (under its lock) when it is about to expire; None if absent."""
    record = await vault.load("company", company_id)
    if record is None or record.expires_at - margin > time.time():
        return record
    owner = await lock.acquire(f"company:{company_id}")
    try:
        record = await vault.load("company", company_id)
        if record is None or record.expires_at - margin > time.time():
            return record
        fresh = await app.refresh(record)
        await vault.save("company", company_id, fresh)
        return fresh
    finally:
        await lock.release(f"company:{company_id}", owner)
