"""The simulated quarter: leads as a real team gets them, behaving as real leads do, delivered the way GHL
and APScheduler really deliver (webhooks redelivered, jobs fired twice or late).

``build_world`` makes the leads and their scripts from a seed; ``play`` runs them through the bot (the
graph with the in-process GHL and Retell fakes, on a virtual clock) and returns what reached the fakes,
each send attributed to the event being handled when it arrived. Nothing here reads the bot's state: the
auditor (``audit``) judges the bot only by the fakes' records and by the facts of this world.
"""

from __future__ import annotations

import copy
import random
import resource
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.memory import InMemorySaver

from ghl_real_estate_ai.agents.lead_bot import Event, Rules
from ghl_real_estate_ai.sandbox.fakes import Sent, make_contact
from ghl_real_estate_ai.sandbox.simulation import Simulation
from ghl_real_estate_ai.us_geo import AREA_CODE_STATE, STATE_ZONES

# Monday 2026-03-02 00:00 UTC; a 90-day run crosses the DST change on 2026-03-08.
DEFAULT_START = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
ENROLLMENT_SPREAD = timedelta(days=14)

# Where leads live (weights), with the strict-window states well represented.
STATE_WEIGHTS: dict[str, int] = {
    "FL": 12, "TX": 11, "CA": 11, "NY": 7, "WA": 6, "OK": 5, "MD": 5, "AZ": 5, "HI": 3, "AK": 2, "IL": 5,
    "CO": 4, "GA": 4, "OR": 3, "IN": 3, "TN": 3, "KS": 2, "ID": 2, "NC": 3, "PA": 3, "MI": 2,
}  # fmt: skip
OTHER_ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Phoenix",
               "America/Los_Angeles", "America/Anchorage", "Pacific/Honolulu")

# Behaviour mix (weights out of 100).
BEHAVIOURS: dict[str, int] = {
    "silent": 60, "opt_out": 10, "question": 8, "home_value": 4, "interested": 4, "not_interested": 4,
    "has_agent": 2, "chatty": 5, "cap_pusher": 3,
}  # fmt: skip

OPT_OUT_SMS = ("STOP", "stop", "Unsubscribe", "please stop texting me", "Wrong number", "STOP!!")
OPT_OUT_EMAIL = ("Please unsubscribe me from these emails", "unsubscribe", "Stop emailing me")
QUESTIONS = (
    "What are HOA fees like in those neighborhoods?",
    "Do any of them have a pool?",
    "What about schools nearby?",
    "Is there anything under 400k?",
    "How long do homes sit on the market right now?",
)
CHATTER = ("ok", "thanks!", "What about parking?", "hmm, any with a big yard?", "sounds good",
           "Do you have more listings?")

REDELIVERY_RATE = 0.03
DOUBLE_FIRE_RATE = 0.03
LATE_FIRE_RATE = 0.20
LATE_FIRE_MAX = timedelta(minutes=15)


@dataclass
class Inbound:
    at: datetime
    message_id: str
    channel: str
    text: str
    intent: str  # what the simulator meant: "opt_out", "question", ...


@dataclass
class Lead:
    """One lead as the simulator made it: its GHL record, behaviour and script (the auditor's facts)."""

    record: dict[str, Any]
    behaviour: str
    enrolls: list[datetime] = field(default_factory=list)
    cancels: list[datetime] = field(default_factory=list)
    inbound: list[Inbound] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def opt_out(self) -> Inbound | None:
        return next((m for m in self.inbound if m.intent == "opt_out"), None)


@dataclass
class Delivery:
    """One send that reached a fake (or was refused by it), with the event being handled when it came."""

    sent: Sent
    event_type: str
    message_id: str | None  # the inbound message being answered, for replies
    refused: bool = False


@dataclass
class Played:
    leads: list[Lead]
    deliveries: list[Delivery]
    start: datetime
    end: datetime
    events: int
    redeliveries: int
    double_fires: int
    late_fires: int
    seconds: float
    peak_bytes: int  # the process's peak resident set size


class _ByReference:
    """A serializer that keeps values as they are. Safe here because every reducer of the lead state
    builds a new value rather than changing the stored one, and only the latest checkpoint is kept; the
    suite runs the same graph on serializing savers (``InMemorySaver`` and both Redis savers)."""

    def dumps_typed(self, obj: Any) -> tuple[str, Any]:
        return "ref", obj

    def loads_typed(self, data: tuple[str, Any]) -> Any:
        return data[1]


class LatestOnlySaver(InMemorySaver):
    """An in-memory saver for simulations: it keeps only each thread's latest checkpoint (no time
    travel), so memory stays flat per lead however many events it sees, and holds values by reference
    instead of serializing them."""

    def __init__(self) -> None:
        super().__init__()
        self.serde = _ByReference()
        self._blob_keys: dict[tuple[str, str], set[tuple[str, str, str, Any]]] = defaultdict(set)

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        saved = super().put(config, checkpoint, metadata, new_versions)
        thread_id = str(config["configurable"]["thread_id"])
        ns = str(config["configurable"].get("checkpoint_ns", ""))
        stored = self.storage[thread_id][ns]
        for old_id in [cid for cid in stored if cid != checkpoint["id"]]:
            del stored[old_id]
            self.writes.pop((thread_id, ns, old_id), None)
        keys = self._blob_keys[(thread_id, ns)]
        keys.update((thread_id, ns, channel, version) for channel, version in new_versions.items())
        live = {(thread_id, ns, channel, version)
                for channel, version in checkpoint["channel_versions"].items()}
        for key in keys - live:
            self.blobs.pop(key, None)
        keys &= live
        return saved


def _phone(rng: random.Random, state: str) -> str:
    codes = [code for code, owner in AREA_CODE_STATE.items() if owner == state]
    return f"+1{rng.choice(codes)}555{rng.randrange(10000):04d}"


def _contact(rng: random.Random, index: int, behaviour: str) -> dict[str, Any]:
    states = list(STATE_WEIGHTS)
    state = rng.choices(states, weights=[STATE_WEIGHTS[s] for s in states])[0]
    if behaviour == "cap_pusher":  # they must reach the bot in daytime: keep them on the mainland
        state = rng.choice(("TX", "FL", "NY", "IL", "GA"))
    roll = rng.random()
    if roll < 0.65:
        timezone: str | None = rng.choice(STATE_ZONES[state])
    elif roll < 0.75:
        timezone = rng.choice(OTHER_ZONES)  # moved, or bad data
    else:
        timezone = None
    phone: str | None = None
    if rng.random() < 0.92 or behaviour == "cap_pusher":
        # Mostly a local number; some keep a number from another state (the strict-window ones often).
        other = rng.choice(("FL", "OK", "WA", "MD", "NY", "CA", "TX"))
        phone = _phone(rng, state if rng.random() < 0.8 else other)
    area_code_only = rng.random() < 0.08
    email = f"lead{index}@example.com" if rng.random() < 0.8 or phone is None else None
    dnd_channels = {}
    if rng.random() < 0.03:
        dnd_channels["SMS"] = "active"
    if rng.random() < 0.02:
        dnd_channels["Call"] = "active"
    return make_contact(
        f"sim-{index:05d}",
        first_name=rng.choice(("Ana", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo")),
        last_name=f"Lead{index}",
        email=email,
        phone=phone,
        timezone=None if area_code_only else timezone,
        state=None if area_code_only or rng.random() < 0.15 else state,
        city=None,
        address=f"{100 + index % 900} Main St",
        postal_code=None,
        dnd_channels=dnd_channels,
    )


def build_world(leads: int, days: int, seed: int, start: datetime = DEFAULT_START) -> list[Lead]:
    """``leads`` leads enrolled over the first two weeks (any hour), with behaviours and their scripts."""
    rng = random.Random(seed)
    names = list(BEHAVIOURS)
    world: list[Lead] = []
    spread = min(ENROLLMENT_SPREAD, timedelta(days=max(1, days) / 3))
    for index in range(leads):
        behaviour = rng.choices(names, weights=[BEHAVIOURS[n] for n in names])[0]
        lead = Lead(_contact(rng, index, behaviour), behaviour)
        enrolled = start + timedelta(seconds=rng.uniform(0, spread.total_seconds()))
        if behaviour == "cap_pusher":
            # A CRM workflow that cancels and re-enrolls the lead every 40 minutes around noon Eastern:
            # four day_3 touches would land within a few hours, so the daily cap must hold the fourth.
            day = enrolled.replace(hour=16, minute=0, second=0, microsecond=0)
            for cycle in range(4):
                lead.enrolls.append(day + timedelta(minutes=80 * cycle))
                if cycle < 3:
                    lead.cancels.append(day + timedelta(minutes=80 * cycle + 40))
        else:
            lead.enrolls.append(enrolled)
        _script(rng, lead, enrolled, days, start)
        world.append(lead)
    return world


def _script(rng: random.Random, lead: Lead, enrolled: datetime, days: int, start: datetime) -> None:
    end = start + timedelta(days=days)
    record = lead.record
    channel = "sms" if record.get("phone") else "email"
    count = 0

    def says(at: datetime, text: str, intent: str, on: str | None = None) -> None:
        nonlocal count
        if at < end:
            count += 1
            lead.inbound.append(Inbound(at, f"{lead.id}-m{count}", on or channel, text, intent))

    def some_time(earliest: float, latest: float) -> datetime:
        return enrolled + timedelta(hours=rng.uniform(earliest, latest) * 24)

    match lead.behaviour:
        case "opt_out":
            if record.get("email") and (rng.random() < 0.25 or channel == "email"):
                says(some_time(0.1, 40), rng.choice(OPT_OUT_EMAIL), "opt_out", "email")
            else:
                says(some_time(0.1, 40), rng.choice(OPT_OUT_SMS), "opt_out")
        case "question":
            for _ in range(rng.randint(1, 3)):
                says(some_time(0.1, 45), rng.choice(QUESTIONS), "question")
        case "home_value":
            says(some_time(0.1, 30), "what's my house worth?", "home_value")
        case "interested":
            says(some_time(0.1, 30), "Yes! Can you call me Saturday?", "interested")
        case "not_interested":
            says(some_time(0.1, 30), "Not interested right now, thanks", "not_interested")
        case "has_agent":
            says(some_time(0.1, 30), "We're already working with a realtor", "has_agent")
        case "chatty":
            first = some_time(0.1, 20)
            for hour in sorted(rng.uniform(0, 72) for _ in range(rng.randint(6, 12))):
                says(first + timedelta(hours=hour), rng.choice(CHATTER), "chatter")
    lead.inbound.sort(key=lambda m: m.at)


async def play(world: list[Lead], days: int, *, seed: int, rules: Rules | None = None,
               start: datetime = DEFAULT_START) -> Played:
    """Run the world through the bot and collect what reached the fakes."""
    rng = random.Random(seed * 7919 + 1)
    # One checkpoint per run, and only each lead's latest kept: 10,000 leads' histories would not fit.
    sim = Simulation(start, rules=rules, checkpointer=LatestOnlySaver(), durability="exit")
    end = start + timedelta(days=days)
    redeliveries = double_fires = late_fires = 0
    for lead in world:
        sim.add_lead(copy.deepcopy(lead.record))  # the fake's copy changes (DND on STOP); the facts don't
        for at in lead.enrolls:
            sim.schedule(at, lead.id, {"type": "enroll", "source": "simulation"})
        for at in lead.cancels:
            sim.schedule(at, lead.id, {"type": "cancel", "reason": "CRM workflow re-enrolls the lead"})
        for message in lead.inbound:
            event: Event = {"type": "inbound_message", "text": message.text, "channel": message.channel,
                            "message_id": message.message_id}
            sim.schedule(message.at, lead.id, event)
            if rng.random() < REDELIVERY_RATE:  # GHL redelivers a webhook it saw no 200 for
                redeliveries += 1
                sim.schedule(message.at + timedelta(minutes=rng.uniform(1, 10)), lead.id, event)

    def fire(due: datetime, contact_id: str, step: str) -> list[timedelta]:
        nonlocal double_fires, late_fires
        delay = timedelta(0)
        if rng.random() < LATE_FIRE_RATE:
            late_fires += 1
            delay = LATE_FIRE_MAX * rng.random()
        fires = [delay]
        if rng.random() < DOUBLE_FIRE_RATE:
            double_fires += 1
            fires.append(delay + timedelta(minutes=rng.uniform(0, 5)))
        return fires

    sim.fire = fire
    deliveries: list[Delivery] = []
    dispatch = sim.dispatch

    async def attributed(contact_id: str, event: Any) -> dict[str, Any]:
        sent, refused = len(sim.crm.sent), len(sim.crm.refused)
        try:
            return await dispatch(contact_id, event)
        finally:
            kind, message_id = event.get("type", ""), event.get("message_id")
            deliveries.extend(Delivery(s, kind, message_id) for s in sim.crm.sent[sent:])
            deliveries.extend(Delivery(s, kind, message_id, refused=True) for s in sim.crm.refused[refused:])

    sim.dispatch = attributed  # type: ignore[method-assign]
    began = time.perf_counter()
    await sim.run_until(end)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return Played(world, deliveries, start, end, sim.events_run, redeliveries, double_fires, late_fires,
                  seconds, peak)
