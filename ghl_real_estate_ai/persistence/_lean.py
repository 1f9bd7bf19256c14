"""A pipelined asyncio connection for the async saver's script calls.

``redis.asyncio`` costs tens of microseconds of Python per command (pool checkout, stream reader,
per-command retry and event hooks), which for the async saver is more than the script itself. The
script calls (one per saver operation) therefore go over a ``_LeanConnection`` instead: an
``asyncio.Protocol`` with a hiredis reader. A call writes the packed command to the transport and
awaits a future; replies arrive in request order, so concurrent calls from many tasks share one
connection as a pipeline, and ``data_received`` completes their futures in order.

One connection per (client, event loop). It is used only for settings it can reproduce exactly (TCP or
Unix socket, optional username/password, database number, client name, RESP2); anything else (TLS,
credential providers, RESP3) keeps the ``redis.asyncio`` path. A lost connection fails the calls in
flight with ``redis.ConnectionError`` (the caller retries once, as ``redis.asyncio`` would) and the next call
connects again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Settings that change what goes over the wire or how it is read; with any of them set to other than its
# default, the lean path steps aside. Everything else in a pool's connection_kwargs (keepalive options,
# retry settings, redis-py internals) does not change the replies of the script calls.
_UNSUPPORTED = ("credential_provider", "redis_connect_func", "decode_responses", "ssl", "ssl_context")


def pack_command(args: Sequence[Any]) -> bytes:
    """RESP encoding of a command whose arguments are bytes, str, int or float: the script calls'
    arguments are bytes already, so this skips redis-py's per-argument encoder. hiredis packs in C
    (twice as fast for a checkpoint's 25 arguments); what it refuses (a bool) is packed here."""
    try:
        return hiredis.pack_command(args if type(args) is tuple else tuple(args))
    except TypeError:
        return pack_command_py(args)


def pack_command_py(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(float(arg)).encode()
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


class _LeanConnection(asyncio.Protocol):
    """A command goes out at once when nothing is in flight; otherwise the commands of one event-loop
    turn go out in one write (one syscall for many concurrent callers). Replies complete their futures
    in order. ``timeout`` (the client's ``socket_timeout``) is watched per connection, not per call:
    when the oldest unanswered command waited that long, the connection is closed and every caller gets
    ``redis.TimeoutError`` (their replies would now arrive out of step)."""

    def __init__(self, timeout: float | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.sent_at: collections.deque[float] = collections.deque()  # loop time, one per waiter
        self.timeout = timeout
        self.closed = False
        self._out: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------------------- protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"protocol error from the Redis server: {exc}"))
                if self.transport is not None:
                    self.transport.close()
                return
            if reply is False:
                return
            if not self.waiters:  # a reply nobody asked for: the stream is out of step
                self._fail(RedisConnectionError("unexpected reply from the Redis server"))
                if self.transport is not None:
                    self.transport.close()
                return
            fut = self.waiters.popleft()
            self.sent_at.popleft()
            if fut.done():  # the caller was cancelled; its reply is read and dropped
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(BaseParser.parse_error(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to the Redis server lost: {exc or 'closed'}"))

    def _fail(self, error: Exception) -> None:
        self.closed = True
        self._out.clear()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.sent_at.clear()
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(error)

    def _flush(self) -> None:
        if self._out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def _check(self) -> None:
        """The timeout watch: fail everything when the oldest command waited ``timeout`` seconds."""
        self._watch = None
        if not self.sent_at or self.closed or self.timeout is None or self._loop is None:
            return
        overdue_at = self.sent_at[0] + self.timeout
        if self._loop.time() >= overdue_at:
            self._fail(RedisTimeoutError(f"no reply from the Redis server within {self.timeout} s"))
            if self.transport is not None:
                self.transport.close()
            return
        self._watch = self._loop.call_at(overdue_at, self._check)

    # --------------------------------------------------------------------------------- use

    def call(self, packed: bytes, replies: int = 1) -> list[asyncio.Future[Any]]:
        """Send ``packed`` (``replies`` commands): one future per reply, in order. With nothing in flight
        it is written at once (a lone caller does not wait a loop turn for company); otherwise it goes
        out with the rest of this loop turn's commands in one write."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise RedisConnectionError("connection to the Redis server is closed")
        loop = self._loop or asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(replies)]
        self.waiters.extend(futs)
        now = loop.time()
        self.sent_at.extend([now] * replies)
        if len(self.waiters) == replies:
            self.transport.write(packed)  # nothing in flight, so nothing queued either
        else:
            if not self._out:
                loop.call_soon(self._flush)
            self._out.append(packed)
        if self.timeout is not None and self._watch is None:
            self._watch = loop.call_at(now + self.timeout, self._check)
        return futs

    def close(self) -> None:
        self.closed = True
        transport, self.transport = self.transport, None
        if transport is not None:
            # RuntimeError: its event loop is closed; the socket is closed with the transport object
            with contextlib.suppress(RuntimeError):
                transport.close()


def lean_settings(client: Any) -> dict[str, Any] | None:
    """The connection settings of ``client`` if a lean connection can reproduce them, else None."""
    if type(client) is not aredis.Redis or getattr(client, "single_connection_client", False):
        return None
    pool = client.connection_pool
    if pool.connection_class not in (aredis.Connection, aredis.UnixDomainSocketConnection):
        return None
    kw = pool.connection_kwargs
    if any(kw.get(name) for name in _UNSUPPORTED) or kw.get("protocol") not in (None, 2, "2"):
        return None
    return dict(kw)


class LeanConnections:
    """Lean connections of one async client, one per event loop."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LeanConnection] = (
            weakref.WeakKeyDictionary()
        )
        self._connecting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future[Any]] = (
            weakref.WeakKeyDictionary()
        )

    async def call_all(self, packed: bytes, replies: int) -> list[Any]:
        """Send ``packed`` (``replies`` commands, a pipeline) and return every reply in order; an error
        reply comes back as its exception in the list (as redis-py's ``execute(raise_on_error=False)``)."""
        loop = asyncio.get_running_loop()
        conn = self._by_loop.get(loop)
        if conn is None or conn.closed:
            conn = await self._connect(loop)
        return list(await asyncio.gather(*conn.call(packed, replies), return_exceptions=True))

    async def call(self, packed: bytes, replies: int = 1) -> Any:
        """Send ``packed`` (``replies`` commands) and return the last reply; an error reply to any of
        them is raised once all have arrived."""
        loop = asyncio.get_running_loop()
        conn = self._by_loop.get(loop)
        if conn is None or conn.closed:
            conn = await self._connect(loop)
        futs = conn.call(packed, replies)
        if replies == 1:
            return await futs[0]  # the connection's watch enforces the timeout
        result = await asyncio.gather(*futs, return_exceptions=True)
        for reply in result:
            if isinstance(reply, BaseException):
                raise reply
        return result[-1]

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _LeanConnection:
        # A connection keeps its loop alive (transport -> loop), so entries of closed loops are
        # dropped here rather than by the weak dictionary. Loops of other threads may connect at the
        # same moment: the dictionary is only touched under the lock.
        with self._lock:
            closed = [old for old in self._by_loop if old.is_closed()]
            stale = [self._by_loop.pop(old) for old in closed]
        for conn in stale:
            conn.close()
        pending = self._connecting.get(loop)
        if pending is not None:  # another task is connecting on this loop: share its connection
            return await asyncio.shield(pending)
        fut: asyncio.Future[_LeanConnection] = loop.create_future()
        self._connecting[loop] = fut
        try:
            conn = await self._open(loop)
        except BaseException as exc:
            # tasks sharing this attempt retry on a ConnectionError, even when this one was cancelled
            shared = exc if isinstance(exc, Exception) else RedisConnectionError("connecting was interrupted")
            fut.set_exception(shared)
            fut.exception()  # retrieved: no "exception never retrieved" warning if nobody waits
            raise
        finally:
            self._connecting.pop(loop, None)
        with self._lock:
            self._by_loop[loop] = conn
        fut.set_result(conn)
        return conn

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _LeanConnection:
        s = self.settings
        try:
            timeout = s.get("socket_timeout")

            def protocol() -> _LeanConnection:
                return _LeanConnection(timeout)

            if s.get("path"):
                opening = loop.create_unix_connection(protocol, s["path"])
            else:
                opening = loop.create_connection(protocol, s.get("host", "localhost"), s.get("port", 6379))
            _, conn = await asyncio.wait_for(
                opening, s.get("socket_connect_timeout") or s.get("socket_timeout")
            )
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to the Redis server: {exc}") from exc
        handshake: list[bytes] = []
        if s.get("password") is not None:
            user = s.get("username")
            handshake.append(pack_command(("AUTH", user, s["password"]) if user else ("AUTH", s["password"])))
        if s.get("db"):
            handshake.append(pack_command(("SELECT", s["db"])))
        if s.get("client_name"):
            handshake.append(pack_command(("CLIENT", "SETNAME", s["client_name"])))
        try:
            replies = [conn.call(cmd)[0] for cmd in handshake]
            for reply in replies:
                await reply
        except BaseException as exc:
            conn.close()
            if isinstance(exc, ResponseError):
                raise RedisConnectionError(f"Redis server refused the connection setup: {exc}") from exc
            raise
        return conn

    def close(self) -> None:
        with self._lock:
            conns = list(self._by_loop.values())
            self._by_loop.clear()
        for conn in conns:
            conn.close()
