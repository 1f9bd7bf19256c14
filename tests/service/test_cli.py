"""The operator commands against a running ``lead-bot serve`` on the same Redis, and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .stack import ServeProcess, Stack, base_env, running_stack, wait_for

pytestmark = pytest.mark.slow


def lead_bot(stack: Stack | None, *args: str, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ghl_real_estate_ai.cli", *args]
    environment = env if env is not None else stack.env()  # type: ignore[union-attr]
    workdir = cwd if cwd is not None else stack.workdir  # type: ignore[union-attr]
    return subprocess.run(command, env=environment, cwd=workdir, capture_output=True, text=True, timeout=90)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_enroll_status_pause_resume_cancel(stack: Stack) -> None:
    cid = stack.add_lead(first_name="Dev")
    enrolled = lead_bot(stack, "enroll", cid)
    assert enrolled.returncode == 0, enrolled.stderr
    assert "enroll: done" in enrolled.stdout and "active" in enrolled.stdout
    wait_for(lambda: stack.ghl.sent_sms(cid), what="the day_3 text")

    status = lead_bot(stack, "status", cid)
    assert status.returncode == 0, status.stderr
    assert f"Lead {cid} (Dev Doe)" in status.stdout
    assert "status:" in status.stdout and "Timeline" in status.stdout and "day_3" in status.stdout
    as_json = json.loads(lead_bot(stack, "status", cid, "--json").stdout)
    assert as_json["contact_id"] == cid and as_json["next_step"] and as_json["next_due_at"].endswith("Z")
    assert as_json["timeline"][0]["action"] == "enroll"

    paused = lead_bot(stack, "pause", cid, "--reason", "lead asked for a week")
    assert paused.returncode == 0 and "paused (lead asked for a week)" in paused.stdout
    assert stack.lead(cid)["status"] == "paused"  # type: ignore[index]
    again = lead_bot(stack, "pause", cid)
    assert "not applied" in one_line_error(again)
    resumed = lead_bot(stack, "resume", cid)
    assert resumed.returncode == 0 and stack.lead(cid)["status"] in ("active", "nurture")  # type: ignore[index]
    queued = lead_bot(stack, "cancel", cid, "--no-wait")
    assert queued.returncode == 0 and "queued" in queued.stdout
    wait_for(lambda: (stack.lead(cid) or {}).get("status") == "cancelled", what="the queued cancel")
    status = json.loads(lead_bot(stack, "status", cid, "--json").stdout)
    assert status["status"] == "cancelled" and status["next_step"] is None


def test_bad_input_is_a_one_line_error(stack: Stack) -> None:
    assert "invalid contact id" in one_line_error(lead_bot(stack, "enroll", "bad id!"))
    assert "no lead sequence" in one_line_error(lead_bot(stack, "status", "nobody-here"))
    assert "enroll it first" in one_line_error(lead_bot(stack, "pause", "nobody-here"))
    unknown_contact = lead_bot(stack, "enroll", "NotAGhlContact000001")
    assert "not found" in one_line_error(unknown_contact).lower()
    bad_scale = lead_bot(None, "status", "x", env={**stack.env(), "LEAD_BOT_TIME_SCALE": "fast"},
                         cwd=stack.workdir)
    assert "LEAD_BOT_TIME_SCALE" in one_line_error(bad_scale)


def test_unreachable_redis_is_a_one_line_error(tmp_path: Path) -> None:
    env = base_env(REDIS_URL="redis://127.0.0.1:1/0")
    for args in (("enroll", "abc"), ("status", "abc"), ("pause", "abc"), ("dead-letters",), ("reconcile",)):
        line = one_line_error(lead_bot(None, *args, env=env, cwd=tmp_path))
        assert "cannot reach Redis" in line, line
    bad_url = lead_bot(None, "status", "abc", env=base_env(REDIS_URL="http://nope"), cwd=tmp_path)
    assert "REDIS_URL" in one_line_error(bad_url)


def test_dead_letters_are_listed_and_retried(stack: Stack) -> None:
    cid = stack.add_lead()
    # GHL refuses to read the contact (422): retrying cannot help, so the workflow's enrollment goes
    # straight to the dead letters; once GHL is fine again, a retry enrolls the lead.
    stack.ghl.script_faults([422], method="GET", path=f"/contacts/{cid}")
    with stack.api() as api:
        assert api.post("/webhooks/ghl/workflow", json={"contact_id": cid}).status_code == 200

    def listed() -> str:
        out = lead_bot(stack, "dead-letters").stdout
        return out if cid in out else ""

    listing = wait_for(listed, timeout=30, interval=0.2, what="the dead letter")
    assert "enroll" in listing and "422" in listing and "workflow" in listing
    assert stack.lead(cid) is None
    retried = lead_bot(stack, "dead-letters", "--retry")
    assert retried.returncode == 0 and "1 dead letter(s) requeued" in retried.stdout
    wait_for(lambda: stack.ghl.sent_sms(cid), what="the retried enrollment's day_3 text")
    assert lead_bot(stack, "dead-letters").stdout.strip() == "no dead letters"
    assert "no dead letter" in one_line_error(lead_bot(stack, "dead-letters", "--retry", "1-1"))


def test_reconcile_runs_against_the_service(stack: Stack) -> None:
    result = lead_bot(stack, "reconcile")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("reconcile: checked")


def test_without_redis_url_serve_and_commands_share_the_embedded_redis(tmp_path: Path) -> None:
    with running_stack(start=False) as stack:
        env = {k: v for k, v in stack.env().items() if k != "REDIS_URL"}
        serve = ServeProcess(env, tmp_path).start()
        try:
            cid = stack.add_lead()
            enrolled = lead_bot(None, "enroll", cid, env=env, cwd=tmp_path)
            assert enrolled.returncode == 0, enrolled.stderr
            wait_for(lambda: stack.ghl.sent_sms(cid), what="the day_3 text")
            status = lead_bot(None, "status", cid, "--json", env=env, cwd=tmp_path)
            assert json.loads(status.stdout)["contact_id"] == cid
            assert (tmp_path / ".lead-bot" / "redis" / "appendonly.aof").exists() or any(
                (tmp_path / ".lead-bot" / "redis").iterdir())
        finally:
            assert serve.stop() == 0


def test_locations_in_single_location_mode_and_install_url(stack: Stack) -> None:
    cid = stack.add_lead(first_name="Loc")
    assert lead_bot(stack, "enroll", cid).returncode == 0
    listed = lead_bot(stack, "locations", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [row["location_id"] for row in rows] == [stack.ghl.location_id]
    assert rows[0]["state"] == "private integration" and rows[0]["leads"].get("active", 0) >= 1
    table = lead_bot(stack, "locations")
    assert table.returncode == 0 and stack.ghl.location_id in table.stdout
    assert "GHL_OAUTH_CLIENT_ID" in one_line_error(lead_bot(stack, "install-url"))
    marketplace = base_env(GHL_OAUTH_CLIENT_ID="app123-abc", LEAD_BOT_PUBLIC_URL="https://bot.example.com")
    url = lead_bot(None, "install-url", env=marketplace, cwd=stack.workdir)
    assert url.returncode == 0, url.stderr
    assert url.stdout.strip().startswith("https://marketplace.gohighlevel.com/v2/oauth/chooselocation?")
    assert "redirect_uri=https%3A%2F%2Fbot.example.com%2Foauth%2Fcallback" in url.stdout
    assert "in Marketplace mode" in one_line_error(lead_bot(stack, "enroll", cid, "--location", "X"))


def test_serve_in_marketplace_mode_needs_the_secret_key(tmp_path: Path) -> None:
    env = base_env(GHL_OAUTH_CLIENT_ID="app123-abc", GHL_OAUTH_CLIENT_SECRET="s3cret")
    result = lead_bot(None, "serve", "--port", "0", env=env, cwd=tmp_path)
    assert "LEAD_BOT_SECRET_KEY: is not set" in one_line_error(result)
    bad = lead_bot(None, "serve", "--port", "0", env={**env, "LEAD_BOT_SECRET_KEY": "nope"}, cwd=tmp_path)
    assert "LEAD_BOT_SECRET_KEY: key 1 is not a Fernet key" in one_line_error(bad)
    neither = lead_bot(None, "serve", "--port", "0", env=base_env(), cwd=tmp_path)
    assert "GHL_OAUTH_CLIENT_ID and GHL_OAUTH_CLIENT_SECRET" in one_line_error(neither)
