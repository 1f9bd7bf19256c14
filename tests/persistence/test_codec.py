"""The record codec on its own: what ``build_record`` says a record decodes to is what decoding it gives.

The saver reads a record it has just written through the skeleton ``build_record`` returned, and any
other record by parsing it. Both must give the same checkpoint, to the type of every version.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from ghl_real_estate_ai.persistence._codec import (
    KIND_BLOB,
    NameDict,
    Skeleton,
    build_record,
    decode_checkpoint,
    decode_skeleton,
    parse_header,
    prepare_checkpoint,
    typed_from_bytes,
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
    return typed({slot: getattr(skeleton, slot) for slot in Skeleton.__slots__})


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
    body = SERDE.loads_typed(typed_from_bytes(record[parse_header(record).body_at :]))
    assert fields(built) == fields(decode_skeleton(record, body, extended))

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
