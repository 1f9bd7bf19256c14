"""Behaviour of the plain Redis savers beyond the conformance suite, through real compiled graphs.

TTL refresh and whole-thread expiry, forks (``update_state`` on an old checkpoint) against InMemorySaver,
``keep_last`` pruning without orphaned blobs, interrupt/resume from a new saver instance, awkward thread
ids and namespaces, a redis-server restart with AOF, sync/async cross use, round trips per call.
"""

from __future__ import annotations

import asyncio
import operator
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
import redis
import redis.asyncio as aredis
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from redis.cluster import key_slot
from typing_extensions import TypedDict

from ghl_real_estate_ai.persistence import AsyncPlainRedisSaver, PlainRedisSaver
from ghl_real_estate_ai.persistence._codec import KIND_BLOB, Keys, parse_header, whole_records
from ghl_real_estate_ai.persistence._scripts import SCRIPTS
from ghl_real_estate_ai.testing.redis_server import RedisServer

# --------------------------------------------------------------------------------------- graphs


class LeadState(TypedDict, total=False):
    contact: dict[str, Any]
    x: str
    step: int
    log: Annotated[list[str], operator.add]
    answer: str


def bump(state: LeadState) -> dict[str, Any]:
    step = state.get("step", 0) + 1
    return {"step": step, "x": f"{state.get('x', '')}-{step}", "log": [f"turn {step}"]}


def lead_graph() -> StateGraph:
    builder = StateGraph(LeadState)
    builder.add_node("bump", bump)
    builder.add_edge(START, "bump")
    builder.add_edge("bump", END)
    return builder


def ask(state: LeadState) -> dict[str, Any]:
    answer = interrupt({"question": "OK to call you on Thursday?"})
    return {"answer": answer, "log": [f"answered {answer}"]}


def interrupt_graph() -> StateGraph:
    builder = StateGraph(LeadState)
    builder.add_node("bump", bump)
    builder.add_node("ask", ask)
    builder.add_edge(START, "bump")
    builder.add_edge("bump", "ask")
    builder.add_edge("ask", END)
    return builder


CONTACT = {"id": "c-1", "first_name": "Jane", "phone": "+15125550123", "city": "Austin", "tags": ["buyer"]}


def cfg(thread_id: str, **extra: Any) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id, **extra}}


# ------------------------------------------------------------------------------------- helpers


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def prefixed_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{prefix}:*", count=1000))


def blob_fields_read(record: bytes) -> set[bytes]:
    """The blob fields a record reads, computed independently of the Lua scripts."""
    header = parse_header(record)
    return {
        b"b" + struct.pack(">H", name_id) + header.vkeys[idx]
        for name_id, idx, kind in header.channels
        if kind == KIND_BLOB
    }


def namespace_hash(client: redis.Redis, prefix: str, thread_id: str, ns: str = "") -> dict[bytes, bytes]:
    return client.hgetall(Keys(prefix, thread_id).ns_keys(ns)[0])


def assert_no_orphans(client: redis.Redis, prefix: str, thread_id: str, ns: str = "") -> dict[str, int]:
    """Every blob field is read by a surviving checkpoint and every writes field belongs to one."""
    fields = namespace_hash(client, prefix, thread_id, ns)
    records = {k[1:]: v for k, v in whole_records(fields).items()}
    blobs = {k for k in fields if k[:1] == b"b"}
    writes = {k[1:] for k in fields if k[:1] == b"w"}
    read = set().union(*(blob_fields_read(r) for r in records.values())) if records else set()
    # an extension reference (code 9) makes its blob read the (later) blob it points into
    todo = [f for f in read if f in fields]
    while todo:
        value = fields[todo.pop()]
        if value[:1] == b"\x09":
            target = value[5:]
            assert target in fields, f"extension reference into a missing blob {target!r}"
            if target not in read:
                read.add(target)
                todo.append(target)
    assert blobs <= read, f"orphaned blobs: {sorted(blobs - read)}"
    assert writes <= set(records), f"writes without a checkpoint: {sorted(writes - set(records))}"
    index = client.zrange(Keys(prefix, thread_id).ns_keys(ns)[1], 0, -1)
    assert sorted(index) == sorted(records)
    return {"checkpoints": len(records), "blobs": len(blobs), "writes": len(writes)}


def history_values(graph: Any, config: dict[str, Any]) -> list[dict[str, Any]]:
    return [snap.values for snap in graph.get_state_history(config)]


# ------------------------------------------------------------------------------------------ TTL


def test_ttl_refresh_keeps_unchanged_channels_alive(client: redis.Redis, key_prefix: str) -> None:
    """A channel written once (the contact) stays readable while later turns write other channels past
    its original TTL: every key the thread uses is refreshed on every write (plainredis' bug 1)."""
    ttl = 2.0  # a turn every 0.45 ttl: a stall of over a second on a loaded machine still passes
    saver = PlainRedisSaver(client, ttl_seconds=ttl, key_prefix=key_prefix)
    graph = lead_graph().compile(checkpointer=saver)
    config = cfg("lead:ttl")
    graph.invoke({"contact": CONTACT}, config, durability="sync")
    started = time.monotonic()
    for _ in range(3):
        time.sleep(ttl * 0.45)
        graph.invoke({"x": "due"}, config, durability="sync")
        for key in prefixed_keys(client, key_prefix):
            pttl = client.pttl(key)
            assert 0 < pttl <= ttl * 1250, (key, pttl)  # the registry lives 1.25 * ttl
    assert time.monotonic() - started > ttl * 1.2  # well past the contact blob's first expiry
    state = graph.get_state(config)
    assert state.values["contact"] == CONTACT
    assert state.values["step"] == 4


async def test_whole_thread_expiry_leaves_no_keys(redis_url: str, key_prefix: str) -> None:
    ttl = 1.5  # the key count below is taken before the first thread's keys can expire, even under load
    async with AsyncPlainRedisSaver.from_conn_string(
        redis_url, ttl_seconds=ttl, key_prefix=key_prefix
    ) as saver:
        graph = lead_graph().compile(checkpointer=saver)
        for thread in ("lead:a", "lead:b"):
            await graph.ainvoke({"contact": CONTACT}, cfg(thread), durability="sync")
            await graph.ainvoke({"x": "due"}, cfg(thread), durability="sync")
        client = saver.client
        assert len([k async for k in client.scan_iter(match=f"{key_prefix}:*")]) == 7  # 2 x 3 + registry
        await asyncio.sleep(ttl * 1.25 + 0.35)
        assert [k async for k in client.scan_iter(match=f"{key_prefix}:*")] == []
        assert await graph.aget_state(cfg("lead:a")) is not None
        assert (await graph.aget_state(cfg("lead:a"))).values == {}
        assert [t async for t in saver.alist(None)] == []


def test_ttl_none_persists_every_key(client: redis.Redis, key_prefix: str) -> None:
    graph = lead_graph().compile(checkpointer=PlainRedisSaver(client, ttl_seconds=60, key_prefix=key_prefix))
    graph.invoke({"contact": CONTACT}, cfg("lead:p"), durability="sync")
    assert all(client.pttl(k) > 0 for k in prefixed_keys(client, key_prefix))
    forever = lead_graph().compile(
        checkpointer=PlainRedisSaver(client, ttl_seconds=None, key_prefix=key_prefix)
    )
    forever.invoke({"x": "due"}, cfg("lead:p"), durability="sync")
    thread_keys = [k for k in prefixed_keys(client, key_prefix) if b"{lead:p}" in k]
    assert len(thread_keys) == 3
    assert all(client.pttl(k) == -1 for k in thread_keys)


def thread_keys(client: redis.Redis, prefix: str, thread_id: str) -> list[bytes]:
    return [k for k in prefixed_keys(client, prefix) if f"{{{thread_id}}}".encode() in k]


def bare_checkpoint(**values: Any) -> dict[str, Any]:
    return {
        "v": 4,
        "id": str(uuid6()),
        "ts": "2025-03-01T15:00:00+00:00",
        "channel_values": values,
        "channel_versions": {name: f"{1:032}.{0.5:016}" for name in values},
        "versions_seen": {},
        "updated_channels": None,
    }


def test_writes_skip_the_refresh_only_within_the_slack(client: redis.Redis, key_prefix: str) -> None:
    """All keys of a thread are refreshed together, so a write that creates no key leaves them alone
    while they have at least ttl - slack to live (slack: 1 s at ttl >= 100 s), and refreshes them all
    once they have less."""
    graph = lead_graph().compile(checkpointer=PlainRedisSaver(client, ttl_seconds=100, key_prefix=key_prefix))
    config = cfg("lead:slack")
    graph.invoke({"contact": CONTACT}, config, durability="sync")
    keys = thread_keys(client, key_prefix, "lead:slack")
    assert len(keys) == 3
    assert all(99_000 < client.pttl(k) <= 100_000 for k in keys)
    for key in keys:
        client.pexpire(key, 99_500)
    graph.invoke({"x": "due"}, config, durability="sync")  # within the slack: no refresh
    assert all(98_500 < client.pttl(k) <= 99_500 for k in keys)
    for key in keys:
        client.pexpire(key, 98_900)
    graph.invoke({"x": "due"}, config, durability="sync")  # beyond it: every key refreshed
    assert all(99_500 < client.pttl(k) <= 100_000 for k in keys)
    assert graph.get_state(config).values["step"] == 3


def test_a_write_that_creates_a_key_refreshes_every_key(client: redis.Redis, key_prefix: str) -> None:
    """Right after another write (inside the slack), a write that creates the index or a namespace
    still gives every key of the thread its expiry."""
    saver = PlainRedisSaver(client, ttl_seconds=100, key_prefix=key_prefix)
    first = bare_checkpoint(contact=CONTACT)
    at_first = cfg("lead:created", checkpoint_ns="", checkpoint_id=first["id"])
    # writes for a checkpoint not stored yet: the namespace hash exists, the index does not
    saver.put_writes(at_first, [("contact", CONTACT)], "task-0")
    assert len(thread_keys(client, key_prefix, "lead:created")) == 2
    saver.put(cfg("lead:created", checkpoint_ns=""), first, {"source": "input", "step": -1}, {})
    keys = thread_keys(client, key_prefix, "lead:created")
    assert len(keys) == 3
    assert all(99_000 < client.pttl(k) <= 100_000 for k in keys), {k: client.pttl(k) for k in keys}
    saver.put(
        cfg("lead:created", checkpoint_ns="inner:1"), bare_checkpoint(), {"source": "loop", "step": 0}, {}
    )
    keys = thread_keys(client, key_prefix, "lead:created")
    assert len(keys) == 5
    assert all(99_000 < client.pttl(k) <= 100_000 for k in keys), {k: client.pttl(k) for k in keys}
    tup = saver.get_tuple(at_first)
    assert tup is not None and tup.pending_writes == [("task-0", "contact", CONTACT)]


def test_a_shorter_ttl_takes_effect_on_the_next_write(client: redis.Redis, key_prefix: str) -> None:
    config = cfg("lead:shorter")
    long_lived = lead_graph().compile(
        checkpointer=PlainRedisSaver(client, ttl_seconds=100, key_prefix=key_prefix)
    )
    long_lived.invoke({"contact": CONTACT}, config, durability="sync")
    short_lived = lead_graph().compile(
        checkpointer=PlainRedisSaver(client, ttl_seconds=10, key_prefix=key_prefix)
    )
    short_lived.invoke({"x": "due"}, config, durability="sync")
    keys = thread_keys(client, key_prefix, "lead:shorter")
    assert len(keys) == 3
    assert all(9_000 < client.pttl(k) <= 10_000 for k in keys)


# ---------------------------------------------------------------------------------------- forks


def _fork_scenario(saver: Any) -> tuple[Any, dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Three turns, then ``update_state`` on the checkpoint after turn 1 (a fork), then one more turn
    on the fork. Returns the graph, the values of every main-line checkpoint as first read, and the
    whole history's values after the fork."""
    graph = lead_graph().compile(checkpointer=saver)
    config = cfg("lead:{fork}")
    graph.invoke({"contact": CONTACT, "x": "main"}, config, durability="sync")
    after_first = graph.get_state(config).config
    graph.invoke({"x": "a"}, config, durability="sync")
    graph.invoke({"x": "b"}, config, durability="sync")
    main_line = {s.config["configurable"]["checkpoint_id"]: s.values for s in graph.get_state_history(config)}
    fork_config = graph.update_state(after_first, {"x": "FORK"})
    graph.invoke(None, fork_config, durability="sync")
    graph.invoke({"x": "after-fork"}, config, durability="sync")
    return graph, main_line, history_values(graph, config)


def test_fork_leaves_every_main_line_checkpoint_unchanged(client: redis.Redis, key_prefix: str) -> None:
    graph, main_line, history = _fork_scenario(PlainRedisSaver(client, key_prefix=key_prefix))
    for checkpoint_id, values in main_line.items():
        snap = graph.get_state(cfg("lead:{fork}", checkpoint_id=checkpoint_id))
        assert snap.values == values, checkpoint_id
    assert any(v.get("x", "").startswith("main-1") for v in main_line.values())

    ref_graph, ref_main, ref_history = _fork_scenario(InMemorySaver())
    assert list(main_line.values()) == list(ref_main.values())
    assert history == ref_history
    assert graph.get_state(cfg("lead:{fork}")).values == ref_graph.get_state(cfg("lead:{fork}")).values
    assert_no_orphans(client, key_prefix, "lead:{fork}")


# -------------------------------------------------------------------------------------- pruning


def test_keep_last_prunes_checkpoints_writes_and_orphaned_blobs(client: redis.Redis, key_prefix: str) -> None:
    keep = 4
    saver = PlainRedisSaver(client, keep_last=keep, key_prefix=key_prefix)
    graph = lead_graph().compile(checkpointer=saver)
    ref = lead_graph().compile(checkpointer=InMemorySaver())
    config = cfg("lead:prune")
    seen: dict[str, dict[str, Any]] = {}
    for turn in range(6):
        update: dict[str, Any] = (
            {"contact": {**CONTACT, "turn": turn}} if turn % 2 == 0 else {"x": f"t{turn}"}
        )
        graph.invoke(update, config, durability="sync")
        ref.invoke(update, config, durability="sync")
        for snap in graph.get_state_history(config):
            seen.setdefault(snap.config["configurable"]["checkpoint_id"], snap.values)

    history = list(graph.get_state_history(config))
    assert len(history) == keep
    assert [s.config["configurable"]["checkpoint_id"] for s in history] == sorted(seen, reverse=True)[:keep]
    for snap in history:  # survivors read exactly as when they were written
        assert snap.values == seen[snap.config["configurable"]["checkpoint_id"]]
    assert [s.values for s in history] == history_values(ref, config)[:keep]
    assert graph.get_state(config).values == ref.get_state(config).values

    counts = assert_no_orphans(client, key_prefix, "lead:prune")
    assert counts["checkpoints"] == keep
    thread_keys = [k for k in prefixed_keys(client, key_prefix) if b"{lead:prune}" in k]
    assert len(thread_keys) == 3  # namespace set, hash, index

    # The same run without pruning keeps every checkpoint and strictly more blobs.
    unpruned = lead_graph().compile(
        checkpointer=PlainRedisSaver(client, keep_last=None, key_prefix=key_prefix)
    )
    for turn in range(6):
        update = {"contact": {**CONTACT, "turn": turn}} if turn % 2 == 0 else {"x": f"t{turn}"}
        unpruned.invoke(update, cfg("lead:all"), durability="sync")
    full = assert_no_orphans(client, key_prefix, "lead:all")
    assert full["checkpoints"] == len(seen) > keep
    assert full["blobs"] > counts["blobs"]


def test_keep_last_after_fork_keeps_what_survivors_read(client: redis.Redis, key_prefix: str) -> None:
    saver = PlainRedisSaver(client, keep_last=5, key_prefix=key_prefix)
    graph = lead_graph().compile(checkpointer=saver)
    config = cfg("lead:fork-prune")
    seen: dict[str, dict[str, Any]] = {}

    def record() -> None:
        for snap in graph.get_state_history(config):
            seen.setdefault(snap.config["configurable"]["checkpoint_id"], snap.values)

    graph.invoke({"contact": CONTACT, "x": "m"}, config, durability="sync")
    record()
    old = graph.get_state(config).config
    graph.invoke({"x": "n"}, config, durability="sync")
    record()
    graph.update_state(old, {"x": "FORK", "contact": {**CONTACT, "forked": True}})
    record()
    for turn in range(4):
        graph.invoke({"x": f"k{turn}"}, config, durability="sync")
        record()
        for snap in graph.get_state_history(config):
            assert snap.values == seen[snap.config["configurable"]["checkpoint_id"]]
        assert_no_orphans(client, key_prefix, "lead:fork-prune")
    assert len(list(graph.get_state_history(config))) == 5


def test_prune_keep_latest_and_delete(client: redis.Redis, key_prefix: str) -> None:
    saver = PlainRedisSaver(client, keep_last=None, key_prefix=key_prefix)
    graph = lead_graph().compile(checkpointer=saver)
    for thread in ("lead:k1", "lead:k2"):
        for turn in range(3):
            graph.invoke(
                {"contact": CONTACT} if turn == 0 else {"x": str(turn)}, cfg(thread), durability="sync"
            )
    latest = graph.get_state(cfg("lead:k1")).values
    saver.prune(["lead:k1"], strategy="keep_latest")
    assert len(list(graph.get_state_history(cfg("lead:k1")))) == 1
    assert graph.get_state(cfg("lead:k1")).values == latest
    assert assert_no_orphans(client, key_prefix, "lead:k1")["checkpoints"] == 1
    saver.prune(["lead:k2"], strategy="delete")
    assert not [k for k in prefixed_keys(client, key_prefix) if b"{lead:k2}" in k]
    with pytest.raises(ValueError, match="Unknown prune strategy"):
        saver.prune(["lead:k1"], strategy="oldest")
    with pytest.raises(TypeError):
        saver.prune("lead:k1")


# ------------------------------------------------------------------------------------ interrupts


def test_interrupt_resumed_from_a_new_saver_instance(redis_url: str, key_prefix: str) -> None:
    config = cfg("lead:interrupt")
    with PlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as first:
        out = (
            interrupt_graph()
            .compile(checkpointer=first)
            .invoke({"contact": CONTACT}, config, durability="sync")
        )
        assert out["__interrupt__"][0].value == {"question": "OK to call you on Thursday?"}
    with PlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as second:
        graph = interrupt_graph().compile(checkpointer=second)
        state = graph.get_state(config)
        assert state.next == ("ask",)
        assert state.interrupts[0].value == {"question": "OK to call you on Thursday?"}
        out = graph.invoke(Command(resume="yes"), config, durability="sync")
        assert out["answer"] == "yes"
        assert out["log"] == ["turn 1", "answered yes"]
        assert graph.get_state(config).next == ()


async def test_interrupt_resumed_from_a_new_async_saver_instance(redis_url: str, key_prefix: str) -> None:
    config = cfg("lead:ainterrupt")
    async with AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as first:
        out = (
            await interrupt_graph()
            .compile(checkpointer=first)
            .ainvoke({"x": "hi"}, config, durability="sync")
        )
        assert "__interrupt__" in out
    async with AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as second:
        graph = interrupt_graph().compile(checkpointer=second)
        out = await graph.ainvoke(Command(resume="no thanks"), config, durability="sync")
        assert out["answer"] == "no thanks"


# -------------------------------------------------------------------------- ids and namespaces


AWKWARD_THREADS = ["a:b", "{a}", "a}", "}{", "%7Ba%7D", "%", "contact:{x}:y", "ünï:cødé"]


def test_thread_ids_and_namespaces_with_colons_and_braces(client: redis.Redis, key_prefix: str) -> None:
    saver = PlainRedisSaver(client, key_prefix=key_prefix)
    namespaces = ["", "child:1", "x{y}:z|w:v", ":"]
    for thread in AWKWARD_THREADS:
        parent = None
        for ns in namespaces:
            config = cfg(thread, checkpoint_ns=ns)
            if parent:
                config["configurable"]["checkpoint_id"] = parent
            checkpoint = {
                "v": 4,
                "id": str(uuid.uuid4()),
                "ts": "2025-03-01T15:00:00+00:00",
                "channel_values": {"who": {"thread": thread, "ns": ns}},
                "channel_versions": {"who": saver.get_next_version(None, None)},
                "versions_seen": {},
                "updated_channels": ["who"],
            }
            saver.put(config, checkpoint, {"source": "input", "step": -1}, checkpoint["channel_versions"])

    for thread in AWKWARD_THREADS:
        for ns in namespaces:
            tup = saver.get_tuple(cfg(thread, checkpoint_ns=ns))
            assert tup is not None
            assert tup.checkpoint["channel_values"]["who"] == {"thread": thread, "ns": ns}
            assert tup.config["configurable"] == {
                "thread_id": thread,
                "checkpoint_ns": ns,
                "checkpoint_id": tup.checkpoint["id"],
            }
        listed = list(saver.list(cfg(thread)))
        assert sorted(t.config["configurable"]["checkpoint_ns"] for t in listed) == sorted(namespaces)
        assert {t.config["configurable"]["thread_id"] for t in listed} == {thread}

    # every key of a thread is in one cluster slot, and no two threads share a key
    key_sets = {}
    for thread in AWKWARD_THREADS:
        keys = Keys(key_prefix, thread)
        mine = [k for k in prefixed_keys(client, key_prefix) if k.startswith(keys.base + b":")]
        assert len(mine) == 1 + 2 * len(namespaces)
        assert len({key_slot(k) for k in mine}) == 1
        tag = keys.base[keys.base.index(b"{") + 1 : keys.base.index(b"}")]
        assert all(k[k.index(b"{") + 1 : k.index(b"}")] == tag for k in mine)
        key_sets[thread] = set(mine)
    all_keys = [k for ks in key_sets.values() for k in ks]
    assert len(all_keys) == len(set(all_keys))

    assert {t.config["configurable"]["thread_id"] for t in saver.list(None)} == set(AWKWARD_THREADS)
    saver.delete_thread("a}")
    assert not key_sets["a}"] & set(prefixed_keys(client, key_prefix))
    assert saver.get_tuple(cfg("{a}")) is not None


class Inner(TypedDict, total=False):
    log: Annotated[list[str], operator.add]


def test_subgraph_namespaces_round_trip_and_delete(client: redis.Redis, key_prefix: str) -> None:
    inner = StateGraph(Inner)
    inner.add_node("think", lambda s: {"log": ["inner"]})
    inner.add_edge(START, "think")
    inner.add_edge("think", END)
    outer = StateGraph(Inner)
    outer.add_node("child", inner.compile())
    outer.add_edge(START, "child")
    outer.add_edge("child", END)
    saver = PlainRedisSaver(client, key_prefix=key_prefix)
    graph = outer.compile(checkpointer=saver)
    config = cfg("lead:{sub}:1")
    graph.invoke({"log": ["start"]}, config, durability="sync")
    namespaces = {t.config["configurable"]["checkpoint_ns"] for t in saver.list(cfg("lead:{sub}:1"))}
    assert "" in namespaces and any(ns.startswith("child:") for ns in namespaces)
    reference = outer.compile(checkpointer=InMemorySaver())
    reference.invoke({"log": ["start"]}, config, durability="sync")
    assert graph.get_state(config).values == reference.get_state(config).values
    assert len(graph.get_state(config, subgraphs=True).values["log"]) == 3
    saver.delete_thread("lead:{sub}:1")
    assert prefixed_keys(client, key_prefix) == []


# ------------------------------------------------------------------------------------- restarts


def test_aof_restart_keeps_everything_acknowledged(key_prefix: str) -> None:
    with RedisServer(appendonly=True) as server:
        saver = PlainRedisSaver(redis.Redis.from_url(server.url), key_prefix=key_prefix)
        graph = interrupt_graph().compile(checkpointer=saver)
        for thread in ("lead:r1", "lead:r2"):
            graph.invoke({"contact": CONTACT}, cfg(thread), durability="sync")
        before = {t: history_values(graph, cfg(t)) for t in ("lead:r1", "lead:r2")}
        server.stop(kill=True)  # SIGKILL: only what reached the AOF (appendfsync always) survives
        server.start()
        # the old saver's pooled connections are dead: the next call reconnects
        assert {t: history_values(graph, cfg(t)) for t in before} == before
        fresh = PlainRedisSaver(redis.Redis.from_url(server.url), key_prefix=key_prefix)
        graph2 = interrupt_graph().compile(checkpointer=fresh)
        assert {t: history_values(graph2, cfg(t)) for t in before} == before
        out = graph2.invoke(Command(resume="yes"), cfg("lead:r1"), durability="sync")
        assert out["answer"] == "yes"
        assert {t.config["configurable"]["thread_id"] for t in fresh.list(None)} == {"lead:r1", "lead:r2"}
        saver.client.close()
        fresh.client.close()


# --------------------------------------------------------------------------------- sync <-> async


async def test_sync_saver_runs_async_graphs(client: redis.Redis, key_prefix: str) -> None:
    saver = PlainRedisSaver(client, key_prefix=key_prefix)
    graph = lead_graph().compile(checkpointer=saver)
    await graph.ainvoke({"contact": CONTACT}, cfg("lead:s"), durability="sync")
    await graph.ainvoke({"x": "due"}, cfg("lead:s"), durability="sync")
    assert (await graph.aget_state(cfg("lead:s"))).values["step"] == 2
    assert len([s async for s in graph.aget_state_history(cfg("lead:s"))]) == len(
        list(graph.get_state_history(cfg("lead:s")))
    )


async def test_async_saver_sync_methods_work_on_and_off_the_loop(redis_url: str, key_prefix: str) -> None:
    # only an async client: the saver derives a blocking one for its sync methods
    aclient = aredis.Redis.from_url(redis_url)
    saver = AsyncPlainRedisSaver(aclient, key_prefix=key_prefix)
    try:
        graph = lead_graph().compile(checkpointer=saver)
        await graph.ainvoke({"contact": CONTACT}, cfg("lead:as"), durability="sync")
        on_loop = graph.get_state(cfg("lead:as"))  # sync call on the event loop's own thread
        off_loop = await asyncio.to_thread(graph.get_state, cfg("lead:as"))
        assert on_loop.values == off_loop.values == (await graph.aget_state(cfg("lead:as"))).values
        await asyncio.to_thread(graph.invoke, {"x": "from a thread"}, cfg("lead:as"))
        assert (await graph.aget_state(cfg("lead:as"))).values["step"] == 2
    finally:
        await saver.aclose()
        await aclient.aclose()


def test_rejects_decoding_clients_and_bad_settings(redis_url: str) -> None:
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses=False"):
        PlainRedisSaver(decoding)
    decoding.close()
    plain = redis.Redis.from_url(redis_url)
    for kwargs in ({"ttl_seconds": 0}, {"keep_last": 0}, {"key_prefix": "a{b}"}, {"key_prefix": ""}):
        with pytest.raises(ValueError):
            PlainRedisSaver(plain, **kwargs)  # type: ignore[arg-type]
    plain.close()


# ------------------------------------------------------------------------------- details & costs


def test_get_next_version_is_the_inmemory_form() -> None:
    saver = PlainRedisSaver(redis.Redis())
    v1 = saver.get_next_version(None, None)
    v2 = saver.get_next_version(v1, None)
    assert len(v1.split(".")[0]) == 32 and int(v1.split(".")[0]) == 1
    assert int(v2.split(".")[0]) == 2 and v2 > v1
    assert saver.get_next_version(v1, None) != v2  # random suffix: forks never collide
    assert int(saver.get_next_version(7, None).split(".")[0]) == 8


def test_pending_writes_order_and_first_write_wins(client: redis.Redis, key_prefix: str) -> None:
    saver = PlainRedisSaver(client, key_prefix=key_prefix)
    checkpoint = {
        "v": 4,
        "id": str(uuid.uuid4()),
        "ts": "2025-03-01T15:00:00+00:00",
        "channel_values": {},
        "channel_versions": {},
        "versions_seen": {},
        "updated_channels": None,
    }
    stored = saver.put(cfg("lead:w", checkpoint_ns=""), checkpoint, {"source": "loop", "step": 0}, {})
    saver.put_writes(stored, [("a", 1), ("b", 2)], "task-b", "~path, 2")
    saver.put_writes(stored, [("a", 10), ("b", 20)], "task-b", "~path, 2")  # ignored: first write wins
    saver.put_writes(stored, [("a", 3)], "task-a", "~path, 1")
    saver.put_writes(stored, [("__interrupt__", "first")], "task-c", "~path, 0")
    saver.put_writes(stored, [("__interrupt__", "second")], "task-c", "~path, 0")  # special: overwrites
    tup = saver.get_tuple(stored)
    assert tup is not None
    assert tup.pending_writes == [
        ("task-c", "__interrupt__", "second"),
        ("task-a", "a", 3),
        ("task-b", "a", 1),
        ("task-b", "b", 2),
    ]


def test_each_call_is_one_round_trip(
    client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    saver = PlainRedisSaver(client, key_prefix=key_prefix)
    graph = lead_graph().compile(checkpointer=saver)
    graph.invoke({"contact": CONTACT}, cfg("lead:rt"), durability="sync")  # registers the thread
    sent: list[bytes] = []
    original = redis.connection.Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        packed = b"".join([command] if isinstance(command, bytes) else list(command))
        # a connection the pool opens for put_writes' own thread greets the server first: not the call's
        if packed.split(b"\r\n", 3)[2].upper() not in (b"HELLO", b"CLIENT", b"AUTH", b"SELECT"):
            sent.append(packed[:40])
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    tup = saver.get_tuple(cfg("lead:rt"))
    assert tup is not None
    # the checkpoint this saver wrote last: plain commands in one MULTI, no script
    assert len(sent) == 1 and sent[0].startswith(b"*1\r\n$5\r\nMULTI") and b"EVALSHA" not in sent[0]
    sent.clear()
    assert PlainRedisSaver(client, key_prefix=key_prefix).get_tuple(cfg("lead:rt")) == tup
    assert len(sent) == 1 and b"EVALSHA" in sent[0]  # any other: the load script
    sent.clear()
    saver.put_writes(tup.config, [("x", "pending")], "task-1")
    assert len(sent) == 1
    sent.clear()
    version = saver.get_next_version(None, None)
    nxt = {
        **tup.checkpoint,
        "id": str(uuid6()),  # ids sort by time: a random uuid4 may sort before the latest
        "channel_values": {**tup.checkpoint["channel_values"], "x": "y"},
        "channel_versions": {**tup.checkpoint["channel_versions"], "x": version},
    }
    saver.put(tup.config, nxt, {"source": "update", "step": 9}, {"x": version})
    assert len(sent) == 1  # with the parent's record rewritten into a splice of the new one
    sent.clear()
    graph.invoke({"x": "due"}, cfg("lead:rt"), durability="sync")
    assert len(sent) == 6  # a turn: 1 read, 3 checkpoints (input, start, bump), 2 task writes


def test_registry_lists_threads_and_forgets_vanished_ones(client: redis.Redis, key_prefix: str) -> None:
    saver = PlainRedisSaver(client, key_prefix=key_prefix)
    graph = lead_graph().compile(checkpointer=saver)
    for thread in ("lead:1", "lead:2", "lead:3"):
        graph.invoke({"x": thread}, cfg(thread), durability="sync")
    assert {t.config["configurable"]["thread_id"] for t in saver.list(None)} == {"lead:1", "lead:2", "lead:3"}
    assert len(list(saver.list(None, limit=2))) == 2
    saver.delete_thread("lead:1")
    client.delete(*Keys(key_prefix, "lead:2").ns_keys(""), Keys(key_prefix, "lead:2").nset)  # vanished
    assert {t.config["configurable"]["thread_id"] for t in saver.list(None)} == {"lead:3"}
    assert client.zrange(f"{key_prefix}:threads", 0, -1) == [b"lead:3"]
    assert [t.metadata["source"] for t in saver.list(None, filter={"source": "input"})] == ["input"]


def test_copy_thread_refuses_an_existing_target(client: redis.Redis, key_prefix: str) -> None:
    saver = PlainRedisSaver(client, key_prefix=key_prefix)
    graph = lead_graph().compile(checkpointer=saver)
    graph.invoke({"contact": CONTACT}, cfg("lead:src"), durability="sync")
    saver.copy_thread("lead:src", "lead:dst")
    assert graph.get_state(cfg("lead:dst")).values == graph.get_state(cfg("lead:src")).values
    graph.invoke({"x": "more"}, cfg("lead:dst"), durability="sync")  # the copy is a live thread
    with pytest.raises(ValueError, match="already has checkpoints"):
        saver.copy_thread("lead:src", "lead:dst")


@pytest.mark.parametrize(
    "parent",
    [
        str(uuid.UUID(int=0x1F0E5C2A_0B6C_6D1E_8000_1234567890AB)),  # canonical: stored as 16 bytes
        "1F0E5C2A-0B6C-6D1E-8000-1234567890AB",  # a uuid, but not in canonical form: kept as text
        "1f0e5c2a-0b6c-6d1e-8000-1234567890ag",  # uuid-shaped, not hex
        "1f0e5c2a-0b6c-6d1e-8000-1234567890 b",  # uuid-shaped with a space (bytes.fromhex skips spaces)
        "not-a-uuid",
    ],
)
def test_parent_ids_round_trip_exactly(client: redis.Redis, key_prefix: str, parent: str) -> None:
    from langgraph.checkpoint.base import empty_checkpoint

    saver = PlainRedisSaver(client, key_prefix=key_prefix)
    checkpoint = empty_checkpoint()
    saver.put(cfg("t-parent", checkpoint_ns="", checkpoint_id=parent), checkpoint, {"step": 1}, {})
    # the writer reads what it kept at the put, a new saver decodes the stored record
    for reader in (saver, PlainRedisSaver(client, key_prefix=key_prefix)):
        tup = reader.get_tuple(cfg("t-parent", checkpoint_ns=""))
        assert tup is not None and tup.parent_config is not None
        assert tup.parent_config["configurable"]["checkpoint_id"] == parent
        assert tup.checkpoint["id"] == checkpoint["id"]


def test_a_saver_reads_back_what_another_rewrote_with_the_same_bytes(
    client: redis.Redis, key_prefix: str
) -> None:
    """A saver decodes the record it last wrote from what it kept at the put, but only while the
    namespace's name dictionary is the one the record was built against: here another saver deletes
    the thread and writes a record with the very same bytes, whose name ids mean other channels."""
    from langgraph.checkpoint.base import empty_checkpoint

    first, second = (
        PlainRedisSaver(client, key_prefix=key_prefix),
        PlainRedisSaver(client, key_prefix=key_prefix),
    )
    v1, v2 = first.get_next_version(None, None), first.get_next_version(None, None)
    base = {**empty_checkpoint(), "ts": "2026-11-30T15:00:00+00:00"}

    def put(saver: PlainRedisSaver, order: list[str]) -> None:
        checkpoint = {
            **base,
            "channel_values": {order[0]: "x" * 60, order[1]: "y" * 60},
            "channel_versions": {order[0]: v1, order[1]: v2},
        }
        saver.put(
            cfg("t-same-bytes", checkpoint_ns=""),
            checkpoint,
            {"step": 1},
            dict(checkpoint["channel_versions"]),
        )

    put(first, ["a", "b"])
    written = first.get_tuple(cfg("t-same-bytes"))
    assert written is not None and written.checkpoint["channel_values"] == {"a": "x" * 60, "b": "y" * 60}
    record = namespace_hash(client, key_prefix, "t-same-bytes")[b"c" + base["id"].encode()]
    second.delete_thread("t-same-bytes")
    put(second, ["b", "a"])
    assert namespace_hash(client, key_prefix, "t-same-bytes")[b"c" + base["id"].encode()] == record
    reread = first.get_tuple(cfg("t-same-bytes"))
    assert reread is not None
    assert reread.checkpoint["channel_values"] == {"b": "x" * 60, "a": "y" * 60}
    assert reread.checkpoint["channel_versions"] == {"b": v1, "a": v2}


def lua_load(saver: PlainRedisSaver, thread_id: str, ns: str = "") -> Any:
    """What the load script returns for the latest checkpoint, given the saver's cached dictionary."""
    from ghl_real_estate_ai.persistence.plain_redis import _Eval

    def once() -> Any:
        reply = yield _Eval(SCRIPTS["load"], keys.ns_keys(ns), ["page", "", 1, *saver._load_args(keys, ns)])
        return reply

    keys = Keys(saver.key_prefix, thread_id)
    return saver._drive(once())


def test_reading_back_its_own_write_answers_as_the_load_script_does(
    client: redis.Redis, key_prefix: str
) -> None:
    """The saver reads the checkpoint it wrote last with plain commands (the blob fields are known);
    the reply must be the load script's, whatever another writer did in between."""
    writer = PlainRedisSaver(client, key_prefix=key_prefix)
    other = PlainRedisSaver(client, key_prefix=key_prefix)
    graph = lead_graph().compile(checkpointer=writer)
    graph.invoke({"contact": CONTACT}, cfg("lead:own"), durability="sync")
    keys = Keys(key_prefix, "lead:own")

    def fast() -> Any:
        return writer._drive(writer._op_latest_written(keys, ""))

    assert fast() == lua_load(writer, "lead:own")

    # another writer adds an older checkpoint with a new channel: the latest is still ours, the
    # dictionary grew, and both paths hand back the new dictionary
    from langgraph.checkpoint.base import empty_checkpoint

    older = {**empty_checkpoint(), "id": str(uuid.UUID(int=1))}  # sorts before every uuid6 id
    version = other.get_next_version(None, None)
    older.update(channel_values={"late": "x" * 60}, channel_versions={"late": version})
    other.put(cfg("lead:own", checkpoint_ns=""), older, {"step": -5}, {"late": version})
    reply = fast()
    assert reply[0] is not None and b"late" in reply[0]
    assert reply == lua_load(writer, "lead:own")
    assert writer.get_tuple(cfg("lead:own")) == PlainRedisSaver(client, key_prefix=key_prefix).get_tuple(
        cfg("lead:own")
    )

    # another writer's newer checkpoint: no shortcut, the load script answers
    PlainRedisSaver(client, key_prefix=key_prefix).put(
        cfg("lead:own", checkpoint_ns=""), empty_checkpoint(), {"step": 99}, {}
    )
    graph.invoke({"x": "again"}, cfg("lead:own"), durability="sync")  # reads theirs, writes ours
    assert fast() == lua_load(writer, "lead:own")
    other.put(cfg("lead:own", checkpoint_ns=""), {**empty_checkpoint()}, {"step": 100}, {})
    assert fast() is None
    latest = writer.get_tuple(cfg("lead:own"))
    assert latest is not None and latest.metadata["step"] == 100

    # the thread deleted by another saver: nothing, in one round trip
    graph.invoke({"x": "once more"}, cfg("lead:own"), durability="sync")
    other.delete_thread("lead:own")
    assert fast() == [None]
    assert writer.get_tuple(cfg("lead:own")) is None


def test_a_killed_connection_is_retried_for_reads_and_writes(client: redis.Redis, key_prefix: str) -> None:
    saver = PlainRedisSaver(client, key_prefix=key_prefix)
    graph = lead_graph().compile(checkpointer=saver)
    graph.invoke({"contact": CONTACT}, cfg("lead:kill"), durability="sync")
    expected = saver.get_tuple(cfg("lead:kill"))  # MULTI ... EXEC on the saver's own connection
    killed = [c["id"] for c in client.client_list() if c.get("cmd") in ("exec", "evalsha")]
    assert killed
    for cid in killed:
        client.client_kill_filter(_id=cid)
    assert saver.get_tuple(cfg("lead:kill")) == expected
    graph.invoke({"x": "after"}, cfg("lead:kill"), durability="sync")
    assert graph.get_state(cfg("lead:kill")).values["step"] == 2


def test_clients_without_the_lean_path_read_their_own_writes_through_redis_py(
    redis_url: str, key_prefix: str
) -> None:
    """A single-connection client skips the lean connections: the MULTI read runs as a redis-py
    transaction pipeline and gives what a new saver's load gives."""
    client = redis.Redis.from_url(redis_url, single_connection_client=True)
    try:
        saver = PlainRedisSaver(client, key_prefix=key_prefix)
        graph = lead_graph().compile(checkpointer=saver)
        for turn in range(3):
            graph.invoke({"x": f"turn {turn}"}, cfg("lead:single"), durability="sync")
        keys = Keys(key_prefix, "lead:single")
        assert saver._drive(saver._op_latest_written(keys, "")) == lua_load(saver, "lead:single")
        fresh = PlainRedisSaver(redis.Redis.from_url(redis_url), key_prefix=key_prefix)
        assert saver.get_tuple(cfg("lead:single")) == fresh.get_tuple(cfg("lead:single"))
        assert graph.get_state(cfg("lead:single")).values["step"] == 3
    finally:
        client.close()


async def test_async_clients_without_the_lean_path_read_their_own_writes(
    redis_url: str, key_prefix: str
) -> None:
    client = aredis.Redis.from_url(redis_url, single_connection_client=True)
    try:
        saver = AsyncPlainRedisSaver(client, key_prefix=key_prefix)
        graph = lead_graph().compile(checkpointer=saver)
        for turn in range(3):
            await graph.ainvoke({"x": f"turn {turn}"}, cfg("lead:asingle"), durability="sync")
        mine = await saver.aget_tuple(cfg("lead:asingle"))
        other = PlainRedisSaver(redis.Redis.from_url(redis_url), key_prefix=key_prefix)
        assert mine == other.get_tuple(cfg("lead:asingle"))
        assert mine is not None and mine.checkpoint["channel_values"]["step"] == 3
    finally:
        await client.aclose()


async def test_a_foreign_key_in_the_way_is_an_error_on_both_read_paths(
    redis_url: str, key_prefix: str
) -> None:
    """If something else overwrote the thread's index with another type, a read fails with Redis's
    WRONGTYPE error, whichever way the saver reads."""
    sync_client = redis.Redis.from_url(redis_url)
    async_client = aredis.Redis.from_url(redis_url)
    try:
        for saver in (
            PlainRedisSaver(sync_client, key_prefix=key_prefix),
            AsyncPlainRedisSaver(async_client, key_prefix=key_prefix),
        ):
            from langgraph.checkpoint.base import empty_checkpoint

            thread = f"lead:foreign-{type(saver).__name__}"
            await saver.aput(cfg(thread, checkpoint_ns=""), empty_checkpoint(), {"step": 1}, {})
            index = Keys(key_prefix, thread).ns_keys("")[1]
            sync_client.delete(index)
            sync_client.set(index, "not a sorted set")
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                await saver.aget_tuple(cfg(thread))  # the saver's own last write: MULTI/EXEC
            saver._written.clear()
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                await saver.aget_tuple(cfg(thread))  # the load script
    finally:
        sync_client.close()
        await async_client.aclose()


@pytest.mark.parametrize("connection", ["script connections", "one shared connection", "after SCRIPT FLUSH"])
def test_every_record_but_the_latest_becomes_a_splice(
    redis_url: str, key_prefix: str, connection: str
) -> None:
    """Through the saver's own script connections, through a client's one shared connection, and after
    the server lost its scripts."""
    client = redis.Redis.from_url(redis_url, single_connection_client=connection == "one shared connection")
    try:
        saver = PlainRedisSaver(client, key_prefix=key_prefix)
        graph = lead_graph().compile(checkpointer=saver)
        states = {}
        for n in range(4):
            if connection == "after SCRIPT FLUSH" and n == 2:
                client.script_flush()
            graph.invoke({"contact": {**CONTACT, "n": n}}, cfg("lead:splices"), durability="exit")
            tup = saver.get_tuple(cfg("lead:splices"))
            assert tup is not None
            states[tup.checkpoint["id"]] = tup.checkpoint["channel_values"]
        fields = namespace_hash(client, key_prefix, "lead:splices")
        records = {name: raw for name, raw in fields.items() if name[:1] == b"c"}
        latest = max(records)
        assert records[latest][0] == 3
        older = [raw for name, raw in sorted(records.items())][:-1]
        assert len(older) == 3 and all(raw[0] == 0x80 for raw in older)
        assert_no_orphans(client, key_prefix, "lead:splices")
        for tup in PlainRedisSaver(client, key_prefix=key_prefix).list(cfg("lead:splices")):
            if tup.checkpoint["id"] in states:
                assert tup.checkpoint["channel_values"] == states[tup.checkpoint["id"]]
        saver.close()
    finally:
        client.close()


def test_a_sync_run_keeps_its_inner_checkpoints_whole_and_splices_its_last(
    client: redis.Redis, key_prefix: str
) -> None:
    """durability="sync": the checkpoints a run writes back to back are stored whole (splicing each would
    cost about as much as the rest of the put); the run's last is spliced by the next run's first put."""
    saver = PlainRedisSaver(client, key_prefix=key_prefix)
    graph = lead_graph().compile(checkpointer=saver)
    graph.invoke({"contact": CONTACT}, cfg("lead:sync-runs"), durability="sync")
    first_run = sorted(r for r in namespace_hash(client, key_prefix, "lead:sync-runs") if r[:1] == b"c")
    graph.invoke({"x": "again"}, cfg("lead:sync-runs"), durability="sync")
    records = {n: r for n, r in namespace_hash(client, key_prefix, "lead:sync-runs").items() if n[:1] == b"c"}
    assert len(first_run) >= 2 and len(records) > len(first_run)
    assert records[first_run[-1]][0] == 0x80  # the first run's last checkpoint: a splice
    assert all(records[name][0] == 3 for name in first_run[1:-1])  # its inner ones: whole
    assert_no_orphans(client, key_prefix, "lead:sync-runs")
    states = [t.checkpoint["channel_values"] for t in saver.list(cfg("lead:sync-runs"))]
    assert states[0]["x"] == "again-2" and states[-1] == {"__start__": {"contact": CONTACT}}
