"""The shared GHL rate limiter on a three-master Redis Cluster: the single-server tests of the Redis
limiter again (``redis_url`` names a cluster node here), and one location's keys in one slot."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
import redis.asyncio.cluster as acluster

from ghl_real_estate_ai.integrations.rate_limit import RedisSlidingWindowLimiter
from integrations import test_rate_limit as on_one_server
from integrations.test_rate_limit import redis_pair as redis_pair  # the fixture, here on cluster clients

test_redis_limiter_shares_one_budget_between_two_clients = (
    on_one_server.test_redis_limiter_shares_one_budget_between_two_clients
)
test_redis_block_is_seen_by_the_other_process = on_one_server.test_redis_block_is_seen_by_the_other_process
test_redis_limiter_in_flight_slots_hold_the_budget = (
    on_one_server.test_redis_limiter_in_flight_slots_hold_the_budget
)
test_redis_limiter_reclaims_slots_of_a_dead_process = (
    on_one_server.test_redis_limiter_reclaims_slots_of_a_dead_process
)
test_another_senders_requests_shrink_the_budget = (
    on_one_server.test_another_senders_requests_shrink_the_budget
)


@pytest.fixture
def redis_url(redis_cluster_url: str) -> str:
    return redis_cluster_url


async def test_one_locations_keys_share_a_slot(redis_client: aioredis.Redis, key_prefix: str) -> None:
    assert isinstance(redis_client, acluster.RedisCluster)
    limiter = RedisSlidingWindowLimiter(redis_client, key_prefix=key_prefix)
    slots = {await redis_client.cluster_keyslot(k) for k in limiter._all_keys("LOC-1")}
    assert len(slots) == 1
