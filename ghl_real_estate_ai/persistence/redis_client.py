"""Open a Redis client for a URL: a cluster client when the server behind it is a Redis Cluster node.

``REDIS_URL`` may name a standalone server or any node of a Redis Cluster. :func:`connect` and
:func:`aconnect` ask the node (``INFO cluster``: ``cluster_enabled:1`` on a cluster node) and return
``redis.cluster.RedisCluster`` / ``redis.asyncio.cluster.RedisCluster`` for a cluster, which discovers the
other nodes from that one and routes every command to the node owning its key's slot, else the usual
``redis.Redis`` / ``redis.asyncio.Redis``. A server where ``INFO`` is refused counts as standalone.

On a cluster every multi-key command, script and MULTI must keep its keys in one slot; the package does
so with one ``{hash tag}`` per lead or per shared structure (see the README, "Running on Redis Cluster").
A cluster has only database 0, so a URL naming another database is a ``ConfigurationError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.cluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException
from redis.typing import ScriptTextT

from ghl_real_estate_ai.errors import ConfigurationError

__all__ = ["ClusterClient", "acluster_enabled", "aconnect", "cluster_enabled", "connect", "is_cluster_client"]

AnyRedis = redis.Redis | redis.cluster.RedisCluster
AnyAsyncRedis = aredis.Redis | acluster.RedisCluster


class _ScriptLoadingPipeline(acluster.ClusterPipeline):
    """A cluster pipeline that loads the registered scripts it calls before it runs (see
    :class:`ClusterClient`)."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = cast(ClusterClient, self.cluster_client)
        queued = getattr(self._execution_strategy, "_command_queue", ())
        await client.load_scripts(command.args for command in queued)
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except NoScriptError:
            client.forget_loaded_scripts()  # a master restarted or failed over: load them again next time
            raise


class ClusterClient(acluster.RedisCluster):
    """redis-py's async cluster client, with pipelines that call scripts as a standalone pipeline does.

    ``redis.asyncio.Pipeline`` loads every script called through it (``SCRIPT LOAD``) before it sends the
    commands; ``redis.asyncio.cluster.ClusterPipeline`` sends ``EVALSHA`` as it is, and a master that never
    saw the script answers ``NOSCRIPT``. This client remembers the scripts registered on it
    (``register_script``) and its pipelines load the ones they call on every master first, once per
    client; after a ``NOSCRIPT`` (the masters lost their scripts) they load them again on the next call.
    Script calls outside a pipeline already recover by themselves (``AsyncScript`` loads and retries).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scripts: dict[str, AsyncScript] = {}
        self._loaded: set[str] = set()

    def register_script(self, script: ScriptTextT) -> AsyncScript:  # type: ignore[override]  # redis-py types it so
        registered = super().register_script(script)
        self._scripts[registered.sha] = registered
        return registered

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> acluster.ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _ScriptLoadingPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py's own pipeline()

    async def load_scripts(self, commands: Iterable[Sequence[Any]]) -> None:
        """``SCRIPT LOAD`` (on every master) each registered script that ``commands`` call by ``EVALSHA``
        and this client has not loaded yet."""
        for args in commands:
            if not args or str(args[0]).upper() != "EVALSHA" or len(args) < 2:
                continue
            sha = args[1].decode() if isinstance(args[1], bytes) else str(args[1])
            script = self._scripts.get(sha)
            if script is not None and sha not in self._loaded:
                await self.script_load(script.script)
                self._loaded.add(sha)

    def forget_loaded_scripts(self) -> None:
        self._loaded.clear()


def _enabled(info: Any) -> bool:
    if isinstance(info, dict):
        return str(info.get("cluster_enabled", 0)) == "1"
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_enabled:1" in text


def cluster_enabled(client: redis.Redis) -> bool:
    """Whether the server behind a blocking client is a Redis Cluster node."""
    try:
        return _enabled(client.info("cluster"))
    except redis.ResponseError:  # INFO renamed or refused (some managed services): a standalone server
        return False


async def acluster_enabled(client: aredis.Redis) -> bool:
    """Async form of :func:`cluster_enabled`."""
    try:
        return _enabled(await client.info("cluster"))
    except redis.ResponseError:
        return False


def is_cluster_client(client: Any) -> bool:
    """Whether ``client`` (sync or async, or a pipeline of one) talks to a Redis Cluster."""
    return isinstance(client, redis.cluster.RedisCluster | acluster.RedisCluster)


def _database(url: str) -> int:
    parts = urlsplit(url)
    path = parts.path.strip("/")
    if parts.scheme == "unix":
        for pair in parts.query.split("&"):
            if pair.startswith("db="):
                path = pair[3:]
    try:
        return int(path or 0)
    except ValueError:
        return 0  # redis-py reports a malformed URL itself


def _probe_url(url: str) -> str:
    """``url`` without its database: a cluster node refuses ``SELECT`` of any other than 0, and the probe
    must reach the node to find out whether it is one."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return url
    return parts._replace(path="").geturl()


def _cluster_database_check(url: str) -> None:
    db = _database(url)
    if db != 0:
        raise ConfigurationError(
            "REDIS_URL",
            f"points at a Redis Cluster node but names database {db}; a cluster has only database 0: "
            "drop the /<db> from the URL",
        )


# The settings a cluster client cannot take (connection pool classes and the pool's wait timeout).
_POOL_ONLY = ("connection_pool", "connection_pool_class", "timeout")


def connect(url: str, **kwargs: Any) -> AnyRedis:
    """A blocking client for ``url``: ``RedisCluster`` for a cluster node, else ``redis.Redis``.

    ``kwargs`` go to the client (``socket_timeout=``, ``max_connections=``...). Raises redis-py's
    ``ValueError`` for a malformed URL and ``redis.ConnectionError`` when the server cannot be reached.
    """
    probe = redis.Redis.from_url(
        _probe_url(url), socket_connect_timeout=kwargs.get("socket_connect_timeout", 5)
    )
    try:
        clustered = cluster_enabled(probe)
    finally:
        probe.close()
    if not clustered:
        return redis.Redis.from_url(url, **kwargs)
    _cluster_database_check(url)
    options = {k: v for k, v in kwargs.items() if k not in _POOL_ONLY}
    return redis.cluster.RedisCluster.from_url(_probe_url(url), **options)


async def aconnect(url: str, **kwargs: Any) -> AnyAsyncRedis:
    """An async client for ``url``: a :class:`ClusterClient` (``redis.asyncio.cluster.RedisCluster``
    whose pipelines load the scripts they call) for a cluster node, else
    ``redis.asyncio.Redis`` (see :func:`connect`). ``connection_pool_class=`` (and a blocking pool's
    ``timeout=``) apply to a standalone server only; a cluster client keeps one pool per node."""
    probe = aredis.Redis.from_url(
        _probe_url(url), socket_connect_timeout=kwargs.get("socket_connect_timeout", 5)
    )
    try:
        clustered = await acluster_enabled(probe)
    finally:
        await probe.aclose()
    if not clustered:
        pool_class = kwargs.pop("connection_pool_class", None)
        if pool_class is not None:  # e.g. BlockingConnectionPool (with its wait ``timeout=``)
            return aredis.Redis.from_pool(pool_class.from_url(url, **kwargs))
        return aredis.Redis.from_url(url, **kwargs)
    _cluster_database_check(url)
    options = {k: v for k, v in kwargs.items() if k not in _POOL_ONLY}
    client = ClusterClient.from_url(_probe_url(url), **options)
    try:
        await client.initialize()
    except BaseException:
        await client.aclose()
        raise
    return client
