"""Conversation nodes: ``converse`` (one inbound turn), ``human_takeover`` and ``call_result``.

Replies are sent on the channel the lead wrote on, at once (the lead just wrote: quiet hours govern the
bot's own outreach, not answers), under the send key ``contact|reply|message_id``, so a redelivered
webhook is answered once. Compliance intents (STOP, START, HELP) are honoured in every status; other
messages get a conversational reply only while the timed sequence runs and no human has taken over.
"""

from __future__ import annotations

import hashlib
import html
from datetime import datetime, timedelta
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.runtime import Runtime

from ghl_real_estate_ai.agents.lead_bot.context import Context
from ghl_real_estate_ai.agents.lead_bot.nodes.common import enrollment_id, entry, now_of, timed_status
from ghl_real_estate_ai.agents.lead_bot.nodes.delivery import Message, deliver_once
from ghl_real_estate_ai.agents.lead_bot.nodes.operations import mark_opted_out
from ghl_real_estate_ai.agents.lead_bot.state import LeadState, combine_updates
from ghl_real_estate_ai.conversation import cma as cma_rules
from ghl_real_estate_ai.conversation import templates
from ghl_real_estate_ai.conversation.calls import call_outcome
from ghl_real_estate_ai.conversation.intents import Intent
from ghl_real_estate_ai.conversation.responders import Reply, RuleResponder, Turn
from ghl_real_estate_ai.errors import (
    IntegrationError,
    TransientIntegrationError,
)
from ghl_real_estate_ai.sequence import TIMED_STATUSES, SequenceStatus, iso, parse_time, temperature

QUALIFIED_TAG = "lead-bot-qualified"
HISTORY_TURNS = 12


def _message_id(state: LeadState, now: datetime) -> str:
    event = state.get("event", {})
    if event.get("message_id"):
        return str(event["message_id"])
    digest = hashlib.sha256(f"{event.get('text', '')}|{event.get('at') or iso(now)}".encode()).hexdigest()
    return f"h{digest[:16]}"


def _history(state: LeadState) -> tuple[dict[str, Any], ...]:
    items = []
    for message in state.get("messages", [])[-HISTORY_TURNS:]:
        role = "lead" if message.type == "human" else (message.name or "bot")
        items.append(
            {"role": role, "text": str(message.content), "at": message.additional_kwargs.get("at", "")}
        )
    return tuple(items)


async def _send_reply(
    runtime: Runtime[Context],
    state: LeadState,
    key: str,
    channel: str,
    text: str,
    subject: str | None,
    purpose: str = "reply",
) -> tuple[str, str]:
    """Send one reply under ``key`` (an unknown outcome is read back, see ``delivery``); returns (outcome,
    reason) for the timeline."""
    ctx = runtime.context
    cid = state["contact_id"]
    if not text:
        return "skipped", "nothing to say"
    contact = state.get("contact") or {}  # (a contact never enrolled has no snapshot: GHL decides)
    if contact and not contact.get("email" if channel == "email" else "phone"):
        return "skipped", f"no {'email address' if channel == 'email' else 'phone number'} to answer on"
    if channel == "email":
        body = "".join(f"<p>{html.escape(line)}</p>" for line in text.split("\n") if line.strip())
        message = Message("email", cid, subject=subject or f"Re: {ctx.rules.program_name}", html=body,
                          purpose=purpose)
    else:
        message = Message("sms", cid, text=text, purpose=purpose)
    outcome = await deliver_once(runtime, key, message)
    if outcome.kind == "sent":
        sent_as = outcome.detail.get("message_id") or outcome.detail.get("provider_id") or ""
        return "sent", f"answered ({sent_as}){outcome.reason}"
    if outcome.kind == "already":
        return "skipped", "already answered (send key claimed)"
    if outcome.kind == "blocked":
        return "skipped", outcome.reason.replace("the send", "the reply")
    if outcome.kind == "failed":
        return "failed", f"GHL refused the reply: {outcome.reason}"
    return "failed", outcome.reason


async def converse(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """One inbound turn: classify, update engagement, answer on the same channel, and act on the intent."""
    ctx, now = runtime.context, now_of(runtime)
    cid = state["contact_id"]
    event = state.get("event", {})
    text = str(event.get("text", ""))
    channel = "email" if event.get("channel") == "email" else "sms"
    seq = state.get("sequence", {})
    status = seq.get("status")
    contact = state.get("contact", {})
    msg_id = _message_id(state, now)
    responder = ctx.responder or RuleResponder()
    reply = await responder.respond(
        Turn(
            text=text,
            channel=channel,  # type: ignore[arg-type]
            first_name=contact.get("first_name") or "there",
            history=_history(state),
            program_name=ctx.rules.program_name,
            agent_name=ctx.rules.agent_name,
            agent_contact=ctx.rules.agent_contact,
            property_address=contact.get("address"),
        )
    )
    eng = state.get("engagement", {})
    replies = eng.get("replies", 0) + 1
    qualified = reply.intent == Intent.INTERESTED
    update: dict[str, Any] = {
        "engagement": {
            "replies": replies,
            "last_inbound_at": iso(now),
            "last_intent": reply.intent.value,
            "temperature": temperature(replies=replies, last_inbound_at=now, now=now, qualified=qualified),
        },
        "messages": [
            HumanMessage(text, id=f"in-{msg_id}", additional_kwargs={"at": iso(now), "channel": channel})
        ],
    }
    reply_key = f"{cid}|reply|{msg_id}"
    takeover = parse_time(seq.get("takeover_until"))
    under_takeover = takeover is not None and now < takeover
    timeline: list[Any] = []

    if reply.intent == Intent.OPT_OUT:
        if status != SequenceStatus.OPTED_OUT.value:
            # The one confirmation goes first: once DND is on, GHL refuses every SMS. A GHL outage must not
            # delay the opt-out itself, so a failed confirmation is recorded, not retried.
            # It goes back on the channel the opt-out came in on, or not at all when that channel can't be
            # used (an email opt-out is never confirmed by text).
            key = f"{cid}|optout-confirm|{enrollment_id(state)}"
            try:
                outcome, why = await _send_reply(runtime, state, key, channel, reply.text, reply.subject,
                                                 purpose="opt_out_confirmation")
            except TransientIntegrationError as exc:
                outcome, why = "failed", f"confirmation not sent: {exc}"
            timeline.append(entry(now, "opt_out_confirmation", outcome, why, channel=channel))
            update = combine_updates(update, await mark_opted_out(state, runtime, f"lead replied {text!r}",
                                                                  channel=channel))
        else:
            timeline.append(entry(now, "reply", "skipped", "already opted out; one confirmation was sent"))
    elif reply.intent == Intent.OPT_IN:
        if status == SequenceStatus.OPTED_OUT.value:
            await ctx.crm.set_dnd(cid, "sms", False, "Opted back in via START")
            update["sequence"] = {
                "status": SequenceStatus.CANCELLED.value,
                "status_reason": "opted back in (START): SMS allowed again, not re-enrolled",
            }
        outcome, why = await _send_reply(runtime, state, reply_key, "sms", reply.text, None, purpose="opt_in")
        timeline.append(entry(now, "opt_in", outcome, why, channel="sms"))
    elif reply.intent == Intent.HELP:
        outcome, why = await _send_reply(runtime, state, reply_key, channel, reply.text, reply.subject,
                                         purpose="help")
        timeline.append(entry(now, "help", outcome, why, channel=channel))
    elif status == SequenceStatus.OPTED_OUT.value:
        timeline.append(entry(now, "reply", "skipped", "lead opted out: only START and HELP are answered"))
    elif status not in TIMED_STATUSES or under_takeover:
        why = (
            "a human has taken over"
            if under_takeover
            else f"lead is {status or 'not enrolled'}: the bot stays quiet"
        )
        timeline.append(entry(now, "reply", "skipped", why, intent=reply.intent.value))
    else:
        update = combine_updates(update, await _act_on_intent(state, runtime, reply, channel, reply_key))
        return _finish(update, reply, now)

    update["timeline"] = [*update.get("timeline", []), *timeline]
    return update


def _finish(update: dict[str, Any], reply: Reply, now: datetime) -> dict[str, Any]:
    if reply.text:
        update["messages"] = [
            *update.get("messages", []),
            AIMessage(reply.text, additional_kwargs={"at": iso(now), "intent": reply.intent.value}),
        ]
    return update


async def _act_on_intent(
    state: LeadState, runtime: Runtime[Context], reply: Reply, channel: str, reply_key: str
) -> dict[str, Any]:
    now = now_of(runtime)
    intent = reply.intent
    update: dict[str, Any] = {}
    if intent == Intent.INTERESTED:
        update = await _hand_off(state, runtime, reply)
    elif intent == Intent.HOME_VALUE:
        update = await _send_cma(state, runtime, reply_key.rsplit("|", 1)[1])
    elif intent == Intent.NOT_INTERESTED:
        update = {
            "sequence": {
                "status": SequenceStatus.NURTURE.value,
                "current_step": "nurture",
                "status_reason": "not interested now: long-term nurture",
            },
            "engagement": {"conversation_active": False},
        }
    elif intent in (Intent.HAS_AGENT, Intent.ALREADY_SOLD):
        why = "already working with an agent" if intent == Intent.HAS_AGENT else "already sold or bought"
        update = {
            "sequence": {"status": SequenceStatus.COMPLETED.value, "status_reason": why},
            "engagement": {"conversation_active": False},
        }
    else:
        update = {"engagement": {"conversation_active": True}, "stall": {"attempts": 0, "last_variant": None}}
    outcome, why = await _send_reply(runtime, state, reply_key, channel, reply.text, reply.subject)
    eng = dict(update.get("engagement", {}))
    if outcome == "sent":
        eng["last_outbound_at"] = iso(now)
    update["engagement"] = eng
    update["timeline"] = [
        *update.get("timeline", []),
        entry(now, "reply", outcome, why, channel=channel, intent=intent.value, source=reply.source),
    ]
    return update


async def _hand_off(state: LeadState, runtime: Runtime[Context], reply: Reply) -> dict[str, Any]:
    """Qualified: tag, a note summarising the conversation, and a task for the contact's assigned user.

    Guarded by the key ``contact|handoff|enrollment`` so a redelivered message never creates a second task.
    """
    ctx, now = runtime.context, now_of(runtime)
    cid = state["contact_id"]
    contact = state.get("contact", {})
    key = f"{cid}|handoff|{enrollment_id(state)}"
    done: list[str] = []
    if await ctx.ledger.claim(key):
        lines = [f"{m['role']}: {m['text']}" for m in _history(state)[-6:]]
        lines.append(f"lead: {state.get('event', {}).get('text', '')}")
        summary = reply.summary or "The lead asked to talk to an agent."
        hint = reply.meeting_hint
        when = f" Suggested time: {hint}." if hint and hint not in summary else ""
        note = f"Lead Bot hand-off: {summary}{when}\n\nRecent conversation:\n" + "\n".join(lines)
        name = " ".join(filter(None, (contact.get("first_name"), contact.get("last_name")))) or cid
        try:
            await ctx.crm.add_tags(cid, [QUALIFIED_TAG])
            done.append("tag")
            await ctx.crm.add_note(cid, note)
            done.append("note")
            await ctx.crm.add_task(
                cid,
                f"Call {name}: qualified by Lead Bot",
                f"{summary}{when}",
                iso(now + timedelta(hours=1)),
                contact.get("assigned_to"),
            )
            done.append("task")
        except IntegrationError:
            await ctx.ledger.release(key)
            raise
        await ctx.ledger.confirm(key, {"outcome": "done", "at": iso(now)})
    return {
        "sequence": {
            "status": SequenceStatus.QUALIFIED.value,
            "status_reason": "the lead wants to talk: handed to a human",
        },
        "engagement": {"conversation_active": False, "temperature": "hot"},
        "timeline": [
            entry(now, "handoff", "done" if done else "skipped", reply.summary or "qualified", ghl=done)
        ],
    }


async def _send_cma(state: LeadState, runtime: Runtime[Context], message_id: str) -> dict[str, Any]:
    """Produce a CMA for the lead's property and send it (HTML email when there is an address, else SMS).

    The send key is the inbound message that asked for it (``contact|cma|message_id``): a redelivered
    webhook, however late, never sends a second CMA."""
    ctx, now = runtime.context, now_of(runtime)
    cid = state["contact_id"]
    contact = state.get("contact", {})
    cma_update: dict[str, Any] = {"requested_at": iso(now)}
    provider = ctx.comps or cma_rules.CsvCompsProvider()
    subject = cma_rules.subject_from_contact(contact)
    try:
        comps = provider.comparables(subject, as_of=now.date())
        valuation = cma_rules.estimate(subject, comps, as_of=now.date())
    except cma_rules.NoComparablesError as exc:
        return {
            "cma": cma_update,
            "engagement": {"conversation_active": True},
            "timeline": [entry(now, "cma", "skipped", f"no CMA: {exc}")],
        }
    cma_update.update(generated_at=iso(now), valuation=valuation.to_state())
    first_name = contact.get("first_name") or "there"
    use_email = bool(contact.get("email"))
    if use_email:
        mail = templates.cma_email(valuation, first_name=first_name, agent_name=ctx.rules.agent_name,
                                   program_name=ctx.rules.program_name)
        message = Message("email", cid, subject=mail.subject, html=mail.html, purpose="cma")
    else:
        text = templates.cma_sms(valuation, first_name=first_name, agent_name=ctx.rules.agent_name)
        message = Message("sms", cid, text=text, purpose="cma")
    result = await deliver_once(runtime, f"{cid}|cma|{message_id}", message)
    outcome, why = {
        "sent": ("sent", (result.detail.get("message_id") or result.detail.get("provider_id") or "")
                 + result.reason),
        "already": ("skipped", "already sent for this message (send key claimed)"),
        "blocked": ("skipped", result.reason),
    }.get(result.kind, ("failed", result.reason))
    if outcome == "sent":
        cma_update.update(sent_at=iso(result.at or now), channel=message.channel)
    return {
        "cma": cma_update,
        "engagement": {"conversation_active": True},
        "stall": {"attempts": 0, "last_variant": None},
        "timeline": [entry(now, "cma", outcome, why, channel=message.channel, value=valuation.value)],
    }


async def human_takeover(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """A human user wrote to the lead in GHL: the bot steps back for ``human_takeover_days``."""
    ctx, now = runtime.context, now_of(runtime)
    until = now + timedelta(days=ctx.rules.human_takeover_days)
    event = state.get("event", {})
    update: dict[str, Any] = {
        "sequence": {"takeover_until": iso(until), "status_reason": "a human took over the conversation"},
        "engagement": {"conversation_active": False},
        "timeline": [entry(now, "human_takeover", "done", f"bot in the background until {iso(until)}")],
    }
    if event.get("text"):
        update["messages"] = [
            AIMessage(
                str(event["text"]),
                name="agent",
                id=f"agent-{_message_id(state, now)}",
                additional_kwargs={"at": iso(now)},
            )
        ]
    return update


async def call_result(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Apply a Retell call result: a positive answered call qualifies the lead; otherwise the sequence goes
    on. The outcome goes to the timeline and to GHL as a tag ``lead-bot-call-<outcome>``."""
    ctx, now = runtime.context, now_of(runtime)
    cid = state["contact_id"]
    event = state.get("event", {})
    call = event.get("call", {})
    kind = str(event.get("reason") or call.get("event") or "call_analyzed")
    outcome = call_outcome(kind, call)
    call_id = str(call.get("call_id", ""))
    seen = state.get("sequence", {}).get("call_outcomes", {}) or {}
    if outcome == "in_progress":
        return {
            "timeline": [
                entry(now, "call_result", "skipped", f"{kind}: call still in progress", call_id=call_id)
            ]
        }
    if call_id and call_id in seen:
        return {
            "timeline": [
                entry(
                    now,
                    "call_result",
                    "skipped",
                    f"outcome already recorded: {seen[call_id]}",
                    call_id=call_id,
                )
            ]
        }
    update: dict[str, Any] = {"sequence": {"call_outcomes": {**seen, call_id: outcome}}}
    try:
        await ctx.crm.add_tags(cid, [f"lead-bot-call-{outcome.replace('_', '-')}"])
    except IntegrationError as exc:
        if exc.transient:
            raise
    summary = (call.get("call_analysis") or {}).get("call_summary") or ""
    timeline = [entry(now, "call_result", "done", f"day_7 call: {outcome}", call_id=call_id, summary=summary)]
    status = state.get("sequence", {}).get("status")
    if outcome == "answered_positive" and status in TIMED_STATUSES:
        reply = Reply(intent=Intent.INTERESTED, text="", summary=summary or "Positive day-7 call.")
        handoff = await _hand_off(state, runtime, reply)
        update["sequence"] = {**update["sequence"], **handoff["sequence"]}
        update["engagement"] = handoff["engagement"]
        timeline.extend(handoff["timeline"])
    elif status in TIMED_STATUSES:
        update["sequence"]["status"] = timed_status(state.get("sequence", {}).get("current_step"))
    update["timeline"] = timeline
    return update
