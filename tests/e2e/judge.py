"""What the service owes each lead, written here from ``CONTRACT.md`` (not imported from the bot, so the bot
does not judge itself), and the verdict on what reached the fakes.

Rules (CONTRACT.md, "The sequence"):

* cadence from enrollment: day_3 SMS +0, day_7 Retell call +4 d, day_14 email +11 d (an SMS when the contact
  has no email address), day_30 SMS +27 d, nurture SMS +57 d and every 30 d after;
* quiet hours in the lead's local time: 08:00-21:00, 08:00-20:00 in FL, OK, WA and MD; a step due outside
  them runs at the next opening;
* a step that ran late pushes the next one to at least 24 h after it (when GHL/Retell answered it); steps
  are never dropped for being late.

The verdict of one step, with ``eps`` the measurement allowance of the instant concerned (see ``vclock``):

* ``due``: enrollment + offset, or 24 h after the previous touch was answered when that is later. Enrollment
  is known as an interval (the enroll request left / its answer came back); ``due_lo`` uses the early end
  and the previous touch's *arrival*, ``due`` the late end and the previous touch's *answer*;
* ``allowed_from``: the first instant at or after ``due`` that is inside the lead's window and at which the
  service could send. **Downtime allowance**: the service cannot send while it is down, measured outside-in
  from the instant the test killed the service (or its Redis) to the first ``/healthz`` 200 after the
  restart, nor while GHL's burst budget is used up (measured from the fake GHL's request log, see
  ``harness.ghl_budget_exhausted``). If ``allowed_from`` falls inside such a *blocked* interval it moves to
  the interval's end, then to the next window opening, and so on;
* ``deadline`` = ``allowed_from`` + 12 virtual hours, not counting blocked time: a step that could go at
  ``allowed_from`` but was caught by a kill (or an exhausted budget) a few minutes later gets its 12 hours
  of service time all the same;
* **closing-time allowance**: when ``allowed_from`` is within ``CLOSE_SLACK`` (3 virtual hours = 125 real
  ms) of the window's close, the step may instead go within 12 hours of the next opening. At 86400 virtual
  seconds per second the real milliseconds of a send are virtual hours: the service starts no send in the
  last 50 real ms of a window (72 virtual minutes) so that none arrives after it closes, and after a
  restart it works through a backlog of overdue steps one graph run at a time, so a step that could go at
  18:30 may honestly find the window shut. Lateness is then counted from that opening;
* **restart backlog**: a step that could first go the moment a restarted service (or Redis) was healthy
  again stands in a queue: every step that fell due during the downtime goes then, one graph run (and a
  call's three webhooks) after another. With ``n`` such steps the closing-time allowance widens to
  ``CLOSE_SLACK + n * RESTART_STEP`` (15 virtual minutes, about 10 real ms at 86400, per overdue step:
  the restart-latency runs measure about 9 ms each, webhooks included). At 86400 a backlog of 24 overdue
  calls is five virtual hours of work; at scale 1 it is a quarter of a second;
* the touch reached the fake exactly once; it arrived at or after ``due_lo - eps`` and by ``deadline + eps``;
  an SMS or a call arrived inside the lead's window widened by ``eps`` at each end;
* a step whose deadline passed before the end of the observation and never arrived is *missing*; one whose
  deadline is later is *pending* (not judged, counted).

Arrivals are attributed in sequence order, since the service runs a lead's steps one after the other: each
arrival goes to the next step not yet seen whose kind (SMS / Email / call) it has (steps of other kinds
passed over stay without an arrival: missing, or pending), unless it came within 24 h of the last step's
arrival of the same kind, or no later step has its kind, in which case it is a duplicate of that step. So a
step sent weeks late is still recognised as itself, a skipped step is missing, a repeat is a duplicate, and
a step sent too soon is early.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

TOLERANCE = timedelta(hours=12)
CLOSE_SLACK = timedelta(hours=3)
RESTART_STEP = timedelta(minutes=15)
RESTARTS = frozenset({"service", "redis"})
SPACING = timedelta(hours=24)
STRICT_STATES = frozenset({"FL", "OK", "WA", "MD"})
DEFAULT_WINDOW = (time(8), time(21))
STRICT_WINDOW = (time(8), time(20))

# step, offset from enrollment, channel
CADENCE: tuple[tuple[str, timedelta, str], ...] = (
    ("day_3", timedelta(0), "sms"),
    ("day_7", timedelta(days=4), "call"),
    ("day_14", timedelta(days=11), "email"),
    ("day_30", timedelta(days=27), "sms"),
)
NURTURE_FIRST = timedelta(days=57)
NURTURE_EVERY = timedelta(days=30)


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def window_for(state: str) -> tuple[time, time]:
    return STRICT_WINDOW if state.upper() in STRICT_STATES else DEFAULT_WINDOW


@dataclass(frozen=True)
class Lead:
    contact_id: str
    name: str
    zone: str
    state: str
    phone: str
    email: str | None

    @property
    def window(self) -> tuple[time, time]:
        return window_for(self.state)

    def local(self, when: datetime) -> datetime:
        return when.astimezone(_zone(self.zone))

    def _openings(self, day: date) -> tuple[datetime, datetime]:
        start, end = self.window
        tz = _zone(self.zone)
        return datetime.combine(day, start, tzinfo=tz), datetime.combine(day, end, tzinfo=tz)

    def inside(self, when: datetime, slack: float = 0.0) -> bool:
        """``when`` is inside the lead's local window widened by ``slack`` seconds at each end."""
        widen = timedelta(seconds=slack)
        today = self.local(when).date()
        for day in (today - timedelta(days=1), today, today + timedelta(days=1)):
            opens, closes = self._openings(day)
            if opens - widen <= when < closes + widen:
                return True
        return False

    def closes(self, when: datetime) -> datetime:
        """The end of the window ``when`` is in (or of that local day's window)."""
        return self._openings(self.local(when).date())[1].astimezone(UTC)

    def next_open(self, when: datetime) -> datetime:
        """The earliest instant at or after ``when`` inside the lead's window."""
        if self.inside(when):
            return when
        day = self.local(when).date()
        for offset in range(3):
            opens, _ = self._openings(day + timedelta(days=offset))
            if opens > when:
                return opens.astimezone(UTC)
        raise AssertionError(f"no window opening after {when}")  # pragma: no cover


def step_kind(channel: str, lead: Lead) -> str:
    if channel == "call":
        return "call"
    if channel == "email":
        return "Email" if lead.email else "SMS"
    return "SMS"


def planned_steps(until: timedelta) -> list[tuple[str, timedelta, str]]:
    """The cadence's steps whose offset from enrollment is at most ``until``."""
    steps = [s for s in CADENCE if s[1] <= until]
    offset, n = NURTURE_FIRST, 0
    while offset <= until:
        steps.append((f"nurture_{n}", offset, "sms"))
        offset, n = offset + NURTURE_EVERY, n + 1
    return steps


@dataclass(frozen=True)
class Enrollment:
    lead: Lead
    lo: datetime  # the enroll request left (virtual, minus eps)
    hi: datetime  # its answer came back (virtual, plus eps)


@dataclass(frozen=True)
class Touch:
    contact_id: str
    kind: str  # "SMS", "Email" or "call"
    at: float  # the fake's monotonic arrival stamp
    when: datetime  # arrival, virtual
    eps: float  # measurement allowance of ``when``, virtual seconds
    answered: datetime  # when the fake answered (arrival + any injected hold), virtual


@dataclass(frozen=True)
class Downtime:
    start: datetime
    end: datetime
    what: str


def earliest_send(due: datetime, lead: Lead, downtimes: Sequence[Downtime]) -> datetime:
    """``due`` moved into the lead's window and out of every downtime (see the module docstring)."""
    candidate = due
    for _ in range(50):
        candidate = lead.next_open(candidate)
        blocking = [d for d in downtimes if d.start <= candidate < d.end]
        if not blocking:
            return candidate
        candidate = max(d.end for d in blocking)
    raise AssertionError("downtimes and windows never leave room")  # pragma: no cover


def merged(intervals: Iterable[Downtime]) -> list[Downtime]:
    """The union of ``intervals``, as disjoint intervals in time order."""
    union: list[Downtime] = []
    for d in sorted(intervals, key=lambda d: d.start):
        if union and d.start <= union[-1].end:
            last = union[-1]
            union[-1] = Downtime(last.start, max(last.end, d.end), f"{last.what}+{d.what}")
        else:
            union.append(d)
    return union


def blocked_within(blocked: Sequence[Downtime], start: datetime, end: datetime) -> timedelta:
    """How much of [start, end] the ``blocked`` intervals cover."""
    overlapping = [d for d in merged(blocked) if d.end > start and d.start < end]
    return sum((min(d.end, end) - max(d.start, start) for d in overlapping), timedelta())


def deadline_after(start: datetime, tolerance: timedelta, blocked: Sequence[Downtime]) -> datetime:
    """``start`` + ``tolerance`` of time outside the ``blocked`` intervals."""
    deadline = start + tolerance
    for _ in range(100):
        extended = start + tolerance + blocked_within(blocked, start, deadline)
        if extended == deadline:
            break
        deadline = extended
    return deadline


def hours(delta: timedelta) -> float:
    return delta.total_seconds() / 3600


def _fmt(when: datetime, lead: Lead | None = None) -> str:
    text = when.astimezone(UTC).strftime("%m-%d %H:%M") + "Z"
    if lead is not None:
        text += f" ({lead.local(when):%H:%M} local)"
    return text


@dataclass
class StepVerdict:
    lead: Lead
    step: str
    kind: str
    due_lo: datetime
    due: datetime
    allowed_from: datetime
    deadline: datetime
    arrivals: list[Touch] = field(default_factory=list)
    reopens: datetime | None = None  # next opening, when the closing-time allowance applies
    blocked: tuple[Downtime, ...] = ()  # the intervals in which the service could not send
    problems: list[str] = field(default_factory=list)
    pending: bool = False
    context: list[str] = field(default_factory=list)  # what else went on (added by the harness)
    clean: bool = True  # False when GHL pressure or faults may explain the problem (set by the harness)

    @property
    def lateness_h(self) -> float | None:
        """Hours from the allowed start (or the next opening, under the closing-time allowance) to the
        first arrival, blocked time not counted: what is held against the 12-hour tolerance."""
        if not self.arrivals:
            return None
        first = self.arrivals[0].when
        start = self.reopens if self.reopens is not None and first >= self.reopens else self.allowed_from
        return max(0.0, hours(first - start - blocked_within(self.blocked, start, first)))

    def describe(self) -> str:
        lead = self.lead
        head = f"{lead.name} [{lead.zone}, {lead.state}] {self.step} ({self.kind})"
        context = f" [{'; '.join(self.context)}]" if self.context else ""
        return f"{head}: {'; '.join(self.problems)}{context}"


@dataclass
class Verdict:
    steps: list[StepVerdict]
    unexpected: list[str]
    observed_until: datetime

    @property
    def failures(self) -> list[str]:
        return [s.describe() for s in self.steps if s.problems] + self.unexpected

    @property
    def clean_failures(self) -> int:
        """Failing steps with no GHL budget pressure or GHL fault on the way: the service's own doing."""
        return sum(1 for s in self.steps if s.problems and s.clean)

    @property
    def touches(self) -> int:
        return sum(len(s.arrivals) for s in self.steps)

    @property
    def judged(self) -> int:
        return sum(1 for s in self.steps if not s.pending)

    @property
    def pending(self) -> int:
        return sum(1 for s in self.steps if s.pending)

    @property
    def worst_lateness_h(self) -> float:
        values = [s.lateness_h for s in self.steps if s.lateness_h is not None]
        return max(values, default=0.0)

    @property
    def worst_after_due_h(self) -> float:
        """Hours from due to arrival, allowances not deducted (downtimes, GHL budget, quiet hours)."""
        return max((hours(s.arrivals[0].when - s.due) for s in self.steps if s.arrivals), default=0.0)

    def late_steps(self) -> list[StepVerdict]:
        return sorted((s for s in self.steps if s.problems), key=lambda s: -(s.lateness_h or 1e9))


def judge(enrollments: Iterable[Enrollment], touches: Iterable[Touch], downtimes: Sequence[Downtime],
          observed_until: datetime, *, tolerance: timedelta = TOLERANCE,
          lead_blocked: Mapping[str, Sequence[Downtime]] | None = None) -> Verdict:
    """Compare what reached the fakes with what the contract asks (see the module docstring).
    ``lead_blocked``: per contact, the intervals in which GHL was failing or holding that lead's own
    requests (a lead whose request GHL holds for 5 s cannot be texted meanwhile); they count like
    downtimes for that lead only."""
    enrolled = {e.lead.contact_id: e for e in enrollments}
    by_contact: dict[str, list[Touch]] = {}
    unexpected: list[str] = []
    for touch in sorted(touches, key=lambda t: t.at):
        if touch.contact_id not in enrolled:
            unexpected.append(f"{touch.kind} to {touch.contact_id}, a contact never enrolled, "
                              f"at {_fmt(touch.when)}")
            continue
        by_contact.setdefault(touch.contact_id, []).append(touch)
    verdicts: list[StepVerdict] = []
    all_downtimes = downtimes
    for contact_id, enrollment in enrolled.items():
        lead = enrollment.lead
        downtimes = [*all_downtimes, *((lead_blocked or {}).get(contact_id, ()))]
        horizon = observed_until - enrollment.lo + timedelta(days=2)
        steps = planned_steps(horizon)
        kinds = [step_kind(channel, lead) for _, _, channel in steps]
        assigned: list[list[Touch]] = [[] for _ in steps]
        upcoming = 0  # the first step after the last one that had an arrival
        for touch in by_contact.get(contact_id, []):
            seen = [i for i in range(upcoming) if kinds[i] == touch.kind and assigned[i]]
            following = [i for i in range(upcoming, len(steps)) if kinds[i] == touch.kind]
            repeat = bool(seen) and touch.when - assigned[seen[-1]][0].when <= SPACING
            if following and not repeat:
                assigned[following[0]].append(touch)
                upcoming = following[0] + 1
            elif seen:
                assigned[seen[-1]].append(touch)
            else:
                unexpected.append(f"{lead.name} [{lead.zone}, {lead.state}]: {touch.kind} at "
                                  f"{_fmt(touch.when, lead)}, which no step of the sequence sends")
        previous: Touch | None = None
        for i, (step, offset, _) in enumerate(steps):
            due_lo, due = enrollment.lo + offset, enrollment.hi + offset
            if previous is not None:
                due_lo = max(due_lo, previous.when + SPACING)
                due = max(due, previous.answered + SPACING)
            if due_lo > observed_until and not assigned[i]:
                continue  # not due yet when the observation ended
            allowed = earliest_send(due, lead, downtimes)
            verdict = StepVerdict(lead, step, kinds[i], due_lo, due, allowed,
                                  deadline_after(allowed, tolerance, downtimes), assigned[i],
                                  blocked=tuple(downtimes))
            arrived = assigned[i][0].when if assigned[i] else observed_until
            faulted = any(d.end > allowed and d.start < arrived
                          for d in (lead_blocked or {}).get(contact_id, ()))
            if lead.closes(allowed) - allowed <= CLOSE_SLACK or faulted:
                # Close to the window's end, or GHL failed or held this lead's requests on the way (each
                # retry, abandoned read and read-back is hours of virtual time): the send may slip past
                # the window's end to the next opening.
                reopens = verdict.reopens = earliest_send(lead.closes(allowed), lead, downtimes)
                verdict.deadline = max(verdict.deadline, deadline_after(reopens, tolerance, downtimes))
            _check(verdict, observed_until)
            verdicts.append(verdict)
            if assigned[i]:
                previous = assigned[i][0]
    _allow_restart_backlog(verdicts, all_downtimes, observed_until, tolerance)
    return Verdict(verdicts, unexpected, observed_until)


def _allow_restart_backlog(verdicts: Sequence[StepVerdict], downtimes: Sequence[Downtime],
                           observed_until: datetime, tolerance: timedelta) -> None:
    """The restart-backlog allowance (module docstring): the steps whose allowed start is the end of a
    service or Redis downtime were all overdue at that moment; each may slip to the next opening when its
    window closes within ``CLOSE_SLACK + backlog * RESTART_STEP``."""
    restarts = {d.end for d in downtimes if d.what in RESTARTS}
    backlog = Counter(v.allowed_from for v in verdicts if v.allowed_from in restarts)
    for verdict in verdicts:
        queued = backlog.get(verdict.allowed_from, 0)
        if not queued or verdict.reopens is not None:
            continue
        closes = verdict.lead.closes(verdict.allowed_from)
        if closes - verdict.allowed_from > CLOSE_SLACK + queued * RESTART_STEP:
            continue
        reopens = verdict.reopens = earliest_send(closes, verdict.lead, verdict.blocked)
        verdict.deadline = max(verdict.deadline, deadline_after(reopens, tolerance, verdict.blocked))
        verdict.problems.clear()
        verdict.pending = False
        _check(verdict, observed_until)


def _check(verdict: StepVerdict, observed_until: datetime) -> None:
    lead, arrivals, problems = verdict.lead, verdict.arrivals, verdict.problems
    if not arrivals:
        if verdict.deadline < observed_until:
            late = hours(observed_until - verdict.allowed_from)
            problems.append(f"missing: due {_fmt(verdict.due, lead)}, allowed from "
                            f"{_fmt(verdict.allowed_from, lead)}, nothing by {_fmt(observed_until)} "
                            f"(>{late:.1f} h late)")
        else:
            verdict.pending = True
        return
    if len(arrivals) > 1:
        times = ", ".join(_fmt(t.when, lead) for t in arrivals)
        problems.append(f"duplicate: reached the fake {len(arrivals)} times ({times})")
    first = arrivals[0]
    slack = timedelta(seconds=first.eps)
    if first.when < verdict.due_lo - slack:
        problems.append(f"early: arrived {_fmt(first.when, lead)}, "
                        f"{hours(verdict.due_lo - first.when):.1f} h before due {_fmt(verdict.due_lo, lead)}")
    if first.when > verdict.deadline + slack:
        problems.append(f"late: arrived {_fmt(first.when, lead)}, {verdict.lateness_h:.1f} h of service "
                        f"time after allowed start {_fmt(verdict.allowed_from, lead)} "
                        f"(due {_fmt(verdict.due, lead)}, deadline {_fmt(verdict.deadline, lead)})")
    if verdict.kind in ("SMS", "call"):
        for touch in arrivals:
            if not lead.inside(touch.when, touch.eps):
                start, end = lead.window
                problems.append(f"quiet hours: arrived {_fmt(touch.when, lead)}, outside {start:%H:%M}-"
                                f"{end:%H:%M} (allowance {touch.eps / 60:.1f} min)")
