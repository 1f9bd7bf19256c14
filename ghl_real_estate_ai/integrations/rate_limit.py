"""Per-location request budgets for the GHL API: in-process (asyncio) and shared through Redis.

GHL allows 100 requests per 10 s per app and location (``X-RateLimit-Max`` /
``X-RateLimit-Interval-Milliseconds``). Both limiters here keep a sliding window of request *slots*
per key (the location id) and follow the server's own count: when a response says
``X-RateLimit-Remaining: 0`` the key is blocked for one whole interval.

Why the window counts finish times, not start times
---------------------------------------------------
A request reaches the server at some instant between the moment the client took its slot and the
moment the response came back. A slot therefore counts against the window from the moment it is
taken (while in flight it counts as "now") until ``window`` seconds after the response arrived. With
that rule no server-side window of ``window`` seconds can ever see more than ``max_requests`` arrivals,
whatever the network latency, which a start-time window cannot promise.

Time comes from an injectable ``clock`` and waits go through an injectable ``sleep``, so tests can drive
hundreds of requests through a virtual clock in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[Any]]

DEFAULT_MAX_REQUESTS = 100
DEFAULT_WINDOW_SECONDS = 10.0


class RateLimiter(Protocol):
    """A request budget per key. ``GHLClient`` wraps every HTTP request in ``slot(location_id)``."""

    def slot(self, key: str) -> AbstractAsyncContextManager[None]:
        """Wait until a request may start for ``key``; the slot is held until the block exits."""
        ...

    async def observe(self, key: str, headers: Mapping[str, str]) -> None:
        """Follow the server's ``X-RateLimit-*`` response headers."""
        ...

    async def block(self, key: str, seconds: float) -> None:
        """Let no new request start for ``key`` during the next ``seconds`` (e.g. after a 429)."""
        ...


def parse_rate_limit_headers(headers: Mapping[str, str]) -> tuple[int | None, float | None]:
    """``(X-RateLimit-Remaining, X-RateLimit-Interval-Milliseconds as seconds)``; None where absent or bad."""
    remaining: int | None = None
    interval: float | None = None
    raw_remaining = _header(headers, "x-ratelimit-remaining")
    raw_interval = _header(headers, "x-ratelimit-interval-milliseconds")
    if raw_remaining is not None:
        try:
            remaining = int(raw_remaining)
        except ValueError:
            remaining = None
    if raw_interval is not None:
        try:
            interval = float(raw_interval) / 1000.0
        except ValueError:
            interval = None
    return remaining, interval


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


@dataclass
class _Bucket:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    finished: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


class SlidingWindowLimiter:
    """In-process limiter: at most ``max_requests`` slots per ``window`` seconds per key.

    Waiters for one key are served in arrival order (an ``asyncio.Lock`` per key). The object is bound to
    no event loop until first use, but must then be used from that one loop only.
    """

    def __init__(
        self,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        window: float = DEFAULT_WINDOW_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        self.max_requests = max_requests
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, key: str) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
        return bucket

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        bucket = self._bucket(key)
        await self._acquire(key, bucket)
        try:
            yield
        finally:
            bucket.in_flight -= 1
            bucket.finished.append(self._clock())
            bucket.released.set()

    async def _acquire(self, key: str, bucket: _Bucket) -> None:
        async with bucket.lock:
            while True:
                now = self._clock()
                if now < bucket.blocked_until:
                    await self._sleep(bucket.blocked_until - now)
                    continue
                horizon = now - self.window
                while bucket.finished and bucket.finished[0] <= horizon:
                    bucket.finished.popleft()
                if bucket.in_flight + len(bucket.finished) < self.max_requests:
                    bucket.in_flight += 1
                    return
                if bucket.finished:
                    wait = bucket.finished[0] + self.window - now
                    logger.debug("rate limit for %s reached; waiting %.3fs", key, wait)
                    await self._sleep(max(wait, 0.0))
                else:
                    # Every slot is in flight: nothing can expire before one of them finishes.
                    bucket.released.clear()
                    await bucket.released.wait()

    async def observe(self, key: str, headers: Mapping[str, str]) -> None:
        remaining, interval = parse_rate_limit_headers(headers)
        if remaining is not None and remaining <= 0:
            await self.block(key, interval if interval is not None else self.window)

    async def block(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        bucket = self._bucket(key)
        until = self._clock() + seconds
        if until > bucket.blocked_until:
            logger.info("GHL budget for %s exhausted; pausing requests for %.3fs", key, seconds)
            bucket.blocked_until = until


# KEYS[1] = sorted set of slots (score: finish time, or lease end while in flight); KEYS[2] = blocked-until.
# ARGV = now, window, max_requests, lease, member, ttl_ms. Answers {granted, wait}: wait is the seconds
# until a slot frees, or -1 when the oldest slot is still in flight (its score is a lease end, not a finish
# time). Numbers go back as strings because Redis truncates Lua numbers to integers.
_ACQUIRE_SCRIPT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max_requests = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
if blocked > now then
  return {0, tostring(blocked - now)}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < max_requests then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  return {1, '0'}
end
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
if oldest > now then
  return {0, '-1'}
end
return {0, tostring(oldest + window - now)}
"""

_RELEASE_SCRIPT = """
redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[2])
"""

_BLOCK_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
"""


class RedisSlidingWindowLimiter:
    """The same sliding window, kept in Redis so several processes share one location's budget.

    ``redis`` is a ``redis.asyncio.Redis`` client owned by the caller. The clock must be comparable across
    processes: the default is wall time (``time.time``), so keep hosts NTP-synchronised. A process that
    dies with a request in flight holds its slot for at most ``lease`` seconds (plus the window); keep
    ``lease`` above the HTTP client's timeout, or a slow live request loses its slot early.

    Redis key expiry runs on real time; it only garbage-collects idle keys and never decides a limit.
    """

    def __init__(
        self,
        redis: Any,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        window: float = DEFAULT_WINDOW_SECONDS,
        *,
        key_prefix: str = "lead-bot:ghl-rate",
        lease: float = 60.0,
        poll_interval: float = 0.05,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        if window <= 0 or lease <= 0:
            raise ValueError("window and lease must be positive")
        self._redis = redis
        self.max_requests = max_requests
        self.window = window
        self.lease = lease
        self.poll_interval = poll_interval
        self.key_prefix = key_prefix
        self._clock = clock
        self._sleep = sleep
        self._acquire_script = redis.register_script(_ACQUIRE_SCRIPT)
        self._release_script = redis.register_script(_RELEASE_SCRIPT)
        self._block_script = redis.register_script(_BLOCK_SCRIPT)
        self._local_locks: dict[str, asyncio.Lock] = {}

    def keys(self, key: str) -> tuple[str, str]:
        """The Redis keys of ``key``'s slots and block marker (hash-tagged: one cluster slot for both)."""
        return f"{self.key_prefix}:{{{key}}}:slots", f"{self.key_prefix}:{{{key}}}:blocked"

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        member = uuid.uuid4().hex
        slots_key, blocked_key = self.keys(key)
        ttl_ms = int((self.window + self.lease) * 1000) + 1000
        # This process's waiters queue locally (FIFO) so only one of them at a time polls Redis.
        local = self._local_locks.setdefault(key, asyncio.Lock())
        async with local:
            while True:
                granted, wait = await self._acquire_script(
                    keys=[slots_key, blocked_key],
                    args=[repr(self._clock()), self.window, self.max_requests, self.lease, member, ttl_ms],
                )
                if int(granted) == 1:
                    break
                delay = float(wait)
                # Every slot is in flight, possibly in another process: poll until one of them finishes.
                await self._sleep(self.poll_interval if delay < 0 else delay)
        try:
            yield
        finally:
            await self._release_script(keys=[slots_key], args=[repr(self._clock()), member])

    async def observe(self, key: str, headers: Mapping[str, str]) -> None:
        remaining, interval = parse_rate_limit_headers(headers)
        if remaining is not None and remaining <= 0:
            await self.block(key, interval if interval is not None else self.window)

    async def block(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        _, blocked_key = self.keys(key)
        until = self._clock() + seconds
        logger.info("GHL budget for %s exhausted; pausing requests for %.3fs (shared)", key, seconds)
        await self._block_script(keys=[blocked_key], args=[repr(until), int(seconds * 1000) + 1000])
