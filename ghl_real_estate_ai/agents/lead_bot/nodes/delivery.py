"""Delivering one outbound touch exactly once: claim its send key, send, and settle an unknown outcome by
reading the provider back instead of guessing. Shared by the step nodes and the conversation replies.

The key is claimed in the send ledger before the HTTP call. An earlier claim that never got an answer
(the process died mid-send, or the answer timed out) is resolved before anything is sent: a read-back that
finds the send confirms it; one that certainly finds nothing lets this run send it, under the same key;
one that cannot tell keeps the at-most-once rule. A send whose own answer never comes is resolved the same
way after ``Context.readback_delay_seconds``, and is sent once more at most.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from langgraph.runtime import Runtime

from ghl_real_estate_ai.agents.lead_bot.context import Context
from ghl_real_estate_ai.agents.lead_bot.nodes.common import now_of
from ghl_real_estate_ai.errors import (
    PermanentIntegrationError,
    SendBlockedError,
    SendWindowClosedError,
    TransientIntegrationError,
)
from ghl_real_estate_ai.integrations.models import SendLookup
from ghl_real_estate_ai.integrations.send_label import labelled
from ghl_real_estate_ai.integrations.send_window import WindowCheck, send_window
from ghl_real_estate_ai.sequence import iso

# A read-back looks at provider records from this long before the claim (clock skew between hosts).
READBACK_SLACK_SECONDS = 120.0


@dataclass(frozen=True)
class Message:
    """One outbound touch, composed before its send key is claimed (a read-back matches on it)."""

    channel: str  # "sms", "email" or "call"
    contact_id: str
    text: str = ""  # the SMS body
    subject: str = ""  # email
    html: str = ""  # email
    to_number: str = ""  # call
    metadata: dict[str, str] = field(default_factory=dict)  # the call's Retell metadata
    variables: dict[str, str] = field(default_factory=dict)  # the call's dynamic variables
    purpose: str = ""  # what it is for ("day_3", "reply", "cma", ...): the label the in-process fakes record

    @property
    def match(self) -> str:
        """What a read-back of GHL's messages matches on: the SMS text, or the email subject."""
        return self.subject if self.channel == "email" else self.text


@dataclass(frozen=True)
class Outcome:
    """What became of one send: ``sent`` (``at``: when the provider answered, or when a read-back found
    it), ``already`` (an earlier run settled it), ``deferred`` (the window closed first), ``blocked``
    (DND), ``failed`` (permanent error), ``unknown`` (at-most-once kept). ``reason`` is for the timeline."""

    kind: str
    reason: str = ""
    at: datetime | None = None
    detail: dict[str, Any] = field(default_factory=dict)


async def deliver_once(
    runtime: Runtime[Context], key: str, message: Message, check: WindowCheck | None = None
) -> Outcome:
    """Send ``message`` at most once under ``key`` (see the module docstring). ``check`` guards every
    attempt (``integrations.send_window``): when it says no, the claim is given back and the outcome is
    ``deferred``. Transient errors whose request certainly did not land release the claim and raise."""
    ctx = runtime.context
    ledger = ctx.ledger
    if not await ledger.claim(key, {"channel": message.channel, "match": message.match}):
        earlier = await ledger.get(key) or {}
        if earlier.get("state") != "claimed":
            settled = earlier.get("outcome") or "settled"
            return Outcome("already", f"already handled: its send key is {settled}")
        claimed_at = earlier.get("claimed_at")
        if claimed_at is None:  # claimed by a version without read-backs: no time to search from
            lookup = SendLookup("unknown", detail="the claim does not say when the send was tried")
            return await _settle(runtime, key, lookup, "an earlier run's send got no answer")
        wait = ctx.readback_delay_seconds - (time.time() - float(claimed_at))
        if wait > 0:
            await asyncio.sleep(wait)
        # Match what that run sent (the contact's fields may have changed since), not what we would send.
        tried = replace(message, text=earlier.get("match") or message.text,
                        subject=earlier.get("match") or message.subject)
        lookup = await _read_back(ctx, tried, claimed_at)
        if lookup.outcome != "absent":
            return await _settle(runtime, key, lookup, "an earlier run's send got no answer")
    for attempt in (1, 2):
        why = check() if check is not None else None
        if why is not None:
            await ledger.release(key)
            return Outcome("deferred", why)
        try:
            with send_window(check or _always), labelled(message.purpose, key):
                detail = await _send(ctx, message)
        except SendWindowClosedError as exc:
            await ledger.release(key)
            return Outcome("deferred", exc.detail)
        except SendBlockedError as exc:
            await ledger.confirm(key, {"outcome": "blocked", "error": str(exc)})
            return Outcome("blocked", f"GHL refused the send: {exc.detail}")
        except TransientIntegrationError as exc:
            if not exc.outcome_unknown:
                await ledger.release(key)
                raise
            if ctx.readback_delay_seconds > 0:
                await asyncio.sleep(ctx.readback_delay_seconds)
            lookup = await _read_back(ctx, message, (await ledger.get(key) or {}).get("claimed_at"))
            if lookup.outcome == "absent" and attempt == 1:
                continue  # certainly not sent: once more, under the same key
            return await _settle(runtime, key, lookup, f"no answer ({exc.detail})")
        except PermanentIntegrationError as exc:
            await ledger.confirm(key, {"outcome": "failed", "error": str(exc)})
            return Outcome("failed", str(exc))
        at = now_of(runtime)
        await ledger.confirm(key, {"outcome": "sent", "at": iso(at), **detail})
        resent = " (sent again: the earlier request never reached the provider)" if attempt > 1 else ""
        return Outcome("sent", resent, at=at, detail=detail)
    raise AssertionError("unreachable")  # pragma: no cover - the loop always returns


def _always() -> str | None:
    return None


async def _send(ctx: Context, message: Message) -> dict[str, Any]:
    if message.channel == "sms":
        result = await ctx.crm.send_sms(message.contact_id, message.text)
        return {"message_id": result.message_id}
    if message.channel == "email":
        result = await ctx.crm.send_email(message.contact_id, message.subject, message.html)
        return {"message_id": result.message_id}
    call = await ctx.voice.create_phone_call(message.to_number, message.metadata, message.variables)
    return {"call_id": call.call_id}


async def _read_back(ctx: Context, message: Message, claimed_at: Any) -> SendLookup:
    """Ask GHL (messages) or Retell (calls) whether a send whose answer never came went through."""
    # Providers date records in wall time, not the service's virtual time; allow for clock skew.
    since = datetime.fromtimestamp(float(claimed_at or time.time()) - READBACK_SLACK_SECONDS, UTC)
    try:
        if message.channel == "call":
            return await ctx.voice.find_call(message.to_number, message.metadata, since=since)
        return await ctx.crm.find_sent_message(
            message.contact_id, channel=message.channel, text=message.match, since=since
        )
    except Exception as exc:  # a read-back never turns "maybe sent" into a crash or a resend
        return SendLookup("unknown", detail=f"the read-back failed: {exc}")


async def _settle(runtime: Runtime[Context], key: str, lookup: SendLookup, why: str) -> Outcome:
    ledger = runtime.context.ledger
    at = now_of(runtime)
    if lookup.outcome == "found":
        found = {"confirmed_by": "read-back", "provider_id": lookup.id}
        if lookup.at is not None:
            found["provider_at"] = iso(lookup.at)
        await ledger.confirm(key, {"outcome": "sent", "at": iso(at), **found})
        return Outcome("sent", f" ({why}; the read-back found it delivered)", at=at, detail=found)
    detail = lookup.detail or "the provider could not tell"
    await ledger.confirm(key, {"outcome": "unknown", "error": why, "read_back": detail})
    if lookup.outcome == "absent":
        return Outcome("unknown", f"{why}; it was sent again and that answer never came either, so it is "
                                  "not sent a third time")
    return Outcome("unknown", f"{why}; the read-back could not tell ({detail}), so it is not resent "
                              "(at most once)")


__all__ = ["Message", "Outcome", "deliver_once"]
