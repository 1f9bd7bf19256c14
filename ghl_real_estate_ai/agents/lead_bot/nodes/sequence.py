"""The timed sequence: enroll, the step nodes (day_3 ... nurture, stall_breaker), defer and plan.

Every step node re-reads the contact from GHL right before sending, re-checks DND, opt-out and owner tags
and quiet hours, and sends under the touch key ``contact|enrollment|step|occurrence`` (stall-breakers:
``contact|enrollment|stall_breaker|last reply|attempt``) claimed in the send ledger: a replayed, retried or
duplicated due event can never send twice. A send whose answer never came (a timeout, a crash mid-call)
is resolved by reading the provider back, not guessed (``delivery``).
The send may only leave inside the lead's window: the clients check a guard before every attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import Command

from ghl_real_estate_ai import messages
from ghl_real_estate_ai.agents.lead_bot.context import Context
from ghl_real_estate_ai.agents.lead_bot.nodes.common import (
    enrollment_id,
    entry,
    locale_of,
    now_of,
    timed_status,
)
from ghl_real_estate_ai.agents.lead_bot.nodes.delivery import Message, deliver_once
from ghl_real_estate_ai.agents.lead_bot.routing import RESUME_STEP, Route, decide
from ghl_real_estate_ai.agents.lead_bot.state import LeadState
from ghl_real_estate_ai.errors import (
    NotFoundError,
)
from ghl_real_estate_ai.integrations.models import Contact
from ghl_real_estate_ai.sequence import (
    STEP_CHANNEL,
    LeadLocale,
    SequenceStatus,
    Step,
    choose_stall_breaker,
    is_allowed,
    iso,
    next_send_time,
    parse_time,
    plan_next,
    recent_sends,
    step_after,
    touch_key,
)


async def determine_path(state: LeadState, runtime: Runtime[Context]) -> Command[Route]:
    """Read the event and the state, store the decision (``route``, ``route_reason``) and go to its node.

    It routes with ``Command(goto=...)`` rather than a conditional edge: a plain function on an edge runs
    in a worker thread under ``ainvoke``, which cost about a third of a no-op run's time."""
    event = state.get("event") or {"type": "step_due"}
    decision = decide(state, event, now_of(runtime), locale_of(state.get("contact", {}), runtime))
    update: dict[str, Any] = {"route": decision.route, "route_reason": decision.reason}
    if decision.defer_until is not None:
        update["sequence"] = {"next_due_at": iso(decision.defer_until)}
    return Command(update=update, goto=decision.route)


async def enroll(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Start (or restart) the sequence: snapshot the contact and make day_3 the current step.

    The cadence counts from when the enrollment was accepted (the event's ``at``, which the service
    stamps when it stored the request), not from when it was applied: an enrollment that waited in the
    intake (its worker process was down) keeps its lead's days, and what came due meanwhile catches up."""
    ctx, now = runtime.context, now_of(runtime)
    contact = await ctx.crm.get_contact(state["contact_id"])
    accepted = parse_time(state.get("event", {}).get("at"))
    start = min(accepted, now) if accepted is not None else now
    detail = {"accepted_at": iso(start)} if now - start >= timedelta(minutes=1) else {}
    return {
        "contact": contact.to_state(),
        "sequence": {
            "status": SequenceStatus.ACTIVE.value,
            "status_reason": state.get("route_reason", "enrolled"),
            "enrolled_at": iso(start),
            "current_step": Step.DAY_3.value,
            "completed": {},
            "nurture_sent": 0,
            "paused_at": None,
            "paused_until": None,
            "takeover_until": None,
            "failure": None,
            # A new enrollment is a new sequence: its day_3 is due at once. The touch gap belongs to one
            # sequence; across enrollments the daily cap is what holds a burst back.
            "last_touch_at": None,
            "deferred_until": None,
        },
        "engagement": {"conversation_active": False},
        "stall": {"attempts": 0, "last_variant": None},
        "timeline": [entry(now, "enroll", "done", state.get("route_reason", "enrolled"), **detail)],
    }


async def defer(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Record that a due step waits for the lead's send window or the daily cap."""
    seq = state.get("sequence", {})
    return {
        "timeline": [
            entry(
                now_of(runtime),
                seq.get("next_step") or "step",
                "deferred",
                state.get("route_reason", "deferred"),
                until=seq.get("next_due_at"),
            )
        ]
    }


async def plan(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Compute the next step and its send time (the scheduler acts on them). Every node after the router
    ends with it (``builder.then_plan``)."""
    now = now_of(runtime)
    seq = state.get("sequence", {})
    eng = state.get("engagement", {})
    if not seq:
        return {}
    status = seq.get("status", "")
    current = seq.get("current_step")
    # A human's takeover, or a send the step node deferred to the lead's next window (the plan itself does
    # not know the send margin or that the window closed while a send waited).
    waits = [parse_time(seq.get("takeover_until")), parse_time(seq.get("deferred_until"))]
    not_before = max((w for w in waits if w is not None), default=None)
    result = plan_next(
        status=status,
        enrolled_at=parse_time(seq.get("enrolled_at")),
        current_step=Step(current) if current else None,
        nurture_sent=seq.get("nurture_sent", 0),
        now=now,
        locale=locale_of(state.get("contact", {}), runtime),
        sent=recent_sends(eng.get("automated_sends", []), now),
        conversation_active=bool(eng.get("conversation_active")),
        last_outbound_at=parse_time(eng.get("last_outbound_at")),
        stall_attempts=state.get("stall", {}).get("attempts", 0),
        not_before=not_before,
        last_touch_at=parse_time(seq.get("last_touch_at")),
    )
    paused_until = parse_time(seq.get("paused_until"))
    if status == SequenceStatus.PAUSED.value and paused_until is not None:
        # A pause with an end: the scheduler fires "resume" then, like any other due step.
        return {
            "sequence": {"next_step": RESUME_STEP, "next_due_at": iso(paused_until), "cadence_due_at": None}
        }
    update: dict[str, Any] = {
        "sequence": {
            "next_step": result.step.value if result.step else None,
            "next_due_at": iso(result.due_at) if result.due_at else None,
            "cadence_due_at": iso(result.cadence_due_at) if result.cadence_due_at else None,
        }
    }
    return update


# ----------------------------------------------------------------------------------------- the step nodes


def _blocked_reason(contact: Contact, tags: tuple[str, ...]) -> str | None:
    lowered = {t.lower() for t in contact.tags}
    for tag in tags:
        if tag.lower() in lowered:
            return tag
    return None


def _choose_channel(step: Step, contact: Contact) -> tuple[str | None, str]:
    """The channel to use for ``step`` and why; None when the lead cannot be reached for it."""
    channel = STEP_CHANNEL[step]
    if channel == "email":
        if contact.email and not contact.blocks("email"):
            return "email", "email step"
        why = "no email address" if not contact.email else "email DND is active"
        channel = "sms"
        fallback = f"{why}; falling back to SMS"
        if contact.phone and not contact.blocks("sms"):
            return "sms", fallback
        return None, f"{why}, and " + ("no phone number" if not contact.phone else "SMS DND is active")
    if channel == "call":
        if not contact.phone:
            return None, "no phone number for the call"
        if contact.blocks("call"):
            return None, "call DND is active"
        return "call", "call step"
    if not contact.phone:
        return None, "no phone number"
    if contact.blocks("sms"):
        return None, "SMS DND is active"
    return "sms", "sms step"


def _compose(
    step: Step, channel: str, contact: Contact, values: dict[str, str], variant: int, key: str,
    words: messages.Words | None = None,
) -> Message:
    if channel == "sms":
        return Message("sms", contact.id, text=messages.sms_for(step, values, variant, words),
                       purpose=step.value)
    if channel == "email":
        mail = messages.email_for(step, values, words)
        return Message("email", contact.id, subject=mail.subject, html=mail.html, purpose=step.value)
    return Message(
        "call",
        contact.id,
        purpose=step.value,
        to_number=contact.phone or "",
        metadata={
            "ghl_contact_id": contact.id,
            "ghl_location_id": contact.location_id or "",
            "sequence_step": step.value,
            "lead_bot_send_key": key,
        },
        variables={"first_name": contact.first_name or "there", "property_address": contact.address or ""},
    )


def _key_scope(state: LeadState, step: Step) -> str:
    """What a touch key counts occurrences within: the enrollment, and for stall-breakers also the
    conversation segment (the lead's last message), because their attempt count starts over each time the
    lead writes again and the nudges after a second question are new touches, not repeats."""
    scope = f"{enrollment_id(state)}|{step}"
    if step is Step.STALL_BREAKER:
        scope += f"|{state.get('engagement', {}).get('last_inbound_at') or ''}"
    return scope


def _window_check(runtime: Runtime[Context], locale: LeadLocale) -> Callable[[], str | None]:
    margin = runtime.context.rules.send_margin

    def check() -> str | None:
        now = now_of(runtime)
        if is_allowed(now, locale) and is_allowed(now + margin, locale):
            return None
        return "quiet hours in the lead's time zone began before the send could leave"

    return check


async def run_step(state: LeadState, runtime: Runtime[Context], step: Step) -> dict[str, Any]:
    """Send one step: re-check everything against fresh data, claim the touch key, send, record.

    Every timeline entry carries the step's ``due_at``; a send's entry is stamped with the clock read when
    the provider answered, never with the time the node started.
    """
    ctx = runtime.context
    cid = state["contact_id"]
    seq = state.get("sequence", {})
    stall = state.get("stall", {})
    due = seq.get("next_due_at")
    if step is Step.STALL_BREAKER:
        occurrence = stall.get("attempts", 0)
    elif step is Step.NURTURE:
        occurrence = seq.get("nurture_sent", 0)
    else:
        occurrence = 0
    try:
        contact = await ctx.crm.get_contact(cid)
    except NotFoundError:
        return {
            "sequence": {"status": SequenceStatus.CANCELLED.value, "status_reason": "contact deleted in GHL"},
            "timeline": [entry(now_of(runtime), step, "skipped", "contact no longer exists in GHL",
                               due_at=due)],
        }
    now = now_of(runtime)  # after the read: GHL may have kept us waiting
    snapshot = contact.to_state()
    # an unchanged snapshot is not written again: every write makes a new version the checkpointer keeps
    update: dict[str, Any] = {"contact": snapshot} if snapshot != state.get("contact") else {}
    opt_tag = _blocked_reason(contact, ctx.rules.opt_out_tags)
    if opt_tag:
        update["sequence"] = {
            "status": SequenceStatus.OPTED_OUT.value,
            "status_reason": f"opt-out tag {opt_tag!r}",
        }
        update["timeline"] = [
            entry(now, step, "skipped", f"contact has the opt-out tag {opt_tag!r}", due_at=due)
        ]
        return update
    owner_tag = _blocked_reason(contact, ctx.rules.human_owner_tags)
    if owner_tag:
        update["sequence"] = {
            "status": SequenceStatus.PAUSED.value,
            "status_reason": f"a human owns this lead (tag {owner_tag!r})",
            "paused_at": iso(now),
        }
        update["timeline"] = [
            entry(now, step, "skipped", f"a human owns this lead (tag {owner_tag!r})", due_at=due)
        ]
        return update

    locale = locale_of(snapshot, runtime)
    eng = state.get("engagement", {})
    check = _window_check(runtime, locale)
    if check() is not None:  # the zone may have changed since it was planned
        return _deferred(update, step, now, locale, eng, ctx.rules.send_margin, due,
                         "quiet hours in the lead's time zone")

    progress = _progress_after(state, step, now)
    channel, why = _choose_channel(step, contact)
    if channel is None:
        update["sequence"] = progress["sequence"]
        update["stall"] = progress.get("stall", {})
        update["timeline"] = [entry(now, step, "skipped", why, channel=STEP_CHANNEL[step], due_at=due)]
        return update

    variant = 0
    if step is Step.STALL_BREAKER:
        variant = (
            choose_stall_breaker(
                cid, stall.get("attempts", 0), stall.get("last_variant"),
                messages.stall_breaker_count(ctx.rules.words),
            )
            or 0
        )
        progress["stall"]["last_variant"] = variant
    elif step is Step.NURTURE:
        variant = occurrence
    key = touch_key(cid, _key_scope(state, step), occurrence)
    values = messages.fields(
        snapshot, agent_name=ctx.rules.agent_name, program_name=ctx.rules.program_name
    )
    message = _compose(step, channel, contact, values, variant, key, ctx.rules.words)
    outcome = await deliver_once(runtime, key, message, check)
    if outcome.kind == "deferred":
        return _deferred(update, step, now_of(runtime), locale, eng, ctx.rules.send_margin, due,
                         outcome.reason)
    if outcome.kind == "failed":
        update["sequence"] = {
            "status": SequenceStatus.FAILED.value,
            "failure": outcome.reason,
            "status_reason": outcome.reason,
        }
        update["timeline"] = [entry(now_of(runtime), step, "failed", outcome.reason, channel=channel,
                                    due_at=due)]
        return update
    update.update(progress)
    update["sequence"] = {**update.get("sequence", {}), "deferred_until": None}
    if outcome.kind != "sent":
        kind = {"already": "skipped", "blocked": "skipped", "unknown": "failed"}[outcome.kind]
        detail = {"key": key} if outcome.kind != "blocked" else {}
        update["timeline"] = [entry(now_of(runtime), step, kind, outcome.reason, channel=channel,
                                    due_at=due, **detail)]
        return update
    at = outcome.at or now_of(runtime)
    update["sequence"] = {**update.get("sequence", {}), "last_touch_at": iso(at)}
    if "completed" in update["sequence"]:
        update["sequence"]["completed"] = {**update["sequence"]["completed"], step.value: iso(at)}
    update["engagement"] = {
        "last_outbound_at": iso(at),
        "automated_sends": [*(iso(t) for t in recent_sends(eng.get("automated_sends", []), at)), iso(at)],
    }
    update["timeline"] = [entry(at, step, "sent", why + outcome.reason, channel=channel, due_at=due,
                                **outcome.detail)]
    return update


def _deferred(
    update: dict[str, Any],
    step: Step,
    now: datetime,
    locale: LeadLocale,
    eng: Mapping[str, Any],
    margin: timedelta,
    due: str | None,
    why: str,
) -> dict[str, Any]:
    """Keep ``step`` for the lead's next send window (the window's last ``margin`` does not count)."""
    start = now + margin if is_allowed(now, locale) else now
    until = next_send_time(start, locale, recent_sends(eng.get("automated_sends", []), now))
    update["sequence"] = {"next_due_at": iso(until), "deferred_until": iso(until)}
    update["timeline"] = [entry(now, step, "deferred", why, until=iso(until), due_at=due)]
    return update


def _progress_after(state: LeadState, step: Step, now: Any) -> dict[str, Any]:
    """The state changes that mark ``step`` done, whatever happened to the send itself."""
    seq = state.get("sequence", {})
    if step is Step.STALL_BREAKER:
        return {"sequence": {}, "stall": {"attempts": state.get("stall", {}).get("attempts", 0) + 1}}
    if step is Step.NURTURE:
        return {
            "sequence": {
                "nurture_sent": seq.get("nurture_sent", 0) + 1,
                "status": SequenceStatus.NURTURE.value,
            }
        }
    following = step_after(step)
    return {
        "sequence": {
            "completed": {**seq.get("completed", {}), step.value: iso(now)},
            "current_step": following.value,
            "status": timed_status(following.value),
        }
    }


async def day_3(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Day 3: the introduction SMS, due at enrollment."""
    return await run_step(state, runtime, Step.DAY_3)


async def day_7(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Day 7: the Retell AI phone call, due 4 days after enrollment."""
    return await run_step(state, runtime, Step.DAY_7)


async def day_14(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Day 14: the email (SMS when there is no email address), due 11 days after enrollment."""
    return await run_step(state, runtime, Step.DAY_14)


async def day_30(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Day 30: the last sequence SMS, due 27 days after enrollment; then monthly nurture."""
    return await run_step(state, runtime, Step.DAY_30)


async def nurture(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Monthly nurture SMS, from 57 days after enrollment, every 30 days."""
    return await run_step(state, runtime, Step.NURTURE)


async def stall_breaker(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """A nudge two days after the bot's last reply went unanswered (at most three, rotating variants)."""
    return await run_step(state, runtime, Step.STALL_BREAKER)
