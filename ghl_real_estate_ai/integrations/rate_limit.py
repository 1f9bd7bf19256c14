"""Per-location request budgets for the GHL API: in-process (asyncio) and shared through Redis.

GHL allows 100 requests per 10 s per app and location (``X-RateLimit-Max`` /
``X-RateLimit-Interval-Milliseconds``). Both limiters here keep a sliding window of request *slots*
per key (the location id), and read the server's ``X-RateLimit-*`` headers to learn what the window
cannot see by itself:

* ``X-RateLimit-Max`` replaces our own limit for that key (``max_requests`` is only the limit used until
  the first answer: GHL's documented 100), lower or higher: a limit GHL raised is budget it grants;
* the server's count (``Max - Remaining``) above our own count of slots in the window is traffic we did
  not send (another app or a Private Integration token on the same location). That excess is reserved
  for one ``X-RateLimit-Interval-Milliseconds``: our budget shrinks by it, and when it takes the whole
  budget no request starts until the interval has passed. "Our count" is taken as the server saw it: the
  slots in our window when the answered request's own slot was granted (its :class:`Ticket`), since
  later ones cannot have reached the server before it; and the reservation runs from that moment, so an
  answer that came back late does not stretch it.

``X-RateLimit-Remaining: 0`` caused by our *own* requests blocks nothing: the window already holds the
next request until the oldest slot frees, which is exactly when GHL grants it. Blocking a whole interval
there would throw away budget GHL would grant (and stall every run of the location for 10 s). A 429 with
``Retry-After`` blocks the key for that long (:meth:`RateLimiter.block`).

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

    def slot(self, key: str) -> AbstractAsyncContextManager[Ticket | None]:
        """Wait until a request may start for ``key``; the slot is held until the block exits. Yields the
        slot's ticket (pass it to :meth:`observe` with that request's answer)."""
        ...

    async def observe(self, key: str, headers: Mapping[str, str], ticket: Ticket | None = None) -> None:
        """Follow the server's ``X-RateLimit-*`` response headers (call it after the slot is given back)."""
        ...

    async def block(self, key: str, seconds: float) -> None:
        """Let no new request start for ``key`` during the next ``seconds`` (e.g. after a 429)."""
        ...


def parse_rate_limit_headers(headers: Mapping[str, str]) -> tuple[int | None, float | None]:
    """``(X-RateLimit-Remaining, X-RateLimit-Interval-Milliseconds as seconds)``; None where absent or bad."""
    remaining = _int_header(headers, "x-ratelimit-remaining")
    interval_ms = _int_header(headers, "x-ratelimit-interval-milliseconds")
    interval = interval_ms / 1000.0 if interval_ms is not None and interval_ms > 0 else None
    return remaining, interval


@dataclass(frozen=True)
class ServerCount:
    """What one answer's ``X-RateLimit-*`` headers say about the location's burst window."""

    remaining: int
    maximum: int | None  # X-RateLimit-Max
    interval: float | None  # X-RateLimit-Interval-Milliseconds, in seconds

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> ServerCount | None:
        remaining, interval = parse_rate_limit_headers(headers)
        if remaining is None:
            return None
        maximum = _int_header(headers, "x-ratelimit-max")
        return cls(max(0, remaining), maximum if maximum is not None and maximum > 0 else None, interval)

    def foreign(self, ours: int, limit: int) -> int:
        """Requests the server counted that our window did not (``ours`` slots in it): another sender's."""
        return (self.maximum or limit) - self.remaining - ours


def _reservation_start(ticket: Ticket | None, interval: float, now: float) -> float | None:
    """When a reservation read from an answer starts (its request's grant, else now); None when the
    answer came back after its own interval and so tells nothing about now."""
    start = ticket.at if ticket is not None else now
    return start if start + interval > now else None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = _header(headers, name)
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


@dataclass(frozen=True)
class Ticket:
    """A granted slot: how many of our slots were in the window with it (``ours``), and when (``at``)."""

    ours: int
    at: float


@dataclass
class _Bucket:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    finished: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    limit: int | None = None  # the server's X-RateLimit-Max, once an answer said it
    foreign: int = 0  # requests of another sender the server counted, reserved until foreign_until
    foreign_until: float = 0.0


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

    def _expire(self, bucket: _Bucket, now: float) -> None:
        horizon = now - self.window
        while bucket.finished and bucket.finished[0] <= horizon:
            bucket.finished.popleft()

    def _budget(self, bucket: _Bucket, now: float) -> int:
        limit = bucket.limit or self.max_requests
        return limit - (bucket.foreign if now < bucket.foreign_until else 0)

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[Ticket | None]:
        bucket = self._bucket(key)
        ticket = await self._acquire(key, bucket)
        try:
            yield ticket
        finally:
            bucket.in_flight -= 1
            bucket.finished.append(self._clock())
            bucket.released.set()

    async def _acquire(self, key: str, bucket: _Bucket) -> Ticket:
        async with bucket.lock:
            while True:
                now = self._clock()
                if now < bucket.blocked_until:
                    await self._sleep(bucket.blocked_until - now)
                    continue
                self._expire(bucket, now)
                budget = self._budget(bucket, now)
                used = bucket.in_flight + len(bucket.finished)
                if used < budget:
                    bucket.in_flight += 1
                    return Ticket(used + 1, now)
                # The slot that frees the budget is the (used - budget + 1)-th oldest finished one.
                need = used - max(budget, 0) + 1
                wait: float | None = None
                if len(bucket.finished) >= need:
                    wait = bucket.finished[need - 1] + self.window - now
                if now < bucket.foreign_until:
                    until_foreign = bucket.foreign_until - now
                    wait = until_foreign if wait is None else min(wait, until_foreign)
                if wait is not None:
                    logger.debug("rate limit for %s reached; waiting %.3fs", key, wait)
                    await self._sleep(max(wait, 0.0))
                else:
                    # Every slot is in flight: nothing can expire before one of them finishes.
                    bucket.released.clear()
                    await bucket.released.wait()

    async def observe(self, key: str, headers: Mapping[str, str], ticket: Ticket | None = None) -> None:
        count = ServerCount.parse(headers)
        if count is None:
            return
        bucket = self._bucket(key)
        now = self._clock()
        if count.maximum is not None:
            bucket.limit = count.maximum
        self._expire(bucket, now)
        ours = ticket.ours if ticket is not None else bucket.in_flight + len(bucket.finished)
        foreign = count.foreign(ours, self.max_requests)
        if foreign <= 0:
            return
        if now >= bucket.foreign_until:
            bucket.foreign = 0
        interval = count.interval or self.window
        start = _reservation_start(ticket, interval, now)
        if start is None:
            return
        if foreign > bucket.foreign:
            logger.info("GHL counted %d requests of %s that this process did not send; reserving them "
                        "for %.3fs", foreign, key, interval)
        bucket.foreign = max(bucket.foreign, foreign)
        bucket.foreign_until = max(bucket.foreign_until, start + interval)

    async def block(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        bucket = self._bucket(key)
        until = self._clock() + seconds
        if until > bucket.blocked_until:
            logger.info("GHL asked to wait for %s; pausing requests for %.3fs", key, seconds)
            bucket.blocked_until = until


# KEYS: slots (sorted set; score: finish time, or lease end while in flight), blocked-until, foreign
# reservation ("count until"), the server's X-RateLimit-Max, the grant sequence. ARGV: now, window,
# max_requests, lease, member, ttl_ms. Answers {granted, wait, ours}: wait is the seconds until budget
# frees, or -1 when the slot that
# would free it is still in flight (its score is a lease end, not a finish time). Numbers go back as
# strings because Redis truncates Lua numbers to integers. Times are the callers' clock, never Redis's:
# key expiry only collects idle keys.
_ACQUIRE_SCRIPT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
if blocked > now then
  return {0, tostring(blocked - now)}
end
local learned = tonumber(redis.call('GET', KEYS[4]) or '0')
if learned > 0 then
  limit = learned
end
local foreign, foreign_until = 0, 0
local reserved = redis.call('GET', KEYS[3])
if reserved then
  local n, u = string.match(reserved, '^(%d+) (.+)$')
  if n and tonumber(u) > now then
    foreign, foreign_until = tonumber(n), tonumber(u)
  end
end
local budget = limit - foreign
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < budget then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  return {1, '0', count + 1}
end
local wait = nil
local need = count - math.max(budget, 0) + 1
if need <= count then
  local score = tonumber(redis.call('ZRANGE', KEYS[1], need - 1, need - 1, 'WITHSCORES')[2])
  if score <= now then
    wait = score + window - now
  end
end
if foreign_until > now and (wait == nil or foreign_until - now < wait) then
  wait = foreign_until - now
end
if wait == nil then
  return {0, '-1'}
end
return {0, tostring(wait)}
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

# KEYS: slots, foreign reservation, server max. ARGV: now, window, remaining, server max (0: absent),
# default max, reservation end, gc ttl ms, our slots when the answered request's slot was granted ('':
# count them now). Reserves what the server counted beyond ours (another sender's requests) until the
# reservation end; returns that excess.
_OBSERVE_SCRIPT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local ours = redis.call('ZCARD', KEYS[1])
if ARGV[8] ~= '' then
  ours = tonumber(ARGV[8])
end
local maximum = tonumber(ARGV[4])
if maximum > 0 then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', 86400000)
else
  maximum = tonumber(ARGV[5])
end
local foreign = maximum - tonumber(ARGV[3]) - ours
if foreign <= 0 then
  return 0
end
local untilv = ARGV[6]
local reserved = redis.call('GET', KEYS[2])
if reserved then
  local n, u = string.match(reserved, '^(%d+) (.+)$')
  if n and tonumber(u) > now then
    if tonumber(n) > foreign then
      foreign = tonumber(n)
    end
    if tonumber(u) > tonumber(untilv) then
      untilv = u
    end
  end
end
redis.call('SET', KEYS[2], string.format('%d', foreign) .. ' ' .. untilv, 'PX', ARGV[7])
return foreign
"""


# The stored X-RateLimit-Max lives a day in Redis; this process writes it again at least this often.
_MAX_REWRITE_SECONDS = 3600.0


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
        self._observe_script = redis.register_script(_OBSERVE_SCRIPT)
        self._local_locks: dict[str, asyncio.Lock] = {}
        self._max_written: dict[str, tuple[int, float]] = {}  # key -> (X-RateLimit-Max, when written)

    def keys(self, key: str) -> tuple[str, str]:
        """The Redis keys of ``key``'s slots and block marker (hash-tagged: one cluster slot for all)."""
        return f"{self.key_prefix}:{{{key}}}:slots", f"{self.key_prefix}:{{{key}}}:blocked"

    def _all_keys(self, key: str) -> list[str]:
        slots, blocked = self.keys(key)
        tagged = f"{self.key_prefix}:{{{key}}}"
        return [slots, blocked, f"{tagged}:foreign", f"{tagged}:max"]

    @property
    def _ttl_ms(self) -> int:
        return int((self.window + self.lease) * 1000) + 1000

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[Ticket | None]:
        member = uuid.uuid4().hex
        keys = self._all_keys(key)
        # This process's waiters queue locally (FIFO) so only one of them at a time polls Redis.
        local = self._local_locks.setdefault(key, asyncio.Lock())
        async with local:
            while True:
                now = self._clock()
                granted, wait, *rest = await self._acquire_script(
                    keys=keys,
                    args=[repr(now), self.window, self.max_requests, self.lease, member, self._ttl_ms],
                )
                if int(granted) == 1:
                    ticket = Ticket(int(rest[0]), now) if rest else None
                    break
                delay = float(wait)
                logger.debug("rate limit for %s reached (shared); waiting %.3fs", key, delay)
                # The freeing slot is in flight, possibly in another process: poll until it finishes.
                await self._sleep(self.poll_interval if delay < 0 else delay)
        try:
            yield ticket
        finally:
            await self._release_script(keys=keys[:1], args=[repr(self._clock()), member])

    async def observe(self, key: str, headers: Mapping[str, str], ticket: Ticket | None = None) -> None:
        count = ServerCount.parse(headers)
        if count is None:
            return
        now = self._clock()
        interval = count.interval or self.window
        start = _reservation_start(ticket, interval, now)
        if start is None:
            return
        written = self._max_written.get(key)
        max_known = count.maximum is None or (
            written is not None and written[0] == count.maximum and now - written[1] < _MAX_REWRITE_SECONDS
        )
        if ticket is not None and max_known and count.foreign(ticket.ours, self.max_requests) <= 0:
            return  # nothing to record: no round trip to Redis on the answers of every request
        if count.maximum is not None:
            self._max_written[key] = (count.maximum, now)
        keys = self._all_keys(key)
        foreign = await self._observe_script(
            keys=[keys[0], keys[2], keys[3]],
            args=[repr(now), self.window, count.remaining, count.maximum or 0, self.max_requests,
                  repr(start + interval), int(interval * 1000) + 1000,
                  "" if ticket is None else ticket.ours],
        )
        if int(foreign) > 0:
            logger.info("GHL counted %s requests of %s that this service did not send; reserving them "
                        "for %.3fs", foreign, key, interval)

    async def block(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        _, blocked_key = self.keys(key)
        until = self._clock() + seconds
        logger.info("GHL asked to wait for %s; pausing requests for %.3fs (shared)", key, seconds)
        await self._block_script(keys=[blocked_key], args=[repr(until), int(seconds * 1000) + 1000])
