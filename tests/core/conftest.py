"""Graph tests run on every checkpointer backend through one parametrised fixture."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from ghl_real_estate_ai.persistence import AsyncPlainRedisSaver, PlainRedisSaver


@pytest.fixture(params=["memory", "redis-async", "redis-sync"])
async def checkpointer(
    request: pytest.FixtureRequest, redis_server_url: str
) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """InMemorySaver, AsyncPlainRedisSaver and PlainRedisSaver, each on its own key prefix."""
    prefix = f"test-cp-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        yield InMemorySaver()
    elif request.param == "redis-async":
        async with AsyncPlainRedisSaver.from_conn_string(redis_server_url, key_prefix=prefix) as saver:
            yield saver
            for thread in {t.config["configurable"]["thread_id"] async for t in saver.alist(None)}:
                await saver.adelete_thread(thread)
    else:
        with PlainRedisSaver.from_conn_string(redis_server_url, key_prefix=prefix) as sync_saver:
            yield sync_saver
            for thread in {t.config["configurable"]["thread_id"] for t in sync_saver.list(None)}:
                sync_saver.delete_thread(thread)
