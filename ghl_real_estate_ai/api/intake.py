"""The durable intake: every event from outside (GHL and Retell webhooks, workflow enrollments, operator
commands) and every due step the scheduler fires is appended to a Redis Stream before it is acknowledged,
and consumer-group workers in every ``lead-bot serve`` process apply it to the lead's graph.

The intake is ``partitions`` streams (default 16), and a lead's events all go to the partition its contact
id hashes to (CRC-32), so a lead's events keep their order while no single stream (or, on a Redis Cluster,
no single node) carries all the traffic. Keys (prefix ``lead-bot`` by default; ``{...}`` is the hash tag, so
each partition and its companions live in one cluster slot)::

    {p}:{intake:N}                   partition N; an entry is deleted once processed (so XLEN = backlog)
    {p}:{intake:N}:dead              dead letters: entries that failed ``max_attempts`` times, and why
    {p}:{intake:N}:failures          hash: entry id -> failures so far (survives a crash of the worker)
    {p}:{intake:N}:seen:{key}        dedupe marker of a webhook (webhookId, messageId, Retell call_id+event)
    {p}:{intake:N}:owner             the lease of the process consuming partition N
    {p}:intake:members               ZSET of live worker processes (member -> lease expiry, ms)
    {p}:intake:result:{rid}          what became of an operator request (``lead-bot pause ... `` waits for it)

Contracts:

* :meth:`IntakeStream.append` returns only after Redis stored the entry. The dedupe check and the append
  are one Lua script, so a duplicate is never appended and a first delivery is never lost between the two.
  Redis being unreachable raises :class:`IntakeUnavailableError` (the webhook routes answer 429 to it, the
  only status GHL redelivers on).
* Each partition is consumed by exactly one process at a time, the holder of its lease. The live workers
  register in ``{p}:intake:members`` and split the partitions evenly among themselves (partition N goes to
  the (N mod members)-th live member in name order), so adding or removing a process needs no
  configuration: the others hand over (finishing what they hold first) within a lease renewal. A process
  that takes a partition takes over the entries its previous owner left unacknowledged; a crashed owner's
  lease expires after ``lease_seconds`` (a restart under the same stable name takes it back at once).
* :class:`IntakeWorker` processes entries of different leads concurrently (``concurrency`` at a time) and
  the entries of one lead strictly in stream order. An entry is XACKed (and deleted) only after its
  handler returned. A failure is retried with backoff, the lead's later entries waiting behind it; after
  ``max_attempts`` failures, or at once for a failure retrying cannot fix, the entry moves to the dead
  letters (one atomic step) and the lead's queue moves on. Redis being unreachable, or the lead's lock
  being held elsewhere (``LockTimeoutError``), is not counted as a failure: the entry simply waits.
  Entries a lane of this process gave up on are swept up again once idle for ``claim_idle`` seconds.
* Entries of the single stream of earlier versions (``{p}:intake``, ``{p}:intake:dead``) are moved into
  their partitions when a worker starts (:meth:`IntakeStream.migrate_legacy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import uuid
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ghl_real_estate_ai.errors import (
    InvalidEventError,
    LeadBotError,
    LeadNotFoundError,
    LockTimeoutError,
    PermanentIntegrationError,
)
from ghl_real_estate_ai.persistence.fastpath import fast_pipeline

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "lead-bot"
GROUP = "lead-bot-workers"
DEFAULT_PARTITIONS = 16
DEFAULT_LEASE_SECONDS = 10.0
MISSING_POLL_SECONDS = 0.05  # how often a process looks for a partition it should own but does not hold yet
DEFAULT_DEDUPE_TTL_SECONDS = 7 * 86400  # GHL redelivers for ~70 minutes, Retell for minutes
RESULT_TTL_SECONDS = 3600
MAX_ATTEMPTS = 5

# Errors that mean "Redis is not reachable right now", as opposed to a command that failed.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class IntakeUnavailableError(LeadBotError):
    """The intake stream could not store an event (Redis unreachable); the sender should retry later."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"the intake stream is unavailable: {detail}")


# KEYS[1] stream, KEYS[2] dedupe marker; ARGV[1] marker TTL (s), ARGV[2..] field/value pairs.
# Returns the new entry id, or false when the marker exists (a redelivery).
_APPEND_ONCE = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return false
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
return id
"""

# KEYS[1] stream; ARGV[1] unused (keeps the argument layout of _APPEND_ONCE), ARGV[2..] field/value pairs.
_APPEND = """
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""


class _GroupCommit:
    """Appends run as Lua calls, and the ones that arrive while a round trip is in flight go together in
    the next one (one pipeline): under a webhook burst this is one round trip and one wakeup for many
    appends. Every append still waits for Redis's own reply to it, so "answered" keeps meaning "stored".

    The scripts are sent as EVALSHA; after a Redis restart (empty script cache) the batch is retried once
    with the scripts loaded again.
    """

    def __init__(self, client: aioredis.Redis, once: str, plain: str) -> None:
        self._redis = client
        self._scripts = {2: once, 1: plain}  # by number of keys
        self._shas = {n: hashlib.sha1(source.encode()).hexdigest() for n, source in self._scripts.items()}
        self._queue: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, keys: list[str], args: list[Any]) -> Any:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, args, done))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="intake-append")
        self._wake.set()
        return await done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            try:
                results = await self._execute(batch)
            except Exception as exc:
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (_, _, done), result in zip(batch, results, strict=True):
                if done.done():
                    continue
                if isinstance(result, Exception):
                    done.set_exception(result)
                else:
                    done.set_result(result)

    async def _execute(self, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> list[Any]:
        results = await self._send([(keys, args) for keys, args, _ in batch])
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:  # Redis lost its script cache: load the scripts and resend only what did not run
            for source in self._scripts.values():
                await self._redis.script_load(source)
            again = await self._send([(batch[i][0], batch[i][1]) for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results

    async def _send(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        # A standalone server: one pipelined write on the lean connection.
        replies = await fast_pipeline(
            self._redis, [("EVALSHA", self._shas[len(keys)], len(keys), *keys, *args) for keys, args in calls]
        )
        if replies is not None:
            return replies
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self._shas[len(keys)], len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, _, done in self._queue:
            if not done.done():
                done.set_exception(RedisConnectionError("the intake stream was closed"))
        self._queue = []


# KEYS[1] stream, KEYS[2] dead letters, KEYS[3] failures hash; ARGV[1] group, ARGV[2] entry id,
# ARGV[3..] the dead letter's field/value pairs. Moves one entry to the dead letters atomically.
_DEAD_LETTER = """
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
"""

# KEYS[1] stream, KEYS[2] dead letters; ARGV[1] dead-letter id, ARGV[2..] the fields to requeue.
_REQUEUE = """
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('XDEL', KEYS[2], ARGV[1])
return id
"""

# KEYS[1] stream, KEYS[2] failures hash; ARGV[1] group, ARGV[2..] entry ids: done with these entries.
_ACK = """
local ids = {unpack(ARGV, 2)}
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
redis.call('HDEL', KEYS[2], unpack(ids))
return #ids
"""

# KEYS[1] members ZSET; ARGV[1] member ('' = only read), ARGV[2] lease ms. Returns the live members, in
# name order, on the server's clock (so hosts with skewed clocks agree on who is alive).
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
table.sort(members)
return members
"""

# KEYS[1] lease; ARGV[1] owner, ARGV[2] ttl ms: take a free lease, or our own (a restart under the same
# name); 1 when held now.
_TAKE_LEASE = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] lease; ARGV[1] owner, ARGV[2] ttl ms: extend our own lease (0: it is not ours any more).
_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] lease; ARGV[1] owner: give our own lease back.
_DROP_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def partition_of(contact_id: str, partitions: int) -> int:
    """The partition a lead's events go to (stable across processes, versions and restarts)."""
    return zlib.crc32(contact_id.encode("utf-8")) % partitions


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class IntakeEntry:
    """One stream entry. ``event`` is the graph event; ``guard`` names a check the handler makes first
    (``"human_outbound"``: drop it if the message is one the bot sent); ``request_id`` is set for
    operator requests whose outcome someone may wait for."""

    id: str
    contact_id: str
    event: dict[str, Any]
    source: str = "webhook"
    guard: str = ""
    request_id: str = ""
    dedupe: str = ""
    received_at_ms: int = 0
    partition: int = 0  # the partition it was read from (not stored)

    @property
    def ref(self) -> str:
        """Unique across partitions (each stream numbers its entries on its own)."""
        return f"{self.partition}/{self.id}"

    @classmethod
    def from_fields(
        cls, entry_id: Any, fields: Mapping[Any, Any] | None, partition: int = 0
    ) -> IntakeEntry:
        """Parse stored fields; raises ``InvalidEventError`` for an entry that cannot be processed."""
        data = {_text(k): _text(v) for k, v in (fields or {}).items()}
        try:
            event = json.loads(data.get("event", ""))
        except ValueError:
            event = None
        if not isinstance(event, dict) or not data.get("contact_id"):
            raise InvalidEventError(f"intake entry {_text(entry_id)} has no contact id or event")
        try:
            received = int(data.get("received_at_ms") or 0)
        except ValueError:
            received = 0
        return cls(
            id=_text(entry_id),
            contact_id=data["contact_id"],
            event=event,
            source=data.get("source", "webhook"),
            guard=data.get("guard", ""),
            request_id=data.get("request_id", ""),
            dedupe=data.get("dedupe", ""),
            received_at_ms=received,
            partition=partition,
        )

    def fields(self) -> dict[str, str]:
        """The stream fields of this entry (without its id)."""
        return _fields(self.contact_id, self.event, source=self.source, guard=self.guard,
                       request_id=self.request_id, dedupe=self.dedupe, received_at_ms=self.received_at_ms)


def _fields(
    contact_id: str,
    event: Mapping[str, Any],
    *,
    source: str,
    guard: str = "",
    request_id: str = "",
    dedupe: str = "",
    received_at_ms: int | None = None,
) -> dict[str, str]:
    out = {
        "contact_id": contact_id,
        "event": json.dumps(dict(event), separators=(",", ":"), ensure_ascii=False),
        "source": source,
        "received_at_ms": str(received_at_ms if received_at_ms is not None else int(time.time() * 1000)),
    }
    if guard:
        out["guard"] = guard
    if request_id:
        out["request_id"] = request_id
    if dedupe:
        out["dedupe"] = dedupe
    return out


@dataclass(frozen=True)
class AppendResult:
    """``entry_id`` of the stored entry; ``duplicate`` when the dedupe key was seen before (nothing stored
    then)."""

    entry_id: str | None
    duplicate: bool = False
    request_id: str = ""


@dataclass(frozen=True)
class DeadLetter:
    id: str
    original_id: str
    contact_id: str
    event: dict[str, Any]
    source: str
    error: str
    attempts: int
    failed_at_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "original_id": self.original_id,
            "contact_id": self.contact_id,
            "event": self.event,
            "source": self.source,
            "error": self.error,
            "attempts": self.attempts,
            "failed_at_ms": self.failed_at_ms,
        }


class IntakeStream:
    """The partitioned stream and its companions on one ``redis.asyncio`` client (plain or cluster; owned
    by the caller)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        dedupe_ttl_seconds: int = DEFAULT_DEDUPE_TTL_SECONDS,
        group: str = GROUP,
        partitions: int = DEFAULT_PARTITIONS,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, not {partitions}")
        self.redis = client
        self.prefix = prefix
        self.group = group
        self.partitions = partitions
        self.dedupe_ttl = dedupe_ttl_seconds
        self.members_key = f"{prefix}:intake:members"
        self.legacy_stream_key = f"{prefix}:intake"
        self.legacy_dead_key = f"{prefix}:intake:dead"
        self.legacy_failures_key = f"{prefix}:intake:failures"
        self._commits = _GroupCommit(client, _APPEND_ONCE, _APPEND)
        self._dead_letter = client.register_script(_DEAD_LETTER)
        self._requeue = client.register_script(_REQUEUE)
        self._ack = client.register_script(_ACK)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._take_lease = client.register_script(_TAKE_LEASE)
        self._renew_lease = client.register_script(_RENEW_LEASE)
        self._drop_lease = client.register_script(_DROP_LEASE)

    # -- keys --------------------------------------------------------------------------------------

    def partition_of(self, contact_id: str) -> int:
        return partition_of(contact_id, self.partitions)

    def stream_key(self, partition: int) -> str:
        return f"{self.prefix}:{{intake:{partition}}}"

    def dead_key(self, partition: int) -> str:
        return f"{self.stream_key(partition)}:dead"

    def failures_key(self, partition: int) -> str:
        return f"{self.stream_key(partition)}:failures"

    def lease_key(self, partition: int) -> str:
        return f"{self.stream_key(partition)}:owner"

    def seen_key(self, dedupe: str, contact_id: str) -> str:
        return f"{self.stream_key(self.partition_of(contact_id))}:seen:{dedupe}"

    def result_key(self, request_id: str) -> str:
        return f"{self.prefix}:intake:result:{request_id}"

    # -- producing ---------------------------------------------------------------------------------

    async def append(
        self,
        contact_id: str,
        event: Mapping[str, Any],
        *,
        source: str,
        dedupe: str | None = None,
        guard: str = "",
        request_id: str | None = None,
    ) -> AppendResult:
        """Store one event durably in the lead's partition (see the module docstring). ``dedupe`` makes
        the append happen at most once per key within the dedupe TTL. Raises ``IntakeUnavailableError``
        when Redis cannot take it."""
        rid = request_id or ""
        fields = _fields(contact_id, event, source=source, guard=guard, request_id=rid, dedupe=dedupe or "")
        stream = self.stream_key(self.partition_of(contact_id))
        keys = [stream, self.seen_key(dedupe, contact_id)] if dedupe else [stream]
        args: list[Any] = [self.dedupe_ttl]
        for key, value in fields.items():
            args.extend((key, value))
        try:
            entry_id = await self._commits.submit(keys, args)
        except RedisError as exc:  # connection errors are RedisErrors too
            raise IntakeUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise IntakeUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        if entry_id is None:
            return AppendResult(None, duplicate=True, request_id=rid)
        return AppendResult(_text(entry_id), request_id=rid)

    async def aclose(self) -> None:
        """Stop the group-commit task (appends still waiting fail with ``IntakeUnavailableError``)."""
        await self._commits.aclose()

    async def request(self, contact_id: str, event: Mapping[str, Any], *, source: str) -> AppendResult:
        """Append an operator request with a fresh request id that :meth:`wait_result` can wait on."""
        return await self.append(contact_id, event, source=source, request_id=uuid.uuid4().hex)

    async def wait_result(
        self, request_id: str, within: float, *, poll: float = 0.05
    ) -> dict[str, Any] | None:
        """The worker's result for ``request_id``, polling for up to ``within`` seconds (None then)."""
        deadline = time.monotonic() + within
        while True:
            raw = await self.redis.get(self.result_key(request_id))
            if raw is not None:
                result = json.loads(raw)
                return result if isinstance(result, dict) else {"ok": False, "error": "unreadable result"}
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(poll)

    # -- consuming ---------------------------------------------------------------------------------

    async def ensure_group(self, partition: int) -> None:
        """Create the consumer group at the start of a partition (entries appended before any worker ran
        are processed too)."""
        try:
            await self.redis.xgroup_create(self.stream_key(partition), self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(
        self, consumer: str, partition: int, count: int, block_ms: int
    ) -> list[IntakeEntry | tuple[str, str]]:
        """New entries of one partition for ``consumer``; unreadable ones come back as ``(id, error)``."""
        key = self.stream_key(partition)
        try:
            response = await self.redis.xreadgroup(self.group, consumer, {key: ">"}, count=count,
                                                   block=block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("intake consumer group of partition %d missing (Redis lost its data?); creating "
                        "it again", partition)
            await self.ensure_group(partition)
            return []
        out: list[IntakeEntry | tuple[str, str]] = []
        streams: list[Any] = list(response or [])  # [[stream, [(id, fields), ...]]] (RESP2 shape)
        for _stream, items in streams:
            out.extend(self._parse(items, partition))
        return out

    def _parse(self, items: Iterable[Any], partition: int) -> list[IntakeEntry | tuple[str, str]]:
        out: list[IntakeEntry | tuple[str, str]] = []
        for entry_id, fields in items:
            try:
                out.append(IntakeEntry.from_fields(entry_id, fields, partition))
            except InvalidEventError as exc:
                out.append((_text(entry_id), str(exc)))
        return out

    async def autoclaim(
        self, consumer: str, partition: int, min_idle_ms: int, count: int = 100
    ) -> list[IntakeEntry | tuple[str, str]]:
        """Take over entries of a partition left pending (by a crashed owner, or a lane of ours that gave
        up) for at least ``min_idle_ms``."""
        key = self.stream_key(partition)
        claimed: list[IntakeEntry | tuple[str, str]] = []
        start = "0-0"
        for _ in range(100):  # bounded: at most 100 pages per sweep
            try:
                response = await self.redis.xautoclaim(
                    key, self.group, consumer, min_idle_ms, start_id=start, count=count
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self.ensure_group(partition)
                    return claimed
                raise
            cursor, items = response[0], response[1]
            deleted = [_text(i) for i in (response[2] if len(response) > 2 else [])]
            live = [(i, f) for i, f in items if f is not None]
            deleted.extend(_text(i) for i, f in items if f is None)
            claimed.extend(self._parse(live, partition))
            if deleted:  # the entry's data is gone (XDEL after a crash mid-ack): finish acking it
                await self.redis.xack(key, self.group, *deleted)
            start = _text(cursor)
            if start == "0-0":
                break
        return claimed

    async def touch(self, consumer: str, entries: Iterable[IntakeEntry]) -> None:
        """Reset the idle time of entries this consumer still holds, so the sweep leaves them alone."""
        by_partition: dict[int, list[str]] = {}
        for entry in entries:
            by_partition.setdefault(entry.partition, []).append(entry.id)
        for partition, ids in by_partition.items():
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                await self.redis.xclaim(self.stream_key(partition), self.group, consumer, 0,
                                        list[Any](chunk), justid=True)

    async def ack(self, entry: IntakeEntry, result: Mapping[str, Any] | None = None) -> None:
        """Mark an entry done: XACK + XDEL + forget its failures (one script), store the request's result."""
        await self.ack_many([(entry, result)])

    async def ack_many(self, done: list[tuple[IntakeEntry, Mapping[str, Any] | None]]) -> None:
        """:meth:`ack` for several entries in one round trip: the operator results first (so a result is
        there whenever its entry is gone), then one atomic script per partition."""
        if not done:
            return
        by_partition: dict[int, list[str]] = {}
        results: list[tuple[str, str]] = []
        for entry, result in done:
            by_partition.setdefault(entry.partition, []).append(entry.id)
            if entry.request_id and result is not None:
                results.append((self.result_key(entry.request_id), json.dumps(dict(result), default=str)))
        commands: list[tuple[Any, ...]] = [
            ("SET", key, value, "EX", RESULT_TTL_SECONDS) for key, value in results
        ]
        acks = [("EVALSHA", self._ack.sha, 2, self.stream_key(p), self.failures_key(p), self.group, *ids)
                for p, ids in by_partition.items()]
        replies = await fast_pipeline(self.redis, [*commands, *acks])  # a standalone server: one write
        if replies is not None:
            if any(isinstance(r, NoScriptError) for r in replies):  # Redis lost its script cache
                await self.redis.script_load(_ACK)
                replies = await fast_pipeline(self.redis, acks) or []
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
            return
        pipe = self.redis.pipeline(transaction=False)
        for key, value in results:
            pipe.set(key, value, ex=RESULT_TTL_SECONDS)
        for partition, ids in by_partition.items():
            await self._ack(keys=[self.stream_key(partition), self.failures_key(partition)],
                            args=[self.group, *ids], client=pipe)
        await pipe.execute()

    async def record_failure(self, entry: IntakeEntry) -> int:
        """Count one more failure of ``entry``; returns the failures so far."""
        return int(await self.redis.hincrby(self.failures_key(entry.partition), entry.id, 1))

    async def dead_letter(self, entry: IntakeEntry, error: str, attempts: int) -> None:
        """Move ``entry`` to its partition's dead letters with its error, and fail any waiting request."""
        fields = entry.fields()
        fields.update({
            "original_id": entry.id,
            "error": error[:2000],
            "attempts": str(attempts),
            "failed_at_ms": str(int(time.time() * 1000)),
        })
        args: list[Any] = [self.group, entry.id]
        for key, value in fields.items():
            args.extend((key, value))
        p = entry.partition
        await self._dead_letter(keys=[self.stream_key(p), self.dead_key(p), self.failures_key(p)], args=args)
        if entry.request_id:
            await self.redis.set(
                self.result_key(entry.request_id),
                json.dumps({"ok": False, "error": error, "dead_letter": True}),
                ex=RESULT_TTL_SECONDS,
            )

    async def drop_unreadable(self, partition: int, entry_id: str, error: str) -> None:
        """Dead-letter an entry whose fields cannot even be parsed."""
        args = [self.group, entry_id, "original_id", entry_id, "contact_id", "", "event", "{}",
                "source", "unknown", "error", error, "attempts", "1",
                "failed_at_ms", str(int(time.time() * 1000))]
        p = partition
        await self._dead_letter(keys=[self.stream_key(p), self.dead_key(p), self.failures_key(p)], args=args)

    # -- partition leases and membership -----------------------------------------------------------

    async def heartbeat(self, member: str, lease_ms: int) -> list[str]:
        """Register ``member`` as live for ``lease_ms`` (``""``: only look); the live members, sorted."""
        members: list[Any] = await self._heartbeat(keys=[self.members_key], args=[member, lease_ms])
        return [_text(m) for m in members]

    async def leave(self, member: str) -> None:
        await self.redis.zrem(self.members_key, member)

    async def take_lease(self, partition: int, owner: str, lease_ms: int) -> bool:
        return bool(await self._take_lease(keys=[self.lease_key(partition)], args=[owner, lease_ms]))

    async def renew_lease(self, partition: int, owner: str, lease_ms: int) -> bool:
        return bool(await self._renew_lease(keys=[self.lease_key(partition)], args=[owner, lease_ms]))

    async def drop_lease(self, partition: int, owner: str) -> None:
        await self._drop_lease(keys=[self.lease_key(partition)], args=[owner])

    async def owners(self) -> dict[int, str | None]:
        """Partition -> the process holding its lease (None: nobody)."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.get(self.lease_key(p))
        return {p: (_text(v) if v is not None else None) for p, v in enumerate(await pipe.execute())}

    # -- earlier versions' single stream -----------------------------------------------------------

    async def migrate_legacy(self, *, batch: int = 500) -> int:
        """Move the entries (and dead letters) of the single stream earlier versions used into their
        partitions; returns how many moved. Each entry is added to its partition before it is deleted
        from the old stream, so a crash in between can at worst process one entry twice (the send ledger
        keeps that from sending twice), never lose it. Safe to run in several processes at once (a lock
        lets one do it) and a no-op when there is nothing to move."""
        # One EXISTS per key: on a cluster the two keys may live on different nodes.
        legacy = (self.legacy_stream_key, self.legacy_dead_key)
        if not (await self.redis.exists(legacy[0]) or await self.redis.exists(legacy[1])):
            return 0
        lock = f"{self.prefix}:intake:migrating"
        if not await self.redis.set(lock, "1", nx=True, px=120_000):
            return 0
        moved = 0
        try:
            for old, dead in ((self.legacy_stream_key, False), (self.legacy_dead_key, True)):
                while True:
                    items: list[Any] = list(await self.redis.xrange(old, "-", "+", count=batch) or [])
                    if not items:
                        break
                    for entry_id, raw in items:
                        fields: dict[Any, Any] = {_text(k): _text(v) for k, v in (raw or {}).items()}
                        p = self.partition_of(fields.get("contact_id", ""))
                        if fields:
                            await self.redis.xadd(self.dead_key(p) if dead else self.stream_key(p), fields)
                        await self.redis.xdel(old, entry_id)
                        moved += 1
                await self.redis.delete(old)
            await self.redis.delete(self.legacy_failures_key)
        finally:
            await self.redis.delete(lock)
        if moved:
            log.warning("moved %d entries of the single intake stream of an earlier version into its %d "
                        "partitions", moved, self.partitions)
        return moved

    # -- inspection --------------------------------------------------------------------------------

    async def partition_stats(self) -> list[dict[str, Any]]:
        """Per partition: ``backlog`` (entries not yet acknowledged, in flight included) and ``lag_seconds``
        (age of the oldest of them; 0 when empty)."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.xlen(self.stream_key(p))
            pipe.xrange(self.stream_key(p), "-", "+", count=1)
        replies = await pipe.execute()
        now_ms = time.time() * 1000
        out = []
        for p in range(self.partitions):
            length, first = replies[2 * p], replies[2 * p + 1]
            lag = 0.0
            if first:
                oldest_ms = int(_text(first[0][0]).split("-")[0])
                lag = max(0.0, (now_ms - oldest_ms) / 1000)
            out.append({"partition": p, "backlog": int(length or 0), "lag_seconds": round(lag, 3)})
        return out

    async def backlog(self) -> int:
        """Entries not yet processed (appended and not yet acknowledged, including in-flight ones)."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.xlen(self.stream_key(p))
        return sum(int(n or 0) for n in await pipe.execute())

    async def pending(self) -> int:
        """Entries delivered to a consumer and not yet acknowledged."""
        total = 0
        for p in range(self.partitions):
            try:
                info = await self.redis.xpending(self.stream_key(p), self.group)
            except ResponseError:
                continue
            total += int(info.get("pending", 0) if isinstance(info, dict) else 0)
        return total

    async def queued_contacts(self, source: str) -> set[str]:
        """Contacts with an entry from ``source`` not yet acknowledged (reconcile: steps already fired)."""
        found: set[str] = set()
        for p in range(self.partitions):
            start = "-"
            while True:
                items: list[Any] = list(
                    await self.redis.xrange(self.stream_key(p), start, "+", count=2000) or []
                )
                for _, raw in items:
                    fields = {_text(k): _text(v) for k, v in (raw or {}).items()}
                    if fields.get("source") == source and fields.get("contact_id"):
                        found.add(fields["contact_id"])
                if len(items) < 2000:
                    break
                start = "(" + _text(items[-1][0])
        return found

    async def dead_letters(self, count: int = 1000) -> list[DeadLetter]:
        """The dead letters of every partition, oldest first. Their ids are ``"<partition>/<entry id>"``."""
        out = []
        for p in range(self.partitions):
            items: list[Any] = list(await self.redis.xrange(self.dead_key(p), "-", "+", count=count) or [])
            for entry_id, raw in items:
                data = {_text(k): _text(v) for k, v in (raw or {}).items()}
                try:
                    event = json.loads(data.get("event") or "{}")
                except ValueError:
                    event = {}
                out.append(DeadLetter(
                    id=f"{p}/{_text(entry_id)}",
                    original_id=data.get("original_id", ""),
                    contact_id=data.get("contact_id", ""),
                    event=event if isinstance(event, dict) else {},
                    source=data.get("source", ""),
                    error=data.get("error", ""),
                    attempts=int(data.get("attempts") or 0),
                    failed_at_ms=int(data.get("failed_at_ms") or 0),
                ))
        out.sort(key=lambda d: (d.failed_at_ms, d.id))
        return out[:count]

    async def dead_letter_count(self) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.xlen(self.dead_key(p))
        return sum(int(n or 0) for n in await pipe.execute())

    async def retry_dead_letters(self, ids: Iterable[str] | None = None) -> list[tuple[str, str]]:
        """Requeue dead letters (all when ``ids`` is None) as fresh intake entries of their partition;
        returns ``(dead_letter_id, new_entry_id)`` pairs. Unknown ids raise ``InvalidEventError``."""
        letters = {d.id: d for d in await self.dead_letters(count=100_000)}
        wanted = list(letters) if ids is None else list(ids)
        missing = [i for i in wanted if i not in letters]
        if missing:
            raise InvalidEventError(f"no dead letter with id {', '.join(missing)}")
        done = []
        for dead_id in wanted:
            letter = letters[dead_id]
            if not letter.contact_id:
                raise InvalidEventError(f"dead letter {dead_id} is unreadable and cannot be retried")
            fields = _fields(letter.contact_id, letter.event, source=letter.source)
            partition, _, entry_id = dead_id.partition("/")
            p = int(partition)
            args: list[Any] = [entry_id]
            for key, value in fields.items():
                args.extend((key, value))
            new_id = await self._requeue(keys=[self.stream_key(p), self.dead_key(p)], args=args)
            done.append((dead_id, _text(new_id)))
        return done


Handler = Callable[[IntakeEntry], Awaitable[Mapping[str, Any]]]


def default_is_permanent(exc: BaseException) -> bool:
    """Failures retrying cannot fix: a refused request, an unknown contact, an unusable event."""
    return isinstance(exc, PermanentIntegrationError | InvalidEventError | LeadNotFoundError)


def _not_a_failure(exc: BaseException) -> bool:
    """Redis unreachable, the lead busy (its lock held by a run elsewhere, or by a crashed process until
    the lock's TTL ends), or its location waiting for a reinstall: the entry waits, and these do not count
    towards dead-lettering."""
    from ghl_real_estate_ai.integrations.oauth import LocationUnavailableError

    return isinstance(exc, (*REDIS_DOWN, LockTimeoutError, LocationUnavailableError))


class IntakeObserver:
    """Callbacks for metrics; the default does nothing."""

    def processed(self, entry: IntakeEntry, outcome: str, seconds: float) -> None:
        """``outcome``: ok | retry | dead_letter | waiting (Redis down or the lead busy)."""


@dataclass
class _Lane:
    entries: deque[IntakeEntry] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class IntakeWorker:
    """The consumer-group worker of one process (see the module docstring for its guarantees).

    ``consumer`` is this process's name in the consumer groups and in the membership set: stable across a
    restart (``lead-bot serve``: host name and port), so a restarted process takes its partitions back at
    once; never shared by two live processes. ``lease_seconds`` bounds how long a crashed process's
    partitions wait for a new owner. ``group_of`` (Marketplace mode: the entry's location) caps how many
    entries of one group hold a slot at once (``group_concurrency``); the others wait outside the slots,
    so a group whose entries are slow (a location out of GHL budget) never takes every slot.
    ``background`` marks entries nobody is waiting on (Retell's call reports): while entries of other kinds
    are being processed, one of these waits before it starts, for at most ``background_wait`` seconds, so a
    backlog of due steps (after a restart, say) is not slowed by the reports of the calls it is making.
    """

    def __init__(
        self,
        stream: IntakeStream,
        handler: Handler,
        *,
        consumer: str | None = None,
        concurrency: int = 32,
        max_in_flight: int = 2000,
        max_attempts: int = MAX_ATTEMPTS,
        claim_idle: float = 60.0,
        retry_base: float = 0.25,
        retry_cap: float = 5.0,
        batch: int = 50,
        block_ms: int = 1000,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        handover_grace: float = 30.0,
        group_of: Callable[[IntakeEntry], Awaitable[str | None]] | None = None,
        group_concurrency: int = 4,
        is_permanent: Callable[[BaseException], bool] = default_is_permanent,
        observer: IntakeObserver | None = None,
        background: Callable[[IntakeEntry], bool] | None = None,
        background_wait: float = 0.5,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.max_attempts = max_attempts
        self.claim_idle = claim_idle
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.batch = batch
        self.block_ms = block_ms
        self.lease_seconds = lease_seconds
        self.handover_grace = handover_grace
        self.max_in_flight = max_in_flight
        self.is_permanent = is_permanent
        self.observer = observer or IntakeObserver()
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._slots = asyncio.Semaphore(concurrency)
        self._group_of = group_of
        self._group_concurrency = group_concurrency
        self._group_slots: dict[str, asyncio.Semaphore] = {}
        self._lanes: dict[str, _Lane] = {}
        self._in_flight: dict[str, IntakeEntry] = {}
        self._is_background = background
        self.background_wait = background_wait
        self._foreground = 0  # entries not in the background being processed now
        self._foreground_idle = asyncio.Event()
        self._foreground_idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._readers: dict[int, asyncio.Task[None]] = {}  # owned partition -> its read loop
        self._valid_until: dict[int, float] = {}  # owned partition -> monotonic end of our lease
        self._releasing: set[int] = set()
        self._acks: list[tuple[IntakeEntry, dict[str, Any], asyncio.Future[None]]] = []
        self._ack_wake = asyncio.Event()
        self._ack_task: asyncio.Task[None] | None = None
        self.members: list[str] = []
        self.last_read_ok: float = 0.0
        self.started = False

    @property
    def running(self) -> bool:
        return self.started and not self._stopping and all(not t.done() for t in self._tasks)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def partitions(self) -> list[int]:
        """The partitions this process consumes now."""
        return sorted(self._readers)

    async def start(self) -> None:
        """Move an earlier version's entries into the partitions, join the members, take this process's
        share of the partitions (with the entries their previous owner left unfinished) and read them."""
        self._stopping = False
        await self.stream.migrate_legacy()
        self._ack_task = asyncio.create_task(self._ack_loop(), name="intake-ack")
        await self._balance()
        self._tasks = [
            asyncio.create_task(self._balance_loop(), name="intake-balance"),
            asyncio.create_task(self._claim_loop(), name="intake-claim"),
        ]
        self.started = True
        log.info("intake worker %s started with partitions %s", self.consumer, self.partitions)

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop reading; finish the entries already taken within ``grace_seconds``; leave the rest pending;
        give the partitions back so the other processes take them at once."""
        self._stopping = True
        for task in [*self._tasks, *self._readers.values()]:
            task.cancel()
        for task in [*self._tasks, *self._readers.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        lanes = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if lanes:
            _, late = await asyncio.wait(lanes, timeout=grace_seconds)
            for task in late:
                task.cancel()
            if late:
                log.warning("intake worker stopped with %d lead queue(s) unfinished; their entries stay "
                            "pending and will be reclaimed", len(late))
                await asyncio.wait(late, timeout=5)
        if self._ack_task is not None:  # after the lanes: they wait for their acknowledgements
            self._ack_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._ack_task
            self._ack_task = None
        with contextlib.suppress(*REDIS_DOWN, RedisError):
            for partition in list(self._readers):
                await self.stream.drop_lease(partition, self.consumer)
            await self.stream.leave(self.consumer)
        self._readers.clear()
        self._valid_until.clear()
        self.started = False
        log.info("intake worker %s stopped", self.consumer)

    async def drain(self, within: float) -> bool:
        """Wait until nothing is in flight (tests, benchmarks); True when drained within ``within`` s."""
        deadline = time.monotonic() + within
        while self._in_flight:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # -- partitions --------------------------------------------------------------------------------

    def _share(self, members: list[str]) -> set[int]:
        """The partitions this process should own: N goes to the (N mod members)-th live member."""
        if self.consumer not in members:
            members = sorted([*members, self.consumer])
        me = members.index(self.consumer)
        return {p for p in range(self.stream.partitions) if p % len(members) == me}

    async def _balance(self) -> None:
        """One round: heartbeat, renew what we hold, hand over what is no longer ours, take what is."""
        started = time.monotonic()
        self.members = await self.stream.heartbeat(self.consumer, self._lease_ms)
        wanted = self._share(self.members)
        for partition in sorted(self._readers):
            # Partitions being handed over are renewed too: the lease must outlast the entries in hand.
            if not await self.stream.renew_lease(partition, self.consumer, self._lease_ms):
                log.error("intake partition %d was taken over by another process; this one stops "
                          "reading it", partition)
                self._forget(partition)
                continue
            self._valid_until[partition] = started + self.lease_seconds * 0.9
            if partition not in wanted and partition not in self._releasing:
                self._releasing.add(partition)
                task = asyncio.create_task(self._hand_over(partition), name=f"intake-handover-{partition}")
                self._background(task)
        for partition in sorted(wanted - set(self._readers)):
            if not await self.stream.take_lease(partition, self.consumer, self._lease_ms):
                continue  # its owner still finishes what it holds, or crashed: its lease runs out
            self._valid_until[partition] = started + self.lease_seconds * 0.9
            await self.stream.ensure_group(partition)
            # Whatever the previous owner (or our own previous incarnation) left unacknowledged is ours
            # now: nobody else may be working on it while we hold the lease.
            leftover = await self.stream.autoclaim(self.consumer, partition, 0, count=1000)
            if leftover:
                log.warning("intake worker %s takes up %d entr(ies) left unfinished in partition %d",
                            self.consumer, len(leftover), partition)
            await self._submit_all(leftover, partition)
            self._readers[partition] = asyncio.create_task(self._read_loop(partition),
                                                           name=f"intake-read-{partition}")

    def _background(self, task: asyncio.Task[None]) -> None:
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    def _forget(self, partition: int) -> None:
        task = self._readers.pop(partition, None)
        if task is not None:
            task.cancel()
        self._valid_until.pop(partition, None)
        self._releasing.discard(partition)

    async def _hand_over(self, partition: int) -> None:
        """Stop reading a partition another process should own, finish its entries here, then give the
        lease back (the new owner takes up whatever is left unacknowledged)."""
        task = self._readers.get(partition)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        deadline = time.monotonic() + self.handover_grace
        while any(e.partition == partition for e in self._in_flight.values()):
            if time.monotonic() > deadline or self._stopping:
                break
            await asyncio.sleep(0.05)
        self._forget(partition)
        with contextlib.suppress(*REDIS_DOWN, RedisError):
            await self.stream.drop_lease(partition, self.consumer)
        log.info("intake worker %s handed partition %d over", self.consumer, partition)

    async def _balance_loop(self) -> None:
        while not self._stopping:
            # Much faster while a partition we should own is still held by someone finishing it: from the
            # moment its old owner lets go until we take it, nobody reads it (entries, due steps included,
            # wait), so that gap is kept to a few tens of milliseconds.
            wanted = self._share(self.members) if self.members else set()
            missing = bool(wanted - set(self._readers))
            await asyncio.sleep(min(MISSING_POLL_SECONDS, self.lease_seconds / 3) if missing
                                else self.lease_seconds / 3)
            try:
                await self._balance()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("intake partition balance failed (%s: %s)", type(exc).__name__, exc)
            now = time.monotonic()
            for partition, until in list(self._valid_until.items()):
                if now >= until and partition in self._readers and partition not in self._releasing:
                    # Not renewed in time (Redis away): another process may own it by now. Stop taking
                    # new entries from it; the ones in hand finish (the send ledger guards their sends).
                    log.error("intake partition %d lease not renewed in time; this process stops "
                              "reading it", partition)
                    self._forget(partition)

    # -- loops -------------------------------------------------------------------------------------

    async def _read_loop(self, partition: int) -> None:
        delay = 0.1
        while not self._stopping:
            await self._room.wait()
            try:
                room = max(1, min(self.batch, self.max_in_flight - len(self._in_flight)))
                items = await self.stream.read(self.consumer, partition, room, self.block_ms)
                self.last_read_ok = time.monotonic()
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("intake read of partition %d failed (%s: %s); retrying in %.1fs",
                            partition, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            await self._submit_all(items, partition)
            if 0 < len(items) < room:
                # A trickle: let entries gather for a moment so the next read takes a batch (one round trip
                # and one wakeup for many entries under load; 2 ms is nothing next to a reply's latency).
                await asyncio.sleep(0.002)

    async def _claim_loop(self) -> None:
        """Keep our entries fresh, and sweep up entries of our partitions nobody is working on (a lane of
        ours that gave up on a bug)."""
        interval = max(0.05, self.claim_idle / 3)
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                if self._in_flight:
                    await self.stream.touch(self.consumer, list(self._in_flight.values()))
                for partition in self.partitions:
                    if partition in self._releasing:
                        continue
                    claimed = await self.stream.autoclaim(self.consumer, partition,
                                                          int(self.claim_idle * 1000))
                    fresh = [c for c in claimed
                             if isinstance(c, tuple) or c.ref not in self._in_flight]
                    if fresh:
                        log.info("intake worker %s reclaimed %d idle entr(ies) of partition %d",
                                 self.consumer, len(fresh), partition)
                    await self._submit_all(fresh, partition)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("intake reclaim failed (%s: %s)", type(exc).__name__, exc)

    async def _submit_all(self, items: list[IntakeEntry | tuple[str, str]], partition: int) -> None:
        for item in items:
            if isinstance(item, tuple):
                entry_id, error = item
                log.error("intake entry %s is unreadable: %s", entry_id, error)
                with contextlib.suppress(Exception):
                    await self.stream.drop_unreadable(partition, entry_id, error)
                continue
            self._submit(item)

    def _submit(self, entry: IntakeEntry) -> None:
        if entry.ref in self._in_flight:
            return
        self._in_flight[entry.ref] = entry
        if len(self._in_flight) >= self.max_in_flight:
            self._room.clear()
        lane = self._lanes.get(entry.contact_id)
        if lane is None:
            lane = self._lanes[entry.contact_id] = _Lane()
        lane.entries.append(entry)
        if lane.task is None:
            lane.task = asyncio.create_task(self._run_lane(entry.contact_id), name=f"lead-{entry.contact_id}")

    async def _run_lane(self, contact_id: str) -> None:
        lane = self._lanes[contact_id]
        try:
            while lane.entries:
                entry = lane.entries[0]
                try:
                    done = await self._process(entry)
                except Exception:
                    # A bug, not a failed event: leave the entries pending; the reclaim sweep retries them.
                    log.exception("lead %s: intake lane crashed on entry %s", contact_id, entry.id)
                    break
                if not done:  # stopping: leave this and the later entries pending in Redis
                    break
                lane.entries.popleft()
                self._in_flight.pop(entry.ref, None)
                if len(self._in_flight) < self.max_in_flight:
                    self._room.set()
        finally:
            # Entries still queued here stay pending in Redis; forgetting them locally lets the reclaim
            # sweep hand them out again.
            for left in lane.entries:
                self._in_flight.pop(left.ref, None)
            self._lanes.pop(contact_id, None)
            self._room.set()

    def _backoff(self, attempt: int) -> float:
        return min(self.retry_cap, self.retry_base * (2 ** max(0, attempt - 1)))

    async def _process(self, entry: IntakeEntry) -> bool:
        """Run ``entry`` until it is acknowledged or dead-lettered (True), or the worker stops (False)."""
        if self._is_background is not None and self._is_background(entry):
            if not self._foreground_idle.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._foreground_idle.wait(), self.background_wait)
            return await self._process_now(entry)
        self._foreground += 1
        self._foreground_idle.clear()
        try:
            return await self._process_now(entry)
        finally:
            self._foreground -= 1
            if not self._foreground:
                self._foreground_idle.set()

    async def _process_now(self, entry: IntakeEntry) -> bool:
        down_delay = 0.1
        group: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
        if self._group_of is not None:
            name = await self._group_of(entry)
            if name:
                group = self._group_slots.setdefault(name, asyncio.Semaphore(self._group_concurrency))
        while True:
            started = time.monotonic()
            async with group, self._slots:
                try:
                    result = await self.handler(entry)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    error: BaseException | None = exc
                else:
                    error = None
            if error is None:
                await self._acknowledge(entry, {"ok": True, **dict(result)})
                self.observer.processed(entry, "ok", time.monotonic() - started)
                return True
            if _not_a_failure(error):
                self.observer.processed(entry, "waiting", time.monotonic() - started)
                log.warning("lead %s: entry %s waits (%s: %s)", entry.contact_id, entry.id,
                            type(error).__name__, error)
                if self._stopping:
                    return False
                await asyncio.sleep(down_delay)
                down_delay = min(down_delay * 2, 5.0)
                continue
            message = f"{type(error).__name__}: {error}"
            try:
                attempts = await self.stream.record_failure(entry)
            except Exception:
                if self._stopping:
                    return False
                await asyncio.sleep(down_delay)
                continue
            permanent = self.is_permanent(error)
            if permanent or attempts >= self.max_attempts:
                why = "cannot succeed" if permanent else f"failed {attempts} times"
                log.error("lead %s: intake entry %s %s; dead-lettered: %s", entry.contact_id, entry.id, why,
                          message, exc_info=None if permanent else error)
                await self._settle(self.stream.dead_letter, entry, message, attempts)
                self.observer.processed(entry, "dead_letter", time.monotonic() - started)
                return True
            delay = self._backoff(attempts)
            log.warning("lead %s: intake entry %s failed (attempt %d/%d): %s; retrying in %.2fs",
                        entry.contact_id, entry.id, attempts, self.max_attempts, message, delay)
            self.observer.processed(entry, "retry", time.monotonic() - started)
            if self._stopping:
                return False
            await asyncio.sleep(delay)

    async def _acknowledge(self, entry: IntakeEntry, result: dict[str, Any]) -> None:
        """Queue the entry's XACK for the next batch and wait until Redis took it."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks.append((entry, result, done))
        self._ack_wake.set()
        await done

    async def _ack_loop(self) -> None:
        """Acknowledge finished entries in batches: whatever finished since the last round trip goes in
        the next one, so a busy worker makes one XACK per batch instead of one per entry."""
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            batch, self._acks = self._acks, []
            if not batch:
                continue
            try:
                await self._settle(self.stream.ack_many, [(entry, result) for entry, result, _ in batch])
            finally:
                for _, _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _settle(self, action: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run an acknowledging step until Redis takes it (the work is done; only the ack is missing)."""
        delay = 0.1
        deadline = time.monotonic() + 60
        while True:
            try:
                await action(*args)
                return
            except REDIS_DOWN as exc:
                if time.monotonic() > deadline:
                    log.error("could not acknowledge an intake entry (%s); it will be reprocessed", exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
