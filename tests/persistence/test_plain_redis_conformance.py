"""The langgraph-checkpoint-conformance suite (0.0.2) against both plain Redis savers, on a real server.

Every capability, base and extended (delete_for_runs, copy_thread, prune), must be detected and pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio.cluster
import redis.cluster
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES

from ghl_real_estate_ai.persistence import AsyncPlainRedisSaver, PlainRedisSaver


class _KeepsNothing(dict):  # type: ignore[type-arg]
    def __setitem__(self, key: object, value: object) -> None:
        pass


@pytest.mark.parametrize("kind", ["sync", "sync-parsing", "async"])
async def test_conformance_all_capabilities(kind: str, redis_url: str, key_prefix: str) -> None:
    async def factory() -> AsyncIterator[BaseCheckpointSaver[str]]:
        if kind.startswith("sync"):
            with PlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as saver:
                if kind == "sync-parsing":
                    # no read is served from what the saver kept of its own last put: every record
                    # read back is parsed from its stored bytes
                    saver._written = _KeepsNothing()
                yield saver
        else:
            async with AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as asaver:
                yield asaver

    registered = checkpointer_test(name=f"plain-redis-{kind}")(factory)
    report = await validate(registered)

    failures = {cap: res.failures for cap, res in report.results.items() if res.failures}
    assert not failures, failures
    for capability in ALL_CAPABILITIES:
        result = report.results[capability.value]
        assert result.detected, f"{capability.value} not detected"
        assert result.passed, f"{capability.value}: {result.failures}"
        assert result.tests_passed > 0 and result.tests_failed == 0
    assert report.passed_all()
    assert report.conformance_level() == "FULL"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_conformance_all_capabilities_on_redis_cluster(
    kind: str, redis_cluster_url: str, key_prefix: str
) -> None:
    """The same suite on a three-master Redis Cluster: ``from_conn_string`` detects it and uses cluster
    clients, and no script, MULTI or pipeline of the saver crosses a slot."""

    async def factory() -> AsyncIterator[BaseCheckpointSaver[str]]:
        if kind == "sync":
            with PlainRedisSaver.from_conn_string(redis_cluster_url, key_prefix=key_prefix) as saver:
                assert isinstance(saver.client, redis.cluster.RedisCluster)
                yield saver
        else:
            async with AsyncPlainRedisSaver.from_conn_string(
                redis_cluster_url, key_prefix=key_prefix
            ) as asaver:
                assert isinstance(asaver.client, redis.asyncio.cluster.RedisCluster)
                yield asaver

    report = await validate(checkpointer_test(name=f"plain-redis-cluster-{kind}")(factory))
    failures = {cap: res.failures for cap, res in report.results.items() if res.failures}
    assert not failures, failures
    assert report.passed_all()
    assert report.conformance_level() == "FULL"
