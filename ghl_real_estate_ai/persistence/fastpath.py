"""The lean way to Redis for the commands every lead run makes (lock, send ledger, lead index, job table).

``redis.asyncio`` spends tens of microseconds of Python per command (pool checkout, argument encoder,
retry wrapper, observability hooks); a due step makes about eight such commands besides the checkpoint
writes. On a plain client these go over the saver's pipelined ``_lean`` connection instead (concurrent
calls share it as a pipeline); a cluster client, or settings the lean connection cannot reproduce, keep
the normal client path. Replies are what redis-py returns without ``decode_responses``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import NoScriptError

from ghl_real_estate_ai.persistence._lean import LeanConnections, pack_command
from ghl_real_estate_ai.persistence.plain_redis import _call_async, _lean_connections

__all__ = ["FastScript", "fast_call", "fast_pipeline", "lean_connections"]


def lean_connections(client: aredis.Redis) -> LeanConnections | None:
    """The client's lean connections (for pipelining many commands in one write with
    ``LeanConnections.call_all``); None for a cluster client or settings they cannot reproduce."""
    return _lean_connections(client)


async def fast_pipeline(client: aredis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any] | None:
    """Several commands in one pipelined write on the lean connection: every reply in order, an error
    reply as its exception in the list (redis-py's ``execute(raise_on_error=False)``). None when the client
    has no lean connection (a cluster client): the caller uses a redis-py pipeline."""
    lean = _lean_connections(client)
    if lean is None:
        return None
    return await lean.call_all(b"".join(pack_command(tuple(c)) for c in commands), len(commands))


async def fast_call(client: aredis.Redis, *args: Any) -> Any:
    """One command; connection errors are retried once on a new connection (as redis-py does)."""
    return await _call_async(client, *args)


class FastScript:
    """A Lua script run with EVALSHA over the fast path (loaded again after a SCRIPT FLUSH or a restart)."""

    def __init__(self, client: aredis.Redis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await _call_async(self.client, "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.client.script_load(self.source)
            return await _call_async(self.client, "EVALSHA", self.sha, len(keys), *keys, *args)
