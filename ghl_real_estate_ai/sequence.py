"""The 3-7-30 sequence as plain rules: steps, cadence, statuses, quiet hours, the daily cap, stall-breakers.

Nothing here does I/O or knows about LangGraph; the graph's router and nodes are thin adapters over it.
All datetimes are timezone-aware; "due" times are anchored to enrollment, never to when a step ran.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ghl_real_estate_ai.us_geo import ALL_US_ZONES, STATE_ZONES, area_code_state, normalize_state


class Step(StrEnum):
    """A step of the sequence. The value is also the graph node's name."""

    DAY_3 = "day_3"
    DAY_7 = "day_7"
    DAY_14 = "day_14"
    DAY_30 = "day_30"
    NURTURE = "nurture"
    STALL_BREAKER = "stall_breaker"


SequenceDay = Step  # the name the earlier version's users know


class SequenceStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    QUALIFIED = "qualified"
    NURTURE = "nurture"
    COMPLETED = "completed"
    OPTED_OUT = "opted_out"
    CANCELLED = "cancelled"
    FAILED = "failed"


# Statuses in which the timed sequence runs by itself.
TIMED_STATUSES = frozenset({SequenceStatus.ACTIVE, SequenceStatus.NURTURE})
# Statuses that end the sequence; only an operator's enroll starts a new one.
FINAL_STATUSES = frozenset(
    {SequenceStatus.QUALIFIED, SequenceStatus.COMPLETED, SequenceStatus.OPTED_OUT, SequenceStatus.CANCELLED}
)

TIMED_STEPS: tuple[Step, ...] = (Step.DAY_3, Step.DAY_7, Step.DAY_14, Step.DAY_30, Step.NURTURE)

STEP_CHANNEL: dict[Step, str] = {
    Step.DAY_3: "sms",
    Step.DAY_7: "call",
    Step.DAY_14: "email",
    Step.DAY_30: "sms",
    Step.NURTURE: "sms",
    Step.STALL_BREAKER: "sms",
}

STEP_OFFSET: dict[Step, timedelta] = {
    Step.DAY_3: timedelta(0),
    Step.DAY_7: timedelta(days=4),
    Step.DAY_14: timedelta(days=11),
    Step.DAY_30: timedelta(days=27),
    Step.NURTURE: timedelta(days=57),
}
NURTURE_INTERVAL = timedelta(days=30)
STALL_BREAKER_DELAY = timedelta(days=2)
MAX_STALL_BREAKERS = 3
DAILY_CAP = 3
CAP_WINDOW = timedelta(hours=24)
# A sequence step never goes within this long of the previous one, even when it is running late.
MIN_TOUCH_GAP = timedelta(hours=24)


def due_at(step: Step, enrolled_at: datetime, nurture_index: int = 0) -> datetime:
    """When ``step`` is due, counted from enrollment. ``nurture_index`` counts nurture touches sent so far."""
    if step is Step.STALL_BREAKER:
        raise ValueError("stall_breaker is timed from the last reply, not from enrollment")
    due = enrolled_at + STEP_OFFSET[step]
    if step is Step.NURTURE:
        due += NURTURE_INTERVAL * nurture_index
    return due


def step_after(step: Step) -> Step:
    """The timed step that follows ``step`` (nurture follows itself)."""
    if step is Step.NURTURE:
        return Step.NURTURE
    return TIMED_STEPS[TIMED_STEPS.index(step) + 1]


def touch_key(contact_id: str, step: Step | str, occurrence: int = 0) -> str:
    """The idempotency key of one automated touch: one per lead, step and (for nurture/stall) occurrence."""
    return f"{contact_id}|{step}|{occurrence}"


# ---------------------------------------------------------------------------------------------- quiet hours

_WINDOW_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    """An allowed daily send window in local time, ``start`` inclusive, ``end`` exclusive."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise ValueError(f"window start {self.start} must be before its end {self.end}")

    @classmethod
    def parse(cls, text: str) -> Window:
        match = _WINDOW_RE.match(text)
        if not match:
            raise ValueError(f"expected a window like 08:00-21:00, got {text!r}")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
            raise ValueError(f"not a valid time window: {text!r}")
        end = time(23, 59, 59, 999999) if h2 == 24 else time(h2, m2)
        return cls(time(h1, m1), end)

    def intersect(self, other: Window) -> Window:
        return Window(max(self.start, other.start), min(self.end, other.end))

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


# States whose law is stricter than the federal 8:00-21:00.
STATE_WINDOWS: dict[str, Window] = {state: Window(time(8), time(20)) for state in ("FL", "OK", "WA", "MD")}


@dataclass(frozen=True)
class QuietHours:
    """The allowed send window: a default plus per-state windows.

    Statutory state windows always apply: configuration (a default, or a state's own window as in
    ``"08:00-21:00,TX=09:00-21:00"``) can narrow them, never widen them.
    """

    default: Window = Window(time(8), time(21))
    states: dict[str, Window] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> QuietHours:
        """``"08:00-21:00"`` or ``"08:00-21:00,FL=08:00-20:00,TX=09:00-21:00"``."""
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        if not parts:
            raise ValueError("empty quiet-hours setting")
        default = Window(time(8), time(21))
        states: dict[str, Window] = {}
        for part in parts:
            if "=" in part:
                state_text, window_text = part.split("=", 1)
                state = normalize_state(state_text)
                if state is None:
                    raise ValueError(f"unknown US state {state_text.strip()!r} in quiet hours")
                states[state] = Window.parse(window_text)
            else:
                default = Window.parse(part)
        return cls(default, states)

    def __hash__(self) -> int:  # (hashable, so a lead's locale can be cached)
        return hash((self.default, tuple(sorted(self.states.items()))))

    def window_for(self, state: str | None) -> Window:
        configured = self.states.get(state or "", self.default)
        statutory = STATE_WINDOWS.get(state or "")
        return configured.intersect(statutory) if statutory else configured

    def strictest(self) -> Window:
        window = self.default
        for extra in (*STATE_WINDOWS.values(), *self.states.values()):
            window = window.intersect(extra)
        return window


@dataclass(frozen=True)
class LeadLocale:
    """Where a lead is, as far as quiet hours are concerned: every zone they might be in, and their window."""

    zones: tuple[str, ...]
    window: Window
    basis: str  # how it was decided: "timezone", "state", "area code", "unknown"


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _valid_zone(name: str | None) -> str | None:
    if not name:
        return None
    try:
        _zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return name


@lru_cache(maxsize=8192)
def resolve_locale(
    quiet: QuietHours, *, timezone: str | None, state: str | None, phone: str | None
) -> LeadLocale:
    """Decide a lead's zones and window by the strictest reading of the law.

    Every zone the contact's time zone, state and phone area code point at counts (a state that spans
    zones points at all of them unless the time zone is one of them), and the strictest state window among
    the state and the area code's state applies: Florida's FTSA and Oklahoma's OTSA presume
    that a number with the state's area code belongs to a resident, so a Washington number gets
    Washington's 08:00-20:00 in Seattle even when the contact's time zone says New York. With none of the
    three known, every US zone with the strictest window. (Should a configured window be so narrow that no
    instant is inside it in all the zones, the most specific source alone decides: time zone, then state,
    then area code.)"""
    given_state = normalize_state(state)
    phone_state = area_code_state(phone)
    zone = _valid_zone(timezone)
    sources: list[tuple[str, tuple[str, ...]]] = []
    if zone:
        sources.append(("timezone", (zone,)))
    for basis, code in (("state", given_state), ("area code", phone_state)):
        if code and code in STATE_ZONES:
            # A state spanning zones points at all of them, unless the contact's time zone says which.
            state_zones = (zone,) if zone in STATE_ZONES[code] else STATE_ZONES[code]
            known = {z for _, source_zones in sources for z in source_zones}
            if not set(state_zones) <= known:
                sources.append((basis, state_zones))
    if not sources:
        return LeadLocale(ALL_US_ZONES, quiet.strictest(), "unknown")
    window = quiet.window_for(given_state or phone_state)
    if given_state and phone_state and phone_state != given_state:
        with suppress(ValueError):  # configured windows that do not overlap: the contact's own state's
            window = window.intersect(quiet.window_for(phone_state))
    zones = tuple(dict.fromkeys(z for _, source_zones in sources for z in source_zones))
    if not _has_instant(zones, window):
        sources = sources[:1]
        zones = sources[0][1]
    return LeadLocale(zones, window, "+".join(dict.fromkeys(basis for basis, _ in sources)))


@lru_cache(maxsize=1024)
def _has_instant(zones: tuple[str, ...], window: Window) -> bool:
    try:
        next_allowed(datetime(2026, 1, 5, tzinfo=UTC), LeadLocale(zones, window, "check"))
    except ValueError:
        return False
    return True


def _local_allowed(when: datetime, zone: str, window: Window) -> bool:
    local = when.astimezone(_zone(zone)).time()
    return window.start <= local < window.end


def _next_window_start(when: datetime, zone: str, window: Window) -> datetime:
    """The first instant after ``when`` at which the window opens in ``zone``."""
    tz = _zone(zone)
    local = when.astimezone(tz)
    day: date = local.date()
    if local.time() >= window.start:
        day += timedelta(days=1)
    return datetime.combine(day, window.start, tzinfo=tz).astimezone(UTC)


def is_allowed(when: datetime, locale: LeadLocale) -> bool:
    """True when ``when`` is inside the lead's window in every zone they might be in."""
    return all(_local_allowed(when, zone, locale.window) for zone in locale.zones)


def next_allowed(when: datetime, locale: LeadLocale) -> datetime:
    """The earliest instant at or after ``when`` that is inside the lead's window in all of their zones."""
    candidate = when.astimezone(UTC)
    for _ in range(64):
        blocking = [z for z in locale.zones if not _local_allowed(candidate, z, locale.window)]
        if not blocking:
            return candidate
        candidate = max(_next_window_start(candidate, z, locale.window) for z in blocking)
    raise ValueError(f"no instant is inside {locale.window} in all of {locale.zones}")


def next_under_cap(when: datetime, sent: Iterable[datetime], cap: int = DAILY_CAP) -> datetime:
    """The earliest instant at or after ``when`` at which fewer than ``cap`` automated messages were sent in
    the preceding 24 hours."""
    times = sorted(sent)
    candidate = when
    while True:
        recent = [t for t in times if candidate - CAP_WINDOW < t <= candidate]
        if len(recent) < cap:
            return candidate
        candidate = recent[-cap] + CAP_WINDOW


def next_send_time(
    when: datetime, locale: LeadLocale, sent: Iterable[datetime], cap: int = DAILY_CAP
) -> datetime:
    """The earliest instant at or after ``when`` inside quiet-hours rules and under the daily cap."""
    history = list(sent)
    candidate = when
    for _ in range(64):
        candidate = next_under_cap(next_allowed(candidate, locale), history, cap)
        if is_allowed(candidate, locale):
            return candidate
    raise ValueError("could not find a send time")  # pragma: no cover - windows always reopen


# ------------------------------------------------------------------------------------------ stall-breakers


def choose_stall_breaker(
    contact_id: str, attempts: int, last_variant: int | None, variants: int
) -> int | None:
    """Which stall-breaker variant to send next, or None once ``MAX_STALL_BREAKERS`` were sent.

    Variants rotate from a per-lead starting point (so a team's leads don't all get the same first nudge)
    and the same variant is never sent twice in a row.
    """
    if attempts >= MAX_STALL_BREAKERS or variants <= 0:
        return None
    start = int(hashlib.sha256(contact_id.encode()).hexdigest(), 16) % variants
    choice = (start + attempts) % variants
    if choice == last_variant and variants > 1:
        choice = (choice + 1) % variants
    return choice


# ---------------------------------------------------------------------------------------------- engagement


def temperature(
    *, replies: int, last_inbound_at: datetime | None, now: datetime, qualified: bool = False
) -> str:
    """hot: qualified, or replied in the last 3 days; warm: replied in the last 30 days; else cold."""
    if qualified:
        return "hot"
    if not replies or last_inbound_at is None:
        return "cold"
    age = now - last_inbound_at
    if age <= timedelta(days=3):
        return "hot"
    if age <= timedelta(days=30):
        return "warm"
    return "cold"


def parse_time(value: str | None) -> datetime | None:
    """Parse an ISO-8601 time kept in state (always UTC-aware); None stays None."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso(value: datetime) -> str:
    """The ISO-8601 UTC form kept in state."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def recent_sends(values: Sequence[str], now: datetime) -> list[datetime]:
    """Automated send times within the cap window before ``now`` (for state that keeps them)."""
    parsed = [parse_time(v) for v in values]
    return [t for t in parsed if t is not None and t > now - CAP_WINDOW]


# ------------------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class Plan:
    """What the lead should get next, and when.

    ``due_at`` is already moved out of quiet hours, under the daily cap and at least ``MIN_TOUCH_GAP``
    after the previous touch; ``cadence_due_at`` is when the cadence alone has it due (its anchored time).
    """

    step: Step | None
    due_at: datetime | None = None
    cadence_due_at: datetime | None = None


def plan_next(
    *,
    status: str,
    enrolled_at: datetime | None,
    current_step: Step | None,
    nurture_sent: int,
    now: datetime,
    locale: LeadLocale,
    sent: Sequence[datetime] = (),
    conversation_active: bool = False,
    last_outbound_at: datetime | None = None,
    stall_attempts: int = 0,
    not_before: datetime | None = None,
    last_touch_at: datetime | None = None,
) -> Plan:
    """Decide the next step and its send time from the lead's progress. Pure.

    Steps are never dropped for running late (downtime, a backlog): the current step is always the next
    one, at its anchored time or now, whichever is later. A step whose anchored time falls within
    ``MIN_TOUCH_GAP`` of the previous sequence touch (``last_touch_at``) waits until that gap has passed,
    so a late step and the one after it never arrive as a burst; steps further out keep their anchored
    times. Quiet hours and the daily cap apply last.
    """
    if status not in TIMED_STATUSES or enrolled_at is None or current_step is None:
        return Plan(None)
    if conversation_active and last_outbound_at is not None and stall_attempts < MAX_STALL_BREAKERS:
        step, cadence = Step.STALL_BREAKER, last_outbound_at + STALL_BREAKER_DELAY
        earliest = max(cadence, now)
    else:
        step = current_step
        cadence = due_at(step, enrolled_at, nurture_sent if step is Step.NURTURE else 0)
        earliest = max(cadence, now)
        if conversation_active and last_outbound_at is not None:
            # The stall-breakers are spent: the sequence resumes once the last one had its two days.
            earliest = max(earliest, last_outbound_at + STALL_BREAKER_DELAY)
        if last_touch_at is not None:
            earliest = max(earliest, last_touch_at + MIN_TOUCH_GAP)
    if not_before is not None:
        earliest = max(earliest, not_before)
    return Plan(step, next_send_time(earliest, locale, sent), cadence)
