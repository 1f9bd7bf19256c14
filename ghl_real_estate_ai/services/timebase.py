"""``Timebase``: the service's virtual time, shared by every process on one Redis and never going back.

Virtual time is an affine function of wall time, fixed by an *epoch* kept in Redis::

    virtual(wall) = V0 + (wall - W0) * scale          real(virtual) = W0 + (virtual - V0) / scale

``scale`` is ``LEAD_BOT_TIME_SCALE`` (virtual seconds per real second). Design decisions:

* **One epoch for everyone.** The epoch lives in the hash ``{prefix}:timebase``; a process that starts
  adopts the stored one, so every process on the Redis (and ``GET /healthz``) agrees on "now", and the
  real run times already written into APScheduler's job store stay valid across restarts: nothing has to
  be rescheduled when a worker comes back.
* **Scale 1 is wall time.** The first start at scale 1 writes ``V0 = W0 = now``.
* **Scale > 1 continues from the stored epoch.** The first start writes ``V0 = start_at`` (default: the
  wall time); later starts continue on the same line, so while the service is down virtual time keeps
  passing at ``scale`` (a worker stopped for 2 s at scale 86400 comes back 2 virtual days later, exactly as
  a stopped production service comes back to steps that came due meanwhile).
* **Never back.** Every process raises a high-water mark (``high_water``, the largest virtual "now" it
  handed out) every ``persist_interval`` seconds and at shutdown. On start, if the line would put "now"
  below that mark (the wall clock was set back, or the epoch was lost) or the configured scale differs from
  the stored one, the epoch is re-anchored at ``max(line, high_water)`` with the new scale. Inside one
  process ``now()`` is also clamped to the largest value it returned, so a wall-clock step back during a
  run cannot move it back either.
* A re-anchored epoch is picked up by the other processes at their next tick (they adopt the stored epoch,
  still clamped by their own high-water mark); the scheduler's periodic reconcile then moves the jobs whose
  real run times changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis

from ghl_real_estate_ai.services.locks import stop_background

log = logging.getLogger(__name__)

# Atomically: create the epoch when there is none; return the stored one (fields as a flat list).
_INIT_EPOCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'virtual_epoch', ARGV[1], 'wall_epoch', ARGV[2], 'scale', ARGV[3],
             'high_water', ARGV[1])
end
return redis.call('HMGET', KEYS[1], 'virtual_epoch', 'wall_epoch', 'scale', 'high_water')
"""

# Replace the epoch only if it is still the one we read (two processes re-anchoring at once agree).
_REANCHOR = """
local current = redis.call('HGET', KEYS[1], 'virtual_epoch')
local wall = redis.call('HGET', KEYS[1], 'wall_epoch')
if current == ARGV[1] and wall == ARGV[2] then
  redis.call('HSET', KEYS[1], 'virtual_epoch', ARGV[3], 'wall_epoch', ARGV[4], 'scale', ARGV[5])
  local hw = tonumber(redis.call('HGET', KEYS[1], 'high_water') or '0')
  if hw < tonumber(ARGV[3]) then redis.call('HSET', KEYS[1], 'high_water', ARGV[3]) end
  return 1
end
return 0
"""

# Raise the high-water mark (never lower it) and return the epoch, so a tick is one round trip.
_TICK = """
local hw = tonumber(redis.call('HGET', KEYS[1], 'high_water') or '0')
if hw < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'high_water', ARGV[1]) end
return redis.call('HMGET', KEYS[1], 'virtual_epoch', 'wall_epoch', 'scale', 'high_water')
"""


def _ts(when: datetime) -> float:
    if when.tzinfo is None:
        raise ValueError(f"expected a timezone-aware datetime, got {when!r}")
    return when.timestamp()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class Epoch:
    """``virtual(wall) = virtual_epoch + (wall - wall_epoch) * scale`` (POSIX seconds)."""

    virtual_epoch: float
    wall_epoch: float
    scale: float

    def virtual(self, wall: float) -> float:
        return self.virtual_epoch + (wall - self.wall_epoch) * self.scale

    def wall(self, virtual: float) -> float:
        return self.wall_epoch + (virtual - self.virtual_epoch) / self.scale


class TimebaseClock:
    """The ``Clock`` handed to the graph context (``now()``), backed by a :class:`Timebase`."""

    def __init__(self, timebase: Timebase) -> None:
        self._timebase = timebase

    @property
    def scale(self) -> float:
        return self._timebase.scale

    def now(self) -> datetime:
        return self._timebase.now()

    def real_delay(self, until: datetime) -> float:
        """Real seconds from now until the virtual instant ``until`` (0 if it has passed)."""
        return self._timebase.real_delay(until)


class Timebase:
    """Virtual time persisted in Redis (see the module docstring for the design).

    Call :meth:`start` before use (it loads or creates the epoch) and :meth:`stop` on shutdown (it
    persists the high-water mark). ``wall`` is injectable for tests of clock steps.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "lead-bot",
        scale: float = 1.0,
        start_at: datetime | None = None,
        persist_interval: float = 1.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if scale <= 0:
            raise ValueError(f"time scale must be positive, got {scale!r}")
        if start_at is not None and start_at.tzinfo is None:
            raise ValueError("start_at must be timezone-aware")
        self._redis = redis
        self.key = f"{prefix}:timebase"
        self.scale = float(scale)
        self._start_at = start_at
        self._persist_interval = persist_interval
        self._wall = wall
        self._epoch: Epoch | None = None
        self._last = 0.0  # largest virtual timestamp handed out by this process
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.clock = TimebaseClock(self)

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._epoch is not None

    @property
    def epoch(self) -> Epoch:
        if self._epoch is None:
            raise RuntimeError("Timebase.start() has not been awaited yet")
        return self._epoch

    async def start(self, *, background: bool = True, adopt: bool = False) -> Timebase:
        """Load (or create) the shared epoch; with ``background`` persist the high-water mark every tick.

        ``adopt`` takes a stored epoch as it is, scale included, and never re-anchors: for tools (the
        CLI) that must read the service's virtual time without changing it.
        """
        wall = self._wall()
        # Scale 1: virtual time is wall time. Otherwise the first start may begin at a chosen instant.
        initial = wall if self.scale == 1.0 or self._start_at is None else _ts(self._start_at)
        raw = await self._redis.eval(_INIT_EPOCH, 1, self.key, repr(initial), repr(wall), repr(self.scale))
        stored, high_water = self._parse(raw)
        if adopt:
            self.scale = stored.scale
        line = stored.virtual(wall)
        target = max(line, high_water)
        if stored.scale != self.scale or line + 1e-6 < high_water:
            if stored.scale != self.scale:
                log.warning(
                    "time scale changed from %s to %s: virtual time continues from %s at the new rate",
                    stored.scale, self.scale, _dt(target).isoformat(),
                )
            else:
                log.warning(
                    "wall clock is behind the stored virtual time by %.3f virtual s: re-anchoring so "
                    "virtual time does not go back", high_water - line,
                )
            fresh = Epoch(target, wall, self.scale)
            done = await self._redis.eval(
                _REANCHOR, 1, self.key,
                raw[0], raw[1], repr(fresh.virtual_epoch), repr(fresh.wall_epoch), repr(fresh.scale),
            )
            if not done:  # somebody else re-anchored first: take theirs
                raw = await self._redis.hmget(self.key, "virtual_epoch", "wall_epoch", "scale", "high_water")
                fresh, high_water = self._parse(raw)
            stored = fresh
        with self._lock:
            self._epoch = stored
            self._last = max(self._last, high_water)
        self._closing = False
        if background and self._task is None:
            self._task = asyncio.create_task(self._persist_loop(), name=f"timebase:{self.key}")
        return self

    async def stop(self) -> None:
        """Stop the background tick and persist the high-water mark one last time."""
        self._closing = True
        task, self._task = self._task, None
        await stop_background(task)
        if self._epoch is not None:
            with contextlib.suppress(Exception):  # best effort at shutdown; the tick persisted before
                await self.persist()

    async def persist(self) -> None:
        """Raise the stored high-water mark to this process's "now" and adopt a re-anchored epoch."""
        now = self.now().timestamp()
        raw = await self._redis.eval(_TICK, 1, self.key, repr(now))
        if raw and raw[0] is not None:
            stored, _ = self._parse(raw)
            if stored != self._epoch:
                if stored.scale != self.scale:
                    log.warning("another process runs at time scale %s (this one: %s)",
                                stored.scale, self.scale)
                log.info("adopting the re-anchored virtual time epoch %s", stored)
                with self._lock:
                    self._epoch = stored

    async def _persist_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._persist_interval)
            if self._closing:
                return
            try:
                await self.persist()
            except Exception as exc:  # Redis blip: keep ticking, the next one catches up
                log.warning("could not persist virtual time: %s", exc)

    @staticmethod
    def _parse(raw: list[bytes | str | None]) -> tuple[Epoch, float]:
        values = [float(v) if v is not None else 0.0 for v in raw]
        return Epoch(values[0], values[1], values[2]), values[3]

    # -- time --------------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The current virtual time (UTC); never smaller than any value this process returned before."""
        epoch = self.epoch
        value = epoch.virtual(self._wall())
        with self._lock:
            if value < self._last:
                value = self._last
            else:
                self._last = value
        return _dt(value)

    def to_real(self, virtual: datetime) -> datetime:
        """The wall-clock instant (UTC) at which the virtual instant ``virtual`` happens."""
        return _dt(self.epoch.wall(_ts(virtual)))

    def to_virtual(self, real: datetime) -> datetime:
        """The virtual instant at wall-clock instant ``real``."""
        return _dt(self.epoch.virtual(_ts(real)))

    def real_delay(self, until: datetime) -> float:
        """Real seconds from now until the virtual instant ``until`` (0 if it has passed)."""
        return max(0.0, (_ts(until) - self.now().timestamp()) / self.epoch.scale)

    def virtual_delta(self, real_seconds: float) -> timedelta:
        """How much virtual time passes in ``real_seconds`` of wall time."""
        return timedelta(seconds=real_seconds * self.epoch.scale)
