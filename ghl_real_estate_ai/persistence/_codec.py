"""Byte layouts of the plain-Redis checkpointer: key names, checkpoint records, pending-write packs.

Nothing here does I/O. The Lua scripts in ``_scripts.py`` read the same layouts, so a change here
must change them too (and bump ``RECORD_FORMAT``).

Key names (``P`` = key prefix, ``T`` = the escaped thread id, ``NS`` = the raw checkpoint namespace)::

    P:{T}:n          SET   the thread's namespaces (raw ns strings)
    P:{T}:i:NS       ZSET  checkpoint ids, all scored 0, so lexicographic order = uuid6 time order
    P:{T}:h:NS       HASH  everything else of the namespace, by field prefix:
                             "c" + checkpoint id       -> checkpoint record
                             "w" + checkpoint id       -> pending-writes pack
                             "b" + u16 name id + vkey  -> blob: one channel value at one version
                             "n"                       -> name dictionary and flags
                             "s"                       -> the event index (``keep_events``): the ids
                                                          starting the kept events (``_scripts.PUT``;
                                                          "e", the last put's id and step, was kept
                                                          by one earlier release, removed on sight)
    P:threads        ZSET  thread id -> unix time of the last registry touch (for ``list(None)``)

A namespace thus costs two keys (fewer keys: less memory and fewer expiry refreshes per write).
Every key of a thread carries the hash tag ``{T}``, so all of them live in one Redis Cluster slot and
one Lua script may touch them all. ``T`` escapes ``%``, ``{`` and ``}`` (percent-encoding), which makes
the escaping injective and keeps the tag from ending early. Namespaces and checkpoint ids are never
parsed out of key names: the namespace is the whole tail after ``:c:`` (it may contain ``:`` or braces),
and the real ids live in values (the namespace set, the index members).

Checkpoint record (format 3), little more than ``struct`` so that Lua can read the header::

    u8   format (3, or 2 for records of the release before, which this one reads as they are)
    par  parent checkpoint id: 254 + 16 uuid bytes, or len + text ("" for none)
    u16  number of version keys, then each as len + bytes      (a table: versions repeat a lot)
    u16  number of channels, then each as >HHB: name id, version-table index, kind
    tab  (format 3 only) the body's segments: u16 n (0xFFFF: none, the body is one piece), then
         n + 1 u32 lengths: the body up to its inline values, then each inline value's msgpack
    body typed value (below) of [ts, v, versions_seen, updated_channels, extra, metadata, inline_values]

A format-3 body is the same msgpack array format 2 stores, so it decodes in one call; the table only
says where each inline value's bytes are (``record_segments``). An inline value's bytes are kept per
(channel, version) by the saver, so an unchanged value is the same bytes in every record.

``len`` is one byte below 254, else ``0xFF`` + u16. Names (channels, nodes) are ids into the
namespace's name dictionary (``NameDict``, field ``n``: 8-byte epoch, flags byte, u16 count, names as
len + bytes), so records do not repeat them; the flags are FORK (1: history is not one chain, pruning
checks every survivor) and DELTA (2: the thread uses a DeltaChannel, never prune automatically).
``kind`` says where the channel's value is: ``0`` in a blob field (``"b"`` + name id + version key),
``1`` inline in ``inline_values`` (small primitives: None, bool, int64, float, short str, as
PostgresSaver inlines primitives, and dicts and lists of up to 32 of them, one level of nesting deep,
``inlinable``; format 2 inlined flat dicts of at most four), ``2`` no value (the channel was emptied at
this version).

Record splices: when a put that starts a run stores checkpoint N whose parent P is the record the saver
last wrote or read there, P's record is rewritten (same field) into a *splice* of N's: ``SPLICE``
(``0x80``), N's id (as a parent is stored), then ops ``>HHH`` (position in N's record, bytes cut there,
bytes inserted) + the inserted bytes. Consecutive records differ in a few dozen bytes (parent, the
versions a step wrote, ts, step, the sections that changed), so a kept checkpoint costs about 150 bytes
instead of a whole record; the ops are found segment by segment (``record_splice``). A splice always
points at a later checkpoint, so chains run from older to newer and end at a record stored whole (at
least the thread's latest); the scripts' ``record_of`` applies them, and a delete that removes a
checkpoint a survivor's chain passes through first stores that survivor whole.
``versions_seen`` is a list ``[node id, [channel id, version index, ...], ...]``, ``updated_channels``
a list of name ids. ``ts`` is stored as integer microseconds when that reproduces the string exactly.

Version keys are exact, injective byte forms of LangGraph versions. The InMemorySaver/PostgresSaver
form ``f"{n:032}.{random():016}"`` (ours too) is ``b"\\x01"`` + the random part as a big-endian
double + the decimal digits of ``n`` (10-11 bytes instead of 51); any other string is ``s`` + the
string, an int ``i`` + digits, a float ``f`` + its repr.

Typed values (``serde.dumps_typed`` results: blobs, pending writes, the record body) are one byte
naming the serde type tag (``1`` msgpack, ``2`` null, ``3`` bytes, ``4`` bytearray, ``5`` empty,
``6`` json, ``7`` pickle) followed by the raw serde bytes; any other tag is stored as ``0`` + tag +
``\\0`` + bytes. No base64, no JSON wrapping. More codes only appear in blobs:

* ``8`` + zlib stream: a typed value of at least ``COMPRESS_MIN`` bytes, compressed (only kept when
  smaller). Lua never looks inside blobs, so compression is invisible to the scripts.
* ``9`` + u32 ``n`` + field name: an *extension reference*. The channel's value at this version is the
  first ``n`` items of the list stored in blob field ``field`` (``n`` = ``0xFFFFFFFF``: all of the
  value, whatever its type), a later version of the same channel that extended (or repeated) this
  one; that blob may be a reference too, always to a still later version. A put that stores a list
  extending the previous version's list, or a value equal to the previous version's, rewrites the
  previous blob into such a reference, so an append-only channel (the timeline) or one rewritten with
  the same value (the contact snapshot) costs one full copy per thread, not one per kept version.
* ``10`` + u16 length + field name + typed patch: a *patch reference*. The channel's value at this
  version is the dict in blob ``field`` (a later version) with the patch applied: the patch is
  ``[{key: value this version had}, [keys this version lacked]]``. A put whose dict differs from the
  previous version's in a few keys stores the previous one so (when that is smaller).
* ``12`` + u32 ``n`` + a whole blob of ``n`` bytes + a typed list: a *chunked list*, the items of the
  first followed by those of the second (``chunked``). A list that grew by a few items reuses the
  previous version's whole blob as its prefix and serializes only the new items, until those pass
  ``CHUNK_TAIL_MAX`` bytes and the whole list is compressed anew. To the scripts it is a whole blob.

References form chains from older to newer versions, ending at a whole blob. The load script follows a
chain and returns ``11`` + u16 count + each link (u32 length + the reference blob) + the whole blob;
``load_blob`` applies the links from the newest back to the oldest.

Pending-writes pack (one hash field per checkpoint): task groups ``>HHH`` (len task_id,
len task_path, number of writes) + task_id + task_path, each followed by its writes ``>iHI`` (idx,
len channel, len value) + channel + typed value.
"""

from __future__ import annotations

import functools
import random
import re
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

RECORD_FORMAT = 3
READ_FORMATS = frozenset({2, 3})
"""Format 3 has format 2's layout; the number says the record may inline what format 2 kept in blobs
(``inlinable``), so a release that knows only format 2 refuses the thread instead of misreading it."""
SPLICE = 0x80
"""First byte of a record stored as a splice of a later record (``record_splice``)."""

KIND_BLOB = 0
KIND_INLINE = 1
KIND_EMPTY = 2

_U16 = struct.Struct(">H")
_SPLICE_OP = struct.Struct(">HHH")
_CHANNEL = struct.Struct(">HHB")
_LEN_UUID = 254  # a length byte of 254 means "a 16-byte uuid follows", 255 "a u16 length follows"
_LEN_U16 = 255
_DOUBLE = struct.Struct(">d")
_GROUP_HEAD = struct.Struct(">HHH")
_WRITE_HEAD = struct.Struct(">iHI")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_INLINE_STR_MAX = 48
_INLINE_NESTED_STR_MAX = 64
_INLINE_LEAVES = 32
INLINE_LIST_MAX = 8  # a longer list is a blob: it is likely to grow (a timeline, a conversation)
_INLINE_KEY_MAX = 32
_VERSION_INT_WIDTH = 32
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_TAG_CODES = {"msgpack": 1, "null": 2, "bytes": 3, "bytearray": 4, "empty": 5, "json": 6, "pickle": 7}
_ZLIB = 8
REF = 9
COMPRESS_MIN = 256
_COMPRESS_HARDER = 4096
"""Blobs this long (typed bytes) or longer are zlib-compressed when that makes them smaller."""
_REF_HEAD = struct.Struct(">BI")
REF_WHOLE = 0xFFFFFFFF
PATCH = 10
_RESOLVED = 11
CHUNKED = 12
CHUNK_TAIL_MAX = 512
"""A list blob may carry up to this many bytes of items after its compressed prefix (``chunked``)."""
_RESOLVED_HEAD = bytes((_RESOLVED,))
_U32 = struct.Struct(">I")
_CODE_TAGS = {code: tag for tag, code in _TAG_CODES.items()}
_TAG_PREFIX = {tag: bytes([code]) for tag, code in _TAG_CODES.items()}

# Version strings repeat across checkpoints of a thread, so both directions are memoised. The caches
# are dropped whole when they grow past the bound; that is cheaper than an LRU and never wrong.
_CACHE_MAX = 20_000
_vkey_cache: dict[str, bytes] = {}
_version_cache: dict[bytes, Any] = {}


class CodecError(ValueError):
    """A stored value does not have the layout this module writes."""


# ---------------------------------------------------------------------------------------- keys


def escape_thread_id(thread_id: str) -> str:
    """Percent-encode ``%``, ``{`` and ``}`` so the thread id can sit inside a Redis hash tag."""
    if "%" in thread_id or "{" in thread_id or "}" in thread_id:
        return thread_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return thread_id


class Keys:
    """Key names of one thread (see the module docstring)."""

    __slots__ = ("base", "nset")

    def __init__(self, prefix: str, thread_id: str) -> None:
        self.base = f"{prefix}:{{{escape_thread_id(thread_id)}}}".encode()
        self.nset = self.base + b":n"

    def ns_keys(self, ns: str) -> list[bytes]:
        """``[hash, index]`` of namespace ``ns``."""
        n = ns.encode()
        return [self.base + b":h:" + n, self.base + b":i:" + n]


# ------------------------------------------------------------------------------------- typed


def typed_to_bytes(typed: tuple[str, bytes]) -> bytes:
    """``(tag, data)`` from ``serde.dumps_typed`` as one Redis string (see the module docstring)."""
    tag, data = typed
    prefix = _TAG_PREFIX.get(tag)
    if prefix is not None:
        return prefix + data
    if "\x00" in tag:
        raise ValueError(f"serde type tag {tag!r} contains NUL")
    return b"\x00" + tag.encode() + b"\x00" + data


def compressed(typed: bytes) -> bytes:
    """``typed`` (from :func:`typed_to_bytes`) zlib-compressed when it is long and that saves space."""
    if len(typed) < COMPRESS_MIN:
        return typed
    # level 1 is within a few per cent of 6 on small values at half the time; a long timeline gains 10%
    packed = bytes((_ZLIB,)) + zlib.compress(typed, 6 if len(typed) >= _COMPRESS_HARDER else 1)
    return packed if len(packed) < len(typed) else typed


def chunked(prefix: bytes, tail: bytes) -> bytes:
    """The blob of a list that is the list in blob ``prefix`` (a whole blob: compressed or plain) followed
    by the items of the typed list ``tail``. A list that grows by a few items at a time (a timeline) is
    stored so: the prefix's bytes are reused from the previous version's blob, and only the new items are
    serialized, until the tail reaches ``CHUNK_TAIL_MAX`` bytes and the whole list is compressed anew."""
    return bytes((CHUNKED,)) + _U32.pack(len(prefix)) + prefix + tail


def load_value(loads: Any, raw: bytes) -> Any:
    """A whole blob's value: a typed value (maybe compressed), or a ``chunked`` list."""
    if raw[:1] != bytes((CHUNKED,)):
        return loads(typed_from_bytes(raw))
    try:
        (n,) = _U32.unpack_from(raw, 1)
    except struct.error as exc:
        raise CodecError("truncated chunked list") from exc
    head, tail = load_value(loads, raw[5 : 5 + n]), loads(typed_from_bytes(raw[5 + n :]))
    if type(head) is not list or type(tail) is not list:
        raise CodecError("a chunked blob holds something other than lists")
    return head + tail


def extension_ref(count: int, field: bytes) -> bytes:
    """The blob of a list version that is the first ``count`` items of the list in blob ``field``."""
    return _REF_HEAD.pack(REF, count) + field


def patch_ref(field: bytes, patch_typed: bytes) -> bytes:
    """The blob of a dict version that is the dict in blob ``field`` with ``patch_typed`` applied."""
    return bytes((PATCH,)) + _U16.pack(len(field)) + field + patch_typed


def same(a: Any, b: Any) -> bool:
    """``a == b`` with the same types all the way down (``1`` and ``1.0``, ``True`` and ``1`` differ),
    so a value rebuilt from a reference serializes as the original did. Identical objects (what a
    list that only grew shares with its previous version) cost one comparison."""
    if a is b:
        return True
    ta = type(a)
    if ta is not type(b):
        return False
    if ta is dict:
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items())
    if ta is list or ta is tuple:
        return len(a) == len(b) and all(map(same, a, b))
    return bool(a == b)


def dict_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Any]:
    """What turns ``new`` back into ``old``: ``[{key: old value}, [keys old lacks]]``."""
    changed = {k: v for k, v in old.items() if k not in new or (new[k] is not v and not same(new[k], v))}
    return [changed, [k for k in new if k not in old]]


def is_ref(raw: bytes) -> bool:
    return raw[:1] in (b"\x09", b"\x0a")


def typed_from_bytes(raw: bytes) -> tuple[str, bytes]:
    if not raw:
        raise CodecError("empty typed value")
    code = raw[0]
    if code == _ZLIB:
        try:
            return typed_from_bytes(zlib.decompress(raw[1:]))
        except zlib.error as exc:
            raise CodecError(f"corrupt compressed value: {exc}") from exc
    if code:
        tag = _CODE_TAGS.get(code)
        if tag is None:
            raise CodecError(f"unknown serde tag code {code}")
        return tag, raw[1:]
    tag_b, sep, data = raw[1:].partition(b"\x00")
    if not sep:
        raise CodecError("typed value has no tag terminator")
    return tag_b.decode(), data


def is_empty_typed(raw: bytes) -> bool:
    return raw[:1] == _TAG_PREFIX["empty"]


# ------------------------------------------------------------------------------------ versions


def _version_key_uncached(version: Any) -> bytes:
    vt = type(version)
    if vt is str:
        v: str = version
        w = _VERSION_INT_WIDTH
        if len(v) > w and v[w] == "." and v[:w].isascii() and v[:w].isdigit():
            suffix = v[w + 1 :]
            try:
                rnd = float(suffix)
            except ValueError:
                rnd = None
            if rnd is not None and f"{rnd:016}" == suffix:
                return b"\x01" + _DOUBLE.pack(rnd) + str(int(v[:w])).encode()
        return b"s" + v.encode()
    if vt is int:
        return f"i{version}".encode()
    if vt is float:
        return f"f{version!r}".encode()
    raise TypeError(f"channel versions must be str, int or float, not {vt.__name__}: {version!r}")


def new_version(n: int) -> str:
    """The InMemorySaver/PostgresSaver version string ``f"{n:032}.{random():016}"``, with its version key
    remembered (a put would otherwise parse it back right away)."""
    rnd = random.random()
    version = f"{n:032}.{rnd:016}"
    if len(_vkey_cache) >= _CACHE_MAX:
        _vkey_cache.clear()
    # what _version_key_uncached gives: the suffix is rnd's repr, zero-padded, so it parses back to rnd
    _vkey_cache[version] = b"\x01" + _DOUBLE.pack(rnd) + str(n).encode()
    return version


def version_key(version: Any) -> bytes:
    """An exact, injective byte form of a channel version (see the module docstring)."""
    if type(version) is str:  # only strings are cached: 1, 1.0 and True are equal dict keys
        key = _vkey_cache.get(version)
        if key is None:
            key = _version_key_uncached(version)
            if len(_vkey_cache) >= _CACHE_MAX:
                _vkey_cache.clear()
            _vkey_cache[version] = key
        return key
    return _version_key_uncached(version)


def version_from_key(key: bytes) -> Any:
    """Inverse of :func:`version_key`."""
    version = _version_cache.get(key)
    if version is not None:
        return version
    head = key[:1]
    if head == b"\x01":
        (rnd,) = _DOUBLE.unpack_from(key, 1)
        version = f"{int(key[9:]):0{_VERSION_INT_WIDTH}}.{rnd:016}"
    elif head == b"s":
        version = key[1:].decode()
    elif head == b"i":
        version = int(key[1:])
    elif head == b"f":
        version = float(key[1:])
    else:
        raise CodecError(f"bad version key {key!r}")
    if len(_version_cache) >= _CACHE_MAX:
        _version_cache.clear()
    _version_cache[key] = version
    return version


def _primitive(value: Any) -> bool:
    t = type(value)
    if value is None or t is bool or t is float:
        return True
    if t is int:
        return _INT64_MIN <= value <= _INT64_MAX
    if t is str:
        return len(value) <= _INLINE_STR_MAX
    return False


def inlinable(value: Any) -> bool:
    """Values cheaper inline in every record than as a blob hash field: small primitives, and small
    dicts and lists (of up to 8 items) of them, one level of nesting deep, 32 values in all (an event,
    a counter section, the sequence and engagement sections, a contact: a few hundred bytes at most).
    A record that repeats an unchanged one costs next to nothing once it is stored as a splice of its
    child (see ``record_splice``), where a blob would cost a hash field per version. Decided from the
    value alone, so every record that holds a channel at one version stores it the same way; every
    value the rule of format-2 records inlined (flat dicts of up to four primitives) is inlined by this
    one too."""
    t = type(value)
    if t is dict or (t is list and len(value) <= INLINE_LIST_MAX):
        return _inline_leaves(value, 2) >= 0
    return _primitive(value)


def inlinable_format_2(value: Any) -> bool:
    """The rule of format-2 records: small primitives and flat dicts of at most four of them."""
    if type(value) is dict:
        return len(value) <= 4 and all(
            type(k) is str and len(k) <= 16 and _primitive(v) for k, v in value.items()
        )
    return _primitive(value)


_INLINE_RULES = {2: inlinable_format_2, 3: inlinable}


def _inline_leaves(value: Any, depth: int) -> int:
    """The leaves of a dict/list tree that may be inlined (containers count as one), or -1. Primitive
    items are checked in the loop, without a call each (this runs for every new section version)."""
    t = type(value)
    if t is dict:
        items: Any = value.items()
    elif t is list:
        items = value
    elif t is str:
        return 1 if len(value) <= _INLINE_NESTED_STR_MAX else -1
    else:
        return 1 if _primitive(value) else -1
    if depth == 0 or len(value) > _INLINE_LEAVES:
        return -1
    total = 1
    keyed = t is dict
    for item in items:
        if keyed:
            key, item = item
            if type(key) is not str or len(key) > _INLINE_KEY_MAX:
                return -1
        ti = type(item)
        if ti is str:
            if len(item) > _INLINE_NESTED_STR_MAX:
                return -1
            total += 1
        elif item is None or ti is bool or ti is float:
            total += 1
        elif ti is int:
            if not _INT64_MIN <= item <= _INT64_MAX:
                return -1
            total += 1
        elif (ti is dict or ti is list) and depth > 1:
            n = _inline_leaves(item, depth - 1)
            if n < 0:
                return -1
            total += n
        else:
            return -1
        if total > _INLINE_LEAVES:
            return -1
    return total


def _ts_out(ts: Any) -> Any:
    """LangGraph's ``datetime.now(timezone.utc).isoformat()`` as int microseconds, when exact."""
    if type(ts) is str and ts.endswith("+00:00"):
        try:
            us = (datetime.fromisoformat(ts) - _EPOCH) // _MICROSECOND
        except ValueError:
            return ts
        if (_EPOCH + us * _MICROSECOND).isoformat() == ts:
            return us
    return ts


def _ts_in(value: Any) -> Any:
    if type(value) is int:
        return (_EPOCH + value * _MICROSECOND).isoformat()
    return value


# -------------------------------------------------------------------------------------- records


def _put_len(out: bytearray, n: int) -> None:
    if n < _LEN_UUID:
        out.append(n)
    elif n <= 0xFFFF:
        out.append(_LEN_U16)
        out += _U16.pack(n)
    else:
        raise ValueError(f"name or version too long to store ({n} bytes, at most 65535)")


def _get_len(buf: bytes, pos: int) -> tuple[int, int]:
    n = buf[pos]
    if n < _LEN_UUID:
        return n, pos + 1
    return _U16.unpack_from(buf, pos + 1)[0], pos + 3


def _parent_bytes(parent_id: str | None) -> bytes:
    """A canonical (lower-case, hyphenated) uuid as 254 + its 16 bytes, anything else as len + text."""
    if parent_id and len(parent_id) == 36:
        hexa = parent_id.replace("-", "")
        if (
            len(hexa) == 32
            and parent_id[8] == parent_id[13] == parent_id[18] == parent_id[23] == "-"
            and (hexa.islower() or hexa.isdigit())
        ):
            try:
                raw = bytes.fromhex(hexa)
            except ValueError:
                raw = b""
            if len(raw) == 16:
                return bytes((_LEN_UUID,)) + raw
    out = bytearray()
    b = (parent_id or "").encode()
    _put_len(out, len(b))
    return bytes(out + b)


class NameDict:
    """A namespace's dictionary of channel and node names; records refer to names by position.

    Stored in the namespace hash (field ``n``) as an 8-byte epoch, a flags byte, a u16 count and the
    names (``len`` + bytes each). It only ever grows; the epoch changes when the namespace is deleted
    and created again, so a cached copy is valid exactly when epoch and count match (the Lua scripts
    check). Instances are immutable, so threads may share them.
    """

    __slots__ = ("epoch", "index", "names")

    def __init__(self, epoch: bytes, names: Sequence[str]) -> None:
        self.epoch = epoch
        self.names = tuple(names)
        self.index = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def parse(cls, raw: bytes) -> NameDict:
        if len(raw) < 11:
            raise CodecError("name dictionary shorter than its header")
        (count,) = _U16.unpack_from(raw, 9)
        names: list[str] = []
        pos = 11
        while pos < len(raw):
            n, pos = _get_len(raw, pos)
            names.append(raw[pos : pos + n].decode())
            pos += n
        if len(names) != count:
            raise CodecError(f"name dictionary says {count} names but holds {len(names)}")
        return cls(raw[:8], names)

    @staticmethod
    def pack(names: Sequence[str]) -> bytes:
        out = bytearray()
        for name in names:
            b = name.encode()
            _put_len(out, len(b))
            out += b
        return bytes(out)

    def extended(self, names: Sequence[str]) -> NameDict:
        return NameDict(self.epoch, self.names + tuple(names)) if names else self

    def is_current(self, raw: bytes) -> bool:
        """Whether this copy is the dictionary ``raw`` (as stored): same epoch, same count."""
        return raw[:8] == self.epoch and len(raw) >= 11 and _U16.unpack_from(raw, 9)[0] == len(self.names)


class PreparedCheckpoint:
    """The name-independent part of a checkpoint's encoding: the new blobs serialized once (even if the
    record has to be rebuilt because the cached name dictionary was stale), the body's fixed parts and
    the parent id in its stored form."""

    __slots__ = ("blobs", "checkpoint", "head", "inline", "inlined", "new_versions", "parent_id", "tail")

    def __init__(
        self,
        checkpoint: Mapping[str, Any],
        new_versions: Mapping[str, Any],
        parent_id: str | None,
        tail: list[Any],
        blobs: dict[str, bytes],
        record_format: int = RECORD_FORMAT,
        inlined: dict[str, bytes | bool] | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.new_versions = new_versions
        self.parent_id = parent_id or None
        self.head = bytes((record_format,)) + _parent_bytes(parent_id)  # format byte + parent
        self.inline = _INLINE_RULES[record_format]  # which values the record holds inline
        self.tail = tail  # [ts, v, extra, metadata]
        self.blobs = blobs  # channel -> typed value, for the new channels whose value is a blob
        # channel -> msgpack bytes (format 3; True when the value is no plain msgpack, or format 2), for
        # the new channels whose value is inline
        self.inlined = inlined if inlined is not None else {}


_STANDARD_KEYS = frozenset(
    {"v", "id", "ts", "channel_values", "channel_versions", "versions_seen", "updated_channels"}
)


def prepare_checkpoint(
    serde: Any,
    checkpoint: Mapping[str, Any],
    metadata: Mapping[str, Any],
    parent_id: str | None,
    new_versions: Mapping[str, Any],
    *,
    compress: bool = True,
    record_format: int = RECORD_FORMAT,
    premade: Mapping[str, bytes] | None = None,
) -> PreparedCheckpoint:
    """Serialize the blobs of ``checkpoint``'s channels in ``new_versions``, and the parts of the record
    that do not depend on the name dictionary.

    Only channels listed in ``new_versions`` (at the version the checkpoint carries) get a blob; an
    unchanged channel keeps pointing at the blob an earlier checkpoint wrote. ``premade`` gives blobs
    already made for some of them (lists that are not ``inlinable``).
    """
    values: Mapping[str, Any] = checkpoint.get("channel_values") or {}
    versions: Mapping[str, Any] = checkpoint.get("channel_versions") or {}
    dumps = serde.dumps_typed
    inline = _INLINE_RULES[record_format]
    blobs: dict[str, bytes] = {}
    inlined: dict[str, bytes | bool] = {}
    for channel, version in new_versions.items():
        if channel in values and versions.get(channel) == version:
            value = values[channel]
            if premade and channel in premade:  # a blob the caller made (a chunked list)
                blobs[channel] = premade[channel]
            elif not inline(value):
                typed = typed_to_bytes(dumps(value))
                blobs[channel] = compressed(typed) if compress else typed
            elif record_format >= 3:
                inlined[channel] = _msgpack_of(dumps, value) or True
            else:
                inlined[channel] = True
    extra = {k: v for k, v in checkpoint.items() if k not in _STANDARD_KEYS}
    tail = [_ts_out(checkpoint.get("ts")), checkpoint.get("v"), extra, dict(metadata)]
    return PreparedCheckpoint(checkpoint, new_versions, parent_id, tail, blobs, record_format, inlined)


_NO_SEGMENTS = b"\xff\xff"
_ARRAY7 = b"\x97"


def _msgpack_of(dumps: Any, value: Any) -> bytes | None:
    """``value`` as plain msgpack (what ``dumps_typed`` gives under the tag ``msgpack``; ``None`` is
    tagged ``null``), else None."""
    tag, data = dumps(value)
    if tag == "msgpack":
        return bytes(data)
    return b"\xc0" if tag == "null" else None


def _array_head(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    return b"\xdc" + _U16.pack(n) if n <= 0xFFFF else b"\xdd" + _U32.pack(n)


@functools.lru_cache(maxsize=64)
def _table_struct(n: int) -> struct.Struct:
    return struct.Struct(f">H{n + 1}I")


def _segmented_record(
    head: bytes, core: tuple[str, bytes], inline_ids: list[int], inline_raw: list[bytes | None]
) -> tuple[bytes, list[tuple[int, int, int]] | None]:
    """A format-3 record: the head, a table of the body's segment lengths (u16 count of inline values,
    then u32 the core's length and each inline value's), and the body, one msgpack array exactly as
    format 2 stores it, so it decodes in one call: ``[ts, v, seen, updated, extra, metadata, inline]``.
    The segments (``record_segments``) are what a splice compares one by one. ``(b"", None)`` when a
    part is no plain msgpack (the caller stores the record without segments)."""
    tag, data = core
    n = len(inline_raw)
    if tag != "msgpack" or data[:1] != b"\x96" or n >= 0xFFFF or None in inline_raw:
        return b"", None
    raw = cast(list[bytes], inline_raw)
    first = b"".join((_TAG_PREFIX["msgpack"], _ARRAY7, data[1:], _array_head(n)))
    lengths = [len(first), *map(len, raw)]
    table = _table_struct(n).pack(n, *lengths)
    pos = len(head) + len(table)
    segments = [(_SEGMENT_HEAD, 0, len(head)), (_SEGMENT_TABLE, len(head), pos)]
    for key, length in zip((_SEGMENT_CORE, *inline_ids), lengths, strict=True):
        segments.append((key, pos, pos + length))
        pos += length
    return b"".join((head, table, first, *raw)), segments


def build_record(
    serde: Any,
    prep: PreparedCheckpoint,
    names: NameDict,
    inline_kinds: dict[tuple[str, bytes], bool | bytes] | None = None,
) -> tuple[bytes, list[str], list[tuple[bytes, bytes]], Skeleton]:
    """The record of a prepared checkpoint against ``names``, the names it had to add to the
    dictionary, its new blobs as ``(field, value)``, and its skeleton (with ``names`` plus the added
    ones). ``inline_kinds`` remembers, for one thread and namespace, whether a (channel, version key)
    is stored inline, so the values of unchanged channels are not inspected at every put."""
    checkpoint = prep.checkpoint
    values: Mapping[str, Any] = checkpoint.get("channel_values") or {}
    versions: Mapping[str, Any] = checkpoint.get("channel_versions") or {}
    blobs = prep.blobs
    index = names.index
    segmented = prep.head[0] >= 3
    dumps = serde.dumps_typed
    added: list[str] = []
    table: dict[Any, int] = {}  # version -> position in the record's version table
    vk_out = bytearray()
    ch_out = bytearray()
    pack = _CHANNEL.pack
    vcache = _vkey_cache
    inline_values: list[Any] = []
    inline_raw: list[bytes | None] = []  # format 3: each inline value's msgpack bytes
    inline_ids: list[int] = []
    blob_fields: list[tuple[bytes, bytes]] = []
    kinds: list[tuple[str, int]] = []
    reads: list[bytes] = []

    def add(name: str) -> int:
        nonlocal index
        if not added:  # first sight of a name in this namespace: extend a private copy
            index = dict(index)
        nid = index[name] = len(index)
        added.append(name)
        return nid

    def new_vk(vk: bytes) -> int:
        idx = table[vk] = len(table)
        n = len(vk)
        if n < _LEN_UUID:
            vk_out.append(n)
        else:
            _put_len(vk_out, n)
        vk_out.extend(vk)
        return idx

    new_versions = prep.new_versions
    for channel, version in versions.items():
        nid = index.get(channel)
        if nid is None:
            nid = add(channel)
        # the table is keyed by byte form: 1, 1.0 and True are one dict key but three versions
        vk = vcache.get(version) if type(version) is str else None
        if vk is None:
            vk = version_key(version)
        idx = table.get(vk)
        if idx is None:
            idx = new_vk(vk)
        if channel in values:
            value = values[channel]
            inline: bool | bytes
            if channel in blobs:
                inline = False
            elif channel in prep.inlined and new_versions[channel] == version:  # decided by prepare
                inline = prep.inlined[channel]
                if inline_kinds is not None:
                    inline_kinds[(channel, vk)] = inline
            elif inline_kinds is None:
                inline = prep.inline(value)
            else:  # decided by the value, which a (channel, version) of one thread never changes
                known = inline_kinds.get((channel, vk))
                if known is None:
                    known = prep.inline(value)
                    if known and segmented:  # format 3 keeps the value's bytes: they never change either
                        known = _msgpack_of(dumps, value) or True
                    inline_kinds[(channel, vk)] = known
                inline = known
            if inline:
                kind = KIND_INLINE
                inline_values.append(value)
                if segmented:
                    inline_raw.append(inline if type(inline) is bytes else _msgpack_of(dumps, value))
                    inline_ids.append(nid)
            else:
                kind = KIND_BLOB
                field = b"b" + _U16.pack(nid) + vk
                reads.append(field)
                blob = blobs.get(channel)
                if blob is not None:
                    blob_fields.append((field, blob))
        elif channel in new_versions and new_versions[channel] == version:
            kind = KIND_EMPTY
        else:
            kind = KIND_BLOB
            reads.append(b"b" + _U16.pack(nid) + vk)
        ch_out += pack(nid, idx, kind)
        kinds.append((channel, kind))

    seen: list[Any] = []
    for node, node_versions in (checkpoint.get("versions_seen") or {}).items():
        nid = index.get(node)
        seen.append(add(node) if nid is None else nid)
        flat: list[int] = []
        for channel, version in node_versions.items():
            cid = index.get(channel)
            flat.append(add(channel) if cid is None else cid)
            vk = vcache.get(version) if type(version) is str else None
            if vk is None:
                vk = version_key(version)
            idx = table.get(vk)
            flat.append(new_vk(vk) if idx is None else idx)
        seen.append(flat)
    updated = checkpoint.get("updated_channels")
    updated_ids = None
    if updated is not None:
        updated_ids = []
        for ch in updated:
            cid = index.get(ch)
            updated_ids.append(add(ch) if cid is None else cid)
    if len(table) > 0xFFFF or len(versions) > 0xFFFF:
        raise ValueError("too many channels in one checkpoint (at most 65535)")
    if len(names.names) + len(added) > 0xFFFF:
        raise ValueError("more than 65535 channel and node names in one namespace")
    ts, v, extra, metadata = prep.tail
    head = b"".join((prep.head, _U16.pack(len(table)), vk_out, _U16.pack(len(versions)), ch_out))
    segments: list[tuple[int, int, int]] | None = None
    record = b""
    if segmented:
        record, segments = _segmented_record(
            head, dumps([ts, v, seen, updated_ids, extra, metadata]), inline_ids, inline_raw
        )
    if not record:  # format 2, or a value msgpack does not hold (then format 3 without segments)
        body = typed_to_bytes(dumps([ts, v, seen, updated_ids, extra, metadata, inline_values]))
        record = head + (_NO_SEGMENTS + body if segmented else body)
    skeleton = Skeleton(
        prep.parent_id,
        len(head),
        kinds,
        reads,
        dict(versions),
        {node: dict(seen) for node, seen in (checkpoint.get("versions_seen") or {}).items()},
        None if updated is None else list(updated),
        segments,
    )
    return record, added, blob_fields, skeleton


# ----------------------------------------------------------------------------------- splices

# Differing bytes, with gaps shorter than an op's head merged in: one op per run.
_RUNS = re.compile(rb"[^\x00]+(?:\x00{1,6}[^\x00]+)*")
_SEGMENT_HEAD = -3
_SEGMENT_TABLE = -2
_SEGMENT_CORE = -1
_ANCHOR = 8  # bytes of the older record looked up in the newer one to realign after a length change
_SPLICE_DEPTH = 12


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    x = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    return n - (x.bit_length() + 7) // 8


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    n = min(len(a), len(b), limit)
    if n <= 0:
        return 0
    x = int.from_bytes(a[len(a) - n :], "little") ^ int.from_bytes(b[len(b) - n :], "little")
    return n - (x.bit_length() + 7) // 8


def _splice_ops(old: bytes, new: bytes, at: int, ops: list[tuple[int, int, bytes]], depth: int) -> None:
    """Append the ops that turn ``new`` (at position ``at`` of the target record) into ``old``."""
    p = _common_prefix(old, new)
    s = _common_suffix(old, new, min(len(old), len(new)) - p)
    old, new = old[p : len(old) - s], new[p : len(new) - s]
    at += p
    lo, ln = len(old), len(new)
    if not lo and not ln:
        return
    if lo == ln:  # bytes changed in place (ids, versions, timestamps): one op per run of them
        x = (int.from_bytes(old, "big") ^ int.from_bytes(new, "big")).to_bytes(lo, "big")
        runs = [m.span() for m in _RUNS.finditer(x)]
        if 2 * sum(b - a for a, b in runs) <= lo or depth >= _SPLICE_DEPTH or lo < 2 * _ANCHOR:
            ops.extend((at + a, b - a, old[a:b]) for a, b in runs)
            return
    if depth < _SPLICE_DEPTH and min(lo, ln) >= 2 * _ANCHOR:
        # a length changed somewhere: realign on a piece of the older bytes found in the newer ones
        for i in (lo // 2, lo // 4, 3 * lo // 4):
            i = min(i, lo - _ANCHOR)
            j = new.find(old[i : i + _ANCHOR])
            if j >= 0:
                _splice_ops(old[:i], new[:j], at, ops, depth + 1)
                _splice_ops(old[i:], new[j:], at + j, ops, depth + 1)
                return
    ops.append((at, ln, old))


def _segment_ops(
    old: bytes,
    new: bytes,
    old_segments: Sequence[tuple[int, int, int]],
    new_segments: Sequence[tuple[int, int, int]],
) -> list[tuple[int, int, bytes]] | None:
    """The ops of a splice of two format-3 records segment by segment, matched by key: an unchanged
    segment (the core, an inline value) costs nothing, one of the same length one op per run of changed
    bytes, one only ``old`` has is inserted whole, one only ``new`` has is cut. ``None`` when the keys
    they share are not in the same order."""
    old_keys = {key for key, _, _ in old_segments}
    new_keys = {key for key, _, _ in new_segments}
    ops: list[tuple[int, int, bytes]] = []
    i = j = 0
    while i < len(old_segments) or j < len(new_segments):
        if j == len(new_segments):  # only in old: inserted at the end
            _, a0, a1 = old_segments[i]
            ops.append((len(new), 0, old[a0:a1]))
            i += 1
            continue
        key, b0, b1 = new_segments[j]
        if i < len(old_segments) and old_segments[i][0] == key:
            _, a0, a1 = old_segments[i]
            so, sn = old[a0:a1], new[b0:b1]
            if so != sn:
                if len(so) == len(sn):
                    x = (int.from_bytes(so, "big") ^ int.from_bytes(sn, "big")).to_bytes(len(so), "big")
                    ops.extend((b0 + a, b - a, so[a:b]) for a, b in (m.span() for m in _RUNS.finditer(x)))
                else:  # one op over the changed middle: realigning inside a segment costs more than it saves
                    _splice_ops(so, sn, b0, ops, _SPLICE_DEPTH)
            i += 1
            j += 1
        elif key not in old_keys:  # only in new: cut
            ops.append((b0, b1 - b0, b""))
            j += 1
        elif i < len(old_segments) and old_segments[i][0] not in new_keys:  # only in old: inserted here
            _, a0, a1 = old_segments[i]
            ops.append((b0, 0, old[a0:a1]))
            i += 1
        else:
            return None
    return ops


def record_splice(
    old: bytes,
    new: bytes,
    target_id: str,
    old_segments: Sequence[tuple[int, int, int]] | None = None,
    new_segments: Sequence[tuple[int, int, int]] | None = None,
) -> bytes | None:
    """``old`` stored as a splice of ``new`` (the record of checkpoint ``target_id``), or ``None`` when
    that would not be clearly smaller.

    Consecutive records of a thread differ in a few dozen bytes (parent, the versions of the channels a
    step wrote, ts, step, the sections it changed), so an older record is kept as the byte ranges in
    which it differs from a later one: ``SPLICE``, the target id (as a parent id is stored), then ops
    ``>HHH`` (position in the target, bytes cut there, bytes inserted) + the inserted bytes, in position
    order. Two format-3 records (``record_segments`` given for both) are compared segment by segment,
    which is cheap; otherwise, where lengths differ, the bytes are realigned recursively on short common
    pieces. The result is checked by applying it.
    """
    if max(len(old), len(new)) > 0xFFFF or not old or not new:
        return None
    ops: list[tuple[int, int, bytes]] | None = None
    if old_segments and new_segments and old_segments[-1][2] == len(old) and new_segments[-1][2] == len(new):
        ops = _segment_ops(old, new, old_segments, new_segments)
    if ops is None:
        ops = []
        _splice_ops(old, new, 0, ops, 0)
    out = bytearray((SPLICE,))
    out += _parent_bytes(target_id)
    pack = _SPLICE_OP.pack
    for pos, cut, ins in ops:
        if cut or ins:
            out += pack(pos, cut, len(ins))
            out += ins
    splice = bytes(out)
    if len(splice) + 16 > len(old) or apply_splice(new, splice) != old:
        return None
    return splice


def splice_target(splice: bytes) -> str:
    """The id of the checkpoint whose record a splice is applied to."""
    target, _ = _read_id(splice, 1)
    if target is None:
        raise CodecError("record splice without a target")
    return target


def apply_splice(base: bytes, splice: bytes) -> bytes:
    """The record a splice stands for, given its target's record (as the Lua ``record_of`` does)."""
    _, pos = _read_id(splice, 1)
    parts: list[bytes] = []
    cursor = 0
    end = len(splice)
    unpack = _SPLICE_OP.unpack_from
    try:
        while pos < end:
            at, cut, n = unpack(splice, pos)
            pos += 6
            parts.append(base[cursor:at])
            parts.append(splice[pos : pos + n])
            pos += n
            cursor = at + cut
    except struct.error as exc:
        raise CodecError("truncated record splice") from exc
    parts.append(base[cursor:])
    return b"".join(parts)


def whole_records(fields: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """The record fields (``"c"`` + id) of a namespace hash as ``HGETALL`` returns it, every splice
    applied, as the scripts' ``record_of`` reads them. Raises ``CodecError`` for a splice whose chain
    does not end at a record stored whole, or that points at an earlier record."""
    done: dict[bytes, bytes] = {}

    def whole(name: bytes) -> bytes:
        chain: list[tuple[bytes, bytes]] = []
        raw = fields[name]
        while raw[:1] == bytes((SPLICE,)):
            chain.append((name, raw))
            target = b"c" + splice_target(raw).encode()
            if target <= name or target not in fields:
                raise CodecError(f"the splice {name!r} points at {target!r}, an earlier or missing record")
            name = target
            if name in done:
                raw = done[name]
                break
            raw = fields[name]
        for link_name, link in reversed(chain):
            raw = done[link_name] = apply_splice(raw, link)
        return raw

    return {name: whole(name) for name in fields if name[:1] == b"c"}


def _read_id(buf: bytes, pos: int) -> tuple[str | None, int]:
    """A checkpoint id as ``_parent_bytes`` stores it, and the position after it."""
    try:
        if buf[pos] == _LEN_UUID:
            h = buf[pos + 1 : pos + 17].hex()
            if len(h) != 32:
                raise IndexError("id cut short")
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", pos + 17
        n, pos = _get_len(buf, pos)
        return buf[pos : pos + n].decode() or None, pos + n
    except (IndexError, struct.error) as exc:
        raise CodecError("truncated checkpoint id") from exc


class RecordHeader:
    """The Lua-readable head of a record: parent, version table, channels, where the body starts."""

    __slots__ = ("body_at", "channels", "parent_id", "vkeys")

    def __init__(
        self, parent_id: str | None, vkeys: list[bytes], channels: list[tuple[int, int, int]], body_at: int
    ) -> None:
        self.parent_id = parent_id
        self.vkeys = vkeys
        self.channels = channels
        self.body_at = body_at


def parse_header(record: bytes) -> RecordHeader:
    if not record or record[0] not in READ_FORMATS:
        raise CodecError(f"unknown checkpoint record format {record[:1]!r}")
    try:
        parent, pos = _read_id(record, 1)
        (nvk,) = _U16.unpack_from(record, pos)
        pos += 2
        vkeys: list[bytes] = []
        for _ in range(nvk):
            n = record[pos]
            if n < _LEN_UUID:
                pos += 1
            else:
                n, pos = _get_len(record, pos)
            vkeys.append(record[pos : pos + n])
            pos += n
        (nch,) = _U16.unpack_from(record, pos)
        pos += 2
        end = pos + 5 * nch
        if end > len(record):
            raise IndexError("channel table cut short")
        channels = list(_CHANNEL.iter_unpack(record[pos:end]))
        pos = end
    except (IndexError, struct.error) as exc:
        raise CodecError("truncated checkpoint record") from exc
    return RecordHeader(parent, vkeys, channels, pos)


def _body_start(record: bytes, body_at: int) -> int:
    """Where a record's body (one typed msgpack array) starts: after a format-3 record's table."""
    if record[0] < 3:
        return body_at
    try:
        (n,) = _U16.unpack_from(record, body_at)
    except struct.error as exc:
        raise CodecError("truncated checkpoint record") from exc
    return body_at + 2 if n == 0xFFFF else body_at + 2 + 4 * (n + 1)


def _decode_body(serde: Any, record: bytes, body_at: int) -> list[Any]:
    body = serde.loads_typed(typed_from_bytes(record[_body_start(record, body_at) :]))
    if not isinstance(body, list) or len(body) != 7:
        raise CodecError("checkpoint record body has the wrong shape")
    return body


def record_segments(record: bytes) -> list[tuple[int, int, int]] | None:
    """A format-3 record's segments as ``(key, start, end)``: the head (key ``-3``), the table (``-2``),
    the core (``-1``: the body up to its inline values) and each inline value (its channel's name id),
    in record order; ``None`` for format 2 or a record stored without segments."""
    if record[:1] != b"\x03":
        return None
    header = parse_header(record)
    pos = header.body_at
    try:
        (n,) = _U16.unpack_from(record, pos)
        if n == 0xFFFF:
            return None
        lengths = struct.unpack_from(f">{n + 1}I", record, pos + 2)
    except struct.error as exc:
        raise CodecError("truncated checkpoint record") from exc
    keys = [_SEGMENT_CORE, *(nid for nid, _, kind in header.channels if kind == KIND_INLINE)]
    if len(keys) != n + 1:
        raise CodecError("checkpoint record table does not match its channels")
    end = pos + 2 + 4 * (n + 1)
    segments = [(_SEGMENT_HEAD, 0, pos), (_SEGMENT_TABLE, pos, end)]
    for key, length in zip(keys, lengths, strict=True):
        segments.append((key, end, end + length))
        end += length
    if end != len(record):
        raise CodecError("checkpoint record body does not end where its segments do")
    return segments


def decode_metadata(serde: Any, record: bytes) -> dict[str, Any]:
    metadata: dict[str, Any] = _decode_body(serde, record, parse_header(record).body_at)[5]
    return metadata


class Skeleton:
    """A record decoded, apart from what every read must build afresh (channel values, metadata):
    the parent, where the body starts, the channels in record order with their kinds, the blob fields
    the record reads (in record order, as the Lua ``blob_fields`` lists them), and the version maps.
    Never changed once built, so it can be kept and shared: ``decode_checkpoint`` hands out copies.
    ``build_record`` makes one for the record it writes, so a read of the record a saver just wrote
    skips the header parse and the name lookups."""

    __slots__ = (
        "body_at",
        "channel_versions",
        "channels",
        "parent_id",
        "reads",
        "segments",
        "updated",
        "versions_seen",
    )

    def __init__(
        self,
        parent_id: str | None,
        body_at: int,
        channels: list[tuple[str, int]],
        reads: list[bytes],
        channel_versions: dict[str, Any],
        versions_seen: dict[str, dict[str, Any]],
        updated: list[str] | None,
        segments: list[tuple[int, int, int]] | None = None,
    ) -> None:
        self.parent_id = parent_id
        self.body_at = body_at
        self.channels = channels  # (channel, kind)
        self.reads = reads
        self.channel_versions = channel_versions
        self.versions_seen = versions_seen
        self.updated = updated
        self.segments = segments  # a format-3 record's segment boundaries (see record_segments)


def decode_skeleton(record: bytes, body: list[Any], names: NameDict) -> Skeleton:
    """The skeleton of ``record`` (whose decoded body is ``body``) against the name dictionary."""
    header = parse_header(record)
    seen_flat, updated = body[2], body[3]
    vcache = _version_cache
    vkeys = header.vkeys
    versions = [vcache.get(vk) or version_from_key(vk) for vk in vkeys]
    try:
        name = names.names
        channels: list[tuple[str, int]] = []
        reads: list[bytes] = []
        channel_versions: dict[str, Any] = {}
        for name_id, idx, kind in header.channels:
            ch = name[name_id]
            channel_versions[ch] = versions[idx]
            channels.append((ch, kind))
            if kind == KIND_BLOB:
                reads.append(b"b" + _U16.pack(name_id) + vkeys[idx])
        versions_seen: dict[str, dict[str, Any]] = {}
        nodes = iter(seen_flat)
        for node_id, pairs in zip(nodes, nodes, strict=True):  # strict: an odd length is corrupt
            seen: dict[str, Any] = {}
            ids = iter(pairs)
            for ch_id, v_idx in zip(ids, ids, strict=True):
                seen[name[ch_id]] = versions[v_idx]
            versions_seen[name[node_id]] = seen
        updated_names = None if updated is None else [name[i] for i in updated]
    except (IndexError, ValueError) as exc:
        raise CodecError("checkpoint record does not match its name dictionary") from exc
    return Skeleton(
        header.parent_id, header.body_at, channels, reads, channel_versions, versions_seen, updated_names
    )


def decode_checkpoint(
    serde: Any,
    checkpoint_id: str,
    record: bytes,
    blob_values: Sequence[bytes | None],
    names: NameDict,
    skeleton: Skeleton | None = None,
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """Rebuild ``(checkpoint, metadata, parent id)`` from a record and the blob values the Lua script
    returned. ``skeleton``, when given, must be the record's own (see ``Skeleton``).

    ``blob_values`` follows the order of the record's blob channels (kind 0); a missing blob or one
    tagged ``empty`` leaves the channel out of ``channel_values`` (as InMemorySaver does).
    """
    if skeleton is None:
        body = _decode_body(serde, record, parse_header(record).body_at)
        skeleton = decode_skeleton(record, body, names)
    else:
        body = _decode_body(serde, record, skeleton.body_at)
    ts, v, _, _, extra, metadata, inline_values = body
    channel_values: dict[str, Any] = {}
    inline_iter = iter(inline_values)
    blob_iter = iter(blob_values)
    loads = serde.loads_typed
    try:
        for ch, kind in skeleton.channels:
            if kind == KIND_INLINE:
                channel_values[ch] = next(inline_iter)
            elif kind == KIND_BLOB:
                raw = next(blob_iter, None)
                if raw is not None and not is_empty_typed(raw):
                    channel_values[ch] = load_blob(loads, raw)
    except StopIteration as exc:
        raise CodecError("checkpoint record has fewer inline values than inline channels") from exc
    updated = skeleton.updated
    checkpoint: dict[str, Any] = {
        "v": v,
        "id": checkpoint_id,
        "ts": _ts_in(ts),
        "channel_values": channel_values,
        "channel_versions": dict(skeleton.channel_versions),
        "versions_seen": {node: dict(seen) for node, seen in skeleton.versions_seen.items()},
        "updated_channels": None if updated is None else list(updated),
    }
    if extra:
        checkpoint.update(extra)
    return checkpoint, metadata, skeleton.parent_id


def load_blob(loads: Any, raw: bytes) -> Any:
    """A channel value from its blob as the load script returns it (a resolved chain of references:
    ``11`` + u16 count + the links + the full blob they end at, see the module docstring)."""
    if raw[:1] != _RESOLVED_HEAD:
        return load_value(loads, raw)
    try:
        (count,) = _U16.unpack_from(raw, 1)
        pos = 3
        links: list[bytes] = []
        for _ in range(count):
            (n,) = _U32.unpack_from(raw, pos)
            links.append(raw[pos + 4 : pos + 4 + n])
            pos += 4 + n
    except struct.error as exc:
        raise CodecError("truncated chain of references") from exc
    value = load_value(loads, raw[pos:])
    for link in reversed(links):
        code = link[:1]
        if code == b"\x09":
            (n,) = _U32.unpack_from(link, 1)
            if n == REF_WHOLE:
                continue
            if not isinstance(value, list) or len(value) < n:
                raise CodecError("extension reference points at a value that is not a long enough list")
            value = value[:n]
        elif code == b"\x0a":
            if not isinstance(value, dict):
                raise CodecError("patch reference points at a value that is not a dict")
            (n,) = _U16.unpack_from(link, 1)
            changed, lacked = loads(typed_from_bytes(link[3 + n :]))
            value = {k: v for k, v in value.items() if k not in lacked}
            value.update(changed)
        else:
            raise CodecError(f"unknown reference code {link[:1]!r}")
    return value


# --------------------------------------------------------------------------------------- writes


def pack_writes(task_id: str, task_path: str, writes: Sequence[tuple[int, str, bytes]]) -> bytes:
    """Pack one task's writes ``(idx, channel, typed value)`` as a group (see the module docstring)."""
    t, p = task_id.encode(), task_path.encode()
    if len(t) > 0xFFFF or len(p) > 0xFFFF or len(writes) > 0xFFFF:
        raise ValueError("task id or task path longer than 65535 bytes, or more than 65535 writes")
    out = bytearray(_GROUP_HEAD.pack(len(t), len(p), len(writes)))
    out += t
    out += p
    for idx, channel, value in writes:
        c = channel.encode()
        if len(c) > 0xFFFF:
            raise ValueError("channel name longer than 65535 bytes")
        out += _WRITE_HEAD.pack(idx, len(c), len(value))
        out += c
        out += value
    return bytes(out)


def iter_writes(pack: bytes) -> Iterator[tuple[str, str, int, str, bytes]]:
    """Unpack ``(task_id, task_path, idx, channel, typed value)`` from a pending-writes pack."""
    pos = 0
    end = len(pack)
    try:
        while pos < end:
            lt, lp, n = _GROUP_HEAD.unpack_from(pack, pos)
            pos += _GROUP_HEAD.size
            task_id = pack[pos : pos + lt].decode()
            pos += lt
            task_path = pack[pos : pos + lp].decode()
            pos += lp
            for _ in range(n):
                idx, lc, lv = _WRITE_HEAD.unpack_from(pack, pos)
                pos += _WRITE_HEAD.size
                channel = pack[pos : pos + lc].decode()
                pos += lc
                yield task_id, task_path, idx, channel, pack[pos : pos + lv]
                pos += lv
    except struct.error as exc:
        raise CodecError("truncated pending-writes pack") from exc
