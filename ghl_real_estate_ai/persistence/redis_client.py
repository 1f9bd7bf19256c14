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

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.cluster

from ghl_real_estate_ai.errors import ConfigurationError

__all__ = ["acluster_enabled", "aconnect", "cluster_enabled", "connect", "is_cluster_client"]

AnyRedis = redis.Redis | redis.cluster.RedisCluster
AnyAsyncRedis = aredis.Redis | acluster.RedisCluster


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
    """An async client for ``url``: ``redis.asyncio.cluster.RedisCluster`` for a cluster node, else
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
    client = acluster.RedisCluster.from_url(_probe_url(url), **options)
    try:
        await client.initialize()
    except BaseException:
        await client.aclose()
        raise
    return client
