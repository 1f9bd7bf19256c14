"""Marketplace mode through ``lead-bot serve``: installs (sub-account and agency bulk), per-location tokens,
settings and words, uninstall, one refresh across processes, ``needs_reinstall`` and forged events.

Everything is judged by what reaches the fakes (which token each request carried, the texts GHL got, the
calls Retell got) and by the service's public surface (routes, ``lead-bot locations``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import redis

from ghl_real_estate_ai.sequence import parse_time
from ghl_real_estate_ai.testing import webhooks

from .stack import API_TOKEN, ServeProcess, Stack, running_stack, wait_for

pytestmark = pytest.mark.slow

ALPHA, BRAVO, CHARLIE = "LocAlpha000000000001", "LocBravo000000000002", "LocCharlie00000000003"
AGENCY = "AgencyCompany0000001"

LOCATIONS_TOML = f'''
[defaults]
agent_name = "Dana Default"
program_name = "Agency Homes"

[locations."{ALPHA}"]
agent_name = "Al Alpha"
[locations."{ALPHA}".templates]
day_3_sms = "Howdy {{first_name}}! {{agent_name}} from Alpha Realty here. Buying or selling? Reply STOP to \
opt out."

[locations."{BRAVO}"]
agent_name = "Bea Bravo"
program_name = "Bravo Group"

[locations."{CHARLIE}"]
quiet_hours = "12:00-16:00"
retell_agent_id = "agent_charlie_000000000"
[locations."{CHARLIE}".templates]
day_3_sms = "Hello {{first_name}}, {{agent_name}} at Charlie Homes. Text STOP to opt out."
'''


def _app_id(stack: Stack) -> str:
    return stack.ghl.oauth_client_id.split("-")[0]


def _callback(stack: Stack, code: str, url: str | None = None) -> httpx.Response:
    return httpx.get((url or stack.url) + "/oauth/callback", params={"code": code}, timeout=30)


def _enroll(stack: Stack, contact_id: str, location_id: str, url: str | None = None) -> dict[str, Any]:
    response = httpx.post((url or stack.url) + f"/api/leads/{contact_id}/enroll", params={"wait": 20},
                          json={"location_id": location_id}, headers={"Authorization": f"Bearer {API_TOKEN}"},
                          timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["lead"]  # type: ignore[no-any-return]


def _sends_by_location(stack: Stack, contact_id: str) -> set[str]:
    """The location of the token every accepted send for ``contact_id`` was authorised with."""
    return {r.extra.get("location_id") for r in stack.ghl.requests_to("POST", "/conversations/messages")
            if isinstance(r.json, dict) and r.json.get("contactId") == contact_id and r.status < 300}


def _locations_cli(stack: Stack) -> list[dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "ghl_real_estate_ai.cli", "locations", "--json"],
                            env=stack.env(), cwd=stack.workdir, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _install_three(stack: Stack) -> None:
    """ALPHA by its sub-account admin; BRAVO and CHARLIE by the agency's bulk install."""
    response = _callback(stack, stack.ghl.authorize(ALPHA, company_id=AGENCY))
    assert response.status_code == 200 and response.json()["locations"] == [ALPHA], response.text
    response = _callback(stack, stack.ghl.authorize(company_id=AGENCY, locations=[BRAVO, CHARLIE]))
    assert response.status_code == 200, response.text
    assert sorted(response.json()["locations"]) == [ALPHA, BRAVO, CHARLIE]  # every one of the agency's


def test_three_locations_each_in_its_own_words_with_its_own_token_and_uninstall_stops_only_one(
        tmp_path: Path) -> None:
    locations_file = tmp_path / "locations.toml"
    locations_file.write_text(LOCATIONS_TOML)
    with running_stack(marketplace=True, LEAD_BOT_LOCATIONS_FILE=str(locations_file)) as stack:
        _install_three(stack)
        leads = {}
        for location, name in ((ALPHA, "Ann"), (BRAVO, "Ben"), (CHARLIE, "Cat")):
            cid = stack.ghl.add_contact(first_name=name, location_id=location)["id"]
            leads[location] = cid
            assert _enroll(stack, cid, location)["status"] == "active"
        for cid in leads.values():
            wait_for(lambda cid=cid: stack.ghl.sent_sms(cid), timeout=20, what="each day_3 text")

        assert stack.ghl.sent_sms(leads[ALPHA]) == [
            "Howdy Ann! Al Alpha from Alpha Realty here. Buying or selling? Reply STOP to opt out."]
        bravo_text = stack.ghl.sent_sms(leads[BRAVO])[0]
        assert bravo_text.startswith("Hi Ben, it's Bea Bravo with Bravo Group.")
        assert "Reply STOP" in bravo_text
        assert stack.ghl.sent_sms(leads[CHARLIE]) == [
            "Hello Cat, Dana Default at Charlie Homes. Text STOP to opt out."]
        for location, cid in leads.items():
            assert _sends_by_location(stack, cid) == {location}  # its own token, nobody else's
        # CHARLIE narrows its window to 12:00-16:00 (the lead's time): its day_3 went inside it.
        charlie = stack.lead(leads[CHARLIE])
        assert charlie is not None
        sent_at = next(parse_time(e["at"]) for e in charlie["timeline"] if e["action"] == "day_3")
        assert sent_at is not None
        assert 12 <= sent_at.astimezone(ZoneInfo("America/Chicago")).hour < 16

        # UNINSTALL of BRAVO: its lead is cancelled (state kept), its tokens deleted; the others go on.
        response = stack.ghl.emit(stack.url + "/webhooks/ghl",
                                  webhooks.app_uninstall(_app_id(stack), location_id=BRAVO))
        assert response.status_code == 200, response.text
        bravo = stack.lead(leads[BRAVO])
        assert bravo is not None and bravo["status"] == "cancelled"
        assert bravo["status_reason"] == "app uninstalled"
        assert any(e["action"] == "day_3" for e in bravo["timeline"])  # kept for audit
        client = redis.Redis.from_url(stack.redis.url)
        try:
            assert client.get(f"lead-bot:oauth:location:{BRAVO}") is None
            stored = client.get(f"lead-bot:oauth:location:{ALPHA}")
            assert stored is not None and b"access_token" not in stored  # encrypted at rest
        finally:
            client.close()
        refused = stack.post_ghl(stack.inbound(leads[BRAVO], "hello?"))
        assert refused.status_code == 403, refused.text
        # Four virtual days later ALPHA's and CHARLIE's day_7 calls go out; BRAVO gets nothing more.
        for location in (ALPHA, CHARLIE):
            wait_for(lambda location=location: stack.retell.calls_for_contact(leads[location]), timeout=30,
                     what=f"the day_7 call of {location}")
        assert stack.retell.calls_for_contact(leads[BRAVO]) == []
        assert stack.retell.calls_for_contact(leads[CHARLIE])[0]["agent_id"] == "agent_charlie_000000000"
        assert stack.retell.calls_for_contact(leads[ALPHA])[0]["agent_id"] != "agent_charlie_000000000"
        assert len(stack.ghl.sent_sms(leads[BRAVO])) == 1

        rows = {row["location_id"]: row for row in _locations_cli(stack)}
        assert rows[ALPHA]["state"] == "installed" and rows[ALPHA]["token_expires_at"]
        assert rows[BRAVO]["state"] == "uninstalled" and rows[BRAVO]["leads"] == {"cancelled": 1}
        assert rows[CHARLIE]["company_id"] == AGENCY and rows[CHARLIE]["leads"] == {"active": 1}
        # (sends_today counts the service's virtual day: at 86400x the day_3 day is long over)
        assert all(isinstance(row["sends_today"], int) and row["rate_limited_last_hour"] == 0
                   for row in rows.values())


def test_sighup_reloads_the_words_and_keeps_them_when_the_new_file_fails(tmp_path: Path) -> None:
    locations_file = tmp_path / "locations.toml"
    locations_file.write_text(LOCATIONS_TOML)
    with running_stack(marketplace=True, LEAD_BOT_LOCATIONS_FILE=str(locations_file)) as stack:
        assert _callback(stack, stack.ghl.authorize(ALPHA, company_id=AGENCY)).status_code == 200
        assert stack.serve is not None and stack.serve.process is not None
        locations_file.write_text(LOCATIONS_TOML.replace("Reply STOP to opt out.", "Bye."))  # no footer
        stack.serve.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        first = stack.ghl.add_contact(first_name="Ann", location_id=ALPHA)["id"]
        _enroll(stack, first, ALPHA)
        wait_for(lambda: stack.ghl.sent_sms(first), timeout=20, what="the day_3 text")
        assert stack.ghl.sent_sms(first)[0].startswith("Howdy Ann! Al Alpha")  # the old words stayed
        locations_file.write_text(LOCATIONS_TOML.replace("Howdy", "Hiya"))
        stack.serve.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        second = stack.ghl.add_contact(first_name="Bo", location_id=ALPHA)["id"]
        # Enrolled once: at 86400 the text may wait for the lead's window (half a real second a night), and
        # enrolling again meanwhile is answered 409 "already enrolled".
        _enroll(stack, second, ALPHA)
        wait_for(lambda: stack.ghl.sent_sms(second), timeout=20, what="the day_3 text after the reload")
        assert stack.ghl.sent_sms(second)[0].startswith("Hiya Bo! Al Alpha")


def test_concurrent_401s_in_two_processes_cause_one_refresh() -> None:
    with running_stack(marketplace=True) as stack:
        stack.ghl.refresh_reuse_window = 0.0  # strictly single-use refresh tokens: a second refresh fails
        assert _callback(stack, stack.ghl.authorize(ALPHA, company_id=AGENCY)).status_code == 200
        second = ServeProcess(stack.env(), stack.workdir).start()
        try:
            leads = [stack.ghl.add_contact(first_name=f"L{i}", location_id=ALPHA)["id"] for i in range(8)]
            for cid in leads:
                _enroll(stack, cid, ALPHA)
                wait_for(lambda cid=cid: stack.ghl.sent_sms(cid), timeout=20, what="day_3")
            assert stack.ghl.expire_access_tokens(ALPHA) >= 1
            for number, cid in enumerate(leads):
                url = stack.url if number % 2 else second.url
                signed = webhooks.sign_ghl_webhook(stack.inbound(cid, "What's the HOA fee?"))
                response = httpx.post(url + "/webhooks/ghl", content=signed.body, headers=signed.headers,
                                      timeout=30)
                assert response.status_code == 200, response.text
            for cid in leads:
                wait_for(lambda cid=cid: stack.replies(cid), timeout=30, what="every reply")
            assert stack.ghl.refreshes.get(ALPHA) == 1
            health = httpx.get(second.url + "/healthz", timeout=10).json()
            assert health["needs_reinstall"] == []
        finally:
            second.stop()


def test_lost_refresh_token_waits_for_a_reinstall_and_loses_nothing() -> None:
    with running_stack(marketplace=True) as stack:
        assert _callback(stack, stack.ghl.authorize(ALPHA, company_id=AGENCY)).status_code == 200
        cid = stack.ghl.add_contact(first_name="Ann", location_id=ALPHA)["id"]
        _enroll(stack, cid, ALPHA)
        wait_for(lambda: stack.ghl.sent_sms(cid), timeout=20, what="day_3")
        assert stack.ghl.lose_refresh_tokens(ALPHA) >= 1
        stack.ghl.expire_access_tokens(ALPHA)

        def reinstall_needed() -> bool:
            return ALPHA in httpx.get(stack.url + "/healthz", timeout=10).json().get("needs_reinstall", [])

        wait_for(reinstall_needed, timeout=30, what="needs_reinstall in /healthz")
        metrics = httpx.get(stack.url + "/metrics", timeout=10).text
        assert f'lead_bot_location_needs_reinstall{{location="{ALPHA}"}} 1.0' in metrics
        rows = {row["location_id"]: row for row in _locations_cli(stack)}
        assert rows[ALPHA]["state"] == "needs_reinstall"
        question = stack.post_ghl(stack.inbound(cid, "What's the HOA fee?"))  # accepted: it waits too
        assert question.status_code == 200, question.text
        time.sleep(3)  # three virtual days: day_7 is long due
        assert stack.retell.calls_for_contact(cid) == []
        assert len(stack.ghl.sent_sms(cid)) == 1
        client = redis.Redis.from_url(stack.redis.url)
        try:
            assert client.xlen("lead-bot:intake:dead") == 0  # the question waits, it is not dead-lettered
        finally:
            client.close()
        lead = stack.lead(cid)
        assert lead is not None and lead["status"] == "active" and lead["next_step"] == "day_7"

        assert _callback(stack, stack.ghl.authorize(ALPHA, company_id=AGENCY)).status_code == 200
        wait_for(lambda: stack.retell.calls_for_contact(cid), timeout=30,
                 what="the day_7 call after reinstall")
        assert not reinstall_needed()
        wait_for(lambda: stack.replies(cid), timeout=30, what="the answer to the question that waited")
        lead = stack.lead(cid)
        assert lead is not None and any(e["action"] == "day_7" for e in lead["timeline"])


def test_forged_install_and_events_of_locations_not_installed_are_refused() -> None:
    with running_stack(marketplace=True) as stack:
        install = webhooks.app_install(_app_id(stack), company_id=AGENCY, location_id=ALPHA)
        signed = webhooks.sign_ghl_webhook(install)
        forged = signed.body.replace(ALPHA.encode(), BRAVO.encode())
        response = httpx.post(stack.url + "/webhooks/ghl", content=forged, headers=signed.headers, timeout=30)
        assert response.status_code == 401, response.text
        other_app = stack.ghl.emit(stack.url + "/webhooks/ghl",
                                   webhooks.app_install("someoneelse", company_id=AGENCY, location_id=BRAVO))
        assert other_app.status_code == 400, other_app.text
        cid = stack.ghl.add_contact(first_name="Eve", location_id=CHARLIE)["id"]
        refused = stack.post_ghl(stack.inbound(cid, "hi"))
        assert refused.status_code == 403 and "not installed" in refused.json()["error"]
        client = redis.Redis.from_url(stack.redis.url)
        try:
            assert client.xlen("lead-bot:intake") == 0 and not client.keys("lead-bot:intake:seen:*")
        finally:
            client.close()
        assert _locations_cli(stack) == []

        # INSTALL before the code exchange, or after it: the same end state.
        early = stack.ghl.emit(stack.url + "/webhooks/ghl", install)
        assert early.status_code == 200 and "pending" in early.json()["detail"]
        assert _callback(stack, stack.ghl.authorize(ALPHA, company_id=AGENCY)).status_code == 200
        assert _callback(stack, stack.ghl.authorize(BRAVO, company_id=AGENCY)).status_code == 200
        late = stack.ghl.emit(stack.url + "/webhooks/ghl",
                              webhooks.app_install(_app_id(stack), company_id=AGENCY, location_id=BRAVO))
        assert late.status_code == 200 and late.json()["detail"] == "already installed"
        rows = {row["location_id"]: row for row in _locations_cli(stack)}
        assert {loc: (row["state"], bool(row["token_expires_at"])) for loc, row in rows.items()} == {
            ALPHA: ("installed", True), BRAVO: ("installed", True)}
