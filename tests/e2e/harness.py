"""The outside-in stack and the scenario runs.

One run = its own Redis (append-only, ``appendfsync always``, restartable on the same port and data dir),
its own fake GHL and fake Retell (which calls back with webhooks), one ``lead-bot serve`` subprocess at
``LEAD_BOT_TIME_SCALE=86400`` that can be SIGKILLed and restarted on the same port, and a ``VirtualClock``
polling ``/healthz``. The service is judged only by what reached the fakes and when (mapped to virtual time);
its own API is used to enroll leads and ``/healthz`` to read the clock, nothing else.

Everything a run decides (leads, enrollment moments, kill moments, fault draws, call outcomes) comes from
``random.Random(f"{scenario}:{seed}")`` and is laid out in *virtual* time from the next virtual midnight
UTC, so a seed means the same local hours every time it runs.

Time compression has consequences the judge must not blame on the service, each handled where it arises
and reported in the summary: GHL's burst budget is real time (``ghl_budget_exhausted``), a few real
milliseconds of work are virtual hours near closing time (``CLOSE_MARGIN`` here, ``CLOSE_SLACK`` in the
judge), and concurrent runs starving each other of CPU would be too (``Gate``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any

import httpx
from service.stack import API_TOKEN, ServeProcess, Stack

from ghl_real_estate_ai.testing.ghl_server import FakeGHLServer
from ghl_real_estate_ai.testing.redis_server import RedisServer, free_port

from .judge import Downtime, Enrollment, Lead, Touch, Verdict, hours, judge
from .retell import FakeRetellWithWebhooks
from .vclock import VirtualClock

# The 86400 virtual seconds per real second (a virtual day per second): every run, CI's included.
# LEAD_BOT_E2E_SCALE sets another (a lower one gives the service more real time per virtual hour and makes
# every run that much longer).
SCALE = float(os.environ.get("LEAD_BOT_E2E_SCALE") or 86400.0)
DAY = timedelta(days=1)
CLOSE_MARGIN = timedelta(hours=4)
BUSY_AFTER_SPREAD = timedelta(days=4, hours=12)  # the last enrollment's day_7 and its call webhooks
RESTART_CATCH_UP = 1.0  # real seconds a restarted service keeps its run's busy turn (its overdue backlog)
GHL_BURST, GHL_WINDOW = 100, 10.0  # GHL: 100 requests per location per 10 s (X-RateLimit-Max / -Interval)
BUDGET_MARGIN, SLOT_SLACK = 5, 0.05  # see ghl_budget_exhausted and ghl_slots
FAULT_HOLD, FAULT_RETRY = 1.5, 0.15  # real seconds a held / failed request keeps its lead blocked
GHL_FAULTS = {"error_rate": 0.2, "statuses": (429, 500), "delay_rate": 0.05, "delay": 5.0}

# zone, state, area code, city: every US zone of the mainland plus Alaska and Hawaii, and each state whose
# window is 08:00-20:00 (FL on both sides of its zone line, OK, WA, MD).
PLACES: tuple[tuple[str, str, str, str], ...] = (
    ("America/New_York", "NY", "212", "New York"),
    ("America/New_York", "FL", "305", "Miami"),
    ("America/Chicago", "FL", "850", "Pensacola"),
    ("America/Chicago", "IL", "312", "Chicago"),
    ("America/Chicago", "TX", "512", "Austin"),
    ("America/Chicago", "OK", "405", "Oklahoma City"),
    ("America/Denver", "CO", "303", "Denver"),
    ("America/Phoenix", "AZ", "602", "Phoenix"),
    ("America/Los_Angeles", "CA", "213", "Los Angeles"),
    ("America/Los_Angeles", "WA", "206", "Seattle"),
    ("America/Anchorage", "AK", "907", "Anchorage"),
    ("Pacific/Honolulu", "HI", "808", "Honolulu"),
    ("America/New_York", "MD", "410", "Baltimore"),
    ("America/Detroit", "MI", "313", "Detroit"),
    ("America/Indiana/Indianapolis", "IN", "317", "Indianapolis"),
    ("America/Boise", "ID", "208", "Boise"),
    ("America/New_York", "GA", "404", "Atlanta"),
    ("America/Chicago", "TN", "615", "Nashville"),
    ("America/Denver", "UT", "801", "Salt Lake City"),
    ("America/Los_Angeles", "NV", "702", "Las Vegas"),
    ("America/New_York", "FL", "813", "Tampa"),
    ("America/Los_Angeles", "WA", "509", "Spokane"),
    ("Pacific/Honolulu", "HI", "808", "Hilo"),
    ("America/New_York", "MA", "617", "Boston"),
)
FIRST_NAMES = ("Ava", "Ben", "Cora", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lia", "Max",
               "Noa", "Oli", "Pia", "Quin", "Rae", "Sam", "Tia", "Uma", "Vic", "Wes", "Xia")


@dataclass(frozen=True)
class RunSpec:
    """One scenario run. ``days``: virtual days observed from the first virtual midnight after start."""

    scenario: str
    seed: int
    days: float
    leads: int = 24
    enroll_spread_h: float = 48.0
    service_kills: int = 0
    redis_kills: int = 0
    ghl_faults: bool = False
    ghl_burst: int = GHL_BURST  # the fake GHL's X-RateLimit-Max per GHL_WINDOW real seconds
    kind: str = "sequence"  # or "restart_latency"
    processes: int = 1  # `lead-bot serve` processes on the one Redis; kills hit the last of them
    cluster: bool = False  # a local 3-master Redis Cluster instead of one server (no Redis kills then)

    @property
    def id(self) -> str:
        return f"{self.scenario}-seed{self.seed}"


@dataclass
class RunResult:
    spec: RunSpec
    verdict: Verdict | None = None
    error: str | None = None
    real_seconds: float = 0.0
    leads: int = 0
    downtimes: list[Downtime] = field(default_factory=list)  # the service or Redis killed, until healthy
    throttled: list[Downtime] = field(default_factory=list)  # see ghl_budget_exhausted
    ghl_requests: int = 0
    startup_seconds: list[float] = field(default_factory=list)
    eps_minutes: tuple[float, float] = (0.0, 0.0)  # median and max measurement allowance of the touches
    notes: list[str] = field(default_factory=list)
    earlier_failures: list[str] = field(default_factory=list)  # of a failed first attempt (conftest)
    extra_failures: list[str] = field(default_factory=list)
    log_excerpt: str = ""
    logs_kept_in: str | None = None

    @property
    def blocked(self) -> list[Downtime]:
        """Every interval in which the service could not send: downtimes and an exhausted GHL budget."""
        return [*self.downtimes, *self.throttled]

    @property
    def failures(self) -> list[str]:
        found = list(self.extra_failures)
        if self.verdict is not None:
            found += self.verdict.failures
        if self.error:
            found.append(f"harness/run error: {self.error.strip().splitlines()[-1]}")
        return found

    def summary_line(self) -> str:
        v = self.verdict
        touches = v.touches if v else 0
        worst = f"{v.worst_lateness_h:.1f} h (after due {v.worst_after_due_h:.0f} h)" if v else "-"
        judged = f"{v.judged} judged/{v.pending} pending" if v else "-"
        clean = v.clean_failures if v else 0
        down = ", ".join(f"{hours(d.end - d.start):.0f} h" for d in self.downtimes) or "none"
        throttled = sum(hours(d.end - d.start) for d in self.throttled)
        return (f"{self.spec.id:<22} leads={self.leads:<3} touches={touches:<4} steps={judged:<22} "
                f"worst_lateness={worst:>22}  failures={len(self.failures):<3} (clean {clean:<3}) "
                f"downtimes=[{down}]  "
                f"ghl_requests={self.ghl_requests} budget_exhausted={throttled:.0f} h  "
                f"eps={self.eps_minutes[0]:.1f}/{self.eps_minutes[1]:.1f} min  real={self.real_seconds:.0f}s"
                + ("  (second attempt)" if self.earlier_failures else ""))

    def report(self, limit: int = 40) -> str:
        lines = [self.summary_line()]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  first attempt: FAIL {f}" for f in self.earlier_failures[:10]]
        failures = self.failures
        lines += [f"  FAIL {f}" for f in failures[:limit]]
        if len(failures) > limit:
            lines.append(f"  ... and {len(failures) - limit} more")
        if self.error:
            lines.append("  error:\n" + self.error)
        if self.log_excerpt:
            lines.append("  service log (warnings and errors, last lines):\n" + self.log_excerpt)
        if self.logs_kept_in:
            lines.append(f"  full logs kept in {self.logs_kept_in}")
        return "\n".join(lines)


class E2EStack:
    """Redis + fake GHL + calling-back fake Retell + ``lead-bot serve`` + the virtual clock poller."""

    def __init__(self, spec: RunSpec, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.redis: Any
        if spec.cluster:
            from ghl_real_estate_ai.testing.redis_cluster import LocalRedisCluster

            self.redis = LocalRedisCluster(3)
        else:
            # appendfsync always: see redis_server
            self.redis = RedisServer(workdir / "redis", appendonly=True)
        self.ghl = FakeGHLServer(seed=spec.seed, rate_limit=spec.ghl_burst, rate_window=GHL_WINDOW)
        self.retell = FakeRetellWithWebhooks(seed=spec.seed)
        self.ports = [free_port() for _ in range(spec.processes)]
        self.port = self.ports[0]  # enrollments, Retell's webhooks and the clock go to the first process
        self.live: dict[int, ServeProcess] = {}
        self.serves: list[ServeProcess] = []
        self.startup_seconds: list[float] = []
        self.clock: VirtualClock | None = None
        self.env: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> E2EStack:
        self.redis.start()
        self.ghl.start()
        self.retell.start()
        self.env = Stack(self.redis, self.ghl, self.retell, self.workdir, SCALE).env()
        for index in range(len(self.ports)):
            self.start_service(index)
        self.retell.webhook_url = self.url + "/webhooks/retell"
        self.clock = VirtualClock(self.url, SCALE).start()
        self.clock.wait_first_reading()
        return self

    def start_service(self, index: int = 0) -> None:
        serve = ServeProcess(self.env, self.workdir, port=self.ports[index])
        self.serves.append(serve)
        self.live[index] = serve
        started = time.monotonic()
        serve.start(timeout=60)
        self.startup_seconds.append(time.monotonic() - started)

    def kill_service(self, *, restart_at: Callable[[], None] | None = None) -> tuple[float, float]:
        """SIGKILL a service process (the last one) and start it again on its port (at once, or after
        ``restart_at()`` returns); the monotonic instants of the kill and of the first healthy answer
        after it (of the first process: with several, the others go on meanwhile)."""
        assert self.clock is not None
        index = len(self.ports) - 1
        killed = time.monotonic()
        self.live[index].stop(signal.SIGKILL)
        if restart_at is not None:
            restart_at()
        self.start_service(index)
        if index:
            return killed, time.monotonic()  # healthy once its /healthz answered (ServeProcess.start)
        return killed, self.clock.wait_healthy_after(killed, timeout=30).after

    def kill_redis(self) -> tuple[float, float]:
        """SIGKILL Redis and start it again at once on the same port and append-only file."""
        assert self.clock is not None
        killed = time.monotonic()
        self.redis.stop(kill=True)
        self.redis.start()
        return killed, self.clock.wait_healthy_after(killed, timeout=60).after

    def enroll(self, client: httpx.Client, lead: Lead) -> Enrollment | str:
        """POST the enrollment; its virtual time is the interval from the request leaving to the answer."""
        assert self.clock is not None
        before = time.monotonic()
        try:
            response = client.post(f"/api/leads/{lead.contact_id}/enroll")
        except httpx.HTTPError as exc:
            return f"enroll {lead.name}: {exc!r}"
        after = time.monotonic()
        if not 200 <= response.status_code < 300:
            return f"enroll {lead.name}: HTTP {response.status_code} {response.text[:200]}"
        lo, hi = self.clock.map(before), self.clock.map(after)
        return Enrollment(lead, lo.when - timedelta(seconds=lo.eps), hi.when + timedelta(seconds=hi.eps))

    def touches(self, until: float) -> list[Touch]:
        """Every sequence touch that reached a fake (GHL accepted the message, Retell created the call) up
        to the monotonic instant ``until``, in virtual time."""
        assert self.clock is not None
        clock = self.clock
        found: list[Touch] = []
        for r in self.ghl.requests_to("POST", "/conversations/messages"):
            body = r.json if isinstance(r.json, dict) else {}
            if r.status != 200 or r.at > until or body.get("type") not in ("SMS", "Email"):
                continue
            hold = r.fault.delay if r.fault is not None and r.fault.status is None else 0.0
            mapped = clock.map(r.at)
            found.append(Touch(str(body.get("contactId")), str(body["type"]), r.at, mapped.when, mapped.eps,
                               clock.virtual(r.at + hold)))
        for r in self.retell.requests_to("POST", "/v2/create-phone-call"):
            body = r.json if isinstance(r.json, dict) else {}
            if r.status != 201 or r.at > until:
                continue
            contact = (body.get("metadata") or {}).get("ghl_contact_id")
            mapped = clock.map(r.at)
            found.append(Touch(str(contact), "call", r.at, mapped.when, mapped.eps, mapped.when))
        return sorted(found, key=lambda t: t.at)

    def log_excerpt(self, limit: int = 40) -> str:
        interesting = re.compile(r"ERROR|WARNING|CRITICAL|Traceback|Error:")
        lines: list[str] = []
        for n, serve in enumerate(self.serves):
            for line in serve.logs().splitlines():
                if interesting.search(line):
                    lines.append(f"    [serve#{n}] {line[:300]}")
        return "\n".join(lines[-limit:])

    def keep_logs(self, into: Path) -> None:
        into.mkdir(parents=True, exist_ok=True)
        for n, serve in enumerate(self.serves):
            if serve.log_path.exists():
                shutil.copy(serve.log_path, into / f"serve-{n}.log")
        redis_log = Path(getattr(self.redis, "data_dir", self.workdir / "-")) / "redis.log"
        if redis_log.exists():
            shutil.copy(redis_log, into / "redis.log")
        # For the humans who diagnose a failure, never for the verdict: what reached the fakes (virtual
        # time) next to the service's own account of each lead.
        assert self.clock is not None
        arrivals = [{"at": self.clock.virtual(t.at).isoformat(), "contact": t.contact_id, "kind": t.kind}
                    for t in self.touches(time.monotonic())]
        (into / "arrivals.json").write_text(json.dumps(arrivals, indent=1))
        requests = [{"mono": r.at, "at": self.clock.virtual(r.at).isoformat(), "method": r.method,
                     "path": r.path, "status": r.status, "fault": repr(r.fault) if r.fault else None}
                    for r in self.ghl.requests]
        (into / "ghl-requests.json").write_text(json.dumps(requests, indent=1))
        views = {}
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_TOKEN}"},
                          timeout=5) as client:
            for contact in self.ghl.contacts():
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    views[contact["id"]] = client.get(f"/api/leads/{contact['id']}").json()
        (into / "service-timelines.json").write_text(json.dumps(views, indent=1))

    def close(self) -> None:
        if self.clock is not None:
            self.clock.stop()
        for serve in self.serves:
            with contextlib.suppress(Exception):
                serve.stop(signal.SIGKILL, timeout=10)
        for stopper in (self.retell.stop, self.ghl.stop, self.redis.close):
            with contextlib.suppress(Exception):
                stopper()


def make_leads(ghl: FakeGHLServer, rng: random.Random, count: int) -> list[Lead]:
    """``count`` contacts over the places above; about one in six has no email address."""
    leads = []
    for n in range(count):
        zone, state, area, city = PLACES[n % len(PLACES)]
        name = f"{FIRST_NAMES[n % len(FIRST_NAMES)]}-{city.replace(' ', '')}-{n}"
        email = None if rng.random() < 1 / 6 else f"lead{n}@example.com"
        phone = f"+1{area}555{100 + n:04d}"
        contact = ghl.add_contact(first_name=name, last_name="Lead", phone=phone, email=email, timezone=zone,
                                  state=state, city=city, postal_code=None)
        leads.append(Lead(str(contact["id"]), name, zone, state, phone, email))
    return leads


def next_midnight(now: datetime, margin: timedelta = timedelta(hours=4)) -> datetime:
    """The first virtual midnight UTC at least ``margin`` after ``now`` (a real second away at most)."""
    start = (now + margin).astimezone(UTC)
    midnight = datetime(start.year, start.month, start.day, tzinfo=UTC)
    return midnight if midnight >= start else midnight + DAY


def _spread(rng: random.Random, count: int, low: float, high: float, gap: float) -> list[float]:
    """``count`` sorted draws in [low, high] at least ``gap`` apart (resampled until they are)."""
    for _ in range(1000):
        values = sorted(rng.uniform(low, high) for _ in range(count))
        if all(b - a >= gap for a, b in itertools.pairwise(values)):
            return values
    raise ValueError("cannot place the kills")  # pragma: no cover


def _enroll_moment(rng: random.Random, lead: Lead, t0: datetime, spread_h: float) -> datetime:
    """A moment in the first ``spread_h`` virtual hours, not in the last ``CLOSE_MARGIN`` before the lead's
    window closes: at this scale the 50-150 real milliseconds the service needs to take an enrollment and
    run its day_3 (more on a loaded machine) are one to four virtual hours, which would carry a send due just
    before closing time into the next morning; an artefact of the time compression, not of the service's
    rules. Later steps are due at the same local time of day, so they keep that margin too."""
    while True:
        moment = t0 + timedelta(hours=rng.uniform(0, spread_h))
        if not (lead.inside(moment) and not lead.inside(moment + CLOSE_MARGIN)):
            return moment


class BusyTurns:
    """The one CPU-heavy turn that concurrent runs share; a run's SIGKILL-and-restart goes before any run
    waiting to start (it is mid-run and its kill moment should move as little as possible)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._taken = False
        self._urgent = 0

    def acquire(self, stop: threading.Event, *, urgent: bool = False) -> None:
        with self._cond:
            self._urgent += urgent
            try:
                while self._taken or (not urgent and self._urgent):
                    if stop.is_set():
                        raise InterruptedError("the run was stopped")
                    self._cond.wait(timeout=0.1)
                self._taken = True
            finally:
                self._urgent -= urgent

    def release(self) -> None:
        with self._cond:
            self._taken = False
            self._cond.notify_all()


class Gate:
    """Lets one run at a time through a busy phase: its service's start, enrollments, every day_3 and day_7,
    and each SIGKILL-and-restart with the overdue steps the restarted service catches up on.

    Runs side by side share two cores; at 86400 virtual seconds per second a run whose service waits for
    the CPU for 100 ms is 2.4 virtual hours late, so the busy phases of concurrent runs take turns while
    their quiet stretches (days 7-60: a few sends per virtual day) overlap. A restart is such a phase too:
    a new ``serve`` process spends about two CPU seconds importing and starting, and then works through
    every step that fell due while it was down. ``release`` is idempotent."""

    def __init__(self, turns: BusyTurns | None = None) -> None:
        self._turns = turns
        self.held = False

    def acquire(self, stop: threading.Event, *, urgent: bool = False) -> None:
        if self._turns is None:
            return
        self._turns.acquire(stop, urgent=urgent)
        self.held = True

    def release(self) -> None:
        if self._turns is not None and self.held:
            self.held = False
            self._turns.release()


def run_scenario(spec: RunSpec, stop: threading.Event, busy: BusyTurns | None = None) -> RunResult:
    """Run one scenario end to end and judge it; never raises (errors go into the result). ``busy``, shared
    by concurrent runs, serialises their busy phases (see ``Gate``)."""
    result = RunResult(spec)
    gate = Gate(busy)
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"lead-bot-e2e-{spec.id}-"))
    stack = E2EStack(spec, workdir)
    try:
        gate.acquire(stop)
        began = time.monotonic()
        stack.start()
        if spec.kind == "restart_latency":
            _restart_latency(stack, spec, stop, result)
        else:
            _sequence(stack, spec, stop, result, gate)
    except BaseException:  # pytest.fail inside ServeProcess raises a BaseException
        result.error = traceback.format_exc(limit=8)
    finally:
        gate.release()
        result.startup_seconds = list(stack.startup_seconds)
        with contextlib.suppress(Exception):
            result.log_excerpt = stack.log_excerpt()
        keep = os.environ.get("LEAD_BOT_E2E_KEEP_LOGS")
        if keep and result.failures:
            with contextlib.suppress(Exception):
                target = Path(keep) / spec.id
                stack.keep_logs(target)
                (target / "run.json").write_text(json.dumps({
                    "downtimes": [[d.start.isoformat(), d.end.isoformat()] for d in result.downtimes],
                    "failures": result.failures}, indent=1))
                result.logs_kept_in = str(target)
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)
        result.real_seconds = time.monotonic() - began
    return result


def _observe(stack: E2EStack, result: RunResult, enrollments: list[Enrollment], until_mono: float) -> None:
    assert stack.clock is not None
    observed_until = stack.clock.virtual(until_mono)
    touches = stack.touches(until_mono)
    result.ghl_requests = len([r for r in stack.ghl.requests if r.at <= until_mono])
    result.throttled = ghl_budget_exhausted(stack, until_mono)
    result.verdict = judge(enrollments, touches, result.blocked, observed_until,
                           lead_blocked=ghl_faults_by_lead(stack, until_mono))
    _add_context(stack, result.verdict, until_mono)
    eps = [t.eps / 60 for t in touches]
    if eps:
        result.eps_minutes = (median(eps), max(eps))
    lost = [d for d in stack.retell.deliveries if d.statuses and not d.delivered]
    if lost:
        result.notes.append(f"{len(lost)} Retell webhook(s) not delivered after retries: "
                            + ", ".join(f"{d.event}={d.statuses}" for d in lost[:5]))


def _sequence(stack: E2EStack, spec: RunSpec, stop: threading.Event, result: RunResult, gate: Gate) -> None:
    clock = stack.clock
    assert clock is not None
    rng = random.Random(f"{spec.scenario}:{spec.seed}")
    leads = make_leads(stack.ghl, rng, spec.leads)
    result.leads = len(leads)
    if spec.ghl_faults:
        stack.ghl.set_random_faults(**GHL_FAULTS, seed=spec.seed)  # type: ignore[arg-type]
    t0 = next_midnight(clock.now())
    order = list(leads)
    rng.shuffle(order)
    plan: list[tuple[datetime, str, Lead | None]] = [
        (_enroll_moment(rng, lead, t0, spec.enroll_spread_h), "enroll", lead) for lead in order
    ]
    # A kill in the quiet stretch waits for its busy turn (at most another run's busy phase, about ten real
    # seconds), so it is planned early enough to still fall four virtual days before the end.
    low, high = spec.enroll_spread_h / 24 + 0.5, spec.days - 4 - 10 * SCALE / 86400
    kills = ["service"] * spec.service_kills + ["redis"] * spec.redis_kills
    for day, what in zip(_spread(rng, len(kills), low, high, 3.0), kills, strict=True):
        plan.append((t0 + timedelta(days=day), f"kill_{what}", None))
    plan.append((t0 + timedelta(hours=spec.enroll_spread_h) + BUSY_AFTER_SPREAD, "quiet", None))
    plan.sort(key=lambda p: p[0])
    enrollments: list[Enrollment] = []
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {API_TOKEN}"},
                      timeout=10) as client:
        for when, action, lead in plan:
            clock.sleep_until(when, stop)
            if action == "enroll":
                assert lead is not None
                enrolled = stack.enroll(client, lead)
                if isinstance(enrolled, str):
                    result.extra_failures.append(enrolled)
                else:
                    enrollments.append(enrolled)
            elif action == "quiet":
                gate.release()
            else:
                in_quiet_phase = not gate.held
                if in_quiet_phase:
                    gate.acquire(stop, urgent=True)
                killed, healthy = stack.kill_service() if action == "kill_service" else stack.kill_redis()
                _record_downtime(stack, result, killed, healthy, action.removeprefix("kill_"))
                if in_quiet_phase:
                    time.sleep(RESTART_CATCH_UP)
                    gate.release()
    clock.sleep_until(t0 + timedelta(days=spec.days), stop)
    _observe(stack, result, enrollments, time.monotonic())


def ghl_slots(stack: E2EStack, until: float) -> list[tuple[float, float]]:
    """Each GHL request as the monotonic interval during which it counts against the burst budget:
    the service's limiter counts a request from the moment it starts until ``GHL_WINDOW`` after its answer,
    so a request GHL held back occupies its slot that much longer; ``SLOT_SLACK`` covers the time between
    the fake stamping the request and the service reading the answer."""
    slots = []
    for r in stack.ghl.requests:
        if r.at <= until:
            hold = r.fault.delay if r.fault is not None and r.fault.status is None else 0.0
            slots.append((r.at, r.at + hold + GHL_WINDOW + SLOT_SLACK))
    return slots


def ghl_budget_exhausted(stack: E2EStack, until: float) -> list[Downtime]:
    """The intervals in which GHL's burst budget was (nearly) used up, from the fake's request log.

    GHL allows ``GHL_BURST`` requests per location per ``GHL_WINDOW`` *real* seconds: at 86400 virtual
    seconds per second that is about 100 requests per 10 virtual days, and 20+ leads whose day_3 and day_7
    fall within a few virtual days use it up (the service's own limiter then holds every GHL request until
    a slot frees, for several real seconds = virtual days). That is GHL's limit, not the service's choice,
    so a step due then cannot go: the judge treats these intervals like downtimes. The budget counts as
    used up while ``GHL_BURST - BUDGET_MARGIN`` or more slots (see ``ghl_slots``) overlap; the margin covers
    what the fake cannot see of the service's count (slots taken before the request left). The summary
    reports the total, so a service that wastes its budget shows up there."""
    assert stack.clock is not None
    events: list[tuple[float, int]] = []
    for begin, end in ghl_slots(stack, until):
        events += [(begin, 1), (end, -1)]
    threshold = stack.spec.ghl_burst - BUDGET_MARGIN
    spans: list[tuple[float, float]] = []
    count, start = 0, 0.0
    for at, step in sorted(events, key=lambda e: (e[0], -e[1])):
        count += step
        if step > 0 and count == threshold:
            start = at
        elif step < 0 and count == threshold - 1:
            spans.append((start, at))
    if count >= threshold:
        spans.append((start, until))
    blocked = []
    for begin, end in spans:
        first, last = stack.clock.map(begin), stack.clock.map(end)
        blocked.append(Downtime(first.when - timedelta(seconds=first.eps),
                                last.when + timedelta(seconds=last.eps), "GHL burst budget"))
    return blocked


def ghl_faults_by_lead(stack: E2EStack, until: float) -> dict[str, list[Downtime]]:
    """Per contact, the spans in which GHL failed or held that lead's own requests, from the fake's log.

    A held request blocks the lead until the service gives up on it (its client abandons a read after
    0.1 s and a send after 1 s, then reads the send back) and a failed one until the retry after its
    backoff: ``FAULT_HOLD`` and ``FAULT_RETRY`` real seconds, generous bounds of those. At 86400 each is
    hours of virtual time in which GHL, not the service, kept the lead from being texted; the judge treats
    them like a downtime of that lead alone."""
    assert stack.clock is not None
    spans: dict[str, list[Downtime]] = {}
    for r in stack.ghl.requests:
        if r.at > until or r.fault is None:
            continue
        body = r.json if isinstance(r.json, dict) else {}
        contact = body.get("contactId") or (r.path.split("/")[2] if r.path.startswith("/contacts/") else "")
        if not contact:
            continue
        lasts = FAULT_HOLD if r.fault.status is None else FAULT_RETRY
        first, last = stack.clock.map(r.at), stack.clock.map(r.at + lasts)
        spans.setdefault(str(contact), []).append(
            Downtime(first.when - timedelta(seconds=first.eps), last.when + timedelta(seconds=last.eps),
                     "GHL fault on the lead's request"))
    return spans


def _add_context(stack: E2EStack, verdict: Verdict, until: float) -> None:
    """For each late or missing step, what GHL did between the step's allowed start and its arrival (or
    the end): how full the burst window got, and how many of the lead's own requests GHL failed or held.
    A failure with none of these is ``clean``: the service's own doing."""
    assert stack.clock is not None
    virtual = stack.clock.virtual
    slots = [(virtual(a), virtual(b)) for a, b in ghl_slots(stack, until)]
    mine: dict[str, list[tuple[datetime, str]]] = {}
    for r in stack.ghl.requests:
        if r.at > until or r.fault is None:
            continue
        body = r.json if isinstance(r.json, dict) else {}
        contact = body.get("contactId") or (r.path.split("/")[2] if r.path.startswith("/contacts/") else "")
        kind = f"{r.status}" if r.fault.status is not None else f"held {r.fault.delay:g}s"
        mine.setdefault(str(contact), []).append((virtual(r.at), kind))
    for step in verdict.steps:
        if not any(p.startswith(("late", "missing")) for p in step.problems):
            continue
        end = step.arrivals[0].when if step.arrivals else verdict.observed_until
        peak = _peak(slots, step.allowed_from, end)
        faults = [kind for at, kind in mine.get(step.lead.contact_id, []) if step.allowed_from <= at <= end]
        step.context.append(f"GHL window peak {peak}/{stack.spec.ghl_burst}")
        if faults:
            step.context.append(f"GHL faults on this lead's requests: {', '.join(faults)}")
        step.clean = peak < stack.spec.ghl_burst - BUDGET_MARGIN and not faults


def _peak(slots: list[tuple[datetime, datetime]], start: datetime, end: datetime) -> int:
    """The most slots overlapping at any instant of [start, end]."""
    events = [(max(a, start), 1) for a, b in slots if a <= end and b > start]
    events += [(b, -1) for a, b in slots if a <= end and start < b <= end]
    events.sort(key=lambda e: (e[0], -e[1]))
    count = peak = 0
    for _, step in events:
        count += step
        peak = max(peak, count)
    return peak


def _record_downtime(stack: E2EStack, result: RunResult, killed: float, healthy: float, what: str) -> None:
    assert stack.clock is not None
    start, end = stack.clock.map(killed), stack.clock.map(healthy)
    result.downtimes.append(Downtime(start.when - timedelta(seconds=start.eps),
                                     end.when + timedelta(seconds=end.eps), what))


def _restart_latency(stack: E2EStack, spec: RunSpec, stop: threading.Event, result: RunResult) -> None:
    """Leads whose day_7 call falls due while the service is down; after the restart, how long (virtual)
    until the first of those calls reaches Retell, counted from the earliest instant any of them may go."""
    clock = stack.clock
    assert clock is not None
    rng = random.Random(f"{spec.scenario}:{spec.seed}")
    leads = make_leads(stack.ghl, rng, spec.leads)
    result.leads = len(leads)
    t0 = next_midnight(clock.now())
    enrollments: list[Enrollment] = []
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {API_TOKEN}"},
                      timeout=10) as client:
        # between 12:00 and 21:00 UTC on day 0 (7:00-16:00 in New York, 2:00-11:00 in Honolulu)
        planned = sorted(((_enroll_moment(rng, lead, t0 + timedelta(hours=12), 9.0), lead) for lead in leads),
                         key=lambda p: p[0])
        for when, lead in planned:
            clock.sleep_until(when, stop)
            enrolled = stack.enroll(client, lead)
            if isinstance(enrolled, str):
                result.extra_failures.append(enrolled)
            else:
                enrollments.append(enrolled)
    # Down from day 3 until every day_7 call (due by 21:00 UTC on day 4) is overdue, then restarted; the
    # restart itself takes a virtual day or two, so where "healthy again" falls in the leads' windows
    # varies: the lag is counted from the earliest instant any overdue call may go (window and downtime).
    clock.sleep_until(t0 + 3 * DAY + timedelta(hours=rng.uniform(0, 8)), stop)
    target = max((e.hi for e in enrollments), default=t0) + 4 * DAY + timedelta(minutes=30)

    def wait_for_restart() -> None:
        clock.sleep_until(target, stop)

    killed, healthy = stack.kill_service(restart_at=wait_for_restart)
    _record_downtime(stack, result, killed, healthy, "service")
    back = result.downtimes[-1].end
    overdue = [e for e in enrollments if e.hi + 4 * DAY < back]
    if len(overdue) < 3:
        result.extra_failures.append(f"harness: only {len(overdue)} day_7 calls fell due during the downtime")
        return
    wanted = {e.lead.contact_id for e in overdue}
    give_up = time.monotonic() + 20.0  # 20 virtual days
    first: Touch | None = None
    while first is None and time.monotonic() < give_up and not stop.is_set():
        calls = [t for t in stack.touches(time.monotonic()) if t.kind == "call" and t.contact_id in wanted]
        first = calls[0] if calls else None
        time.sleep(0.01)
    # then observe until every overdue call's own deadline has passed (two virtual days after the restart)
    clock.sleep_until(max(back + 2 * DAY, clock.now()), stop)
    _observe(stack, result, enrollments, time.monotonic())
    assert result.verdict is not None
    calls_due = [s for s in result.verdict.steps if s.step == "day_7" and s.lead.contact_id in wanted]
    earliest = min(s.allowed_from for s in calls_due)
    if first is None:
        result.extra_failures.append(f"restart latency: no overdue day_7 call reached Retell within 20 "
                                     f"virtual days of the restart (healthy at {back:%m-%d %H:%M}Z)")
        return
    lag = hours(first.when - earliest)
    result.notes.append(f"{len(overdue)} day_7 calls overdue at restart; first reached Retell "
                        f"{lag:.1f} virtual h after the earliest allowed instant "
                        f"({earliest:%m-%d %H:%M}Z; healthy at {back:%m-%d %H:%M}Z)")
    if lag > 12 + first.eps / 3600:
        result.extra_failures.append(f"restart latency: first overdue call came {lag:.1f} virtual h "
                                     f"after the service could send it (bound 12 h)")
