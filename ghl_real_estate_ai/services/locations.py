"""Many locations from one service: which location a lead belongs to, and that location's services.

``LocationRouter.context_for`` is the runner's context resolver in Marketplace mode. Each run resolves the
lead's location (an event's ``location_id``, else the lead's recorded one in the hash
``{prefix}:lead-location``), refuses locations that are not ``installed`` with
:class:`~ghl_real_estate_ai.integrations.oauth.LocationUnavailableError` (a pause or cancel still runs:
they call nobody), and hands the graph that location's :class:`Context`: its own ``GHLClient`` (its own
token provider and rate-limit key), its Retell agent and number, its rules and words from the locations
file. Contexts are cached per location; a settings reload rebuilds their rules, keeping the clients.

``LocationStats`` keeps what ``lead-bot locations`` shows per location: sends per (virtual) day and the
GHL 429 answers of the last real hour.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx

from ghl_real_estate_ai.agents.lead_bot.context import Context, Rules
from ghl_real_estate_ai.errors import InvalidEventError
from ghl_real_estate_ai.integrations.oauth import (
    INSTALLED,
    LocationTokenProvider,
    LocationUnavailableError,
    MarketplaceApp,
    RedisRefreshLock,
    TokenVault,
)
from ghl_real_estate_ai.locations_config import LocationSettings, LocationsFile, narrowed

log = logging.getLogger(__name__)

# Events that never call GHL, so they run for a location that is not (or no longer) installed.
NO_GHL_EVENTS = frozenset({"pause", "cancel"})


class LocationStats:
    """Per-location counters in Redis: ``{prefix}:location-sends:{loc}:{YYYY-MM-DD}`` (virtual day) and the
    sorted set ``{prefix}:location-429:{loc}`` of real times GHL answered 429 (last hour kept)."""

    def __init__(self, redis: Any, *, prefix: str, now: Callable[[], datetime]) -> None:
        self._redis = redis
        self._prefix = prefix
        self._now = now

    def _sends_key(self, location_id: str, day: str) -> str:
        return f"{self._prefix}:location-sends:{location_id}:{day}"

    async def sent(self, location_id: str) -> None:
        key = self._sends_key(location_id, self._now().date().isoformat())
        pipe = self._redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 3 * 86400)
        await pipe.execute()

    async def rate_limited(self, location_id: str) -> None:
        key = f"{self._prefix}:location-429:{location_id}"
        now = time.time()
        await self._redis.zadd(key, {f"{now!r}-{id(object())}": now})
        await self._redis.zremrangebyscore(key, 0, now - 3600)
        await self._redis.expire(key, 7200)

    async def sends_today(self, location_id: str) -> int:
        raw = await self._redis.get(self._sends_key(location_id, self._now().date().isoformat()))
        return int(raw or 0)

    async def rate_limited_last_hour(self, location_id: str) -> int:
        now = time.time()
        return int(await self._redis.zcount(f"{self._prefix}:location-429:{location_id}", now - 3600, now))


class CountingTransport(httpx.AsyncBaseTransport):
    """An httpx transport that reports every 429 GHL answers for one location to ``LocationStats``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, stats: LocationStats, location_id: str) -> None:
        self._inner = inner
        self._stats = stats
        self._location = location_id

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if response.status_code == 429:
            with contextlib.suppress(Exception):  # a counter must never fail a request
                await self._stats.rate_limited(self._location)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def location_rules(base: Rules, settings: LocationSettings) -> Rules:
    """The service's rules with one location's settings on top (quiet hours only ever narrowed)."""
    quiet = narrowed(base.quiet_hours, settings.quiet_hours) if settings.quiet_hours else base.quiet_hours
    return replace(
        base,
        quiet_hours=quiet,
        agent_name=settings.agent_name or base.agent_name,
        program_name=settings.program_name or base.program_name,
        agent_contact=settings.agent_contact if settings.agent_contact is not None else base.agent_contact,
        words=dict(settings.templates),
    )


class LocationRouter:
    """Marketplace mode's per-location services (see the module docstring)."""

    def __init__(self, *, redis: Any, prefix: str, vault: TokenVault, app: MarketplaceApp,
                 lock: RedisRefreshLock, base_context: Context, base_rules: Rules,
                 make_crm: Callable[[str, LocationTokenProvider], Any],
                 make_voice: Callable[[LocationSettings], Any],
                 make_responder: Callable[[LocationSettings], Any],
                 locations: LocationsFile, on_refresh: Callable[[str], None] | None = None) -> None:
        self._redis = redis
        self._prefix = prefix
        self.vault = vault
        self.app = app
        self._lock = lock
        self._base = base_context
        self._base_rules = base_rules
        self._make_crm = make_crm
        self._make_voice = make_voice
        self._make_responder = make_responder
        self.locations = locations
        self._on_refresh = on_refresh
        self._crms: dict[str, Any] = {}
        self._contexts: dict[str, Context] = {}

    @property
    def lead_location_key(self) -> str:
        return f"{self._prefix}:lead-location"

    def location_leads_key(self, location_id: str) -> str:
        return f"{self._prefix}:location-leads:{location_id}"

    async def location_of(self, contact_id: str) -> str | None:
        raw = await self._redis.hget(self.lead_location_key, contact_id)
        return raw.decode() if isinstance(raw, bytes) else raw

    async def leads_of(self, location_id: str) -> list[str]:
        members = await self._redis.smembers(self.location_leads_key(location_id))
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    async def context_for(self, contact_id: str, event: dict[str, Any]) -> Context:
        given = event.get("location_id")
        location = given if isinstance(given, str) and given else await self.location_of(contact_id)
        if not location:
            raise InvalidEventError(f"contact {contact_id!r} has no location: in Marketplace mode enroll it "
                                    "with its location id")
        if event.get("type") not in NO_GHL_EVENTS:
            state = (await self.vault.state(location) or {}).get("state", "not installed")
            if state != INSTALLED:
                raise LocationUnavailableError(location, state)
        if given:
            known = await self.location_of(contact_id)
            if known != location:
                pipe = self._redis.pipeline(transaction=True)
                pipe.hset(self.lead_location_key, contact_id, location)
                pipe.sadd(self.location_leads_key(location), contact_id)
                if known:
                    pipe.srem(self.location_leads_key(known), contact_id)
                await pipe.execute()
        return self.context(location)

    def context(self, location_id: str) -> Context:
        found = self._contexts.get(location_id)
        if found is not None:
            return found
        crm = self._crms.get(location_id)
        if crm is None:
            provider = LocationTokenProvider(self.vault, self.app, location_id, self._lock,
                                             on_refresh=self._on_refresh)
            crm = self._crms[location_id] = self._make_crm(location_id, provider)
        settings = self.locations.for_location(location_id)
        context = replace(self._base, crm=crm, voice=self._make_voice(settings),
                          rules=location_rules(self._base_rules, settings),
                          responder=self._make_responder(settings))
        self._contexts[location_id] = context
        return context

    def reload(self, locations: LocationsFile) -> None:
        """New settings: contexts are rebuilt on next use (clients are kept)."""
        self.locations = locations
        self._contexts.clear()
