"""The lead index stays consistent with the graph state: rebuilt from the states, it equals the live one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from ghl_real_estate_ai.demo import demo_leads
from ghl_real_estate_ai.persistence import AsyncPlainRedisSaver
from ghl_real_estate_ai.sandbox.simulation import Simulation
from ghl_real_estate_ai.services.lead_sequence_state_service import LeadSequenceStateService
from ghl_real_estate_ai.services.runner import summary_from_state

START = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url)
    yield redis
    await redis.aclose()


async def test_index_rebuilt_from_state_equals_the_live_index(client: aioredis.Redis, redis_url: str) -> None:
    live = LeadSequenceStateService(client, prefix="live")
    async with AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix="idx-cp") as saver:
        sim = Simulation(START, checkpointer=saver)

        async def update_index(contact_id: str, values: dict[str, Any]) -> None:
            await live.update(summary_from_state(contact_id, values))

        sim.runner.after_run.append(update_index)
        for lead in demo_leads():
            sim.add_lead(lead.record)
            for delta, event in lead.script:
                sim.schedule(START + delta, lead.record["id"], event)  # type: ignore[arg-type]
        await sim.enroll_all()
        await sim.run_until(START + timedelta(days=60))

        counts = await live.counts()
        assert counts["qualified"] == 1 and counts["opted_out"] == 1 and counts["nurture"] == 4
        due = await live.due_before(START + timedelta(days=120), limit=None)
        assert {cid for cid, _ in due} == {"demo-maria", "demo-dev", "demo-sam", "demo-kai"}
        assert [cid for cid, _ in due] == sorted((cid for cid, _ in due), key=dict(due).__getitem__)

        rebuilt = LeadSequenceStateService(client, prefix="rebuilt")
        summaries = [summary_from_state(cid, await sim.state(cid)) for cid in sim.contact_ids]
        await rebuilt.rebuild(summaries)
        assert await rebuilt.snapshot() == await live.snapshot()

        # A lost index update (say, a crash between the checkpoint and the hook) is repaired by a rebuild.
        await live.remove("demo-maria")
        assert await live.snapshot() != await rebuilt.snapshot()
        await live.rebuild(summaries)
        assert await live.snapshot() == await rebuilt.snapshot()
