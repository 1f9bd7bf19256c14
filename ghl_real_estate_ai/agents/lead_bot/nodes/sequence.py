"""The timed sequence: enroll, the step nodes (day_3 ... nurture, stall_breaker), defer and plan.

Every step node re-reads the contact from GHL right before sending, re-checks DND, opt-out and owner tags
and quiet hours, and sends under the touch key ``contact|enrollment|step|occurrence`` claimed in the send
ledger: a replayed, retried or duplicated due event can never send twice. A send whose answer never came
(a timeout, a crash mid-call) is resolved by reading the provider back, not guessed (``_send_once_under``).
The send may only leave inside the lead's window: the clients check a guard before every attempt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from langgraph.runtime import Runtime

from ghl_real_estate_ai import messages
from ghl_real_estate_ai.agents.lead_bot.context import Context
from ghl_real_estate_ai.agents.lead_bot.nodes.common import (
    enrollment_id,
    entry,
    locale_of,
    now_of,
    timed_status,
)
from ghl_real_estate_ai.agents.lead_bot.routing import RESUME_STEP, decide
from ghl_real_estate_ai.agents.lead_bot.state import LeadState
from ghl_real_estate_ai.errors import (
    NotFoundError,
    PermanentIntegrationError,
    SendBlockedError,
    SendWindowClosedError,
    TransientIntegrationError,
)
from ghl_real_estate_ai.integrations.models import Contact, SendLookup
from ghl_real_estate_ai.integrations.send_window import send_window
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

# A read-back looks at provider records from this long before the claim (clock skew between hosts).
READBACK_SLACK_SECONDS = 120.0


async def determine_path(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Read the event and the state and store the decision; ``route_after_determine_path`` follows it."""
    event = state.get("event") or {"type": "step_due"}
    decision = decide(state, event, now_of(runtime), locale_of(state.get("contact", {}), runtime))
    update: dict[str, Any] = {"route": decision.route, "route_reason": decision.reason}
    if decision.defer_until is not None:
        update["sequence"] = {"next_due_at": iso(decision.defer_until)}
    return update


async def enroll(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Start (or restart) the sequence: snapshot the contact and make day_3 the current step."""
    ctx, now = runtime.context, now_of(runtime)
    contact = await ctx.crm.get_contact(state["contact_id"])
    return {
        "contact": contact.to_state(),
        "sequence": {
            "status": SequenceStatus.ACTIVE.value,
            "status_reason": state.get("route_reason", "enrolled"),
            "enrolled_at": iso(now),
            "current_step": Step.DAY_3.value,
            "completed": {},
            "nurture_sent": 0,
            "paused_at": None,
            "paused_until": None,
            "takeover_until": None,
            "failure": None,
        },
        "engagement": {"conversation_active": False},
        "stall": {"attempts": 0, "last_variant": None},
        "timeline": [entry(now, "enroll", "done", state.get("route_reason", "enrolled"))],
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


@dataclass(frozen=True)
class _Message:
    """One outbound touch, composed before its send key is claimed (a read-back matches on it)."""

    channel: str
    text: str = ""  # the SMS body
    subject: str = ""  # email
    html: str = ""  # email
    metadata: dict[str, str] = field(default_factory=dict)  # the call's Retell metadata
    variables: dict[str, str] = field(default_factory=dict)  # the call's dynamic variables

    @property
    def match(self) -> str:
        """What a read-back of GHL's messages matches on: the SMS text, or the email subject."""
        return self.subject if self.channel == "email" else self.text


def _compose(
    step: Step, channel: str, contact: Contact, values: dict[str, str], variant: int, key: str
) -> _Message:
    if channel == "sms":
        return _Message("sms", text=messages.sms_for(step, values, variant))
    if channel == "email":
        mail = messages.email_for(step, values)
        return _Message("email", subject=mail.subject, html=mail.html)
    return _Message(
        "call",
        metadata={
            "ghl_contact_id": contact.id,
            "ghl_location_id": contact.location_id or "",
            "sequence_step": step.value,
            "lead_bot_send_key": key,
        },
        variables={"first_name": contact.first_name or "there", "property_address": contact.address or ""},
    )


async def _deliver(ctx: Context, contact: Contact, message: _Message) -> dict[str, Any]:
    if message.channel == "sms":
        result = await ctx.crm.send_sms(contact.id, message.text)
        return {"message_id": result.message_id}
    if message.channel == "email":
        result = await ctx.crm.send_email(contact.id, message.subject, message.html)
        return {"message_id": result.message_id}
    call = await ctx.voice.create_phone_call(contact.phone or "", message.metadata, message.variables)
    return {"call_id": call.call_id}


async def _read_back(
    ctx: Context, contact: Contact, message: _Message, claimed_at: float | None
) -> SendLookup:
    """Ask GHL (messages) or Retell (calls) whether a send whose answer never came went through."""
    # Providers date records in wall time; allow for clock skew between them and us.
    since = datetime.fromtimestamp((claimed_at or time.time()) - READBACK_SLACK_SECONDS, UTC)
    try:
        if message.channel == "call":
            return await ctx.voice.find_call(contact.phone or "", message.metadata, since=since)
        return await ctx.crm.find_sent_message(
            contact.id, channel=message.channel, text=message.match, since=since
        )
    except Exception as exc:  # a read-back never turns "maybe sent" into a crash or a resend
        return SendLookup("unknown", detail=f"the read-back failed: {exc}")


@dataclass(frozen=True)
class _Outcome:
    """What became of one send: ``sent`` (``at``: when the provider answered, or when a read-back found
    it), ``already`` (an earlier run finished it), ``deferred`` (the window closed first; ``until``),
    ``blocked`` (DND), ``failed`` (permanent error), ``unknown`` (at-most-once kept)."""

    kind: str
    reason: str = ""
    at: datetime | None = None
    until: datetime | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _window_check(runtime: Runtime[Context], locale: LeadLocale) -> Callable[[], str | None]:
    margin = runtime.context.rules.send_margin

    def check() -> str | None:
        now = now_of(runtime)
        if is_allowed(now, locale) and is_allowed(now + margin, locale):
            return None
        return "quiet hours in the lead's time zone began before the send could leave"

    return check


async def _send_once_under(
    runtime: Runtime[Context], key: str, contact: Contact, message: _Message, locale: LeadLocale
) -> _Outcome:
    """Send ``message`` at most once under ``key``, resolving unknown outcomes by reading back.

    The key is claimed in the send ledger first. An earlier claim that never got an answer (the process
    died mid-send, or the answer timed out) is resolved before anything is sent: a read-back that finds
    the send confirms it; one that certainly finds nothing lets this run send it (under the same key);
    one that cannot tell keeps the at-most-once rule. A send whose own answer never comes is resolved the
    same way after ``readback_delay_seconds``, and is sent once more at most.
    """
    ctx = runtime.context
    ledger = ctx.ledger
    check = _window_check(runtime, locale)
    if not await ledger.claim(key, {"channel": message.channel, "match": message.match}):
        earlier = await ledger.get(key) or {}
        if earlier.get("state") != "claimed":
            return _Outcome("already", f"already handled: its send key {key} is {earlier.get('outcome')}")
        claimed_at = earlier.get("claimed_at")
        wait = ctx.readback_delay_seconds - (time.time() - float(claimed_at or 0))
        if wait > 0:
            await asyncio.sleep(wait)
        lookup = await _read_back(ctx, contact, message, claimed_at)
        if lookup.outcome != "absent":
            return await _settle_lookup(runtime, key, lookup, "an earlier run's send got no answer")
    for attempt in (1, 2):
        why = check()
        if why is not None:
            await ledger.release(key)
            return _Outcome("deferred", why)
        try:
            with send_window(check):
                detail = await _deliver(ctx, contact, message)
        except SendWindowClosedError as exc:
            await ledger.release(key)
            return _Outcome("deferred", exc.detail)
        except SendBlockedError as exc:
            await ledger.confirm(key, {"outcome": "blocked", "error": str(exc)})
            return _Outcome("blocked", f"GHL refused the send: {exc.detail}")
        except TransientIntegrationError as exc:
            if not exc.outcome_unknown:
                await ledger.release(key)
                raise
            if ctx.readback_delay_seconds > 0:
                await asyncio.sleep(ctx.readback_delay_seconds)
            lookup = await _read_back(ctx, contact, message, (await ledger.get(key) or {}).get("claimed_at"))
            if lookup.outcome == "absent" and attempt == 1:
                continue  # certainly not sent: once more, under the same key
            return await _settle_lookup(runtime, key, lookup, f"no answer ({exc.detail})")
        except PermanentIntegrationError as exc:
            await ledger.confirm(key, {"outcome": "failed", "error": str(exc)})
            return _Outcome("failed", str(exc))
        at = now_of(runtime)
        await ledger.confirm(key, {"outcome": "sent", "at": iso(at), **detail})
        resent = " (sent again: the earlier request never reached the provider)" if attempt > 1 else ""
        return _Outcome("sent", resent, at=at, detail=detail)
    raise AssertionError("unreachable")  # pragma: no cover - the loop always returns


async def _settle_lookup(runtime: Runtime[Context], key: str, lookup: SendLookup, why: str) -> _Outcome:
    ledger = runtime.context.ledger
    at = now_of(runtime)
    if lookup.outcome == "found":
        found = {"confirmed_by": "read-back", "provider_id": lookup.id}
        if lookup.at is not None:
            found["provider_at"] = iso(lookup.at)
        await ledger.confirm(key, {"outcome": "sent", "at": iso(at), **found})
        return _Outcome("sent", f" ({why}; the read-back found it delivered)", at=at, detail=found)
    detail = lookup.detail or "the provider could not tell"
    await ledger.confirm(key, {"outcome": "unknown", "error": why, "read_back": detail})
    if lookup.outcome == "absent":
        return _Outcome("unknown", f"{why}; it was sent again and that answer never came either, so it is "
                                   "not sent a third time")
    return _Outcome("unknown", f"{why}; the read-back could not tell ({detail}), so it is not resent "
                               "(at most once)")


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
    update: dict[str, Any] = {"contact": contact.to_state()}
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

    locale = locale_of(update["contact"], runtime)
    eng = state.get("engagement", {})
    if _window_check(runtime, locale)() is not None:  # the zone may have changed since it was planned
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
                cid, stall.get("attempts", 0), stall.get("last_variant"), len(messages.STALL_BREAKER_SMS)
            )
            or 0
        )
        progress["stall"]["last_variant"] = variant
    elif step is Step.NURTURE:
        variant = occurrence
    key = touch_key(cid, f"{enrollment_id(state)}|{step}", occurrence)
    values = messages.fields(
        update["contact"], agent_name=ctx.rules.agent_name, program_name=ctx.rules.program_name
    )
    outcome = await _send_once_under(
        runtime, key, contact, _compose(step, channel, contact, values, variant, key), locale
    )
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
