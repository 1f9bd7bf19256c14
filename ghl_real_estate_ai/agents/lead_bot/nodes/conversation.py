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
from ghl_real_estate_ai.agents.lead_bot.state import MESSAGES_KEPT, LeadState, combine_updates
from ghl_real_estate_ai.comps import IndexedComps
from ghl_real_estate_ai.conversation import cma as cma_rules
from ghl_real_estate_ai.conversation import templates
from ghl_real_estate_ai.conversation.appraisal import appraise
from ghl_real_estate_ai.conversation.calls import call_outcome
from ghl_real_estate_ai.conversation.intents import Intent
from ghl_real_estate_ai.conversation.responders import Reply, RuleResponder, Turn
from ghl_real_estate_ai.errors import (
    IntegrationError,
    TransientIntegrationError,
)
from ghl_real_estate_ai.sequence import TIMED_STATUSES, SequenceStatus, iso, parse_time, temperature

QUALIFIED_TAG = "lead-bot-qualified"
HISTORY_TURNS = MESSAGES_KEPT


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
            words=ctx.rules.words,
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
    # A CMA turn records the answer it chose itself (it replaces the responder's text).
    if reply.text and not any(isinstance(m, AIMessage) for m in update.get("messages", [])):
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
    cma_contact = _cma_request(state, str(state.get("event", {}).get("text", "")), intent)
    if cma_contact is not None and intent not in (Intent.INTERESTED, Intent.NOT_INTERESTED, Intent.HAS_AGENT,
                                                  Intent.ALREADY_SOLD):
        return await _cma_turn(state, runtime, reply, cma_contact, channel, reply_key)
    if intent == Intent.INTERESTED:
        update = await _hand_off(state, runtime, reply)
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


def _cma_request(state: LeadState, text: str, intent: Intent) -> dict[str, Any] | None:
    """The contact fields of the property a CMA is asked for this turn, or None when the turn asks for
    none: a home-value question (about the address it names, else the contact's), or, while the bot
    waits for an address it asked for, a message that gives one."""
    contact = dict(state.get("contact", {}))
    named = cma_rules.find_address(text)
    if intent != Intent.HOME_VALUE and not (named and state.get("cma", {}).get("awaiting_address")):
        return None
    if named:
        if "city" in named or "postal_code" in named:  # another place: the contact's city and zip don't apply
            contact.update(city="", state="", postal_code="")
        contact.update(named)
    return contact


async def _plan_cma(
    runtime: Runtime[Context], contact: dict[str, Any]
) -> tuple[cma_rules.Subject, cma_rules.Valuation | None, str]:
    """Decide before replying: the subject, its valuation (None when none can be made) and, then, why."""
    ctx, now = runtime.context, now_of(runtime)
    subject = cma_rules.subject_from_contact(contact)
    if not subject.address:
        return subject, None, "no property address"
    if not (subject.has_coordinates or subject.zip or subject.city):
        return subject, None, f"no city, zip or coordinates for {subject.address}: the property is unknown"
    provider = ctx.comps or IndexedComps()
    try:
        sales = await provider.area_sales(subject, as_of=now.date())
        return subject, appraise(subject, sales, as_of=now.date()), ""
    except cma_rules.NoComparablesError as exc:
        return subject, None, f"not enough comparable sales: {exc}"
    except IntegrationError as exc:
        return subject, None, f"the comps provider failed: {exc}"


async def _cma_turn(
    state: LeadState, runtime: Runtime[Context], reply: Reply, contact: dict[str, Any], channel: str,
    reply_key: str,
) -> dict[str, Any]:
    """A turn that asks for a CMA. The answer promises only what will happen:

    * an estimate can be made: the reply says it is on the way, then the CMA follows (HTML email when the
      contact has an email address, else an SMS), sent under ``contact|cma|message_id``;
    * no property address: the reply asks for it, and the next message that gives one carries the CMA on;
    * no estimate (too few comps, the provider down, the property unknown): a GHL task "Prepare a CMA for
      <address>" for the assigned agent and a note, under ``contact|cma-handoff|message_id``, and the reply
      says the agent will send it personally.
    """
    ctx, now = runtime.context, now_of(runtime)
    message_id = reply_key.rsplit("|", 1)[1]
    first_name = contact.get("first_name") or "there"
    subject, valuation, why = await _plan_cma(runtime, contact)
    cma_update: dict[str, Any] = {"requested_at": iso(now), "awaiting_address": False,
                                  "subject": subject.to_state()}
    update: dict[str, Any] = {"cma": cma_update, "engagement": {"conversation_active": True},
                              "stall": {"attempts": 0, "last_variant": None}}
    timeline: list[Any] = []
    if valuation is not None:
        text = templates.home_value_ack(first_name, subject.address, ctx.rules.words)
    elif not subject.address:
        text = templates.cma_ask_address(first_name, ctx.rules.words)
        cma_update["awaiting_address"] = True
        timeline.append(entry(now, "cma", "deferred", "no property address: asked the lead for it"))
    else:
        timeline.append(await _cma_handoff(state, runtime, subject, why, message_id))
        cma_update.update(handed_off_at=iso(now), outcome=f"handed to the agent: {why}")
        text = templates.cma_by_agent(first_name, ctx.rules.agent_name, subject.address, ctx.rules.words)
    subject_line = reply.subject if channel == "email" else None
    outcome, reply_why = await _send_reply(runtime, state, reply_key, channel, text, subject_line,
                                           purpose="reply")
    timeline.insert(0, entry(now, "reply", outcome, reply_why, channel=channel, intent=reply.intent.value,
                             source=reply.source))
    if outcome == "sent":
        update["engagement"]["last_outbound_at"] = iso(now)
    if valuation is not None:
        cma_update.update(generated_at=iso(now), valuation=valuation.to_state())
        sent, cma_entry = await _deliver_cma(state, runtime, valuation, contact, message_id)
        if sent is not None:
            cma_update.update(sent_at=sent[0], channel=sent[1])
        timeline.append(cma_entry)
    update["timeline"] = timeline
    update["messages"] = [AIMessage(text, additional_kwargs={"at": iso(now), "intent": reply.intent.value})]
    return update


async def _deliver_cma(
    state: LeadState, runtime: Runtime[Context], valuation: cma_rules.Valuation, contact: dict[str, Any],
    message_id: str,
) -> tuple[tuple[str, str] | None, Any]:
    """Send the CMA under ``contact|cma|message_id``: a redelivered webhook, however late, never sends a
    second one. Returns ((sent_at, channel) or None, the timeline entry)."""
    ctx, now = runtime.context, now_of(runtime)
    cid = state["contact_id"]
    first_name = contact.get("first_name") or "there"
    if contact.get("email"):
        mail = templates.cma_email(valuation, first_name=first_name, agent_name=ctx.rules.agent_name,
                                   program_name=ctx.rules.program_name, agent_contact=ctx.rules.agent_contact,
                                   words=ctx.rules.words)
        message = Message("email", cid, subject=mail.subject, html=mail.html, purpose="cma")
    else:
        text = templates.cma_sms(valuation, first_name=first_name, agent_name=ctx.rules.agent_name,
                                 words=ctx.rules.words)
        message = Message("sms", cid, text=text, purpose="cma")
    result = await deliver_once(runtime, f"{cid}|cma|{message_id}", message)
    outcome, why = {
        "sent": ("sent", (result.detail.get("message_id") or result.detail.get("provider_id") or "")
                 + result.reason),
        "already": ("skipped", "already sent for this message (send key claimed)"),
        "blocked": ("skipped", result.reason),
    }.get(result.kind, ("failed", result.reason))
    sent = (iso(result.at or now), message.channel) if outcome == "sent" else None
    return sent, entry(now, "cma", outcome, why, channel=message.channel, value=valuation.value,
                       low=valuation.low, high=valuation.high, comps=len(valuation.comps),
                       confidence=valuation.confidence)


async def _cma_handoff(
    state: LeadState, runtime: Runtime[Context], subject: cma_rules.Subject, why: str, message_id: str
) -> Any:
    """No automatic estimate: a task for the assigned agent and a note with what is known, once per
    inbound message (``contact|cma-handoff|message_id``)."""
    ctx, now = runtime.context, now_of(runtime)
    cid = state["contact_id"]
    contact = state.get("contact", {})
    key = f"{cid}|cma-handoff|{message_id}"
    if not await ctx.ledger.claim(key):
        return entry(now, "cma_handoff", "skipped", "the agent already has the task for this message")
    name = " ".join(filter(None, (contact.get("first_name"), contact.get("last_name")))) or cid
    place = ", ".join(p for p in (subject.address, subject.city, subject.state, subject.zip) if p)
    facts = [f"{label}: {value}" for label, value in (
        ("living area", f"{subject.sqft:,} sq ft" if subject.sqft else None), ("beds", subject.beds),
        ("baths", subject.baths), ("year built", subject.year_built),
        ("type", subject.property_type.replace("_", " ")),
    ) if value is not None]
    asked = str(state.get("event", {}).get("text", ""))
    body = (f"{name} asked what their home is worth: \"{asked}\". Property: {place}. Known: "
            f"{'; '.join(facts)}. No automatic estimate: {why}. Please prepare a CMA and send it personally.")
    try:
        await ctx.crm.add_task(cid, f"Prepare a CMA for {subject.address}", body,
                               iso(now + timedelta(hours=24)), contact.get("assigned_to"))
        await ctx.crm.add_note(cid, f"Lead Bot: CMA requested, handed to the agent. {body}")
    except IntegrationError:
        await ctx.ledger.release(key)
        raise
    await ctx.ledger.confirm(key, {"outcome": "done", "at": iso(now)})
    return entry(now, "cma_handoff", "done", f"task and note for the agent: {why}",
                 assigned_to=contact.get("assigned_to"))


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
