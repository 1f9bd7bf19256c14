"""Token providers: static PIT, OAuth refresh on 401 with the new pair stored (Redis and memory), one
refresh for concurrent 401s, proactive refresh before expiry, and the failure modes."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs

import httpx
import pytest
import redis.asyncio as aioredis

from ghl_real_estate_ai.errors import AuthenticationError, TransientIntegrationError
from ghl_real_estate_ai.integrations.auth import (
    InMemoryTokenStore,
    OAuthTokenProvider,
    RedisTokenStore,
    StaticTokenProvider,
    TokenPair,
    TokenStore,
)
from ghl_real_estate_ai.integrations.ghl import GHLClient
from ghl_real_estate_ai.integrations.rate_limit import SlidingWindowLimiter
from ghl_real_estate_ai.testing.fake_http import VirtualTime
from ghl_real_estate_ai.testing.ghl_server import FakeGHLServer


def install(ghl: FakeGHLServer) -> TokenPair:
    return TokenPair.from_token_response(ghl.issue_oauth_tokens(), now=time.time())


def provider_for(
    ghl: FakeGHLServer, store: TokenStore, vtime: VirtualTime, **kwargs: object
) -> OAuthTokenProvider:
    return OAuthTokenProvider(
        ghl.base_url, ghl.oauth_client_id, ghl.oauth_client_secret, ghl.location_id, store,
        sleep=vtime.sleep, **kwargs,  # type: ignore[arg-type]
    )


def client_for(ghl: FakeGHLServer, provider: object, vtime: VirtualTime) -> GHLClient:
    return GHLClient(ghl.base_url, provider, ghl.location_id, sleep=vtime.sleep,  # type: ignore[arg-type]
                     rate_limiter=SlidingWindowLimiter(clock=vtime.clock, sleep=vtime.sleep))


async def test_refresh_on_401_stores_new_pair_in_redis(
    ghl: FakeGHLServer, vtime: VirtualTime, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    contact = ghl.add_contact()
    first = install(ghl)
    store = RedisTokenStore(redis_client, key_prefix=key_prefix)
    async with (
        provider_for(ghl, store, vtime, initial=first) as provider,
        client_for(ghl, provider, vtime) as client,
    ):
        await client.get_contact(contact["id"])
        assert ghl.refresh_count == 0

        ghl.expire_access_tokens()
        fetched = await client.get_contact(contact["id"])
        assert fetched.id == contact["id"]
        assert ghl.refresh_count == 1

        raw = await redis_client.get(f"{key_prefix}:{ghl.location_id}")
        assert raw is not None
        stored = TokenPair.from_json(raw)
        assert stored.access_token != first.access_token
        assert stored.refresh_token != first.refresh_token
        assert stored.expires_at is not None and stored.expires_at > time.time() + 80_000

        # The second expiry can only be refreshed with the *new* refresh token: GHL consumed the old one.
        ghl.expire_access_tokens()
        await client.get_contact(contact["id"])
        assert ghl.refresh_count == 2

    statuses = [(r.method, r.path, r.status) for r in ghl.requests]
    assert statuses == [
        ("GET", f"/contacts/{contact['id']}", 200),
        ("GET", f"/contacts/{contact['id']}", 401),
        ("POST", "/oauth/token", 200),
        ("GET", f"/contacts/{contact['id']}", 200),
        ("GET", f"/contacts/{contact['id']}", 401),
        ("POST", "/oauth/token", 200),
        ("GET", f"/contacts/{contact['id']}", 200),
    ]
    refresh = ghl.requests_to("POST", "/oauth/token")[0]
    assert refresh.header("content-type") == "application/x-www-form-urlencoded"
    form = {k: v[0] for k, v in parse_qs(refresh.body.decode()).items()}
    assert form == {
        "grant_type": "refresh_token",
        "client_id": ghl.oauth_client_id,
        "client_secret": ghl.oauth_client_secret,
        "refresh_token": first.refresh_token,
        "user_type": "Location",
    }


async def test_concurrent_401s_refresh_once(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    store = InMemoryTokenStore()
    async with (
        provider_for(ghl, store, vtime, initial=install(ghl)) as provider,
        client_for(ghl, provider, vtime) as client,
    ):
        await client.get_contact(contact["id"])
        ghl.expire_access_tokens()
        results = await asyncio.gather(*(client.get_contact(contact["id"]) for _ in range(20)))
    assert {r.id for r in results} == {contact["id"]}
    assert ghl.refresh_count == 1
    assert provider.refresh_count == 1
    assert len(ghl.requests_to("POST", "/oauth/token")) == 1


async def test_second_401_is_authentication_error(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    class NeverValid:
        refreshes = 0

        async def get_token(self) -> str:
            return "at-stale"

        async def refresh(self, rejected_token: str) -> str | None:
            self.refreshes += 1
            return "at-also-stale"

    provider = NeverValid()
    async with client_for(ghl, provider, vtime) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get_contact("abc")
    assert caught.value.status == 401
    assert provider.refreshes == 1
    assert [r.header("authorization") for r in ghl.requests] == ["Bearer at-stale", "Bearer at-also-stale"]


async def test_static_token_never_refreshes(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    provider = StaticTokenProvider("pit-rotated-away")
    assert await provider.refresh("pit-rotated-away") is None
    async with client_for(ghl, provider, vtime) as client:
        with pytest.raises(AuthenticationError):
            await client.get_contact("abc")
    assert len(ghl.requests) == 1
    assert "pit-rotated-away" not in repr(provider)


async def test_rejected_refresh_token_is_authentication_error(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    bogus = TokenPair(access_token="at-unknown", refresh_token="rt-unknown")
    async with (
        provider_for(ghl, InMemoryTokenStore(), vtime, initial=bogus) as provider,
        client_for(ghl, provider, vtime) as client,
    ):
        with pytest.raises(AuthenticationError) as caught:
            await client.get_contact(contact["id"])
    assert caught.value.operation == "oauth refresh"
    assert caught.value.status == 400


async def test_proactive_refresh_before_expiry(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    pair = install(ghl)
    expiring = TokenPair(pair.access_token, pair.refresh_token, expires_at=time.time() + 60)
    store = InMemoryTokenStore()
    async with (
        provider_for(ghl, store, vtime, initial=expiring) as provider,
        client_for(ghl, provider, vtime) as client,
    ):
        await client.get_contact(contact["id"])
    assert [r.status for r in ghl.requests] == [200, 200]  # the refresh, then the read: no 401 at all
    saved = await store.load(ghl.location_id)
    assert saved is not None and saved.access_token != pair.access_token


async def test_refresh_retries_server_errors(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    ghl.script_faults([500, 502], path="/oauth/token")
    async with (
        provider_for(ghl, InMemoryTokenStore(), vtime, initial=install(ghl)) as provider,
        client_for(ghl, provider, vtime) as client,
    ):
        ghl.expire_access_tokens()
        await client.get_contact(contact["id"])
    assert [r.status for r in ghl.requests_to("POST", "/oauth/token")] == [500, 502, 200]

    ghl.script_faults([500] * 5, path="/oauth/token")
    async with provider_for(ghl, InMemoryTokenStore(), vtime, initial=install(ghl)) as provider:
        with pytest.raises(TransientIntegrationError):
            await provider.refresh((await provider.current()).access_token)


async def test_no_token_at_all(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    async with provider_for(ghl, InMemoryTokenStore(), vtime) as provider:
        with pytest.raises(AuthenticationError, match="install the app"):
            await provider.get_token()


async def test_refresh_token_reuse_within_30s_returns_same_pair(ghl: FakeGHLServer) -> None:
    pair = install(ghl)
    form = {"grant_type": "refresh_token", "client_id": ghl.oauth_client_id,
            "client_secret": ghl.oauth_client_secret, "refresh_token": pair.refresh_token}
    async with httpx.AsyncClient(base_url=ghl.base_url) as raw:
        first = (await raw.post("/oauth/token", data=form)).json()
        again = (await raw.post("/oauth/token", data=form)).json()
        wrong = await raw.post("/oauth/token", data={**form, "client_secret": "nope"})
    assert first == again
    assert first["refresh_token"] != pair.refresh_token
    assert wrong.status_code == 401


def test_token_pair_json_round_trip() -> None:
    pair = TokenPair("at", "rt", expires_at=123.5, scope="a b", location_id="L")
    assert TokenPair.from_json(pair.to_json()) == pair
    assert "rt" not in repr(pair)
