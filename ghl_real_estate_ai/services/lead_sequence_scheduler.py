"""``LeadSequenceScheduler``: fires each lead's next due step through APScheduler 3.x on Redis, restart-safe.

The lead's checkpointed graph state (``sequence.next_step`` / ``sequence.next_due_at``) is the source of
truth; the job store is a cache of it, kept in step by three paths:

* :meth:`LeadSequenceScheduler.after_run` (a ``LeadBotRunner`` hook) creates, moves or removes the lead's
  job after every run, whatever caused the run (a due step, a webhook turn, an operator action), in
  whichever process ran it.
* :meth:`LeadSequenceScheduler.reconcile` repairs what the hook cannot see: APScheduler deletes a date
  job *before* running it, so a crash mid-run loses the job; a process killed between a run and its hook
  leaves a stale one. It runs when a process becomes the active scheduler, every ``reconcile_interval``
  seconds there, and from ``lead-bot reconcile`` (:func:`reconcile_once`).
* the job itself is idempotent: the graph skips a step that is stale or not yet due, the lead lock
  (``RedisLeadLock``) serialises runs, and the send ledger's touch key guards each send.

Jobs have the deterministic id ``lead:{contact_id}`` (a lead has at most one) and live in APScheduler's
``RedisJobStore`` format under ``{prefix}:scheduler:jobs`` (hash) and ``{prefix}:scheduler:run_times``
(ZSET); their target is the module-level coroutine :func:`fire_due_step` with plain JSON-able arguments.
Only the process holding the leader lease ``{prefix}:scheduler:leader`` takes due jobs out of the store;
the others keep their APScheduler paused and still write jobs from their own runs. Virtual due times
become real run times through the shared :class:`~ghl_real_estate_ai.services.timebase.Timebase`.

A step that fails with a transient error is retried after +5, +15 and +30 virtual minutes (each counted
from the failure); the fourth failure, or any permanent error, marks the lead failed through a
``step_failed`` event. The attempt count lives in ``{prefix}:scheduler:retries`` (contact id -> JSON),
keyed to the step occurrence, so it survives restarts and lost jobs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis
from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.redis import RedisJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_PAUSED, STATE_RUNNING
from apscheduler.triggers.date import DateTrigger
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ghl_real_estate_ai.errors import LeadNotFoundError, LockTimeoutError
from ghl_real_estate_ai.persistence.fastpath import FastScript
from ghl_real_estate_ai.sequence import TIMED_STATUSES
from ghl_real_estate_ai.services.locks import LeaderLease, stop_background
from ghl_real_estate_ai.services.runner import summary_from_state
from ghl_real_estate_ai.services.timebase import Timebase

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RETRY_DELAYS",
    "JOB_FUNC_REF",
    "JobTable",
    "LeadJob",
    "LeadJobStore",
    "LeadSequenceScheduler",
    "ReconcileReport",
    "RetryRecord",
    "SchedulerStats",
    "fire_due_step",
    "is_transient",
    "reconcile_once",
]

JOB_FUNC_REF = "ghl_real_estate_ai.services.lead_sequence_scheduler:fire_due_step"
SCHEDULER_SOURCE = "scheduler"  # the intake ``source`` of the due steps the leader queues


def _schedulable(seq: Mapping[str, Any]) -> bool:
    """Whether a lead's state wants a job: the timed sequence runs, or a pause ends at a set time."""
    return seq.get("status") in TIMED_STATUSES or (
        seq.get("status") == "paused" and seq.get("next_step") == "resume"
    )
DEFAULT_RETRY_DELAYS: tuple[timedelta, ...] = (
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(minutes=30),
)
# The lead lock serialises the runs of one lead across processes, so APScheduler's per-process
# max_instances must not get in the way: a retry or a put-back job can come due while the run that wrote
# it is still finishing, and at max_instances=1 APScheduler would skip that job *and delete it*.
JOB_MAX_INSTANCES = 1000
_RUN_TIME_TOLERANCE = 0.002  # real seconds; run times derive deterministically from the shared epoch
_FAR_FUTURE = timedelta(days=365 * 200)

# Running schedulers by name (the first job argument). Usually one per name and process; tests run several
# on one job table in one process, and then the lease holder is the one whose APScheduler submitted it.
_REGISTRY: dict[str, list[LeadSequenceScheduler]] = {}


async def fire_due_step(
    scheduler_name: str, contact_id: str, step: str, due_at: str, attempt: int = 0
) -> None:
    """The one job function of every lead job (APScheduler stores it as the text ``JOB_FUNC_REF``).

    APScheduler pickles a job's target as a ``"module:function"`` reference and its arguments by value,
    and *deletes* a job whose reference no longer resolves or whose arguments do not unpickle. So the
    target is this stable module-level function, never a bound method (the scheduler holds the runner,
    Redis clients and the lease, none of which pickle or survive a restart); the arguments are plain
    strings and an int; and the running scheduler is found in a process-local registry by
    ``scheduler_name``.
    """
    running = _REGISTRY.get(scheduler_name, [])
    scheduler = next((s for s in running if s.is_leader), running[0] if running else None)
    if scheduler is None:
        # Only while this process shuts down: the job is already out of the store, reconcile restores it.
        log.error("no running scheduler %r for the due job of lead %s", scheduler_name, contact_id)
        return
    await scheduler.fire(contact_id, step, due_at, attempt)


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    """A reply of the binary client (typed ``bytes | str`` by redis-py) as bytes."""
    return value if isinstance(value, bytes) else str(value).encode()


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: integration errors marked ``transient``, and Redis connection blips."""
    if getattr(exc, "transient", False):
        return True
    return isinstance(exc, RedisConnectionError | RedisTimeoutError)


# ------------------------------------------------------------------------------------------ the job store

# KEYS: jobs hash, run times ZSET, retries hash. ARGV: job id, contact id, job state, run time.
_PUT_UNLESS_RETRYING = """
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
"""

# KEYS: jobs hash, run times ZSET. ARGV: job id, job state, run time.
_PUT_IF_ABSENT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# KEYS: jobs hash, run times ZSET, retries hash. ARGV: job id, contact id.
_DROP = """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[2])
return removed
"""

# KEYS: jobs hash, run times ZSET. ARGV: (job id, expected state or '', new state or '', run time) repeated.
_COMPARE_AND_SET = """
local out = {}
for i = 1, #ARGV, 4 do
  local id, expected, new = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if (redis.call('HGET', KEYS[1], id) or '') == expected then
    if new == '' then
      redis.call('HDEL', KEYS[1], id)
      redis.call('ZREM', KEYS[2], id)
    else
      redis.call('HSET', KEYS[1], id, new)
      redis.call('ZADD', KEYS[2], ARGV[i + 3], id)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""


@dataclass(frozen=True)
class LeadJob:
    """One lead's job: the step, its virtual ``due_at`` and ``attempt``; ``run_at`` is real (UTC)."""

    contact_id: str
    step: str
    due_at: str
    attempt: int
    run_at: datetime


# KEYS: jobs hash, run times ZSET. ARGV: now (POSIX seconds). Takes the due jobs out of the store and
# returns them as id, state, id, state, ...
_POP_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], 0, ARGV[1])
if #ids == 0 then return {} end
local out = {}
for i = 1, #ids, 1000 do
  local chunk = {unpack(ids, i, math.min(i + 999, #ids))}
  local states = redis.call('HMGET', KEYS[1], unpack(chunk))
  for j = 1, #chunk do
    out[#out + 1] = chunk[j]
    out[#out + 1] = states[j] or ''
  end
  redis.call('HDEL', KEYS[1], unpack(chunk))
  redis.call('ZREM', KEYS[2], unpack(chunk))
end
return out
"""


class LeadJobStore(RedisJobStore):
    """APScheduler's ``RedisJobStore`` on our keys, taking due jobs out in one round trip.

    APScheduler removes every date job it hands to the executor, one blocking round trip per job inside
    the event loop (a burst of 10,000 due jobs: 10,000 of them). This store removes the due jobs in the
    same script that reads them, and the removals APScheduler asks for next are then answered locally.
    Nothing changes for a job: APScheduler submits or drops every job ``get_due_jobs`` returns, and would
    have removed it either way.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pop_due = self.redis.register_script(_POP_DUE)
        self._taken: set[str] = set()

    def get_due_jobs(self, now: datetime) -> list[Any]:
        flat: list[Any] = self._pop_due(keys=[self.jobs_key, self.run_times_key],
                                        args=[repr(now.timestamp())])
        pairs = [(_text(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]
        self._taken = {job_id for job_id, _ in pairs}  # APScheduler removes them before it asks again
        return self._reconstitute_jobs([(job_id, state) for job_id, state in pairs if state])

    def remove_job(self, job_id: str) -> None:
        if job_id in self._taken:
            self._taken.discard(job_id)
            return
        with self.redis.pipeline() as pipe:
            pipe.hdel(self.jobs_key, job_id)
            pipe.zrem(self.run_times_key, job_id)
            removed, _ = pipe.execute()
        if not removed:
            raise JobLookupError(job_id)


class JobTable:
    """The lead jobs, read and written in ``RedisJobStore``'s format with the async client.

    Writing here rather than through ``AsyncIOScheduler.add_job`` keeps APScheduler's blocking client out
    of the hook that runs after every lead run, works in processes whose scheduler is paused or not
    started at all (followers, the CLI), and lets reconcile read and repair the table in batches. Every
    write keeps the hash entry and the ZSET entry together (one script or MULTI).
    """

    def __init__(self, redis_client: aioredis.Redis, *, prefix: str, scheduler_name: str) -> None:
        self.redis = redis_client
        self.jobs_key = f"{prefix}:scheduler:jobs"
        self.run_times_key = f"{prefix}:scheduler:run_times"
        self.retries_key = f"{prefix}:scheduler:retries"
        self.scheduler_name = scheduler_name
        # EVALSHA scripts: one round trip each, and half the client CPU of a MULTI pipeline.
        self._put_unless_retrying = FastScript(redis_client, _PUT_UNLESS_RETRYING)  # after every run
        self._put_if_absent = redis_client.register_script(_PUT_IF_ABSENT)
        self._drop = redis_client.register_script(_DROP)
        self._compare_and_set = redis_client.register_script(_COMPARE_AND_SET)

    @staticmethod
    def job_id(contact_id: str) -> str:
        return f"lead:{contact_id}"

    @staticmethod
    def contact_of(job_id: str) -> str:
        return job_id.removeprefix("lead:")

    def encode(self, job: LeadJob) -> bytes:
        """The pickled ``Job.__getstate__()`` (version 1) that APScheduler 3.x reads back."""
        state = {
            "version": 1,
            "id": self.job_id(job.contact_id),
            "func": JOB_FUNC_REF,
            "trigger": DateTrigger(job.run_at, timezone=UTC),
            "executor": "default",
            "args": (self.scheduler_name, job.contact_id, job.step, job.due_at, job.attempt),
            "kwargs": {},
            "name": "due_step",
            "misfire_grace_time": None,  # run however late: a step that came due during downtime still runs
            "coalesce": True,
            "max_instances": JOB_MAX_INSTANCES,
            "next_run_time": job.run_at,
        }
        return pickle.dumps(state, pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def decode(raw: bytes) -> LeadJob:
        state = pickle.loads(raw)
        _, contact_id, step, due_at, *rest = state["args"]
        return LeadJob(contact_id, step, due_at, int(rest[0]) if rest else 0, state["next_run_time"])

    def _keys(self) -> list[str]:
        return [self.jobs_key, self.run_times_key, self.retries_key]

    async def put(self, job: LeadJob) -> None:
        job_id = self.job_id(job.contact_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.jobs_key, job_id, self.encode(job))
            pipe.zadd(self.run_times_key, {job_id: job.run_at.timestamp()})
            await pipe.execute()

    async def put_unless_retrying(self, job: LeadJob) -> bool:
        """Put ``job`` unless the lead has a retry record (then False: the caller must consult it)."""
        args: list[Any] = [
            self.job_id(job.contact_id), job.contact_id, self.encode(job), repr(job.run_at.timestamp())
        ]
        return bool(await self._put_unless_retrying(keys=self._keys(), args=args))

    async def put_if_absent(self, job: LeadJob) -> bool:
        """Put ``job`` back unless the lead got a job meanwhile (a fresher run wrote it)."""
        args: list[Any] = [self.job_id(job.contact_id), self.encode(job), repr(job.run_at.timestamp())]
        return bool(await self._put_if_absent(keys=self._keys()[:2], args=args))

    async def drop(self, contact_id: str) -> bool:
        """Remove the lead's job and its retry record; True if there was a job."""
        return bool(await self._drop(keys=self._keys(), args=[self.job_id(contact_id), contact_id]))

    async def remove(self, contact_id: str) -> bool:
        """Remove the lead's job (not its retry record); True if there was one."""
        job_id = self.job_id(contact_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.jobs_key, job_id)
            pipe.zrem(self.run_times_key, job_id)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def compare_and_set(self, changes: Sequence[tuple[str, bytes, bytes, float]]) -> list[bool]:
        """For each ``(contact id, expected, new, run time)``: if the lead's stored job is still ``expected``
        (``b""``: none), replace it by ``new`` (``b""``: delete it). One atomic script call; returns which
        changes were applied."""
        args: list[Any] = []
        for cid, expected, new, score in changes:
            args.extend((self.job_id(cid), expected, new, repr(score)))
        applied = await self._compare_and_set(keys=self._keys()[:2], args=args)
        return [bool(flag) for flag in applied]

    async def get(self, contact_id: str) -> LeadJob | None:
        raw = await self.redis.hget(self.jobs_key, self.job_id(contact_id))
        return self.decode(_bytes(raw)) if raw else None

    async def count(self) -> int:
        return int(await self.redis.hlen(self.jobs_key))

    async def all_raw(self, page: int = 2000) -> dict[str, bytes]:
        """Every job, contact id -> stored state, read in ``HSCAN`` pages (Redis is never blocked long)."""
        found: dict[str, bytes] = {}
        cursor = 0
        while True:
            cursor, chunk = await self.redis.hscan(self.jobs_key, cursor, count=page)
            pairs: dict[Any, Any] = chunk  # type: ignore[assignment]  # HSCAN replies a mapping
            for job_id, raw in pairs.items():
                found[self.contact_of(_text(job_id))] = _bytes(raw)
            if not cursor:
                return found

    async def run_times(self) -> dict[str, float]:
        """Every run time APScheduler will see (real POSIX seconds), by contact id."""
        entries: list[Any] = await self.redis.zrange(self.run_times_key, 0, -1, withscores=True)
        return {self.contact_of(_text(job_id)): float(score) for job_id, score in entries}

    async def clear(self) -> None:
        await self.redis.delete(self.jobs_key, self.run_times_key)

    def apscheduler_store(self, redis_url: str) -> LeadJobStore:
        """The blocking store APScheduler itself polls (same keys)."""
        return LeadJobStore(
            jobs_key=self.jobs_key,
            run_times_key=self.run_times_key,
            connection_pool=redis.ConnectionPool.from_url(redis_url),
        )


# ------------------------------------------------------------------------------------------ retry records


@dataclass
class RetryRecord:
    """Failures of one step occurrence (``key``, see :func:`retry_key`): how many, and the next retry."""

    key: str
    step: str
    attempts: int
    retry_at: str | None = None  # virtual ISO time of the next retry
    exhausted: bool = False  # no retry left: the lead is (being) marked failed
    last_error: str = ""


def retry_key(sequence: Mapping[str, Any]) -> str:
    """Identifies one occurrence of a step; a quiet-hours deferral moves ``next_due_at``, not this."""
    cadence = sequence.get("cadence_due_at") or sequence.get("next_due_at") or ""
    return f"{sequence.get('enrolled_at') or ''}|{sequence.get('next_step') or ''}|{cadence}"


class RetryBook:
    """Retry records in the hash ``{prefix}:scheduler:retries`` (contact id -> JSON)."""

    def __init__(self, redis_client: aioredis.Redis, *, prefix: str) -> None:
        self.redis = redis_client
        self.key = f"{prefix}:scheduler:retries"

    async def get(self, contact_id: str) -> RetryRecord | None:
        raw = await self.redis.hget(self.key, contact_id)
        return RetryRecord(**json.loads(raw)) if raw else None

    async def all(self) -> dict[str, RetryRecord]:
        raw = await self.redis.hgetall(self.key)
        return {_text(cid): RetryRecord(**json.loads(value)) for cid, value in raw.items()}

    async def set(self, contact_id: str, record: RetryRecord) -> None:
        await self.redis.hset(self.key, contact_id, json.dumps(asdict(record)))

    async def clear(self, *contact_ids: str) -> None:
        if contact_ids:
            await self.redis.hdel(self.key, *contact_ids)


# ---------------------------------------------------------------------------------- protocols and reports


class LeadRunner(Protocol):
    """What the scheduler needs of ``LeadBotRunner``."""

    async def dispatch(self, contact_id: str, event: Any) -> dict[str, Any]: ...

    async def state(self, contact_id: str) -> dict[str, Any]: ...


class LeadIndex(Protocol):
    """What reconcile needs of ``LeadSequenceStateService``."""

    async def due_before(self, when: datetime, *, limit: int | None = ...) -> list[tuple[str, datetime]]: ...

    async def all_ids(self) -> list[str]: ...

    async def update(self, summary: Mapping[str, Any]) -> None: ...


@dataclass
class ReconcileReport:
    """What one reconcile pass did. ``overdue``: restored or moved jobs whose step was already due (they
    run at once); ``state_reads``: checkpoints read to settle a difference (the expensive part)."""

    checked: int = 0
    restored: int = 0
    moved: int = 0
    removed: int = 0
    overdue: int = 0
    state_reads: int = 0
    index_repaired: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"checked {self.checked} leads: {self.restored} jobs restored, {self.moved} moved, "
            f"{self.removed} removed, {self.overdue} overdue (run now); {self.state_reads} states read "
            f"in {self.seconds:.2f}s"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SchedulerStats:
    """Counters since start (``LeadSequenceScheduler.stats`` exports them as a dict for ``/metrics``)."""

    fired: int = 0  # due steps run to the end (the graph may still have skipped or deferred them)
    retried: int = 0  # transient failures that got a retry
    failed: int = 0  # leads marked failed by the scheduler
    lock_timeouts: int = 0  # due steps put back because another run held the lead
    queued: int = 0  # due steps handed to the intake (the workers of every process run them)
    handed_back: int = 0  # submitted jobs put back (lock timeout, lost lease, clock moved)
    reconciles: int = 0
    restored: int = 0
    moved: int = 0
    removed: int = 0
    overdue: int = 0


def default_poll_interval(scale: float) -> float:
    """How often the leader looks at the store for jobs other processes wrote: about one virtual minute,
    clamped to 0.05-1 real seconds."""
    return min(1.0, max(0.05, 60.0 / scale))


# --------------------------------------------------------------------------------------------- scheduler


class LeadSequenceScheduler:
    """Schedules and fires each lead's next due step (see the module docstring).

    Args:
        runner: the ``LeadBotRunner``; register :meth:`after_run` as one of its ``after_run`` hooks.
        redis: async Redis client (jobs, retries, lease). ``redis_url``: the same server, for the blocking
            client APScheduler's job store polls with (only used by :meth:`start`).
        timebase: the started :class:`Timebase` whose clock the graph context uses too.
        index: the lead index (``LeadSequenceStateService``); reconcile finds leads through it.
        name: the registry name written into every job; the same in every process of one deployment.
        prefix: key prefix (``{prefix}:scheduler:*``).
        lease_ttl_seconds: leader lease TTL (renewed every third of it); ``None``: always fire (one
            process only).
        owner: the stable identity of this instance for the lease (see ``LeaderLease``); default random.
        retry_delays: virtual delays before each retry of a transient failure.
        reconcile_interval: real seconds between the leader's periodic reconciles (``None``: only when it
            becomes leader).
        poll_interval: real seconds between the leader's looks at the store (default: by the time scale).
        max_concurrency: due steps run at once in this process. Keep ``concurrency x ~4`` below the
            connection limits of the Redis clients (redis-py's async pool raises at 100 by default).
        lock_retry_seconds: real delay before a step whose lead was busy is tried again.
        shutdown_grace_seconds: how long :meth:`stop` lets running steps finish.
        reconcile_concurrency, reconcile_batch: checkpoint reads in flight, leads per repair batch.
        intake: the ``IntakeStream``: a due job is then queued there as a ``step_due`` entry (source
            ``"scheduler"``), and the intake workers of every process run it through :meth:`run_due`;
            None: the leader runs due steps itself.
    """

    def __init__(
        self,
        runner: LeadRunner,
        *,
        redis: aioredis.Redis,
        redis_url: str,
        timebase: Timebase,
        index: LeadIndex | None = None,
        name: str = "lead-bot",
        prefix: str = "lead-bot",
        lease_ttl_seconds: float | None = 10.0,
        owner: str | None = None,
        retry_delays: Sequence[timedelta] = DEFAULT_RETRY_DELAYS,
        reconcile_interval: float | None = 300.0,
        poll_interval: float | None = None,
        max_concurrency: int = 16,
        lock_retry_seconds: float = 1.0,
        shutdown_grace_seconds: float = 10.0,
        reconcile_concurrency: int = 32,
        reconcile_batch: int = 500,
        intake: Any = None,
    ) -> None:
        self.runner = runner
        self.intake = intake
        self.redis = redis
        self.redis_url = redis_url
        self.timebase = timebase
        self.index = index
        self.name = name
        self.prefix = prefix
        self.retry_delays = tuple(retry_delays)
        self.reconcile_interval = reconcile_interval
        self.poll_interval = poll_interval
        self.max_concurrency = max_concurrency
        self.lock_retry_seconds = lock_retry_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.reconcile_concurrency = reconcile_concurrency
        self.reconcile_batch = reconcile_batch
        self.jobs = JobTable(redis, prefix=prefix, scheduler_name=name)
        self.retries = RetryBook(redis, prefix=prefix)
        self.lease: LeaderLease | None = None
        if lease_ttl_seconds is not None:
            self.lease = LeaderLease(
                redis,
                key=f"{prefix}:scheduler:leader",
                ttl_seconds=lease_ttl_seconds,
                owner=owner,
                on_acquired=self._became_leader,
                on_lost=self._lost_leadership,
            )
        self.counters = SchedulerStats()
        self._aps: AsyncIOScheduler | None = None
        self._slots = asyncio.Semaphore(max_concurrency)
        self._in_flight: Counter[str] = Counter()  # leads whose job APScheduler submitted here
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tick_task: asyncio.Task[None] | None = None
        self._reconcile_lock = asyncio.Lock()
        self._reconcile_task: asyncio.Task[None] | None = None
        self._last_reconcile = 0.0
        self._wakeup_pending = False
        self._reconcile_wanted = False  # a due job was lost to an error: reconcile at the next tick
        self._queued: set[str] = set()  # leads with a queued due step, as read by the running reconcile
        self._fired_in_pass: set[str] = set()  # leads this process queued since the reconcile pass began
        self._stopping = False
        self._started = False

    # -- public state ------------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Counters for ``/metrics`` (see :class:`SchedulerStats`)."""
        return asdict(self.counters)

    @property
    def running(self) -> bool:
        return self._started and not self._stopping

    @property
    def is_leader(self) -> bool:
        """True while this process may fire jobs: running, and holding the lease (or running without)."""
        if not self.running:
            return False
        return self.lease is None or self.lease.is_leader

    @property
    def poll_seconds(self) -> float:
        return self.poll_interval or default_poll_interval(self.timebase.scale)

    async def job_for(self, contact_id: str) -> LeadJob | None:
        """The lead's job as stored (``run_at`` is real time), or None."""
        return await self.jobs.get(contact_id)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start APScheduler paused and the lease loop; jobs fire only while this process leads."""
        if self._started:
            return
        if not self.timebase.started:
            raise RuntimeError("start the Timebase before the scheduler")
        _REGISTRY.setdefault(self.name, []).append(self)
        self._stopping = False
        self._aps = AsyncIOScheduler(
            jobstores={"default": self.jobs.apscheduler_store(self.redis_url)},
            executors={"default": AsyncIOExecutor()},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": JOB_MAX_INSTANCES},
            timezone=UTC,
        )
        self._aps.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)
        # Paused: the store is shared, and only the lease holder may take due jobs out of it.
        self._aps.start(paused=True)
        self._started = True
        if self.lease is None:
            await self._became_leader()
        else:
            self.lease.start()
        self._tick_task = asyncio.create_task(self._tick_loop(), name=f"scheduler-tick:{self.name}")

    async def stop(self) -> None:
        """Stop firing, let running steps finish (up to ``shutdown_grace_seconds``), release the lease.

        Steps still running after the grace period are cancelled; APScheduler had already removed their
        jobs, so the next leader's reconcile restores them (and the send ledger keeps a send that was
        under way from going out twice).
        """
        if not self._started:
            return
        self._stopping = True
        if self._aps is not None and self._aps.state == STATE_RUNNING:
            self._aps.pause()
        for task in (self._tick_task, self._reconcile_task):
            await stop_background(task)
        self._tick_task = self._reconcile_task = None
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, still = await asyncio.wait(pending, timeout=self.shutdown_grace_seconds)
            if still:
                log.warning("%d due steps still running at shutdown were cancelled", len(still))
        if self.lease is not None:
            await self.lease.stop()
        if self._aps is not None:
            aps, self._aps = self._aps, None
            aps.shutdown(wait=False)
            # AsyncIOScheduler.shutdown goes through call_soon_threadsafe: let it run before returning.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        running = _REGISTRY.get(self.name, [])
        if self in running:
            running.remove(self)
        if not running:
            _REGISTRY.pop(self.name, None)
        self._started = False

    async def __aenter__(self) -> LeadSequenceScheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _became_leader(self) -> None:
        # Kept short: the lease loop awaits this and must get back to renewing.
        if self._aps is not None and self._aps.state == STATE_PAUSED:
            self._aps.resume()
        self._spawn_reconcile()

    async def _lost_leadership(self) -> None:
        if self._aps is not None and self._aps.state == STATE_RUNNING:
            self._aps.pause()

    def _spawn_reconcile(self) -> None:
        if self._reconcile_task is None or self._reconcile_task.done():
            self._reconcile_task = asyncio.create_task(
                self._reconcile_quietly(), name=f"reconcile:{self.name}"
            )

    async def _reconcile_quietly(self) -> None:
        wanted, self._reconcile_wanted = self._reconcile_wanted, False
        try:
            report = await self.reconcile()
        except Exception:
            self._reconcile_wanted = wanted
            log.exception("reconcile failed; it runs again at the next interval")
            return
        if report.restored or report.moved or report.removed:
            log.warning("reconcile: %s", report.summary())
        else:
            log.info("reconcile: %s", report.summary())

    async def _tick_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.poll_seconds)
            if not self.is_leader or self._aps is None:
                continue
            # APScheduler only knows the run times it has seen; jobs written by other processes
            # (followers' webhook turns, the CLI) are picked up here, within one interval.
            self._aps.wakeup()
            if self._reconcile_wanted or (self.reconcile_interval is not None and (
                time.monotonic() - self._last_reconcile >= self.reconcile_interval
            )):
                self._spawn_reconcile()

    def _request_wakeup(self) -> None:
        """Let APScheduler look at the store soon; many requests in one loop turn make one look."""
        if self._wakeup_pending or self._aps is None:
            return
        self._wakeup_pending = True

        def wake() -> None:
            self._wakeup_pending = False
            if self._aps is not None and self.is_leader:
                self._aps.wakeup()

        asyncio.get_running_loop().call_soon(wake)

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        # Runs synchronously in APScheduler's pass, after the job left the store and before its task
        # starts: from here until the run's hook, reconcile must not "restore" this lead's job.
        self._in_flight[JobTable.contact_of(event.job_id)] += 1

    # -- the hook ----------------------------------------------------------------------------------

    async def after_run(self, contact_id: str, values: dict[str, Any]) -> None:
        """Runner hook: make the lead's job mirror its state after a run (create, move or remove it).

        The job ``lead:{contact_id}`` exists exactly when the lead is active or in nurture and has a next
        step with a due time; it runs at that due time, or at the pending retry time while a transient
        failure of this very step occurrence is being retried. Works in any process, started or not. When
        the job cannot be written (Redis away), a reconcile is asked for at the next tick.
        """
        try:
            await self._apply(contact_id, values)
        except Exception:
            self._reconcile_wanted = True
            raise

    async def sync_job(self, contact_id: str, values: Mapping[str, Any] | None = None) -> LeadJob | None:
        """Set the lead's job from its checkpointed state (read unless given); None when it has none."""
        if values is None:
            try:
                values = await self.runner.state(contact_id)
            except LeadNotFoundError:
                values = {}
        return await self._apply(contact_id, values)

    async def _apply(self, contact_id: str, values: Mapping[str, Any]) -> LeadJob | None:
        seq = values.get("sequence") or {}
        step, due = seq.get("next_step"), seq.get("next_due_at")
        if not _schedulable(seq) or not step or not due:
            await self.jobs.drop(contact_id)
            return None
        job = LeadJob(contact_id, str(step), str(due), 0, self.timebase.to_real(_parse_time(str(due))))
        if not await self.jobs.put_unless_retrying(job):  # rare: a retry of this lead is pending
            record = await self.retries.get(contact_id)
            job, stale = self._job_from(contact_id, seq, record)
            if stale:
                await self.retries.clear(contact_id)
            await self.jobs.put(job)
        self._maybe_wake(job)
        return job

    def _job_from(
        self, contact_id: str, seq: Mapping[str, Any], record: RetryRecord | None
    ) -> tuple[LeadJob, bool]:
        """The job the sequence calls for (``next_step`` at ``next_due_at``, or at the pending retry time
        of this very step occurrence) and whether ``record`` is stale (about a step that moved on)."""
        step, due = str(seq["next_step"]), str(seq["next_due_at"])
        run_virtual = _parse_time(due)
        attempt = 0
        stale = False
        if record is not None:
            if record.key == retry_key(seq) and record.step == step:
                attempt = record.attempts
                if record.retry_at:
                    run_virtual = max(run_virtual, _parse_time(record.retry_at))
            else:
                stale = True
        return LeadJob(contact_id, step, due, attempt, self.timebase.to_real(run_virtual)), stale

    def _maybe_wake(self, job: LeadJob) -> None:
        soon = job.run_at.timestamp() <= time.time() + self.poll_seconds
        if soon and self._aps is not None and self.is_leader:
            self._request_wakeup()

    # -- firing ------------------------------------------------------------------------------------

    async def fire(self, contact_id: str, step: str, due_at: str, attempt: int = 0) -> None:
        """Run one due step (called by :func:`fire_due_step`). Never raises: a failure is retried or
        recorded, and the lead's next job is written by the run's :meth:`after_run` hook."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._fire(contact_id, step, due_at, attempt)
        except Exception:
            # APScheduler removed the job before running it: only a reconcile can put it back.
            self._reconcile_wanted = True
            log.exception("due step %s of lead %s failed in the scheduler; reconcile retries it",
                          step, contact_id)
        finally:
            if self._in_flight[contact_id] > 1:
                self._in_flight[contact_id] -= 1
            else:
                self._in_flight.pop(contact_id, None)
            if task is not None:
                self._tasks.discard(task)

    async def _hand_back(
        self, contact_id: str, step: str, due_at: str, attempt: int, run_at: datetime
    ) -> None:
        """Put back a job APScheduler already removed (unless a fresher run wrote one meanwhile)."""
        if await self.jobs.put_if_absent(LeadJob(contact_id, step, due_at, attempt, run_at)):
            self.counters.handed_back += 1
            if self._aps is not None and self.is_leader:
                self._request_wakeup()

    async def _fire(self, contact_id: str, step: str, due_at: str, attempt: int) -> None:
        due = _parse_time(due_at)
        early = self.timebase.real_delay(due)
        if early > 0.5:  # the epoch moved (time was re-anchored): keep the step for its new run time
            await self._hand_back(contact_id, step, due_at, attempt, self.timebase.to_real(due))
            return
        if early > 0:  # float rounding of real <-> virtual; the graph would skip a step "not due yet"
            await asyncio.sleep(early)
        async with self._slots:
            if not self.is_leader:
                # The lease went away after APScheduler submitted the job: the next leader fires it.
                await self._hand_back(contact_id, step, due_at, attempt, self.timebase.to_real(due))
                return
            if self.intake is not None:
                await self._enqueue(contact_id, step, due_at, attempt)
                return
            try:
                await self.run_due(contact_id, step, due_at, attempt)
            except LockTimeoutError as exc:
                self.counters.lock_timeouts += 1
                log.warning("lead %s is busy, %s tried again in %ss: %s",
                            contact_id, step, self.lock_retry_seconds, exc)
                run_at = datetime.now(UTC) + timedelta(seconds=self.lock_retry_seconds)
                await self._hand_back(contact_id, step, due_at, attempt, run_at)

    async def _enqueue(self, contact_id: str, step: str, due_at: str, attempt: int) -> None:
        """Hand a due step to the intake (any process's worker runs it, in order with the lead's other
        events). The job already left the store: if the append fails, reconcile restores it."""
        assert self.intake is not None
        event = {"type": "step_due", "step": step, "due_at": due_at, "attempt": attempt,
                 "source": "scheduler"}
        try:
            await self.intake.append(contact_id, event, source=SCHEDULER_SOURCE)
        except Exception as exc:
            self._reconcile_wanted = True
            log.error("could not queue %s of lead %s (%s); reconcile restores its job", step, contact_id, exc)
            return
        self._fired_in_pass.add(contact_id)
        self.counters.queued += 1

    async def run_due(
        self, contact_id: str, step: str, due_at: str, attempt: int = 0
    ) -> dict[str, Any] | None:
        """Run one due step now, in whichever process (the intake worker calls this for the ``step_due``
        entries the leader queued; without an intake the leader calls it itself). A failure is retried
        (+5/+15/+30 virtual minutes) or marks the lead failed, and this returns None; the lead's lock held
        elsewhere (``LockTimeoutError``) and Redis being away are raised, for the caller to try again.
        Returns the lead's values after the run."""
        if attempt:
            record = await self.retries.get(contact_id)
            if record is not None and record.exhausted and record.step == step:
                await self._mark_failed(contact_id, step, due_at, record.attempts, record.last_error)
                return None
        event = {"type": "step_due", "step": step, "due_at": due_at, "source": "scheduler"}
        try:
            values = await self.runner.dispatch(contact_id, event)
        except LockTimeoutError:
            raise
        except LeadNotFoundError:
            log.warning("lead %s has no state any more; its job for %s is dropped", contact_id, step)
            await self.jobs.drop(contact_id)
            return None
        except Exception as exc:
            if isinstance(exc, RedisConnectionError | RedisTimeoutError) and self.intake is not None:
                raise  # the intake entry waits for Redis and runs the step again
            await self._step_failed(contact_id, step, due_at, exc)
            return None
        self.counters.fired += 1
        return values

    async def _step_failed(self, contact_id: str, step: str, due_at: str, exc: Exception) -> None:
        """Retry a transient failure (+5/+15/+30 virtual minutes), else mark the lead failed."""
        try:
            values = await self.runner.state(contact_id)
        except Exception as read_error:
            # Redis is away (the run failed for the same reason, most likely): nothing here can be trusted
            # to say the lead moved on. Put the job back for a retry; if even that fails, the next
            # reconcile (wanted as soon as Redis answers again) restores it from the lead's state.
            log.warning("lead %s: %s failed (%s) and its state cannot be read (%s); trying again in %ss",
                        contact_id, step, exc, read_error, self.lock_retry_seconds)
            self._reconcile_wanted = True
            run_at = datetime.now(UTC) + timedelta(seconds=self.lock_retry_seconds)
            await self._hand_back(contact_id, step, due_at, 0, run_at)
            return
        seq = values.get("sequence") or {}
        if not _schedulable(seq) or seq.get("next_step") != step:
            log.warning("lead %s: %s failed (%s) but the lead has moved on", contact_id, step, exc)
            await self.sync_job(contact_id, values)
            return
        key = retry_key(seq)
        record = await self.retries.get(contact_id)
        failures = (record.attempts if record is not None and record.key == key else 0) + 1
        transient = is_transient(exc)
        if transient and failures <= len(self.retry_delays):
            retry_at = self.timebase.now() + self.retry_delays[failures - 1]
            # Persist the count before the job: a crash in between leaves a record reconcile honours.
            record = RetryRecord(key, step, failures, _iso(retry_at), False, str(exc))
            await self.retries.set(contact_id, record)
            self.counters.retried += 1
            log.warning(
                "lead %s: %s failed with a transient error (attempt %d of %d), retrying at %s: %s",
                contact_id, step, failures, len(self.retry_delays) + 1, _iso(retry_at), exc,
            )
            await self.sync_job(contact_id, values)
            return
        await self.retries.set(contact_id, RetryRecord(key, step, failures, None, True, str(exc)))
        await self._mark_failed(contact_id, step, due_at, failures, str(exc), transient=transient)

    async def _mark_failed(
        self, contact_id: str, step: str, due_at: str, failures: int, error: str, *, transient: bool = True
    ) -> None:
        if transient and failures > 1:
            reason = f"{step} failed after {failures} attempts: {error}"
        else:
            reason = f"{step} failed: {error}"
        self.counters.failed += 1
        log.error("lead %s marked failed by the scheduler: %s", contact_id, reason)
        event = {"type": "step_failed", "reason": reason, "step": step, "source": "scheduler"}
        try:
            await self.runner.dispatch(contact_id, event)  # its hook removes the job and the record
        except Exception as exc:
            # The record says "exhausted": the put-back job goes straight to step_failed next time.
            log.error("could not mark lead %s failed (%s); trying again in %ss",
                      contact_id, exc, self.lock_retry_seconds)
            run_at = datetime.now(UTC) + timedelta(seconds=self.lock_retry_seconds)
            await self._hand_back(contact_id, step, due_at, max(failures, 1), run_at)

    # -- reconcile ---------------------------------------------------------------------------------

    async def reconcile(self, *, deep: bool = False, extra_ids: Iterable[str] = ()) -> ReconcileReport:
        """Make the job store match the leads' checkpointed states; returns what it did.

        Cost, for N leads: one pass over the job table (``HSCAN`` pages; N unpickles of ~500 bytes), its
        run-time ZSET, the lead index's due ZSET and the retry hash, compared in memory; then, only for
        the leads where these disagree (no job, a job at another due or run time, a job the index does not
        expect, a pending retry), one checkpoint read each (the latest checkpoint's ``sequence`` channel:
        the values ``runner.state`` returns, without building a ``StateSnapshot``), ``reconcile_batch``
        leads at a time with ``reconcile_concurrency`` reads in flight, plus one ``HMGET`` and one
        compare-and-set script per batch. 100,000 consistent leads take about 2 s; 100,000 leads whose
        jobs were all lost about 30 s (``benchmarks/scheduler.py``).

        ``deep=True`` also reads the state of every lead in the index (N checkpoint reads; for an index
        that may be wrong); ``extra_ids`` adds leads neither the index nor the job store knows. Due and
        run times are compared, not step names: a job at the right time for a stale step fires, the graph
        skips it as stale, and that run's hook writes the right job.

        Races: leads this process is firing are skipped, and every write is a compare-and-set against the
        job read just before the state, so a fresher job written meanwhile by a run's hook (in any
        process) is never overwritten.
        """
        async with self._reconcile_lock:
            started = time.monotonic()
            report = ReconcileReport()
            now_v = self.timebase.now()
            self._fired_in_pass = set()  # before the jobs are read: a lead fired after this is skipped
            raw_jobs = await self.jobs.all_raw()
            run_times = await self.jobs.run_times()
            jobs = {cid: JobTable.decode(raw) for cid, raw in raw_jobs.items()}
            del raw_jobs
            # Read after the jobs: a job fired since the read above is in the intake by now (or in
            # ``_in_flight`` while it is being queued, or in ``_fired_in_pass`` once this process queued
            # it), and its lead is left to the worker that runs it.
            self._queued = (
                await self.intake.queued_contacts(SCHEDULER_SOURCE) if self.intake is not None else set()
            )
            expected: dict[str, float] = {}
            if self.index is not None:
                expected = await _index_due(self.index, now_v + _FAR_FUTURE)
            retries = await self.retries.all()
            candidates: set[str] = set(extra_ids) | set(retries)
            if deep and self.index is not None:
                candidates.update(_text(c) for c in await self.index.all_ids())
            for cid, due_ts in expected.items():
                job = jobs.get(cid)
                if job is None or due_ts != due_ts:  # no job, or the index gave no due time (NaN)
                    candidates.add(cid)
                    continue
                want_run = self.timebase.to_real(_parse_time(job.due_at)).timestamp()
                if (
                    abs(_parse_time(job.due_at).timestamp() - due_ts) > 1e-3
                    or abs(job.run_at.timestamp() - want_run) > _RUN_TIME_TOLERANCE
                    or abs(run_times.get(cid, -1.0) - job.run_at.timestamp()) > _RUN_TIME_TOLERANCE
                ):
                    candidates.add(cid)
            candidates.update(cid for cid in jobs if cid not in expected)
            candidates.update(cid for cid in run_times if cid not in jobs)  # ZSET entry without a job
            report.checked = len(set(expected) | set(jobs) | candidates)
            del jobs, run_times

            ordered = sorted(candidates)
            for i in range(0, len(ordered), self.reconcile_batch):
                batch = ordered[i : i + self.reconcile_batch]
                await self._reconcile_batch(batch, expected, retries, now_v, report)
            report.seconds = time.monotonic() - started
            self._last_reconcile = time.monotonic()
            c = self.counters
            c.reconciles += 1
            c.restored += report.restored
            c.moved += report.moved
            c.removed += report.removed
            c.overdue += report.overdue
            return report

    async def _read_sequences(self, contact_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Each lead's checkpointed ``sequence`` (None for a contact never enrolled)."""
        gate = asyncio.Semaphore(self.reconcile_concurrency)
        saver = getattr(getattr(self.runner, "graph", None), "checkpointer", None)
        direct = saver is not None and hasattr(saver, "aget_tuple")

        async def read(cid: str) -> dict[str, Any] | None:
            async with gate:
                if direct:
                    # The latest checkpoint's channel values are what runner.state returns; reading them
                    # directly skips the StateSnapshot (next tasks, parent config) reconcile has no use for.
                    assert saver is not None
                    found = await saver.aget_tuple({"configurable": {"thread_id": cid, "checkpoint_ns": ""}})
                    values = found.checkpoint.get("channel_values", {}) if found is not None else {}
                else:
                    try:
                        values = await self.runner.state(cid)
                    except LeadNotFoundError:
                        values = {}
                seq = values.get("sequence") if values else None
                return dict(seq) if seq else None

        return list(await asyncio.gather(*(read(cid) for cid in contact_ids)))

    async def _reconcile_batch(
        self,
        contact_ids: list[str],
        expected: Mapping[str, float],
        retries: Mapping[str, RetryRecord],
        now_v: datetime,
        report: ReconcileReport,
    ) -> None:
        contact_ids = [cid for cid in contact_ids if not self._in_flight.get(cid)
                       and cid not in self._queued and cid not in self._fired_in_pass]
        if not contact_ids:
            return
        # Jobs first, states second: a run that moves a state after this read also rewrites its job, and
        # the compare-and-set then skips that lead instead of undoing the run with a stale state.
        current = await self.redis.hmget(self.jobs.jobs_key, [JobTable.job_id(cid) for cid in contact_ids])
        sequences = await self._read_sequences(contact_ids)
        report.state_reads += len(contact_ids)
        changes: list[tuple[str, bytes, bytes, float]] = []  # (contact id, expected, new, run time)
        outcomes: list[tuple[str, bool]] = []  # (restored | moved | removed, overdue)
        stale_retries: list[str] = []
        for cid, reply, seq in zip(contact_ids, current, sequences, strict=True):
            raw = _bytes(reply) if reply else b""
            if self._in_flight.get(cid):
                continue  # fired meanwhile: its run's hook writes the next job
            await self._repair_index(cid, seq or {}, expected.get(cid), report)
            old = JobTable.decode(raw) if raw else None
            if not seq or not _schedulable(seq) or not seq.get("next_step") or (
                not seq.get("next_due_at")
            ):
                if cid in retries:
                    stale_retries.append(cid)
                if raw:  # an orphan: its lead finished, was cancelled, or never existed
                    changes.append((cid, raw, b"", 0.0))
                    outcomes.append(("removed", False))
                continue
            want, stale = self._job_from(cid, seq, retries.get(cid))
            if stale:
                stale_retries.append(cid)
            if old is not None and (
                (old.step, old.due_at, old.attempt) == (want.step, want.due_at, want.attempt)
                and abs(old.run_at.timestamp() - want.run_at.timestamp()) <= _RUN_TIME_TOLERANCE
            ):
                # The right job: write its run time again, in case only its ZSET entry was missing.
                changes.append((cid, raw, raw, want.run_at.timestamp()))
                outcomes.append(("", False))
                continue
            overdue = self.timebase.to_virtual(want.run_at) <= now_v
            changes.append((cid, raw, self.jobs.encode(want), want.run_at.timestamp()))
            outcomes.append(("restored" if old is None else "moved", overdue))
        await self.retries.clear(*stale_retries)
        if not changes:
            return
        applied = await self.jobs.compare_and_set(changes)
        woke = False
        for (kind, overdue), ok in zip(outcomes, applied, strict=True):
            if not ok or not kind:
                continue
            setattr(report, kind, getattr(report, kind) + 1)
            if overdue:
                report.overdue += 1
                woke = True
        if woke and self._aps is not None and self.is_leader:
            self._request_wakeup()

    async def _repair_index(
        self, contact_id: str, seq: Mapping[str, Any], index_due: float | None, report: ReconcileReport
    ) -> None:
        """The lead index is a cache of the state too: rewrite an entry whose due time is wrong."""
        if self.index is None or not seq:
            return
        timed = _schedulable(seq) and seq.get("next_step")
        due = seq.get("next_due_at") if timed else None
        index_ts = index_due if index_due is not None and index_due == index_due else None
        state_ts = _parse_time(due).timestamp() if due else None
        if index_ts is None and state_ts is None:
            return
        if index_ts is not None and state_ts is not None and abs(index_ts - state_ts) <= 1e-3:
            return
        try:
            values = await self.runner.state(contact_id)
            await self.index.update(summary_from_state(contact_id, values))
        except Exception as exc:
            log.warning("could not repair the index entry of lead %s: %s", contact_id, exc)
            return
        report.index_repaired += 1


async def _index_due(index: LeadIndex, far_future: datetime) -> dict[str, float]:
    """Contact id -> virtual due timestamp, from the lead index's due ZSET."""
    return {_text(cid): due.timestamp() for cid, due in await index.due_before(far_future, limit=None)}


async def reconcile_once(
    runner: LeadRunner,
    *,
    redis: aioredis.Redis,
    index: LeadIndex | None = None,
    timebase: Timebase | None = None,
    prefix: str = "lead-bot",
    name: str = "lead-bot",
    deep: bool = False,
    echo: Callable[[str], None] | None = None,
) -> ReconcileReport:
    """One reconcile pass that fires nothing: what ``lead-bot reconcile`` runs.

    It writes the job store only; the running service's leader fires restored and overdue jobs within its
    poll interval. Without ``timebase`` it reads the service's virtual-time epoch from Redis as it is
    (``Timebase.start(adopt=True)``: whatever ``LEAD_BOT_TIME_SCALE`` the CLI sees, it never re-anchors
    the service's clock). ``echo`` (``print`` in the CLI) gets the one-line summary. Safe while the service
    runs: racing a step the service is firing can at worst restore a job for a step that then runs as a
    no-op (the graph skips stale steps; the lead lock and the send ledger prevent a second send).
    """
    owned = timebase is None
    tb = timebase or Timebase(redis, prefix=prefix)
    if not tb.started:
        await tb.start(background=False, adopt=True)
    scheduler = LeadSequenceScheduler(
        runner, redis=redis, redis_url="", timebase=tb, index=index, name=name, prefix=prefix,
        lease_ttl_seconds=None,
    )
    try:
        report = await scheduler.reconcile(deep=deep)
    finally:
        if owned:
            await tb.stop()
    if echo is not None:
        echo(report.summary())
    return report
