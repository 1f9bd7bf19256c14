"""Pure sequence rules: cadence, quiet hours, the daily cap, stall-breakers, planning."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from ghl_real_estate_ai.sequence import (
    MAX_STALL_BREAKERS,
    LeadLocale,
    QuietHours,
    SequenceStatus,
    Step,
    Window,
    choose_stall_breaker,
    due_at,
    is_allowed,
    next_allowed,
    next_send_time,
    next_under_cap,
    plan_next,
    resolve_locale,
    step_after,
    temperature,
)

ENROLLED = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("step", "nurture_index", "days"),
    [
        (Step.DAY_3, 0, 0),
        (Step.DAY_7, 0, 4),
        (Step.DAY_14, 0, 11),
        (Step.DAY_30, 0, 27),
        (Step.NURTURE, 0, 57),
        (Step.NURTURE, 1, 87),
        (Step.NURTURE, 2, 117),
        (Step.NURTURE, 10, 357),
    ],
)
def test_due_times_are_anchored_to_enrollment(step: Step, nurture_index: int, days: int) -> None:
    assert due_at(step, ENROLLED, nurture_index) == ENROLLED + timedelta(days=days)


def test_stall_breaker_has_no_cadence() -> None:
    with pytest.raises(ValueError, match="last reply"):
        due_at(Step.STALL_BREAKER, ENROLLED)


@pytest.mark.parametrize(
    ("step", "following"),
    [
        (Step.DAY_3, Step.DAY_7),
        (Step.DAY_7, Step.DAY_14),
        (Step.DAY_14, Step.DAY_30),
        (Step.DAY_30, Step.NURTURE),
        (Step.NURTURE, Step.NURTURE),
    ],
)
def test_step_order(step: Step, following: Step) -> None:
    assert step_after(step) is following


QUIET = QuietHours()
ZONE_CASES = [
    # zone, state, local time, allowed
    ("America/New_York", "NY", "07:59", False),
    ("America/New_York", "NY", "08:00", True),
    ("America/New_York", "NY", "20:59", True),
    ("America/New_York", "NY", "21:00", False),
    ("America/Chicago", "TX", "08:00", True),
    ("America/Chicago", "TX", "20:30", True),
    ("America/Chicago", "TX", "21:00", False),
    ("America/Denver", "CO", "07:30", False),
    ("America/Denver", "CO", "12:00", True),
    ("America/Phoenix", "AZ", "20:59", True),
    ("America/Phoenix", "AZ", "06:00", False),
    ("America/Los_Angeles", "CA", "20:45", True),
    ("America/Los_Angeles", "CA", "21:15", False),
    ("Pacific/Honolulu", "HI", "08:00", True),
    ("Pacific/Honolulu", "HI", "22:00", False),
    ("America/Anchorage", "AK", "09:00", True),
    ("America/Anchorage", "AK", "23:00", False),
    # stricter states: 8:00-20:00
    ("America/New_York", "FL", "19:59", True),
    ("America/New_York", "FL", "20:00", False),
    ("America/New_York", "FL", "20:30", False),
    ("America/Los_Angeles", "WA", "19:30", True),
    ("America/Los_Angeles", "WA", "20:00", False),
    ("America/Chicago", "OK", "20:15", False),
    ("America/New_York", "MD", "20:01", False),
    ("America/New_York", "MD", "08:00", True),
]


@pytest.mark.parametrize(("zone", "state", "local", "allowed"), ZONE_CASES)
def test_quiet_hours_in_the_leads_zone(zone: str, state: str, local: str, allowed: bool) -> None:
    hour, minute = (int(p) for p in local.split(":"))
    when = datetime(2026, 6, 10, hour, minute, tzinfo=ZoneInfo(zone))
    locale = resolve_locale(QUIET, timezone=zone, state=state, phone=None)
    assert is_allowed(when, locale) is allowed


@pytest.mark.parametrize(
    ("zone", "day", "local", "allowed"),
    [
        # US DST starts 2026-03-08 (02:00 -> 03:00) and ends 2026-11-01 (02:00 -> 01:00).
        ("America/New_York", 8, "07:59", False),
        ("America/New_York", 8, "08:00", True),
        ("America/New_York", 8, "20:59", True),
        ("America/Los_Angeles", 8, "08:00", True),
        ("America/Chicago", 8, "21:00", False),
    ],
)
def test_quiet_hours_on_dst_start_day(zone: str, day: int, local: str, allowed: bool) -> None:
    hour, minute = (int(p) for p in local.split(":"))
    when = datetime(2026, 3, day, hour, minute, tzinfo=ZoneInfo(zone))
    assert is_allowed(when, resolve_locale(QUIET, timezone=zone, state=None, phone=None)) is allowed


@pytest.mark.parametrize(
    ("zone", "month", "day", "expected_utc_hour"),
    [
        ("America/New_York", 3, 7, 13),  # EST: 08:00 = 13:00Z
        ("America/New_York", 3, 8, 12),  # EDT from 03:00 local: 08:00 = 12:00Z
        ("America/New_York", 10, 31, 12),  # EDT
        ("America/New_York", 11, 1, 13),  # EST again on the fall-back day
        ("America/Los_Angeles", 3, 8, 15),
        ("America/Los_Angeles", 11, 1, 16),
        ("America/Phoenix", 3, 8, 15),  # Arizona keeps MST all year
        ("America/Phoenix", 11, 1, 15),
    ],
)
def test_window_opens_at_local_eight_across_dst(
    zone: str, month: int, day: int, expected_utc_hour: int
) -> None:
    locale = resolve_locale(QUIET, timezone=zone, state=None, phone=None)
    just_after_midnight = datetime(2026, month, day, 0, 30, tzinfo=ZoneInfo(zone))
    opens = next_allowed(just_after_midnight, locale)
    assert opens == datetime(2026, month, day, expected_utc_hour, 0, tzinfo=UTC)
    assert opens.astimezone(ZoneInfo(zone)).time() == time(8, 0)


@pytest.mark.parametrize(
    ("timezone", "state", "phone", "zones", "window", "basis"),
    [
        ("America/Chicago", "TX", None, ("America/Chicago",), "08:00-21:00", "timezone"),
        (
            "America/New_York",
            None,
            "+13055550100",
            ("America/New_York",),
            "08:00-20:00",
            "timezone",
        ),  # FL area code
        (None, "FL", None, ("America/New_York", "America/Chicago"), "08:00-20:00", "state"),
        (None, "Washington", None, ("America/Los_Angeles",), "08:00-20:00", "state"),
        (None, None, "+12065550100", ("America/Los_Angeles",), "08:00-20:00", "area code"),
        (None, None, "(512) 555-0100", ("America/Chicago", "America/Denver"), "08:00-21:00", "area code"),
        ("Not/AZone", None, None, None, "08:00-20:00", "unknown"),
        (None, None, None, None, "08:00-20:00", "unknown"),
        (None, "ZZ", "+10005550100", None, "08:00-20:00", "unknown"),
    ],
)
def test_resolve_locale(
    timezone: str | None,
    state: str | None,
    phone: str | None,
    zones: tuple[str, ...] | None,
    window: str,
    basis: str,
) -> None:
    locale = resolve_locale(QUIET, timezone=timezone, state=state, phone=phone)
    if zones is not None:
        assert locale.zones == zones
    else:
        assert len(locale.zones) == 7 and "Pacific/Honolulu" in locale.zones
    assert str(locale.window) == window
    assert locale.basis == basis


def test_unknown_zone_only_sends_when_allowed_everywhere() -> None:
    locale = resolve_locale(QUIET, timezone=None, state=None, phone=None)
    # 08:00 Eastern is 02:00 in Honolulu: not allowed.
    assert not is_allowed(datetime(2026, 6, 10, 8, 0, tzinfo=ZoneInfo("America/New_York")), locale)
    opens = next_allowed(datetime(2026, 6, 10, 8, 0, tzinfo=ZoneInfo("America/New_York")), locale)
    # Honolulu 08:00 (HST, UTC-10) = 18:00Z = 14:00 EDT, still before 20:00 Eastern.
    assert opens == datetime(2026, 6, 10, 18, 0, tzinfo=UTC)
    assert is_allowed(opens, locale)


@pytest.mark.parametrize(
    ("spec", "state", "window"),
    [
        ("08:00-21:00", None, "08:00-21:00"),
        ("09:00-20:00", "TX", "09:00-20:00"),
        ("09:00-21:00", "FL", "09:00-20:00"),  # a configured default never widens a state's statutory window
        ("08:00-21:00,TX=10:00-19:00", "TX", "10:00-19:00"),
        ("08:00-21:00,FL=09:00-19:00", "FL", "09:00-19:00"),
        ("08:00-21:00,florida=08:30-20:00", "FL", "08:30-20:00"),
        ("08:00-21:00,FL=07:00-22:00", "FL", "08:00-20:00"),  # never wider than Florida's statute
    ],
)
def test_quiet_hours_configuration(spec: str, state: str | None, window: str) -> None:
    assert str(QuietHours.parse(spec).window_for(state)) == window


@pytest.mark.parametrize(
    "spec", ["", "8-21", "21:00-08:00", "08:00-25:00", "XX=08:00-20:00", "08:00-21:00,ZZ=08:00-20:00"]
)
def test_bad_quiet_hours_configuration_is_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        QuietHours.parse(spec)


CHICAGO = LeadLocale(("America/Chicago",), Window(time(8), time(21)), "timezone")


def _ct(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 6, day, hour, minute, tzinfo=ZoneInfo("America/Chicago"))


@pytest.mark.parametrize(
    ("sent_hours", "expected"),
    [
        ([], (10, 12)),
        ([9], (10, 12)),
        ([9, 10], (10, 12)),
        ([9, 10, 11], (11, 9)),  # three in 24 h: wait until the first falls out
        ([1, 10, 11], (11, 1)),
        ([1, 2, 3, 11], (11, 2)),  # four sent: the third-newest decides
        ([11, 11, 11], (11, 11)),
    ],
)
def test_daily_cap(sent_hours: list[int], expected: tuple[int, int]) -> None:
    sent = [_ct(10, h) for h in sent_hours]
    assert next_under_cap(_ct(10, 12), sent) == _ct(*expected)


def test_cap_counts_a_rolling_24_hours() -> None:
    now = _ct(10, 12)
    sent = [_ct(9, 11), _ct(10, 9), _ct(10, 10)]
    # The first was 25 h ago: only two count.
    assert next_under_cap(now, sent) == now
    sent = [_ct(9, 13), _ct(10, 9), _ct(10, 10)]
    assert next_under_cap(now, sent) == _ct(10, 13)


def test_send_time_combines_cap_and_quiet_hours() -> None:
    sent = [_ct(9, 20, 30), _ct(10, 9), _ct(10, 10)]
    # Under the cap at 20:30 on the 10th; that is inside the window (until 21:00).
    assert next_send_time(_ct(10, 12), CHICAGO, sent) == _ct(10, 20, 30)
    sent = [_ct(9, 21, 30), _ct(10, 9), _ct(10, 10)]
    # Under the cap at 21:30: quiet hours, so 08:00 the next morning, when only two remain in the window.
    assert next_send_time(_ct(10, 12), CHICAGO, sent) == _ct(11, 8)


@pytest.mark.parametrize(
    ("attempts", "last", "variants"),
    [(a, last, v) for a in range(MAX_STALL_BREAKERS) for last in (None, 0, 1, 2, 3) for v in (1, 2, 3, 4)],
)
def test_stall_breaker_choice(attempts: int, last: int | None, variants: int) -> None:
    choice = choose_stall_breaker("lead-42", attempts, last, variants)
    assert choice is not None and 0 <= choice < variants
    if variants > 1:
        assert choice != last


@pytest.mark.parametrize("contact_id", [f"lead-{i}" for i in range(20)])
def test_stall_breakers_rotate_and_stop_after_three(contact_id: str) -> None:
    seen: list[int] = []
    last: int | None = None
    for attempts in range(MAX_STALL_BREAKERS):
        choice = choose_stall_breaker(contact_id, attempts, last, 4)
        assert choice is not None and choice != last
        seen.append(choice)
        last = choice
    assert len(set(seen)) == 3
    assert choose_stall_breaker(contact_id, MAX_STALL_BREAKERS, last, 4) is None


@pytest.mark.parametrize(
    ("replies", "days_ago", "qualified", "expected"),
    [
        (0, None, False, "cold"),
        (1, 1, False, "hot"),
        (1, 3, False, "hot"),
        (2, 10, False, "warm"),
        (2, 45, False, "cold"),
        (0, None, True, "hot"),
    ],
)
def test_temperature(replies: int, days_ago: int | None, qualified: bool, expected: str) -> None:
    now = ENROLLED
    last = now - timedelta(days=days_ago) if days_ago is not None else None
    assert temperature(replies=replies, last_inbound_at=last, now=now, qualified=qualified) == expected


def _plan(**kwargs: object) -> object:
    defaults: dict[str, object] = dict(
        status=SequenceStatus.ACTIVE,
        enrolled_at=ENROLLED,
        current_step=Step.DAY_3,
        nurture_sent=0,
        now=ENROLLED,
        locale=CHICAGO,
    )
    defaults.update(kwargs)
    return plan_next(**defaults)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "status", [s for s in SequenceStatus if s not in (SequenceStatus.ACTIVE, SequenceStatus.NURTURE)]
)
def test_plan_nothing_for_non_timed_statuses(status: SequenceStatus) -> None:
    assert _plan(status=status).step is None  # type: ignore[attr-defined]


def test_plan_next_step_and_quiet_hours() -> None:
    # Enrolled 15:00Z = 10:00 CDT: day_3 goes now.
    plan = _plan()
    assert plan.step is Step.DAY_3 and plan.due_at == ENROLLED  # type: ignore[attr-defined]
    # day_7 is due 4 days later at 10:00 CT, inside the window.
    plan = _plan(current_step=Step.DAY_7)
    assert plan.due_at == ENROLLED + timedelta(days=4)  # type: ignore[attr-defined]
    # Enrolled at 03:00Z = 21:00 CST: day_3 waits for 08:00 CST.
    late = datetime(2026, 3, 3, 3, 0, tzinfo=UTC)
    plan = _plan(enrolled_at=late, now=late)
    assert plan.due_at == datetime(2026, 3, 3, 14, 0, tzinfo=UTC)  # type: ignore[attr-defined]


def test_plan_catches_up_instead_of_dropping_a_late_step() -> None:
    now = ENROLLED + timedelta(days=12)  # day_7 and day_14 both overdue (a downtime, a pause)
    plan = _plan(current_step=Step.DAY_7, now=now)
    assert plan.step is Step.DAY_7 and plan.due_at == now  # type: ignore[attr-defined]
    assert plan.cadence_due_at == ENROLLED + timedelta(days=4)  # type: ignore[attr-defined]
    # Once the late day_7 went out, day_14 (already due) waits 24 hours after it, not a burst.
    plan = _plan(current_step=Step.DAY_14, now=now, last_touch_at=now)
    assert plan.step is Step.DAY_14 and plan.due_at == now + timedelta(hours=24)  # type: ignore[attr-defined]
    # A later step keeps its anchored time when that is more than 24 hours after the last touch ...
    plan = _plan(current_step=Step.DAY_30, now=now + timedelta(days=1), last_touch_at=now + timedelta(days=1))
    assert plan.due_at == ENROLLED + timedelta(days=27)  # type: ignore[attr-defined]
    # ... and moves to 24 hours after it when the anchor is closer than that.
    touched = ENROLLED + timedelta(days=26, hours=4)  # 14:00 CDT, 20 hours before day_30 is due
    plan = _plan(current_step=Step.DAY_30, now=touched, last_touch_at=touched)
    assert plan.due_at == touched + timedelta(hours=24)  # type: ignore[attr-defined]
    # Missed nurture months are each sent, a day apart, in the lead's window.
    now = ENROLLED + timedelta(days=57 + 65)
    plan = _plan(current_step=Step.NURTURE, status=SequenceStatus.NURTURE, now=now, last_touch_at=now)
    assert plan.step is Step.NURTURE and plan.due_at == now + timedelta(hours=24)  # type: ignore[attr-defined]
    assert plan.cadence_due_at == ENROLLED + timedelta(days=57)  # type: ignore[attr-defined]


def test_plan_the_24_hour_gap_lands_inside_the_window() -> None:
    # The late step went out at 20:30 CDT; 24 hours later is still inside the window, but a touch at 20:50
    # has its follower 24 hours later at 20:50 too: inside. One at 07:59 the next morning is not.
    evening = datetime(2026, 3, 20, 1, 30, tzinfo=UTC)  # 20:30 CDT
    plan = _plan(current_step=Step.DAY_14, now=evening, last_touch_at=evening)
    assert plan.due_at == evening + timedelta(hours=24)  # type: ignore[attr-defined]
    night = datetime(2026, 3, 20, 3, 0, tzinfo=UTC)  # 22:00 CDT (a touch sent at the end of a window)
    plan = _plan(current_step=Step.DAY_14, now=night, last_touch_at=night)
    assert plan.due_at == datetime(2026, 3, 21, 13, 0, tzinfo=UTC)  # type: ignore[attr-defined]  # 08:00 CDT


def test_plan_stall_breaker_while_conversation_is_active() -> None:
    last = ENROLLED + timedelta(days=1)
    plan = _plan(current_step=Step.DAY_7, conversation_active=True, last_outbound_at=last, now=last)
    assert plan.step is Step.STALL_BREAKER and plan.due_at == last + timedelta(days=2)  # type: ignore[attr-defined]
    plan = _plan(
        current_step=Step.DAY_7, conversation_active=True, last_outbound_at=last, now=last, stall_attempts=3
    )
    assert plan.step is Step.DAY_7  # type: ignore[attr-defined]
    assert plan.due_at == ENROLLED + timedelta(days=4)  # the cadence is later than the stall wait
    late = ENROLLED + timedelta(days=3)
    plan = _plan(
        current_step=Step.DAY_7, conversation_active=True, last_outbound_at=late, now=late, stall_attempts=3
    )
    assert plan.due_at == late + timedelta(days=2)  # type: ignore[attr-defined]


def test_the_services_own_waits_shrink_with_the_time_scale() -> None:
    from ghl_real_estate_ai.service import RealWaits

    production = RealWaits.for_scale(1.0)
    assert (production.read_timeout, production.send_timeout, production.readback_delay) == (15.0, 15.0, 1.0)
    assert (production.retry.backoff_base, production.retry.backoff_cap) == (0.5, 8.0)
    assert RealWaits.for_scale(1000.0) == production
    fast = RealWaits.for_scale(86400.0)
    # At a virtual day per second the waits are a few virtual hours at most, but never below what a
    # request over a network needs.
    assert fast.read_timeout < 0.2 and fast.send_timeout == 1.0 and fast.call_timeout == 2.0
    assert fast.retry.backoff_cap * 86400 / 3600 < 3  # hours
    assert fast.lock_retry * 86400 / 3600 < 2
