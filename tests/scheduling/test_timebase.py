"""Virtual time: shared by processes through Redis, continuous across restarts, never going back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from ghl_real_estate_ai.services.timebase import Timebase

START = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)


class Wall:
    """A settable wall clock (POSIX seconds)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_scale_one_is_wall_time(client: aioredis.Redis) -> None:
    wall = Wall()
    tb = await Timebase(client, prefix="t", scale=1, start_at=START, wall=wall).start(background=False)
    assert tb.now().timestamp() == pytest.approx(wall.now)
    wall.now += 30
    assert tb.now().timestamp() == pytest.approx(wall.now)
    assert tb.to_real(tb.now()).timestamp() == pytest.approx(wall.now)


async def test_scaled_time_starts_at_start_at_and_runs_scale_times_faster(client: aioredis.Redis) -> None:
    wall = Wall()
    tb = await Timebase(client, prefix="t", scale=86400, start_at=START, wall=wall).start(background=False)
    assert tb.now() == START
    wall.now += 1.5
    assert tb.now() == START + timedelta(days=1.5)
    # due times convert to real run times and back
    due = START + timedelta(days=4)
    assert tb.to_real(due).timestamp() == pytest.approx(wall.now + 2.5)
    assert tb.to_virtual(tb.to_real(due)) == due
    assert tb.real_delay(due) == pytest.approx(2.5)


async def test_restart_continues_the_stored_epoch_and_downtime_passes(client: aioredis.Redis) -> None:
    wall = Wall()
    first = await Timebase(client, prefix="t", scale=86400, start_at=START, wall=wall).start(background=False)
    wall.now += 2
    before = first.now()
    await first.stop()
    wall.now += 3  # three real seconds of downtime: three virtual days at this scale
    # A later start_at is ignored: the stored epoch wins.
    second = await Timebase(
        client, prefix="t", scale=86400, start_at=START + timedelta(days=100), wall=wall
    ).start(background=False)
    assert second.now() == before + timedelta(days=3)
    # Both processes' epochs map a due time to the same real run time (jobs stay valid across restarts).
    due = START + timedelta(days=10)
    assert second.to_real(due) == first.to_real(due)


async def test_two_processes_agree_on_now(client: aioredis.Redis) -> None:
    wall = Wall()
    a = await Timebase(client, prefix="t", scale=3600, start_at=START, wall=wall).start(background=False)
    wall.now += 7
    b = await Timebase(client, prefix="t", scale=3600, start_at=START, wall=wall).start(background=False)
    assert a.now() == b.now() == START + timedelta(hours=7)


async def test_virtual_time_never_goes_back_across_a_restart_when_the_wall_clock_does(
    client: aioredis.Redis,
) -> None:
    wall = Wall()
    first = await Timebase(client, prefix="t", scale=86400, start_at=START, wall=wall).start(background=False)
    wall.now += 5
    last = first.now()
    await first.stop()  # persists the high-water mark
    wall.now -= 60  # the host's clock is set back a minute (NTP step, VM restore)
    second = await Timebase(client, prefix="t", scale=86400, wall=wall).start(background=False)
    assert second.now() >= last
    wall.now += 1
    assert second.now() == pytest.approx(last + timedelta(days=1), abs=timedelta(seconds=1))


async def test_virtual_time_never_goes_back_within_a_process(client: aioredis.Redis) -> None:
    wall = Wall()
    tb = await Timebase(client, prefix="t", scale=86400, start_at=START, wall=wall).start(background=False)
    wall.now += 1
    seen = tb.now()
    wall.now -= 0.5
    assert tb.now() == seen


async def test_scale_change_reanchors_without_going_back(client: aioredis.Redis) -> None:
    wall = Wall()
    fast = await Timebase(client, prefix="t", scale=86400, start_at=START, wall=wall).start(background=False)
    wall.now += 10
    last = fast.now()
    await fast.stop()
    slow = await Timebase(client, prefix="t", scale=1, wall=wall).start(background=False)
    # scale 1 after running fast: virtual time is ahead of the wall clock and stays continuous
    assert slow.now() == last
    wall.now += 60
    assert slow.now() == last + timedelta(seconds=60)
    assert slow.scale == 1


async def test_adopt_reads_the_service_epoch_without_changing_it(client: aioredis.Redis) -> None:
    wall = Wall()
    service = await Timebase(client, prefix="t", scale=86400, start_at=START, wall=wall).start(
        background=False
    )
    tool = await Timebase(client, prefix="t", scale=1, wall=wall).start(background=False, adopt=True)
    assert tool.scale == 86400
    assert tool.now() == service.now()
    wall.now += 1
    assert tool.now() == service.now() == START + timedelta(days=1)


async def test_background_tick_persists_the_high_water_mark(client: aioredis.Redis) -> None:
    tb = await Timebase(client, prefix="t", scale=86400, start_at=START, persist_interval=0.02).start()
    try:
        seen = tb.now()
        for _ in range(200):
            stored = await client.hget("t:timebase", "high_water")
            if stored is not None and float(stored) >= seen.timestamp():
                break
            await _sleep(0.01)
        else:
            pytest.fail("the high-water mark was not persisted")
    finally:
        await tb.stop()


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
