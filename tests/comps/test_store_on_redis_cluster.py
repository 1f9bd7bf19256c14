"""The comps store on a three-master Redis Cluster: every key under one hash tag, so an import stays one
MULTI/EXEC and the area queries' SUNION and MGET stay in one slot."""

from __future__ import annotations

import io

import pytest
import redis.asyncio as aioredis
import redis.asyncio.cluster as acluster

from comps import test_import as on_one_server
from ghl_real_estate_ai.comps.mls_import import read_mls_csv
from ghl_real_estate_ai.comps.store import DEFAULT_PREFIX, RedisCompsStore

test_import_is_idempotent_and_queryable_by_area = (
    on_one_server.test_import_is_idempotent_and_queryable_by_area
)


@pytest.fixture
def redis_url(redis_cluster_url: str) -> str:
    return redis_cluster_url


async def test_the_default_prefix_keeps_an_import_in_one_slot(redis_client: aioredis.Redis) -> None:
    assert isinstance(redis_client, acluster.RedisCluster)
    store = RedisCompsStore(redis_client, prefix=DEFAULT_PREFIX)
    result = await store.import_sales(read_mls_csv(io.StringIO(on_one_server.RESO_CSV)).sales)
    assert result.new == 4
    keys = [k async for k in redis_client.scan_iter(match="lead-bot:{comps}:*")]
    assert len(keys) > 4
    assert len({await redis_client.cluster_keyslot(k) for k in keys}) == 1
