"""Operator and lifecycle nodes: pause, resume, cancel, opt_out, fail, skip and contact_update.

``opt_out`` is guarded by the lead's status (an opted-out lead is never contacted again, by any channel):
it sets SMS DND and an opt-out tag in GHL so that GHL's own automations stop too.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from ghl_real_estate_ai.agents.lead_bot.context import Context
from ghl_real_estate_ai.agents.lead_bot.nodes.common import entry, now_of, timed_status
from ghl_real_estate_ai.agents.lead_bot.state import LeadState
from ghl_real_estate_ai.errors import IntegrationError
from ghl_real_estate_ai.integrations.models import Contact
from ghl_real_estate_ai.sequence import SequenceStatus, iso

OPT_OUT_TAG = "lead-bot-opted-out"


async def skip(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Record an event that changes nothing (a replay, a stale job, an action that does not apply)."""
    event = state.get("event", {})
    action = event.get("step") or event.get("type", "event")
    return {"timeline": [entry(now_of(runtime), action, "skipped", state.get("route_reason", ""))]}


async def pause(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    now, event = now_of(runtime), state.get("event", {})
    reason = state.get("route_reason", "paused")
    return {
        "sequence": {
            "status": SequenceStatus.PAUSED.value,
            "status_reason": reason,
            "paused_at": iso(now),
            "paused_until": event.get("until"),
        },
        "timeline": [entry(now, "pause", "done", reason)],
    }


async def resume(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Back to the timed sequence; the next step keeps its enrollment-anchored due time."""
    now = now_of(runtime)
    seq = state.get("sequence", {})
    reason = state.get("route_reason", "resumed")
    return {
        "sequence": {
            "status": timed_status(seq.get("current_step")),
            "status_reason": reason,
            "paused_at": None,
            "paused_until": None,
            "takeover_until": None,
        },
        "timeline": [entry(now, "resume", "done", reason)],
    }


async def cancel(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    now, reason = now_of(runtime), state.get("route_reason", "cancelled")
    return {
        "sequence": {"status": SequenceStatus.CANCELLED.value, "status_reason": reason},
        "timeline": [entry(now, "cancel", "done", reason)],
    }


async def fail(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    now, reason = now_of(runtime), state.get("route_reason", "failed")
    return {
        "sequence": {"status": SequenceStatus.FAILED.value, "status_reason": reason, "failure": reason},
        "timeline": [entry(now, "fail", "failed", reason)],
    }


async def mark_opted_out(
    state: LeadState, runtime: Runtime[Context], reason: str, *, channel: str = "sms"
) -> dict[str, Any]:
    """Opt the lead out: status first (nothing else is sent), then DND and a tag in GHL (best effort).

    SMS DND is always set; an opt-out written by email sets email DND too."""
    ctx, now = runtime.context, now_of(runtime)
    cid = state["contact_id"]
    done: list[str] = []
    problems: list[str] = []
    # The status below is what stops the bot; GHL's DND and tag are for GHL's own automations, so a
    # failure there is recorded, not allowed to undo the opt-out.
    for dnd_channel in ("sms", "email") if channel == "email" else ("sms",):
        try:
            await ctx.crm.set_dnd(cid, dnd_channel, True, "Opted out via Lead Bot")
            done.append(f"{dnd_channel} dnd")
        except IntegrationError as exc:
            problems.append(f"set {dnd_channel} DND: {exc}")
    try:
        await ctx.crm.add_tags(cid, [OPT_OUT_TAG])
        done.append("tag")
    except IntegrationError as exc:
        problems.append(f"add tag: {exc}")
    detail: dict[str, Any] = {"ghl": done}
    if problems:
        detail["ghl_errors"] = problems
    return {
        "sequence": {"status": SequenceStatus.OPTED_OUT.value, "status_reason": reason},
        "engagement": {"conversation_active": False},
        "timeline": [entry(now, "opt_out", "done", reason, **detail)],
    }


async def opt_out(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    return await mark_opted_out(state, runtime, state.get("route_reason", "opted out"))


async def contact_update(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Apply a GHL contact change: refresh the snapshot; overall DND or an opt-out tag opts the lead out."""
    now = now_of(runtime)
    raw = state.get("event", {}).get("contact", {})
    contact = Contact.from_ghl({"id": state["contact_id"], **raw})
    snapshot = {**state.get("contact", {}), **{k: v for k, v in contact.to_state().items() if v}}
    status = state.get("sequence", {}).get("status")
    tags = {t.lower() for t in contact.tags}
    if status != SequenceStatus.OPTED_OUT.value and (
        contact.dnd or contact.blocks("sms") or OPT_OUT_TAG in tags
    ):
        why = "DND turned on in GHL" if contact.dnd or contact.blocks("sms") else "opt-out tag in GHL"
        return {
            "contact": snapshot,
            "sequence": {"status": SequenceStatus.OPTED_OUT.value, "status_reason": why},
            "timeline": [entry(now, "opt_out", "done", why)],
        }
    return {"contact": snapshot, "timeline": [entry(now, "contact_update", "done", "contact refreshed")]}
