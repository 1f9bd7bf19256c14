"""``lead-bot simulate``: the project's own compliance simulator and auditor.

A simulated quarter (``world``) of realistic leads, delivered as GHL and APScheduler really deliver, run
through the bot with the in-process fakes; an auditor (``audit``) that reads only what reached the fakes
and reports violations by class. Operators run it with their own settings (quiet hours, words) before
going live; CI runs it at 500 leads, ``benchmarks/simulate.py`` at 10,000.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ghl_real_estate_ai.agents.lead_bot import Rules
from ghl_real_estate_ai.compliance.audit import CLASSES, Report, Violation, audit
from ghl_real_estate_ai.compliance.world import DEFAULT_START, Lead, Played, build_world, play
from ghl_real_estate_ai.config import Settings


def rules_from_settings(settings: Settings) -> Rules:
    """The rules ``lead-bot serve`` would run with, from the operator's settings."""
    return Rules(
        quiet_hours=settings.quiet_hours,
        program_name=settings.program_name,
        agent_name=settings.agent_name,
        agent_contact=settings.agent_contact,
        human_takeover_days=settings.human_takeover_days,
    )


async def simulate(leads: int, days: int, seed: int, rules: Rules | None = None) -> Report:
    """Build the world, play it through the bot and audit what reached the fakes."""
    rules = rules or Rules()
    world = build_world(leads, days, seed)
    played = await play(world, days, seed=seed, rules=rules)
    return audit(played, rules.quiet_hours)


def report_json(report: Report, *, seed: int, limit: int = 1000) -> dict[str, Any]:
    p = report.played
    return {
        "leads": len(p.leads),
        "days": (p.end - p.start).days,
        "seed": seed,
        "events": p.events,
        "seconds": round(p.seconds, 3),
        "events_per_second": round(p.events / p.seconds, 1) if p.seconds else None,
        "peak_rss_bytes": p.peak_bytes,
        "sends": report.sends,
        "refused": report.refused,
        "opt_outs": report.opt_outs,
        "expected_silent_sends": report.expected_silent_sends,
        "cap_reached": report.cap_reached,
        "redeliveries": p.redeliveries,
        "double_fires": p.double_fires,
        "late_fires": p.late_fires,
        "violations": report.counts(),
        "examples": [
            {"class": v.kind, "contact_id": v.contact_id, "at": v.at.isoformat() if v.at else None,
             "detail": v.detail}
            for v in report.violations[:limit]
        ],
    }


def write_json(report: Report, path: Path, *, seed: int) -> None:
    path.write_text(json.dumps(report_json(report, seed=seed), indent=2) + "\n")


__all__ = [
    "CLASSES",
    "DEFAULT_START",
    "Lead",
    "Played",
    "Report",
    "Violation",
    "audit",
    "build_world",
    "play",
    "report_json",
    "rules_from_settings",
    "simulate",
    "write_json",
]
