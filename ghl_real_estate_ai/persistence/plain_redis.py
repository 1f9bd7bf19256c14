"""LangGraph checkpoint savers that need only plain Redis 6+ (no RedisJSON, no RediSearch).

``PlainRedisSaver`` is built on the blocking ``redis.Redis`` client, ``AsyncPlainRedisSaver`` on
``redis.asyncio.Redis``. Both implement the whole ``BaseCheckpointSaver`` API, sync and async:

* ``PlainRedisSaver``'s ``a*`` methods run the sync ones in the loop's default thread executor.
* ``AsyncPlainRedisSaver``'s sync methods (``graph.get_state`` from sync code, a notebook cell) use a
  second, blocking client to the same server: given as ``sync_client``, made by ``from_conn_string``,
  or derived from the async client's connection settings. They work from any thread, including the
  event loop's own (where they block the loop for one round trip, like any blocking call).

Storage (key layout and byte formats in ``_codec.py``, scripts in ``_scripts.py``):

* A checkpoint is one record (without channel values) in a per-namespace hash and one member of a
  lexicographically sorted index, so "latest" and ``before`` are O(log n).
* Channel values are stored per (channel, version), written only for ``new_versions`` and with SET NX
  semantics; ``get_next_version`` adds a random suffix (as InMemorySaver and PostgresSaver do), so a
  fork (``update_state`` on an old checkpoint) can never overwrite a value the main line reads. Small
  primitives (None, bool, int64, float, short strings) are inlined in the record, as PostgresSaver
  inlines primitives in its JSONB column, and so are small dicts and lists of them (an event, the
  sequence and engagement sections, a contact), which would cost as much again in Redis' per-field
  overhead as a blob at every version.
* A checkpoint's record is stored whole only until the next run's put: that put rewrites it into a
  splice of the new record (the bytes in which the two differ, about 150 instead of 1,000), in the same
  Lua call (see ``_codec.py``).
* Values are the serde type tag and the raw serde bytes, no base64 or JSON wrapping.
* Every ``put``/``put_writes`` is one Lua call (one round trip): it also refreshes the expiry of every
  key the thread uses (``ttl_seconds``) and prunes checkpoints older than the last ``keep_events``
  events (or beyond ``keep_last`` checkpoints) together with their writes and the blobs only they
  read. All keys of a thread are refreshed together, so a write that creates no key skips the refresh
  when the thread's keys were refreshed in the last second (ttl/100 for a ttl under 100 s): the eight
  writes of a graph turn refresh once, and every write still leaves every key at least
  ``ttl_seconds`` minus that slack to live. ``get_tuple`` is one round trip returning
  checkpoint, blobs and pending writes: a Lua call that parses the record to find its blobs, or, for
  the latest checkpoint when it is the one this saver instance last wrote there (the next graph turn's
  read), plain commands in one MULTI/EXEC, since the saver kept the record's blob fields and decoded
  form at the put. If another writer wrote since, that read sees it and the Lua call follows (a second
  round trip).
* A blob a later put repeats or extends (an append-only list, an unchanged section) is rewritten into a
  reference into the later one, a dict that changed in a few keys into a patch back from it, and blobs
  of 256 bytes or more are zlib-compressed (a list that grew by a few items reuses the previous
  version's compressed blob as its prefix: ``_codec.chunked``), so a lead's size does not grow with the
  number of versions of its timeline.
* ``list(None)`` walks a registry ZSET ``<prefix>:threads`` (thread id -> time of last touch). A saver
  touches a thread there at most once per ``ttl_seconds / 10`` (per process), in the same round trip as
  a put; entries older than ``1.25 * ttl_seconds`` are trimmed then, and the registry key itself
  expires when no thread is written for that long, so an idle deployment leaves no keys at all. With
  ``ttl_seconds=None`` entries leave only through ``delete_thread``/``prune``, or when ``list(None)``
  finds the thread gone.

Keys of one thread share a ``{hash tag}`` derived from the thread id, so all per-thread scripts work on
Redis Cluster; the registry is a separate key, written in a separate command of the same pipeline.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import collections
import contextlib
import functools
import logging
import operator
import os
import time
import weakref
from collections.abc import (
    AsyncIterator,
    Callable,
    Container,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, NamedTuple, TypeVar, cast

import redis
import redis.asyncio as aredis
import redis.cluster
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    SerializerProtocol,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from redis.exceptions import NoScriptError

from ghl_real_estate_ai.persistence._codec import (
    CHUNK_TAIL_MAX,
    KIND_BLOB,
    READ_FORMATS,
    RECORD_FORMAT,
    REF_WHOLE,
    CodecError,
    Keys,
    NameDict,
    Skeleton,
    build_record,
    chunked,
    decode_checkpoint,
    decode_metadata,
    dict_patch,
    extension_ref,
    is_ref,
    iter_writes,
    new_version,
    pack_writes,
    parse_header,
    patch_ref,
    prepare_checkpoint,
    record_segments,
    record_splice,
    same,
    typed_from_bytes,
    typed_to_bytes,
)
from ghl_real_estate_ai.persistence._lean import LeanConnections, lean_settings, pack_command
from ghl_real_estate_ai.persistence._scripts import SCRIPTS, Script
from ghl_real_estate_ai.persistence.redis_client import aconnect, connect

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_KEEP_EVENTS",
    "DEFAULT_KEEP_LAST",
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_TTL_SECONDS",
    "AsyncPlainRedisSaver",
    "PlainRedisSaver",
]

DEFAULT_TTL_SECONDS: float = 90 * 86400
"""Every key of a thread expires this long after the thread's last write (90 days)."""

DEFAULT_KEEP_LAST: int | None = None
"""Checkpoints kept per thread and namespace, counted one by one (``None``: no such limit). The default
bounds history by events instead (``DEFAULT_KEEP_EVENTS``); ``keep_last=200, keep_events=None`` is the
layout of earlier releases."""

DEFAULT_KEEP_EVENTS: int | None = 10
"""Events kept per thread and namespace: every checkpoint of the last 10 graph runs (an inbound turn,
a scheduled step, an operator action), ``update_state`` calls and forks, and nothing older.
``get_state_history`` and forks work over the lead's last 10 events however many checkpoints each run
wrote (one with ``durability="exit"``, four to eight with ``"sync"``), and a lead nurtured for a decade
keeps as many checkpoints as one a month old."""

DEFAULT_KEY_PREFIX = "lead-bot:cp"

_PAGE = 50
_REGISTRY_PAGE = 500
_TOUCH_CACHE_MAX = 100_000
_NAMES_CACHE_MAX = 50_000
_WRITTEN_CACHE_MAX = 4096  # threads whose last-written record is kept (a few KB each)
_LISTS_CACHE_ITEMS = 50_000  # list items kept to spot a put that extends the previous version's list
_KINDS_MAX = 128  # (channel, version) kinds (and inline values' bytes) remembered per thread and namespace
_PATCH_MIN = 160  # a dict blob shorter than this is stored whole: its patch would save too little
_PUT_ATTEMPTS = 5
_DELTA_METADATA_KEYS = ("counters_since_delta_snapshot", "delta_writes_versioned")
PRUNE_STRATEGIES = ("keep_latest", "delete")

T = TypeVar("T")


# ------------------------------------------------------------------------------------- commands
# Operations are written once, as generators that yield commands and receive their replies; a sync and
# an async driver run them (the "sans-I/O" style of PostgresSaver's prune statements).


class _Eval(NamedTuple):
    script: Script
    keys: list[bytes]
    args: list[Any]


class _Cmd(NamedTuple):
    args: tuple[Any, ...]


class _Tx(NamedTuple):
    """Plain commands run as one MULTI/EXEC transaction; the reply is EXEC's list of replies."""

    commands: list[tuple[Any, ...]]


class _Batch(NamedTuple):
    ops: list[_Eval | _Cmd]
    transaction: bool


_Op = _Eval | _Cmd | _Tx | _Batch
_Gen = Generator[_Op, Any, T]


def _run_sync(client: redis.Redis, gen: _Gen[T]) -> T:
    try:
        op = next(gen)
        while True:
            op = gen.send(_exec_sync(client, op))
    except StopIteration as stop:
        return cast(T, stop.value)


async def _run_async(client: aredis.Redis, gen: _Gen[T]) -> T:
    try:
        op = next(gen)
        while True:
            op = gen.send(await _exec_async(client, op))
    except StopIteration as stop:
        return cast(T, stop.value)


# Script calls are the hot path (8 per graph turn). On a plain (non-cluster) client they are packed
# here and sent straight over a connection (sync: one of _ScriptConnections; async: a pipelined
# _lean.LeanConnections connection, or one from the pool where that cannot reproduce the client's
# settings): redis-py's generic command path (argument encoder, retry wrapper, observability hooks,
# pool checkout probe) costs as much CPU as the round trip itself. A call that fails on the connection
# is retried once on a new one, as redis-py's default retry would; every script is safe to run twice.
# Cluster and single-connection clients use the normal client path.
_RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _lean_ok(client: Any) -> bool:
    return type(client) in (redis.Redis, aredis.Redis) and getattr(client, "connection", None) is None


class _ScriptConnections:
    """Connections kept aside for the script calls of one blocking client.

    Checking a connection out of redis-py's pool costs a lock, metrics and a ``select()`` readiness
    probe per command; these connections skip that. An idle one has always had its reply read in full
    (a connection that failed half way is dropped), so it needs no probe. After a fork the inherited
    ones are left alone and new ones are made.
    """

    _MAX_IDLE = 16

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool = pool
        self.idle: collections.deque[Any] = collections.deque()
        self.pid = os.getpid()

    def call(self, packed: bytes, replies: int = 1) -> Any:
        """Send ``packed`` (``replies`` commands) and return the last reply; an error reply to any of
        them is raised once all are read."""
        if self.pid != os.getpid():
            self.idle, self.pid = collections.deque(), os.getpid()
        for attempt in range(2):
            try:
                conn = self.idle.pop()
            except IndexError:
                conn = self.pool.connection_class(**self.pool.connection_kwargs)
            try:
                conn.send_packed_command([packed])
                error: redis.ResponseError | None = None
                for _ in range(replies - 1):
                    try:
                        conn.read_response()
                    except redis.ResponseError as exc:
                        error = error or exc
                reply = conn.read_response()
                if error is not None:
                    raise error
            except _RETRYABLE:
                # the server went away (restart, failover): every idle connection is as dead as this one
                conn.disconnect()
                self.close()
                if attempt:
                    raise
                continue
            except redis.ResponseError:
                self._give(conn)  # an error reply was read in full: the connection is fine
                raise
            except BaseException:
                conn.disconnect()
                raise
            self._give(conn)
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _give(self, conn: Any) -> None:
        if len(self.idle) < self._MAX_IDLE:
            self.idle.append(conn)
        else:
            conn.disconnect()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().disconnect()


_SCRIPT_CONNECTIONS: weakref.WeakKeyDictionary[Any, _ScriptConnections] = weakref.WeakKeyDictionary()


def _script_connections(client: redis.Redis) -> _ScriptConnections | None:
    if not _lean_ok(client) or getattr(client.connection_pool, "cache", None) is not None:
        return None
    conns = _SCRIPT_CONNECTIONS.get(client)
    if conns is None:
        conns = _SCRIPT_CONNECTIONS[client] = _ScriptConnections(client.connection_pool)
    return conns


def _close_script_connections(client: Any) -> None:
    conns = _SCRIPT_CONNECTIONS.pop(client, None)
    if conns is not None:
        conns.close()


def _call_sync(client: redis.Redis, *args: Any) -> Any:
    conns = _script_connections(client)
    if conns is None:
        return client.execute_command(*args)
    return conns.call(pack_command(args))


def _multi_exec_packed(commands: Sequence[tuple[Any, ...]]) -> bytes:
    return b"".join(map(pack_command, (("MULTI",), *commands, ("EXEC",))))


def _tx_sync(client: redis.Redis, commands: list[tuple[Any, ...]]) -> Any:
    """EXEC's replies, or ``None`` for a client that is no ``redis.Redis`` (a cluster client): the
    caller then takes the script way."""
    conns = _script_connections(client)
    if conns is not None:
        return conns.call(_multi_exec_packed(commands), len(commands) + 2)
    if not isinstance(client, redis.Redis):
        return None
    pipe = client.pipeline(transaction=True)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute()


_LEAN_CONNECTIONS: weakref.WeakKeyDictionary[Any, LeanConnections | None] = weakref.WeakKeyDictionary()


def _lean_connections(client: aredis.Redis) -> LeanConnections | None:
    try:
        return _LEAN_CONNECTIONS[client]
    except KeyError:
        settings = lean_settings(client)
        conns = _LEAN_CONNECTIONS[client] = LeanConnections(settings) if settings is not None else None
        return conns


def _close_lean_connections(client: Any) -> None:
    conns = _LEAN_CONNECTIONS.pop(client, None)
    if conns is not None:
        conns.close()


async def _lean_call(lean: LeanConnections, packed: bytes, replies: int = 1) -> Any:
    for attempt in range(2):
        try:
            return await lean.call(packed, replies)
        except _RETRYABLE:
            if attempt:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _call_async(client: aredis.Redis, *args: Any) -> Any:
    lean = _lean_connections(client)
    if lean is not None:
        return await _lean_call(lean, pack_command(args))
    if not _lean_ok(client):
        return await client.execute_command(*args)
    pool = client.connection_pool
    packed = pack_command(args)
    for attempt in range(2):
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command([packed])
            return await conn.read_response()
        except _RETRYABLE:
            await conn.disconnect()
            if attempt:
                raise
        finally:
            await pool.release(conn)
    raise AssertionError("unreachable")  # pragma: no cover


def _exec_sync(client: redis.Redis, op: _Op) -> Any:
    if isinstance(op, _Tx):
        return _tx_sync(client, op.commands)
    if isinstance(op, _Eval):
        try:
            return _call_sync(client, "EVALSHA", op.script.sha, len(op.keys), *op.keys, *op.args)
        except NoScriptError:  # server restarted or SCRIPT FLUSH: load and run again
            client.script_load(op.script.source)
            return _call_sync(client, "EVALSHA", op.script.sha, len(op.keys), *op.keys, *op.args)
    if isinstance(op, _Cmd):
        return client.execute_command(*op.args)
    for attempt in range(2):
        pipe = client.pipeline(transaction=op.transaction)
        for sub in op.ops:
            if isinstance(sub, _Eval):
                pipe.evalsha(sub.script.sha, len(sub.keys), *sub.keys, *sub.args)
            else:
                pipe.execute_command(*sub.args)
        try:
            return pipe.execute()
        except NoScriptError:
            # Batches with scripts are never transactions, and everything else in them is
            # idempotent, so running the whole batch again is safe.
            if attempt or op.transaction:
                raise
            for sub in op.ops:
                if isinstance(sub, _Eval):
                    client.script_load(sub.script.source)
    raise AssertionError("unreachable")  # pragma: no cover


async def _tx_async(client: aredis.Redis, commands: list[tuple[Any, ...]]) -> Any:
    """As ``_tx_sync``."""
    lean = _lean_connections(client)
    if lean is not None:
        return await _lean_call(lean, _multi_exec_packed(commands), len(commands) + 2)
    if not isinstance(client, aredis.Redis):
        return None
    pipe = client.pipeline(transaction=True)
    for command in commands:
        pipe.execute_command(*command)
    return await pipe.execute()


async def _batch_lean(client: aredis.Redis, lean: LeanConnections, op: _Batch) -> list[Any]:
    """A non-transactional batch as one pipelined write on the lean connection: every reply, in order
    (an error reply raised, as a redis-py pipeline does). Scripts the server lost are loaded and the batch
    sent again once (everything in such batches is safe to run twice)."""
    def packed() -> bytes:
        return b"".join(
            pack_command(("EVALSHA", sub.script.sha, len(sub.keys), *sub.keys, *sub.args))
            if isinstance(sub, _Eval) else pack_command(sub.args)
            for sub in op.ops
        )

    for attempt in range(2):
        for retry in range(2):
            try:
                replies = await lean.call_all(packed(), len(op.ops))
                break
            except _RETRYABLE:
                if retry:
                    raise
        if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
            for sub in op.ops:
                if isinstance(sub, _Eval):
                    await client.script_load(sub.script.source)
            continue
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies
    raise AssertionError("unreachable")  # pragma: no cover


async def _exec_async(client: aredis.Redis, op: _Op) -> Any:
    if isinstance(op, _Tx):
        return await _tx_async(client, op.commands)
    if isinstance(op, _Eval):
        try:
            return await _call_async(client, "EVALSHA", op.script.sha, len(op.keys), *op.keys, *op.args)
        except NoScriptError:
            await client.script_load(op.script.source)
            return await _call_async(client, "EVALSHA", op.script.sha, len(op.keys), *op.keys, *op.args)
    if isinstance(op, _Cmd):
        return await client.execute_command(*op.args)
    lean = _lean_connections(client) if not op.transaction else None
    if lean is not None:
        return await _batch_lean(client, lean, op)
    for attempt in range(2):
        pipe = client.pipeline(transaction=op.transaction)
        for sub in op.ops:
            if isinstance(sub, _Eval):
                pipe.evalsha(sub.script.sha, len(sub.keys), *sub.keys, *sub.args)
            else:
                pipe.execute_command(*sub.args)
        try:
            return await pipe.execute()
        except NoScriptError:
            if attempt or op.transaction:
                raise
            for sub in op.ops:
                if isinstance(sub, _Eval):
                    await client.script_load(sub.script.source)
    raise AssertionError("unreachable")  # pragma: no cover


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _check_binary_client(client: Any) -> None:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {}) or {}
    # a cluster client has no pool of its own; its encoder carries the setting
    if kwargs.get("decode_responses") or getattr(getattr(client, "encoder", None), "decode_responses", False):
        raise ValueError(
            "the plain Redis checkpointer stores binary values: create the Redis client with "
            "decode_responses=False (the default)"
        )


class _Written(NamedTuple):
    cid: bytes
    record: bytes
    epoch: bytes
    skeleton: Skeleton
    step: int | None  # its metadata step


class _Page(NamedTuple):
    tuples: list[CheckpointTuple]
    last_id: str | None
    exhausted: bool


# ----------------------------------------------------------------------------------------- core


class _PlainRedisBase(BaseCheckpointSaver[str]):
    """Storage logic shared by both savers; no I/O happens here, only command generators."""

    def __init__(
        self,
        *,
        ttl_seconds: float | None = DEFAULT_TTL_SECONDS,
        keep_last: int | None = DEFAULT_KEEP_LAST,
        keep_events: int | None = DEFAULT_KEEP_EVENTS,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        serde: SerializerProtocol | None = None,
        compress: bool = True,
        extension_refs: bool = True,
        record_format: int = RECORD_FORMAT,
    ) -> None:
        super().__init__(serde=serde)
        self.compress = compress
        self.extension_refs = extension_refs
        if record_format not in READ_FORMATS:
            raise ValueError(f"record_format must be one of {sorted(READ_FORMATS)}, not {record_format!r}")
        self.record_format = record_format
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive or None, not {ttl_seconds!r}")
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last must be a positive int or None, not {keep_last!r}")
        if keep_events is not None and (not isinstance(keep_events, int) or keep_events < 1):
            raise ValueError(f"keep_events must be a positive int or None, not {keep_events!r}")
        self.keep_events = keep_events
        if not key_prefix or "{" in key_prefix or "}" in key_prefix:
            raise ValueError(f"key_prefix must be non-empty and contain no braces, not {key_prefix!r}")
        self.ttl_seconds = ttl_seconds
        self.keep_last = keep_last
        self.key_prefix = key_prefix
        self._ttl_ms = round(ttl_seconds * 1000) if ttl_seconds is not None else 0
        self._registry = f"{key_prefix}:threads".encode()
        # Registry touches are spread out: a thread is re-touched once per ttl/10 (or daily).
        self._touch_every = ttl_seconds / 10 if ttl_seconds is not None else 86400.0
        self._touched: dict[str, float] = {}
        self._trimmed = float("-inf")  # monotonic time of the last registry trim
        # Name dictionaries per (thread base key, namespace), as last seen on the server.
        self._names: dict[tuple[bytes, str], NameDict] = {}
        # The checkpoint this saver last wrote per (thread base key, namespace): its id, record, the
        # name epoch the record was built against and its skeleton. Reading it back (the next turn's
        # get_tuple) needs no script (see _op_latest_written) and decodes only values and metadata.
        self._written: dict[tuple[bytes, str], _Written] = {}
        # The newest list or dict value this saver wrote or read per (thread base key, namespace,
        # channel), with its blob field: a put whose value repeats it (or, a list, starts with it)
        # stores the old blob as an extension reference (see _codec.py). Bounded by the items held.
        self._lists: collections.OrderedDict[tuple[bytes, str, str], tuple[bytes, Any]] = (
            collections.OrderedDict()
        )
        self._lists_items = 0
        # Per (thread base key, namespace, channel), for a list this saver last wrote as a blob: that
        # blob's field, the whole blob its items start with and how many items that holds (see
        # _codec.chunked). The next version of a list that grew is that prefix plus its new items.
        self._chunks: dict[tuple[bytes, str, str], tuple[bytes, bytes, int]] = {}
        # The latest record this saver read per (thread base key, namespace) when another writer wrote
        # it, with its id and segments: the next put there, its child, stores it as a splice of the
        # child's record (see _codec.py), as it does the record in _written when it wrote the parent.
        self._records: dict[tuple[bytes, str], tuple[bytes, bytes, list[tuple[int, int, int]] | None]] = {}
        # Per (thread base key, namespace): whether a (channel, version key) is stored inline (format 3:
        # the value's bytes, so an unchanged value is not serialized again).
        self._inline_kinds: dict[tuple[bytes, str], dict[tuple[str, bytes], bool | bytes]] = {}

    # ------------------------------------------------------------------------------- versions

    def get_next_version(self, current: str | None, channel: None) -> str:
        """InMemorySaver's form ``f"{n:032}.{random}"``: unique per fork, so blobs never collide."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return new_version(current_v + 1)

    # ------------------------------------------------------------------------------- registry

    def _touch_ops(self, thread_id: str, *, force: bool = False) -> list[_Eval | _Cmd]:
        now = time.time()
        mono = time.monotonic()
        last = self._touched.get(thread_id)
        if not force and last is not None and mono - last < self._touch_every:
            return []
        if len(self._touched) >= _TOUCH_CACHE_MAX:
            self._touched.clear()
        self._touched[thread_id] = mono
        ops: list[_Eval | _Cmd] = [_Cmd(("ZADD", self._registry, now, thread_id))]
        if self.ttl_seconds is not None:
            # A thread's keys expire ttl after its last write, and its entry was touched at most
            # ttl/10 before that write: past 1.25 * ttl an entry can only name an expired thread. The
            # trim is for the whole registry: once per ttl/10 (at most a minute) per saver is plenty; a
            # burst of new threads would otherwise trim a large ZSET once per thread.
            horizon = self.ttl_seconds * 1.25
            if force or mono - self._trimmed >= min(60.0, self._touch_every):
                self._trimmed = mono
                ops.append(_Cmd(("ZREMRANGEBYSCORE", self._registry, "-inf", f"({now - horizon}")))
            ops.append(_Cmd(("PEXPIRE", self._registry, round(horizon * 1000))))
        return ops

    def _write_gen(self, thread_id: str, ev: _Eval) -> _Gen[Any]:
        """Run a thread-writing script, registering the thread in the same round trip when due."""
        touch = self._touch_ops(thread_id)
        if touch:
            reply = (yield _Batch([ev, *touch], transaction=False))[0]
        else:
            reply = yield ev
            if reply == 0:  # new (or deleted meanwhile by another process): register it now
                yield _Batch(self._touch_ops(thread_id, force=True), transaction=False)
        return reply

    def _names_put(self, key: tuple[bytes, str], raw: bytes | None) -> NameDict | None:
        """Replace the cached dictionary with what the server sent (``b""``/``None``: it has none)."""
        if not raw:
            self._names.pop(key, None)
            return None
        names = NameDict.parse(raw)
        if len(self._names) >= _NAMES_CACHE_MAX:
            self._names.clear()
        self._names[key] = names
        return names

    # ------------------------------------------------------------------------------ operations

    @staticmethod
    def _target(config: RunnableConfig) -> tuple[str, str]:
        conf = config["configurable"]
        return str(conf["thread_id"]), str(conf.get("checkpoint_ns") or "")

    def _op_put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> _Gen[RunnableConfig]:
        thread_id, ns = self._target(config)
        parent = config["configurable"].get("checkpoint_id")
        md = get_serializable_checkpoint_metadata(config, metadata)
        keys = Keys(self.key_prefix, thread_id)
        chunks = self._chunked_lists(keys.base, ns, checkpoint, new_versions)
        prep = prepare_checkpoint(
            self.serde, checkpoint, md, parent, new_versions,
            compress=self.compress, record_format=self.record_format,
            premade={channel: blob for channel, (blob, _, _) in chunks.items()},
        )
        cache_key = (keys.base, ns)
        uses_delta = any(k in md for k in _DELTA_METADATA_KEYS)
        step = md.get("step")
        if type(step) is not int:
            step = None
        # a "loop" checkpoint of the step after the one this saver put last, its parent: no new event
        # (the script checks that nobody wrote since)
        last = self._written.get(cache_key)
        continues = (
            step is not None
            and md.get("source") == "loop"
            and last is not None
            and last.step is not None
            and step == last.step + 1
            and parent is not None
            and last.cid == parent.encode()
        )
        event_args = [self.keep_events or 0, "1" if continues else "0"]
        # The parent's record becomes a splice of this one, unless this put continues a run (the second
        # and later checkpoints of a durability="sync" run, written back to back: splicing each would
        # cost about as much CPU as the rest of the put; the run's last checkpoint is spliced by the next
        # run's first put, and with durability="exit", the service's, every put starts a run).
        seen = None
        if self.record_format >= 3 and not continues and parent is not None and checkpoint["id"] > parent:
            if last is not None and last.cid == parent.encode():
                seen = (last.cid, last.record, last.skeleton.segments)
            else:
                seen = self._records.get(cache_key)
                if seen is not None and seen[0] != parent.encode():
                    seen = None
        for _ in range(_PUT_ATTEMPTS):
            names = self._names.get(cache_key) or NameDict(os.urandom(8), ())
            record, added, blobs, skeleton = build_record(self.serde, prep, names, self._kinds_of(cache_key))
            splice = None
            if seen is not None:
                splice = record_splice(seen[1], record, checkpoint["id"], seen[2], skeleton.segments)
            fields = _blob_channel_fields(skeleton)
            refs = self._extension_refs(keys.base, ns, prep.blobs, checkpoint, fields, chunks)
            args: list[Any] = [
                keys.base,
                ns,
                checkpoint["id"],
                parent or "",
                record,
                self._ttl_ms,
                self.keep_last or 0,
                "1" if uses_delta else "0",
                names.epoch,
                len(names.names),
                len(added),
                NameDict.pack(added),
                len(blobs),
            ]
            for field, blob in blobs:
                args.append(field)
                args.append(blob)
            args.append(len(refs))
            for old_field, ref in refs:
                args.append(old_field)
                args.append(ref)
            args.extend(event_args)
            if splice is not None:
                args.extend((parent, splice))
            else:
                args.extend(("", ""))
            reply = yield from self._write_gen(
                thread_id, _Eval(SCRIPTS["put"], [keys.nset, *keys.ns_keys(ns)], args)
            )
            if reply == b"M":  # written before events were kept: index them, then put again
                yield from self._op_index_events(keys, ns)
                continue
            if isinstance(reply, bytes):  # our name dictionary was stale: take the server's, rebuild
                self._names_put(cache_key, reply)
                continue
            self._names[cache_key] = names.extended(added)
            if len(self._written) >= _WRITTEN_CACHE_MAX:  # bounded as the other caches are
                self._written.clear()
            self._written[cache_key] = _Written(
                checkpoint["id"].encode(), record, names.epoch, skeleton, step
            )
            self._remember_lists(keys.base, ns, checkpoint.get("channel_values") or {}, fields, prep.blobs)
            self._remember_chunks(keys.base, ns, checkpoint, fields, prep.blobs, chunks)
            return {
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": checkpoint["id"],
                }
            }
        raise RuntimeError(
            f"put: the name dictionary of thread {thread_id!r} namespace {ns!r} changed on every attempt; "
            "is another writer rewriting it?"
        )

    def _remember_record(self, cache_key: tuple[bytes, str], cid: bytes, record: bytes) -> None:
        """Keep a latest record another writer wrote, for the next put's splice."""
        segments = None
        with contextlib.suppress(CodecError, IndexError):
            segments = record_segments(record)
        if len(self._records) >= _WRITTEN_CACHE_MAX and cache_key not in self._records:
            self._records.clear()
        self._records[cache_key] = (cid, record, segments)

    def _kinds_of(self, cache_key: tuple[bytes, str]) -> dict[tuple[str, bytes], bool | bytes]:
        kinds = self._inline_kinds.get(cache_key)
        if kinds is None or len(kinds) > _KINDS_MAX:
            if len(self._inline_kinds) >= _WRITTEN_CACHE_MAX:
                self._inline_kinds.clear()
            kinds = self._inline_kinds[cache_key] = {}
        return kinds

    def _extension_refs(
        self,
        base: bytes,
        ns: str,
        new_blobs: Mapping[str, bytes],
        checkpoint: Checkpoint,
        fields: Mapping[str, bytes],
        grown: Container[str] = (),
    ) -> list[tuple[bytes, bytes]]:
        """``(old field, reference)`` for every new blob whose value equals, or (a list) extends, the
        value this saver last wrote or read for the channel: the old blob becomes a reference into the
        new one (see ``_codec.py``). ``grown``: channels already known to extend it (chunked lists)."""
        values = checkpoint.get("channel_values") or {}
        refs: list[tuple[bytes, bytes]] = []
        if not self.extension_refs:
            return refs
        for channel in new_blobs:
            known = self._lists.get((base, ns, channel))
            field = fields.get(channel)
            if known is None or field is None or known[0] == field:
                continue
            value = values.get(channel)
            old_field, old = known
            if type(value) is list and type(old) is list:
                if channel in grown or _grew(value, old):
                    refs.append((old_field, extension_ref(len(old), field)))
            elif value == old and same(value, old):
                refs.append((old_field, extension_ref(REF_WHOLE, field)))
            elif type(value) is dict and type(old) is dict and len(new_blobs[channel]) >= _PATCH_MIN:
                patch = typed_to_bytes(self.serde.dumps_typed(dict_patch(old, value)))
                # worth it only when clearly smaller than a full value
                if 4 * len(patch) < 3 * len(new_blobs[channel]):
                    refs.append((old_field, patch_ref(field, patch)))
        return refs

    def _chunked_lists(
        self, base: bytes, ns: str, checkpoint: Checkpoint, new_versions: ChannelVersions
    ) -> dict[str, tuple[bytes, bytes, int]]:
        """``channel -> (blob, prefix, prefix items)`` for the new versions of lists (not inlined) that
        extend the version this saver last wrote, stored as that version's prefix plus the new
        items (see ``_codec.chunked``) while those stay under ``CHUNK_TAIL_MAX`` bytes."""
        out: dict[str, tuple[bytes, bytes, int]] = {}
        if self.record_format < 3 or not self._chunks:
            return out
        values = checkpoint.get("channel_values") or {}
        for channel in new_versions:
            value = values.get(channel)
            if type(value) is not list:
                continue
            key = (base, ns, channel)
            chunk, known = self._chunks.get(key), self._lists.get(key)
            # (a list that extends one stored as a blob is no more inlinable than that one was)
            if chunk is None or known is None or chunk[0] != known[0] or not _grew(value, known[1]):
                continue
            _, prefix, count = chunk
            tail = typed_to_bytes(self.serde.dumps_typed(value[count:]))
            if len(tail) <= CHUNK_TAIL_MAX:
                out[channel] = (chunked(prefix, tail), prefix, count)
        return out

    def _remember_chunks(
        self,
        base: bytes,
        ns: str,
        checkpoint: Checkpoint,
        fields: Mapping[str, bytes],
        blobs: Mapping[str, bytes],
        chunks: Mapping[str, tuple[bytes, bytes, int]],
    ) -> None:
        """After a put: the prefix the next version of each list blob it wrote can start with."""
        if self.record_format < 3:
            return
        values = checkpoint.get("channel_values") or {}
        for channel, blob in blobs.items():
            value = values.get(channel)
            field = fields.get(channel)
            if type(value) is not list or field is None:
                continue
            if len(self._chunks) >= _WRITTEN_CACHE_MAX * 4:
                self._chunks.clear()
            made = chunks.get(channel)
            # a chunked blob keeps its prefix; a whole one is the prefix of the next version
            self._chunks[(base, ns, channel)] = (
                (field, made[1], made[2]) if made else (field, blob, len(value))
            )

    def _remember_lists(
        self, base: bytes, ns: str, values: Mapping[str, Any], fields: Mapping[str, bytes], only: Any = None
    ) -> None:
        for channel, field in fields.items():
            if only is not None and channel not in only:
                continue
            value = values.get(channel)
            if type(value) is list:
                value = list(value)
            elif type(value) is dict:
                value = dict(value)
            else:  # only plain containers are compared (equality of anything else may not be exact)
                continue
            key = (base, ns, channel)
            old = self._lists.pop(key, None)
            if old is not None:
                self._lists_items -= 1 + len(old[1])
            self._lists[key] = (field, value)
            self._lists_items += 1 + len(value)
        while self._lists_items > _LISTS_CACHE_ITEMS and self._lists:
            _, (_, dropped) = self._lists.popitem(last=False)
            self._lists_items -= 1 + len(dropped)

    def _op_index_events(self, keys: Keys, ns: str) -> _Gen[None]:
        """Index the events of a namespace written before events were kept (the first put with
        ``keep_events`` on such a thread), pruning what is older than the kept events."""
        flat = yield _Eval(SCRIPTS["find"], [keys.nset], [keys.base, ""])
        starts: list[str] = []
        prev_cid: str | None = None
        prev_step: Any = None
        for i in range(0, len(flat), 3):
            if _text(flat[i]) != ns:
                continue
            cid, record = _text(flat[i + 1]), flat[i + 2]
            md = decode_metadata(self.serde, record)
            parent = parse_header(record).parent_id
            step = md.get("step")
            step = step if type(step) is int else None
            if (
                prev_cid is None
                or md.get("source") != "loop"
                or parent != prev_cid
                or step is None
                or prev_step is None
                or step != prev_step + 1
            ):
                starts.append(cid)
            prev_cid, prev_step = cid, step
        yield _Eval(
            SCRIPTS["index_events"],
            [keys.nset, *keys.ns_keys(ns)],
            [keys.base, ns, self.keep_events or 0, *sorted(c[:20] for c in starts)],
        )

    def _op_put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str
    ) -> _Gen[None]:
        if not writes:
            return
        thread_id, ns = self._target(config)
        checkpoint_id = config["configurable"]["checkpoint_id"]
        dumps = self.serde.dumps_typed
        # One entry per idx: a repeated special channel (negative idx) keeps its last value, as the
        # overwrite rule does across calls.
        entries = {
            (i := WRITES_IDX_MAP.get(channel, idx)): (i, channel, typed_to_bytes(dumps(value)))
            for idx, (channel, value) in enumerate(writes)
        }
        pack = pack_writes(task_id, task_path, list(entries.values()))
        keys = Keys(self.key_prefix, thread_id)
        args = [keys.base, ns, checkpoint_id, self._ttl_ms, self.keep_last or self.keep_events or 0, pack]
        yield from self._write_gen(
            thread_id, _Eval(SCRIPTS["put_writes"], [keys.nset, *keys.ns_keys(ns)], args)
        )

    def _load_args(self, keys: Keys, ns: str) -> list[Any]:
        names = self._names.get((keys.base, ns))
        return [names.epoch, len(names.names)] if names else ["", 0]

    def _rows_to_tuples(
        self, keys: Keys, thread_id: str, ns: str, reply: Sequence[Any]
    ) -> list[CheckpointTuple]:
        cache_key = (keys.base, ns)
        if reply[0] is not None:
            self._names_put(cache_key, reply[0])
        names = self._names.get(cache_key) or NameDict(b"", ())
        written = self._written.get(cache_key)
        return [self._row_to_tuple(thread_id, ns, row, names, written) for row in reply[1:]]

    def _row_to_tuple(
        self,
        thread_id: str,
        ns: str,
        row: Sequence[Any],
        names: NameDict,
        written: _Written | None,
    ) -> CheckpointTuple:
        cid_b, record, values = row
        cid = _text(cid_b)
        wpack = values[0]
        skeleton = None
        # the same bytes against the same dictionary (same epoch: ids name the same names) decode
        # to what the record was built from
        if written is not None and written.record == record and written.epoch == names.epoch:
            skeleton = written.skeleton
        checkpoint, metadata, parent = decode_checkpoint(self.serde, cid, record, values[1:], names, skeleton)
        pending: list[tuple[str, str, Any]] = []
        if wpack:
            # writes_sort_key order: (task_path, task_id, idx)
            entries = sorted(iter_writes(wpack), key=lambda e: (e[1], e[0], e[2]))
            loads = self.serde.loads_typed
            pending = [
                (task_id, channel, loads(typed_from_bytes(value)))
                for task_id, _, _, channel, value in entries
            ]
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}},
            checkpoint=cast(Checkpoint, checkpoint),
            metadata=cast(CheckpointMetadata, metadata),
            parent_config=(
                {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent}}
                if parent
                else None
            ),
            pending_writes=pending,
        )

    def _op_get_tuple(self, config: RunnableConfig) -> _Gen[CheckpointTuple | None]:
        thread_id, ns = self._target(config)
        cid = get_checkpoint_id(config)
        keys = Keys(self.key_prefix, thread_id)
        reply = None if cid else (yield from self._op_latest_written(keys, ns))
        if reply is None:
            args = ["id", cid, 0] if cid else ["page", "", 1]
            reply = yield _Eval(SCRIPTS["load"], keys.ns_keys(ns), [*args, *self._load_args(keys, ns)])
        tuples = self._rows_to_tuples(keys, thread_id, ns, reply)
        if not tuples:
            return None
        if not cid:
            # the latest: the next put (the next graph turn's) may repeat or extend its values, and the
            # graph builds on the objects read here, so remembering these (even when this saver wrote
            # the record) lets that put see a list that only grew by identity instead of comparing items
            written = self._written.get((keys.base, ns))
            record = reply[1][1]
            fields: dict[str, bytes] = {}
            if written is not None and written.record == record:
                fields = _blob_channel_fields(written.skeleton)
            else:
                if self.record_format >= 3:
                    self._remember_record((keys.base, ns), reply[1][0], record)
                names = self._names.get((keys.base, ns))
                if names is not None:
                    with contextlib.suppress(CodecError, IndexError):
                        fields = _record_blob_fields(record, names)
            self._remember_lists(keys.base, ns, tuples[0].checkpoint["channel_values"], fields)
        return tuples[0]

    def _op_latest_written(self, keys: Keys, ns: str) -> _Gen[list[Any] | None]:
        """The load script's reply for the latest checkpoint, read with plain commands in one MULTI
        when it is the one this saver last wrote: the blob fields it reads are known, so no script
        has to parse the record to find them (the script costs several times the commands). ``None``
        when this saver wrote nothing here, or someone else wrote since: the caller loads."""
        cache_key = (keys.base, ns)
        written = self._written.get(cache_key)
        if written is None:
            return None
        h, ik = keys.ns_keys(ns)
        cid = written.cid
        replies = yield _Tx(
            [
                ("ZREVRANGEBYLEX", ik, "+", "-", "LIMIT", 0, 1),
                ("HGET", h, b"c" + cid),
                ("HMGET", h, b"w" + cid, *written.skeleton.reads),
                ("HGET", h, "n"),
            ]
        )
        if replies is None:  # a client without transactions here
            return None
        for reply in replies:  # a command failed inside EXEC (a key of another type: not ours)
            if isinstance(reply, Exception):
                raise redis.ResponseError(str(reply))
        latest, record, values, names = replies
        if not latest:  # no checkpoints (deleted, expired): the answer, as the script would give it
            self._written.pop(cache_key, None)
            return [None]
        if latest[0] != cid or record != written.record:
            self._written.pop(cache_key, None)
            return None
        if any(v is not None and is_ref(v) for v in values[1:]):
            return None  # a later branch extended a list of it: the script resolves references
        cached = self._names.get(cache_key)
        if cached is not None and names is not None and cached.is_current(names):
            names = None  # the cached dictionary is current, as the script would have said
        return [names, [cid, record, values]]

    def _op_page(self, thread_id: str, ns: str, upper: str | None, count: int) -> _Gen[_Page]:
        keys = Keys(self.key_prefix, thread_id)
        reply = yield _Eval(
            SCRIPTS["load"], keys.ns_keys(ns), ["page", upper or "", count, *self._load_args(keys, ns)]
        )
        tuples = self._rows_to_tuples(keys, thread_id, ns, reply)
        last = tuples[-1].checkpoint["id"] if tuples else upper
        # A page is short only at the end of the index (records are never missing for indexed ids).
        return _Page(tuples, last, len(tuples) < count)

    def _op_namespaces(self, thread_id: str) -> _Gen[list[str]]:
        members = yield _Cmd(("SMEMBERS", Keys(self.key_prefix, thread_id).nset))
        return sorted(_text(m) for m in members)

    def _op_registry_page(self, start: int) -> _Gen[list[str]]:
        members = yield _Cmd(("ZRANGE", self._registry, start, start + _REGISTRY_PAGE - 1))
        return [_text(m) for m in members]

    def _op_forget(self, thread_id: str) -> _Gen[None]:
        """Drop a registry entry whose thread has no keys left (it expired or was deleted)."""
        self._touched.pop(thread_id, None)
        yield _Cmd(("ZREM", self._registry, thread_id))

    def _op_delete_thread(self, thread_id: str) -> _Gen[None]:
        keys = Keys(self.key_prefix, thread_id)
        self._touched.pop(thread_id, None)
        yield _Batch(
            [
                _Eval(SCRIPTS["delete_thread"], [keys.nset], [keys.base]),
                _Cmd(("ZREM", self._registry, thread_id)),
            ],
            transaction=False,
        )

    def _op_delete_for_runs(self, thread_id: str, run_ids: Sequence[str]) -> _Gen[int]:
        keys = Keys(self.key_prefix, thread_id)
        flat = yield _Eval(SCRIPTS["find"], [keys.nset], [keys.base, *run_ids])
        wanted = set(run_ids)
        by_ns: dict[str, list[str]] = {}
        for i in range(0, len(flat), 3):
            ns, cid, record = _text(flat[i]), _text(flat[i + 1]), flat[i + 2]
            if decode_metadata(self.serde, record).get("run_id") in wanted:
                by_ns.setdefault(ns, []).append(cid)
        removed = 0
        for ns, cids in by_ns.items():
            removed += yield _Eval(SCRIPTS["remove"], [keys.nset, *keys.ns_keys(ns)], [keys.base, ns, *cids])
        return removed

    def _op_uses_delta(self, thread_id: str) -> _Gen[bool]:
        keys = Keys(self.key_prefix, thread_id)
        flat = yield _Eval(SCRIPTS["find"], [keys.nset], [keys.base, *_DELTA_METADATA_KEYS])
        for i in range(0, len(flat), 3):
            md = decode_metadata(self.serde, flat[i + 2])
            if any(k in md for k in _DELTA_METADATA_KEYS):
                return True
        return False

    def _op_keep_latest(self, thread_id: str) -> _Gen[None]:
        keys = Keys(self.key_prefix, thread_id)
        yield _Eval(SCRIPTS["keep_latest"], [keys.nset], [keys.base])

    def _op_copy_thread(self, source: str, target: str) -> _Gen[None]:
        src = Keys(self.key_prefix, source)
        dst = Keys(self.key_prefix, target)
        namespaces = yield from self._op_namespaces(source)
        if not namespaces:
            return
        if (yield _Cmd(("EXISTS", dst.nset))):
            raise ValueError(
                f"copy_thread: target thread {target!r} already has checkpoints; "
                "delete it first (delete_thread) or copy to a new thread id"
            )
        src_keys = [src.nset] + [k for ns in namespaces for k in src.ns_keys(ns)]
        dst_keys = [dst.nset] + [k for ns in namespaces for k in dst.ns_keys(ns)]
        # One MULTI per side: a consistent snapshot of the source, restored all-or-nothing.
        dumps = yield _Batch([_Cmd(("DUMP", k)) for k in src_keys], transaction=True)
        restores: list[_Eval | _Cmd] = [
            _Cmd(("RESTORE", key, self._ttl_ms, payload))
            for key, payload in zip(dst_keys, dumps, strict=True)
            if payload is not None
        ]
        if restores:
            yield _Batch(restores, transaction=True)
            yield _Batch(self._touch_ops(target, force=True), transaction=False)

    # ------------------------------------------------------------------------------ listing

    @staticmethod
    def _matches(tup: CheckpointTuple, filter: dict[str, Any] | None) -> bool:
        if not filter:
            return True
        md = tup.metadata
        return all(md.get(k, _MISSING) == v for k, v in filter.items())

    @staticmethod
    def _list_args(
        config: RunnableConfig | None, before: RunnableConfig | None
    ) -> tuple[str | None, str | None, str | None, str | None]:
        thread_id = str(config["configurable"]["thread_id"]) if config else None
        ns = config["configurable"].get("checkpoint_ns") if config else None
        exact = get_checkpoint_id(config) if config else None
        upper = get_checkpoint_id(before) if before else None
        return thread_id, (None if ns is None else str(ns)), exact, upper


_MISSING = object()


def _grew(value: list[Any], old: list[Any]) -> bool:
    """Whether list ``value`` starts with every item of ``old``: the items a list that only grew shares
    with its previous version (by identity, checked in C first)."""
    return len(value) >= len(old) and (all(map(operator.is_, value, old)) or all(map(same, value, old)))


def _blob_channel_fields(skeleton: Skeleton) -> dict[str, bytes]:
    """Channel -> blob field of the record a skeleton describes (channels whose value is a blob)."""
    blob_channels = [ch for ch, kind in skeleton.channels if kind == KIND_BLOB]
    return dict(zip(blob_channels, skeleton.reads, strict=True))


def _record_blob_fields(record: bytes, names: NameDict) -> dict[str, bytes]:
    header = parse_header(record)
    fields: dict[str, bytes] = {}
    for name_id, idx, kind in header.channels:
        if kind == KIND_BLOB:
            fields[names.names[name_id]] = b"b" + name_id.to_bytes(2, "big") + header.vkeys[idx]
    return fields


def _validate_prune(thread_ids: Sequence[str], strategy: str) -> list[str]:
    if isinstance(thread_ids, str):
        raise TypeError("thread_ids must be a sequence of thread IDs, not a str")
    if strategy not in PRUNE_STRATEGIES:
        raise ValueError(f"Unknown prune strategy: {strategy!r} (use 'keep_latest' or 'delete')")
    return [str(t) for t in thread_ids]


# ---------------------------------------------------------------------------------- sync saver


class _SyncMethods(_PlainRedisBase, abc.ABC):
    """The blocking half of the API, on ``self._sync()`` (each saver says which blocking client)."""

    @abc.abstractmethod
    def _sync(self) -> redis.Redis: ...

    def _drive(self, gen: _Gen[T]) -> T:
        return _run_sync(self._sync(), gen)

    def setup(self) -> None:
        """Load the Lua scripts (optional: they are loaded on first use anyway)."""
        client = self._sync()
        for script in SCRIPTS.values():
            client.script_load(script.source)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint in ``config`` (or the thread's latest), its pending writes sorted by
        ``(task_path, task_id, idx)``; ``None`` when there is none."""
        return self._drive(self._op_get_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first per namespace; ``config=None`` walks every registered thread.

        ``filter`` matches metadata by equality (checked client-side), ``before`` is exclusive.
        """
        if limit is not None and limit <= 0:
            return
        remaining = limit
        thread_id, ns, exact, upper = self._list_args(config, before)
        for tid, namespaces in self._iter_targets(thread_id, ns):
            for one_ns in namespaces:
                if exact is not None:
                    tup = self.get_tuple(
                        {"configurable": {"thread_id": tid, "checkpoint_ns": one_ns, "checkpoint_id": exact}}
                    )
                    pages: Iterable[builtins.list[CheckpointTuple]] = [
                        [tup] if tup and (upper is None or exact < upper) else []
                    ]
                else:
                    pages = self._iter_pages(tid, one_ns, upper, remaining, bool(filter))
                for page in pages:
                    for tup in page:
                        if not self._matches(tup, filter):
                            continue
                        yield tup
                        if remaining is not None:
                            remaining -= 1
                            if remaining <= 0:
                                return

    def _iter_pages(
        self, thread_id: str, ns: str, upper: str | None, remaining: int | None, filtered: bool
    ) -> Iterator[builtins.list[CheckpointTuple]]:
        while True:
            count = _PAGE if (filtered or remaining is None) else min(_PAGE, remaining)
            page = self._drive(self._op_page(thread_id, ns, upper, count))
            yield page.tuples
            if page.exhausted:
                return
            upper = page.last_id

    def _iter_targets(
        self, thread_id: str | None, ns: str | None
    ) -> Iterator[tuple[str, builtins.list[str]]]:
        if thread_id is not None:
            yield thread_id, ([ns] if ns is not None else self._drive(self._op_namespaces(thread_id)))
            return
        start = 0
        while True:
            threads = self._drive(self._op_registry_page(start))
            for tid in threads:
                namespaces = self._drive(self._op_namespaces(tid))
                if not namespaces:
                    self._drive(self._op_forget(tid))
                    start -= 1  # the registry shifted left by one
                    continue
                yield tid, ([ns] if ns is not None else namespaces)
            if len(threads) < _REGISTRY_PAGE:
                return
            start += len(threads)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint`` (parent = ``config``'s checkpoint_id) in one round trip."""
        return self._drive(self._op_put(config, checkpoint, metadata, new_versions))

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        """Store a task's pending writes against ``config``'s checkpoint in one round trip."""
        self._drive(self._op_put_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, write and blob of the thread, in all namespaces."""
        self._drive(self._op_delete_thread(str(thread_id)))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes and now-unread blobs) whose metadata ``run_id``
        is in ``run_ids``. Scans every registered thread: O(all checkpoints), like an unindexed SQL
        delete; meant for administration, not for a request path."""
        run_ids = [str(r) for r in run_ids]
        if not run_ids:
            return
        for tid, _ in list(self._iter_targets(None, None)):
            self._drive(self._op_delete_for_runs(tid, run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every namespace, checkpoint, write and blob of a thread to a new thread id.

        Raises ``ValueError`` if the target already has checkpoints. A missing source is a no-op.
        """
        self._drive(self._op_copy_thread(str(source_thread_id), str(target_thread_id)))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"``: keep each namespace's latest checkpoint, its writes and the blobs it
        reads; ``"delete"``: delete the threads. Like PostgresSaver, ``keep_latest`` refuses (raises
        ``NotImplementedError``, pruning nothing) when a thread uses a ``DeltaChannel``."""
        ids = _validate_prune(thread_ids, strategy)
        if strategy == "delete":
            for tid in ids:
                self.delete_thread(tid)
            return
        delta = [tid for tid in ids if self._drive(self._op_uses_delta(tid))]
        if delta:
            raise NotImplementedError(f"keep_latest can't prune threads that use a DeltaChannel: {delta}")
        for tid in ids:
            self._drive(self._op_keep_latest(tid))


class PlainRedisSaver(_SyncMethods):
    """Checkpoint saver on plain Redis for the sync API (``graph.invoke``); async calls are run in a
    worker thread.

    Args:
        client: a ``redis.Redis`` (or ``redis.RedisCluster``) with ``decode_responses=False``.
        ttl_seconds: every key of a thread expires this long after the thread's last write;
            ``None``: never.
        keep_last: checkpoints kept per thread and namespace; older ones, their writes and the blobs
            only they read are removed on each put. ``None`` (the default): no count of checkpoints.
        keep_events: events (graph runs, updates, forks) kept per thread and namespace: every
            checkpoint of the newest ``keep_events`` events stays, older ones go as with
            ``keep_last``. ``None`` keeps every event. With both ``None`` nothing is pruned.
        compress: zlib-compress channel values of ``COMPRESS_MIN`` bytes or more (when smaller so).
        extension_refs: store a list value that a later put extended as a reference into the later
            one (see ``_codec.py``).
        record_format: ``3`` (the default) stores sections of up to 32 small values inline in the
            record and every record but the latest as a splice of its child's record (see
            ``_codec.py``); ``2`` writes records as the release before did (flat dicts of up to four
            values inline, every record whole), which that release can read: run a rolling upgrade
            with ``2`` until no process of the earlier release is left. ``compress=False,
            extension_refs=False, keep_last=200, keep_events=None, record_format=2`` writes the layout
            of the releases before bounded storage (for comparisons).
        key_prefix: prefix of every key (no braces).
        serde: serializer; defaults to ``JsonPlusSerializer``.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl_seconds: float | None = DEFAULT_TTL_SECONDS,
        keep_last: int | None = DEFAULT_KEEP_LAST,
        keep_events: int | None = DEFAULT_KEEP_EVENTS,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        serde: SerializerProtocol | None = None,
        compress: bool = True,
        extension_refs: bool = True,
        record_format: int = RECORD_FORMAT,
    ) -> None:
        super().__init__(
            ttl_seconds=ttl_seconds,
            keep_last=keep_last,
            keep_events=keep_events,
            key_prefix=key_prefix,
            serde=serde,
            compress=compress,
            extension_refs=extension_refs,
            record_format=record_format,
        )
        _check_binary_client(client)
        self.client = client

    def _sync(self) -> redis.Redis:
        return self.client

    def close(self) -> None:
        """Close the connections this saver set aside for its script calls (the client itself is the
        caller's to close; ``from_conn_string`` closes both)."""
        _close_script_connections(self.client)

    @classmethod
    @contextlib.contextmanager
    def from_conn_string(
        cls,
        url: str,
        *,
        ttl_seconds: float | None = DEFAULT_TTL_SECONDS,
        keep_last: int | None = DEFAULT_KEEP_LAST,
        keep_events: int | None = DEFAULT_KEEP_EVENTS,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        serde: SerializerProtocol | None = None,
        compress: bool = True,
        extension_refs: bool = True,
        record_format: int = RECORD_FORMAT,
    ) -> Iterator[PlainRedisSaver]:
        """A saver on a new client for ``url`` (``redis://``, ``rediss://``, ``unix://``; a cluster client
        for a Redis Cluster node), closed on exit."""
        client = cast(redis.Redis, connect(url))
        try:
            yield cls(
                client,
                ttl_seconds=ttl_seconds,
                keep_last=keep_last,
                keep_events=keep_events,
                key_prefix=key_prefix,
                serde=serde,
                compress=compress,
                extension_refs=extension_refs,
                record_format=record_format,
            )
        finally:
            _close_script_connections(client)
            client.close()

    # ------------------------------------------------------------------- async, in a thread

    async def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._in_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        it = self.list(config, filter=filter, before=before, limit=limit)
        done = object()
        while True:
            item = await self._in_thread(next, it, done)
            if item is done:
                return
            yield cast(CheckpointTuple, item)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._in_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        await self._in_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._in_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._in_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._in_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._in_thread(self.prune, thread_ids, strategy=strategy)


# --------------------------------------------------------------------------------- async saver


def _sync_client_like(client: aredis.Redis) -> redis.Redis:
    """A blocking client with the async client's connection settings (for a cluster client: a blocking
    cluster client that starts from the same nodes)."""
    if isinstance(client, aredis.RedisCluster):
        # before its first command the client knows only the nodes it was given
        node = client.get_default_node() or next(iter(client.nodes_manager.startup_nodes.values()))
        kw = node.connection_kwargs
        options = {k: kw[k] for k in ("username", "password", "socket_timeout", "socket_connect_timeout")
                   if kw.get(k) is not None}
        return cast(redis.Redis, redis.cluster.RedisCluster(host=node.host, port=node.port, **options))
    if not isinstance(client, aredis.Redis):
        raise TypeError(
            f"cannot derive a blocking client from {type(client).__name__}: pass sync_client= to "
            "AsyncPlainRedisSaver to use its sync methods"
        )
    pool = client.connection_pool
    kw = pool.connection_kwargs
    names = (
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "credential_provider",
        "socket_timeout",
        "socket_connect_timeout",
        "client_name",
        "protocol",
    )
    settings = {k: kw[k] for k in names if k in kw}
    conn_class: type[redis.Connection | redis.UnixDomainSocketConnection | redis.SSLConnection]
    if issubclass(pool.connection_class, aredis.UnixDomainSocketConnection):
        conn_class = redis.UnixDomainSocketConnection
    elif issubclass(pool.connection_class, aredis.SSLConnection):
        conn_class = redis.SSLConnection
        settings.update({k: v for k, v in kw.items() if k.startswith("ssl_")})
    else:
        conn_class = redis.Connection
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=conn_class, **settings))


class AsyncPlainRedisSaver(_SyncMethods):
    """Checkpoint saver on plain Redis for the async API (``graph.ainvoke``), with working sync
    methods (``graph.get_state`` from sync code or another thread).

    Args:
        client: a ``redis.asyncio.Redis`` with ``decode_responses=False``.
        sync_client: the blocking client the sync methods use; by default one is made from
            ``client``'s connection settings on first sync use (pass one explicitly for clusters or
            unusual connection classes).
        ttl_seconds, keep_last, keep_events, key_prefix, serde, compress, extension_refs,
            record_format: as for :class:`PlainRedisSaver`.
    """

    def __init__(
        self,
        client: aredis.Redis,
        *,
        sync_client: redis.Redis | None = None,
        ttl_seconds: float | None = DEFAULT_TTL_SECONDS,
        keep_last: int | None = DEFAULT_KEEP_LAST,
        keep_events: int | None = DEFAULT_KEEP_EVENTS,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        serde: SerializerProtocol | None = None,
        compress: bool = True,
        extension_refs: bool = True,
        record_format: int = RECORD_FORMAT,
    ) -> None:
        super().__init__(
            ttl_seconds=ttl_seconds,
            keep_last=keep_last,
            keep_events=keep_events,
            key_prefix=key_prefix,
            serde=serde,
            compress=compress,
            extension_refs=extension_refs,
            record_format=record_format,
        )
        _check_binary_client(client)
        if sync_client is not None:
            _check_binary_client(sync_client)
        self.client = client
        self._sync_client = sync_client
        self._owns_sync_client = False

    def _sync(self) -> redis.Redis:
        if self._sync_client is None:
            self._sync_client = _sync_client_like(self.client)
            self._owns_sync_client = True
        return self._sync_client

    async def aclose(self) -> None:
        """Close the saver's own connections: the script connections it opened on ``client`` and the
        blocking client it made for itself (the clients passed in stay open)."""
        _close_lean_connections(self.client)
        if self._owns_sync_client and self._sync_client is not None:
            _close_script_connections(self._sync_client)
            self._sync_client.close()
            self._sync_client = None

    @classmethod
    @contextlib.asynccontextmanager
    async def from_conn_string(
        cls,
        url: str,
        *,
        ttl_seconds: float | None = DEFAULT_TTL_SECONDS,
        keep_last: int | None = DEFAULT_KEEP_LAST,
        keep_events: int | None = DEFAULT_KEEP_EVENTS,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        serde: SerializerProtocol | None = None,
        compress: bool = True,
        extension_refs: bool = True,
        record_format: int = RECORD_FORMAT,
    ) -> AsyncIterator[AsyncPlainRedisSaver]:
        """A saver on new async and blocking clients for ``url`` (cluster clients for a Redis Cluster
        node), both closed on exit."""
        client = cast(aredis.Redis, await aconnect(url))
        sync_client = cast(redis.Redis, connect(url))
        try:
            yield cls(
                client,
                sync_client=sync_client,
                ttl_seconds=ttl_seconds,
                keep_last=keep_last,
                keep_events=keep_events,
                key_prefix=key_prefix,
                serde=serde,
                compress=compress,
                extension_refs=extension_refs,
                record_format=record_format,
            )
        finally:
            _close_lean_connections(client)
            await client.aclose()
            _close_script_connections(sync_client)
            sync_client.close()

    async def _adrive(self, gen: _Gen[T]) -> T:
        return await _run_async(self.client, gen)

    async def asetup(self) -> None:
        """Load the Lua scripts (optional: they are loaded on first use anyway)."""
        for script in SCRIPTS.values():
            await self.client.script_load(script.source)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._adrive(self._op_get_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        if limit is not None and limit <= 0:
            return
        remaining = limit
        thread_id, ns, exact, upper_bound = self._list_args(config, before)
        async for tid, namespaces in self._aiter_targets(thread_id, ns):
            for one_ns in namespaces:
                if exact is not None:
                    tup = await self.aget_tuple(
                        {"configurable": {"thread_id": tid, "checkpoint_ns": one_ns, "checkpoint_id": exact}}
                    )
                    candidates = [tup] if tup and (upper_bound is None or exact < upper_bound) else []
                    for tup in candidates:
                        if self._matches(tup, filter):
                            yield tup
                            if remaining is not None:
                                remaining -= 1
                                if remaining <= 0:
                                    return
                    continue
                upper = upper_bound
                while True:
                    count = _PAGE if (filter or remaining is None) else min(_PAGE, remaining)
                    page = await self._adrive(self._op_page(tid, one_ns, upper, count))
                    for tup in page.tuples:
                        if not self._matches(tup, filter):
                            continue
                        yield tup
                        if remaining is not None:
                            remaining -= 1
                            if remaining <= 0:
                                return
                    if page.exhausted:
                        break
                    upper = page.last_id

    async def _aiter_targets(
        self, thread_id: str | None, ns: str | None
    ) -> AsyncIterator[tuple[str, list[str]]]:
        if thread_id is not None:
            yield thread_id, ([ns] if ns is not None else await self._adrive(self._op_namespaces(thread_id)))
            return
        start = 0
        while True:
            threads = await self._adrive(self._op_registry_page(start))
            for tid in threads:
                namespaces = await self._adrive(self._op_namespaces(tid))
                if not namespaces:
                    await self._adrive(self._op_forget(tid))
                    start -= 1
                    continue
                yield tid, ([ns] if ns is not None else namespaces)
            if len(threads) < _REGISTRY_PAGE:
                return
            start += len(threads)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._adrive(self._op_put(config, checkpoint, metadata, new_versions))

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        await self._adrive(self._op_put_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        await self._adrive(self._op_delete_thread(str(thread_id)))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        run_ids = [str(r) for r in run_ids]
        if not run_ids:
            return
        threads = [tid async for tid, _ in self._aiter_targets(None, None)]
        for tid in threads:
            await self._adrive(self._op_delete_for_runs(tid, run_ids))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._adrive(self._op_copy_thread(str(source_thread_id), str(target_thread_id)))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        ids = _validate_prune(thread_ids, strategy)
        if strategy == "delete":
            for tid in ids:
                await self.adelete_thread(tid)
            return
        delta = [tid for tid in ids if await self._adrive(self._op_uses_delta(tid))]
        if delta:
            raise NotImplementedError(f"keep_latest can't prune threads that use a DeltaChannel: {delta}")
        for tid in ids:
            await self._adrive(self._op_keep_latest(tid))
