"""The per-location limiters, on virtual time: window arithmetic, in-flight slots, following the server's
X-RateLimit headers, and the Redis-backed budget shared by two clients."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterable, Mapping

import pytest
import redis.asyncio as aioredis

from ghl_real_estate_ai.errors import TransientIntegrationError
from ghl_real_estate_ai.integrations.ghl import GHLClient
from ghl_real_estate_ai.integrations.rate_limit import (
    RedisSlidingWindowLimiter,
    SlidingWindowLimiter,
    Ticket,
    parse_rate_limit_headers,
)
from ghl_real_estate_ai.persistence.redis_client import aconnect
from ghl_real_estate_ai.testing.fake_http import VirtualTime
from ghl_real_estate_ai.testing.ghl_server import FakeGHLServer


def max_in_window(times: Iterable[float], window: float) -> int:
    """The largest number of instants that fall in any half-open interval (t - window, t]."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_max_in_window_helper() -> None:
    assert max_in_window([0, 1, 2, 10, 10.5], 10) == 4
    assert max_in_window([0, 10, 20], 10) == 1
    assert max_in_window([], 10) == 0


def test_parse_rate_limit_headers() -> None:
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Interval-Milliseconds": "10000"}
    assert parse_rate_limit_headers(headers) == (0, 10.0)
    assert parse_rate_limit_headers({"x-ratelimit-remaining": "oops"}) == (None, None)
    assert parse_rate_limit_headers({}) == (None, None)


async def test_limiter_spaces_slots_by_window(vtime: VirtualTime) -> None:
    limiter = SlidingWindowLimiter(100, 10.0, clock=vtime.clock, sleep=vtime.sleep)
    starts: list[float] = []

    async def one() -> None:
        async with limiter.slot("LOC"):
            starts.append(vtime.clock())
            await asyncio.sleep(0)

    await asyncio.gather(*(one() for _ in range(250)))
    assert len(starts) == 250
    assert max_in_window(starts, 10.0) == 100
    assert max(starts) - min(starts) >= 20.0


async def test_keys_have_separate_budgets(vtime: VirtualTime) -> None:
    limiter = SlidingWindowLimiter(3, 10.0, clock=vtime.clock, sleep=vtime.sleep)
    for key in ("A", "B"):
        for _ in range(3):
            async with limiter.slot(key):
                pass
    assert vtime.clock() == 1_000.0  # six requests, no wait: each location has its own 3


async def test_in_flight_slots_count_until_window_after_they_finish(vtime: VirtualTime) -> None:
    limiter = SlidingWindowLimiter(2, 10.0, clock=vtime.clock, sleep=vtime.sleep)
    release = asyncio.Event()
    granted: list[float] = []

    async def hold() -> None:
        async with limiter.slot("LOC"):
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0)

    async def third() -> None:
        async with limiter.slot("LOC"):
            granted.append(vtime.clock())

    waiter = asyncio.create_task(third())
    for _ in range(5):
        await asyncio.sleep(0)
    assert granted == []  # both slots are in flight: nothing can start
    vtime.advance(30)  # a long request: its slot still counts
    release.set()
    finished_at = vtime.clock()
    await asyncio.gather(*holders, waiter)
    assert granted == [finished_at + 10.0]


async def test_observe_remaining_zero_blocks_for_interval(vtime: VirtualTime) -> None:
    limiter = SlidingWindowLimiter(100, 10.0, clock=vtime.clock, sleep=vtime.sleep)
    await limiter.observe("LOC", {"X-RateLimit-Remaining": "0", "X-RateLimit-Interval-Milliseconds": "4000"})
    await limiter.observe("OTHER", {"X-RateLimit-Remaining": "7"})
    start = vtime.clock()
    async with limiter.slot("OTHER"):
        assert vtime.clock() == start
    async with limiter.slot("LOC"):
        assert vtime.clock() == start + 4.0


def virtual_client(ghl: FakeGHLServer, vtime: VirtualTime, limiter: object) -> GHLClient:
    return GHLClient(ghl.base_url, ghl.token, ghl.location_id, sleep=vtime.sleep, rng=random.Random(1),
                     rate_limiter=limiter)  # type: ignore[arg-type]


async def test_250_requests_never_exceed_100_per_10s_at_the_server(vtime: VirtualTime) -> None:
    with FakeGHLServer(clock=vtime.clock) as ghl:
        contact = ghl.add_contact()
        limiter = SlidingWindowLimiter(clock=vtime.clock, sleep=vtime.sleep)
        async with virtual_client(ghl, vtime, limiter) as client:
            await asyncio.gather(*(client.add_tags(contact["id"], [f"t{i}"]) for i in range(250)))
        arrivals = [r.at for r in ghl.requests]
        statuses = {r.status for r in ghl.requests}
    assert len(arrivals) == 250
    assert statuses == {201}  # not a single 429
    assert max_in_window(arrivals, 10.0) <= 100
    assert max(arrivals) - min(arrivals) >= 20.0


class IgnoresHeaders(SlidingWindowLimiter):
    async def observe(self, key: str, headers: Mapping[str, str], ticket: Ticket | None = None) -> None:
        return None


async def test_client_follows_remaining_zero(vtime: VirtualTime) -> None:
    # The server's budget (5) is far below the client's own (100): only the headers can keep it safe.
    with FakeGHLServer(clock=vtime.clock, rate_limit=5, rate_window=10.0) as ghl:
        contact = ghl.add_contact()
        limiter = SlidingWindowLimiter(clock=vtime.clock, sleep=vtime.sleep)
        async with virtual_client(ghl, vtime, limiter) as client:
            for i in range(12):
                await client.add_tags(contact["id"], [f"t{i}"])
        followed = ghl.requests
    assert [r.status for r in followed] == [201] * 12
    assert followed[5].at - followed[0].at >= 10.0
    assert max_in_window([r.at for r in followed], 10.0) <= 5

    with FakeGHLServer(clock=vtime.clock, rate_limit=5, rate_window=10.0) as ghl:
        contact = ghl.add_contact()
        blind = IgnoresHeaders(clock=vtime.clock, sleep=vtime.sleep)
        async with virtual_client(ghl, vtime, blind) as client:
            with pytest.raises(TransientIntegrationError):
                for i in range(12):
                    await client.add_tags(contact["id"], [f"t{i}"])
        assert 429 in [r.status for r in ghl.requests]  # without the headers the server pushes back


@pytest.fixture
async def redis_pair(redis_url: str) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    first, second = await aconnect(redis_url), await aconnect(redis_url)  # cluster clients on a cluster
    try:
        yield first, second
    finally:
        await first.aclose()
        await second.aclose()


async def test_redis_limiter_shares_one_budget_between_two_clients(
    vtime: VirtualTime, redis_pair: tuple[aioredis.Redis, aioredis.Redis], key_prefix: str
) -> None:
    with FakeGHLServer(clock=vtime.clock) as ghl:
        contact = ghl.add_contact()
        limiters = [
            # lease: polling races virtual time ahead, and in-flight slots must not be reclaimed meanwhile.
            RedisSlidingWindowLimiter(conn, key_prefix=key_prefix, clock=vtime.clock, sleep=vtime.sleep,
                                      lease=1e6)
            for conn in redis_pair
        ]
        clients = [virtual_client(ghl, vtime, limiter) for limiter in limiters]
        try:
            await asyncio.gather(*(
                client.add_tags(contact["id"], [f"c{n}-t{i}"])
                for n, client in enumerate(clients) for i in range(130)
            ))
        finally:
            for client in clients:
                await client.aclose()
        arrivals = [r.at for r in ghl.requests]
        statuses = {r.status for r in ghl.requests}
    assert len(arrivals) == 260
    assert statuses == {201}
    assert max_in_window(arrivals, 10.0) <= 100
    # Each client alone stayed under 100 too, yet together they still did: the budget was shared.
    assert max(arrivals) - min(arrivals) >= 20.0


async def test_redis_block_is_seen_by_the_other_process(
    vtime: VirtualTime, redis_pair: tuple[aioredis.Redis, aioredis.Redis], key_prefix: str
) -> None:
    one, two = (
        RedisSlidingWindowLimiter(conn, key_prefix=key_prefix, clock=vtime.clock, sleep=vtime.sleep)
        for conn in redis_pair
    )
    await one.observe("LOC", {"X-RateLimit-Remaining": "0", "X-RateLimit-Interval-Milliseconds": "10000"})
    start = vtime.clock()
    async with two.slot("LOC"):
        assert vtime.clock() >= start + 10.0


async def test_redis_limiter_in_flight_slots_hold_the_budget(
    vtime: VirtualTime, redis_pair: tuple[aioredis.Redis, aioredis.Redis], key_prefix: str
) -> None:
    one, two = (
        # Polling moves virtual time fast; a long lease keeps the held slots from being reclaimed.
        RedisSlidingWindowLimiter(conn, 2, 10.0, key_prefix=key_prefix, clock=vtime.clock, sleep=vtime.sleep,
                                  poll_interval=0.5, lease=1e6)
        for conn in redis_pair
    )
    release = asyncio.Event()
    granted: list[float] = []
    releasing: list[float] = []
    holding: list[int] = []
    both_held = asyncio.Event()

    async def hold() -> None:
        async with one.slot("LOC"):
            holding.append(1)
            if len(holding) == 2:
                both_held.set()
            await release.wait()
            releasing.append(vtime.clock())  # the slot's finish time is at least this

    async def third() -> None:
        async with two.slot("LOC"):
            granted.append(vtime.clock())

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await both_held.wait()
    waiter = asyncio.create_task(third())
    await asyncio.sleep(0.05)
    assert granted == []
    release.set()
    await asyncio.gather(*holders, waiter)
    assert granted[0] >= min(releasing) + 10.0


async def test_redis_limiter_reclaims_slots_of_a_dead_process(
    vtime: VirtualTime, redis_pair: tuple[aioredis.Redis, aioredis.Redis], key_prefix: str
) -> None:
    limiter = RedisSlidingWindowLimiter(redis_pair[0], 1, 10.0, key_prefix=key_prefix, clock=vtime.clock,
                                        sleep=vtime.sleep, lease=30.0)
    # A process took the only slot and died without releasing it.
    slots_key, _ = limiter.keys("LOC")
    await redis_pair[1].zadd(slots_key, {"dead-process-slot": vtime.clock() + 30.0})
    start = vtime.clock()
    async with limiter.slot("LOC"):
        assert vtime.clock() >= start + 30.0 + 10.0


# -- own traffic vs another sender's: what X-RateLimit-Remaining: 0 means ----------------------------


def _limiter(kind: str, vtime: VirtualTime, redis_client: aioredis.Redis, key_prefix: str) -> object:
    if kind == "memory":
        return SlidingWindowLimiter(clock=vtime.clock, sleep=vtime.sleep)
    return RedisSlidingWindowLimiter(redis_client, key_prefix=key_prefix, clock=vtime.clock,
                                     sleep=vtime.sleep, lease=1e6)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_own_requests_filling_the_window_wait_only_for_the_oldest_slot(
    kind: str, vtime: VirtualTime, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    # 100 requests over 5 s: GHL answers the 100th with X-RateLimit-Remaining: 0. Request 101 is granted
    # by GHL once the first one is 10 s old; a limiter that blocks a whole interval from the 100th answer
    # sends it 5 s late (at 15 s), and every run of the location waits with it.
    with FakeGHLServer(clock=vtime.clock) as ghl:
        contact = ghl.add_contact()
        async with virtual_client(ghl, vtime, _limiter(kind, vtime, redis_client, key_prefix)) as client:
            start = vtime.clock()
            for i in range(100):
                await client.add_tags(contact["id"], [f"t{i}"])
                await vtime.sleep(0.05)
            await client.add_tags(contact["id"], ["t100"])  # GHL answered the 100th: Remaining 0
        requests = ghl.requests
    assert [r.status for r in requests] == [201] * 101
    assert requests[0].at == start
    assert max_in_window([r.at for r in requests], 10.0) <= 100
    # ... and the 101st left when GHL would first grant it, not an interval after the 100th answer.
    assert requests[100].at == pytest.approx(start + 10.0, abs=0.01)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_another_senders_requests_shrink_the_budget(
    kind: str, vtime: VirtualTime, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    # Another app on the location sent 60 requests; the window cannot see them, GHL's count does.
    with FakeGHLServer(clock=vtime.clock) as ghl:
        contact = ghl.add_contact()
        other = SlidingWindowLimiter(clock=vtime.clock, sleep=vtime.sleep)
        async with virtual_client(ghl, vtime, other) as app:
            for i in range(60):
                await app.add_tags(contact["id"], [f"other{i}"])
        foreign_done = vtime.clock()
        async with virtual_client(ghl, vtime, _limiter(kind, vtime, redis_client, key_prefix)) as client:
            for i in range(60):
                await client.add_tags(contact["id"], [f"t{i}"])
        requests = ghl.requests
    assert {r.status for r in requests} == {201}  # not one 429
    assert max_in_window([r.at for r in requests], 10.0) <= 100
    ours = requests[60:]
    # 40 fit beside the other app's 60; the rest waited for those to leave GHL's window.
    assert all(r.at == foreign_done for r in ours[:40])
    assert ours[40].at >= foreign_done + 10.0 - 0.01


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_requests_granted_after_the_answered_one_do_not_hide_another_senders(
    kind: str, vtime: VirtualTime, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    limiter = _limiter(kind, vtime, redis_client, key_prefix)
    assert isinstance(limiter, SlidingWindowLimiter | RedisSlidingWindowLimiter)
    holding = contextlib.AsyncExitStack()
    first = await holding.enter_async_context(limiter.slot("LOC"))
    for _ in range(4):  # four more of ours leave while the first one's answer is on its way back
        await holding.enter_async_context(limiter.slot("LOC"))
    # GHL counted the first request and 10 of another app's: Remaining 89. The four later ones had not
    # reached it, so the other app's share is 10, not 10 - 4.
    await limiter.observe("LOC", {"X-RateLimit-Remaining": "89", "X-RateLimit-Max": "100",
                                  "X-RateLimit-Interval-Milliseconds": "10000"}, first)
    start = vtime.clock()
    granted_at: list[float] = []
    async with holding:
        for _ in range(86):
            await holding.enter_async_context(limiter.slot("LOC"))
            granted_at.append(vtime.clock())
    assert granted_at[84] == start  # 5 + 85 = 90: our budget beside the other app's 10
    assert granted_at[85] >= start + 10.0 - 1e-6  # the 91st waits for the other app's share to expire


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_an_answer_that_came_back_late_reserves_nothing_for_our_own_expired_requests(
    kind: str, vtime: VirtualTime, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    # 80 of ours, then request A (GHL counts 81: Remaining 19). A's answer is held back while the 80 leave
    # the window and 50 more of ours go out. Read against the window as it is *now*, A's headers would
    # show 80 requests nobody sent, and the location would stall for 10 s (seen in the outside-in runs).
    limiter = _limiter(kind, vtime, redis_client, key_prefix)
    assert isinstance(limiter, SlidingWindowLimiter | RedisSlidingWindowLimiter)
    for _ in range(80):
        async with limiter.slot("LOC"):
            pass
    vtime.advance(9.0)
    async with contextlib.AsyncExitStack() as held:
        ticket = await held.enter_async_context(limiter.slot("LOC"))
        vtime.advance(2.0)  # the 80 are out of every window now
        for _ in range(50):
            async with limiter.slot("LOC"):
                pass
    await limiter.observe("LOC", {"X-RateLimit-Remaining": "19", "X-RateLimit-Max": "100",
                                  "X-RateLimit-Interval-Milliseconds": "10000"}, ticket)
    start = vtime.clock()
    for _ in range(49):  # 100 - (A + 50): the whole rest of the budget, at once
        async with limiter.slot("LOC"):
            pass
    assert vtime.clock() == start


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_the_limit_follows_x_ratelimit_max_up_as_well_as_down(
    kind: str, vtime: VirtualTime, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    # A location whose app has a larger burst budget: GHL says so in every answer, and waiting at our
    # default 100 would waste what it grants.
    with FakeGHLServer(clock=vtime.clock, rate_limit=150, rate_window=10.0) as ghl:
        contact = ghl.add_contact()
        async with virtual_client(ghl, vtime, _limiter(kind, vtime, redis_client, key_prefix)) as client:
            for i in range(200):
                await client.add_tags(contact["id"], [f"t{i}"])
        arrivals = [r.at for r in ghl.requests]
        statuses = {r.status for r in ghl.requests}
    assert statuses == {201}
    assert max_in_window(arrivals, 10.0) == 150
    assert arrivals[149] == arrivals[0]  # the first 150 without waiting


async def test_an_answer_with_nothing_to_record_costs_no_redis_round_trip(
    vtime: VirtualTime, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    limiter = RedisSlidingWindowLimiter(redis_client, key_prefix=key_prefix, clock=vtime.clock,
                                        sleep=vtime.sleep)
    calls: list[object] = []
    original = limiter._observe_script

    async def counting(**kwargs: object) -> object:
        calls.append(kwargs)
        return await original(**kwargs)

    limiter._observe_script = counting  # type: ignore[method-assign,assignment]
    for remaining in (99, 98, 97):  # our own requests only, and the same X-RateLimit-Max each time
        async with limiter.slot("LOC") as ticket:
            pass
        await limiter.observe("LOC", {"X-RateLimit-Remaining": str(remaining), "X-RateLimit-Max": "100",
                                      "X-RateLimit-Interval-Milliseconds": "10000"}, ticket)
    assert len(calls) == 1  # the first answer stores the limit; the others have nothing to add
