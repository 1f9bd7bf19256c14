"""The outside-in tier's own rules and clock mapping, checked on hand-made data (fast: no service)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from .judge import Downtime, Enrollment, Lead, Touch, deadline_after, earliest_send, judge, planned_steps
from .vclock import Reading, VirtualClock

HONOLULU = Lead("hi1", "Lia", "Pacific/Honolulu", "HI", "+18085550101", "lia@example.com")
MIAMI = Lead("fl1", "Ben", "America/New_York", "FL", "+13055550102", None)
AUSTIN = Lead("tx1", "Sam", "America/Chicago", "TX", "+15125550103", "sam@example.com")


def utc(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def test_windows_follow_the_lead_zone_and_state() -> None:
    assert not HONOLULU.inside(utc(3, 2, 17, 59))  # 07:59 HST
    assert HONOLULU.inside(utc(3, 2, 18, 0))  # 08:00 HST
    assert HONOLULU.inside(utc(3, 3, 6, 59))  # 20:59 HST
    assert not HONOLULU.inside(utc(3, 3, 7, 0))  # 21:00 HST
    assert not MIAMI.inside(utc(3, 3, 1, 0))  # 20:00 EST: Florida closes at 20:00
    assert AUSTIN.inside(utc(3, 3, 2, 59))  # 20:59 CST
    assert MIAMI.inside(utc(3, 3, 1, 2), slack=180)  # within a 3-minute allowance
    assert MIAMI.next_open(utc(3, 3, 2, 0)) == utc(3, 3, 13, 0)
    assert HONOLULU.next_open(utc(3, 2, 20, 0)) == utc(3, 2, 20, 0)
    # across the DST change (8 March 2026): 08:00 EDT is 12:00 UTC
    assert MIAMI.next_open(utc(3, 8, 3, 0)) == utc(3, 8, 12, 0)


def test_a_downtime_moves_the_allowed_start_to_the_restart_then_to_the_window() -> None:
    due = utc(3, 2, 20, 0)  # 10:00 HST
    down = [Downtime(utc(3, 2, 19, 0), utc(3, 3, 8, 0), "service")]  # back at 22:00 HST
    assert earliest_send(due, HONOLULU, down) == utc(3, 3, 18, 0)
    assert earliest_send(due, HONOLULU, []) == due
    # caught by a kill ten minutes after it could go: the 12 hours do not count the downtime
    kill = [Downtime(due + timedelta(minutes=10), due + timedelta(hours=30), "service")]
    assert earliest_send(due, HONOLULU, kill) == due
    assert deadline_after(due, timedelta(hours=12), kill) == due + timedelta(hours=12 + 29, minutes=50)


def test_a_step_that_could_go_just_before_closing_may_go_at_the_next_opening() -> None:
    enrolled = utc(3, 3, 1, 30)  # 19:30 CST, 90 minutes before Austin's window closes
    enrollment = Enrollment(AUSTIN, enrolled, enrolled + timedelta(minutes=5))
    morning = utc(3, 3, 14, 40)  # 08:40 CST: 13 hours after enrollment, 40 minutes after the opening
    touch = Touch(AUSTIN.contact_id, "SMS", morning.timestamp(), morning, 120.0, morning)
    verdict = judge([enrollment], [touch], [], enrolled + timedelta(days=2))
    day_3 = verdict.steps[0]
    assert day_3.problems == [] and day_3.lateness_h == pytest.approx(40 / 60)


def test_a_restart_backlog_widens_the_closing_allowance_by_its_length() -> None:
    """Twenty leads enrolled at the same moment, the service down over their day_3 and healthy again at
    15:30 in Miami (4.5 h before Florida's window closes): each SMS is then one of 20 overdue steps, and
    one sent next morning is within the allowance (3 h + 20 x 15 min); a lone overdue step is not."""
    enrolled = utc(3, 2, 13, 30)  # 08:30 EST
    down = [Downtime(utc(3, 2, 13, 0), utc(3, 2, 20, 30), "service")]  # healthy at 15:30 EST
    morning = utc(3, 3, 13, 40)  # 08:40 EST the next day
    leads = [Lead(f"fl{i}", f"L{i}", "America/New_York", "FL", f"+1305555{i:04d}", None) for i in range(20)]
    enrollments = [Enrollment(lead, enrolled, enrolled + timedelta(minutes=5)) for lead in leads]
    touches = [Touch(lead.contact_id, "SMS", morning.timestamp(), morning, 120.0, morning) for lead in leads]
    many = judge(enrollments, touches, down, enrolled + timedelta(days=2))
    day_3 = [s for s in many.steps if s.step == "day_3"]
    assert len(day_3) == 20 and all(s.allowed_from == down[0].end and not s.problems for s in day_3)
    assert day_3[0].reopens == utc(3, 3, 13, 0)

    alone = judge(enrollments[:1], touches[:1], down, enrolled + timedelta(days=2))
    assert "late" in alone.steps[0].problems[0]  # one overdue step had 4.5 hours: it should have gone


def test_cadence_offsets() -> None:
    names = [(name, offset.days) for name, offset, _ in planned_steps(timedelta(days=90))]
    assert names == [("day_3", 0), ("day_7", 4), ("day_14", 11), ("day_30", 27), ("nurture_0", 57),
                     ("nurture_1", 87)]


def _touches(lead: Lead, enrolled: datetime, *, skip: str = "", twice: str = "",
             shift: dict[str, timedelta] | None = None) -> list[Touch]:
    kinds = {"day_3": "SMS", "day_7": "call", "day_14": "Email" if lead.email else "SMS", "day_30": "SMS"}
    found = []
    for name, offset, _ in planned_steps(timedelta(days=30)):
        if name == skip:
            continue
        when = lead.next_open(enrolled + offset) + timedelta(minutes=20)
        when += (shift or {}).get(name, timedelta())
        for _ in range(2 if name == twice else 1):
            found.append(Touch(lead.contact_id, kinds[name], when.timestamp(), when, 120.0, when))
    return found


def test_judge_accepts_a_perfect_run_and_names_each_kind_of_failure() -> None:
    enrolled = utc(3, 2, 15, 0)  # 09:00 CST, 05:00 HST
    enrollments = [Enrollment(lead, enrolled, enrolled + timedelta(minutes=5)) for lead in (AUSTIN, HONOLULU)]
    end = enrolled + timedelta(days=32)
    perfect = judge(enrollments, _touches(AUSTIN, enrolled) + _touches(HONOLULU, enrolled), [], end)
    assert perfect.failures == [] and perfect.judged == 8 and perfect.worst_lateness_h < 1

    late = judge(enrollments, _touches(AUSTIN, enrolled, shift={"day_7": timedelta(hours=14)}), [], end)
    assert any("day_7" in f and "late" in f for f in late.failures)

    bad = judge(enrollments[:1], _touches(AUSTIN, enrolled, skip="day_14", twice="day_3"), [], end)
    text = "\n".join(bad.failures)
    assert "day_14 (Email): missing" in text and "day_3 (SMS): duplicate" in text

    early = judge(enrollments[:1], _touches(AUSTIN, enrolled, shift={"day_30": -timedelta(days=2)}), [], end)
    assert any("day_30" in f and "early" in f for f in early.failures)

    evening = {"day_7": timedelta(hours=11, minutes=45)}  # 21:05 local
    night = judge(enrollments[:1], _touches(AUSTIN, enrolled, shift=evening), [], end)
    assert any("day_7" in f and "quiet hours" in f for f in night.failures)


def test_a_step_sent_weeks_late_is_recognised_in_sequence_order() -> None:
    enrolled = utc(3, 2, 15, 0)
    lead = MIAMI  # no email: day_14 is an SMS
    enrollment = Enrollment(lead, enrolled, enrolled + timedelta(minutes=5))
    sms_3 = enrolled + timedelta(days=19)  # day_3, 19 days late
    call_7 = sms_3 + timedelta(hours=25)
    sms_14 = call_7 + timedelta(hours=25)
    touches = [Touch(lead.contact_id, kind, when.timestamp(), when, 120.0, when)
               for kind, when in (("SMS", sms_3), ("call", call_7), ("SMS", sms_14))]
    verdict = judge([enrollment], touches, [], enrolled + timedelta(days=32))
    by_step = {s.step: s for s in verdict.steps}
    assert by_step["day_3"].arrivals[0].when == sms_3 and "late" in by_step["day_3"].problems[0]
    assert by_step["day_7"].arrivals[0].when == call_7
    assert by_step["day_14"].arrivals[0].when == sms_14 and not any("early" in p for p in verdict.failures)
    assert "missing" in by_step["day_30"].problems[0]


def test_the_clock_maps_monotonic_instants_through_the_readings() -> None:
    clock = VirtualClock("http://127.0.0.1:1", 86400.0)
    v0 = utc(3, 2, 0, 0).timestamp()
    # a reading every 0.06 s, 2 ms round trips, the service read its clock 0.5 ms into each
    before = [i * 0.06 for i in range(50)]
    after = [5 + i * 0.06 for i in range(50)]  # a downtime from 3 s to 5 s, then the same line
    readings = [Reading(t, t + 0.002, 200, v0 + (t + 0.0005) * 86400) for t in before]
    readings += [Reading(t, t + 0.002, 200, v0 + (t + 0.0015) * 86400) for t in after]
    clock._readings = readings
    for at in (1.0, 4.0, 6.5):
        mapped = clock.map(at)
        assert abs(mapped.when.timestamp() - (v0 + at * 86400)) <= mapped.uncertainty + 1e-3
        assert mapped.uncertainty < 86400 * 0.001
    assert clock.resolution == pytest.approx(86.4)
    assert clock.real_for(utc(3, 2, 2, 0)) == pytest.approx(2 * 3600 / 86400, abs=0.002)
