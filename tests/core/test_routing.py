"""determine_path's decision for every status × event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ghl_real_estate_ai.agents.lead_bot.routing import decide
from ghl_real_estate_ai.sequence import QuietHours, iso, resolve_locale

NOW = datetime(2026, 6, 10, 17, 0, tzinfo=UTC)  # 12:00 in Chicago
NIGHT = datetime(2026, 6, 11, 4, 0, tzinfo=UTC)  # 23:00 in Chicago
LOCALE = resolve_locale(QuietHours(), timezone="America/Chicago", state="TX", phone=None)
STATUSES = [None, "active", "paused", "qualified", "nurture", "completed", "opted_out", "cancelled", "failed"]


def _state(status: str | None, **seq: Any) -> dict[str, Any]:
    if status is None:
        return {"contact_id": "c1"}
    sequence = {
        "status": status,
        "current_step": "day_7",
        "next_step": "day_7" if status in ("active", "nurture") else None,
        "next_due_at": iso(NOW - timedelta(minutes=1)) if status in ("active", "nurture") else None,
        "completed": {"day_3": iso(NOW - timedelta(days=4))},
        **seq,
    }
    return {"contact_id": "c1", "sequence": sequence, "engagement": {"automated_sends": []}}


EXPECTED: dict[str, dict[str | None, str]] = {
    "enroll": {
        None: "enroll",
        "active": "skip",
        "paused": "skip",
        "qualified": "enroll",
        "nurture": "skip",
        "completed": "enroll",
        "opted_out": "skip",
        "cancelled": "enroll",
        "failed": "enroll",
    },
    "step_due": {
        None: "skip",
        "active": "day_7",
        "paused": "skip",
        "qualified": "skip",
        "nurture": "day_7",
        "completed": "skip",
        "opted_out": "skip",
        "cancelled": "skip",
        "failed": "skip",
    },
    "pause": {
        None: "skip",
        "active": "pause",
        "paused": "skip",
        "qualified": "skip",
        "nurture": "pause",
        "completed": "skip",
        "opted_out": "skip",
        "cancelled": "skip",
        "failed": "skip",
    },
    "resume": {
        None: "skip",
        "active": "skip",
        "paused": "resume",
        "qualified": "skip",
        "nurture": "skip",
        "completed": "skip",
        "opted_out": "skip",
        "cancelled": "skip",
        "failed": "skip",
    },
    "cancel": {
        None: "skip",
        "active": "cancel",
        "paused": "cancel",
        "qualified": "skip",
        "nurture": "cancel",
        "completed": "skip",
        "opted_out": "skip",
        "cancelled": "skip",
        "failed": "cancel",
    },
    "opt_out": {
        None: "opt_out",
        "active": "opt_out",
        "paused": "opt_out",
        "qualified": "opt_out",
        "nurture": "opt_out",
        "completed": "opt_out",
        "opted_out": "skip",
        "cancelled": "opt_out",
        "failed": "opt_out",
    },
    "step_failed": {
        None: "skip",
        "active": "fail",
        "paused": "skip",
        "qualified": "skip",
        "nurture": "fail",
        "completed": "skip",
        "opted_out": "skip",
        "cancelled": "skip",
        "failed": "skip",
    },
    "contact_deleted": {
        None: "skip",
        "active": "cancel",
        "paused": "cancel",
        "qualified": "skip",
        "nurture": "cancel",
        "completed": "skip",
        "opted_out": "skip",
        "cancelled": "skip",
        "failed": "cancel",
    },
    "inbound_message": {s: "converse" for s in STATUSES},
    "human_message": {
        None: "skip",
        "active": "human_takeover",
        "paused": "human_takeover",
        "qualified": "skip",
        "nurture": "human_takeover",
        "completed": "skip",
        "opted_out": "skip",
        "cancelled": "skip",
        "failed": "skip",
    },
    "call_result": {None: "skip", **{s: "call_result" for s in STATUSES if s}},
    "contact_update": {None: "skip", **{s: "contact_update" for s in STATUSES if s}},
}


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("event_type", sorted(EXPECTED))
def test_every_status_and_event(status: str | None, event_type: str) -> None:
    event: dict[str, Any] = {"type": event_type}
    if event_type == "step_due":
        event["step"] = "day_7"
    decision = decide(_state(status), event, NOW, LOCALE)  # type: ignore[arg-type]
    assert decision.route == EXPECTED[event_type][status]
    assert decision.reason


def test_unknown_event_is_skipped() -> None:
    assert decide(_state("active"), {"type": "bogus"}, NOW, LOCALE).route == "skip"  # type: ignore[typeddict-item]


@pytest.mark.parametrize(
    ("event_step", "state_changes", "now", "route", "reason_part"),
    [
        ("day_7", {}, NOW, "day_7", "is due"),
        ("day_3", {}, NOW, "skip", "already ran"),
        ("day_14", {}, NOW, "skip", "not the lead's next step"),
        ("day_7", {"next_due_at": iso(NOW + timedelta(hours=1))}, NOW, "skip", "not due until"),
        ("day_7", {"next_due_at": iso(NIGHT - timedelta(hours=1))}, NIGHT, "defer", "quiet hours"),
        ("stall_breaker", {"next_step": "stall_breaker"}, NOW, "stall_breaker", "is due"),
    ],
)
def test_step_due_decisions(
    event_step: str, state_changes: dict[str, Any], now: datetime, route: str, reason_part: str
) -> None:
    decision = decide(
        _state("active", **state_changes), {"type": "step_due", "step": event_step}, now, LOCALE
    )
    assert decision.route == route
    assert reason_part in decision.reason
    if route == "defer":
        assert decision.defer_until == datetime(2026, 6, 11, 13, 0, tzinfo=UTC)  # 08:00 CDT


def test_step_due_over_the_cap_defers() -> None:
    state = _state("active")
    state["engagement"]["automated_sends"] = [iso(NOW - timedelta(hours=h)) for h in (1, 2, 3)]
    decision = decide(state, {"type": "step_due", "step": "day_7"}, NOW, LOCALE)  # type: ignore[arg-type]
    assert decision.route == "defer" and "daily cap" in decision.reason
    assert decision.defer_until == NOW + timedelta(hours=21)


def test_resume_clears_a_human_takeover() -> None:
    state = _state("active", takeover_until=iso(NOW + timedelta(days=3)))
    assert decide(state, {"type": "resume"}, NOW, LOCALE).route == "resume"  # type: ignore[arg-type]


def test_a_pause_with_an_end_resumes_by_itself() -> None:
    state = _state("paused", next_step="resume", next_due_at=iso(NOW + timedelta(hours=1)))
    early = decide(state, {"type": "step_due", "step": "resume"}, NOW, LOCALE)  # type: ignore[arg-type]
    assert early.route == "skip" and "lasts until" in early.reason
    due = decide(state, {"type": "step_due", "step": "resume"}, NOW + timedelta(hours=2), LOCALE)  # type: ignore[arg-type]
    assert due.route == "resume"
