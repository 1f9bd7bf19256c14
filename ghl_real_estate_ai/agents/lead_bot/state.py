"""The lead's graph state: plain data only, so it serialises cleanly and stays small.

Sections merge key by key (``merge``): a node returns ``{"sequence": {"status": "paused"}}`` and the other
sequence fields stay. Nodes only append to the timeline and the conversation messages, and both stay
bounded however old the lead gets:

* ``timeline`` (``bounded_timeline``) keeps at least the last ``TIMELINE_DAYS`` days and the last
  ``TIMELINE_ENTRIES`` entries; older entries are folded into one ``summary`` entry at its head (counts by
  action and outcome, first and last time), never dropped unseen. Folding waits until a batch
  (``TIMELINE_FOLD_SLACK_DAYS`` or ``TIMELINE_FOLD_SLACK_ENTRIES`` past the window) can go at once, so
  between folds every new timeline is the old one plus new entries and the checkpointer stores older
  versions as references into the newest (see ``persistence/_codec.py``).
* ``messages`` (``recent_messages``) keeps at least the last ``MESSAGES_KEPT`` messages, all a responder
  reads; past twice that it is cut back to them, so it too mostly grows and is stored once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Annotated, Any, Literal, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from ghl_real_estate_ai.sequence import parse_time

TIMELINE_DAYS = 730
TIMELINE_ENTRIES = 1000
TIMELINE_FOLD_SLACK_DAYS = 60
TIMELINE_FOLD_SLACK_ENTRIES = 100
SUMMARY_ACTION = "summary"
MESSAGES_KEPT = 12
"""The conversation kept in state: the rule responder's history (``HISTORY_TURNS``) and the LLM
responder's (``HISTORY_LIMIT``, 10) both fit."""

# The sections merged key by key, and the lists only appended to (see ``LeadState``).
SECTIONS = ("sequence", "engagement", "cma", "stall")
APPEND_ONLY = ("timeline", "messages")


def merge(current: dict[str, Any] | None, update: dict[str, Any] | None) -> dict[str, Any]:
    """Shallow-merge a section update into the current section."""
    return {**(current or {}), **(update or {})}


def combine_updates(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` applied on top of ``base`` the way the state's reducers would apply it: sections merged
    key by key, lists appended, anything else replaced. Combines two partial updates of one node, or
    shows a node's update applied to the state."""
    combined = dict(base)
    for key, value in extra.items():
        if key in SECTIONS and key in combined:
            combined[key] = merge(combined[key], value)
        elif key in APPEND_ONLY and key in combined:
            combined[key] = [*combined[key], *value]
        else:
            combined[key] = value
    return combined


EventType = Literal[
    "enroll",
    "step_due",
    "pause",
    "resume",
    "cancel",
    "opt_out",
    "step_failed",
    "inbound_message",
    "human_message",
    "call_result",
    "contact_update",
    "contact_deleted",
]


class Event(TypedDict, total=False):
    """One input to the graph. ``type`` is required; the rest depends on it."""

    type: EventType
    step: str  # step_due: the step the job was scheduled for
    due_at: str  # step_due: the due time the job was scheduled for (informational)
    reason: str  # pause/cancel/opt_out/step_failed: why
    source: str  # who sent it: "scheduler", "operator", "webhook", "demo"
    text: str  # inbound_message/human_message: the message body
    channel: str  # inbound_message: "sms" or "email"
    message_id: str  # inbound/human message id (dedupe)
    call: dict[str, Any]  # call_result: the Retell call object
    contact: dict[str, Any]  # contact_update: flat GHL contact fields
    until: str  # pause: optional ISO time to resume by itself
    at: str  # when the event happened (ISO), if not now


class SequenceInfo(TypedDict, total=False):
    status: str
    status_reason: str
    enrolled_at: str
    current_step: str  # the next timed step to run (day_3 ... nurture)
    completed: dict[str, str]  # step -> when it ran (sent or skipped for good)
    nurture_sent: int
    next_step: str | None  # what the scheduler should fire next (a timed step or stall_breaker)
    next_due_at: str | None  # when (already moved out of quiet hours and under the cap)
    cadence_due_at: str | None  # when the cadence alone would have it due
    last_touch_at: str | None  # when the last timed step or stall-breaker was sent (the 24 h gap rule)
    deferred_until: str | None  # the step node kept the next step for the lead's next window
    paused_at: str | None
    paused_until: str | None
    takeover_until: str | None
    failure: str | None
    call_outcomes: dict[str, str]  # Retell call id -> outcome (dedupes redelivered call webhooks)


class Engagement(TypedDict, total=False):
    replies: int
    last_inbound_at: str | None
    last_outbound_at: str | None
    temperature: str
    automated_sends: list[str]  # times of automated sends in the last 24 h (the cap)
    conversation_active: bool
    last_intent: str | None


class CmaInfo(TypedDict, total=False):
    requested_at: str | None
    generated_at: str | None
    sent_at: str | None
    channel: str | None
    valuation: dict[str, Any] | None
    awaiting_address: bool  # the bot asked for the property's address; the next message with one carries on
    subject: dict[str, Any]  # the property the last request was about
    handed_off_at: str | None  # no automatic estimate: a task was created for the agent
    outcome: str


class StallInfo(TypedDict, total=False):
    attempts: int
    last_variant: int | None


class TimelineEntry(TypedDict, total=False):
    at: str  # when it happened (a send: when GHL or Retell answered), virtual ISO time
    due_at: str  # timed steps: when the step was due (lateness = at - due_at)
    action: str  # a step name or an operation (enroll, pause, reply, ...)
    channel: str | None
    outcome: str  # sent | skipped | deferred | failed | done
    reason: str
    detail: dict[str, Any]


def _is_summary(item: dict[str, Any]) -> bool:
    return item.get("action") == SUMMARY_ACTION and bool((item.get("detail") or {}).get("summary"))


def summarise(
    entries: Sequence[Mapping[str, Any]], previous: Mapping[str, Any] | None = None
) -> TimelineEntry:
    """One summary entry for ``entries`` (folded into ``previous``, an earlier summary, if given)."""
    old = (previous or {}).get("detail") or {}
    actions: Counter[str] = Counter(old.get("actions") or {})
    outcomes: Counter[str] = Counter(old.get("outcomes") or {})
    times = [t for t in (parse_time(e.get("at")) for e in entries) if t is not None]
    first = min([t for t in (parse_time(old.get("from")), *times) if t is not None], default=None)
    last = max([t for t in (parse_time(old.get("to")), *times) if t is not None], default=None)
    for item in entries:
        actions[str(item.get("action", ""))] += 1
        outcomes[str(item.get("outcome", ""))] += 1
    count = int(old.get("entries") or 0) + len(entries)
    first_s = first.isoformat() if first else None
    last_s = last.isoformat() if last else None
    by_count = sorted(actions.items(), key=lambda kv: (-kv[1], kv[0]))
    counts = ", ".join(f"{n} {action}" for action, n in by_count)
    return {
        "at": last_s or "",
        "action": SUMMARY_ACTION,
        "outcome": "done",
        "reason": f"{count} earlier entries from {first_s} to {last_s}, summarised: {counts}",
        "detail": {
            "summary": True,
            "entries": count,
            "from": first_s,
            "to": last_s,
            "actions": dict(sorted(actions.items())),
            "outcomes": dict(sorted(outcomes.items())),
        },
    }


def bounded_timeline(
    current: list[TimelineEntry] | None, new: list[TimelineEntry] | None
) -> list[TimelineEntry]:
    """``current + new``, with the entries older than the window folded into the head summary once
    enough of them wait (see the module docstring)."""
    items: list[TimelineEntry] = [*(current or []), *(new or [])]
    head: TimelineEntry | None = items[0] if items and _is_summary(dict(items[0])) else None
    body = items[1:] if head is not None else items
    newest = max((t for t in (parse_time(e.get("at")) for e in body[-50:]) if t is not None), default=None)
    if newest is None:
        return items
    horizon = newest - timedelta(days=TIMELINE_DAYS)
    slack_horizon = horizon - timedelta(days=TIMELINE_FOLD_SLACK_DAYS)
    first = parse_time(body[0].get("at")) if body else None
    if not (
        len(body) > TIMELINE_ENTRIES + TIMELINE_FOLD_SLACK_ENTRIES
        or (first is not None and first < slack_horizon)
    ):
        return items
    cut = max(0, len(body) - TIMELINE_ENTRIES)
    while cut < len(body) and (parse_time(body[cut].get("at")) or newest) < horizon:
        cut += 1
    if cut == 0:
        return items
    return [summarise(body[:cut], dict(head) if head else None), *body[cut:]]


def recent_messages(current: list[AnyMessage] | None, new: Any) -> list[AnyMessage]:
    """``add_messages``, cut back to the last ``MESSAGES_KEPT`` messages once it holds twice as many."""
    merged: list[AnyMessage] = add_messages(list(current or []), new or [])  # type: ignore[arg-type,assignment]
    return merged[-MESSAGES_KEPT:] if len(merged) > 2 * MESSAGES_KEPT else merged


class LeadState(TypedDict):
    contact_id: str
    event: NotRequired[Event]
    route: NotRequired[str]
    route_reason: NotRequired[str]
    contact: NotRequired[dict[str, Any]]
    sequence: NotRequired[Annotated[SequenceInfo, merge]]
    engagement: NotRequired[Annotated[Engagement, merge]]
    cma: NotRequired[Annotated[CmaInfo, merge]]
    stall: NotRequired[Annotated[StallInfo, merge]]
    messages: NotRequired[Annotated[list[AnyMessage], recent_messages]]
    timeline: NotRequired[Annotated[list[TimelineEntry], bounded_timeline]]
