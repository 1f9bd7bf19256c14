"""``Simulation``: the lead graph on a virtual clock with in-process fakes and a tiny in-memory scheduler.

The demo, the notebooks and the graph tests drive leads through it. It fires each lead's next due step at
its due time, and lets a script inject events (replies, STOP, operator actions) at chosen times.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from ghl_real_estate_ai.agents.lead_bot import Context, Event, Rules, build_graph
from ghl_real_estate_ai.clock import FakeClock
from ghl_real_estate_ai.sequence import parse_time
from ghl_real_estate_ai.services.runner import LeadBotRunner
from ghl_real_estate_ai.services.send_ledger import InMemorySendLedger, SendLedger
from ghl_real_estate_ai.testing.fakes import FakeCrm, FakeVoice


@dataclass(order=True)
class _Scripted:
    at: datetime
    order: int
    contact_id: str = field(compare=False)
    event: Event = field(compare=False)


class Simulation:
    """Leads on a virtual clock. ``run_until`` plays due steps and scripted events in time order."""

    def __init__(
        self,
        start: datetime,
        *,
        checkpointer: BaseCheckpointSaver[Any] | None = None,
        rules: Rules | None = None,
        ledger: SendLedger | None = None,
        responder: Any = None,
        comps: Any = None,
    ) -> None:
        self.clock = FakeClock(start)
        self.crm = FakeCrm(self.clock)
        self.voice = FakeVoice(self.crm)
        self.context = Context(
            crm=self.crm,
            voice=self.voice,
            clock=self.clock,
            ledger=ledger or InMemorySendLedger(),
            rules=rules or Rules(),
            responder=responder,
            comps=comps,
        )
        self.checkpointer = checkpointer or InMemorySaver()
        self.graph = build_graph().compile(checkpointer=self.checkpointer)
        self.runner = LeadBotRunner(self.graph, self.context)
        self.contact_ids: list[str] = []
        self._script: list[_Scripted] = []
        self._order = itertools.count()
        self.events_run = 0

    def add_lead(self, record: dict[str, Any]) -> str:
        self.crm.add_contact(record)
        self.contact_ids.append(record["id"])
        return str(record["id"])

    def schedule(self, at: datetime, contact_id: str, event: Event) -> None:
        """Inject ``event`` for the lead at virtual time ``at``."""
        heapq.heappush(self._script, _Scripted(at, next(self._order), contact_id, event))

    def after(self, delta: timedelta, contact_id: str, event: Event) -> None:
        self.schedule(self.clock.now() + delta, contact_id, event)

    async def dispatch(self, contact_id: str, event: Event) -> dict[str, Any]:
        self.events_run += 1
        return await self.runner.dispatch(contact_id, event)

    async def enroll_all(self, contact_ids: Iterable[str] | None = None) -> None:
        for cid in contact_ids or self.contact_ids:
            await self.dispatch(cid, {"type": "enroll", "source": "demo"})

    async def next_due(self) -> tuple[datetime, str, str] | None:
        """The earliest (due time, contact id, step) over all leads."""
        best: tuple[datetime, str, str] | None = None
        for cid in self.contact_ids:
            values = (await self.graph.aget_state(LeadBotRunner.config(cid))).values
            seq = values.get("sequence", {}) if values else {}
            due = parse_time(seq.get("next_due_at"))
            if due is not None and seq.get("next_step") and (best is None or due < best[0]):
                best = (due, cid, seq["next_step"])
        return best

    async def run_until(self, end: datetime) -> None:
        """Fire every due step and scripted event up to ``end``, in time order, moving the clock."""
        while True:
            due = await self.next_due()
            script_at = self._script[0].at if self._script else None
            candidates = [t for t in (due[0] if due else None, script_at) if t is not None and t <= end]
            if not candidates:
                break
            when = min(candidates)
            if when > self.clock.now():
                self.clock.set(when)
            if script_at is not None and script_at == when:
                item = heapq.heappop(self._script)
                await self.dispatch(item.contact_id, item.event)
            elif due is not None:
                _, cid, step = due
                await self.dispatch(cid, {"type": "step_due", "step": step, "source": "scheduler"})
        if end > self.clock.now():
            self.clock.set(end)

    async def state(self, contact_id: str) -> dict[str, Any]:
        return dict((await self.graph.aget_state(LeadBotRunner.config(contact_id))).values)
