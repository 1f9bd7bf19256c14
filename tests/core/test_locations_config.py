"""The locations file: what it may set, what its check refuses (naming the location and key), how a
location's settings sit on the defaults, and the words they produce."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from ghl_real_estate_ai import messages
from ghl_real_estate_ai.cli import main
from ghl_real_estate_ai.conversation import templates
from ghl_real_estate_ai.locations_config import LocationsFileError, check_locations_file
from ghl_real_estate_ai.sequence import QuietHours, Window

GOOD = '''
[defaults]
agent_name = "Sam"
program_name = "Team"
llm_responder = false

[locations."LocA"]
agent_name = "Ana"
quiet_hours = "09:00-19:00,TX=10:00-18:00"
[locations."LocA".templates]
day_3_sms = "Hey {first_name}, {agent_name} here{area}. Reply STOP to opt out."
nurture_sms = ["A {first_name}", "B {first_name}"]
other_reply = "Thanks {first_name}! {agent} will be in touch."
'''


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "locations.toml"
    path.write_text(text)
    return path


def test_a_location_overrides_the_defaults_key_by_key(tmp_path: Path) -> None:
    checked = check_locations_file(_write(tmp_path, GOOD))
    a, other = checked.for_location("LocA"), checked.for_location("LocZ")
    assert (a.agent_name, a.program_name, a.llm_responder) == ("Ana", "Team", False)
    assert (other.agent_name, other.templates) == ("Sam", {})
    values = messages.fields({"first_name": "Jo", "city": "Waco"}, agent_name="Ana", program_name="Team")
    assert messages.sms_for("day_3", values, words=a.templates) == (
        "Hey Jo, Ana here in Waco. Reply STOP to opt out.")
    assert messages.sms_for("nurture", values, 3, words=a.templates) == "B Jo"
    assert messages.sms_for("day_30", values, words=a.templates) == messages.sms_for("day_30", values)
    assert templates.other_reply("Jo", "Ana", a.templates) == "Thanks Jo! Ana will be in touch."


def test_quiet_hours_only_narrow() -> None:
    from ghl_real_estate_ai.locations_config import narrowed

    narrow = narrowed(QuietHours(), "06:00-19:00,TX=10:00-22:00")
    assert narrow.default == Window(time(8), time(19))
    assert narrow.window_for("TX") == Window(time(10), time(21))  # its own TX window, within 8-21
    assert narrow.window_for("FL") == Window(time(8), time(19))


@pytest.mark.parametrize(("text", "where", "key", "problem"), [
    ('[locations."LocB"]\nagent_nme = "x"', '[locations."LocB"]', "agent_nme", "unknown key"),
    ('[locations."LocB".templates]\nday_3_sms = "Hi {first}. Reply STOP"', '[locations."LocB"]',
     "templates.day_3_sms", "unknown field {first}"),
    ('[defaults.templates]\nday_3_sms = "Hi {first_name}!"', "[defaults]", "templates.day_3_sms",
     "opt-out footer"),
    ('[locations."LocC".templates]\nday_30_sms = "' + "x" * 300 + ' {agent_name}"', '[locations."LocC"]',
     "templates.day_30_sms", "an SMS may have at most 320"),
    ('[locations."LocC".templates]\ndaily_sms = "x"', '[locations."LocC"]', "templates.daily_sms",
     "unknown template"),
    ('[locations."LocC"]\nquiet_hours = "late"', '[locations."LocC"]', "quiet_hours", ""),
    ('[locations."LocC"]\nllm_responder = "yes"', '[locations."LocC"]', "llm_responder", "boolean"),
    ('[locations."LocC".templates]\nstall_breaker_sms = "one"', '[locations."LocC"]',
     "templates.stall_breaker_sms", "list"),
    ("[extras]\na = 1", "top level", "extras", "unknown table"),
])
def test_the_check_names_the_location_and_the_key(tmp_path: Path, text: str, where: str, key: str,
                                                  problem: str) -> None:
    with pytest.raises(LocationsFileError) as caught:
        check_locations_file(_write(tmp_path, text))
    message = str(caught.value)
    assert where in message and repr(key) in message and problem in message


def test_locations_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["locations", "check", str(_write(tmp_path, GOOD))]) == 0
    assert "ok (1 location(s) and the defaults)" in capsys.readouterr().out
    bad = _write(tmp_path, '[locations."LocB".templates]\nday_3_sms = "Hi {first_name}"')
    assert main(["locations", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'locations."LocB"' in err[0] and "templates.day_3_sms" in err[0]
    assert main(["locations", "check", str(tmp_path / "missing.toml")]) == 2
    assert "cannot be read" in capsys.readouterr().err
