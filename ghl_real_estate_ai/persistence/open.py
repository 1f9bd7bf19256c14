"""Choose and open the checkpointer for a Redis server: the official saver where it can run, ours elsewhere.

``langgraph-checkpoint-redis`` (``RedisSaver``/``AsyncRedisSaver``) needs the RediSearch and RedisJSON
modules (Redis Stack, Redis 8 with its bundled modules, Redis Cloud). On a server without them its
``setup()`` fails inside ``FT.INFO``; there the plain saver of this package is the only option.

``mode``:

* ``"auto"`` (default): the official saver if the server has both modules, else the plain one.
* ``"plain"``: always :class:`PlainRedisSaver` / :class:`AsyncPlainRedisSaver`.
* ``"official"``: always the official saver; a server without the modules raises
  :class:`~ghl_real_estate_ai.errors.ConfigurationError` saying what to do, before any ``FT.*`` call.

The official saver keeps its own key layout and TTL settings (minutes, via ``ttl={"default_ttl": ...}``);
``ttl_seconds`` is converted; ``keep_last``, ``keep_events``, ``key_prefix`` and ``record_format`` apply to
the plain saver only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal, cast

import redis
import redis.asyncio as aredis
from langgraph.checkpoint.base import BaseCheckpointSaver

from ghl_real_estate_ai.errors import ConfigurationError
from ghl_real_estate_ai.persistence._codec import RECORD_FORMAT
from ghl_real_estate_ai.persistence.plain_redis import (
    DEFAULT_KEEP_EVENTS,
    DEFAULT_KEEP_LAST,
    DEFAULT_KEY_PREFIX,
    DEFAULT_TTL_SECONDS,
    AsyncPlainRedisSaver,
    PlainRedisSaver,
)
from ghl_real_estate_ai.persistence.redis_client import aconnect, connect, is_cluster_client

logger = logging.getLogger(__name__)

Mode = Literal["auto", "plain", "official"]
MODES: tuple[str, ...] = ("auto", "plain", "official")

# Module names as MODULE LIST reports them (Redis Stack, Redis 8, Redis Enterprise spell them so).
_SEARCH_NAMES = frozenset({"search", "ft", "searchlight"})
_JSON_NAMES = frozenset({"rejson", "redisjson", "json"})
# A key nobody uses, for the JSON.GET probe: it only asks whether the command exists.
_PROBE_KEY = "lead-bot:module-probe:{0}"


def _module_names(reply: Any) -> set[str]:
    names: set[str] = set()
    for entry in reply or ():
        if isinstance(entry, dict):
            name = entry.get(b"name", entry.get("name"))
        else:  # RESP2: a flat [b"name", b"search", b"ver", ...] list per module
            items = list(entry)
            name = next(
                (items[i + 1] for i in range(0, len(items) - 1, 2) if items[i] in (b"name", "name")), None
            )
        if name is not None:
            names.add((name.decode() if isinstance(name, bytes) else str(name)).lower())
    return names


def _verdict(names: set[str] | None, probes: tuple[bool, bool] | None) -> tuple[bool, bool]:
    if names is not None and (names & _SEARCH_NAMES or names & _JSON_NAMES):
        return bool(names & _SEARCH_NAMES), bool(names & _JSON_NAMES)
    return probes if probes is not None else (False, False)


def _is_unknown_command(exc: redis.ResponseError) -> bool:
    text = str(exc).lower()
    return "unknown command" in text or "unknown subcommand" in text or "not allowed" in text


def _any_node(client: Any) -> dict[str, Any]:
    """For a cluster client, where to send a command that names no key: any one node (modules are
    loaded on every node of a cluster or on none)."""
    return {"target_nodes": "random"} if is_cluster_client(client) else {}


def detect_modules(client: redis.Redis) -> tuple[bool, bool]:
    """``(has_search, has_json)`` for the server behind a blocking client.

    Reads ``MODULE LIST``; where that command is disabled or shows nothing (Redis 8 may report built-in
    modules there or not, managed services often block it), probes ``FT._LIST`` and ``JSON.GET`` on a
    key that does not exist: an "unknown command" error means the module is missing. Other errors
    (connection, auth) propagate.
    """
    names: set[str] | None = None
    try:
        names = _module_names(client.execute_command("MODULE", "LIST", **_any_node(client)))
    except redis.ResponseError:
        names = None
    if names is not None and names & _SEARCH_NAMES and names & _JSON_NAMES:
        return True, True
    return _verdict(names, (_probe_sync(client, "FT._LIST"), _probe_sync(client, "JSON.GET", _PROBE_KEY)))


def _probe_sync(client: redis.Redis, *command: str) -> bool:
    try:
        client.execute_command(*command, **_any_node(client))
    except redis.ResponseError as exc:
        return not _is_unknown_command(exc)
    return True


async def adetect_modules(client: aredis.Redis) -> tuple[bool, bool]:
    """Async form of :func:`detect_modules`."""
    names: set[str] | None = None
    try:
        names = _module_names(await client.execute_command("MODULE", "LIST", **_any_node(client)))
    except redis.ResponseError:
        names = None
    if names is not None and names & _SEARCH_NAMES and names & _JSON_NAMES:
        return True, True
    probes = (await _probe_async(client, "FT._LIST"), await _probe_async(client, "JSON.GET", _PROBE_KEY))
    return _verdict(names, probes)


async def _probe_async(client: aredis.Redis, *command: str) -> bool:
    try:
        await client.execute_command(*command, **_any_node(client))
    except redis.ResponseError as exc:
        return not _is_unknown_command(exc)
    return True


def _choose(mode: str, has: tuple[bool, bool], where: str) -> str:
    if mode not in MODES:
        raise ConfigurationError("checkpointer mode", f"must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "plain":
        return "plain"
    if all(has):
        return "official"
    if mode == "official":
        missing = " and ".join(n for n, ok in zip(("RediSearch", "RedisJSON"), has, strict=True) if not ok)
        raise ConfigurationError(
            "checkpointer mode",
            f"'official' needs the {missing} module(s), which the Redis server at {where} does not have. "
            "Use Redis Stack or Redis 8 with its modules, or choose mode 'plain' (or 'auto') to use the "
            "plain Redis checkpointer, which needs no modules.",
        )
    return "plain"


def _where(client: Any) -> str:
    kw = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {}) or {}
    if "path" in kw:
        return f"unix:{kw['path']}"
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


def _official_ttl(ttl_seconds: float | None) -> dict[str, Any] | None:
    return None if ttl_seconds is None else {"default_ttl": ttl_seconds / 60, "refresh_on_read": False}


@contextlib.contextmanager
def open_checkpointer(
    url_or_client: str | redis.Redis,
    *,
    mode: Mode | str = "auto",
    ttl_seconds: float | None = DEFAULT_TTL_SECONDS,
    keep_last: int | None = DEFAULT_KEEP_LAST,
    keep_events: int | None = DEFAULT_KEEP_EVENTS,
    key_prefix: str = DEFAULT_KEY_PREFIX,
) -> Iterator[BaseCheckpointSaver[Any]]:
    """A sync checkpointer for a Redis URL or ``redis.Redis`` client (see the module docstring).

    A client made from a URL is closed on exit; a client passed in is left open.
    """
    owned = isinstance(url_or_client, str)
    client = cast(redis.Redis, connect(url_or_client)) if isinstance(url_or_client, str) else url_or_client
    try:
        has = detect_modules(client) if mode != "plain" else (False, False)
        kind = _choose(str(mode), has, _where(client))
        logger.info("checkpointer: %s (mode=%s, search=%s, json=%s)", kind, mode, *has)
        if kind == "official":
            from langgraph.checkpoint.redis import RedisSaver

            official = RedisSaver(redis_client=client, ttl=_official_ttl(ttl_seconds))
            official.setup()
            yield official
        else:
            yield PlainRedisSaver(client, ttl_seconds=ttl_seconds, keep_last=keep_last,
                                  keep_events=keep_events, key_prefix=key_prefix)
    finally:
        if owned:
            client.close()


@contextlib.asynccontextmanager
async def open_async_checkpointer(
    url_or_client: str | aredis.Redis,
    *,
    mode: Mode | str = "auto",
    ttl_seconds: float | None = DEFAULT_TTL_SECONDS,
    keep_last: int | None = DEFAULT_KEEP_LAST,
    keep_events: int | None = DEFAULT_KEEP_EVENTS,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    record_format: int = RECORD_FORMAT,
) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """An async checkpointer for a Redis URL or ``redis.asyncio.Redis`` client (see the module docstring).

    The plain saver also gets a blocking client (made from the URL, or from the async client's
    connection settings) so that its sync methods work; clients it made are closed on exit.
    """
    owned = isinstance(url_or_client, str)
    client = (
        cast(aredis.Redis, await aconnect(url_or_client)) if isinstance(url_or_client, str) else url_or_client
    )
    try:
        has = await adetect_modules(client) if mode != "plain" else (False, False)
        kind = _choose(str(mode), has, _where(client))
        logger.info("checkpointer: %s (mode=%s, search=%s, json=%s)", kind, mode, *has)
        if kind == "official":
            from langgraph.checkpoint.redis.aio import AsyncRedisSaver

            official = AsyncRedisSaver(redis_client=client, ttl=_official_ttl(ttl_seconds))
            await official.asetup()
            yield official
        else:
            sync_client = (
                cast(redis.Redis, connect(url_or_client)) if isinstance(url_or_client, str) else None
            )
            saver = AsyncPlainRedisSaver(
                client,
                sync_client=sync_client,
                ttl_seconds=ttl_seconds,
                keep_last=keep_last,
                keep_events=keep_events,
                key_prefix=key_prefix,
                record_format=record_format,
            )
            try:
                yield saver
            finally:
                await saver.aclose()
                if sync_client is not None:
                    sync_client.close()
    finally:
        if owned:
            await client.aclose()
