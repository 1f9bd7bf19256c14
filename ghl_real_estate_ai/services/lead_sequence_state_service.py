"""The lead index: every lead's sequence summary, by status and by next due time, in plain Redis.

The graph state (the checkpointer) is the source of truth; this index is a projection of it that makes
"which leads are due before T", "how many leads are paused" and "list the qualified leads" cheap. It
can always be rebuilt from the states (:meth:`LeadSequenceStateService.rebuild`).

Keys (``B`` = ``{<prefix>:index}``; the braces are a Redis Cluster hash tag, so all index keys share a
slot and each update is one atomic Lua call)::

    B:lead             HASH  contact id -> summary as JSON
    B:status:<status>  ZSET  contact id -> updated_at (epoch seconds), one per status
    B:due              ZSET  contact id -> next_due_at (epoch seconds); leads without one are absent

Every update, removal and lookup is O(log n) (plus the size of the answer). Summaries are dicts with at
least ``contact_id``, ``status`` (a :class:`~ghl_real_estate_ai.sequence.SequenceStatus` value) and
``updated_at``; ``next_due_at``, ``enrolled_at``, ``current_step``, ``next_step``, ``temperature``,
``location_id`` and any other JSON-serialisable keys are stored as given and returned by :meth:`get`.
Times are ISO 8601 strings (UTC when they carry no offset) or ``datetime`` objects.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import redis.asyncio as aredis

from ghl_real_estate_ai.persistence.fastpath import FastScript
from ghl_real_estate_ai.sequence import SequenceStatus

logger = logging.getLogger(__name__)

__all__ = ["FINISHED_STATUSES", "STATUSES", "LeadSequenceStateService"]

STATUSES: tuple[str, ...] = tuple(s.value for s in SequenceStatus)
FINISHED_STATUSES: tuple[str, ...] = ("completed", "opted_out", "cancelled", "failed")
DEFAULT_PREFIX = "lead-bot"
_BATCH = 500
_Scored = list[tuple[Any, Any]]  # (member, score) rows of a WITHSCORES reply
_REBUILD_TTL_MS = 3_600_000  # a rebuild that dies half way leaves nothing behind for long

# KEYS: lead hash, due zset; ARGV: base, contact id, json, status, updated score, due score or ''
_UPDATE = r"""
local lead, due = KEYS[1], KEYS[2]
local base, cid, status = ARGV[1], ARGV[2], ARGV[4]
local old = redis.call('HGET', lead, cid)
if old then
  local ok, prev = pcall(cjson.decode, old)
  if ok and type(prev) == 'table' and type(prev.status) == 'string' and prev.status ~= status then
    redis.call('ZREM', base .. ':status:' .. prev.status, cid)
  end
end
redis.call('HSET', lead, cid, ARGV[3])
redis.call('ZADD', base .. ':status:' .. status, ARGV[5], cid)
if ARGV[6] == '' then redis.call('ZREM', due, cid) else redis.call('ZADD', due, ARGV[6], cid) end
return old and 1 or 0
"""

# KEYS: lead hash, due zset; ARGV: base, status to clear as well ('' = none), contact id...
_REMOVE = r"""
local lead, due, base, also = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local removed = 0
for i = 3, #ARGV do
  local cid = ARGV[i]
  local old = redis.call('HGET', lead, cid)
  if old then
    local ok, prev = pcall(cjson.decode, old)
    if ok and type(prev) == 'table' and type(prev.status) == 'string' then
      redis.call('ZREM', base .. ':status:' .. prev.status, cid)
    end
    redis.call('HDEL', lead, cid)
    removed = removed + 1
  end
  if also ~= '' then redis.call('ZREM', base .. ':status:' .. also, cid) end
  redis.call('ZREM', due, cid)
end
return removed
"""

# KEYS: the live lead hash (routes the call on a cluster; every other key is built from ARGV[1], the
# live base, and ARGV[2], the staging base, which share its hash tag)
# ARGV: live base, staging base, status...
# Replaces every live key with its staged counterpart (or deletes it when nothing was staged).
_SWAP = r"""
local live, staged = ARGV[1], ARGV[2]
local names = {':lead', ':due'}
for i = 3, #ARGV do names[#names + 1] = ':status:' .. ARGV[i] end
for _, n in ipairs(names) do
  if redis.call('EXISTS', staged .. n) == 1 then
    redis.call('RENAME', staged .. n, live .. n)
    redis.call('PERSIST', live .. n)
  else
    redis.call('DEL', live .. n)
  end
end
return 1
"""


def _epoch(value: Any, field: str) -> float | None:
    """Epoch seconds of an ISO 8601 string or datetime (naive means UTC); ``None`` stays ``None``."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"summary {field} is not an ISO 8601 time: {value!r}") from None
    else:
        raise ValueError(
            f"summary {field} must be an ISO 8601 string or datetime, not {type(value).__name__}"
        )
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"summary value of type {type(value).__name__} is not JSON-serialisable")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LeadSequenceStateService:
    """The lead index on a ``redis.asyncio.Redis`` client (see the module docstring).

    Args:
        client: the Redis client (``decode_responses`` either way).
        prefix: key prefix; the index lives under ``{<prefix>:index}``.
    """

    def __init__(self, client: aredis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be non-empty and contain no braces, not {prefix!r}")
        self.client = client
        self.prefix = prefix
        self.base = f"{{{prefix}:index}}"
        self._update = FastScript(client, _UPDATE)  # after every lead run: the fast path
        self._remove = client.register_script(_REMOVE)
        self._swap = client.register_script(_SWAP)

    # ------------------------------------------------------------------------------------ keys

    def _lead_key(self, base: str | None = None) -> str:
        return f"{base or self.base}:lead"

    def _due_key(self, base: str | None = None) -> str:
        return f"{base or self.base}:due"

    def _status_key(self, status: str, base: str | None = None) -> str:
        return f"{base or self.base}:status:{status}"

    # -------------------------------------------------------------------------------- writing

    @staticmethod
    def _normalise(summary: Mapping[str, Any]) -> tuple[str, str, str, float, float | None]:
        """Validate a summary: ``(contact_id, status, json, updated score, due score)``."""
        contact_id = summary.get("contact_id")
        if not isinstance(contact_id, str) or not contact_id:
            raise ValueError(f"summary needs a non-empty str contact_id, got {contact_id!r}")
        status = summary.get("status")
        status = status.value if isinstance(status, SequenceStatus) else status
        if status not in STATUSES:
            raise ValueError(f"summary status must be one of {', '.join(STATUSES)}, not {status!r}")
        updated = _epoch(summary.get("updated_at"), "updated_at")
        due = _epoch(summary.get("next_due_at"), "next_due_at")
        doc = {k: (v.value if isinstance(v, SequenceStatus) else v) for k, v in summary.items()}
        body = json.dumps(doc, separators=(",", ":"), default=_json_default, sort_keys=True)
        return contact_id, str(status), body, updated if updated is not None else 0.0, due

    async def update(self, summary: Mapping[str, Any]) -> None:
        """Insert or replace a lead's summary: moves it between status sets and (un)schedules it in
        the due set. One atomic round trip.

        A summary whose ``status`` is ``None`` (a contact that is not in a sequence) removes the lead.
        Raises ``ValueError`` for a missing contact id, an unknown status or a malformed time.
        """
        if summary.get("status") is None and isinstance(summary.get("contact_id"), str):
            await self.remove(summary["contact_id"])
            return
        contact_id, status, body, updated, due = self._normalise(summary)
        await self._update(
            keys=[self._lead_key(), self._due_key()],
            args=[self.base, contact_id, body, status, repr(updated), "" if due is None else repr(due)],
        )

    async def remove(self, contact_id: str) -> bool:
        """Drop a lead from the index; ``True`` if it was there."""
        removed = await self._remove(
            keys=[self._lead_key(), self._due_key()], args=[self.base, "", contact_id]
        )
        return bool(removed)

    async def _remove_many(self, contact_ids: list[str], status: str = "") -> int:
        total = 0
        for i in range(0, len(contact_ids), _BATCH):
            chunk = contact_ids[i : i + _BATCH]
            total += int(
                await self._remove(keys=[self._lead_key(), self._due_key()], args=[self.base, status, *chunk])
            )
        return total

    # -------------------------------------------------------------------------------- reading

    async def get(self, contact_id: str) -> dict[str, Any] | None:
        """The lead's summary as last stored, or ``None``."""
        raw = await self.client.hget(self._lead_key(), contact_id)
        return None if raw is None else dict(json.loads(raw))

    async def by_status(self, status: str, *, limit: int = 100, offset: int = 0) -> list[str]:
        """Contact ids in ``status``, most recently updated first."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        if limit <= 0:
            return []
        ids = await self.client.zrevrange(self._status_key(status), offset, offset + limit - 1)
        return [_text(i) for i in ids]

    async def counts(self) -> dict[str, int]:
        """Number of leads per status (every status, zeros included)."""
        pipe = self.client.pipeline(transaction=False)
        for status in STATUSES:
            pipe.zcard(self._status_key(status))
        sizes = await pipe.execute()
        return {status: int(n) for status, n in zip(STATUSES, sizes, strict=True)}

    async def due_before(self, when: datetime, *, limit: int | None = 100) -> list[tuple[str, datetime]]:
        """Leads whose next step is due at or before ``when``, earliest first, as
        ``(contact_id, due_at)`` (UTC). ``limit=None`` returns all of them."""
        ts = _epoch(when, "when")
        kwargs: dict[str, Any] = {"withscores": True}
        if limit is not None:
            if limit <= 0:
                return []
            kwargs.update(start=0, num=limit)
        rows = cast(_Scored, await self.client.zrangebyscore(self._due_key(), "-inf", repr(ts), **kwargs))
        return [(_text(cid), datetime.fromtimestamp(float(score), UTC)) for cid, score in rows]

    async def iter_ids(self) -> AsyncIterator[str]:
        """Every indexed contact id, streamed (HSCAN: constant memory, no order)."""
        # HSCAN ... NOVALUES would save bandwidth but needs Redis 7.4; the values are small
        async for cid, _ in self.client.hscan_iter(self._lead_key(), count=500):
            yield _text(cid)

    async def all_ids(self) -> list[str]:
        """Every indexed contact id (see :meth:`iter_ids` to stream them)."""
        return [cid async for cid in self.iter_ids()]

    # ---------------------------------------------------------------------------- maintenance

    async def cleanup(self, *, finished_before: datetime) -> int:
        """Remove leads in completed/opted_out/cancelled/failed whose ``updated_at`` is before
        ``finished_before``; returns how many."""
        ts = _epoch(finished_before, "finished_before")
        removed = 0
        for status in FINISHED_STATUSES:
            while True:
                ids = await self.client.zrangebyscore(
                    self._status_key(status), "-inf", f"({ts!r}", start=0, num=_BATCH
                )
                if not ids:
                    break
                removed += await self._remove_many([_text(i) for i in ids], status)
        if removed:
            logger.info("lead index: cleaned up %d finished leads", removed)
        return removed

    async def rebuild(self, summaries: Iterable[Mapping[str, Any]]) -> int:
        """Replace the whole index with ``summaries`` (for example one per graph state).

        The new index is written under a staging name and swapped in with one atomic script, so
        readers see the old index or the new one, never a mix. Updates made while it runs are
        overwritten. Returns the number of leads indexed; invalid summaries raise before the swap.
        """
        # Validate everything first: a bad summary must not leave a half-staged index behind.
        latest: dict[str, tuple[str, str, float, float | None]] = {}
        for summary in summaries:
            if summary.get("status") is None:
                continue
            contact_id, status, body, updated, due = self._normalise(summary)
            latest[contact_id] = (status, body, updated, due)  # a repeated contact keeps its last summary
        staged = f"{self.base}:rebuild:{uuid.uuid4().hex}"
        staged_keys = [
            self._lead_key(staged),
            self._due_key(staged),
            *(self._status_key(s, staged) for s in STATUSES),
        ]
        try:
            items = list(latest.items())
            for i in range(0, len(items), _BATCH):
                pipe = self.client.pipeline(transaction=False)
                for contact_id, (status, body, updated, due) in items[i : i + _BATCH]:
                    pipe.hset(self._lead_key(staged), contact_id, body)
                    pipe.zadd(self._status_key(status, staged), {contact_id: updated})
                    if due is not None:
                        pipe.zadd(self._due_key(staged), {contact_id: due})
                for key in staged_keys:
                    pipe.pexpire(key, _REBUILD_TTL_MS)
                await pipe.execute()
            await self._swap(keys=[self._lead_key()], args=[self.base, staged, *STATUSES])
        except BaseException:
            await self.client.delete(*staged_keys)
            raise
        logger.info("lead index: rebuilt with %d leads", len(latest))
        return len(latest)

    async def snapshot(self) -> dict[str, Any]:
        """A comparable dump of the whole index: summaries, status sets and due set with scores."""
        raw = await self.client.hgetall(self._lead_key())
        leads = {_text(k): json.loads(v) for k, v in raw.items()}
        statuses: dict[str, list[tuple[str, float]]] = {}
        for status in STATUSES:
            rows = cast(_Scored, await self.client.zrange(self._status_key(status), 0, -1, withscores=True))
            statuses[status] = sorted((_text(cid), float(score)) for cid, score in rows)
        due_rows = cast(_Scored, await self.client.zrange(self._due_key(), 0, -1, withscores=True))
        return {
            "leads": leads,
            "status": statuses,
            "due": sorted((_text(cid), float(score)) for cid, score in due_rows),
        }
