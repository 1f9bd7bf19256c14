"""Marketplace tokens against real Redis and the HTTP GHL fake: encryption at rest and key rotation, one
refresh across independent "processes" (own Redis connections, own HTTP clients), the rotated pair stored
before use, ``needs_reinstall`` after a lost refresh token, the agency fallback, installs in either order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis.asyncio as aioredis
from cryptography.fernet import Fernet

from ghl_real_estate_ai.errors import ConfigurationError
from ghl_real_estate_ai.integrations.oauth import (
    INSTALLED,
    NEEDS_REINSTALL,
    LocationTokenProvider,
    LocationUnavailableError,
    MarketplaceApp,
    RedisRefreshLock,
    TokenRecord,
    TokenVault,
    consent_url,
    fernet_from_keys,
)
from ghl_real_estate_ai.integrations.rate_limit import RedisSlidingWindowLimiter
from ghl_real_estate_ai.services.installations import Installations
from ghl_real_estate_ai.services.locations import CountingTransport, LocationStats
from ghl_real_estate_ai.testing.ghl_server import FakeGHLServer

KEY_OLD, KEY_NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()
LOC, LOC2, AGENCY = "LocOne00000000000001", "LocTwo00000000000002", "Agency00000000000001"


@pytest.fixture
def ghl() -> AsyncIterator[FakeGHLServer]:
    with FakeGHLServer(rate_limit=None) as server:
        server.refresh_reuse_window = 0.0  # strictly single-use refresh tokens
        yield server


class Process:
    """What one `lead-bot serve` process holds: its own Redis connection and HTTP client."""

    def __init__(self, redis_url: str, ghl: FakeGHLServer, keys: str = KEY_NEW) -> None:
        self.redis = aioredis.Redis.from_url(redis_url)
        self.vault = TokenVault(self.redis, fernet_from_keys(keys), prefix="t")
        self.app = MarketplaceApp(ghl.base_url, ghl.oauth_client_id, ghl.oauth_client_secret)
        self.lock = RedisRefreshLock(self.redis, prefix="t")
        self.cancelled: list[str] = []

        async def on_uninstall(location_id: str) -> int:
            self.cancelled.append(location_id)
            return 0

        self.installs = Installations(
            self.vault, self.app, self.lock,
            company_limiter=RedisSlidingWindowLimiter(self.redis, key_prefix="t:r"), redirect_uri=None,
            on_uninstall=on_uninstall)

    def provider(self, location_id: str = LOC) -> LocationTokenProvider:
        return LocationTokenProvider(self.vault, self.app, location_id, self.lock)

    async def close(self) -> None:
        await self.app.aclose()
        await self.redis.aclose()


async def test_tokens_are_encrypted_and_an_old_key_still_reads_and_is_rotated_away(
        redis_url: str, ghl: FakeGHLServer) -> None:
    old = Process(redis_url, ghl, KEY_OLD)
    await old.installs.exchange(ghl.authorize(LOC, company_id=AGENCY))
    raw = await old.redis.get("t:oauth:location:" + LOC)
    assert raw is not None and b"access_token" not in raw and b"rt-" not in raw
    rotated = Process(redis_url, ghl, f"{KEY_NEW},{KEY_OLD}")  # newest first
    record = await rotated.vault.load("location", LOC)
    assert record is not None and record.location_id == LOC
    new_only = Process(redis_url, ghl, KEY_NEW)  # the old key may now be dropped
    assert (await new_only.vault.load("location", LOC)) == record
    for process in (old, rotated, new_only):
        await process.close()


def test_secret_key_errors_are_one_line() -> None:
    with pytest.raises(ConfigurationError, match="LEAD_BOT_SECRET_KEY: key 2 is not a Fernet key"):
        fernet_from_keys(f"{KEY_NEW},not-a-key")
    url = consent_url("app123-abc", "https://bot.example.com/oauth/callback")
    assert url.startswith("https://marketplace.gohighlevel.com/v2/oauth/chooselocation?response_type=code")
    assert "conversations%2Fmessage.write" in url and "oauth.write" in url


async def test_concurrent_401s_in_two_processes_refresh_once(redis_url: str, ghl: FakeGHLServer) -> None:
    one, two = Process(redis_url, ghl), Process(redis_url, ghl)
    await one.installs.exchange(ghl.authorize(LOC, company_id=AGENCY))
    rejected = await one.provider().get_token()
    ghl.expire_access_token(rejected)
    providers = [p.provider() for p in (one, two) for _ in range(5)]
    tokens = await asyncio.gather(*(p.refresh(rejected) for p in providers))
    assert ghl.refreshes == {LOC: 1}
    assert len(set(tokens)) == 1 and tokens[0] != rejected
    stored = await two.vault.load("location", LOC)
    assert stored is not None and stored.access_token == tokens[0]  # stored before anyone used it
    for process in (one, two):
        await process.close()


async def test_a_lost_refresh_token_marks_needs_reinstall_and_a_reinstall_resumes(
        redis_url: str, ghl: FakeGHLServer) -> None:
    process = Process(redis_url, ghl)
    await process.installs.exchange(ghl.authorize(LOC, company_id=AGENCY))
    provider = process.provider()
    rejected = await provider.get_token()
    ghl.lose_refresh_tokens(LOC)
    with pytest.raises(LocationUnavailableError, match="needs_reinstall"):
        await provider.refresh(rejected)
    assert (await process.vault.state(LOC) or {})["state"] == NEEDS_REINSTALL
    with pytest.raises(LocationUnavailableError):
        await provider.get_token()  # nothing is sent meanwhile
    await process.installs.exchange(ghl.authorize(LOC, company_id=AGENCY))
    assert (await process.vault.state(LOC) or {})["state"] == INSTALLED
    assert await provider.get_token() != rejected
    await process.close()


async def test_agency_install_mints_each_location_and_falls_back_to_the_agency_token(
        redis_url: str, ghl: FakeGHLServer) -> None:
    process = Process(redis_url, ghl)
    installed = await process.installs.exchange(ghl.authorize(company_id=AGENCY, locations=[LOC, LOC2]))
    assert sorted(installed) == [LOC, LOC2]
    record = await process.vault.load("location", LOC2)
    assert isinstance(record, TokenRecord) and record.from_company and record.company_id == AGENCY
    ghl.lose_refresh_tokens(LOC2)
    ghl.expire_access_tokens(LOC2)
    token = await process.provider(LOC2).refresh(record.access_token)  # minted again from the agency token
    assert token != record.access_token and (await process.vault.state(LOC2) or {})["state"] == INSTALLED
    # agency UNINSTALL: every location of the agency
    outcome = await process.installs.on_uninstall({"type": "UNINSTALL", "appId": process.app.app_id,
                                                   "companyId": AGENCY})
    assert sorted(process.cancelled) == [LOC, LOC2] and "2 location(s)" in outcome
    assert await process.vault.load("location", LOC) is None
    assert await process.vault.load("company", AGENCY) is None
    await process.close()


async def test_install_event_before_or_after_the_exchange_ends_in_the_same_state(
        redis_url: str, ghl: FakeGHLServer) -> None:
    process = Process(redis_url, ghl)
    app_id = process.app.app_id
    early = await process.installs.on_install({"type": "INSTALL", "appId": app_id, "companyId": AGENCY,
                                               "locationId": LOC})
    assert early == "pending the code exchange"
    await process.installs.exchange(ghl.authorize(LOC, company_id=AGENCY))
    await process.installs.exchange(ghl.authorize(LOC2, company_id=AGENCY))
    late = await process.installs.on_install({"type": "INSTALL", "appId": app_id, "companyId": AGENCY,
                                              "locationId": LOC2})
    assert late == "already installed"
    states = await process.vault.states()
    assert {loc: s["state"] for loc, s in states.items()} == {LOC: INSTALLED, LOC2: INSTALLED}
    await process.close()


async def test_a_token_about_to_expire_is_refreshed_before_use(
        redis_url: str, ghl: FakeGHLServer) -> None:
    process = Process(redis_url, ghl)
    await process.installs.exchange(ghl.authorize(LOC, company_id=AGENCY))
    record = await process.vault.load("location", LOC)
    assert record is not None
    await process.vault.save("location", LOC, replace(record, expires_at=time.time() + 60))  # inside 5 min
    token = await process.provider().get_token()
    assert token != record.access_token and ghl.refreshes == {LOC: 1}
    stored = await process.vault.load("location", LOC)
    assert stored is not None and stored.access_token == token
    assert stored.refresh_token != record.refresh_token  # the rotated refresh token was stored
    assert await process.provider().get_token() == token  # fresh now: no second refresh
    assert ghl.refreshes == {LOC: 1}
    await process.close()


async def test_location_stats_count_sends_per_virtual_day_and_429s_per_hour(
        redis_client: aioredis.Redis) -> None:
    now = [datetime(2026, 3, 2, 12, tzinfo=UTC)]
    stats = LocationStats(redis_client, prefix="t", now=lambda: now[0])
    await stats.sent(LOC)
    await stats.sent(LOC)
    assert await stats.sends_today(LOC) == 2 and await stats.sends_today(LOC2) == 0
    now[0] += timedelta(days=1)
    assert await stats.sends_today(LOC) == 0
    with FakeGHLServer(rate_limit=1) as ghl:
        transport = CountingTransport(httpx.AsyncHTTPTransport(), stats, LOC)
        async with httpx.AsyncClient(transport=transport, base_url=ghl.base_url) as http:
            statuses = [(await http.get("/contacts/x", headers={"Authorization": f"Bearer {ghl.token}",
                                                                 "Version": "2021-07-28"})).status_code
                        for _ in range(3)]
    assert statuses.count(429) == 2
    assert await stats.rate_limited_last_hour(LOC) == 2
