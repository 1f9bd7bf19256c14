"""The worlds a Studio run can act on: the demo world (in-process GHL and Retell fakes seeded with the demo's
leads, an in-memory send ledger, the rule responder and the shipped comps) and the live world (GHL and
Retell built from the settings). Each run brings its own virtual clock; ``RunClock`` lets the services the
runs share date what they record by it."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ghl_real_estate_ai.agents.lead_bot.context import Context, Rules
from ghl_real_estate_ai.clock import Clock, SystemClock
from ghl_real_estate_ai.comps import CompsSource, IndexedComps
from ghl_real_estate_ai.config import Settings
from ghl_real_estate_ai.conversation.responders import Responder, RuleResponder
from ghl_real_estate_ai.errors import ConfigurationError
from ghl_real_estate_ai.integrations.models import Crm, VoiceCaller
from ghl_real_estate_ai.sandbox.fakes import FakeCrm, FakeVoice
from ghl_real_estate_ai.sandbox.leads import demo_leads, generated_contact
from ghl_real_estate_ai.services.send_ledger import InMemorySendLedger, SendLedger

# The names the demo's messages use (``lead-bot demo`` and the demo world in Studio).
DEMO_RULES = Rules(program_name="Acme Realty", agent_name="Sam Rivera", agent_contact="(512) 555-0100")

WORLDS = ("demo", "live")


class RunClock:
    """The clock of the run in progress, for services that many runs share (the fakes date each send by
    it). A run sets its clock with :meth:`running`; outside a run it is wall time."""

    def __init__(self) -> None:
        self._current: contextvars.ContextVar[Clock | None] = contextvars.ContextVar(
            "run_clock", default=None
        )
        self._wall = SystemClock()

    def now(self) -> datetime:
        return (self._current.get() or self._wall).now()

    @contextlib.contextmanager
    def running(self, clock: Clock) -> Iterator[None]:
        token = self._current.set(clock)
        try:
            yield
        finally:
            self._current.reset(token)


@dataclass
class World:
    """The services a run acts on, and the rules it uses unless the run says otherwise."""

    name: str
    crm: Crm
    voice: VoiceCaller
    ledger: SendLedger = field(default_factory=InMemorySendLedger)
    rules: Rules = field(default_factory=Rules)
    responder: Responder | None = None
    comps: CompsSource | None = None
    clock: RunClock = field(default_factory=RunClock)

    def prepare(self, contact_id: str) -> None:
        """Make the world ready for a run on ``contact_id`` (the demo world invents unknown contacts)."""
        if isinstance(self.crm, FakeCrm) and contact_id not in self.crm.contacts:
            self.crm.add_contact(generated_contact(contact_id))

    def context(self, clock: Clock, rules: Rules | None = None) -> Context:
        """The graph's ``Context`` for one run at ``clock``'s time."""
        return Context(
            crm=self.crm,
            voice=self.voice,
            clock=clock,
            ledger=self.ledger,
            rules=rules or self.rules,
            responder=self.responder,
            comps=self.comps,
        )


def demo_world(comps: CompsSource | None = None) -> World:
    """GHL and Retell faked in memory, holding the demo's six leads; what it sends is in ``crm.sent``.
    ``comps``: the shipped comps unless given."""
    clock = RunClock()
    crm = FakeCrm(clock)
    for lead in demo_leads():
        crm.add_contact(lead.record)
    comps = comps or IndexedComps()
    return World("demo", crm, FakeVoice(crm), rules=DEMO_RULES, responder=RuleResponder(), comps=comps,
                 clock=clock)


def live_world(settings: Settings, comps: CompsSource | None = None) -> World:
    """GHL (``GHL_API_TOKEN``, ``GHL_LOCATION_ID``) and Retell (``RETELL_*``; without them the day_7 call
    is skipped as the service skips it) from ``settings``. Raises ``ConfigurationError`` naming what to
    set."""
    from ghl_real_estate_ai.integrations.ghl import GHLClient
    from ghl_real_estate_ai.integrations.retell import RetellClient
    from ghl_real_estate_ai.service import UnconfiguredVoice

    missing = [name for name, value in (("GHL_API_TOKEN", settings.ghl_api_token),
                                        ("GHL_LOCATION_ID", settings.ghl_location_id)) if not value]
    if missing:
        raise ConfigurationError(
            " and ".join(missing),
            "not set; the live world needs GHL_API_TOKEN and GHL_LOCATION_ID in the environment or .env "
            "of `langgraph dev` (or choose the world 'demo')",
        )
    assert settings.ghl_api_token is not None and settings.ghl_location_id is not None
    crm = GHLClient(settings.ghl_api_base_url, settings.ghl_api_token, settings.ghl_location_id)
    voice: VoiceCaller = UnconfiguredVoice()
    if settings.retell_api_key and settings.retell_from_number:
        voice = RetellClient(settings.retell_api_base_url, settings.retell_api_key,
                             settings.retell_from_number, settings.retell_agent_id)
    rules = Rules(
        quiet_hours=settings.quiet_hours,
        program_name=settings.program_name,
        agent_name=settings.agent_name,
        agent_contact=settings.agent_contact,
        human_takeover_days=settings.human_takeover_days,
    )
    return World("live", crm, voice, rules=rules, responder=_responder(settings),
                 comps=comps or IndexedComps())


def _responder(settings: Settings) -> Responder:
    from ghl_real_estate_ai.conversation import responders

    if settings.llm:
        return responders.LLMResponder(responders.build_chat_model(settings.llm))
    return RuleResponder()


class Worlds:
    """The worlds of one process, each made on first use and kept. Every thread gets its own demo world, so
    experiments on two threads (even for the same contact) do not meet, while the forks of one thread act
    on the world their thread has changed, as a real lead's history would (what was sent stays sent). The
    live world is one: GHL and Retell themselves. ``settings`` reads the live world's settings
    (``Settings.from_env`` by default). Making a world reads files: call :meth:`get` from a worker thread,
    not from the event loop. At most ``keep`` demo worlds are kept, the least recently used go first."""

    def __init__(self, settings: Callable[[], Settings] = Settings.from_env, *, keep: int = 1000) -> None:
        self._settings = settings
        self._keep = keep
        self._demo: OrderedDict[str, World] = OrderedDict()
        self._live: World | None = None
        self._comps: CompsSource | None = None
        self._lock = threading.Lock()

    def get(self, name: str, thread_id: str | None = None) -> World:
        """The world ``name`` ("demo" or "live") for a run on ``thread_id``."""
        with self._lock:
            if name == "live":
                if self._live is None:
                    self._live = live_world(self._settings(), comps=self._shipped_comps())
                return self._live
            if name != "demo":
                raise ConfigurationError("world", f"expected one of {', '.join(WORLDS)}, got {name!r}")
            key = thread_id or ""
            world = self._demo.get(key)
            if world is None:
                world = demo_world(comps=self._shipped_comps())
                self._demo[key] = world
                while len(self._demo) > self._keep:
                    self._demo.popitem(last=False)
            self._demo.move_to_end(key)
            return world

    def demo_of(self, thread_id: str) -> World | None:
        """The demo world of ``thread_id`` if a run made one (never makes one)."""
        with self._lock:
            return self._demo.get(thread_id)

    def _shipped_comps(self) -> CompsSource:
        if self._comps is None:
            comps = IndexedComps()
            _ = comps.index  # read the shipped CSV now, not inside a run's event loop
            self._comps = comps
        return self._comps


def with_overrides(rules: Rules, **overrides: Any) -> Rules:
    """``rules`` with every override that is set (not empty) applied."""
    return replace(rules, **{k: v for k, v in overrides.items() if v not in (None, "")})
