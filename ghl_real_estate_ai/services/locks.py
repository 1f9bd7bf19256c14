"""Redis locks: ``RedisLeadLock`` (one run per lead at a time, across processes) and ``LeaderLease`` (one
scheduler process fires jobs).

Both are the classic single-instance Redis lock: ``SET key token NX PX ttl`` to take it, a Lua
compare-and-pexpire to extend it and a Lua compare-and-delete to give it back, so a holder can only ever
extend or delete its *own* token and an expired holder cannot release its successor's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from ghl_real_estate_ai.errors import LockTimeoutError
from ghl_real_estate_ai.persistence.fastpath import FastScript, fast_call

log = logging.getLogger(__name__)

# KEYS[1] = lock key, ARGV[1] = token: delete only our own lock.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] = lock key, ARGV[1] = the token found, ARGV[2] = ours, ARGV[3] = ttl ms: take over a lock only
# while it still holds the token we found.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false
"""

# KEYS[1] = lock key, ARGV[1] = token, ARGV[2] = ttl ms: extend only our own lock.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


async def stop_background(task: asyncio.Task[Any] | None, *, within: float = 5.0) -> None:
    """Cancel a background loop and wait until it has ended.

    A cancellation that lands inside a redis-py command can be swallowed (the client disconnects and the
    coroutine carries on), so a single ``cancel()`` followed by ``await task`` may wait forever: cancel
    again until the task is done, for at most ``within`` seconds. The loops also check a closing flag.
    """
    if task is None:
        return
    deadline = time.monotonic() + within
    while not task.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.warning("background task %s did not stop within %ss", task.get_name(), within)
            return
        task.cancel()
        await asyncio.wait({task}, timeout=min(0.1, remaining))
    if not task.cancelled() and task.exception() is not None:
        log.warning("background task %s ended with %r", task.get_name(), task.exception())


def _owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RedisLeadLock:
    """The ``LeadLock`` of ``services.runner`` on Redis: key ``{prefix}:lock:{contact_id}``.

    It serialises everything that runs on a lead's graph thread (due steps, webhook turns, operator
    actions) across processes, because two concurrent runs on one thread fork its history and can send
    twice. ``hold`` waits up to ``wait_seconds`` (polling with jittered backoff) and raises
    ``LockTimeoutError`` when the lock is still taken. While held, one renewal task per ``RedisLeadLock``
    extends every held lock each ``ttl_seconds / 3`` in one pipeline, so a long run keeps its lock and a
    crashed holder's lock expires after at most ``ttl_seconds``. A lock found lost at renewal (Redis lost
    it, or the process stalled past the TTL) is logged as an error; the run is not interrupted, because
    stopping a run halfway through a send is worse than the small window it opens (the send ledger still
    guards the send itself).

    ``owner`` is the stable identity of this service instance (``lead-bot serve`` uses host name and port,
    which no two live processes can share). Tokens then start with ``owner/``, and a lock held under that
    prefix by a token this object never issued belongs to an earlier run of the same instance that died
    (a SIGKILL, a crash): it is taken over at once instead of waiting out its TTL.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "lead-bot",
        ttl_seconds: float = 30.0,
        wait_seconds: float = 10.0,
        poll_seconds: float = 0.02,
        owner: str | None = None,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._redis = redis
        self._prefix = prefix
        self.owner = owner
        self.ttl_seconds = ttl_seconds
        self.wait_seconds = wait_seconds
        self._poll = poll_seconds
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        # EVALSHA (not EVAL) on the fast path: the take and the release run for every lead run.
        self._release_script = FastScript(redis, _RELEASE)
        self._extend_script = redis.register_script(_EXTEND)
        self._take_over_script = FastScript(redis, _TAKE_OVER)
        self._held: dict[str, str] = {}  # key -> token
        self._releasing: set[str] = set()  # tokens whose delete is on its way
        self._renewer: asyncio.Task[None] | None = None
        self._closing = False
        self.lost: list[str] = []  # contact ids whose lock expired while held (for alerts and tests)

    def key(self, contact_id: str) -> str:
        return f"{self._prefix}:lock:{contact_id}"

    async def acquire(self, contact_id: str, *, wait_seconds: float | None = None) -> str:
        """Take the lead's lock; returns the token. Raises ``LockTimeoutError`` after ``wait_seconds``."""
        key = self.key(contact_id)
        token = f"{self.owner}/{uuid.uuid4().hex}" if self.owner else uuid.uuid4().hex
        wait = self.wait_seconds if wait_seconds is None else wait_seconds
        deadline = time.monotonic() + wait
        delay = self._poll
        while not await fast_call(self._redis, "SET", key, token, "NX", "PX", self._ttl_ms):
            if await self._take_over_from_earlier_run(contact_id, key, token):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeoutError(contact_id, wait)
            await asyncio.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, 0.25)
        self._held[key] = token
        self._ensure_renewer()
        return token

    async def _take_over_from_earlier_run(self, contact_id: str, key: str, token: str) -> bool:
        if not self.owner:
            return False
        found = await fast_call(self._redis, "GET", key)
        if found is None:
            return False
        held = found.decode() if isinstance(found, bytes) else str(found)
        if not held.startswith(f"{self.owner}/") or held in self._held.values() or held in self._releasing:
            return False
        if not await self._take_over_script(keys=[key], args=[held, token, self._ttl_ms]):
            return False
        log.warning("took over the lock of lead %s left by an earlier run of %s", contact_id, self.owner)
        return True

    async def release(self, contact_id: str, token: str) -> bool:
        """Give the lock back if it is still ours; False when it had expired (and maybe been retaken)."""
        key = self.key(contact_id)
        # Forget the token only after the delete (until then a run of this process waiting for the lock
        # must not mistake it for one left by an earlier run), but forget it even when the delete fails:
        # a token left here would be renewed for ever, and the lead locked with it.
        # A renewal that crosses the delete finds the lock gone: ``_releasing`` tells it this is no loss.
        self._releasing.add(token)
        try:
            return bool(await self._release_script(keys=[key], args=[token]))
        finally:
            self._releasing.discard(token)
            if self._held.get(key) == token:
                del self._held[key]

    @contextlib.asynccontextmanager
    async def hold(self, contact_id: str) -> AsyncIterator[None]:
        token = await self.acquire(contact_id)
        try:
            yield
        finally:
            # Shielded: a cancelled run must still hand the lock back, or the lead waits out the TTL.
            released = await asyncio.shield(self.release(contact_id, token))
            if not released:
                log.error("lock of lead %s had expired before its run ended (ttl %ss)",
                          contact_id, self.ttl_seconds)

    def _ensure_renewer(self) -> None:
        if self._closing:
            return
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_loop(), name=f"lead-locks:{self._prefix}")

    async def _renew_loop(self) -> None:
        interval = self.ttl_seconds / 3
        while self._held and not self._closing:
            await asyncio.sleep(interval)
            held = list(self._held.items())
            if not held or self._closing:
                break
            try:
                results = await self._extend_all(held)
            except RedisError as exc:
                log.warning("could not extend %d lead locks: %s", len(held), exc)
                continue
            for (key, token), ok in zip(held, results, strict=True):
                if not ok and self._held.get(key) == token and token not in self._releasing:
                    del self._held[key]
                    contact_id = key.removeprefix(f"{self._prefix}:lock:")
                    self.lost.append(contact_id)
                    log.error("lost the lock of lead %s while a run held it", contact_id)

    async def _extend_all(self, held: list[tuple[str, str]]) -> list[Any]:
        """Extend every held lock in one pipeline (on a cluster: one per master owning some of them)."""
        for attempt in range(2):
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, token in held:
                        await self._extend_script(keys=[key], args=[token, self._ttl_ms], client=pipe)
                    return list(await pipe.execute())
            except NoScriptError:
                # A plain pipeline loads its scripts before it runs; a cluster pipeline does not, and a
                # master that restarted or failed over has none: load it on every master and go again.
                if attempt:
                    raise
                await self._redis.script_load(_EXTEND)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Stop the renewal task (locks still held then expire by their TTL)."""
        self._closing = True
        task, self._renewer = self._renewer, None
        await stop_background(task)


class LeaderLease:
    """A Redis lease that makes exactly one process the active scheduler: key ``{prefix}:scheduler:leader``.

    ``run()`` (a background task) tries ``SET key owner NX PX ttl`` every ``ttl/3`` while not leading, and
    while leading extends the lease every ``ttl/3`` with a compare-and-pexpire. ``on_acquired`` runs when
    the lease is won; ``on_lost`` when it is lost (renewal found another owner, or Redis was unreachable
    until the lease must be presumed expired). :attr:`is_leader` is also bounded locally: it turns False
    once ``ttl - margin`` has passed since the last successful renewal, even if the renewal task is stuck,
    so a partitioned leader stops firing before anybody else can take over. A crashed leader's lease
    expires after ``ttl``, and another process takes over within ``ttl + ttl/3``.

    ``owner`` defaults to a random id per process. Give a stable one (``lead-bot serve``: host name and
    port) and a restarted process finds its own lease and renews it at once, instead of waiting for the
    lease of its dead predecessor to expire; the identity must never be shared by two live processes.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        key: str,
        ttl_seconds: float = 10.0,
        owner: str | None = None,
        on_acquired: Callable[[], Awaitable[None]] | None = None,
        on_lost: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._redis = redis
        self.key = key
        self.ttl_seconds = ttl_seconds
        self.owner = owner or _owner_id()
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._valid_until = 0.0  # monotonic deadline of our lease, as far as we know
        self._leading = False
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.changes = 0  # how many times this process became leader

    @property
    def is_leader(self) -> bool:
        return self._leading and time.monotonic() < self._valid_until

    def _mark(self, started: float) -> None:
        # Count the TTL from before the request went out, minus a margin for clock-rate differences.
        self._valid_until = started + self.ttl_seconds * 0.9

    async def try_acquire(self) -> bool:
        started = time.monotonic()
        if await self._redis.set(self.key, self.owner, nx=True, px=self._ttl_ms):
            self._mark(started)
            return True
        # A restart with the same owner id (not the default) may find its own unexpired lease.
        current = await self._redis.get(self.key)
        if current is not None and (current.decode() if isinstance(current, bytes) else current) == (
            self.owner
        ):
            return await self.renew()
        return False

    async def renew(self) -> bool:
        started = time.monotonic()
        if await self._redis.eval(_EXTEND, 1, self.key, self.owner, self._ttl_ms):
            self._mark(started)
            return True
        return False

    async def release(self) -> None:
        """Give the lease up (clean shutdown), so another process takes over at once."""
        was = self._leading
        self._leading = False
        self._valid_until = 0.0
        if was:
            with contextlib.suppress(RedisError):
                await self._redis.eval(_RELEASE, 1, self.key, self.owner)

    async def _lose(self, why: str) -> None:
        if not self._leading:
            return
        self._leading = False
        self._valid_until = 0.0
        log.error("scheduler lease %s lost (%s): this process stops firing jobs", self.key, why)
        if self._on_lost is not None:
            await self._on_lost()

    async def step(self) -> None:
        """One round of the loop: acquire when following, renew when leading."""
        if self._leading:
            try:
                ok = await self.renew()
            except RedisError as exc:
                if time.monotonic() >= self._valid_until:
                    await self._lose(f"Redis unreachable: {exc}")
                else:
                    log.warning("could not renew the scheduler lease: %s", exc)
                return
            if not ok:
                await self._lose("another process holds it")
            return
        try:
            won = await self.try_acquire()
        except RedisError as exc:
            log.warning("could not reach Redis for the scheduler lease: %s", exc)
            return
        if won:
            self._leading = True
            self.changes += 1
            log.warning("scheduler lease %s acquired by %s: this process fires due steps",
                        self.key, self.owner)
            if self._on_acquired is not None:
                await self._on_acquired()

    async def run(self) -> None:
        """Acquire and renew forever (cancel to stop; then call :meth:`release`). The first attempt is
        made at once."""
        interval = self.ttl_seconds / 3
        while not self._closing:
            started = time.monotonic()
            try:
                await self.step()
            except Exception:
                log.exception("scheduler lease loop failed; retrying")
            if self._leading and not self.is_leader:  # the renewal itself took too long
                await self._lose("renewal came too late")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    def start(self) -> asyncio.Task[None]:
        self._closing = False
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"lease:{self.key}")
        return self._task

    async def stop(self) -> None:
        """Stop the loop and release the lease."""
        self._closing = True
        task, self._task = self._task, None
        await stop_background(task)
        await self.release()
