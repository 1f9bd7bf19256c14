"""How a checkpointer is chosen: module detection, forced modes, the official saver on a modules server."""

from __future__ import annotations

import os
import uuid

import pytest
import redis
import redis.asyncio as aredis
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from ghl_real_estate_ai.config import Settings
from ghl_real_estate_ai.errors import ConfigurationError
from ghl_real_estate_ai.persistence import (
    AsyncPlainRedisSaver,
    PlainRedisSaver,
    adetect_modules,
    detect_modules,
    open_async_checkpointer,
    open_checkpointer,
)
from ghl_real_estate_ai.persistence._codec import Keys

MODULES_URL = os.environ.get("LEAD_BOT_TEST_REDIS_MODULES_URL")


class Counter(TypedDict, total=False):
    n: int


def counter_graph() -> StateGraph:
    builder = StateGraph(Counter)
    builder.add_node("inc", lambda s: {"n": s.get("n", 0) + 1})
    builder.add_edge(START, "inc")
    builder.add_edge("inc", END)
    return builder


def test_detects_no_modules_on_plain_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert detect_modules(client) == (False, False)
    finally:
        client.close()


async def test_async_detection_agrees(redis_url: str) -> None:
    client = aredis.Redis.from_url(redis_url)
    try:
        assert await adetect_modules(client) == (False, False)
    finally:
        await client.aclose()


def test_auto_picks_the_plain_saver_and_it_works(redis_url: str, key_prefix: str) -> None:
    with open_checkpointer(redis_url, key_prefix=key_prefix, ttl_seconds=60, keep_last=7) as saver:
        assert isinstance(saver, PlainRedisSaver)
        assert (saver.ttl_seconds, saver.keep_last, saver.key_prefix) == (60, 7, key_prefix)
        graph = counter_graph().compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "open:1"}}
        graph.invoke({"n": 1}, config)
        assert graph.get_state(config).values == {"n": 2}


def test_a_client_passed_in_stays_open(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with open_checkpointer(client, mode="plain") as saver:
        assert isinstance(saver, PlainRedisSaver)
    assert client.ping()
    client.close()


def test_forcing_official_without_modules_fails_clearly(redis_url: str) -> None:
    with pytest.raises(ConfigurationError) as caught, open_checkpointer(redis_url, mode="official"):
        pass  # pragma: no cover - never entered
    message = str(caught.value)
    assert "RediSearch and RedisJSON" in message
    assert "mode 'plain'" in message and "Redis Stack" in message
    assert "FT.INFO" not in message


async def test_async_auto_and_forced_modes(redis_url: str, key_prefix: str) -> None:
    async with open_async_checkpointer(redis_url, key_prefix=key_prefix) as saver:
        assert isinstance(saver, AsyncPlainRedisSaver)
        graph = counter_graph().compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "open:async"}}
        await graph.ainvoke({"n": 5}, config)
        assert graph.get_state(config).values == {"n": 6}  # the sync side works too
    with pytest.raises(ConfigurationError, match="does not have"):
        async with open_async_checkpointer(redis_url, mode="official"):
            pass  # pragma: no cover
    with pytest.raises(ConfigurationError, match="must be one of"):
        async with open_async_checkpointer(redis_url, mode="fastest"):
            pass  # pragma: no cover


@pytest.mark.modules
@pytest.mark.skipif(
    not MODULES_URL,
    reason="set LEAD_BOT_TEST_REDIS_MODULES_URL to a Redis with RediSearch and RedisJSON (Redis Stack / 8)",
)
def test_official_saver_on_a_modules_server() -> None:
    assert MODULES_URL is not None
    client = redis.Redis.from_url(MODULES_URL)
    try:
        assert detect_modules(client) == (True, True)
        thread = f"open:official:{uuid.uuid4().hex}"
        with open_checkpointer(client, ttl_seconds=600) as saver:
            from langgraph.checkpoint.redis import RedisSaver

            assert isinstance(saver, RedisSaver)
            graph = counter_graph().compile(checkpointer=saver)
            config = {"configurable": {"thread_id": thread}}
            graph.invoke({"n": 1}, config)
            assert graph.get_state(config).values == {"n": 2}
            saver.delete_thread(thread)
        with open_checkpointer(client, mode="plain", key_prefix=f"test-{uuid.uuid4().hex[:8]}") as plain:
            assert isinstance(plain, PlainRedisSaver)
    finally:
        client.close()


async def test_the_service_setting_picks_the_record_format(redis_url: str, key_prefix: str) -> None:
    """LEAD_BOT_CHECKPOINT_FORMAT=2 makes the service write what the release before reads."""
    assert Settings.from_env({}, dotenv=None).checkpoint_format == 3
    settings = Settings.from_env({"LEAD_BOT_CHECKPOINT_FORMAT": "2"}, dotenv=None)
    assert settings.checkpoint_format == 2
    with pytest.raises(ConfigurationError, match="LEAD_BOT_CHECKPOINT_FORMAT"):
        Settings.from_env({"LEAD_BOT_CHECKPOINT_FORMAT": "4"}, dotenv=None)
    async with open_async_checkpointer(
        redis_url, mode="plain", key_prefix=key_prefix, record_format=settings.checkpoint_format
    ) as saver:
        graph = counter_graph().compile(checkpointer=saver)
        for n in range(3):
            await graph.ainvoke({"n": n}, {"configurable": {"thread_id": "open:format"}})
    client = redis.Redis.from_url(redis_url)
    fields = client.hgetall(Keys(key_prefix, "open:format").ns_keys("")[0])
    assert {v[0] for f, v in fields.items() if f[:1] == b"c"} == {2}  # whole format-2 records only
    client.close()
