"""A lead's storage stays bounded as it ages, and nothing a reader can reach is lost on the way.

The real lead graph on a real Redis (``Simulation`` + the plain Redis savers at their defaults):
history and forks over the last ``DEFAULT_KEEP_EVENTS`` events, extension and patch references that
survive forks and pruning, the migration of a thread written in the layout of earlier releases, the
timeline's summary of old entries in the lead's view, and a TTL on every key a lead's runs write.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import copy_checkpoint
from langgraph.checkpoint.base.id import uuid6
from langgraph.graph import START as GRAPH_START
from langgraph.graph import StateGraph
from typing_extensions import TypedDict

from ghl_real_estate_ai.agents.lead_bot.state import (
    MESSAGES_KEPT,
    SUMMARY_ACTION,
    TIMELINE_DAYS,
    TimelineEntry,
    bounded_timeline,
    recent_messages,
)
from ghl_real_estate_ai.api.metrics import Metrics
from ghl_real_estate_ai.operator_cli import render_status
from ghl_real_estate_ai.persistence import DEFAULT_KEEP_EVENTS, AsyncPlainRedisSaver
from ghl_real_estate_ai.persistence._codec import (
    CHUNK_TAIL_MAX,
    CHUNKED,
    KIND_BLOB,
    RECORD_FORMAT,
    SPLICE,
    Keys,
    inlinable,
    inlinable_format_2,
    parse_header,
    whole_records,
)
from ghl_real_estate_ai.persistence._scripts import SCRIPTS
from ghl_real_estate_ai.sandbox.fakes import make_contact
from ghl_real_estate_ai.sandbox.simulation import Simulation
from ghl_real_estate_ai.service import BotMessages, RecordingCrm, lead_view
from ghl_real_estate_ai.services.send_ledger import RedisSendLedger

START = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)
INBOUND = {"type": "inbound_message", "text": "Thanks, any new listings?", "channel": "sms", "source": "test"}


@pytest.fixture
async def saver(redis_url: str, key_prefix: str) -> AsyncIterator[AsyncPlainRedisSaver]:
    async with AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as s:
        yield s


def config(cid: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": cid}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


async def history(sim: Simulation, cid: str) -> list[Any]:
    return [snap async for snap in sim.graph.aget_state_history(config(cid))]


def event_count(snapshots: list[Any]) -> int:
    """Runs among checkpoints (newest first): a run's first checkpoint is its input (durability sync) or
    its only one (durability exit, a "loop" checkpoint whose step is not its parent's + 1)."""
    count = 0
    for snap, parent in zip(snapshots, [*snapshots[1:], None], strict=True):
        md = snap.metadata or {}
        pmd = (parent.metadata or {}) if parent is not None else {}
        if md.get("source") != "loop" or parent is None or md.get("step") != pmd.get("step", -99) + 1:
            count += 1
    return count


def blob_state(client: redis.Redis, prefix: str, cid: str) -> tuple[set[bytes], set[bytes]]:
    """(blob fields stored, blob fields the stored records reach, through references too)."""
    fields = client.hgetall(Keys(prefix, cid).ns_keys("")[0])
    reach: set[bytes] = set()
    for record in whole_records(fields).values():
        header = parse_header(record)
        reach |= {
            b"b" + struct.pack(">H", nid) + header.vkeys[idx]
            for nid, idx, kind in header.channels
            if kind == KIND_BLOB
        }
    # a record may name a blob that never existed (a channel with a version but no value, as a consumed
    # trigger); a reference always names a stored blob
    todo = [f for f in reach if f in fields]
    while todo:
        value = fields[todo.pop()]
        target = value[5:] if value[:1] == b"\x09" else None
        if value[:1] == b"\x0a":
            (n,) = struct.unpack_from(">H", value, 1)
            target = value[3 : 3 + n]
        if target is not None and target not in reach:
            assert target in fields, "a reference points into a blob that is gone"
            reach.add(target)
            todo.append(target)
    return {f for f in fields if f[:1] == b"b"}, {f for f in reach if f in fields}


# ------------------------------------------------------------------------------------- reducers


def _entry(day: int, action: str = "nurture", outcome: str = "sent") -> TimelineEntry:
    at = (START + timedelta(days=day)).isoformat()
    return {"at": at, "action": action, "outcome": outcome, "reason": "r"}


def test_timeline_folds_old_entries_into_one_summary_in_batches() -> None:
    entries = [_entry(day) for day in range(0, 850, 10)]  # 85 entries over 840 days
    assert bounded_timeline(entries[:-7], []) == entries[:-7]  # within the window and its slack: kept
    folded = bounded_timeline(entries[:-1], entries[-1:])
    head, rest = folded[0], folded[1:]
    assert head["action"] == SUMMARY_ACTION
    newest = START + timedelta(days=840)
    kept = [e for e in entries if datetime.fromisoformat(e["at"]) >= newest - timedelta(days=TIMELINE_DAYS)]
    assert rest == kept  # the last two years stay as they were
    assert head["detail"]["entries"] == len(entries) - len(kept) and head["detail"]["actions"] == {
        "nurture": len(entries) - len(kept)
    }
    assert head["detail"]["from"] == entries[0]["at"] and "summarised" in head["reason"]
    # no fold until a batch is due: the next few entries only append (so storage can share the list)
    later = bounded_timeline(folded, [_entry(850)])
    assert later == [*folded, _entry(850)]
    # a second fold merges into the summary: counts add up, nothing is lost
    much_later = bounded_timeline(later, [_entry(day, "reply") for day in range(860, 950, 10)])
    assert much_later[0]["detail"]["entries"] > head["detail"]["entries"]
    assert much_later[0]["detail"]["entries"] + len(much_later) - 1 == len(entries) + 1 + 9


def test_timeline_keeps_the_last_thousand_entries_of_a_busy_lead() -> None:
    entries = [_entry(0) | {"at": (START + timedelta(minutes=i)).isoformat()} for i in range(1101)]
    folded = bounded_timeline(entries, [])
    assert len(folded) == 1001 and folded[1:] == entries[-1000:]
    assert folded[0]["detail"]["entries"] == 101


def test_messages_keep_the_tail_a_responder_reads() -> None:
    msgs = [HumanMessage(f"m{i}", id=f"in-{i}") for i in range(3 * MESSAGES_KEPT)]
    grown = recent_messages(msgs[:MESSAGES_KEPT], msgs[MESSAGES_KEPT : 2 * MESSAGES_KEPT])
    assert grown == msgs[: 2 * MESSAGES_KEPT]  # up to twice the tail it only grows
    cut = recent_messages(grown, msgs[2 * MESSAGES_KEPT : 2 * MESSAGES_KEPT + 1])
    assert [m.content for m in cut] == [m.content for m in msgs[MESSAGES_KEPT + 1 : 2 * MESSAGES_KEPT + 1]]


# ----------------------------------------------------------------------------- history and forks


async def test_history_and_forks_over_the_last_events_survive_pruning(
    saver: AsyncPlainRedisSaver, key_prefix: str, redis_url: str
) -> None:
    sim = Simulation(START, checkpointer=saver)
    cid = sim.add_lead(make_contact("c-history"))
    seen: dict[str, dict[str, Any]] = {}

    async def record() -> None:
        for snap in await history(sim, cid):
            seen.setdefault(snap.config["configurable"]["checkpoint_id"], snap.values)

    await sim.enroll_all()
    await record()
    for month in range(1, 8):  # scheduled steps (one checkpoint each), replies, an operator pause
        sim.schedule(START + timedelta(days=30 * month, hours=2), cid, INBOUND)
    sim.schedule(START + timedelta(days=100), cid, {"type": "pause", "source": "operator", "reason": "trip"})
    sim.schedule(START + timedelta(days=110), cid, {"type": "resume", "source": "operator"})
    for day in range(5, 240, 5):
        await sim.run_until(START + timedelta(days=day))
        await record()
    assert sim.events_run > 2 * DEFAULT_KEEP_EVENTS

    snapshots = await history(sim, cid)
    assert event_count(snapshots) == DEFAULT_KEEP_EVENTS  # exactly the last 10 events, all of them
    for snap in snapshots:  # every kept checkpoint reads back as it was when written
        assert snap.values == seen[snap.config["configurable"]["checkpoint_id"]]
    client = redis.Redis.from_url(redis_url)
    stored, reached = blob_state(client, key_prefix, cid)
    assert stored == reached  # no blob is orphaned, none that is reached is missing

    # fork from the oldest kept checkpoint: its state is the base, the main line is untouched
    oldest = snapshots[-1]
    fork = await sim.graph.aupdate_state(oldest.config, {"route_reason": "forked"})
    await sim.graph.ainvoke(
        {"contact_id": cid, "event": INBOUND}, fork, context=sim.context, durability="exit"
    )
    forked = (await sim.graph.aget_state(config(cid))).values
    assert forked["timeline"][: len(oldest.values["timeline"])] == oldest.values["timeline"]
    assert forked["timeline"][-1]["action"] == "reply"
    for snap in await history(sim, cid):
        cp = snap.config["configurable"]["checkpoint_id"]
        if cp in seen:
            assert snap.values == seen[cp]  # references rewritten by the fork broke nothing
    stored, reached = blob_state(client, key_prefix, cid)
    assert stored == reached
    client.close()


def event_starts(client: redis.Redis, prefix: str, cid: str) -> list[bytes]:
    """The event index (field 's': u16 length + id prefix, each)."""
    raw = client.hget(Keys(prefix, cid).ns_keys("")[0], "s") or b""
    out, p = [], 0
    while p < len(raw):
        (n,) = struct.unpack_from(">H", raw, p)
        out.append(raw[p + 2 : p + 2 + n])
        p += 2 + n
    return out


async def test_runs_of_several_checkpoints_are_kept_whole_for_the_last_events(
    saver: AsyncPlainRedisSaver, key_prefix: str, redis_url: str
) -> None:
    """durability="sync": a run writes its input and every step; the steps after the first continue the
    run's event (the saver wrote their parent), so ten events keep every checkpoint of ten runs."""
    sim = Simulation(START, checkpointer=saver, durability="sync")
    cid = sim.add_lead(make_contact("c-sync-runs"))
    for month in range(1, 5):
        sim.schedule(START + timedelta(days=30 * month, hours=2), cid, INBOUND)
    await sim.enroll_all()
    await sim.run_until(START + timedelta(days=200))
    assert sim.events_run > 2 * DEFAULT_KEEP_EVENTS
    snapshots = await history(sim, cid)
    assert event_count(snapshots) == DEFAULT_KEEP_EVENTS
    assert len(snapshots) >= 3 * DEFAULT_KEEP_EVENTS  # whole runs: input, router, step node, ...
    client = redis.Redis.from_url(redis_url)
    starts = event_starts(client, key_prefix, cid)
    # the index names exactly the first checkpoint of each kept run
    firsts = [
        snap.config["configurable"]["checkpoint_id"][:20].encode()
        for snap, parent in zip(snapshots, [*snapshots[1:], None], strict=True)
        if (snap.metadata or {}).get("source") != "loop"
        or parent is None
        or (snap.metadata or {}).get("step") != (parent.metadata or {}).get("step", -99) + 1
    ]
    assert starts == sorted(firsts) and len(starts) == DEFAULT_KEEP_EVENTS
    assert client.hget(Keys(key_prefix, cid).ns_keys("")[0], "e") is None
    stored, reached = blob_state(client, key_prefix, cid)
    assert stored == reached
    client.close()


async def test_a_step_after_another_writers_put_starts_an_event(redis_url: str, key_prefix: str) -> None:
    """A saver that wrote a run's last step continues that run only while its put is the latest: after
    another writer's put the next step is indexed as an event of its own, so pruning never cuts into it."""
    builder = _noop_builder()
    cfg = config("c-two-writers")
    async with (
        AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as first,
        AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as second,
    ):
        await builder.compile(checkpointer=first).ainvoke({"items": [1]}, cfg, durability="sync")
        mine = await first.aget_tuple(cfg)
        assert mine is not None and mine.metadata["source"] == "loop"
        await builder.compile(checkpointer=second).ainvoke({"items": [2]}, cfg, durability="sync")
        client = redis.Redis.from_url(redis_url)
        before = event_starts(client, key_prefix, "c-two-writers")
        assert len(before) == 2  # two runs
        # the first saver writes the next step of its run, now a fork of an older checkpoint
        checkpoint = copy_checkpoint(mine.checkpoint)
        checkpoint["id"] = str(uuid6())
        step = mine.metadata["step"] + 1
        await first.aput(mine.config, checkpoint, {"source": "loop", "step": step, "parents": {}}, {})
        after = event_starts(client, key_prefix, "c-two-writers")
        assert after == sorted([*before, checkpoint["id"][:20].encode()])
        # and a step that does follow the first saver's own latest put continues it
        follow = copy_checkpoint(checkpoint)
        follow["id"] = str(uuid6())
        parent_cfg = config("c-two-writers", checkpoint["id"])
        await first.aput(parent_cfg, follow, {"source": "loop", "step": step + 1, "parents": {}}, {})
        assert event_starts(client, key_prefix, "c-two-writers") == after
        client.close()


async def test_the_last_put_field_of_the_first_event_layout_goes_at_the_next_event(
    saver: AsyncPlainRedisSaver, key_prefix: str, redis_url: str
) -> None:
    """Threads written by the release that introduced events also carry field 'e' (the last put's id and
    step); the new puts neither read nor update it, and the next event start removes it."""
    sim = Simulation(START, checkpointer=saver)
    cid = sim.add_lead(make_contact("c-field-e"))
    await sim.enroll_all()
    await sim.run_until(START + timedelta(days=20))
    client = redis.Redis.from_url(redis_url)
    h = Keys(key_prefix, cid).ns_keys("")[0]
    client.hset(h, "e", b"\x00\x03old\x00\x011")
    starts = event_starts(client, key_prefix, cid)
    await sim.dispatch(cid, INBOUND)
    assert client.hget(h, "e") is None
    assert len(event_starts(client, key_prefix, cid)) == min(len(starts) + 1, DEFAULT_KEEP_EVENTS)
    client.close()


async def test_deleting_a_fork_keeps_what_the_main_line_reads_through_its_references(
    saver: AsyncPlainRedisSaver, key_prefix: str, redis_url: str
) -> None:
    """A fork extends an old timeline (the old blob becomes a reference into the fork's); then the fork's
    run is deleted. What the main line reads through that reference must stay."""
    sim = Simulation(START, checkpointer=saver)
    cid = sim.add_lead(make_contact("c-fork-delete"))
    await sim.enroll_all()
    await sim.run_until(START + timedelta(days=20))
    before = {s.config["configurable"]["checkpoint_id"]: s.values for s in await history(sim, cid)}
    base = (await history(sim, cid))[2]
    fork = await sim.graph.aupdate_state(base.config, {"route_reason": "forked"})
    await sim.graph.ainvoke(
        {"contact_id": cid, "event": INBOUND}, fork, context=sim.context, durability="exit"
    )
    fork_ids = [s.config["configurable"]["checkpoint_id"] for s in await history(sim, cid)
                if s.config["configurable"]["checkpoint_id"] not in before]
    assert fork_ids
    keys = Keys(key_prefix, cid)
    client = redis.Redis.from_url(redis_url)
    base_blobs = client.hgetall(keys.ns_keys("")[0])
    assert any(v[:1] in (b"\x09", b"\x0a") for v in base_blobs.values())  # the fork made references
    # remove the fork's checkpoints, as delete_for_runs does for its run
    client.eval(SCRIPTS["remove"].source, 3, keys.nset, *keys.ns_keys(""), keys.base, "", *fork_ids)
    after = {s.config["configurable"]["checkpoint_id"]: s.values for s in await history(sim, cid)}
    assert after == before
    stored, reached = blob_state(client, key_prefix, cid)
    assert stored == reached
    client.close()


# ------------------------------------------------------------------------------------- migration


async def test_a_thread_in_the_earlier_layout_is_migrated_on_its_first_write(
    redis_url: str, key_prefix: str
) -> None:
    cid = "c-migrate"
    async with AsyncPlainRedisSaver.from_conn_string(
        redis_url,
        key_prefix=key_prefix,
        keep_last=200,
        keep_events=None,
        compress=False,
        extension_refs=False,
        record_format=2,
    ) as old_saver:
        old = Simulation(START, checkpointer=old_saver, durability="sync")
        old.add_lead(make_contact(cid))
        for month in range(1, 6):
            old.schedule(START + timedelta(days=30 * month, hours=2), cid, INBOUND)
        await old.enroll_all()
        await old.run_until(START + timedelta(days=200))
        # earlier releases kept every message: store the latest state with a long conversation, as the
        # unbounded add_messages reducer left it, in a checkpoint of its own
        latest = await old_saver.aget_tuple(config(cid))
        assert latest is not None
        checkpoint = copy_checkpoint(latest.checkpoint)
        talk = [HumanMessage(f"message {i}", id=f"in-old-{i}") for i in range(3 * MESSAGES_KEPT)]
        checkpoint["channel_values"]["messages"] = talk
        version = old_saver.get_next_version(checkpoint["channel_versions"].get("messages"), None)
        checkpoint["channel_versions"]["messages"] = version
        checkpoint["id"] = str(uuid6())
        await old_saver.aput(latest.config, checkpoint, {"source": "update", "step": 999, "parents": {}},
                             {"messages": version})
        old_history = [s async for s in old.graph.aget_state_history(config(cid))]
        old_values = old_history[0].values
        assert len(old_values["messages"]) == 3 * MESSAGES_KEPT
    client = redis.Redis.from_url(redis_url)
    h, ik = Keys(key_prefix, cid).ns_keys("")
    assert client.hget(h, "s") is None and client.zcard(ik) == len(old_history) > 60
    memory_before = client.memory_usage(h, samples=0)

    async with AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as saver:
        sim = Simulation(START + timedelta(days=200), checkpointer=saver)
        sim.add_lead(make_contact(cid))
        assert (await sim.state(cid)) == old_values  # the new code reads the old layout as it is
        await sim.dispatch(cid, INBOUND)  # the first write migrates
        snapshots = await history(sim, cid)
        assert event_count(snapshots) == DEFAULT_KEEP_EVENTS
        # the kept old checkpoints read back as they were written
        by_id = {s.config["configurable"]["checkpoint_id"]: s.values for s in old_history}
        for snap in snapshots[1:]:
            assert snap.values == by_id[snap.config["configurable"]["checkpoint_id"]]
        latest = snapshots[0].values
        assert latest["timeline"][: len(old_values["timeline"])] == old_values["timeline"]
        assert len(latest["messages"]) == MESSAGES_KEPT  # the new reducer bounded what it took over
        assert latest["messages"][-2].content == "Thanks, any new listings?"
        assert client.hget(h, "s") is not None and client.zcard(ik) < len(old_history) / 3
        assert client.memory_usage(h, samples=0) < memory_before / 1.5
        stored, reached = blob_state(client, key_prefix, cid)
        assert stored == reached
        # the old events' checkpoints keep their old blobs until they age out; then the lead is as small
        # as one that never knew the old layout
        for month in range(1, 8):
            sim.schedule(START + timedelta(days=200 + 30 * month, hours=2), cid, INBOUND)
        await sim.run_until(START + timedelta(days=420))
        assert client.memory_usage(h, samples=0) < min(32 * 1024, memory_before / 6)
        stored, reached = blob_state(client, key_prefix, cid)
        assert stored == reached
    client.close()


# ---------------------------------------------------------------------------- timeline summary


async def test_old_timeline_entries_are_summarised_in_status_and_the_api_view(
    saver: AsyncPlainRedisSaver,
) -> None:
    sim = Simulation(START, checkpointer=saver)
    cid = sim.add_lead(make_contact("c-old"))
    await sim.enroll_all()
    end = START + timedelta(days=TIMELINE_DAYS + 90)
    await sim.run_until(end)
    values = await sim.state(cid)
    view = lead_view(cid, values, end)  # what GET /api/leads/{id} returns and `lead-bot status` renders
    first, rest = view["timeline"][0], view["timeline"][1:]
    assert first["action"] == SUMMARY_ACTION
    assert first["detail"]["actions"]["enroll"] == 1 and first["detail"]["actions"]["day_3"] == 1
    assert all(e["action"] != "enroll" for e in rest)
    oldest_kept = datetime.fromisoformat(rest[0]["at"])
    assert oldest_kept <= datetime.fromisoformat(rest[-1]["at"]) - timedelta(days=TIMELINE_DAYS - 31)
    text = render_status(view)
    summary_line = next(line for line in text.splitlines() if SUMMARY_ACTION in line)
    assert "earlier entries from" in summary_line and "summarised" in summary_line


# ------------------------------------------------------------------------------------------ TTLs


async def test_every_key_a_lead_writes_has_a_ttl(redis_url: str, key_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=f"{key_prefix}:cp") as saver:
            sim = Simulation(START, checkpointer=saver, ledger=RedisSendLedger(client, prefix=key_prefix))
            crm = RecordingCrm(sim.crm, BotMessages(client, prefix=key_prefix), Metrics())
            sim.runner.context = dataclasses.replace(sim.context, crm=crm)
            for n in range(3):
                cid = sim.add_lead(make_contact(f"c-ttl-{n}"))
                sim.schedule(START + timedelta(days=12), cid, INBOUND)
            sim.schedule(START + timedelta(days=40), "c-ttl-1", {"type": "pause", "source": "operator"})
            await sim.enroll_all()
            await sim.run_until(START + timedelta(days=100))
            assert len(sim.crm.sent) > 10
        keys = [k async for k in client.scan_iter(match=f"{key_prefix}*", count=1000)]
        kinds = {k.decode().split(":")[1] for k in keys}
        assert {"send", "bot-message", "cp"} <= kinds
        no_ttl = [k for k in keys if await client.ttl(k) < 0]
        assert no_ttl == []
    finally:
        await client.aclose()


# ----------------------------------------------------------------------- references are exact


class _Values(TypedDict, total=False):
    section: dict[str, Any]
    items: list[Any]


def _set(state: _Values) -> dict[str, Any]:
    return {}


def _noop_builder() -> StateGraph:
    """A graph of one node that writes nothing: the input alone changes the channels."""
    builder = StateGraph(_Values)
    builder.add_node("noop", _set)
    builder.add_edge(GRAPH_START, "noop")
    return builder


async def test_a_reference_never_changes_what_an_older_version_reads(saver: AsyncPlainRedisSaver) -> None:
    """Equal is not enough for a reference: ``1`` and ``1.0`` compare equal but serialize apart."""
    builder = _noop_builder()
    graph = builder.compile(checkpointer=saver)
    cfg = config("c-exact")
    section = {"n": 1, "flag": True, "nested": {"k": [1, 2]}, "text": "x" * 300}
    await graph.ainvoke({"section": section, "items": [1, {"a": 1}]}, cfg, durability="exit")
    await graph.ainvoke({"section": {**section, "n": 1.0, "flag": 1, "nested": {"k": [1.0, 2]}},
                         "items": [1.0, {"a": 1}, 3]}, cfg, durability="exit")
    await graph.ainvoke({"section": {**section, "text": "y" * 300}, "items": [1.0, {"a": 1}, 3, 4]}, cfg,
                        durability="exit")
    states = [snap.values async for snap in graph.aget_state_history(cfg)]
    oldest = states[-1]
    assert oldest["section"] == section and type(oldest["section"]["n"]) is int
    assert type(oldest["section"]["flag"]) is bool and type(oldest["section"]["nested"]["k"][0]) is int
    assert oldest["items"] == [1, {"a": 1}] and type(oldest["items"][0]) is int
    middle = states[-2]
    assert type(middle["section"]["n"]) is float and middle["items"] == [1.0, {"a": 1}, 3]
    assert states[0]["section"]["text"] == "y" * 300 and states[0]["items"][-1] == 4


async def test_a_reference_to_a_blob_gone_meanwhile_is_not_written(
    redis_url: str, key_prefix: str
) -> None:
    """The saver remembers the list it last wrote; if that blob went meanwhile (another process deleted
    the thread), the put that extends the list must not leave a reference behind with nothing reading it."""
    builder = _noop_builder()
    cfg = config("c-gone")
    async with (
        AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as writer,
        AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as other,
    ):
        graph = builder.compile(checkpointer=writer)
        items = [{"n": i, "text": "x" * 40} for i in range(12)]  # a blob, not inlined
        await graph.ainvoke({"items": items}, cfg, durability="exit")
        first = await writer.aget_tuple(cfg)
        assert first is not None
        await other.adelete_thread("c-gone")
        # the writer extends the list it remembers, on top of the checkpoint it still holds
        checkpoint = copy_checkpoint(first.checkpoint)
        checkpoint["id"] = str(uuid6())
        version = writer.get_next_version(checkpoint["channel_versions"]["items"], None)
        checkpoint["channel_values"]["items"] = [*first.checkpoint["channel_values"]["items"], {"n": 12}]
        checkpoint["channel_versions"]["items"] = version
        await writer.aput(first.config, checkpoint, {"source": "update", "step": 5, "parents": {}},
                          {"items": version})
        client = redis.Redis.from_url(redis_url)
        stored, reached = blob_state(client, key_prefix, "c-gone")
        assert stored == reached and len(stored) == 1  # the new full blob only
        latest = await other.aget_tuple(cfg)
        assert latest is not None and len(latest.checkpoint["channel_values"]["items"]) == 13
        client.close()


SEQUENCE_SECTION = {
    "status": "nurture",
    "status_reason": "new enrollment",
    "enrolled_at": "2026-03-02T14:00:00Z",
    "current_step": "nurture",
    "completed": {"day_3": "2026-03-02T14:00:00Z", "day_7": "2026-03-06T14:00:00Z"},
    "nurture_sent": 23,
    "paused_until": None,
    "next_due_at": "2028-03-18T14:00:00Z",
}


@pytest.mark.parametrize(
    ("value", "inline"),
    [
        ({"type": "step_due", "step": "nurture", "source": "scheduler"}, True),
        ({"attempts": 2, "last_variant": None}, True),
        ({}, True),
        ({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, True),
        (SEQUENCE_SECTION, True),  # one level of nesting
        ({"sent": ["2027-07-22T14:00:00Z"], "active": False}, True),
        ({f"k{i}": i for i in range(32)}, False),  # more than 32 leaves
        ({"a": {"b": {"c": 1}}}, False),  # nested twice
        ({"a": "x" * 49}, True),
        ({"a": "x" * 65}, False),  # a long string
        ("x" * 49, False),  # a long string on its own
        ({"a_key_longer_than_32_characters__": 1}, False),
        ({1: "a"}, False),  # not a str key
        ({"a": (1, 2)}, False),  # a tuple would read back as a list
        ({"a": b"x"}, False),
        ("x" * 48, True),
        ([1, 2], True),
        (list(range(9)), False),  # a list of more than 8 items
        ([{"at": "2026-03-02T14:00:00Z", "action": "enroll"}] * 4, True),
        ([{"at": "2026-03-02T14:00:00Z", "action": "enroll"}] * 12, False),  # a timeline is a blob
    ],
)
def test_small_sections_are_inlined_in_the_record(value: Any, inline: bool) -> None:
    assert inlinable(value) is inline


primitive = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=60),
)


@given(
    st.one_of(
        primitive,
        st.dictionaries(st.text(max_size=20), primitive, max_size=6),
        st.dictionaries(st.text(max_size=4), st.lists(primitive, max_size=3), max_size=3),
        st.lists(primitive, max_size=5),
    )
)
def test_what_format_2_records_inlined_is_inlined_still(value: Any) -> None:
    """A channel left unchanged keeps being stored inline: a record never points at a blob that the
    writer of its version (the earlier release) did not write."""
    if inlinable_format_2(value):
        assert inlinable(value)


async def test_an_inlined_section_reads_back_at_every_version(
    saver: AsyncPlainRedisSaver, redis_url: str, key_prefix: str
) -> None:
    builder = _noop_builder()
    graph = builder.compile(checkpointer=saver)
    cfg = config("c-inline")
    for n in range(3):
        section = {"n": n, "f": n / 2, "ok": bool(n), "s": None}
        await graph.ainvoke({"section": section}, cfg, durability="exit")
    sections = [snap.values["section"] async for snap in graph.aget_state_history(cfg)]
    assert sections == [{"n": n, "f": n / 2, "ok": bool(n), "s": None} for n in (2, 1, 0)]
    assert [type(s["f"]) for s in sections] == [float] * 3
    client = redis.Redis.from_url(redis_url)
    stored, _ = blob_state(client, key_prefix, "c-inline")
    assert stored == set()  # no blob field at all: the sections live in the records
    client.close()


# ------------------------------------------------------------------------------ record splices


def stored_records(client: redis.Redis, prefix: str, cid: str) -> dict[bytes, bytes]:
    """The record fields of a thread's root namespace as stored (``"c"`` + id -> bytes)."""
    fields = client.hgetall(Keys(prefix, cid).ns_keys("")[0])
    return {name: value for name, value in fields.items() if name[:1] == b"c"}


async def test_older_records_are_splices_also_after_a_restart(redis_url: str, key_prefix: str) -> None:
    """Every record but the latest is a splice of a later one, whether the saver wrote the parent itself
    or read it (a fresh process), and every kept checkpoint reads back as it was written."""
    cid = "c-splices"
    seen: dict[str, dict[str, Any]] = {}
    for month in range(3):  # three processes, one after another
        async with AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as saver:
            sim = Simulation(START + timedelta(days=60 * month), checkpointer=saver)
            sim.add_lead(make_contact(cid))
            if month == 0:
                await sim.enroll_all()
            sim.schedule(START + timedelta(days=60 * month + 20), cid, INBOUND)
            await sim.run_until(START + timedelta(days=60 * month + 59))
            for snap in await history(sim, cid):
                seen.setdefault(snap.config["configurable"]["checkpoint_id"], snap.values)
    client = redis.Redis.from_url(redis_url)
    records = stored_records(client, key_prefix, cid)
    latest = max(records)
    assert len(records) > 5
    assert records[latest][0] == RECORD_FORMAT
    assert all(raw[0] == SPLICE for name, raw in records.items() if name != latest)
    whole = whole_records(records)
    assert sum(map(len, records.values())) < sum(map(len, whole.values())) / 3
    async with AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as saver:
        sim = Simulation(START + timedelta(days=180), checkpointer=saver)
        sim.add_lead(make_contact(cid))
        for snap in await history(sim, cid):
            assert snap.values == seen[snap.config["configurable"]["checkpoint_id"]]
    client.close()


async def test_deleting_the_checkpoint_a_splice_is_applied_to_keeps_the_older_ones(
    redis_url: str, key_prefix: str
) -> None:
    builder = _noop_builder()
    cfg = config("c-splice-delete")
    async with AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as saver:
        graph = builder.compile(checkpointer=saver)
        runs = []
        for n in range(5):
            section = {"n": n, "note": f"run {n}", "at": f"2026-03-0{n + 1}T14:00:00Z", "tags": ["a", "b"]}
            await graph.ainvoke({"section": section}, cfg, durability="exit")
            latest = await saver.aget_tuple(cfg)
            assert latest is not None
            runs.append((latest.checkpoint["id"], section))
        client = redis.Redis.from_url(redis_url)
        records = stored_records(client, key_prefix, "c-splice-delete")
        assert sum(raw[0] == SPLICE for raw in records.values()) == 4
        # the middle run's checkpoint is what the one before it is a splice of (removed as
        # delete_for_runs removes a run's checkpoints)
        keys = Keys(key_prefix, "c-splice-delete")
        gone = runs[2][0]
        client.eval(SCRIPTS["remove"].source, 3, keys.nset, *keys.ns_keys(""), keys.base, "", gone)
        records = stored_records(client, key_prefix, "c-splice-delete")
        assert b"c" + gone.encode() not in records
        whole_records(records)  # every chain still ends at a record stored whole
        for checkpoint_id, section in runs:
            at = {"configurable": {**cfg["configurable"], "checkpoint_id": checkpoint_id}}
            tup = await saver.aget_tuple(at)
            if checkpoint_id == gone:
                assert tup is None
            else:
                assert tup is not None and tup.checkpoint["channel_values"]["section"] == section
        # pruning to the latest leaves one record, stored whole
        await saver.aprune(["c-splice-delete"])
        records = stored_records(client, key_prefix, "c-splice-delete")
        assert [raw[0] for raw in records.values()] == [RECORD_FORMAT]
        client.close()


async def test_record_format_2_writes_what_the_earlier_release_reads(
    redis_url: str, key_prefix: str
) -> None:
    cid = "c-format-2"
    async with AsyncPlainRedisSaver.from_conn_string(
        redis_url, key_prefix=key_prefix, record_format=2
    ) as saver:
        sim = Simulation(START, checkpointer=saver)
        sim.add_lead(make_contact(cid))
        await sim.enroll_all()
        await sim.run_until(START + timedelta(days=45))
        state = await sim.state(cid)
    client = redis.Redis.from_url(redis_url)
    records = stored_records(client, key_prefix, cid)
    assert len(records) > 3 and {raw[0] for raw in records.values()} == {2}  # whole records, format 2
    stored, reached = blob_state(client, key_prefix, cid)
    assert stored == reached
    names = [f for f in stored if f[:1] == b"b"]
    assert len(names) > len(records)  # the sections are blobs, as the earlier release stored them
    async with AsyncPlainRedisSaver.from_conn_string(redis_url, key_prefix=key_prefix) as saver:
        sim = Simulation(START + timedelta(days=45), checkpointer=saver)
        sim.add_lead(make_contact(cid))
        assert await sim.state(cid) == state  # and this release reads it
    with pytest.raises(ValueError, match="record_format"):
        AsyncPlainRedisSaver(aioredis.Redis.from_url(redis_url), record_format=4)
    client.close()


async def test_a_growing_list_reuses_its_compressed_prefix_and_reads_back_exactly(
    saver: AsyncPlainRedisSaver, redis_url: str, key_prefix: str
) -> None:
    """A list that grows by an item per put (a timeline) is stored as the previous version's whole blob
    plus the new items, until those pass CHUNK_TAIL_MAX bytes; every version reads back as written."""
    builder = _noop_builder()
    graph = builder.compile(checkpointer=saver)
    cfg = config("c-chunks")
    client = redis.Redis.from_url(redis_url)
    h = Keys(key_prefix, "c-chunks").ns_keys("")[0]
    items: list[Any] = []
    kinds = []
    for n in range(40):
        entry = {"at": f"2026-03-{n % 28 + 1:02d}T14:00:00Z", "action": "nurture", "n": n, "pad": "x" * 60}
        items = [*items, entry]
        await graph.ainvoke({"items": items}, cfg, durability="exit")
        latest = await saver.aget_tuple(cfg)
        assert latest is not None and latest.checkpoint["channel_values"]["items"] == items
        if inlinable(items):  # a few short items live in the record
            continue
        blobs = [v for f, v in client.hgetall(h).items() if f[:1] == b"b" and v[:1] not in (b"\x09", b"\x0a")]
        assert len(blobs) == 1  # older versions are references into it
        kinds.append(blobs[0][0])
        if blobs[0][0] == CHUNKED:
            (n_prefix,) = struct.unpack_from(">I", blobs[0], 1)
            assert len(blobs[0]) - 5 - n_prefix <= CHUNK_TAIL_MAX
    assert CHUNKED in kinds and 8 in kinds  # chunked, and compressed anew when the tail grew too long
    history = [snap.values["items"] async for snap in graph.aget_state_history(cfg)]
    assert history == [items[:n] for n in range(len(items), len(items) - len(history), -1)]
    client.close()
