"""The auditor on hand-made records: each violation class is caught, and its compliant twin is not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ghl_real_estate_ai.compliance.audit import audit, own_zones, strict_window, strict_zones
from ghl_real_estate_ai.compliance.world import Delivery, Inbound, Lead, Played
from ghl_real_estate_ai.sandbox.fakes import Sent, make_contact
from ghl_real_estate_ai.sequence import QuietHours

START = datetime(2026, 3, 2, tzinfo=UTC)
END = START + timedelta(days=90)
NOON_CT = datetime(2026, 3, 10, 17, 0, tzinfo=UTC)  # 12:00 in Chicago (CDT)


def _lead(behaviour: str = "question", enrolled: datetime = START, **contact: Any) -> Lead:
    return Lead(make_contact("c1", **contact), behaviour, enrolls=[enrolled])


def _send(at: datetime, step: str, channel: str = "sms", *, event: str = "step_due",
          message_id: str | None = None, refused: bool = False) -> Delivery:
    return Delivery(Sent("c1", channel, at, "text", step=step, key=f"c1|{step}"), event, message_id, refused)


def _kinds(lead: Lead, *deliveries: Delivery, quiet: QuietHours | None = None) -> list[str]:
    played = Played([lead], list(deliveries), START, END, len(deliveries), 0, 0, 0, 1.0, 0)
    return sorted(v.kind for v in audit(played, quiet).violations)


def test_quiet_hours_in_the_leads_own_zone() -> None:
    lead = _lead(timezone="America/Chicago", state="TX", phone="+15125550100")
    assert _kinds(lead, _send(NOON_CT, "day_3")) == []
    assert _kinds(lead, _send(NOON_CT + timedelta(hours=10), "day_3")) == ["quiet_hours"]  # 22:00
    # A reply to the lead's own late-night message is not automated outreach.
    late = NOON_CT + timedelta(hours=11)
    assert _kinds(lead, _send(late, "reply", event="inbound_message", message_id="m1")) == []


def test_strict_area_code_reading() -> None:
    # New York time zone, Washington number: 08:30 Eastern is 05:30 in Seattle.
    lead = _lead(timezone="America/New_York", state="NY", phone="+12065550100")
    assert strict_zones(lead) == ("America/New_York", "America/Los_Angeles")
    assert str(strict_window(lead, QuietHours())) == "08:00-20:00"
    early = datetime(2026, 3, 10, 13, 30, tzinfo=UTC)
    assert _kinds(lead, _send(early, "day_3")) == ["strict_area_code"]
    assert _kinds(lead, _send(early + timedelta(hours=3), "day_3")) == []  # 08:30 in Seattle
    # Maryland's 20:00 end, in a Hawaii contact's Eastern-zone number: 20:30 EST is out.
    hi = _lead(timezone="Pacific/Honolulu", state="HI", phone="+14105550100")
    assert _kinds(hi, _send(datetime(2026, 3, 11, 1, 30, tzinfo=UTC), "nurture")) == ["strict_area_code"]
    assert own_zones(_lead(timezone=None, state=None, phone=None)) == own_zones(
        _lead(timezone="Not/AZone", state="ZZ", phone="+10005550100")
    )


def test_daily_cap_counts_a_fourth_automated_send_in_24_hours() -> None:
    lead = _lead(timezone="America/Chicago", state="TX", phone="+15125550100")
    three = [_send(NOON_CT + timedelta(hours=h), "day_3") for h in (0, 1, 2)]
    report_kinds = _kinds(lead, *three)
    assert "daily_cap" not in report_kinds
    fourth = _send(NOON_CT + timedelta(hours=3), "stall_breaker")
    assert "daily_cap" in _kinds(lead, *three, fourth)
    assert "daily_cap" not in _kinds(lead, *three, _send(NOON_CT + timedelta(hours=24, minutes=1), "nurture"))


def test_after_opt_out_only_one_confirmation_on_the_same_channel() -> None:
    lead = _lead(timezone="America/Chicago", state="TX", phone="+15125550100")
    lead.inbound = [Inbound(NOON_CT, "stop-1", "email", "unsubscribe", "opt_out")]
    ok = _send(NOON_CT, "opt_out_confirmation", "email", event="inbound_message", message_id="stop-1")
    assert _kinds(lead, ok) == []
    by_sms = _send(NOON_CT, "opt_out_confirmation", "sms", event="inbound_message", message_id="stop-1")
    assert _kinds(lead, by_sms) == ["after_opt_out"]
    later = _send(NOON_CT + timedelta(days=3), "day_14", "email")
    assert _kinds(lead, ok, later) == ["after_opt_out"]


def test_dnd_on_the_channel_at_the_start() -> None:
    lead = _lead(timezone="America/Chicago", state="TX", phone="+15125550100",
                 dnd_channels={"Call": "active"})
    assert _kinds(lead, _send(NOON_CT, "day_7", "call")) == ["dnd"]
    assert _kinds(lead, _send(NOON_CT, "day_3", "sms")) == []
    # A refused attempt did not reach the lead.
    assert _kinds(lead, _send(NOON_CT, "day_7", "call", refused=True)) == []


def test_duplicate_steps_and_replies() -> None:
    lead = _lead(timezone="America/Chicago", state="TX", phone="+15125550100")
    assert _kinds(lead, _send(NOON_CT, "day_3"), _send(NOON_CT + timedelta(days=1), "day_3")) == [
        "duplicate_step"
    ]
    nudges = [_send(NOON_CT, "stall_breaker"), _send(NOON_CT + timedelta(hours=30), "stall_breaker")]
    assert _kinds(lead, *nudges) == ["duplicate_step"]
    nudges[1] = _send(NOON_CT + timedelta(days=2), "stall_breaker")
    assert _kinds(lead, *nudges) == []
    cma = [_send(NOON_CT + timedelta(minutes=m), "cma", "email", event="inbound_message", message_id="m9")
           for m in (0, 7)]
    assert _kinds(lead, *cma) == ["duplicate_reply"]
    # A second enrollment may send its own day_3.
    again = Lead(lead.record, "cap_pusher", enrolls=[NOON_CT, NOON_CT + timedelta(hours=2)])
    assert _kinds(again, _send(NOON_CT, "day_3"), _send(NOON_CT + timedelta(hours=2), "day_3")) == []


def test_missed_steps_of_a_silent_lead() -> None:
    enrolled = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)
    lead = _lead("silent", enrolled, timezone="America/Chicago", state="TX", phone="+15125550100")
    due = {"day_3": 0, "day_7": 4, "day_14": 11, "day_30": 27, "nurture": 57}
    channel = {"day_7": "call", "day_14": "email"}
    sends = [_send(enrolled + timedelta(days=d), s, channel.get(s, "sms")) for s, d in due.items()]
    sends.append(_send(enrolled + timedelta(days=87), "nurture"))
    assert _kinds(lead, *sends) == []
    assert _kinds(lead, *[s for s in sends if s.sent.step != "day_14"]) == ["missed_step"]
    # Late but within 36 hours (quiet hours, a late job) is not missed; later is.
    moved = [*sends[:1], _send(enrolled + timedelta(days=4, hours=30), "day_7", "call"), *sends[2:]]
    assert _kinds(lead, *moved) == []
    moved[1] = _send(enrolled + timedelta(days=6), "day_7", "call")
    assert _kinds(lead, *moved) == ["missed_step"]
    # Without a phone, the SMS and call steps are not expected (the email one still is).
    mail_only = _lead("silent", enrolled, timezone="America/Chicago", state="TX", phone=None)
    assert _kinds(mail_only, sends[2]) == []


@pytest.mark.parametrize("quiet", ["09:00-18:00", "08:00-21:00,TX=10:00-17:00"])
def test_the_operators_narrower_window_is_what_is_audited(quiet: str) -> None:
    lead = _lead(timezone="America/Chicago", state="TX", phone="+15125550100")
    eight_thirty = datetime(2026, 3, 10, 13, 30, tzinfo=UTC)  # 08:30 in Chicago (CDT)
    assert _kinds(lead, _send(eight_thirty, "day_3")) == []
    assert _kinds(lead, _send(eight_thirty, "day_3"), quiet=QuietHours.parse(quiet)) != []
