"""A scheduler worker process for the multi-process tests: ``python -m
ghl_real_estate_ai.testing.worker_main --redis-url ... --ghl-url ... --retell-url ...``.

It assembles what ``lead-bot serve`` runs minus the web layer: the Redis checkpointer, the GHL and Retell
HTTP clients (pointed at the fakes' URLs), the Redis send ledger, lead lock and lead index, the runner and
the ``LeadSequenceScheduler``. It prints ``ready`` once the scheduler runs and shuts down cleanly (lease
released) on SIGTERM/SIGINT. Being an entry point, it may read its environment: every option falls back
to ``LEAD_BOT_WORKER_<OPTION>``.

:func:`open_stack` builds the same objects in-process, so a test can enroll leads exactly as a worker
would run them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis import Redis as SyncRedis

from ghl_real_estate_ai import heap
from ghl_real_estate_ai.agents.lead_bot import Context, build_graph
from ghl_real_estate_ai.integrations.ghl import GHLClient
from ghl_real_estate_ai.integrations.rate_limit import SlidingWindowLimiter
from ghl_real_estate_ai.integrations.retell import RetellClient
from ghl_real_estate_ai.persistence import AsyncPlainRedisSaver
from ghl_real_estate_ai.services.lead_sequence_scheduler import LeadSequenceScheduler
from ghl_real_estate_ai.services.lead_sequence_state_service import LeadSequenceStateService
from ghl_real_estate_ai.services.locks import RedisLeadLock
from ghl_real_estate_ai.services.runner import LeadBotRunner, summary_from_state
from ghl_real_estate_ai.services.send_ledger import RedisSendLedger
from ghl_real_estate_ai.services.timebase import Timebase

log = logging.getLogger(__name__)

# The fakes' default credentials (``testing.ghl_server`` / ``testing.retell_server``); repeated here so the
# worker does not import the test servers (and their web stack) just for four strings.
FAKE_GHL_TOKEN = "pit-00000000-test-lead-bot-0000-000000000000"
FAKE_RETELL_FROM_NUMBER = "+15125550100"
FAKE_RETELL_AGENT_ID = "agent_test_lead_bot_000000000001"


@dataclass
class WorkerConfig:
    """Everything a worker needs; the defaults are the service's (tests shorten the lease and lock TTLs)."""

    redis_url: str
    ghl_url: str
    retell_url: str
    prefix: str = "lead-bot"
    name: str = "lead-bot"
    scale: float = 1.0
    start_at: datetime | None = None
    lease_ttl: float = 10.0
    lock_ttl: float = 30.0
    lock_wait: float = 10.0
    concurrency: int = 16
    poll_interval: float | None = None
    reconcile_interval: float | None = 300.0
    ghl_token: str = FAKE_GHL_TOKEN
    location_id: str = "LeadBotTestLocation1"
    retell_key: str = ""
    retell_from: str = FAKE_RETELL_FROM_NUMBER
    retell_agent: str = FAKE_RETELL_AGENT_ID


@dataclass
class Stack:
    """The assembled worker: start ``scheduler`` to fire; ``runner`` enrolls and dispatches."""

    config: WorkerConfig
    redis: aioredis.Redis
    timebase: Timebase
    runner: LeadBotRunner
    scheduler: LeadSequenceScheduler
    index: LeadSequenceStateService
    lock: RedisLeadLock
    ghl: GHLClient
    retell: RetellClient


@contextlib.asynccontextmanager
async def open_stack(config: WorkerConfig) -> AsyncIterator[Stack]:
    """Build the worker's objects (the scheduler is created, not started); close them all on exit.

    Order (the same ``lead-bot serve`` needs): Redis client -> Timebase (started) -> checkpointer ->
    HTTP clients -> graph context (clock = the timebase's clock) -> lock -> runner -> lead index and
    scheduler, both registered as runner hooks.
    """
    redis = blocking_client(config.redis_url)
    timebase = Timebase(redis, prefix=config.prefix, scale=config.scale, start_at=config.start_at)
    await timebase.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            saver_client = blocking_client(config.redis_url)
            stack.push_async_callback(saver_client.aclose)
            sync_client = SyncRedis.from_url(config.redis_url)
            stack.callback(sync_client.close)
            saver = AsyncPlainRedisSaver(
                saver_client, sync_client=sync_client, key_prefix=f"{config.prefix}:cp"
            )
            # No client-side rate limiting beyond the fake's: a burst must not stall on a 100/10 s budget.
            ghl = GHLClient(
                config.ghl_url, config.ghl_token, config.location_id,
                rate_limiter=SlidingWindowLimiter(max_requests=1_000_000, window=1.0),
            )
            stack.push_async_callback(ghl.aclose)
            retell = RetellClient(config.retell_url, config.retell_key or _fake_retell_key(),
                                  config.retell_from, config.retell_agent)
            stack.push_async_callback(retell.aclose)
            context = Context(
                crm=ghl,
                voice=retell,
                clock=timebase.clock,
                ledger=RedisSendLedger(redis, prefix=config.prefix),
            )
            graph = build_graph().compile(checkpointer=saver)
            lock = RedisLeadLock(redis, prefix=config.prefix, ttl_seconds=config.lock_ttl,
                                 wait_seconds=config.lock_wait)
            stack.push_async_callback(lock.aclose)
            runner = LeadBotRunner(graph, context, lock=lock)
            index = LeadSequenceStateService(redis, prefix=config.prefix)
            scheduler = LeadSequenceScheduler(
                runner,
                redis=redis,
                redis_url=config.redis_url,
                timebase=timebase,
                index=index,
                name=config.name,
                prefix=config.prefix,
                lease_ttl_seconds=config.lease_ttl,
                max_concurrency=config.concurrency,
                poll_interval=config.poll_interval,
                reconcile_interval=config.reconcile_interval,
            )
            stack.push_async_callback(scheduler.stop)

            async def index_hook(contact_id: str, values: dict[str, Any]) -> None:
                await index.update(summary_from_state(contact_id, values))

            runner.after_run.extend([index_hook, scheduler.after_run])
            yield Stack(config, redis, timebase, runner, scheduler, index, lock, ghl, retell)
    finally:
        await timebase.stop()
        await redis.aclose()


def blocking_client(url: str, max_connections: int = 256) -> aioredis.Redis:
    """An async client whose pool waits for a free connection: redis-py's default async pool raises
    ``MaxConnectionsError`` at 100, which concurrent lead runs (lock, saver writes, hooks) can reach."""
    return aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections)
    )


def _fake_retell_key() -> str:
    from ghl_real_estate_ai.testing.keys import TEST_RETELL_API_KEY

    return TEST_RETELL_API_KEY


def _parser() -> argparse.ArgumentParser:
    def env(name: str, default: str | None = None) -> str | None:
        return os.environ.get(f"LEAD_BOT_WORKER_{name.upper().replace('-', '_')}", default)

    p = argparse.ArgumentParser(prog="worker_main", description=__doc__.split("\n\n")[0])
    p.add_argument("--redis-url", default=env("redis-url"), required=env("redis-url") is None)
    p.add_argument("--ghl-url", default=env("ghl-url"), required=env("ghl-url") is None)
    p.add_argument("--retell-url", default=env("retell-url"), required=env("retell-url") is None)
    p.add_argument("--prefix", default=env("prefix", "lead-bot"))
    p.add_argument("--name", default=env("name", "lead-bot"))
    p.add_argument("--scale", type=float, default=float(env("scale", "1") or 1))
    p.add_argument("--start-at", default=env("start-at"))
    p.add_argument("--lease-ttl", type=float, default=float(env("lease-ttl", "10") or 10))
    p.add_argument("--lock-ttl", type=float, default=float(env("lock-ttl", "30") or 30))
    p.add_argument("--lock-wait", type=float, default=float(env("lock-wait", "10") or 10))
    p.add_argument("--concurrency", type=int, default=int(env("concurrency", "16") or 16))
    p.add_argument("--poll-interval", type=float, default=None)
    p.add_argument("--reconcile-interval", type=float, default=float(env("reconcile-interval", "300") or 300))
    p.add_argument("--location-id", default=env("location-id", "LeadBotTestLocation1"))
    p.add_argument("--log-level", default=env("log-level", "WARNING"))
    return p


def config_from_args(argv: Sequence[str] | None = None) -> tuple[WorkerConfig, argparse.Namespace]:
    args = _parser().parse_args(argv)
    start_at = datetime.fromisoformat(args.start_at.replace("Z", "+00:00")) if args.start_at else None
    config = WorkerConfig(
        redis_url=args.redis_url,
        ghl_url=args.ghl_url,
        retell_url=args.retell_url,
        prefix=args.prefix,
        name=args.name,
        scale=args.scale,
        start_at=start_at,
        lease_ttl=args.lease_ttl,
        lock_ttl=args.lock_ttl,
        lock_wait=args.lock_wait,
        concurrency=args.concurrency,
        poll_interval=args.poll_interval,
        reconcile_interval=args.reconcile_interval,
        location_id=args.location_id,
    )
    return config, args


async def serve(config: WorkerConfig) -> None:
    """Run the scheduler until SIGTERM/SIGINT, then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_stack(config) as stack:
        await stack.scheduler.start()
        heap.settle()  # as lead-bot serve does once started
        print("ready", flush=True)
        await stop.wait()
        log.warning("worker %s stopping: %s", os.getpid(), stack.scheduler.stats)


def main(argv: Sequence[str] | None = None) -> int:
    config, args = config_from_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
