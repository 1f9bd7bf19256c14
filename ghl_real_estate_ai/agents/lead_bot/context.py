"""The runtime context: every service a node may use arrives here, never through module globals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ghl_real_estate_ai.clock import Clock, SystemClock
from ghl_real_estate_ai.integrations.models import Crm, VoiceCaller
from ghl_real_estate_ai.sequence import QuietHours
from ghl_real_estate_ai.services.send_ledger import InMemorySendLedger, SendLedger

if TYPE_CHECKING:
    from ghl_real_estate_ai.conversation.cma import CompsProvider
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


@dataclass
class Context:
    """Services for ``Runtime[Context]``. ``crm`` is GHL, ``voice`` is Retell."""

    crm: Crm
    voice: VoiceCaller
    clock: Clock = field(default_factory=SystemClock)
    ledger: SendLedger = field(default_factory=InMemorySendLedger)
    rules: Rules = field(default_factory=Rules)
    responder: Responder | None = None
    comps: CompsProvider | None = None
