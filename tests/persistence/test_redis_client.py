"""Choosing the client for a URL: a standalone server gets the usual client, a cluster node a cluster one."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.cluster

from ghl_real_estate_ai.errors import ConfigurationError
from ghl_real_estate_ai.persistence import AsyncPlainRedisSaver
from ghl_real_estate_ai.persistence.redis_client import (
    acluster_enabled,
    aconnect,
    cluster_enabled,
    connect,
    is_cluster_client,
)


def test_standalone_server_gets_a_plain_client_on_the_database_of_the_url(redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/3"
    client = connect(url)
    try:
        assert type(client) is redis.Redis
        assert not is_cluster_client(client)
        assert client.connection_pool.connection_kwargs["db"] == 3
        assert not cluster_enabled(client)
    finally:
        client.close()


def test_cluster_node_gets_a_cluster_client_that_reaches_every_master(redis_cluster_url: str) -> None:
    client = connect(redis_cluster_url)
    try:
        assert isinstance(client, redis.cluster.RedisCluster)
        assert is_cluster_client(client)
        assert len(client.get_primaries()) == 3
        for i in range(30):  # keys land on all three masters
            client.set(f"k{i}", i)
        assert sorted(int(client.get(f"k{i}") or 0) for i in range(30)) == list(range(30))
        owners = {client.get_node_from_key(f"k{i}").name for i in range(30)}
        assert len(owners) == 3
    finally:
        client.close()


async def test_async_detection(redis_url: str, redis_cluster_url: str) -> None:
    plain = await aconnect(redis_url)
    clustered = await aconnect(redis_cluster_url)
    try:
        assert type(plain) is aredis.Redis and not await acluster_enabled(plain)
        assert isinstance(clustered, acluster.RedisCluster) and is_cluster_client(clustered)
        await clustered.set("{lead}:a", "1")
        assert await clustered.get("{lead}:a") == b"1"
    finally:
        await plain.aclose()
        await clustered.aclose()


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_cluster_url_naming_another_database_is_a_configuration_error(
    redis_cluster_url: str, asynchronous: bool
) -> None:
    url = redis_cluster_url.rstrip("/") + "/2"
    with pytest.raises(ConfigurationError, match="only database 0"):
        if asynchronous:
            await aconnect(url)
        else:
            connect(url)


async def test_the_service_holds_a_cluster_client_on_a_cluster_node(redis_cluster_url: str) -> None:
    from ghl_real_estate_ai.config import Settings
    from ghl_real_estate_ai.service import LeadBotService

    service = LeadBotService(Settings(redis_url=redis_cluster_url), role="operator")
    await service.start()
    try:
        assert isinstance(service.redis, acluster.RedisCluster)
        # the auto mode found no modules through the cluster client and chose the plain saver on it
        saver = service.graph.checkpointer
        assert isinstance(saver, AsyncPlainRedisSaver) and saver.client is service.redis
        config = {"configurable": {"thread_id": "nobody"}}
        assert (await service.graph.aget_state(config)).values == {}
        # its sync methods (graph.get_state from sync code) get a blocking cluster client of their own
        assert saver.get_tuple(config) is None
        assert isinstance(saver._sync(), redis.cluster.RedisCluster)
    finally:
        await service.stop()


async def test_the_service_refuses_a_cluster_url_with_a_database_in_one_line(redis_cluster_url: str) -> None:
    from ghl_real_estate_ai.config import Settings
    from ghl_real_estate_ai.service import LeadBotService

    service = LeadBotService(Settings(redis_url=redis_cluster_url.rstrip("/") + "/1"), role="operator")
    with pytest.raises(ConfigurationError, match=r"REDIS_URL: .*only database 0"):
        await service.start()


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_the_saver_refuses_a_decoding_cluster_client(
    redis_cluster_url: str, asynchronous: bool
) -> None:
    from ghl_real_estate_ai.persistence import PlainRedisSaver

    if asynchronous:
        client = acluster.RedisCluster.from_url(redis_cluster_url, decode_responses=True)
        try:
            with pytest.raises(ValueError, match="decode_responses=False"):
                AsyncPlainRedisSaver(client)
        finally:
            await client.aclose()
    else:
        sync = redis.cluster.RedisCluster.from_url(redis_cluster_url, decode_responses=True)
        try:
            with pytest.raises(ValueError, match="decode_responses=False"):
                PlainRedisSaver(sync)
        finally:
            sync.close()


async def test_scripts_called_in_a_cluster_pipeline_are_loaded_first(redis_cluster_url: str) -> None:
    """A standalone pipeline loads the scripts it calls before it runs; redis-py's cluster pipeline sends
    EVALSHA blind and fails with NOSCRIPT on a master that never saw the script. The cluster client of
    ``aconnect`` loads them, on every master, and again after the masters lost them."""
    client = await aconnect(redis_cluster_url)
    try:
        script = client.register_script("return redis.call('INCR', KEYS[1])  -- pipeline-load test")
        keys = [f"counter-{i}" for i in range(12)]  # on all three masters

        async def run() -> list[int]:
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    await script(keys=[key], client=pipe)
                return [int(n) for n in await pipe.execute()]

        assert await run() == [1] * 12
        assert await run() == [2] * 12
        await client.script_flush()  # every master forgets its scripts (a restart, a failover)
        with pytest.raises(redis.exceptions.NoScriptError):
            await run()  # the commands before the failing one may have run: a caller retries (idempotently)
        counts = [int(await client.get(k) or 0) for k in keys]
        assert await run() == [n + 1 for n in counts]
    finally:
        await client.aclose()


async def test_an_async_saver_on_a_cluster_client_not_yet_used_derives_its_blocking_client(
    redis_cluster_url: str,
) -> None:
    client = acluster.RedisCluster.from_url(redis_cluster_url)  # not initialised: no node known yet
    saver = AsyncPlainRedisSaver(client)
    try:
        assert saver.get_tuple({"configurable": {"thread_id": "nobody"}}) is None  # sync use comes first
        assert isinstance(saver._sync(), redis.cluster.RedisCluster)
    finally:
        await saver.aclose()
        await client.aclose()
