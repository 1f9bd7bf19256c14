"""A simulated quarter at scale: ``lead-bot simulate`` on 10,000 leads over 90 days, with its audit.

Run (from the repository root; about 3-5 minutes on a 2-core machine)::

    .venv/bin/python benchmarks/simulate.py                     # 10,000 leads x 90 days, seed 1
    .venv/bin/python benchmarks/simulate.py --leads 2000        # a quicker look

Rows, all in this one process:

* **ceiling**: LangGraph alone: a router and one action node that do nothing, compiled with
  ``InMemorySaver``, routed with ``Command`` as the lead graph is, invoked one run at a time
  (``durability="exit"``) as the simulator invokes the lead graph. No simulator built on LangGraph
  runs events faster than this here. It is measured before and
  after the simulation, and the mean is the steady reference the simulator's rate is divided by.
* **simulate**: the quarter itself (``compliance.simulate``): world, graph runs with the in-process fakes,
  and the audit of what reached them. Events are graph runs (enrollments, cancellations, inbound
  messages and their redeliveries, due steps including late and double fires); peak memory is the
  process's peak resident set size.

Targets (issue 18): 0 violations in every class with the daily cap exercised; >= 500 events/s in one
process. The machine is shared: quote the ratio to the ceiling beside the absolute rate.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path
from typing import Any

from typing_extensions import TypedDict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ghl_real_estate_ai.compliance import simulate  # noqa: E402


class _NoopState(TypedDict, total=False):
    contact_id: str
    event: dict[str, Any]
    route: str
    done: int


async def langgraph_ceiling(runs: int, threads: int = 1000) -> float:
    """Runs per second of a no-op router + action graph (InMemorySaver), one run at a time."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command

    async def determine_path(state: _NoopState) -> Command[str]:
        return Command(update={"route": "day_3"}, goto="day_3")

    async def day_3(state: _NoopState) -> dict[str, Any]:
        return {"done": state.get("done", 0) + 1}

    builder = StateGraph(_NoopState)
    builder.add_node("determine_path", determine_path, destinations=("day_3",))
    builder.add_node("day_3", day_3)
    builder.add_edge(START, "determine_path")
    builder.add_edge("day_3", END)
    graph = builder.compile(checkpointer=InMemorySaver())
    started = time.perf_counter()
    for i in range(runs):
        await graph.ainvoke(
            {"contact_id": f"c{i % threads}", "event": {"type": "step_due", "step": "day_3"}},
            {"configurable": {"thread_id": f"c{i % threads}"}},
            durability="exit",
        )
    return runs / (time.perf_counter() - started)


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    progress("ceiling (before)")
    before = await langgraph_ceiling(args.ceiling_runs)
    progress(f"simulate {args.leads} leads x {args.days} days")
    report = await simulate(args.leads, args.days, args.seed)
    progress("ceiling (after)")
    after = await langgraph_ceiling(args.ceiling_runs)
    ceiling = (before + after) / 2
    played = report.played
    rate = played.events / played.seconds
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    violations = sum(report.counts().values())
    rows = [
        ("ceiling: LangGraph alone (no-op router + action)", f"{args.ceiling_runs:,} runs",
         f"{before:,.0f} / {after:,.0f} runs/s (before / after)", "reference", ""),
        (f"simulate: {args.leads:,} leads x {args.days} days", f"{played.events:,} events",
         f"{rate:,.0f} events/s = {rate / ceiling:.2f}x ceiling", ">= 500 events/s",
         "yes" if rate >= 500 else "NO"),
        ("simulate: peak memory (process RSS)", "", f"{peak:,.0f} MiB", "", ""),
        ("simulate: violations (all classes)", f"{report.sends:,} sends", f"{violations}", "0",
         "yes" if violations == 0 else "NO"),
        ("simulate: daily cap exercised", "", f"{report.cap_reached} leads reached 3 in 24 h", "> 0",
         "yes" if report.cap_reached else "NO"),
    ]
    headers = ("row", "size", "result", "target", "met")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    print()
    print(report.summary())
    return 0 if report.ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ceiling-runs", type=int, default=20_000)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
