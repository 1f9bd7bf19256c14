"""``determine_path``: what to do with an event, as a pure decision over the state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ghl_real_estate_ai.agents.lead_bot.state import Event, LeadState
from ghl_real_estate_ai.sequence import (
    FINAL_STATUSES,
    TIMED_STATUSES,
    LeadLocale,
    SequenceStatus,
    Step,
    is_allowed,
    next_send_time,
    parse_time,
    recent_sends,
)

Route = Literal[
    "enroll",
    "day_3",
    "day_7",
    "day_14",
    "day_30",
    "nurture",
    "stall_breaker",
    "defer",
    "pause",
    "resume",
    "cancel",
    "opt_out",
    "fail",
    "skip",
    "converse",
    "human_takeover",
    "call_result",
    "contact_update",
]

STEP_ROUTES: frozenset[str] = frozenset(step.value for step in Step)
# The "step" a pause with an end schedules: when it comes due, the lead resumes by itself.
RESUME_STEP = "resume"


@dataclass(frozen=True)
class Decision:
    route: Route
    reason: str
    defer_until: datetime | None = None


def _status(state: LeadState) -> str | None:
    return state.get("sequence", {}).get("status")


def decide(state: LeadState, event: Event, now: datetime, locale: LeadLocale) -> Decision:
    """Pick the node for ``event`` given the lead's state. Never does I/O."""
    kind = event.get("type")
    status = _status(state)
    if kind == "enroll":
        if status == SequenceStatus.OPTED_OUT:
            return Decision("skip", "lead opted out; it cannot be enrolled again")
        if status in (SequenceStatus.ACTIVE, SequenceStatus.NURTURE, SequenceStatus.PAUSED):
            return Decision("skip", f"already enrolled (status {status})")
        return Decision("enroll", "new enrollment" if status is None else f"re-enrollment after {status}")
    if status is None:
        if kind == "opt_out":
            return Decision("opt_out", event.get("reason") or "opt-out before enrollment")
        if kind == "inbound_message":
            # Answered only for STOP, START and HELP, so an opt-out is on record before any enrollment.
            return Decision("converse", "message from a contact that is not enrolled")
        if kind in ("human_message", "contact_update", "contact_deleted", "call_result"):
            return Decision("skip", f"{kind} for a contact that is not enrolled")
        return Decision("skip", "not enrolled")
    if kind == "step_due":
        return _decide_step_due(state, event, now, locale, status)
    if kind == "pause":
        if status in TIMED_STATUSES:
            return Decision("pause", event.get("reason") or "paused by operator")
        return Decision("skip", f"cannot pause a lead that is {status}")
    if kind == "resume":
        seq = state.get("sequence", {})
        if status == SequenceStatus.PAUSED or (status in TIMED_STATUSES and seq.get("takeover_until")):
            return Decision("resume", event.get("reason") or "resumed by operator")
        return Decision("skip", f"cannot resume a lead that is {status}")
    if kind == "cancel":
        if status in FINAL_STATUSES:
            return Decision("skip", f"lead is already {status}")
        return Decision("cancel", event.get("reason") or "cancelled by operator")
    if kind == "opt_out":
        if status == SequenceStatus.OPTED_OUT:
            return Decision("skip", "already opted out")
        return Decision("opt_out", event.get("reason") or "opted out")
    if kind == "contact_deleted":
        if status in FINAL_STATUSES:
            return Decision("skip", f"contact deleted; lead is already {status}")
        return Decision("cancel", "contact deleted in GHL")
    if kind == "step_failed":
        if status in TIMED_STATUSES:
            return Decision("fail", event.get("reason") or "step failed")
        return Decision("skip", f"step failure for a lead that is {status}")
    if kind == "inbound_message":
        if status == SequenceStatus.OPTED_OUT:
            return Decision("converse", "reply from an opted-out lead (only START/HELP are answered)")
        return Decision("converse", "the lead replied")
    if kind == "human_message":
        if status in TIMED_STATUSES or status == SequenceStatus.PAUSED:
            return Decision("human_takeover", "a human user messaged the lead")
        return Decision("skip", f"human message while the lead is {status}")
    if kind == "call_result":
        return Decision("call_result", "Retell reported the call")
    if kind == "contact_update":
        return Decision("contact_update", "GHL contact changed")
    return Decision("skip", f"unknown event type {kind!r}")


def _decide_step_due(
    state: LeadState, event: Event, now: datetime, locale: LeadLocale, status: str
) -> Decision:
    seq = state.get("sequence", {})
    step = event.get("step") or seq.get("next_step")
    if step == RESUME_STEP and status == SequenceStatus.PAUSED and seq.get("next_step") == RESUME_STEP:
        due = parse_time(seq.get("next_due_at"))
        if due is not None and now < due:
            return Decision("skip", f"the pause lasts until {seq.get('next_due_at')}")
        return Decision("resume", "the pause ended")
    if status not in TIMED_STATUSES:
        return Decision("skip", f"{step} not sent: lead is {status}")
    if step != seq.get("next_step"):
        if step in seq.get("completed", {}):
            return Decision("skip", f"{step} already ran at {seq['completed'][step]}")
        return Decision("skip", f"stale: {step} is not the lead's next step ({seq.get('next_step')})")
    if step not in STEP_ROUTES:
        return Decision("skip", f"unknown step {step!r}")
    due = parse_time(seq.get("next_due_at"))
    if due is not None and now < due:
        return Decision("skip", f"{step} is not due until {seq.get('next_due_at')}")
    sent = recent_sends(state.get("engagement", {}).get("automated_sends", []), now)
    when = next_send_time(now, locale, sent)
    if when > now:
        why = "quiet hours" if not is_allowed(now, locale) else "daily cap of 3 automated messages"
        return Decision("defer", f"{step} deferred: {why}", defer_until=when)
    return Decision(step, f"{step} is due")  # type: ignore[arg-type]

