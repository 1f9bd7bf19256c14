"""The record codec on its own: what ``build_record`` says a record decodes to is what decoding it gives.

The saver reads a record it has just written through the skeleton ``build_record`` returned, and any
other record by parsing it. Both must give the same checkpoint, to the type of every version.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from ghl_real_estate_ai.persistence._codec import (
    KIND_BLOB,
    SPLICE,
    CodecError,
    NameDict,
    Skeleton,
    _decode_body,
    apply_splice,
    build_record,
    chunked,
    compressed,
    decode_checkpoint,
    decode_skeleton,
    load_value,
    parse_header,
    prepare_checkpoint,
    record_segments,
    record_splice,
    splice_target,
    typed_to_bytes,
    whole_records,
)

SERDE = JsonPlusSerializer()

names = st.text(min_size=1, max_size=12)
versions = st.one_of(
    # the InMemorySaver/PostgresSaver form, stored in 10-11 bytes
    st.builds(lambda n, r: f"{n:032}.{r:016}", st.integers(0, 10**6), st.floats(0, 1, exclude_max=True)),
    st.text(max_size=20),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),  # past int64 (a msgpack uint64): stored as a blob
    st.floats(allow_nan=False),
    st.text(max_size=60),  # past 48 characters: a blob
    st.lists(st.integers(-1000, 1000), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(-1000, 1000), max_size=3),
)
parents = st.one_of(
    st.just(""),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.text(max_size=40),
)


@st.composite
def checkpoints(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], str]:
    channels = draw(st.lists(names, unique=True, max_size=8))
    channel_versions = {ch: draw(versions) for ch in channels}
    channel_values = {ch: draw(values) for ch in channels if draw(st.booleans())}
    new_versions = {ch: v for ch, v in channel_versions.items() if draw(st.booleans())}
    nodes = draw(st.lists(names, unique=True, max_size=5))
    versions_seen = {
        node: {ch: draw(versions) for ch in draw(st.lists(names, unique=True, max_size=4))} for node in nodes
    }
    checkpoint = {
        "v": 4,
        "id": "1f0e5c2a-0b6c-6d1e-8000-1234567890ab",
        "ts": draw(
            st.sampled_from(["2026-11-30T15:00:00.123456+00:00", "2026-11-30T15:00:00+00:00", "today"])
        ),
        "channel_values": channel_values,
        "channel_versions": channel_versions,
        "versions_seen": versions_seen,
        "updated_channels": draw(
            st.one_of(st.none(), st.lists(st.sampled_from(channels or ["x"]), max_size=3))
        ),
    }
    return checkpoint, new_versions, draw(parents)


def typed(value: Any) -> Any:
    """A value with the type of every scalar in it, so that 1, 1.0 and True compare unequal."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


def fields(skeleton: Skeleton) -> dict[str, Any]:
    """What a record says, as a skeleton holds it (its segments are checked on their own)."""
    return typed({slot: getattr(skeleton, slot) for slot in Skeleton.__slots__ if slot != "segments"})


@settings(max_examples=300, deadline=None)
@given(checkpoints(), st.lists(names, unique=True, max_size=6))
def test_the_skeleton_of_a_built_record_is_what_decoding_it_gives(
    drawn: tuple[dict[str, Any], dict[str, Any], str], known: list[str]
) -> None:
    checkpoint, new_versions, parent = drawn
    dictionary = NameDict(os.urandom(8), known)  # names the namespace knows already
    prep = prepare_checkpoint(SERDE, checkpoint, {"source": "loop", "step": 1}, parent, new_versions)
    record, added, blobs, built = build_record(SERDE, prep, dictionary)
    extended = dictionary.extended(added)
    body = _decode_body(SERDE, record, parse_header(record).body_at)
    assert fields(built) == fields(decode_skeleton(record, body, extended))
    assert built.segments is not None and record_segments(record) == built.segments
    assert built.segments[-1][2] == len(record)

    # the blob values a load returns, in record order: the new ones from this put, the others absent
    stored = dict(blobs)
    header = parse_header(record)
    blob_values = [
        stored.get(b"b" + name_id.to_bytes(2, "big") + header.vkeys[idx])
        for name_id, idx, kind in header.channels
        if kind == KIND_BLOB
    ]
    via_skeleton = decode_checkpoint(SERDE, checkpoint["id"], record, blob_values, extended, built)
    parsed = decode_checkpoint(SERDE, checkpoint["id"], record, blob_values, extended)
    assert typed(via_skeleton) == typed(parsed)
    assert typed(parsed[0]["channel_versions"]) == typed(checkpoint["channel_versions"])
    assert typed(parsed[0]["versions_seen"]) == typed(checkpoint["versions_seen"])
    assert parsed[2] == (parent or None)


def test_decoding_through_a_skeleton_hands_out_copies() -> None:
    checkpoint = {
        "v": 4,
        "id": "1f0e5c2a-0b6c-6d1e-8000-1234567890ab",
        "ts": "2026-11-30T15:00:00.123456+00:00",
        "channel_values": {"a": "x"},
        "channel_versions": {"a": "v1"},
        "versions_seen": {"node": {"a": "v1"}},
        "updated_channels": ["a"],
    }
    prep = prepare_checkpoint(SERDE, checkpoint, {}, "", {"a": "v1"})
    record, added, _, skeleton = build_record(SERDE, prep, NameDict(b"12345678", ()))
    names = NameDict(b"12345678", added)
    first, _, _ = decode_checkpoint(SERDE, checkpoint["id"], record, [], names, skeleton)
    first["channel_versions"]["a"] = "changed"
    first["versions_seen"]["node"]["a"] = "changed"
    first["versions_seen"]["other"] = {}
    first["updated_channels"].append("b")
    checkpoint["versions_seen"]["node"]["a"] = "changed after the put"
    second, _, _ = decode_checkpoint(SERDE, checkpoint["id"], record, [], names, skeleton)
    assert second["channel_versions"] == {"a": "v1"}
    assert second["versions_seen"] == {"node": {"a": "v1"}}
    assert second["updated_channels"] == ["a"]


# ------------------------------------------------------------------------------------ splices

TARGET = "1f1f214b-9958-6f06-806a-2b46f0b1c165"


@st.composite
def edited(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A record-sized byte string and an edit of it: a few bytes overwritten, inserted, removed."""
    old = draw(st.binary(min_size=1, max_size=900))
    new = bytearray(old)
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(new)))
        kind = draw(st.sampled_from(["overwrite", "insert", "remove"]))
        chunk = draw(st.binary(min_size=1, max_size=12))
        if kind == "overwrite":
            new[at : at + len(chunk)] = chunk
        elif kind == "insert":
            new[at:at] = chunk
        else:
            del new[at : at + len(chunk)]
    return old, bytes(new) or b"\x00"


@settings(max_examples=300, deadline=None)
@given(edited(), st.sampled_from([TARGET, "a-text-id", "x" * 300]))
def test_a_splice_applied_to_its_target_gives_the_record_back(pair: tuple[bytes, bytes], target: str) -> None:
    old, new = pair
    splice = record_splice(old, new, target)
    if splice is None:  # not worth it: stored whole
        return
    assert splice[0] == SPLICE and len(splice) < len(old)
    assert splice_target(splice) == target
    assert apply_splice(new, splice) == old


def test_a_record_that_differs_in_a_few_places_is_stored_in_a_few_bytes() -> None:
    old = bytes(range(256)) * 2
    same_length = bytearray(old)
    same_length[10:14] = b"abcd"
    same_length[300] ^= 0xFF
    splice = record_splice(old, bytes(same_length), TARGET)
    assert splice is not None and len(splice) <= 1 + 17 + 6 + 4 + 6 + 1
    longer = old[:200] + b"XY" + old[200:]
    splice = record_splice(old, longer, TARGET)
    assert splice is not None and len(splice) <= 1 + 17 + 6
    assert record_splice(old, os.urandom(len(old)), TARGET) is None  # nothing in common: stored whole


def test_whole_records_follows_chains_and_refuses_broken_ones() -> None:
    r3 = bytes(range(200))
    r2 = r3[:50] + b"two" + r3[53:]
    r1 = r2[:100] + b"one" + r2[103:]
    ids = ["1f1f214b-0000-6000-8000-000000000001", "1f1f214b-0000-6000-8000-000000000002",
           "1f1f214b-0000-6000-8000-000000000003"]
    s1, s2 = record_splice(r1, r2, ids[1]), record_splice(r2, r3, ids[2])
    assert s1 is not None and s2 is not None
    fields = {b"c" + ids[0].encode(): s1, b"c" + ids[1].encode(): s2, b"c" + ids[2].encode(): r3, b"n": b""}
    assert whole_records(fields) == {b"c" + i.encode(): r for i, r in zip(ids, [r1, r2, r3], strict=True)}
    del fields[b"c" + ids[2].encode()]
    with pytest.raises(CodecError):
        whole_records(fields)


def test_a_chunked_list_is_its_prefix_blob_then_its_tail() -> None:
    head = [{"n": i, "text": "entry " * 20} for i in range(30)]
    prefix = compressed(typed_to_bytes(SERDE.dumps_typed(head)))
    assert prefix[0] == 8  # compressed
    tail = [{"n": 30}, {"n": 31}]
    blob = chunked(prefix, typed_to_bytes(SERDE.dumps_typed(tail)))
    assert load_value(SERDE.loads_typed, blob) == head + tail
    empty = typed_to_bytes(SERDE.dumps_typed([]))
    assert load_value(SERDE.loads_typed, chunked(prefix, empty)) == head
    not_a_list = typed_to_bytes(SERDE.dumps_typed({"a": 1}))
    with pytest.raises(CodecError):
        load_value(SERDE.loads_typed, chunked(not_a_list, empty))
