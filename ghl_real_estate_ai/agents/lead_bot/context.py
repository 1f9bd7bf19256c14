"""The runtime context: every service a node may use arrives here, never through module globals."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ghl_real_estate_ai.clock import Clock, SystemClock
from ghl_real_estate_ai.integrations.models import Crm, VoiceCaller
from ghl_real_estate_ai.sequence import QuietHours
from ghl_real_estate_ai.services.send_ledger import InMemorySendLedger, SendLedger

if TYPE_CHECKING:
    from ghl_real_estate_ai.comps import CompsSource
    from ghl_real_estate_ai.conversation.responders import Responder


@dataclass(frozen=True)
class Rules:
    """The tunable business rules a node needs."""

    quiet_hours: QuietHours = field(default_factory=QuietHours)
    program_name: str = "Lead Bot"
    agent_name: str = "your agent"
    agent_contact: str = ""
    human_takeover_days: float = 7.0
    opt_out_tags: tuple[str, ...] = ("lead-bot-opted-out", "dnd", "do-not-contact")
    human_owner_tags: tuple[str, ...] = ("lead-bot-human", "human-takeover")
    # A timed send is not started this close to the end of the lead's window: the request must reach GHL
    # or Retell inside it. ``lead-bot serve`` sets it from the time scale (a real instant is long in
    # virtual time); 0 checks only the instant of the decision.
    send_margin: timedelta = timedelta(0)
    # A location's own templates by name (``locations_config.TEMPLATE_FIELDS``); empty: the built-in words.
    words: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """Services for ``Runtime[Context]``. ``crm`` is GHL, ``voice`` is Retell. ``readback_delay_seconds``
    is how long (real seconds) a step waits after a send whose answer never came before it reads the
    provider back to learn whether it went through."""

    crm: Crm
    voice: VoiceCaller
    clock: Clock = field(default_factory=SystemClock)
    ledger: SendLedger = field(default_factory=InMemorySendLedger)
    rules: Rules = field(default_factory=Rules)
    responder: Responder | None = None
    comps: CompsSource | None = None
    readback_delay_seconds: float = 0.0
