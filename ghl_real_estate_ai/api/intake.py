"""The durable intake: every event from outside (GHL and Retell webhooks, workflow enrollments, operator
commands) is appended to one Redis Stream before it is acknowledged, and a consumer-group worker applies
it to the lead's graph.

Keys (prefix ``lead-bot`` by default)::

    {p}:intake               the stream; an entry is deleted once it was processed (so XLEN = backlog)
    {p}:intake:dead          dead letters: entries that failed ``max_attempts`` times, with their error
    {p}:intake:failures      hash: entry id -> failures so far (survives a crash of the worker)
    {p}:intake:seen:{key}    dedupe marker of a webhook (webhookId, messageId, Retell call_id+event)
    {p}:intake:result:{rid}  what became of an operator request (``lead-bot pause ... `` waits for it)

Contracts:

* :meth:`IntakeStream.append` returns only after Redis stored the entry. The dedupe check and the append
  are one Lua script, so a duplicate is never appended and a first delivery is never lost between the two.
  Redis being unreachable raises :class:`IntakeUnavailableError` (the webhook routes answer 429 to it, the
  only status GHL redelivers on).
* :class:`IntakeWorker` processes entries of different leads concurrently (``concurrency`` at a time) and
  the entries of one lead strictly in stream order. An entry is XACKed (and deleted) only after its
  handler returned. A failure is retried with backoff, the lead's later entries waiting behind it; after
  ``max_attempts`` failures, or at once for a failure retrying cannot fix, the entry moves to the dead
  letters (one atomic step) and the lead's queue moves on. Redis being unreachable, or the lead's lock
  being held elsewhere (``LockTimeoutError``), is not counted as a failure: the entry simply waits.
  Entries left pending by a crashed worker are reclaimed with XAUTOCLAIM once idle for ``claim_idle``
  seconds; a live worker keeps its own entries fresh (XCLAIM JUSTID) so a slow graph run is never stolen
  by another process.
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

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "lead-bot"
GROUP = "lead-bot-workers"
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

    @classmethod
    def from_fields(cls, entry_id: Any, fields: Mapping[Any, Any] | None) -> IntakeEntry:
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
    """The stream and its companions on one ``redis.asyncio.Redis`` client (owned by the caller)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        dedupe_ttl_seconds: int = DEFAULT_DEDUPE_TTL_SECONDS,
        group: str = GROUP,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.group = group
        self.dedupe_ttl = dedupe_ttl_seconds
        self.stream_key = f"{prefix}:intake"
        self.dead_key = f"{prefix}:intake:dead"
        self.failures_key = f"{prefix}:intake:failures"
        self._commits = _GroupCommit(client, _APPEND_ONCE, _APPEND)
        self._dead_letter = client.register_script(_DEAD_LETTER)
        self._requeue = client.register_script(_REQUEUE)

    def seen_key(self, dedupe: str) -> str:
        return f"{self.prefix}:intake:seen:{dedupe}"

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
        """Store one event durably (see the module docstring). ``dedupe`` makes the append happen at most
        once per key within the dedupe TTL. Raises ``IntakeUnavailableError`` when Redis cannot take it."""
        rid = request_id or ""
        fields = _fields(contact_id, event, source=source, guard=guard, request_id=rid, dedupe=dedupe or "")
        keys = [self.stream_key, self.seen_key(dedupe)] if dedupe else [self.stream_key]
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

    async def ensure_group(self) -> None:
        """Create the consumer group at the start of the stream (entries appended before any worker ran
        are processed too)."""
        try:
            await self.redis.xgroup_create(self.stream_key, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[IntakeEntry | tuple[str, str]]:
        """New entries for ``consumer``; unreadable ones come back as ``(id, error)`` tuples."""
        try:
            response = await self.redis.xreadgroup(
                self.group, consumer, {self.stream_key: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("intake consumer group missing (Redis lost its data?); creating it again")
            await self.ensure_group()
            return []
        out: list[IntakeEntry | tuple[str, str]] = []
        streams: list[Any] = list(response or [])  # [[stream, [(id, fields), ...]]] (RESP2 shape)
        for _stream, items in streams:
            out.extend(self._parse(items))
        return out

    async def own_pending(self, consumer: str, count: int = 1000) -> list[IntakeEntry | tuple[str, str]]:
        """Entries delivered to ``consumer`` and never acknowledged: what an earlier incarnation of the
        same consumer (a restart under a stable name) left unfinished when it died."""
        out: list[IntakeEntry | tuple[str, str]] = []
        start = "0"
        for _ in range(100):  # bounded: at most 100 pages
            try:
                response = await self.redis.xreadgroup(
                    self.group, consumer, {self.stream_key: start}, count=count
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.ensure_group()
                return out
            streams: list[Any] = list(response or [])  # [[stream, [(id, fields), ...]]] (RESP2 shape)
            items: list[Any] = [item for _stream, batch in streams for item in batch]
            if not items:
                return out
            live = [(i, f) for i, f in items if f]
            deleted = [_text(i) for i, f in items if not f]
            out.extend(self._parse(live))
            if deleted:  # the entry's data is gone: nothing to process, finish acking it
                await self.redis.xack(self.stream_key, self.group, *deleted)
            start = _text(items[-1][0])
        return out

    def _parse(self, items: Iterable[Any]) -> list[IntakeEntry | tuple[str, str]]:
        out: list[IntakeEntry | tuple[str, str]] = []
        for entry_id, fields in items:
            try:
                out.append(IntakeEntry.from_fields(entry_id, fields))
            except InvalidEventError as exc:
                out.append((_text(entry_id), str(exc)))
        return out

    async def autoclaim(
        self, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[IntakeEntry | tuple[str, str]]:
        """Take over entries another (crashed) consumer left pending for at least ``min_idle_ms``."""
        claimed: list[IntakeEntry | tuple[str, str]] = []
        start = "0-0"
        for _ in range(100):  # bounded: at most 100 pages per sweep
            try:
                response = await self.redis.xautoclaim(
                    self.stream_key, self.group, consumer, min_idle_ms, start_id=start, count=count
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self.ensure_group()
                    return claimed
                raise
            cursor, items = response[0], response[1]
            deleted = [_text(i) for i in (response[2] if len(response) > 2 else [])]
            live = [(i, f) for i, f in items if f is not None]
            deleted.extend(_text(i) for i, f in items if f is None)
            claimed.extend(self._parse(live))
            if deleted:  # the entry's data is gone (XDEL after a crash mid-ack): finish acking it
                await self.redis.xack(self.stream_key, self.group, *deleted)
            start = _text(cursor)
            if start == "0-0":
                break
        return claimed

    async def touch(self, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of entries this consumer still holds, so nobody reclaims them."""
        for i in range(0, len(entry_ids), 500):
            chunk = entry_ids[i : i + 500]
            await self.redis.xclaim(self.stream_key, self.group, consumer, 0, list[Any](chunk), justid=True)

    async def ack(self, entry: IntakeEntry | str, result: Mapping[str, Any] | None = None) -> None:
        """Mark an entry done, atomically: XACK + XDEL, forget its failures, store the request's result."""
        await self.ack_many([(entry, result)])

    async def ack_many(self, done: list[tuple[IntakeEntry | str, Mapping[str, Any] | None]]) -> None:
        """:meth:`ack` for several entries in one atomic round trip."""
        if not done:
            return
        ids = [entry if isinstance(entry, str) else entry.id for entry, _ in done]
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(self.stream_key, self.group, *ids)
        pipe.xdel(self.stream_key, *ids)
        pipe.hdel(self.failures_key, *ids)
        for entry, result in done:
            if isinstance(entry, IntakeEntry) and entry.request_id and result is not None:
                pipe.set(self.result_key(entry.request_id), json.dumps(dict(result), default=str),
                         ex=RESULT_TTL_SECONDS)
        await pipe.execute()

    async def record_failure(self, entry_id: str) -> int:
        """Count one more failure of ``entry_id``; returns the failures so far."""
        return int(await self.redis.hincrby(self.failures_key, entry_id, 1))

    async def dead_letter(self, entry: IntakeEntry, error: str, attempts: int) -> None:
        """Move ``entry`` to the dead letters with its error, and fail any waiting request."""
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
        await self._dead_letter(keys=[self.stream_key, self.dead_key, self.failures_key], args=args)
        if entry.request_id:
            await self.redis.set(
                self.result_key(entry.request_id),
                json.dumps({"ok": False, "error": error, "dead_letter": True}),
                ex=RESULT_TTL_SECONDS,
            )

    async def drop_unreadable(self, entry_id: str, error: str) -> None:
        """Dead-letter an entry whose fields cannot even be parsed."""
        args = [self.group, entry_id, "original_id", entry_id, "contact_id", "", "event", "{}",
                "source", "unknown", "error", error, "attempts", "1",
                "failed_at_ms", str(int(time.time() * 1000))]
        await self._dead_letter(keys=[self.stream_key, self.dead_key, self.failures_key], args=args)

    # -- inspection --------------------------------------------------------------------------------

    async def backlog(self) -> int:
        """Entries not yet processed (appended and not yet acknowledged, including in-flight ones)."""
        return int(await self.redis.xlen(self.stream_key))

    async def pending(self) -> int:
        """Entries delivered to a consumer and not yet acknowledged."""
        try:
            info = await self.redis.xpending(self.stream_key, self.group)
        except ResponseError:
            return 0
        return int(info.get("pending", 0) if isinstance(info, dict) else 0)

    async def dead_letters(self, count: int = 1000) -> list[DeadLetter]:
        """The dead letters, oldest first."""
        items: list[Any] = list(await self.redis.xrange(self.dead_key, "-", "+", count=count) or [])
        out = []
        for entry_id, raw in items:
            data = {_text(k): _text(v) for k, v in (raw or {}).items()}
            try:
                event = json.loads(data.get("event") or "{}")
            except ValueError:
                event = {}
            out.append(DeadLetter(
                id=_text(entry_id),
                original_id=data.get("original_id", ""),
                contact_id=data.get("contact_id", ""),
                event=event if isinstance(event, dict) else {},
                source=data.get("source", ""),
                error=data.get("error", ""),
                attempts=int(data.get("attempts") or 0),
                failed_at_ms=int(data.get("failed_at_ms") or 0),
            ))
        return out

    async def dead_letter_count(self) -> int:
        return int(await self.redis.xlen(self.dead_key))

    async def retry_dead_letters(self, ids: Iterable[str] | None = None) -> list[tuple[str, str]]:
        """Requeue dead letters (all when ``ids`` is None) as fresh intake entries; returns
        ``(dead_letter_id, new_entry_id)`` pairs. Unknown ids raise ``InvalidEventError``."""
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
            args: list[Any] = [dead_id]
            for key, value in fields.items():
                args.extend((key, value))
            new_id = await self._requeue(keys=[self.stream_key, self.dead_key], args=args)
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
    """The consumer-group worker (see the module docstring for its guarantees)."""

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
        is_permanent: Callable[[BaseException], bool] = default_is_permanent,
        observer: IntakeObserver | None = None,
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
        self.max_in_flight = max_in_flight
        self.is_permanent = is_permanent
        self.observer = observer or IntakeObserver()
        self._slots = asyncio.Semaphore(concurrency)
        self._lanes: dict[str, _Lane] = {}
        self._in_flight: dict[str, IntakeEntry] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._acks: list[tuple[IntakeEntry, dict[str, Any], asyncio.Future[None]]] = []
        self._ack_wake = asyncio.Event()
        self._ack_task: asyncio.Task[None] | None = None
        self.last_read_ok: float = 0.0
        self.started = False

    @property
    def running(self) -> bool:
        return self.started and not self._stopping and all(not t.done() for t in self._tasks)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        """Create the group (if needed) and start reading, reclaiming and keeping claims fresh.

        Entries this consumer name still holds (a restart under a stable ``consumer`` after a crash) are
        taken up at once rather than after ``claim_idle``: nobody else can be working on them."""
        await self.stream.ensure_group()
        self._stopping = False
        leftover = await self.stream.own_pending(self.consumer)
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="intake-read"),
            asyncio.create_task(self._claim_loop(), name="intake-claim"),
        ]
        self._ack_task = asyncio.create_task(self._ack_loop(), name="intake-ack")
        self.started = True
        log.info("intake worker %s started", self.consumer)
        if leftover:
            log.warning("intake worker %s takes up %d entr(ies) its previous run left unfinished",
                        self.consumer, len(leftover))
            await self._submit_all(leftover)

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop reading; finish the entries already taken within ``grace_seconds``; leave the rest pending."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
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

    # -- loops -------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        delay = 0.1
        while not self._stopping:
            await self._room.wait()
            try:
                room = max(1, min(self.batch, self.max_in_flight - len(self._in_flight)))
                items = await self.stream.read(self.consumer, room, self.block_ms)
                self.last_read_ok = time.monotonic()
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("intake read failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            await self._submit_all(items)
            if 0 < len(items) < room:
                # A trickle: let entries gather for a moment so the next read takes a batch (one round trip
                # and one wakeup for many entries under load; 2 ms is nothing next to a reply's latency).
                await asyncio.sleep(0.002)

    async def _claim_loop(self) -> None:
        interval = max(0.05, self.claim_idle / 3)
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                if self._in_flight:
                    await self.stream.touch(self.consumer, list(self._in_flight))
                claimed = await self.stream.autoclaim(self.consumer, int(self.claim_idle * 1000))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("intake reclaim failed (%s: %s)", type(exc).__name__, exc)
                continue
            fresh = [c for c in claimed if (c[0] if isinstance(c, tuple) else c.id) not in self._in_flight]
            if fresh:
                log.info("intake worker %s reclaimed %d idle entr(ies)", self.consumer, len(fresh))
            await self._submit_all(fresh)

    async def _submit_all(self, items: list[IntakeEntry | tuple[str, str]]) -> None:
        for item in items:
            if isinstance(item, tuple):
                entry_id, error = item
                log.error("intake entry %s is unreadable: %s", entry_id, error)
                with contextlib.suppress(Exception):
                    await self.stream.drop_unreadable(entry_id, error)
                continue
            self._submit(item)

    def _submit(self, entry: IntakeEntry) -> None:
        if entry.id in self._in_flight:
            return
        self._in_flight[entry.id] = entry
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
                self._in_flight.pop(entry.id, None)
                if len(self._in_flight) < self.max_in_flight:
                    self._room.set()
        finally:
            # Entries still queued here stay pending in Redis; forgetting them locally lets the reclaim
            # sweep hand them out again.
            for left in lane.entries:
                self._in_flight.pop(left.id, None)
            self._lanes.pop(contact_id, None)
            self._room.set()

    def _backoff(self, attempt: int) -> float:
        return min(self.retry_cap, self.retry_base * (2 ** max(0, attempt - 1)))

    async def _process(self, entry: IntakeEntry) -> bool:
        """Run ``entry`` until it is acknowledged or dead-lettered (True), or the worker stops (False)."""
        down_delay = 0.1
        while True:
            started = time.monotonic()
            async with self._slots:
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
                attempts = await self.stream.record_failure(entry.id)
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
