"""``RedisLeadLock`` (one run per lead across processes) and ``LeaderLease`` (one firing scheduler)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from ghl_real_estate_ai.errors import LockTimeoutError
from ghl_real_estate_ai.services.locks import LeaderLease, RedisLeadLock
from ghl_real_estate_ai.testing.fakes import make_contact
from scheduling.support import TimedCrm, wait_for


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[Callable[[], aioredis.Redis]]:
    """A factory of separate Redis clients (separate connections, as separate processes would have)."""
    made: list[aioredis.Redis] = []

    def new() -> aioredis.Redis:
        client = aioredis.Redis.from_url(redis_url)
        made.append(client)
        return client

    yield new
    for client in made:
        await client.aclose()


# ----------------------------------------------------------------------------------------- lead lock


async def test_a_held_lock_makes_others_wait_then_time_out(clients: Callable[[], aioredis.Redis]) -> None:
    a = RedisLeadLock(clients(), prefix="t", ttl_seconds=5, wait_seconds=0.1)
    b = RedisLeadLock(clients(), prefix="t", ttl_seconds=5, wait_seconds=0.1)
    async with a.hold("c1"):
        started = time.monotonic()
        with pytest.raises(LockTimeoutError) as caught:
            async with b.hold("c1"):
                pytest.fail("two holders at once")
        assert time.monotonic() - started >= 0.09
        assert caught.value.contact_id == "c1"
        async with b.hold("c2"):  # other leads are independent
            pass
    async with b.hold("c1"):  # free again once released
        pass
    await a.aclose()
    await b.aclose()


async def test_release_is_compare_and_delete(clients: Callable[[], aioredis.Redis]) -> None:
    client = clients()
    lock = RedisLeadLock(client, prefix="t", ttl_seconds=5)
    token = await lock.acquire("c1")
    # Our lock expired and somebody else took it: releasing ours must not delete theirs.
    await client.set(lock.key("c1"), "someone-else", px=5000)
    assert await lock.release("c1", token) is False
    assert await client.get(lock.key("c1")) == b"someone-else"
    await lock.aclose()


async def test_a_long_run_keeps_its_lock_through_renewal(clients: Callable[[], aioredis.Redis]) -> None:
    client = clients()
    holder = RedisLeadLock(client, prefix="t", ttl_seconds=0.3)
    other = RedisLeadLock(clients(), prefix="t", ttl_seconds=0.3, wait_seconds=0.05)
    async with holder.hold("c1"):
        for _ in range(5):  # 1 s, more than three TTLs
            await asyncio.sleep(0.2)
            with pytest.raises(LockTimeoutError):
                await other.acquire("c1")
            assert await client.pttl(holder.key("c1")) > 0
    assert await client.exists(holder.key("c1")) == 0
    assert holder.lost == []
    await holder.aclose()
    await other.aclose()


async def test_a_renewal_crossing_a_release_is_no_lost_lock_but_a_real_loss_is(
    clients: Callable[[], aioredis.Redis],
) -> None:
    client = clients()
    lock = RedisLeadLock(client, prefix="t", ttl_seconds=0.3)  # renewed every 0.1 s
    releasing = await lock.acquire("c1")
    lost = await lock.acquire("c2")
    # c1: its release is on its way (the delete has run, the coroutine not resumed yet) when a renewal
    # finds the key gone; c2: the key is gone for real while held (Redis lost it).
    lock._releasing.add(releasing)
    await client.delete(lock.key("c1"), lock.key("c2"))
    await wait_for(lambda: lock.lost, within=2)
    await asyncio.sleep(0.25)  # more renewals
    assert lock.lost == ["c2"]
    lock._releasing.discard(releasing)
    assert await lock.release("c1", releasing) is False and await lock.release("c2", lost) is False
    await lock.aclose()


async def test_a_crashed_holders_lock_expires_after_its_ttl(clients: Callable[[], aioredis.Redis]) -> None:
    crashed = RedisLeadLock(clients(), prefix="t", ttl_seconds=0.3)
    await crashed.acquire("c1")
    await crashed.aclose()  # the renewal stops and nobody releases: what a SIGKILL leaves behind
    waiter = RedisLeadLock(clients(), prefix="t", ttl_seconds=5, wait_seconds=2)
    started = time.monotonic()
    async with waiter.hold("c1"):
        assert 0.1 < time.monotonic() - started < 1.5
    await waiter.aclose()


async def test_a_restart_under_the_same_identity_takes_its_locks_back_at_once(
    clients: Callable[[], aioredis.Redis],
) -> None:
    crashed = RedisLeadLock(clients(), prefix="t", ttl_seconds=10, owner="host:8000")
    await crashed.acquire("c1")
    await crashed.aclose()  # SIGKILL: nobody releases, the lock would live 10 s
    stranger = RedisLeadLock(clients(), prefix="t", ttl_seconds=10, wait_seconds=0.2, owner="host:8001")
    with pytest.raises(LockTimeoutError):  # another instance must still wait out the TTL
        await stranger.acquire("c1")
    restarted = RedisLeadLock(clients(), prefix="t", ttl_seconds=10, wait_seconds=0.2, owner="host:8000")
    started = time.monotonic()
    async with restarted.hold("c1"):
        assert time.monotonic() - started < 0.1
        # ... and holds it like any lock: its own later run waits for it, and so do others.
        with pytest.raises(LockTimeoutError):
            await restarted.acquire("c1", wait_seconds=0.1)
        with pytest.raises(LockTimeoutError):
            await stranger.acquire("c1", wait_seconds=0.1)
    async with stranger.hold("c1"):
        pass
    for lock in (stranger, restarted):
        await lock.aclose()


async def test_two_runners_racing_on_one_lead_never_overlap_and_never_double_send(
    make_bot: Callable[..., Any], redis_url: str
) -> None:
    """Two runners (separate Redis clients, locks, savers and *separate* send ledgers, so only the lock and
    the state can stop a second send) deliver 20 due events and 10 operator no-ops for one lead at once."""
    from ghl_real_estate_ai.services.send_ledger import InMemorySendLedger

    intervals: list[tuple[str, float, float]] = []

    class SlowCrm(TimedCrm):
        async def get_contact(self, contact_id: str) -> Any:
            await asyncio.sleep(0.005)  # widen the window a concurrent run would need
            return await super().get_contact(contact_id)

    class Recording:
        def __init__(self, who: str, inner: RedisLeadLock) -> None:
            self.who, self.inner = who, inner

        @contextlib.asynccontextmanager
        async def hold(self, contact_id: str) -> AsyncIterator[None]:
            async with self.inner.hold(contact_id):
                entered = time.monotonic()
                try:
                    yield
                finally:
                    intervals.append((self.who, entered, time.monotonic()))

    async with make_bot(scale=2, ledger=InMemorySendLedger(), lock_wait=30) as one:
        crm = SlowCrm(one.timebase.clock)
        crm.add_contact(make_contact("lead-1"))
        async with make_bot(scale=2, crm=crm, ledger=InMemorySendLedger(), lock_wait=30) as two:
            one.runner.context.crm = crm
            one.runner.context.voice = two.runner.context.voice
            one.runner.lock = Recording("one", one.lock)
            two.runner.lock = Recording("two", two.lock)
            await one.runner.enroll("lead-1")
            intervals.clear()
            state = await one.runner.state("lead-1")
            due = {
                "type": "step_due",
                "step": "day_3",
                "due_at": state["sequence"]["next_due_at"],
                "source": "scheduler",
            }
            events = [(bot, due) for bot in (one, two) for _ in range(10)]
            events += [
                (bot, {"type": "resume", "source": "operator"}) for bot in (one, two) for _ in range(5)
            ]
            await asyncio.gather(*(bot.runner.dispatch("lead-1", dict(event)) for bot, event in events))
            assert len(intervals) == len(events)
            ordered = sorted(intervals, key=lambda i: i[1])
            for (_, _, end), (_, start, _) in itertools.pairwise(ordered):
                assert start >= end, "two runs on one lead overlapped"
            assert {who for who, _, _ in intervals} == {"one", "two"}
            assert [s.channel for s in crm.sent_to("lead-1")] == ["sms"]


# ----------------------------------------------------------------------------------------- leader lease


async def test_exactly_one_leader_and_a_clean_handover(clients: Callable[[], aioredis.Redis]) -> None:
    leases = [LeaderLease(clients(), key="t:leader", ttl_seconds=0.6, owner=f"p{i}") for i in range(3)]
    for lease in leases:
        lease.start()
    try:
        await wait_for(lambda: sum(lease.is_leader for lease in leases) == 1, message="one leader")
        for _ in range(10):  # stays exactly one across several renewals
            await asyncio.sleep(0.05)
            assert sum(lease.is_leader for lease in leases) == 1
        leader = next(lease for lease in leases if lease.is_leader)
        started = time.monotonic()
        await leader.stop()  # clean shutdown releases the lease: a follower takes over at its next try
        await wait_for(lambda: sum(lease.is_leader for lease in leases) == 1, message="a new leader")
        assert time.monotonic() - started < 0.6
        assert not leader.is_leader
    finally:
        for lease in leases:
            await lease.stop()


async def test_a_dead_leader_is_replaced_within_its_ttl(clients: Callable[[], aioredis.Redis]) -> None:
    dead = LeaderLease(clients(), key="t:leader", ttl_seconds=0.6, owner="dead")
    assert await dead.try_acquire()
    follower = LeaderLease(clients(), key="t:leader", ttl_seconds=0.6, owner="follower")
    follower.start()
    try:
        started = time.monotonic()
        await wait_for(lambda: follower.is_leader, within=3, message="takeover")
        assert time.monotonic() - started < 0.6 + 0.2 + 0.3  # ttl + one acquire interval + slack
    finally:
        await follower.stop()


async def test_a_restarted_leader_takes_its_own_lease_back_at_once(
    clients: Callable[[], aioredis.Redis],
) -> None:
    dead = LeaderLease(clients(), key="t:leader", ttl_seconds=10, owner="host:8000")
    assert await dead.try_acquire()  # then SIGKILL: the lease would live 10 s more
    other = LeaderLease(clients(), key="t:leader", ttl_seconds=10, owner="host:8001")
    assert not await other.try_acquire()
    restarted = LeaderLease(clients(), key="t:leader", ttl_seconds=10, owner="host:8000")
    restarted.start()
    try:
        started = time.monotonic()
        await wait_for(lambda: restarted.is_leader, within=3, message="the lease back")
        assert time.monotonic() - started < 0.5
        assert not await other.try_acquire()
    finally:
        await restarted.stop()


async def test_a_leader_that_loses_its_lease_stops_at_once(clients: Callable[[], aioredis.Redis]) -> None:
    client = clients()
    lost = asyncio.Event()

    async def on_lost() -> None:
        lost.set()

    lease = LeaderLease(client, key="t:leader", ttl_seconds=0.6, owner="me", on_lost=on_lost)
    lease.start()
    try:
        await wait_for(lambda: lease.is_leader, message="leadership")
        await client.set("t:leader", "usurper", px=5000)  # e.g. our lease expired during a long stall
        await asyncio.wait_for(lost.wait(), timeout=2)
        assert not lease.is_leader
        assert await client.get("t:leader") == b"usurper"
    finally:
        await lease.stop()
    assert await client.get("t:leader") == b"usurper"  # stop() did not delete somebody else's lease


async def test_leadership_is_bounded_locally_when_renewal_stalls(
    clients: Callable[[], aioredis.Redis],
) -> None:
    lease = LeaderLease(clients(), key="t:leader", ttl_seconds=0.3, owner="me")
    await lease.step()
    assert lease.is_leader
    await asyncio.sleep(0.3)  # no renewal ran (a stalled loop, or Redis unreachable)
    assert not lease.is_leader


async def test_a_release_that_fails_does_not_keep_renewing_the_lock(
    clients: Callable[[], aioredis.Redis],
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    lock = RedisLeadLock(clients(), prefix="t", ttl_seconds=0.3, owner="host:8000")
    token = await lock.acquire("c1")

    async def redis_away(**_: Any) -> Any:
        raise RedisConnectionError("Connection refused")

    lock._release_script = redis_away  # type: ignore[method-assign,assignment]
    with pytest.raises(RedisConnectionError):
        await lock.release("c1", token)
    # Redis is back: the lock is no longer renewed, so it expires and the lead is free again.
    other = RedisLeadLock(clients(), prefix="t", ttl_seconds=5, wait_seconds=2)
    started = time.monotonic()
    async with other.hold("c1"):
        assert time.monotonic() - started < 1.5
    await lock.aclose()
    await other.aclose()
