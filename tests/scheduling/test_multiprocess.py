"""Scheduler worker processes (``testing.worker_main``) on one Redis, talking HTTP to the fake GHL and
Retell servers that live in this test process: SIGKILL mid-burst, leader handover, downtime.

Every step is counted where it lands: the fakes' recorded SMS/email and call requests, across processes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ghl_real_estate_ai.sequence import parse_time
from ghl_real_estate_ai.testing.fake_http import Fault
from ghl_real_estate_ai.testing.ghl_server import FakeGHLServer
from ghl_real_estate_ai.testing.retell_server import FakeRetellServer
from ghl_real_estate_ai.testing.worker_main import Stack, WorkerConfig, open_stack
from scheduling.support import START, wait_for

pytestmark = pytest.mark.slow

SCALE = 1.5 * 86_400  # 1.5 virtual days per real second: day_7 at +2.7 s, day_14 at +7.3 s, day_30 at +18 s
PREFIX = "mp"


class Worker:
    """One ``worker_main`` subprocess; its log goes to a file that a failing test prints."""

    def __init__(self, config: WorkerConfig, log_dir: Path, label: str, *, concurrency: int = 1) -> None:
        self.label = label
        self.log_path = log_dir / f"worker-{label}.log"
        args = [
            sys.executable,
            "-m",
            "ghl_real_estate_ai.testing.worker_main",
            "--redis-url",
            config.redis_url,
            "--ghl-url",
            config.ghl_url,
            "--retell-url",
            config.retell_url,
            "--prefix",
            config.prefix,
            "--scale",
            repr(config.scale),
            "--lease-ttl",
            "1",
            "--lock-ttl",
            "2",
            "--lock-wait",
            "10",
            "--poll-interval",
            "0.02",
            "--concurrency",
            str(concurrency),
            "--log-level",
            "WARNING",
        ]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == "ready":
                self.ready.set()

    async def wait_ready(self) -> None:
        await wait_for(
            lambda: self.ready.is_set() or self.proc.poll() is not None,
            within=60,
            message=f"worker {self.label} to start",
        )
        if not self.ready.is_set():
            pytest.fail(f"worker {self.label} exited with {self.proc.returncode}:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs; its lease and lead locks expire by their TTLs."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (running steps finish, the lease is released)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()[-6000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def fakes() -> Iterator[tuple[FakeGHLServer, FakeRetellServer]]:
    with FakeGHLServer(rate_limit=None) as ghl, FakeRetellServer() as retell:
        yield ghl, retell


@pytest.fixture
def config(redis_url: str, fakes: tuple[FakeGHLServer, FakeRetellServer]) -> WorkerConfig:
    ghl, retell = fakes
    return WorkerConfig(
        redis_url=redis_url,
        ghl_url=ghl.base_url,
        retell_url=retell.base_url,
        prefix=PREFIX,
        scale=SCALE,
        start_at=START,
        lease_ttl=1,
        lock_ttl=2,
    )


@pytest.fixture
async def stack(config: WorkerConfig) -> AsyncIterator[Stack]:
    """This process's own stack (scheduler not started): it creates the virtual-time epoch and enrolls."""
    async with open_stack(config) as stack:
        yield stack


@pytest.fixture
def workers(tmp_path: Path, config: WorkerConfig) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:  # first make sure none outlives the test
        worker.close()
    for worker in started:  # pytest shows this only for a failing test
        with contextlib.suppress(OSError):
            print(f"--- worker {worker.label} (exit {worker.proc.returncode}) ---\n{worker.log()}")


def spawn(workers: list[Worker], config: WorkerConfig, tmp_path: Path, **kwargs: Any) -> Worker:
    worker = Worker(config, tmp_path, str(len(workers) + 1), **kwargs)
    workers.append(worker)
    return worker


async def enroll(stack: Stack, ghl: FakeGHLServer, count: int) -> list[str]:
    ids = [f"lead-{i:02d}" for i in range(count)]
    for cid in ids:
        ghl.add_contact(cid, first_name=f"Lead{cid[-2:]}")
    for cid in ids:
        await stack.runner.enroll(cid, source="test")
    return ids


def per_lead(ghl: FakeGHLServer, retell: FakeRetellServer) -> dict[str, collections.Counter[str]]:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for message in ghl.messages():
        counts[message["contactId"]][message["type"].lower()] += 1
    for call in retell.calls():
        counts[(call.get("metadata") or {}).get("ghl_contact_id", "?")]["call"] += 1
    return counts


def everyone_has(ghl: FakeGHLServer, retell: FakeRetellServer, ids: list[str], **want: int) -> bool:
    counts = per_lead(ghl, retell)
    return all(all(counts[cid][kind] >= n for kind, n in want.items()) for cid in ids)


async def test_sigkill_twice_during_a_burst_every_step_runs_exactly_once(
    stack: Stack,
    fakes: tuple[FakeGHLServer, FakeRetellServer],
    config: WorkerConfig,
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    """24 leads at one virtual day per real second: the day_3 burst right away, day_7 at +4 s, day_14 at
    +11 s (and day_30 only at +27 s). The first worker dies in the SMS burst, the second in the call burst;
    each restart comes back (python start-up plus the dead leader's lease) well before the next step of the
    cadence is due, so no step is legitimately superseded and each must land exactly once."""
    ghl, retell = fakes
    config.scale = 86_400
    # Hold back the answers to the 9th SMS and the 13th call: each worker is killed while its request has
    # reached the provider but the answer has not come back, the crash point a send ledger must survive.
    # (Concurrency 1, so at that instant no other lead is between claiming its send key and sending.)
    ghl.script_faults([None] * 8 + [Fault(delay=60)], method="POST", path="/conversations/messages")
    retell.script_faults([None] * 12 + [Fault(delay=60)], method="POST", path="/v2/create-phone-call")
    first = spawn(workers, config, tmp_path)
    await first.wait_ready()
    ids = await enroll(stack, ghl, 24)
    await wait_for(lambda: len(ghl.messages(type="SMS")) >= 9, within=30, message="the 9th SMS")
    first.kill()
    assert len(ghl.messages(type="SMS")) == 9

    second = spawn(workers, config, tmp_path)
    await second.wait_ready()
    await wait_for(lambda: len(retell.calls()) >= 13, within=30, message="the 13th call")
    second.kill()
    assert len(retell.calls()) == 13

    third = spawn(workers, config, tmp_path)
    await third.wait_ready()
    try:
        await wait_for(
            lambda: everyone_has(ghl, retell, ids, sms=1, call=1, email=1),
            within=40,
            message="day_3, day_7 and day_14 for every lead",
        )
    finally:
        third.stop()
    counts = per_lead(ghl, retell)
    assert set(counts) == set(ids)
    for cid in ids:
        assert counts[cid] == {"sms": 1, "call": 1, "email": 1}, (cid, counts[cid])
    for cid in ids:  # and the graph agrees: each step completed once, the sequence waits for day_30
        seq = (await stack.runner.state(cid))["sequence"]
        assert set(seq["completed"]) == {"day_3", "day_7", "day_14"}
        assert seq["next_step"] == "day_30"


async def test_two_scheduler_processes_never_double_fire_and_hand_over_when_the_leader_dies(
    stack: Stack,
    fakes: tuple[FakeGHLServer, FakeRetellServer],
    config: WorkerConfig,
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    ghl, retell = fakes
    a = spawn(workers, config, tmp_path, concurrency=8)
    b = spawn(workers, config, tmp_path, concurrency=8)
    await a.wait_ready()
    await b.wait_ready()
    ids = await enroll(stack, ghl, 30)
    await wait_for(lambda: everyone_has(ghl, retell, ids, sms=1), within=30, message="day_3 for every lead")

    async def idle() -> bool:  # every lead's day_7 job written: nothing is in flight
        jobs = [await stack.scheduler.jobs.get(cid) for cid in ids]
        return all(job is not None and job.step == "day_7" for job in jobs)

    await wait_for(idle, message="the day_7 jobs")
    owner = (await stack.redis.get(f"{PREFIX}:scheduler:leader")).decode()
    leader_pid = int(owner.split(":")[1])
    leader, follower = (a, b) if leader_pid == a.proc.pid else (b, a)
    assert leader_pid == leader.proc.pid
    leader.kill()

    await wait_for(
        lambda: everyone_has(ghl, retell, ids, sms=1, call=1, email=1),
        within=40,
        message="day_7 and day_14 from the follower",
    )
    owner = (await stack.redis.get(f"{PREFIX}:scheduler:leader")).decode()
    assert int(owner.split(":")[1]) == follower.proc.pid
    follower.stop()
    counts = per_lead(ghl, retell)
    for cid in ids:
        assert counts[cid] == {"sms": 1, "call": 1, "email": 1}, (cid, counts[cid])


async def test_steps_that_came_due_while_the_worker_was_down_run_once(
    stack: Stack,
    fakes: tuple[FakeGHLServer, FakeRetellServer],
    config: WorkerConfig,
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    ghl, retell = fakes
    worker = spawn(workers, config, tmp_path, concurrency=4)
    await worker.wait_ready()
    ids = await enroll(stack, ghl, 10)
    await wait_for(lambda: everyone_has(ghl, retell, ids, sms=1), within=30, message="day_3")
    worker.stop()
    assert not retell.calls()
    due = max([parse_time((await stack.runner.state(cid))["sequence"]["next_due_at"]) for cid in ids])
    # Down until every day_7 is overdue by more than APScheduler's default misfire grace time (1 s).
    await asyncio.sleep(stack.timebase.real_delay(due) + 1.3)
    assert stack.timebase.now() > due + stack.timebase.virtual_delta(1.2)
    restarted = time.monotonic()
    again = spawn(workers, config, tmp_path, concurrency=4)
    await again.wait_ready()
    await wait_for(lambda: everyone_has(ghl, retell, ids, call=1), within=30, message="the overdue day_7")
    again.stop()
    for cid in ids:
        assert len(retell.calls_for_contact(cid)) == 1
    # placed by the restarted worker: the overdue steps ran instead of being dropped as misfires
    assert all(r.at >= restarted for r in retell.requests_to("POST", "/v2/create-phone-call"))
