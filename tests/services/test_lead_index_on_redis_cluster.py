"""The lead index on a three-master Redis Cluster: the single-server tests again (``redis_url`` names a
cluster node here), and every index key in one slot."""

from __future__ import annotations

import pytest
import redis.asyncio.cluster as acluster
import test_lead_index as on_one_server
from test_lead_index import index as index  # the fixture, here on a cluster client

from ghl_real_estate_ai.services.lead_sequence_state_service import STATUSES, LeadSequenceStateService

test_update_moves_between_status_sets_and_the_due_set = (
    on_one_server.test_update_moves_between_status_sets_and_the_due_set
)
test_get_round_trips_extra_keys_and_remove = on_one_server.test_get_round_trips_extra_keys_and_remove
test_due_before_is_inclusive_limited_and_exact = on_one_server.test_due_before_is_inclusive_limited_and_exact
test_by_status_pages_and_all_ids = on_one_server.test_by_status_pages_and_all_ids
test_cleanup_removes_only_old_finished_leads = on_one_server.test_cleanup_removes_only_old_finished_leads
test_rebuild_from_summaries_equals_the_live_index = (
    on_one_server.test_rebuild_from_summaries_equals_the_live_index
)
test_invalid_summaries_are_rejected = on_one_server.test_invalid_summaries_are_rejected


@pytest.fixture
def redis_url(redis_cluster_url: str) -> str:
    return redis_cluster_url


async def test_every_index_key_is_in_one_slot(index: LeadSequenceStateService) -> None:
    client = index.client
    assert isinstance(client, acluster.RedisCluster)
    names = [index._lead_key(), index._due_key(), *(index._status_key(s) for s in STATUSES)]
    assert len({await client.cluster_keyslot(k) for k in names}) == 1
