"""``lead-bot simulate`` end to end (a real subprocess, 500 leads, as CI runs it), the world it builds, and
proof that its auditor is not vacuous: a bot with the old quiet-hours reading fails it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ghl_real_estate_ai.compliance import build_world, play, simulate
from ghl_real_estate_ai.compliance.audit import CLASSES, audit
from ghl_real_estate_ai.sequence import LeadLocale, QuietHours, resolve_locale
from ghl_real_estate_ai.us_geo import STATE_ZONES


def test_simulate_500_leads_through_the_cli_has_no_violation(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "ghl_real_estate_ai.cli", "simulate", "--leads", "500", "--days", "90",
         "--seed", "7", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["violations"] == dict.fromkeys(CLASSES, 0)
    assert "Violations: quiet_hours 0" in done.stdout
    # The run exercised what it claims to: opt-outs, the daily cap, redeliveries, late and double fires.
    assert report["leads"] == 500 and report["events"] > 3000
    assert report["opt_outs"] > 20 and report["cap_reached"] > 5
    assert report["redeliveries"] > 0 and report["double_fires"] > 20 and report["late_fires"] > 200
    assert report["expected_silent_sends"] > 1000 and report["sends"] > 2500


def test_bad_arguments_get_one_line_errors(tmp_path: Path) -> None:
    for args in (["--leads", "0"], ["--days", "9999"], ["--json", str(tmp_path / "no" / "r.json")]):
        done = subprocess.run([sys.executable, "-m", "ghl_real_estate_ai.cli", "simulate", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("lead-bot simulate: ")


def test_the_world_is_varied_and_reproducible() -> None:
    world = build_world(2000, 90, seed=3)
    again = build_world(2000, 90, seed=3)
    assert [lead.record for lead in world[:50]] == [lead.record for lead in again[:50]]
    behaviours = Counter(lead.behaviour for lead in world)
    assert 0.55 < behaviours["silent"] / 2000 < 0.65 and behaviours["opt_out"] > 150
    records = [lead.record for lead in world]
    assert sum(r["phone"] is None for r in records) > 50 and sum(r["email"] is None for r in records) > 200
    assert sum(r["timezone"] is None and r["state"] is None for r in records) > 100  # area code only
    assert sum(bool(r["dndSettings"]) for r in records) > 40
    states = {r["state"] for r in records}
    assert {"FL", "OK", "WA", "MD", "AZ", "HI"} <= states
    # Some leads' number is from another state than their time zone's (what the strict reading is for).
    assert any(r["timezone"] and r["phone"] and r["timezone"] not in STATE_ZONES.get(r["state"] or "", ())
               for r in records)
    hours = {lead.enrolls[0].hour for lead in world}
    assert len(hours) == 24  # enrolled at all hours
    opt_outs = [m for lead in world for m in lead.inbound if m.intent == "opt_out"]
    assert {m.channel for m in opt_outs} == {"sms", "email"}


async def test_the_auditor_catches_a_bot_with_the_old_quiet_hours_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def old_reading(quiet: QuietHours, *, timezone: str | None, state: str | None,
                    phone: str | None) -> LeadLocale:
        locale = resolve_locale(quiet, timezone=timezone, state=None, phone=None)
        return LeadLocale(locale.zones[:1], quiet.default, locale.basis) if timezone else resolve_locale(
            quiet, timezone=timezone, state=state, phone=phone)

    monkeypatch.setattr("ghl_real_estate_ai.agents.lead_bot.nodes.common.resolve_locale", old_reading)
    world = build_world(400, 40, seed=5)
    report = audit(await play(world, 40, seed=5))
    counts: dict[str, Any] = report.counts()
    assert counts["strict_area_code"] > 0
    assert counts["duplicate_step"] == counts["missed_step"] == counts["after_opt_out"] == 0


async def test_same_seed_same_sends() -> None:
    first = await simulate(60, 30, 11)
    second = await simulate(60, 30, 11)
    def sends(report: Any) -> list[tuple[str, str, str]]:
        return [(d.sent.contact_id, d.sent.step, d.sent.at.isoformat()) for d in report.played.deliveries]
    assert sends(first) == sends(second) and first.ok


async def test_the_daily_cap_holds_the_fourth_re_enrollment_touch() -> None:
    world = [lead for lead in build_world(400, 10, seed=2)
             if lead.behaviour == "cap_pusher" and "SMS" not in lead.record["dndSettings"]]
    assert len(world) >= 5
    played = await play(world, 10, seed=2)
    for lead in world:
        first_day = sorted(d.sent.at for d in played.deliveries
                           if d.sent.contact_id == lead.id and d.sent.step == "day_3" and not d.refused)
        assert len(first_day) == 4, lead.id  # one per enrollment
        # Three within the 24 hours the cap counts; the fourth waits until the first is 24 hours old.
        assert first_day[2] - first_day[0] < timedelta(hours=24)
        assert first_day[3] - first_day[0] >= timedelta(hours=24)
        assert first_day[3] - lead.enrolls[3] >= timedelta(hours=19)  # not sent at once: held
