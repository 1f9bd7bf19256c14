"""``LeadBotRunner``: runs events on a lead's graph thread, one run per lead at a time, then tells the
hooks (scheduler, lead index) what the lead's state became.

The graph's checkpointed state is the source of truth; everything a hook keeps is a cache of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability

from ghl_real_estate_ai.agents.lead_bot.context import Context
from ghl_real_estate_ai.agents.lead_bot.state import Event
from ghl_real_estate_ai.errors import LeadNotFoundError

log = logging.getLogger(__name__)

AfterRun = Callable[[str, dict[str, Any]], Awaitable[None]]


class LeadLock(Protocol):
    """Serialises runs on one lead's thread (concurrent runs would fork its history and double-send)."""

    def hold(self, contact_id: str) -> contextlib.AbstractAsyncContextManager[None]: ...


class LocalLeadLock:
    """A per-lead asyncio lock, for one process (tests, demo)."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, contact_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(contact_id, asyncio.Lock())
        async with lock:
            yield


def summary_from_state(contact_id: str, values: dict[str, Any]) -> dict[str, Any]:
    """The lead's sequence summary (what the index, ``lead-bot status`` and ``GET /api/leads`` show)."""
    seq = values.get("sequence", {}) or {}
    eng = values.get("engagement", {}) or {}
    contact = values.get("contact", {}) or {}
    return {
        "contact_id": contact_id,
        "status": seq.get("status"),
        "status_reason": seq.get("status_reason"),
        "current_step": seq.get("current_step"),
        "next_step": seq.get("next_step"),
        "next_due_at": seq.get("next_due_at"),
        "enrolled_at": seq.get("enrolled_at"),
        "completed": seq.get("completed", {}),
        "takeover_until": seq.get("takeover_until"),
        "updated_at": (values.get("timeline") or [{}])[-1].get("at") or seq.get("enrolled_at"),
        "temperature": eng.get("temperature", "cold"),
        "replies": eng.get("replies", 0),
        "last_inbound_at": eng.get("last_inbound_at"),
        "last_outbound_at": eng.get("last_outbound_at"),
        "location_id": contact.get("location_id"),
        "name": " ".join(filter(None, (contact.get("first_name"), contact.get("last_name")))),
    }


class LeadBotRunner:
    """Runs graph events for leads. ``graph`` must be compiled with a checkpointer."""

    def __init__(
        self,
        graph: CompiledStateGraph[Any, Any, Any, Any],
        context: Context,
        *,
        lock: LeadLock | None = None,
        after_run: Sequence[AfterRun] = (),
        durability: Durability = "exit",
    ) -> None:
        self.graph = graph
        self.context = context
        self.lock = lock or LocalLeadLock()
        self.after_run = list(after_run)
        # "exit" (the default, the service's): one checkpoint per run, written when the run ends. A run is
        # the router and exactly one action node, and an interrupted run is never resumed: its event is
        # dispatched again (the intake keeps it until the run ended) and starts at the router. So the
        # checkpoints "sync" writes after the input and after the router could never be used for recovery;
        # they cost three of the four checkpoint writes of a run. The sends inside the action are guarded
        # by the send ledger either way. "sync": a checkpoint after every superstep (notebooks stepping
        # through a run).
        self.durability: Durability = durability

    @staticmethod
    def config(contact_id: str) -> RunnableConfig:
        return {"configurable": {"thread_id": contact_id}}

    async def dispatch(self, contact_id: str, event: Event) -> dict[str, Any]:
        """Run one event on the lead's thread under its lock; returns the lead's state after the run."""
        if not contact_id:
            raise ValueError("contact_id is required")
        async with self.lock.hold(contact_id):
            run_input: dict[str, Any] = {"contact_id": contact_id, "event": event}
            values = await self.graph.ainvoke(
                run_input,
                self.config(contact_id),
                context=self.context,
                durability=self.durability,
            )
            for hook in self.after_run:
                await hook(contact_id, values)
        log.debug("lead %s: %s -> %s", contact_id, event.get("type"), values.get("route"))
        return dict(values)

    async def enroll(self, contact_id: str, *, source: str = "operator") -> dict[str, Any]:
        return await self.dispatch(contact_id, {"type": "enroll", "source": source})

    async def state(self, contact_id: str) -> dict[str, Any]:
        """The lead's current state; raises ``LeadNotFoundError`` for a contact never seen."""
        snapshot = await self.graph.aget_state(self.config(contact_id))
        if not snapshot.values or not snapshot.values.get("sequence"):
            raise LeadNotFoundError(contact_id)
        return dict(snapshot.values)

    async def summary(self, contact_id: str) -> dict[str, Any]:
        return summary_from_state(contact_id, await self.state(contact_id))
