"""The Redis Streams intake in-process on a real Redis: atomic dedupe, per-lead order, concurrency across
leads, dead letters, reclaiming a crashed consumer's entries, and operator results."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import redis.asyncio as aioredis

from ghl_real_estate_ai.api.intake import IntakeEntry, IntakeStream, IntakeUnavailableError, IntakeWorker
from ghl_real_estate_ai.errors import LockTimeoutError, PermanentIntegrationError, TransientIntegrationError


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url)
    yield redis
    await redis.aclose()


async def eventually(check: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_dedupe_is_atomic_with_the_append(client: aioredis.Redis) -> None:
    stream = IntakeStream(client)
    event = {"type": "inbound_message", "text": "hi"}
    results = await asyncio.gather(*(
        stream.append("lead-1", event, source="ghl", dedupe="ghl:webhook:w1") for _ in range(20)
    ))
    stored = [r for r in results if not r.duplicate]
    assert len(stored) == 1 and await stream.backlog() == 1
    assert await client.get(stream.seen_key("ghl:webhook:w1", "lead-1")) == str(stored[0].entry_id).encode()


async def test_append_when_redis_is_unreachable_raises_unavailable() -> None:
    stream = IntakeStream(aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5))
    with pytest.raises(IntakeUnavailableError):
        await stream.append("lead-1", {"type": "enroll"}, source="operator", dedupe="x")
    with pytest.raises(IntakeUnavailableError):
        await stream.append("lead-1", {"type": "enroll"}, source="operator")


async def test_one_lead_in_order_different_leads_concurrently(client: aioredis.Redis) -> None:
    stream = IntakeStream(client)
    seen: dict[str, list[int]] = defaultdict(list)
    running = 0
    peak = 0

    async def handler(entry: IntakeEntry) -> Mapping[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        seen[entry.contact_id].append(entry.event["n"])
        running -= 1
        return {}

    for n in range(10):
        for lead in range(8):
            await stream.append(f"lead-{lead}", {"type": "inbound_message", "n": n}, source="ghl")
    worker = IntakeWorker(stream, handler, concurrency=4, block_ms=50)
    await worker.start()
    try:
        await eventually(lambda: _done(stream))
    finally:
        await worker.stop()
    assert all(order == list(range(10)) for order in seen.values()) and len(seen) == 8
    assert 1 < peak <= 4


async def _done(stream: IntakeStream) -> bool:
    return await stream.backlog() == 0


async def test_failures_are_retried_then_dead_lettered_and_retryable(client: aioredis.Redis) -> None:
    stream = IntakeStream(client)
    attempts: dict[str, int] = defaultdict(int)
    healthy = False

    async def handler(entry: IntakeEntry) -> Mapping[str, Any]:
        attempts[entry.event["kind"]] += 1
        if entry.event["kind"] == "busy" and attempts["busy"] < 4:
            raise LockTimeoutError(entry.contact_id, 0.01)  # not a failure: never dead-lettered
        if entry.event["kind"] == "flaky" and not healthy:
            raise TransientIntegrationError("GHL", "send SMS", "500")
        if entry.event["kind"] == "refused":
            raise PermanentIntegrationError("GHL", "send SMS", "422")
        return {"done": entry.event["kind"]}

    await stream.append("lead-a", {"type": "inbound_message", "kind": "flaky"}, source="ghl")
    await stream.append("lead-a", {"type": "inbound_message", "kind": "after"}, source="ghl")
    await stream.append("lead-b", {"type": "inbound_message", "kind": "refused"}, source="ghl")
    await stream.append("lead-c", {"type": "inbound_message", "kind": "busy"}, source="ghl")
    worker = IntakeWorker(stream, handler, retry_base=0.01, retry_cap=0.02, block_ms=50)
    await worker.start()
    try:
        await eventually(lambda: _done(stream))
        letters = await stream.dead_letters()
        assert sorted(d.event["kind"] for d in letters) == ["flaky", "refused"]
        assert attempts["flaky"] == 5 and attempts["refused"] == 1  # a permanent error is not retried
        assert attempts["after"] == 1 and attempts["busy"] == 4
        flaky = next(d for d in letters if d.event["kind"] == "flaky")
        assert flaky.attempts == 5 and "TransientIntegrationError" in flaky.error
        assert sum([await client.hlen(stream.failures_key(p)) for p in range(stream.partitions)]) == 0

        healthy = True
        requeued = await stream.retry_dead_letters([flaky.id])
        assert requeued[0][0] == flaky.id
        await eventually(lambda: _done(stream))
        assert attempts["flaky"] == 6
        assert [d.event["kind"] for d in await stream.dead_letters()] == ["refused"]
    finally:
        await worker.stop()


async def test_a_crashed_consumers_entries_are_reclaimed(client: aioredis.Redis) -> None:
    stream = IntakeStream(client)
    await stream.ensure_group(stream.partition_of("lead-x"))
    for n in range(3):
        await stream.append("lead-x", {"type": "inbound_message", "n": n}, source="ghl")
    # Delivered, never acknowledged:
    taken = await stream.read("crashed-consumer", stream.partition_of("lead-x"), 10, 10)
    assert len(taken) == 3 and await stream.pending() == 3
    handled: list[int] = []

    async def handler(entry: IntakeEntry) -> Mapping[str, Any]:
        handled.append(entry.event["n"])
        return {}

    worker = IntakeWorker(stream, handler, claim_idle=0.2, block_ms=50)
    await worker.start()
    try:
        await eventually(lambda: _done(stream))
    finally:
        await worker.stop()
    assert handled == [0, 1, 2]
    assert await stream.pending() == 0


async def test_a_restarted_consumer_takes_up_its_own_entries_at_once(client: aioredis.Redis) -> None:
    stream = IntakeStream(client)
    await stream.ensure_group(stream.partition_of("lead-y"))
    for n in range(3):
        await stream.append("lead-y", {"type": "inbound_message", "n": n}, source="ghl")
    # Delivered to the instance that is then SIGKILLed:
    await stream.read("host:8000", stream.partition_of("lead-y"), 10, 10)
    handled: list[int] = []

    async def handler(entry: IntakeEntry) -> Mapping[str, Any]:
        handled.append(entry.event["n"])
        return {}

    # A claim_idle of an hour: only taking up its own entries can process them within the test.
    worker = IntakeWorker(stream, handler, consumer="host:8000", claim_idle=3600, block_ms=50)
    started = time.monotonic()
    await worker.start()
    try:
        await eventually(lambda: _done(stream), within=5)
    finally:
        await worker.stop()
    assert handled == [0, 1, 2]
    assert time.monotonic() - started < 2


async def test_slow_entries_are_not_stolen_by_the_reclaim_sweep(client: aioredis.Redis) -> None:
    stream = IntakeStream(client)
    calls = 0

    async def handler(entry: IntakeEntry) -> Mapping[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.8)  # much longer than the claim idle time
        return {}

    await stream.append("lead-slow", {"type": "inbound_message"}, source="ghl")
    worker = IntakeWorker(stream, handler, claim_idle=0.15, block_ms=50)
    await worker.start()
    try:
        await eventually(lambda: _done(stream))
    finally:
        await worker.stop()
    assert calls == 1


async def test_operator_requests_report_their_result(client: aioredis.Redis) -> None:
    stream = IntakeStream(client)

    async def handler(entry: IntakeEntry) -> Mapping[str, Any]:
        return {"applied": True, "lead": {"contact_id": entry.contact_id, "status": "paused"}}

    queued = await stream.request("lead-op", {"type": "pause"}, source="operator")
    assert await stream.wait_result(queued.request_id, 0.05) is None
    worker = IntakeWorker(stream, handler, block_ms=50)
    await worker.start()
    try:
        result = await stream.wait_result(queued.request_id, 10)
    finally:
        await worker.stop()
    assert result == {"ok": True, "applied": True, "lead": {"contact_id": "lead-op", "status": "paused"}}


async def test_stop_finishes_entries_in_hand(client: aioredis.Redis) -> None:
    stream = IntakeStream(client)
    started = asyncio.Event()
    finished: list[str] = []

    async def handler(entry: IntakeEntry) -> Mapping[str, Any]:
        started.set()
        await asyncio.sleep(0.2)
        finished.append(entry.id)
        return {}

    await stream.append("lead-s", {"type": "inbound_message"}, source="ghl")
    worker = IntakeWorker(stream, handler, block_ms=50)
    await worker.start()
    await asyncio.wait_for(started.wait(), 5)
    await worker.stop()
    assert len(finished) == 1 and await stream.backlog() == 0 and await stream.pending() == 0


async def test_appends_survive_a_lost_script_cache(client: aioredis.Redis) -> None:
    stream = IntakeStream(client)
    try:
        first = await stream.append("lead-s", {"type": "enroll"}, source="operator", dedupe="one")
        await client.script_flush()  # what a Redis restart does to the script cache
        results = await asyncio.gather(
            stream.append("lead-s", {"type": "pause"}, source="operator"),
            stream.append("lead-s", {"type": "resume"}, source="operator", dedupe="two"),
            stream.append("lead-s", {"type": "cancel"}, source="operator", dedupe="one"),
        )
    finally:
        await stream.aclose()
    assert first.entry_id and results[0].entry_id and results[1].entry_id and results[2].duplicate
    assert await stream.backlog() == 3


# -- partitions ------------------------------------------------------------------------------------


async def test_a_leads_events_go_to_one_partition_and_leads_spread_over_all(client: aioredis.Redis) -> None:
    stream = IntakeStream(client, partitions=4)
    for lead in range(40):
        for n in range(2):
            await stream.append(f"lead-{lead}", {"type": "inbound_message", "n": n}, source="ghl")
    await stream.aclose()
    stats = await stream.partition_stats()
    assert [s["partition"] for s in stats] == [0, 1, 2, 3]
    assert sum(s["backlog"] for s in stats) == 80 and all(s["backlog"] > 0 for s in stats)
    for p in range(4):
        entries = await client.xrange(stream.stream_key(p))
        contacts = {fields[b"contact_id"].decode() for _, fields in entries}
        assert all(stream.partition_of(c) == p for c in contacts)
    # Every key of a partition shares its hash tag: one cluster slot per partition.
    assert stream.stream_key(3) == "lead-bot:{intake:3}"
    for key in (stream.dead_key(3), stream.failures_key(3), stream.lease_key(3)):
        assert key.startswith("lead-bot:{intake:3}:")


async def _count_handled(client: aioredis.Redis, stream: IntakeStream, leads: int, per_lead: int,
                         workers: list[IntakeWorker]) -> None:
    for n in range(per_lead):
        for lead in range(leads):
            await stream.append(f"lead-{lead}", {"type": "inbound_message", "n": n}, source="ghl")
    await eventually(lambda: _done(stream), within=20)


async def test_two_workers_split_the_partitions_and_each_entry_runs_once_in_order(
    client: aioredis.Redis,
) -> None:
    stream = IntakeStream(client, partitions=8)
    seen: dict[str, list[int]] = defaultdict(list)
    by_worker: dict[str, set[int]] = defaultdict(set)

    def handler_for(name: str) -> Any:
        async def handler(entry: IntakeEntry) -> Mapping[str, Any]:
            seen[entry.contact_id].append(entry.event["n"])
            by_worker[name].add(entry.partition)
            await asyncio.sleep(0.001)
            return {}
        return handler

    a = IntakeWorker(stream, handler_for("a"), consumer="a", block_ms=50, lease_seconds=3.0)
    b = IntakeWorker(stream, handler_for("b"), consumer="b", block_ms=50, lease_seconds=3.0)
    await a.start()
    await b.start()
    try:
        # b joined after a took everything: within a lease renewal a hands half over, and b takes it.
        await eventually(lambda: _async(len(a.partitions) == 4 and len(b.partitions) == 4), within=10)
        assert set(a.partitions) | set(b.partitions) == set(range(8))
        assert await stream.owners() == {p: ("a" if p in a.partitions else "b") for p in range(8)}
        for n in range(5):
            for lead in range(30):
                await stream.append(f"lead-{lead}", {"type": "inbound_message", "n": n}, source="ghl")
        await eventually(lambda: _done(stream), within=20)
        assert all(order == list(range(5)) for order in seen.values()) and len(seen) == 30
        assert by_worker["a"] and by_worker["b"] and not by_worker["a"] & by_worker["b"]

        await b.stop()  # b leaves: a takes its partitions at once (b gave the leases back)
        await eventually(lambda: _async(len(a.partitions) == 8), within=5)
        for lead in range(30):
            await stream.append(f"lead-{lead}", {"type": "inbound_message", "n": 5}, source="ghl")
        await eventually(lambda: _done(stream), within=20)
        assert all(order == list(range(6)) for order in seen.values())
    finally:
        await a.stop()
        await b.stop()


async def _async(value: bool) -> bool:
    return value


async def test_a_crashed_workers_partitions_and_entries_are_taken_over_after_its_lease(
    client: aioredis.Redis,
) -> None:
    stream = IntakeStream(client, partitions=2)
    handled: list[tuple[str, int]] = []
    gate = asyncio.Event()

    async def stuck(entry: IntakeEntry) -> Mapping[str, Any]:
        await gate.wait()  # the crashed process never finishes
        return {}

    async def survivor(entry: IntakeEntry) -> Mapping[str, Any]:
        handled.append((entry.contact_id, entry.event["n"]))
        return {}

    dead = IntakeWorker(stream, stuck, consumer="dead", block_ms=50, lease_seconds=0.6)
    await dead.start()
    for n in range(3):
        await stream.append("lead-k", {"type": "inbound_message", "n": n}, source="ghl")
    await eventually(lambda: _async(dead.in_flight == 3), within=5)
    # SIGKILL: its tasks stop, nothing is released, its leases and membership simply run out.
    lanes = [lane.task for lane in dead._lanes.values() if lane.task]
    for task in [*dead._tasks, *dead._readers.values(), *lanes]:
        task.cancel()
    await asyncio.sleep(0)
    live = IntakeWorker(stream, survivor, consumer="live", block_ms=50, lease_seconds=0.6)
    started = time.monotonic()
    await live.start()
    try:
        await eventually(lambda: _done(stream), within=10)
    finally:
        await live.stop()
        gate.set()
    assert handled == [("lead-k", 0), ("lead-k", 1), ("lead-k", 2)]
    assert time.monotonic() - started < 0.6 * 3 + 2


async def test_the_single_stream_of_an_earlier_version_is_moved_into_the_partitions(
    client: aioredis.Redis,
) -> None:
    for n in range(3):
        await client.xadd("lead-bot:intake", {"contact_id": f"old-{n}", "source": "ghl",
                                              "event": json.dumps({"type": "inbound_message", "n": n}),
                                              "received_at_ms": "1"})
    await client.xgroup_create("lead-bot:intake", "lead-bot-workers", id="0")
    await client.xreadgroup("lead-bot-workers", "old-host:8000", {"lead-bot:intake": ">"}, count=1)
    await client.xadd("lead-bot:intake:dead", {"contact_id": "old-dead", "source": "ghl",
                                               "event": '{"type":"inbound_message"}', "error": "boom",
                                               "attempts": "5", "original_id": "1-0", "failed_at_ms": "1"})
    stream = IntakeStream(client, partitions=4)
    handled: list[str] = []

    async def handler(entry: IntakeEntry) -> Mapping[str, Any]:
        handled.append(entry.contact_id)
        return {}

    worker = IntakeWorker(stream, handler, block_ms=50)
    await worker.start()
    try:
        await eventually(lambda: _done(stream))
    finally:
        await worker.stop()
    assert sorted(handled) == ["old-0", "old-1", "old-2"]  # the one delivered and never acked too
    assert not await client.exists("lead-bot:intake", "lead-bot:intake:dead")
    letters = await stream.dead_letters()
    assert [(d.contact_id, d.error) for d in letters] == [("old-dead", "boom")]
    assert letters[0].id.startswith(f"{stream.partition_of('old-dead')}/")
    assert await stream.migrate_legacy() == 0  # nothing left: a no-op


async def test_a_partition_handed_over_mid_entry_is_not_taken_before_the_entry_is_done(
    client: aioredis.Redis,
) -> None:
    stream = IntakeStream(client, partitions=2)
    runs: list[tuple[str, str, float, float]] = []  # (worker, lead, start, end)

    def handler_for(name: str, slow: float) -> Any:
        async def handler(entry: IntakeEntry) -> Mapping[str, Any]:
            started = time.monotonic()
            await asyncio.sleep(slow if entry.event.get("slow") else 0)
            runs.append((name, entry.contact_id, started, time.monotonic()))
            return {}
        return handler

    a = IntakeWorker(stream, handler_for("a", 2.0), consumer="a", block_ms=50, lease_seconds=0.6)
    await a.start()
    assert a.partitions == [0, 1]
    # A slow entry on the partition that will go to "b" (the second member in name order).
    lead = next(f"lead-{i}" for i in range(100) if stream.partition_of(f"lead-{i}") == 1)
    await stream.append(lead, {"type": "inbound_message", "slow": True}, source="ghl")
    await eventually(lambda: _async(a.in_flight == 1), within=5)
    b = IntakeWorker(stream, handler_for("b", 0), consumer="b", block_ms=50, lease_seconds=0.6)
    await b.start()
    try:
        await eventually(lambda: _async(1 in a._releasing), within=5)  # a hands it over, still busy
        await stream.append(lead, {"type": "inbound_message"}, source="ghl")  # for whoever owns it next
        await eventually(lambda: _async(b.partitions == [1]), within=10)
        await eventually(lambda: _done(stream), within=10)
    finally:
        await a.stop()
        await b.stop()
    slow, after = [r for r in runs if r[1] == lead]
    assert slow[0] == "a" and after[0] == "b"  # a finished what it held, then b took the partition over
    assert after[2] >= slow[3]  # and b started only after a was done (the lease held through 2 s)


async def test_a_handed_over_partition_is_read_again_within_a_tenth_of_a_second(
    client: aioredis.Redis,
) -> None:
    """From the moment the old owner lets a partition go until the new owner reads it, nobody does: entries
    (due steps among them) wait. The new owner looks for it every 50 ms, not every half second."""
    stream = IntakeStream(client, partitions=8)
    dropped: dict[int, float] = {}
    taken: dict[int, float] = {}
    drop, take = stream.drop_lease, stream.take_lease

    async def spy_drop(partition: int, consumer: str) -> Any:
        result = await drop(partition, consumer)
        dropped.setdefault(partition, time.monotonic())
        return result

    async def spy_take(partition: int, consumer: str, lease_ms: int) -> Any:
        won = await take(partition, consumer, lease_ms)
        if won and consumer == "b":
            taken.setdefault(partition, time.monotonic())
        return won

    stream.drop_lease = spy_drop  # type: ignore[method-assign]
    stream.take_lease = spy_take  # type: ignore[method-assign]

    async def handler(entry: IntakeEntry) -> Mapping[str, Any]:
        return {}

    a = IntakeWorker(stream, handler, consumer="a", block_ms=50, lease_seconds=3.0)
    b = IntakeWorker(stream, handler, consumer="b", block_ms=50, lease_seconds=3.0)
    await a.start()
    await asyncio.sleep(0.25)  # out of step with a's renewals (every second), as two processes are
    await b.start()
    try:
        await eventually(lambda: _async(len(b.partitions) == 4), within=30)
    finally:
        await a.stop()
        await b.stop()
    gaps = {p: taken[p] - dropped[p] for p in taken if p in dropped}
    assert len(gaps) == 4, (dropped, taken)
    assert max(gaps.values()) < 0.12, gaps


async def test_background_entries_wait_while_others_run_but_never_longer_than_their_bound(
    client: aioredis.Redis,
) -> None:
    """Retell's call reports are background entries: while due steps and replies of other leads run, a
    report waits (at most ``background_wait``) before it starts; a lead's own order is kept all the same."""
    stream = IntakeStream(client, partitions=4)
    started: dict[str, float] = {}
    finished: dict[str, float] = {}

    async def handler(entry: IntakeEntry) -> Mapping[str, Any]:
        name = entry.event["name"]
        started[name] = time.monotonic()
        await asyncio.sleep(entry.event.get("takes", 0))
        finished[name] = time.monotonic()
        return {}

    worker = IntakeWorker(stream, handler, consumer="w", block_ms=50,
                          background=lambda entry: entry.source == "retell", background_wait=0.6)
    await worker.start()
    try:
        # A due step of lead a (0.3 s), then a call report of lead b: the report starts after the step.
        await stream.append("a", {"type": "step_due", "name": "step-a", "takes": 0.3}, source="scheduler")
        await eventually(lambda: _async("step-a" in started), within=5)
        await stream.append("b", {"type": "call_result", "name": "report-b"}, source="retell")
        await eventually(lambda: _done(stream), within=5)
        assert started["report-b"] >= finished["step-a"] - 0.01

        # A step that takes 2 s holds a report back for its bound (0.6 s), not for the whole step.
        await stream.append("c", {"type": "step_due", "name": "step-c", "takes": 2.0}, source="scheduler")
        await eventually(lambda: _async("step-c" in started), within=5)
        await stream.append("d", {"type": "call_result", "name": "report-d"}, source="retell")
        await eventually(lambda: _async("report-d" in finished), within=5)
        assert 0.5 <= started["report-d"] - started["step-c"] < 1.5

        # One lead's report, then its step: in order, and nothing waits on itself.
        await stream.append("e", {"type": "call_result", "name": "report-e"}, source="retell")
        await stream.append("e", {"type": "step_due", "name": "step-e"}, source="scheduler")
        await eventually(lambda: _done(stream), within=5)
        assert started["report-e"] <= started["step-e"]
    finally:
        await worker.stop()
