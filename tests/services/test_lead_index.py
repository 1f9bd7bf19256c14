"""The lead index (LeadSequenceStateService) on a real Redis: status sets, due set, cleanup, rebuild."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import redis.asyncio as aredis

from ghl_real_estate_ai.persistence.redis_client import aconnect
from ghl_real_estate_ai.services.lead_sequence_state_service import STATUSES, LeadSequenceStateService

T0 = datetime(2025, 3, 1, 15, 0, tzinfo=UTC)


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


def summary(
    contact_id: str,
    status: str = "active",
    *,
    due: datetime | None = T0,
    updated: datetime = T0,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "contact_id": contact_id,
        "status": status,
        "current_step": "day_3",
        "next_step": "day_7",
        "next_due_at": iso(due),
        "enrolled_at": iso(T0),
        "updated_at": iso(updated),
        "temperature": "warm",
        "location_id": "loc-1",
        **extra,
    }


@pytest.fixture
async def index(redis_url: str, key_prefix: str) -> AsyncIterator[LeadSequenceStateService]:
    client = cast(aredis.Redis, await aconnect(redis_url))  # a cluster client on a cluster node
    yield LeadSequenceStateService(client, prefix=key_prefix)
    await client.aclose()


async def test_update_moves_between_status_sets_and_the_due_set(index: LeadSequenceStateService) -> None:
    await index.update(summary("c1", due=T0 + timedelta(days=4)))
    await index.update(summary("c2", due=T0 + timedelta(days=1)))
    await index.update(summary("c3", "paused", due=None))
    assert await index.counts() == {**dict.fromkeys(STATUSES, 0), "active": 2, "paused": 1}
    assert await index.due_before(T0 + timedelta(days=10)) == [
        ("c2", T0 + timedelta(days=1)),
        ("c1", T0 + timedelta(days=4)),
    ]
    await index.update(summary("c1", "paused", due=None, updated=T0 + timedelta(hours=1)))
    assert await index.counts() == {**dict.fromkeys(STATUSES, 0), "active": 1, "paused": 2}
    assert await index.by_status("paused") == ["c1", "c3"]  # most recently updated first
    assert await index.due_before(T0 + timedelta(days=10)) == [("c2", T0 + timedelta(days=1))]
    got = await index.get("c1")
    assert got is not None and got["status"] == "paused" and got["next_due_at"] is None
    assert got["temperature"] == "warm"


async def test_get_round_trips_extra_keys_and_remove(index: LeadSequenceStateService) -> None:
    s = summary("c9", completed={"day_3": "2025-03-01T15:00:00+00:00"}, replies=2, name="Jane Doe")
    await index.update(s)
    assert await index.get("c9") == s
    assert await index.remove("c9") is True
    assert await index.remove("c9") is False
    assert await index.get("c9") is None
    assert await index.counts() == dict.fromkeys(STATUSES, 0)
    assert await index.due_before(T0 + timedelta(days=365), limit=None) == []


async def test_due_before_is_inclusive_limited_and_exact(index: LeadSequenceStateService) -> None:
    precise = datetime(2025, 3, 4, 9, 30, 15, 123456, tzinfo=UTC)
    await index.update(summary("a", due=precise))
    await index.update(summary("b", due=precise + timedelta(seconds=1)))
    await index.update(summary("c", due=precise - timedelta(days=2)))
    assert await index.due_before(precise) == [("c", precise - timedelta(days=2)), ("a", precise)]
    assert await index.due_before(precise, limit=1) == [("c", precise - timedelta(days=2))]
    assert len(await index.due_before(precise + timedelta(days=1), limit=None)) == 3
    # naive ISO strings are UTC
    await index.update({**summary("d"), "next_due_at": "2025-03-01T10:00:00"})
    assert ("d", datetime(2025, 3, 1, 10, tzinfo=UTC)) in await index.due_before(T0)


async def test_by_status_pages_and_all_ids(index: LeadSequenceStateService) -> None:
    for i in range(7):
        await index.update(summary(f"n{i}", "nurture", updated=T0 + timedelta(minutes=i)))
    assert await index.by_status("nurture", limit=3) == ["n6", "n5", "n4"]
    assert await index.by_status("nurture", limit=3, offset=3) == ["n3", "n2", "n1"]
    assert await index.by_status("nurture", limit=3, offset=6) == ["n0"]
    assert sorted(await index.all_ids()) == [f"n{i}" for i in range(7)]
    assert sorted([cid async for cid in index.iter_ids()]) == [f"n{i}" for i in range(7)]


async def test_cleanup_removes_only_old_finished_leads(index: LeadSequenceStateService) -> None:
    old, new = T0 - timedelta(days=100), T0 + timedelta(days=1)
    for status in ("completed", "opted_out", "cancelled", "failed"):
        await index.update(summary(f"old-{status}", status, due=None, updated=old))
        await index.update(summary(f"new-{status}", status, due=None, updated=new))
    await index.update(summary("old-active", "active", updated=old))
    await index.update(summary("old-qualified", "qualified", due=None, updated=old))
    assert await index.cleanup(finished_before=T0) == 4
    remaining = sorted(await index.all_ids())
    assert remaining == sorted(
        [
            "old-active",
            "old-qualified",
            *(f"new-{s}" for s in ("completed", "opted_out", "cancelled", "failed")),
        ]
    )
    assert (await index.counts())["completed"] == 1
    assert await index.cleanup(finished_before=T0) == 0


async def test_rebuild_from_summaries_equals_the_live_index(
    redis_url: str, key_prefix: str, index: LeadSequenceStateService
) -> None:
    states = [
        summary("a", due=T0 + timedelta(days=3)),
        summary("b", "paused", due=None, updated=T0 + timedelta(hours=2)),
        summary("c", "completed", due=None, updated=T0 - timedelta(days=1)),
        summary("d", "nurture", due=T0 + timedelta(days=30)),
    ]
    for s in states:
        await index.update(s)
    await index.update(summary("a", "qualified", due=None, updated=T0 + timedelta(hours=5)))
    live = await index.snapshot()
    final_states = [summary("a", "qualified", due=None, updated=T0 + timedelta(hours=5)), *states[1:]]

    client = cast(aredis.Redis, await aconnect(redis_url))
    try:
        other = LeadSequenceStateService(client, prefix=f"{key_prefix}-rebuilt")
        await other.update(summary("stale", "failed"))  # replaced wholesale by the rebuild
        assert await other.rebuild(final_states) == 4
        assert await other.snapshot() == live
        # rebuilding the live index in place changes nothing, and leaves no staging keys behind
        assert await index.rebuild(final_states) == 4
        assert await index.snapshot() == live
        keys = [k async for k in client.scan_iter(match=f"{{{key_prefix}:index}}:*")]
        assert not [k for k in keys if b":rebuild:" in k]
        assert await index.rebuild([]) == 0
        assert await index.snapshot() == {"leads": {}, "status": {s: [] for s in STATUSES}, "due": []}
    finally:
        await client.aclose()


async def test_invalid_summaries_are_rejected(index: LeadSequenceStateService) -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        await index.update(summary("x", "sleeping"))
    with pytest.raises(ValueError, match="contact_id"):
        await index.update({**summary("x"), "contact_id": ""})
    with pytest.raises(ValueError, match="ISO 8601"):
        await index.update({**summary("x"), "next_due_at": "next tuesday"})
    await index.update(summary("x"))
    with pytest.raises(ValueError, match="status must be one of"):  # nothing staged or swapped
        await index.rebuild([summary("y"), summary("z", "sleeping")])
    assert await index.all_ids() == ["x"]
    await index.update({**summary("x"), "status": None})  # not in a sequence any more
    assert await index.all_ids() == []


async def test_keys_share_one_hash_tag(
    redis_url: str, key_prefix: str, index: LeadSequenceStateService
) -> None:
    await index.update(summary("k", due=T0))
    client = aredis.Redis.from_url(redis_url)
    try:
        keys = sorted([k async for k in client.scan_iter(match=f"*{key_prefix}*")])
    finally:
        await client.aclose()
    assert keys == sorted(f"{{{key_prefix}:index}}:{n}".encode() for n in ("lead", "due", "status:active"))
