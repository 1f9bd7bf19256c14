"""Helpers the node groups share: time, locale, timeline entries and the retry policy for I/O nodes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import RetryPolicy

from ghl_real_estate_ai.agents.lead_bot.context import Context
from ghl_real_estate_ai.agents.lead_bot.state import LeadState, TimelineEntry
from ghl_real_estate_ai.errors import TransientIntegrationError
from ghl_real_estate_ai.sequence import LeadLocale, SequenceStatus, Step, iso, resolve_locale


def is_retryable(exc: BaseException) -> bool:
    """Retry a node only for transient integration errors whose outcome is known to be "not sent"."""
    return isinstance(exc, TransientIntegrationError) and not exc.outcome_unknown


def io_retry(time_scale: float = 1.0) -> RetryPolicy:
    """The retry policy of the nodes that do I/O: once more after 0.2 s, for :func:`is_retryable` errors only
    (LangGraph retries unknown exception types by default).

    LangGraph sleeps the interval in real time, and its jitter adds up to a whole real second. Under a
    compressed clock (``LEAD_BOT_TIME_SCALE``) the interval is divided by the scale and the jitter left out,
    so the retry waits the same 0.2 s of the service's time, not hours of it."""
    compressed = time_scale > 1
    return RetryPolicy(max_attempts=2, initial_interval=0.2 / time_scale if compressed else 0.2,
                       jitter=not compressed, retry_on=is_retryable)



def now_of(runtime: Runtime[Context]) -> datetime:
    return runtime.context.clock.now()


def entry(
    at: datetime,
    action: str,
    outcome: str,
    reason: str,
    *,
    channel: str | None = None,
    due_at: str | None = None,
    **detail: Any,
) -> TimelineEntry:
    """A timeline entry. ``at`` is when the thing happened (for a send: when the provider answered);
    ``due_at`` is when a timed step was due, so lateness shows."""
    item: TimelineEntry = {"at": iso(at), "action": str(action), "outcome": outcome, "reason": reason}
    if channel:
        item["channel"] = channel
    if due_at:
        item["due_at"] = due_at
    if detail:
        item["detail"] = detail
    return item


def locale_of(contact: dict[str, Any], runtime: Runtime[Context]) -> LeadLocale:
    return resolve_locale(
        runtime.context.rules.quiet_hours,
        timezone=contact.get("timezone"),
        state=contact.get("state"),
        phone=contact.get("phone"),
    )


def timed_status(current_step: str | None) -> str:
    """The status of a lead the timed sequence is running for: nurture once it reached monthly touches."""
    return SequenceStatus.NURTURE.value if current_step == Step.NURTURE else SequenceStatus.ACTIVE.value


def enrollment_id(state: LeadState) -> str:
    """Distinguishes one enrollment of a contact from a later re-enrollment in send keys."""
    return state.get("sequence", {}).get("enrolled_at", "")
