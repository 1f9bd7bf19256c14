"""The async saver's pipelined script connection (``persistence._lean``), against real Redis servers.

Concurrent calls share one connection and each gets its own reply; error replies map to redis-py's
exception classes (NOSCRIPT reloads the script); a killed connection is reconnected and the call
retried; AUTH (password and ACL user), SELECT and CLIENT SETNAME are reproduced; settings it cannot
reproduce (TLS, RESP3) fall back to ``redis.asyncio``; each event loop gets its own connection.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import hiredis
import pytest
import redis
import redis.asyncio as aredis
from langgraph.checkpoint.base import empty_checkpoint

from ghl_real_estate_ai.persistence import AsyncPlainRedisSaver
from ghl_real_estate_ai.persistence import plain_redis as pr
from ghl_real_estate_ai.persistence._lean import _LeanConnection, lean_settings, pack_command, pack_command_py
from ghl_real_estate_ai.testing.redis_server import RedisServer


def cfg(thread_id: str, **extra: str) -> dict[str, dict[str, str]]:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": "", **extra}}


@pytest.fixture
def private_server() -> Iterator[RedisServer]:
    """A server of this test's own: the tests change its auth settings and kill its clients."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def saver(private_server: RedisServer) -> AsyncIterator[AsyncPlainRedisSaver]:
    """The async saver on the private server; closed, with its client, after the test."""
    client = aredis.Redis.from_url(private_server.url)
    saver = AsyncPlainRedisSaver(client)
    try:
        yield saver
    finally:
        await saver.aclose()
        await client.aclose()


# The commands a lean connection sends: script calls, and MULTI ... EXEC for reading back the
# checkpoint the saver last wrote.
LEAN_COMMANDS = ("evalsha", "exec")


def script_connections(server: RedisServer) -> int:
    """Connections whose last command was one a lean connection sends."""
    client = redis.Redis.from_url(server.url)
    try:
        return sum(1 for c in client.client_list() if c.get("cmd") in LEAN_COMMANDS)
    finally:
        client.close()


def kill_script_connections(server: RedisServer) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        ids = [c["id"] for c in client.client_list() if c.get("cmd") in LEAN_COMMANDS]
        for cid in ids:
            client.client_kill_filter(_id=cid)
        return len(ids)
    finally:
        client.close()


async def test_concurrent_calls_share_one_pipelined_connection(
    private_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_flight: list[int] = []
    original = _LeanConnection.call

    def counting_call(self: _LeanConnection, packed: bytes, replies: int = 1) -> list[asyncio.Future[object]]:
        futs = original(self, packed, replies)
        in_flight.append(len(self.waiters))
        return futs

    monkeypatch.setattr(_LeanConnection, "call", counting_call)
    client = aredis.Redis.from_url(private_server.url)
    saver = AsyncPlainRedisSaver(client)
    try:
        checkpoints = {f"t{i}": empty_checkpoint() for i in range(50)}
        await asyncio.gather(
            *(saver.aput(cfg(t), cp, {"step": i}, {}) for i, (t, cp) in enumerate(checkpoints.items()))
        )
        put_calls, in_flight[:] = len(in_flight), []
        tuples = await asyncio.gather(*(saver.aget_tuple(cfg(t)) for t in checkpoints))
        for (t, cp), tup in zip(checkpoints.items(), tuples, strict=True):
            assert tup is not None and tup.checkpoint["id"] == cp["id"]
            assert tup.config["configurable"]["thread_id"] == t
        lean = pr._lean_connections(client)
        assert lean is not None and len(lean._by_loop) == 1  # one connection for this loop
        # Every write went over it (a new thread's first put is its script and the registry update, one
        # pipelined call), and every read (one MULTI ... EXEC each).
        assert put_calls >= 50 and len(in_flight) == 50
        assert max(in_flight) > 10  # ... pipelined: many calls were in flight at once
        assert script_connections(private_server) == 1
    finally:
        await saver.aclose()
        await client.aclose()
    assert script_connections(private_server) == 0  # aclose closed it


async def test_noscript_reloads_and_error_replies_map_to_redis_exceptions(
    saver: AsyncPlainRedisSaver,
) -> None:
    client = saver.client
    first = empty_checkpoint()
    await saver.aput(cfg("t"), first, {"step": 1}, {})
    await client.script_flush()  # the server forgets the scripts: NOSCRIPT, then load and retry
    second = empty_checkpoint()
    await saver.aput(cfg("t", checkpoint_id=first["id"]), second, {"step": 2}, {})
    tup = await saver.aget_tuple(cfg("t"))
    assert tup is not None and tup.checkpoint["id"] == second["id"]
    # A new thread's first put is a pipelined batch (the script and the registry update): the same.
    await client.script_flush()
    third = empty_checkpoint()
    await saver.aput(cfg("new-thread"), third, {"step": 1}, {})
    tup = await saver.aget_tuple(cfg("new-thread"))
    assert tup is not None and tup.checkpoint["id"] == third["id"]
    assert await client.zscore(saver._registry, "new-thread") is not None

    lean = pr._lean_connections(client)
    assert lean is not None
    with pytest.raises(redis.ResponseError) as err:
        await lean.call(pack_command(("INCR", "not-a-counter-but", "extra-arg")))
    assert "wrong number of arguments" in str(err.value)
    await client.set("text", "abc")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        await lean.call(pack_command(("INCR", "text")))
    # the connection is still in step after error replies
    assert await lean.call(pack_command(("PING",))) == b"PONG"


async def test_a_killed_connection_is_reconnected_and_the_call_retried(
    saver: AsyncPlainRedisSaver, private_server: RedisServer
) -> None:
    first = empty_checkpoint()
    await saver.aput(cfg("t"), first, {"step": 1}, {})
    assert await saver.aget_tuple(cfg("t")) is not None  # the lean connection is open
    assert kill_script_connections(private_server) == 1
    second = empty_checkpoint()
    await saver.aput(cfg("t", checkpoint_id=first["id"]), second, {"step": 2}, {})
    tup = await saver.aget_tuple(cfg("t"))
    assert tup is not None and tup.checkpoint["id"] == second["id"]
    assert tup.parent_config is not None
    assert tup.parent_config["configurable"]["checkpoint_id"] == first["id"]
    assert kill_script_connections(private_server) == 1  # the read of its own last write retries too
    assert await saver.aget_tuple(cfg("t")) == tup


async def test_a_stopped_server_fails_with_connection_error(
    saver: AsyncPlainRedisSaver, private_server: RedisServer
) -> None:
    await saver.aput(cfg("t"), empty_checkpoint(), {"step": 1}, {})
    private_server.stop()
    with pytest.raises(redis.ConnectionError):
        await saver.aget_tuple(cfg("t"))


async def test_password_acl_user_and_database_are_reproduced(private_server: RedisServer) -> None:
    admin = redis.Redis.from_url(private_server.url)
    admin.acl_setuser("bot", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"])
    admin.config_set("requirepass", "topsecret")
    admin.close()
    port = private_server.port
    for url in (
        f"redis://:topsecret@127.0.0.1:{port}/3",
        f"redis://bot:s3cret@127.0.0.1:{port}/5",
    ):
        client = aredis.Redis.from_url(url)
        assert lean_settings(client) is not None
        saver = AsyncPlainRedisSaver(client, key_prefix="auth")
        try:
            cp = empty_checkpoint()
            await saver.aput(cfg("t"), cp, {"step": 1}, {})
            tup = await saver.aget_tuple(cfg("t"))
            assert tup is not None and tup.checkpoint["id"] == cp["id"]
        finally:
            await saver.aclose()
            await client.aclose()
        db = int(url.rsplit("/", 1)[1])
        check = redis.Redis(port=port, password="topsecret", db=db)
        assert check.exists("auth:{t}:n") == 1  # written in the URL's database
        check.close()

    wrong = aredis.Redis.from_url(f"redis://bot:wrong@127.0.0.1:{port}/0")
    saver = AsyncPlainRedisSaver(wrong)
    try:
        with pytest.raises(redis.AuthenticationError, match="invalid username-password"):
            await saver.aget_tuple(cfg("t"))
    finally:
        await saver.aclose()
        await wrong.aclose()


def test_settings_it_cannot_reproduce_use_redis_asyncio() -> None:
    assert lean_settings(aredis.Redis.from_url("redis://127.0.0.1:6379/0")) is not None
    assert lean_settings(aredis.Redis.from_url("unix:///tmp/redis.sock?db=2")) is not None
    assert lean_settings(aredis.Redis.from_url("rediss://127.0.0.1:6379/0")) is None
    assert lean_settings(aredis.Redis.from_url("redis://127.0.0.1:6379/0?protocol=3")) is None
    assert lean_settings(aredis.Redis(single_connection_client=True)) is None


def test_each_event_loop_gets_its_own_connection(private_server: RedisServer) -> None:
    client = aredis.Redis.from_url(private_server.url)
    lean = pr._lean_connections(client)
    assert lean is not None
    replies: list[object] = []

    async def ping() -> None:
        replies.append(await lean.call(pack_command(("PING",))))
        replies.append(await lean.call(pack_command(("ECHO", "same connection"))))

    asyncio.run(ping())  # this loop closes; the next loop connects anew
    worker = threading.Thread(target=asyncio.run, args=(ping(),))
    worker.start()
    worker.join()
    asyncio.run(ping())
    assert replies == [b"PONG", b"same connection"] * 3
    lean.close()


async def test_a_cancelled_call_does_not_put_replies_out_of_step(private_server: RedisServer) -> None:
    client = aredis.Redis.from_url(private_server.url)
    lean = pr._lean_connections(client)
    assert lean is not None
    try:
        # BLPOP on an empty list holds this connection's replies for 0.3 s; the caller gives up first
        blocked = asyncio.ensure_future(lean.call(pack_command(("BLPOP", "empty-list", "0.3"))))
        await asyncio.sleep(0.05)
        blocked.cancel()
        assert await lean.call(pack_command(("PING",))) == b"PONG"  # not BLPOP's nil
        assert blocked.cancelled()
        big = b"x" * (3 * 1024 * 1024)  # a reply that arrives in many chunks
        await client.set("big", big)
        replies = await asyncio.gather(*(lean.call(pack_command(("GET", "big"))) for _ in range(3)))
        assert replies == [big, big, big]
    finally:
        lean.close()
        await client.aclose()


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "a" * 40, 2, b"k:{t}:h:", b"k:{t}:i:", b"\x00\xff" * 300, "\u00e9t\u00e9", 7776000000, 0),
        ("ZADD", "reg", 1764514800.123456, "t"),
        ("X", -(2**70), 2**64, 0.1, -0.0, float("inf"), ""),
        ("SET", "flag", True, False),  # hiredis takes no bool: packed in Python
        ["LIST", b"args"],
    ],
)
def test_pack_command_is_resp(args: Any) -> None:
    def text(arg: Any) -> bytes:
        if isinstance(arg, bytes):
            return arg
        if isinstance(arg, float):
            return repr(arg).encode()
        return str(int(arg) if isinstance(arg, bool) else arg).encode()

    packed = pack_command(args)
    assert packed == pack_command_py(args)
    reader = hiredis.Reader()
    reader.feed(packed)  # read back as a RESP array of bulk strings: the arguments' text
    assert reader.gets() == [text(arg) for arg in args]


async def test_a_lone_command_goes_out_at_once_and_the_rest_of_its_loop_turn_in_one_write(
    private_server: RedisServer,
) -> None:
    client = aredis.Redis.from_url(private_server.url)
    lean = pr._lean_connections(client)
    assert lean is not None
    try:
        await lean.call(pack_command(("PING",)))  # connect
        conn = lean._by_loop[asyncio.get_running_loop()]
        assert conn.transport is not None
        writes: list[bytes] = []
        real_write = conn.transport.write
        conn.transport.write = lambda data: (writes.append(bytes(data)), real_write(data))[1]  # type: ignore[method-assign]
        # nothing in flight: the command is written in the call, not a loop turn later
        conn.call(pack_command(("ECHO", "alone")))
        assert writes == [pack_command(("ECHO", "alone"))]
        await asyncio.sleep(0.05)
        writes.clear()
        # a burst: the first goes out at once, the other 39 of the same loop turn share one write
        replies = await asyncio.gather(*(lean.call(pack_command(("ECHO", f"m{i}"))) for i in range(40)))
        assert replies == [f"m{i}".encode() for i in range(40)]
        assert [w.count(b"ECHO") for w in writes] == [1, 39]
    finally:
        lean.close()
        await client.aclose()


async def test_a_server_that_stops_answering_times_every_caller_out_and_the_next_call_reconnects(
    private_server: RedisServer,
) -> None:
    client = aredis.Redis.from_url(private_server.url, socket_timeout=0.3)
    lean = pr._lean_connections(client)
    assert lean is not None
    try:
        assert await lean.call(pack_command(("PING",))) == b"PONG"
        started = asyncio.get_running_loop().time()
        # DEBUG SLEEP holds the server (every client) for a second: no reply within the 0.3 s timeout.
        calls = [asyncio.ensure_future(lean.call(pack_command(("DEBUG", "SLEEP", "1")))),
                 asyncio.ensure_future(lean.call(pack_command(("PING",))))]
        results = await asyncio.gather(*calls, return_exceptions=True)
        waited = asyncio.get_running_loop().time() - started
        assert all(isinstance(r, redis.TimeoutError) for r in results), results
        assert 0.25 <= waited < 0.9
        await asyncio.sleep(0.8)  # the server wakes up
        assert await lean.call(pack_command(("ECHO", "again"))) == b"again"  # a new connection
    finally:
        lean.close()
        await client.aclose()
