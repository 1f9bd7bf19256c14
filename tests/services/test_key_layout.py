"""The start-up migration of keys renamed to share a Redis Cluster hash tag (``services.key_layout``)."""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aredis

from ghl_real_estate_ai.config import Settings
from ghl_real_estate_ai.persistence.redis_client import aconnect
from ghl_real_estate_ai.service import LeadBotService
from ghl_real_estate_ai.services.key_layout import migrate_renamed_keys, renamed_keys
from ghl_real_estate_ai.services.lead_sequence_scheduler import (
    JobTable,
    LeadJob,
    RetryBook,
    legacy_scheduler_keys,
    scheduler_keys,
)

RUN_AT = datetime(2026, 1, 8, 15, 0, tzinfo=UTC)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _write_old_layout(client: aredis.Redis, prefix: str, *contact_ids: str) -> JobTable:
    """Jobs and a retry record written as the previous release wrote them (un-tagged key names)."""
    table = JobTable(client, prefix=prefix, scheduler_name="lead-bot")
    jobs, run_times, retries = legacy_scheduler_keys(prefix)
    for cid in contact_ids:
        job = LeadJob(cid, "day_3", "2026-01-08T15:00:00Z", 0, RUN_AT)
        await client.hset(jobs, table.job_id(cid), table.encode(job))
        await client.zadd(run_times, {table.job_id(cid): RUN_AT.timestamp()})
    await client.hset(retries, contact_ids[0], '{"key": "k", "step": "day_3", "attempts": 1}')
    return table


def test_the_renamed_keys_share_one_tag() -> None:
    assert renamed_keys("lead-bot") == [
        ("lead-bot:scheduler:jobs", "{lead-bot:scheduler}:jobs"),
        ("lead-bot:scheduler:run_times", "{lead-bot:scheduler}:run_times"),
        ("lead-bot:scheduler:retries", "{lead-bot:scheduler}:retries"),
    ]


async def test_old_keys_are_renamed_once_and_read_back_by_the_new_code(client: aredis.Redis) -> None:
    table = await _write_old_layout(client, "p", "a", "b")
    assert await migrate_renamed_keys(client, prefix="p") == 3
    assert all([not await client.exists(old) for old in legacy_scheduler_keys("p")])
    job = await table.get("a")
    assert job is not None and (job.contact_id, job.step, job.run_at) == ("a", "day_3", RUN_AT)
    assert set((await table.run_times()).keys()) == {"a", "b"}
    record = await RetryBook(client, prefix="p").get("a")
    assert record is not None and record.attempts == 1

    before = {k: await client.dump(k) for k in scheduler_keys("p")}
    assert await migrate_renamed_keys(client, prefix="p") == 0  # idempotent: nothing left to move
    assert {k: await client.dump(k) for k in scheduler_keys("p")} == before


async def test_old_entries_merge_into_new_keys_and_the_new_ones_win(client: aredis.Redis) -> None:
    table = await _write_old_layout(client, "p", "a", "b")
    newer = LeadJob("a", "day_7", "2026-01-12T15:00:00Z", 0, RUN_AT.replace(day=12))
    await table.put(newer)  # a process of the new release wrote lead a meanwhile
    assert await migrate_renamed_keys(client, prefix="p") == 3
    assert await table.get("a") == newer
    b = await table.get("b")
    assert b is not None and b.step == "day_3"
    assert (await table.run_times())["a"] == newer.run_at.timestamp()
    assert all([not await client.exists(old) for old in legacy_scheduler_keys("p")])


async def test_nothing_to_move_is_a_no_op(client: aredis.Redis) -> None:
    assert await migrate_renamed_keys(client, prefix="p") == 0
    assert await client.dbsize() == 0


async def test_a_cluster_is_left_alone(redis_cluster_url: str) -> None:
    cluster = await aconnect(redis_cluster_url)
    try:
        await cluster.hset("p:scheduler:jobs", "lead:a", pickle.dumps({}))
        assert await migrate_renamed_keys(cluster, prefix="p") == 0
        assert await cluster.exists("p:scheduler:jobs") == 1
    finally:
        await cluster.aclose()


async def test_the_service_migrates_at_start_up(client: aredis.Redis, redis_url: str) -> None:
    table = await _write_old_layout(client, "lead-bot", "a")
    service = LeadBotService(Settings(redis_url=redis_url), role="operator")
    await service.start()
    try:
        assert await table.get("a") is not None
        assert not await client.exists(legacy_scheduler_keys("lead-bot")[0])
    finally:
        await service.stop()
