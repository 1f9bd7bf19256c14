"""``lead-bot demo`` and the CLI's error handling, run as a user would: a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ghl_real_estate_ai.demo import run_demo


async def test_demo_runs_every_story_in_memory() -> None:
    lines: list[str] = []
    sim = await run_demo(90, store="memory", out=lines.append)
    text = "\n".join(lines)
    states = {cid: await sim.state(cid) for cid in sim.contact_ids}
    assert states["demo-maria"]["sequence"]["status"] == "nurture"
    assert states["demo-chris"]["sequence"]["status"] == "opted_out"
    assert states["demo-ana"]["sequence"]["status"] == "qualified"
    assert states["demo-kai"]["cma"]["sent_at"]
    # Chris replied STOP on day 5: after the confirmation, nothing more of any kind.
    chris = sim.crm.sent_to("demo-chris")
    assert chris[-1].body.lower().startswith("you") and "unsubscribed" in chris[-1].body.lower()
    assert all(s.at.day <= 7 for s in chris)
    # Sam has no email: day_14 went by SMS.
    assert not sim.crm.sent_to("demo-sam", "email")
    assert "0 sent inside quiet hours" in text
    assert "Summary" in text


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ghl_real_estate_ai.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_lead_bot_demo_subprocess_with_the_embedded_store(tmp_path: Path) -> None:
    result = _cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "embedded Redis" in result.stdout
    assert "Maria Lopez" in result.stdout and "Summary" in result.stdout
    assert "0 sent inside quiet hours" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("demo", "--days", "0"), "--days must be between"),
        (("status",), "the following arguments are required: contact_id"),
        (("bogus",), "invalid choice"),
    ],
)
def test_cli_bad_input_is_one_line_and_nonzero(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
