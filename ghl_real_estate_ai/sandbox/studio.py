"""The lead graph as LangGraph Studio runs it (``langgraph dev``): the same nodes, with a context of plain
JSON settings (``StudioContext``) that each node turns into the services it needs (a ``sandbox.world``) and
a virtual clock the user controls.

The run's virtual time ("now") is, in this order: the context's ``now``; the event's ``at``; for a
``step_due`` event the time the thread's next step is due (so pressing "run" with ``{"type": "step_due"}``
walks the 3-7-30 sequence); else wall time. Without an explicit time it never falls before the latest time
the thread has recorded, so a thread's timeline only moves forward. The router stores the time it chose in
the event (``event.at``), and every later node of the run uses that same instant.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from langgraph.graph import END
from langgraph.runtime import Runtime
from langgraph.types import Command

from ghl_real_estate_ai.agents.lead_bot.builder import Node, build_graph
from ghl_real_estate_ai.agents.lead_bot.context import Context
from ghl_real_estate_ai.agents.lead_bot.state import LeadState
from ghl_real_estate_ai.clock import FakeClock, SystemClock
from ghl_real_estate_ai.errors import ConfigurationError, StudioSettingError
from ghl_real_estate_ai.sandbox.world import WORLDS, Worlds, with_overrides
from ghl_real_estate_ai.sequence import QuietHours, iso, parse_time

ROUTER = "determine_path"
# The ``source`` of the step_due events ``due_now`` makes.
SOURCE = "studio"


@dataclass(frozen=True)
class StudioContext:
    """What Studio shows and edits for a run (plain JSON, all optional).

    ``world``: ``demo`` (in-process fakes of GHL and Retell holding the demo's leads; any other contact id
    gets a generated contact) or ``live`` (GHL and Retell from the server's environment or ``.env``).
    ``now``: the run's virtual time, ISO 8601 (no offset means UTC); empty: the step's due time for
    ``step_due``, else real time (see the module docstring). ``quiet_hours``: like ``LEAD_BOT_QUIET_HOURS``
    (``"08:00-21:00"`` or ``"09:00-20:00,TX=10:00-19:00"``); ``agent_name``, ``program_name``,
    ``agent_contact``: the names the messages use. Empty settings keep the world's own.
    """

    world: Literal["demo", "live"] = "demo"
    now: str = ""
    quiet_hours: str = ""
    agent_name: str = ""
    program_name: str = ""
    agent_contact: str = ""

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise StudioSettingError("world", f"expected one of {', '.join(WORLDS)}, got {self.world!r}")
        self.virtual_now()
        self.quiet()

    def virtual_now(self) -> datetime | None:
        """``now`` as an aware datetime, or None when empty."""
        if not self.now.strip():
            return None
        try:
            when = datetime.fromisoformat(self.now.strip().replace("Z", "+00:00"))
        except ValueError:
            raise StudioSettingError(
                "now", f"expected an ISO 8601 time such as 2026-03-05T15:00:00Z, got {self.now!r}"
            ) from None
        return when if when.tzinfo else when.replace(tzinfo=UTC)

    def quiet(self) -> QuietHours | None:
        if not self.quiet_hours.strip():
            return None
        try:
            return QuietHours.parse(self.quiet_hours)
        except ValueError as exc:
            raise StudioSettingError("quiet_hours", str(exc)) from None


def latest_time(state: LeadState) -> datetime | None:
    """The latest time the thread has recorded (enrollment, timeline entries), if any."""
    times = [parse_time(item.get("at")) for item in state.get("timeline", [])]
    times.append(parse_time(state.get("sequence", {}).get("enrolled_at")))
    known = [t for t in times if t is not None]
    return max(known) if known else None


def run_time(settings: StudioContext, state: LeadState, wall: datetime) -> datetime:
    """The virtual time of a run (see the module docstring)."""
    explicit = settings.virtual_now()
    if explicit is not None:
        return explicit
    event = state.get("event") or {}
    given = parse_time(event.get("at"))
    if given is not None:
        return given
    latest = latest_time(state)
    chosen = wall
    if event.get("type", "step_due") == "step_due":
        due = parse_time(state.get("sequence", {}).get("next_due_at"))
        chosen = due if due is not None else wall
    return max(chosen, latest) if latest is not None else chosen


def _thread_id(runtime: Runtime[Any]) -> str | None:
    info = runtime.execution_info
    return info.thread_id if info is not None else None


def studio_nodes(worlds: Worlds, wall: SystemClock | None = None) -> Any:
    """The ``wrap_node`` for ``build_graph``: each node gets the ``Context`` of the run's world at the
    run's virtual time."""
    wall_clock = wall or SystemClock()

    def wrap(name: str, node: Node) -> Any:
        @functools.wraps(node)
        async def run(state: LeadState, runtime: Runtime[StudioContext | None]) -> Any:
            settings = runtime.context or StudioContext()
            contact_id = state.get("contact_id")
            if not contact_id:
                raise StudioSettingError(
                    "contact_id", 'missing from the input, e.g. {"contact_id": "demo-maria", "event": '
                    '{"type": "enroll"}}'
                )
            try:
                world = await asyncio.to_thread(worlds.get, settings.world, _thread_id(runtime))
            except ConfigurationError as exc:
                raise StudioSettingError(exc.setting, exc.problem) from None
            world.prepare(contact_id)
            now = run_time(settings, state, wall_clock.now())
            rules = with_overrides(
                world.rules,
                quiet_hours=settings.quiet(),
                agent_name=settings.agent_name.strip(),
                program_name=settings.program_name.strip(),
                agent_contact=settings.agent_contact.strip(),
            )
            clock = FakeClock(now)
            services: Runtime[Context] = runtime.override(context=world.context(clock, rules))  # type: ignore[arg-type,assignment]
            with world.clock.running(clock):
                update = await node(state, services)
            if name == ROUTER:
                # Pin the run's time: the action node after the router runs at this same instant.
                event = state.get("event") or {"type": "step_due"}
                pinned = {"event": {**event, "at": iso(now)}}
                if isinstance(update, Command):  # the router routes with Command(goto=...)
                    update = Command(update={**(update.update or {}), **pinned}, goto=update.goto)
                elif isinstance(update, dict):
                    update = {**update, **pinned}
            return update

        return run

    return wrap


async def due_now(state: LeadState, runtime: Runtime[Context]) -> Command[str] | dict[str, Any]:
    """Studio has no scheduler, so a run plays it: when the thread's next step is due at the run's time
    (enrollment makes day_3 due at once), run it now, as a ``step_due`` event back through
    ``determine_path``; otherwise the run ends. A step that stays due after it ran (it cannot, as planning
    moves the due time on; this guards the loop) is not run twice."""
    seq = state.get("sequence", {})
    step, due = seq.get("next_step"), parse_time(seq.get("next_due_at"))
    now = runtime.context.clock.now()
    event = state.get("event") or {}
    if not step or due is None or due > now:
        return {}
    if event.get("type") == "step_due" and event.get("step", step) == step and event.get("source") == SOURCE:
        return {}
    return Command(
        update={"event": {"type": "step_due", "step": step, "source": SOURCE, "at": iso(now)}},
        goto=ROUTER,
    )


@functools.cache
def server_worlds() -> Worlds:
    """The worlds of this server process, shared by the Studio graph (``graphs/lead_bot.py``) and the
    sandbox's HTTP view of them (``graphs/sandbox_api.py``), which the server loads as separate modules.
    Made on first call, holding nothing until a run needs a world."""
    return Worlds()


def build_studio_graph(worlds: Worlds | None = None) -> Any:
    """The lead graph (uncompiled) with ``StudioContext`` as its context schema, and ``due_now`` after
    every action. ``worlds``: the process's (``server_worlds``) unless given."""
    return build_graph(
        context_schema=StudioContext,
        wrap_node=studio_nodes(worlds or server_worlds()),
        then=("due_now", due_now, (ROUTER, END)),
    )
