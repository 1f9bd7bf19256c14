"""Fixtures for the scheduling tests: an in-process Lead Bot on the test Redis (Redis checkpointer, Redis
lock, timebase, lead index, scheduler) with the in-process fakes of GHL and Retell."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, cast

# Imported now, while nothing else runs: pytest's hypothesis plugin imports it only in the terminal
# summary, and there CPython 3.11's ast.parse (pytest rewrites the module on import) failed with
# "SystemError: AST constructor recursion depth mismatch" after the multi-process tests (the AST
# constructor's depth counter is per interpreter, not per thread). Nothing in this directory uses it.
import hypothesis  # noqa: F401
import pytest
import redis.asyncio as aioredis

from ghl_real_estate_ai.agents.lead_bot import Context, build_graph
from ghl_real_estate_ai.persistence import AsyncPlainRedisSaver
from ghl_real_estate_ai.persistence.redis_client import aconnect
from ghl_real_estate_ai.services.lead_sequence_scheduler import LeadSequenceScheduler
from ghl_real_estate_ai.services.locks import RedisLeadLock
from ghl_real_estate_ai.services.runner import LeadBotRunner, summary_from_state
from ghl_real_estate_ai.services.send_ledger import RedisSendLedger, SendLedger
from ghl_real_estate_ai.services.timebase import Timebase
from ghl_real_estate_ai.testing.fakes import FakeVoice
from scheduling.support import START, Bot, LeadSequenceStateService, TimedCrm


@pytest.fixture
def make_bot(redis_url: str) -> Callable[..., contextlib.AbstractAsyncContextManager[Bot]]:
    """``async with make_bot(scale=..., crm=...) as bot``: a bot whose scheduler is built, not started."""

    @contextlib.asynccontextmanager
    async def build(
        *,
        scale: float = 86400,
        start_at: datetime = START,
        crm: TimedCrm | None = None,
        voice: FakeVoice | None = None,
        ledger: SendLedger | None = None,
        prefix: str = "t",
        name: str = "test",
        lease_ttl: float | None = 1.0,
        lock_ttl: float = 5.0,
        lock_wait: float = 5.0,
        poll_interval: float = 0.01,
        reconcile_interval: float | None = None,
        **scheduler_options: Any,
    ) -> AsyncIterator[Bot]:
        client = cast(aioredis.Redis, await aconnect(redis_url))  # a cluster client on a cluster node
        timebase = await Timebase(
            client, prefix=prefix, scale=scale, start_at=start_at, persist_interval=0.05
        ).start()
        crm = crm or TimedCrm(timebase.clock)
        voice = voice or FakeVoice(crm, timebase.clock)
        try:
            async with AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=f"{prefix}:cp") as saver:
                context = Context(
                    crm=crm,
                    voice=voice,
                    clock=timebase.clock,
                    ledger=ledger or RedisSendLedger(client, prefix=prefix),
                )
                graph = build_graph().compile(checkpointer=saver)
                lock = RedisLeadLock(client, prefix=prefix, ttl_seconds=lock_ttl, wait_seconds=lock_wait)
                runner = LeadBotRunner(graph, context, lock=lock)
                index = LeadSequenceStateService(client, prefix=prefix)
                scheduler = LeadSequenceScheduler(
                    runner,
                    redis=client,
                    redis_url=redis_url,
                    timebase=timebase,
                    index=index,
                    name=name,
                    prefix=prefix,
                    lease_ttl_seconds=lease_ttl,
                    poll_interval=poll_interval,
                    reconcile_interval=reconcile_interval,
                    **scheduler_options,
                )

                async def index_hook(contact_id: str, values: dict[str, Any]) -> None:
                    await index.update(summary_from_state(contact_id, values))

                runner.after_run.extend([index_hook, scheduler.after_run])
                try:
                    yield Bot(client, timebase, crm, runner, scheduler, index, lock)
                finally:
                    await scheduler.stop()
                    await lock.aclose()
        finally:
            await timebase.stop()
            await client.aclose()

    return build
