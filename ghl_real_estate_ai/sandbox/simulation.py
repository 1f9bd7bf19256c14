"""``Simulation``: the lead graph on a virtual clock with in-process fakes and a tiny in-memory scheduler.

The demo, the notebooks and the graph tests drive leads through it. It fires each lead's next due step at
its due time (the next one comes from a heap kept current by every run, so a step costs O(log n) however
many leads there are), and lets a script inject events (replies, STOP, operator actions) at chosen times.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Durability

from ghl_real_estate_ai.agents.lead_bot import Context, Event, Rules, build_graph
from ghl_real_estate_ai.clock import FakeClock
from ghl_real_estate_ai.sandbox.fakes import FakeCrm, FakeVoice
from ghl_real_estate_ai.sequence import parse_time
from ghl_real_estate_ai.services.runner import LeadBotRunner
from ghl_real_estate_ai.services.send_ledger import InMemorySendLedger, SendLedger


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
        durability: Durability = "exit",
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
        self.runner = LeadBotRunner(self.graph, self.context, durability=durability)
        self.contact_ids: list[str] = []
        self._script: list[_Scripted] = []
        self._order = itertools.count()
        # Each lead's next (due time, step) as of its last run, and a heap of them (stale entries are
        # dropped when they reach the top).
        self._latest: dict[str, tuple[datetime, str] | None] = {}
        self._due: list[tuple[datetime, int, str, str]] = []
        # When set, how a due step is fired: the delays (after its due time) of each fire, e.g. ``[0]``,
        # ``[12 min]`` (late) or ``[0, 3 min]`` (twice). None fires each step once, on time.
        self.fire: Callable[[datetime, str, str], Sequence[timedelta]] | None = None
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
        values = await self.runner.dispatch(contact_id, event)
        self._note_due(contact_id, values)
        return values

    async def enroll_all(self, contact_ids: Iterable[str] | None = None) -> None:
        for cid in contact_ids or self.contact_ids:
            await self.dispatch(cid, {"type": "enroll", "source": "demo"})

    def _note_due(self, contact_id: str, values: dict[str, Any] | None) -> None:
        """Remember the lead's next due step (from its state after a run) in the heap of due steps."""
        seq = values.get("sequence", {}) if values else {}
        due, step = parse_time(seq.get("next_due_at")), seq.get("next_step")
        latest = (due, str(step)) if due is not None and step else None
        if self._latest.get(contact_id) == latest:
            return
        self._latest[contact_id] = latest
        if latest is not None:
            heapq.heappush(self._due, (latest[0], next(self._order), contact_id, latest[1]))

    async def refresh(self, contact_ids: Iterable[str] | None = None) -> None:
        """Re-read leads' next due steps from the checkpointer. Only needed after changing a thread
        directly through ``graph`` (``aupdate_state``, a fork): ``dispatch`` keeps the heap current."""
        for cid in contact_ids or self.contact_ids:
            snapshot = await self.graph.aget_state(LeadBotRunner.config(cid))
            self._note_due(cid, snapshot.values)

    async def next_due(self) -> tuple[datetime, str, str] | None:
        """The earliest (due time, contact id, step) over all leads: the top of a heap that ``dispatch``
        keeps current, so a step costs O(log n), not a read of every lead's state."""
        while self._due:
            due, _, cid, step = self._due[0]
            if self._latest.get(cid) == (due, step):
                return due, cid, step
            heapq.heappop(self._due)  # superseded by a later run of that lead
        return None

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
            elif due is not None and self.fire is not None:
                # A scheduler that fires late or twice: the fires join the script at their own times.
                _, cid, step = due
                heapq.heappop(self._due)
                event: Event = {"type": "step_due", "step": step, "source": "scheduler"}
                for delay in self.fire(when, cid, step):
                    self.schedule(when + delay, cid, event)
            elif due is not None:
                _, cid, step = due
                await self.dispatch(cid, {"type": "step_due", "step": step, "source": "scheduler"})
        if end > self.clock.now():
            self.clock.set(end)

    async def state(self, contact_id: str) -> dict[str, Any]:
        return dict((await self.graph.aget_state(LeadBotRunner.config(contact_id))).values)
