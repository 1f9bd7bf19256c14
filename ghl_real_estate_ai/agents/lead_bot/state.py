"""The lead's graph state: plain data only, so it serialises cleanly and stays small.

Sections merge key by key (``merge``): a node returns ``{"sequence": {"status": "paused"}}`` and the other
sequence fields stay. The timeline is append-only, as are the conversation messages.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

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
    messages: NotRequired[Annotated[list[AnyMessage], add_messages]]
    timeline: NotRequired[Annotated[list[TimelineEntry], operator.add]]
