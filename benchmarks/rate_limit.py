"""How much of GHL's request budget each per-location limiter uses, and what it costs, in virtual time.

Run it from the repository root (about 35 s; one ``redis-server`` is started for the Redis limiter)::

    .venv/bin/python benchmarks/rate_limit.py            # backlog 1000, trickle for 60 s
    .venv/bin/python benchmarks/rate_limit.py --quick    # backlog 300, trickle for 30 s (~15 s)

The exit status is 1 when a target below is missed.

Every run sends its workload through a real ``GHLClient`` over loopback HTTP to a fresh
``FakeGHLServer`` (100 requests per 10 s per location, 429 beyond), ``add_tags`` calls, 16 at a time.
Time is virtual and advances like a discrete-event simulation (:class:`EventClock`): it moves to the
next sleeper's deadline only when nothing can run and no HTTP or Redis call is on the wire, so each
request reaches the fake at an exact virtual instant. Exchanges on the wire take turns in the order the
tasks asked for them, so even the order within one instant is fixed: two runs print the same table.
``--latency`` (0.25 s) is a virtual round trip: half before the request reaches GHL, half on the way
back, inside the limiter's slot as in production.

Limiters (rows):

* **ideal**: GHL's own grant schedule, the reference: a sliding window over the instants requests
  *arrive* at GHL (it knows the latency), with the other app's steady share set aside in advance. The
  most a client can get without a 429.
* **old: block on Remaining 0**: ``SlidingWindowLimiter`` with the ``observe`` of a5554e1: any answer
  with ``X-RateLimit-Remaining: 0`` blocks the location for a whole interval (10 s).
* **new (in-process)**: ``SlidingWindowLimiter``.
* **new (Redis, shared)**: ``RedisSlidingWindowLimiter`` on the benchmark's ``redis-server``
  (``lease=1e6``: the virtual clock runs ahead of Redis's key expiry).

Workloads (sections):

* **(a) backlog**: ``--backlog`` sends offered at once.
* **(b) trickle**: 150 sends per 10 s, evenly spaced, for ``--trickle`` seconds: more than GHL grants,
  so the window fills mid-way (``Remaining: 0`` after 6.7 s) and the queue grows until the end.
* **(c) other app + backlog**: the backlog again, while another sender on the same location (its own
  token, no limiter, no retries) sends ``--other`` (40) requests per 10 s, evenly spaced, starting 10 s
  before ours. Our sends leave in lock-step waves of 16 (all answers of a wave come back at one instant).
* **(d) other app + trickle**: the same other sender beside the trickle: our sends leave one by one as
  the window frees, as they would in production.

Columns (ours = the limiter's client; windows start when the workload's first send is offered):

* ``per 10 s min/mean``: our accepted requests per full 10 s window (windows that end before our last
  request arrived).
* ``max/10s``: the most requests GHL received in any sliding 10 s window: ours with any answer plus the
  other app's accepted ones. Over 100 means we sent requests GHL had to refuse.
* ``429``: 429 answers to us (``GHLClient`` retries them); ``other 429``: to the other app, i.e. budget
  we took that it was already using.
* ``stall``: the longest time a request was waiting (offered, previous one gone) with nothing of ours
  reaching GHL. The ideal has one too: a full window has to age before the next request may go.
* ``drain``: from the first offer to the arrival of our last request.
* ``drain÷ideal`` and ``budget÷ideal``: drain time and mean accepted per window, each over the ideal's.

Targets (rows marked ``met``): the new limiters use at least 90% of the ideal's budget, get no 429, and
never put more than 100 requests in a 10 s window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random
import signal
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis

from ghl_real_estate_ai.errors import IntegrationError
from ghl_real_estate_ai.integrations.ghl import GHLClient
from ghl_real_estate_ai.integrations.rate_limit import (
    RedisSlidingWindowLimiter,
    SlidingWindowLimiter,
    Ticket,
    parse_rate_limit_headers,
)
from ghl_real_estate_ai.testing.ghl_server import FakeGHLServer
from ghl_real_estate_ai.testing.redis_server import RedisServer

LIMIT = 100
WINDOW = 10.0
START = 1_000.0  # virtual seconds; with window, latency and spacings in binary fractions, instants are exact
CONCURRENCY = 16
CONTACTS = 20
OTHER_TOKEN = "pit-00000000-other-app-000000000000000"
KINDS = ("ideal", "old", "memory", "redis")
LABELS = {
    "ideal": "ideal (GHL's grant schedule)",
    "old": "old: block on Remaining 0",
    "memory": "new (in-process)",
    "redis": "new (Redis, shared)",
}


# -- virtual time ----------------------------------------------------------------------------------


class EventClock:
    """Virtual seconds that advance to the earliest sleeper's deadline once the loop is idle.

    ``testing.fake_http.VirtualTime`` moves its clock forward by every sleep, so two actors sleeping at
    once (a pacer and a limiter) add their waits up; here concurrent sleeps overlap as they would in
    real time. Idle means: no HTTP request or Redis command on the wire (:meth:`io` brackets them) and
    nothing ready to run on the event loop. ``clock`` may be read from other threads (the fake's).
    """

    def __init__(self, start: float = START) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._on_wire = 0
        self._wire_idle = asyncio.Event()
        self._wire_idle.set()
        self._wire = asyncio.Lock()
        self._timer_added = asyncio.Event()

    def clock(self) -> float:
        with self._lock:
            return self._now

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + max(seconds, 0.0))

    async def sleep_until(self, deadline: float) -> None:
        # A zero wait still costs one ulp: a caller retrying a wait that rounds to 0 would otherwise spin
        # without ever letting the clock move.
        deadline = max(deadline, math.nextafter(self._now, math.inf))
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (deadline, next(self._order), future))
        self._timer_added.set()
        await future

    @contextlib.asynccontextmanager
    async def io(self) -> AsyncIterator[None]:
        """Bracket one exchange on the wire. Exchanges take turns (FIFO), so the order in which requests
        reach the fake at one virtual instant is the order the tasks asked, not a race between sockets."""
        self._on_wire += 1
        self._wire_idle.clear()
        try:
            async with self._wire:
                yield
        finally:
            self._on_wire -= 1
            if self._on_wire == 0:
                self._wire_idle.set()

    async def drive(self) -> None:
        """Run until cancelled: whenever the loop is idle, wake the sleepers with the earliest deadline."""
        # asyncio's run queue (CPython's BaseEventLoop): empty while this task runs means nothing else can.
        ready: deque[Any] = asyncio.get_running_loop()._ready  # type: ignore[attr-defined]
        while True:
            await asyncio.sleep(0)
            if self._on_wire:
                await self._wire_idle.wait()
                continue
            if ready:
                continue
            while self._timers and self._timers[0][2].done():  # cancelled sleepers
                heapq.heappop(self._timers)
            if not self._timers:
                self._timer_added.clear()
                try:
                    await asyncio.wait_for(self._timer_added.wait(), 30)
                except TimeoutError:
                    raise RuntimeError("virtual time is stuck: nothing runs and nobody sleeps") from None
                continue
            deadline = self._timers[0][0]
            with self._lock:
                self._now = deadline
            while self._timers and self._timers[0][0] <= deadline:
                future = heapq.heappop(self._timers)[2]
                if not future.done():
                    future.set_result(None)


async def simulate(clock: EventClock, work: Awaitable[Any]) -> Any:
    driver = asyncio.create_task(clock.drive())
    main = asyncio.ensure_future(work)
    try:
        await asyncio.wait({driver, main}, return_when=asyncio.FIRST_COMPLETED)
        if driver.done():
            main.cancel()
            driver.result()
        return main.result()
    finally:
        driver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await driver


class LatencyTransport(httpx.AsyncBaseTransport):
    """Loopback HTTP plus a virtual network delay: half of ``latency`` on the way to the server, half back."""

    def __init__(self, clock: EventClock, latency: float) -> None:
        self._clock = clock
        self._half = latency / 2
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._half:
            await self._clock.sleep(self._half)
        async with self._clock.io():
            response = await self._inner.handle_async_request(request)
            try:
                content = await response.aread()
            finally:
                await response.aclose()
        if self._half:
            await self._clock.sleep(self._half)
        return httpx.Response(response.status_code, headers=response.headers, content=content)

    async def aclose(self) -> None:
        await self._inner.aclose()


class WireCountingRedis(aioredis.Redis):
    """``redis.asyncio.Redis`` whose commands count as on the wire for the :class:`EventClock`."""

    event_clock: EventClock

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        async with self.event_clock.io():
            return await super().execute_command(*args, **options)


# -- the limiters ----------------------------------------------------------------------------------


class BlockOnRemainingZero(SlidingWindowLimiter):
    """The limiter before d1638b3: ``observe`` as in a5554e1 (the window itself is unchanged)."""

    async def observe(self, key: str, headers: Mapping[str, str], ticket: Ticket | None = None) -> None:
        remaining, interval = parse_rate_limit_headers(headers)
        if remaining is not None and remaining <= 0:
            await self.block(key, interval if interval is not None else self.window)


class IdealLimiter:
    """GHL's grant schedule: at most ``budget`` of our requests *arrive* in any ``window`` seconds.

    Knows what no client can: the arrival instant (``offset`` after the slot is granted) and the other
    sender's share (``reserved``), so it is the reference for what a limiter could use.
    """

    def __init__(self, clock: EventClock, offset: float, reserved: int) -> None:
        self._clock = clock
        self._offset = offset
        self.budget = LIMIT - reserved
        self._arrivals: deque[float] = deque()
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[Ticket | None]:
        async with self._lock:
            while True:
                arrival = self._clock.clock() + self._offset
                while self._arrivals and self._arrivals[0] <= arrival - WINDOW:
                    self._arrivals.popleft()
                if len(self._arrivals) < self.budget:
                    self._arrivals.append(arrival)
                    break
                freeing = self._arrivals[len(self._arrivals) - self.budget]
                await self._clock.sleep(freeing + WINDOW - arrival)
        yield None

    async def observe(self, key: str, headers: Mapping[str, str], ticket: Ticket | None = None) -> None:
        return None

    async def block(self, key: str, seconds: float) -> None:
        return None


# -- one run ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    offers: list[float]  # seconds after the workload's start at which each of our sends is offered
    other_per_window: int = 0  # the other app's requests per 10 s, evenly spaced

    @property
    def lead_in(self) -> float:
        """The other app runs alone for one window first: GHL's count already holds its share."""
        return WINDOW if self.other_per_window else 0.0


@dataclass
class Measures:
    per_window: list[int]
    max_in_window: int
    ours_429: int
    other_429: int
    failed: int
    stall: float
    drain: float
    real_seconds: float

    @property
    def mean(self) -> float:
        return statistics.fmean(self.per_window) if self.per_window else float("nan")


def max_in_window(times: list[float], window: float = WINDOW) -> int:
    """The most instants in any half-open interval (t - window, t], as GHL counts."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def stall(offers: list[float], arrivals: list[float]) -> float:
    """Longest gap between consecutive arrivals during which the next request was already offered."""
    worst = 0.0
    for i in range(min(len(offers), len(arrivals)) - 1):
        worst = max(worst, arrivals[i + 1] - max(arrivals[i], offers[i + 1]))
    return worst


async def make_limiter(kind: str, clock: EventClock, args: argparse.Namespace, workload: Workload,
                       redis_url: str) -> tuple[Any, Callable[[], Awaitable[None]]]:
    async def nothing() -> None:
        return None

    if kind == "ideal":
        return IdealLimiter(clock, args.latency / 2, workload.other_per_window), nothing
    if kind == "old":
        return BlockOnRemainingZero(clock=clock.clock, sleep=clock.sleep), nothing
    if kind == "memory":
        return SlidingWindowLimiter(clock=clock.clock, sleep=clock.sleep), nothing
    client = WireCountingRedis.from_url(redis_url)
    assert isinstance(client, WireCountingRedis)
    client.event_clock = clock
    limiter = RedisSlidingWindowLimiter(client, key_prefix=f"bench:{workload.key}", clock=clock.clock,
                                        sleep=clock.sleep, lease=1e6)
    return limiter, client.aclose


async def run_one(kind: str, workload: Workload, args: argparse.Namespace, redis_url: str) -> Measures:
    clock = EventClock()
    real_start = time.perf_counter()
    with FakeGHLServer(clock=clock.clock) as ghl:
        ghl.add_token(OTHER_TOKEN, ghl.location_id)
        contacts = [ghl.add_contact(phone=f"+151255501{n:02d}")["id"] for n in range(CONTACTS)]
        limiter, close_limiter = await make_limiter(kind, clock, args, workload, redis_url)
        client = GHLClient(ghl.base_url, ghl.token, ghl.location_id, rate_limiter=limiter,
                           transport=LatencyTransport(clock, args.latency), sleep=clock.sleep,
                           rng=random.Random(1))
        other = httpx.AsyncClient(base_url=ghl.base_url, transport=LatencyTransport(clock, args.latency),
                                  headers={"Authorization": f"Bearer {OTHER_TOKEN}", "Version": "2021-07-28"})
        begin = START + workload.lead_in
        offered = [begin + at for at in workload.offers]
        done = asyncio.Event()

        async def send(n: int) -> None:
            with contextlib.suppress(IntegrationError):  # retries ran out: counted from the fake's log
                await client.add_tags(contacts[n % CONTACTS], [f"ours-{n}"])

        async def worker(queue: asyncio.Queue[int | None]) -> None:
            while (n := await queue.get()) is not None:
                await send(n)

        async def offer(queue: asyncio.Queue[int | None]) -> None:
            for n, at in enumerate(offered):
                if at > clock.clock():
                    await clock.sleep_until(at)
                queue.put_nowait(n)
            for _ in range(CONCURRENCY):
                queue.put_nowait(None)

        async def other_app() -> None:
            if not workload.other_per_window:
                return
            spacing = WINDOW / workload.other_per_window
            sending: set[asyncio.Task[httpx.Response]] = set()
            for k in itertools.count():
                at = START + k * spacing
                if at > clock.clock():
                    await clock.sleep_until(at)
                if done.is_set():
                    break
                sending.add(asyncio.create_task(
                    other.post(f"/contacts/{contacts[k % CONTACTS]}/tags", json={"tags": [f"other-{k}"]})
                ))
            await asyncio.gather(*sending)

        async def workload_run() -> None:
            queue: asyncio.Queue[int | None] = asyncio.Queue()
            background = asyncio.create_task(other_app())
            if workload.lead_in:
                await clock.sleep_until(begin)
            await asyncio.gather(offer(queue), *(worker(queue) for _ in range(CONCURRENCY)))
            done.set()
            await background

        try:
            await simulate(clock, workload_run())
        finally:
            await client.aclose()
            await other.aclose()
            await close_limiter()
        requests = ghl.requests

    ours = [r for r in requests if r.header("authorization") == f"Bearer {ghl.token}"]
    theirs = [r for r in requests if r.header("authorization") == f"Bearer {OTHER_TOKEN}"]
    accepted = sorted(r.at for r in ours if r.status == 201)
    last = accepted[-1] if accepted else begin
    full_windows = int((last - begin) // WINDOW)
    per_window = [sum(1 for t in accepted if begin + WINDOW * k <= t < begin + WINDOW * (k + 1))
                  for k in range(full_windows)]
    at_server = [r.at for r in ours] + [r.at for r in theirs if r.status == 201]
    return Measures(
        per_window=per_window,
        max_in_window=max_in_window(at_server),
        ours_429=sum(1 for r in ours if r.status == 429),
        other_429=sum(1 for r in theirs if r.status == 429),
        failed=len(offered) - len(accepted),
        stall=stall(offered, accepted),
        drain=last - begin,
        real_seconds=time.perf_counter() - real_start,
    )


# -- the report ------------------------------------------------------------------------------------


def workloads(args: argparse.Namespace) -> list[Workload]:
    spacing = WINDOW / args.trickle_rate
    trickle = [k * spacing for k in range(int(args.trickle * args.trickle_rate / WINDOW))]
    backlog = [0.0] * args.backlog
    return [
        Workload("a", f"(a) backlog: {args.backlog} sends offered at once, {CONCURRENCY} at a time", backlog),
        Workload("b", f"(b) trickle: {args.trickle_rate} sends per 10 s, evenly, for {args.trickle:g} s "
                      f"({len(trickle)} sends)", trickle),
        Workload("c", f"(c) other app: the backlog of {args.backlog} while another sender on the location "
                      f"sends {args.other} per 10 s", backlog, other_per_window=args.other),
        Workload("d", f"(d) other app: the trickle of {len(trickle)} while another sender on the location "
                      f"sends {args.other} per 10 s", trickle, other_per_window=args.other),
    ]


def verdict(kind: str, m: Measures, ideal: Measures) -> bool | None:
    if kind not in ("memory", "redis"):
        return None
    return m.mean / ideal.mean >= 0.9 and m.ours_429 == 0 and m.max_in_window <= LIMIT and m.failed == 0


def print_section(workload: Workload, results: dict[str, Measures]) -> list[bool]:
    ideal = results["ideal"]
    headers = ("limiter", "per 10 s min/mean", "max/10s", "429", "other 429", "stall s", "drain s",
               "drain÷ideal", "budget÷ideal", "met")
    table = []
    verdicts = []
    for kind, m in results.items():
        ok = verdict(kind, m, ideal)
        if ok is not None:
            verdicts.append(ok)
        table.append((
            LABELS[kind] + (f" ({m.failed} failed)" if m.failed else ""),
            f"{min(m.per_window, default=0)} / {m.mean:.1f}",
            str(m.max_in_window),
            str(m.ours_429),
            str(m.other_429) if workload.other_per_window else "-",
            f"{m.stall:.2f}",
            f"{m.drain:.2f}",
            f"{m.drain / ideal.drain:.3f}",
            f"{m.mean / ideal.mean:.3f}",
            "" if ok is None else ("yes" if ok else "NO"),
        ))
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    print(workload.title)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    print()
    return verdicts


async def run(args: argparse.Namespace, redis_url: str) -> dict[str, dict[str, Measures]]:
    results: dict[str, dict[str, Measures]] = {}
    for workload in workloads(args):
        results[workload.key] = {}
        for kind in KINDS:
            measures = await run_one(kind, workload, args, redis_url)
            results[workload.key][kind] = measures
            print(f"[{time.strftime('%H:%M:%S')}] {workload.key} {kind}: {measures.real_seconds:.1f} s real",
                  file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="backlog 300, trickle for 30 s")
    parser.add_argument("--backlog", type=int, default=1000, help="sends offered at once (a, c)")
    parser.add_argument("--trickle", type=float, default=60.0, help="virtual seconds of the trickle (b, d)")
    parser.add_argument("--trickle-rate", type=int, default=150, help="trickle sends per 10 s")
    parser.add_argument("--other", type=int, default=40, help="the other app's requests per 10 s (c, d)")
    parser.add_argument("--latency", type=float, default=0.25, help="virtual round trip to GHL, seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.backlog, args.trickle = 300, 30.0
    logging.basicConfig(level=logging.ERROR)  # GHLClient logs each 429 retry; the table counts them
    # SIGTERM unwinds like Ctrl-C, so the benchmark's redis-server is stopped and its directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    with RedisServer() as server:
        results = asyncio.run(run(args, server.url))
    print()
    verdicts = []
    for workload in workloads(args):
        verdicts += print_section(workload, results[workload.key])
    old = []
    for key, runs in results.items():
        m, ideal = runs["old"], runs["ideal"]
        old.append(f"({key}) {m.mean / ideal.mean:.0%} of the budget, drain x{m.drain / ideal.drain:.2f}, "
                   f"stall {m.stall:.1f} s, {m.ours_429} 429s")
    print("old limiter (block on Remaining 0):\n  " + "\n  ".join(old))
    print(f"targets (met): new limiters use >= 90% of the ideal's budget per 10 s, get no 429, and put no "
          f"more than {LIMIT} requests in any 10 s window at GHL")
    print(f"(virtual time; round trip {args.latency:g} s; {CONCURRENCY} sends at a time; "
          f"total {time.perf_counter() - started:.0f} s real)")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
