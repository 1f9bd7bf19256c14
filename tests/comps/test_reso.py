"""The RESO Web API client and comps provider against ``FakeResoServer`` over loopback HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, timedelta
from urllib.parse import parse_qs

import pytest
import redis.asyncio as aioredis

from ghl_real_estate_ai.comps.reso import SELECT, ResoClient, ResoCompsProvider, area_filter
from ghl_real_estate_ai.conversation.appraisal import appraise
from ghl_real_estate_ai.conversation.cma import Subject
from ghl_real_estate_ai.errors import AuthenticationError, TransientIntegrationError
from ghl_real_estate_ai.integrations._http import RetryPolicy
from ghl_real_estate_ai.testing.fake_http import Fault, VirtualTime
from ghl_real_estate_ai.testing.reso_server import FakeResoServer

AS_OF = date(2026, 11, 1)
LAT, LON = 39.7392, -104.9903  # Denver
MILE = 1 / 69.05
SUBJECT = Subject("1200 Test St", "Denver", "CO", "80203", LAT, LON, 3, 2.0, 1800, "single_family", 1995)


def _fill(server: FakeResoServer, count: int = 7) -> None:
    for i in range(count):
        server.add_property(
            UnparsedAddress=f"{100 + i} Nearby St", City="Denver", StateOrProvince="CO", PostalCode="80203",
            Latitude=LAT + (0.1 + 0.1 * i) * MILE, Longitude=LON,
            CloseDate=(AS_OF - timedelta(days=20 + 9 * i)).isoformat(),
            ClosePrice=600_000 + 5_000 * i, LivingArea=1800, BedroomsTotal=3, BathroomsTotalInteger=2,
            YearBuilt=1995,
        )
    server.add_property(  # far away: outside the bounding box
        UnparsedAddress="9 Far Rd", City="Boulder", PostalCode="80301", Latitude=LAT + 25 * MILE,
        Longitude=LON,
        CloseDate="2026-10-01", ClosePrice=2_000_000, LivingArea=1800, YearBuilt=1995,
    )
    server.add_property(  # a condo next door: another type
        UnparsedAddress="1 Condo Ct", City="Denver", PostalCode="80203", Latitude=LAT, Longitude=LON,
        PropertySubType="Condominium", CloseDate="2026-10-01", ClosePrice=300_000, LivingArea=900,
    )
    server.add_property(  # still active: not a sale
        UnparsedAddress="2 Active Ave", City="Denver", PostalCode="80203", Latitude=LAT, Longitude=LON,
        StandardStatus="Active", ListPrice=700_000, LivingArea=1800,
    )


@pytest.fixture
def reso() -> Iterator[FakeResoServer]:
    with FakeResoServer(max_top=3) as server:
        _fill(server)
        yield server


def _client(server: FakeResoServer, **kwargs: object) -> ResoClient:
    options: dict[str, object] = {"token": server.token, "page_size": 200, "requests_per_second": 0}
    options.update(kwargs)
    return ResoClient(server.service_root, **options)  # type: ignore[arg-type]


async def test_area_query_follows_next_links_and_selects_dd_fields(reso: FakeResoServer) -> None:
    client = _client(reso)
    provider = ResoCompsProvider(client)
    sales = await provider.area_sales(SUBJECT, as_of=AS_OF)
    await client.aclose()
    assert sorted(s.address for s in sales) == [f"{100 + i} Nearby St" for i in range(7)]
    assert all(s.property_type == "single_family" and s.year_built == 1995 for s in sales)
    pages = reso.requests_to("GET", "/odata/Property")
    assert len(pages) == 3  # 7 closed sales in the box, 3 a page (the server caps $top=200 at 3)
    first = parse_qs(pages[0].query)
    assert first["$select"] == [",".join(SELECT)]
    assert "StandardStatus eq 'Closed'" in first["$filter"][0] and "Latitude ge" in first["$filter"][0]
    assert all(r.header("authorization") == f"Bearer {reso.token}" for r in pages)
    valuation = appraise(SUBJECT, sales, as_of=AS_OF)
    assert 600_000 <= valuation.value <= 640_000


@pytest.mark.parametrize("lookups", ["display", "enum"])
async def test_both_lookup_forms_are_read(lookups: str) -> None:
    with FakeResoServer(lookups=lookups) as server:
        _fill(server)
        client = _client(server)
        sales = await ResoCompsProvider(client).area_sales(SUBJECT, as_of=AS_OF)
        condo = Subject("x", lat=LAT, lon=LON, property_type="condo")
        condos = await ResoCompsProvider(client).area_sales(condo, as_of=AS_OF)
        await client.aclose()
        assert len(sales) == 7 and [c.address for c in condos] == ["1 Condo Ct"]
        if lookups == "enum":
            assert server.records[0]["PropertySubType"] == "Single Family Residence"  # stored, served enum


async def test_without_coordinates_the_query_is_by_postal_code(reso: FakeResoServer) -> None:
    client = _client(reso)
    subject = Subject("1200 Test St", "Denver", "CO", "80203")
    sales = await ResoCompsProvider(client).area_sales(subject, as_of=AS_OF)
    await client.aclose()
    assert len(sales) == 7
    assert "PostalCode eq '80203'" in parse_qs(reso.requests[0].query)["$filter"][0]
    assert "City eq 'O''Fallon'" in area_filter(Subject("x", city="O'Fallon"), since=AS_OF, as_of=AS_OF,
                                                radius_miles=1)


async def test_client_credentials_token_is_fetched_once_and_refreshed_when_it_expires() -> None:
    vt = VirtualTime()
    with FakeResoServer(token=None, token_lifetime=600, clock=vt.clock) as server:
        _fill(server)
        client = ResoClient(server.service_root, client_id=server.client_id,
                            client_secret=server.client_secret, token_url=server.token_url,
                            requests_per_second=0, clock=vt.clock, sleep=vt.sleep)
        provider = ResoCompsProvider(client)
        await provider.area_sales(SUBJECT, as_of=AS_OF)
        await provider.area_sales(SUBJECT, as_of=AS_OF)
        assert len(server.requests_to("POST", "/token")) == 1
        form = parse_qs(server.requests_to("POST", "/token")[0].body.decode())
        assert form["grant_type"] == ["client_credentials"] and form["scope"] == ["api"]
        vt.advance(601)  # expired: a new token before the next query
        await provider.area_sales(SUBJECT, as_of=AS_OF)
        assert len(server.requests_to("POST", "/token")) == 2
        server.expire_tokens()  # revoked early: the 401 makes the client fetch one more and retry
        assert len(await provider.area_sales(SUBJECT, as_of=AS_OF)) == 7
        assert len(server.requests_to("POST", "/token")) == 3
        await client.aclose()


async def test_wrong_credentials_are_a_permanent_error() -> None:
    with FakeResoServer(token=None) as server:
        client = ResoClient(server.service_root, client_id="x", client_secret="y", token_url=server.token_url,
                            requests_per_second=0)
        with pytest.raises(AuthenticationError, match="RESO token failed"):
            await ResoCompsProvider(client).area_sales(SUBJECT, as_of=AS_OF)
        static = ResoClient(server.service_root, token="wrong", requests_per_second=0)
        with pytest.raises(AuthenticationError, match="HTTP 401"):
            await ResoCompsProvider(static).area_sales(SUBJECT, as_of=AS_OF)
        await client.aclose()
        await static.aclose()


async def test_429_is_retried_after_retry_after_and_requests_are_spaced(reso: FakeResoServer) -> None:
    vt = VirtualTime()
    reso.script_faults([Fault(status=429, retry_after=3), None], method="GET", path="/odata/Property")
    client = _client(reso, requests_per_second=2.0, clock=vt.clock, sleep=vt.sleep)
    sales = await ResoCompsProvider(client).area_sales(SUBJECT, as_of=AS_OF)
    await client.aclose()
    assert len(sales) == 7
    assert [r.status for r in reso.requests_to("GET", "/odata/Property")] == [429, 200, 200, 200]
    # Retry-After honoured (its 3 s cover the retry's 0.5 s slot), then each next page waits its slot.
    assert vt.slept == [3.0, 0.5, 0.5]


async def test_a_server_that_keeps_failing_is_a_transient_error(reso: FakeResoServer) -> None:
    vt = VirtualTime()
    reso.script_faults([500] * 10, method="GET", path="/odata/Property")
    client = _client(reso, retry=RetryPolicy(max_retries=2), sleep=vt.sleep, clock=vt.clock)
    with pytest.raises(TransientIntegrationError):
        await ResoCompsProvider(client).area_sales(SUBJECT, as_of=AS_OF)
    await client.aclose()


async def test_an_area_is_cached_in_redis_for_a_day(
    reso: FakeResoServer, redis_client: aioredis.Redis
) -> None:
    client = _client(reso)
    provider = ResoCompsProvider(client, redis_client, prefix="test13:reso")
    first = await provider.area_sales(SUBJECT, as_of=AS_OF)
    asked = len(reso.requests)
    nearby = Subject("1202 Test St", lat=LAT + 0.0005, lon=LON, sqft=1800)  # same street: same cache entry
    second = await provider.area_sales(nearby, as_of=AS_OF)
    assert len(reso.requests) == asked  # no new query
    assert {s.address for s in first} == {s.address for s in second}
    keys = [k async for k in redis_client.scan_iter(match="test13:reso:*")]
    assert len(keys) == 1
    assert 86_000 < await redis_client.ttl(keys[0]) <= 86_400
    assert json.loads(await redis_client.get(keys[0]))[0]["price"] > 0
    await provider.area_sales(SUBJECT, as_of=AS_OF + timedelta(days=1))  # the next day asks again
    assert len(reso.requests) > asked
    await client.aclose()
