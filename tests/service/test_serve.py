"""``lead-bot serve`` end to end: the sequence, replies, Retell results, signatures, dedupe and the API."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from ghl_real_estate_ai.sequence import parse_time
from ghl_real_estate_ai.testing import webhooks
from ghl_real_estate_ai.testing.keys import sign_ghl

from .stack import API_TOKEN, Stack, base_env, running_stack, wait_for

pytestmark = pytest.mark.slow


def _steps(lead: dict) -> dict[str, list[str]]:
    """step -> outcomes, from the lead's timeline."""
    found: dict[str, list[str]] = {}
    for item in lead["timeline"]:
        found.setdefault(item["action"], []).append(item["outcome"])
    return found


def test_one_lead_through_the_whole_sequence() -> None:
    """At 86400x a virtual day passes each second: day_3 SMS, day_7 call, day_14 email, day_30 SMS, then
    nurture is scheduled; each touch exactly once, with times anchored to enrollment."""
    with running_stack() as stack:
        cid = stack.add_lead(first_name="Maria", phone="+15125550101", email="maria@example.com")
        enrolled = stack.enroll(cid)
        assert enrolled["status"] == "active"
        wait_for(lambda: (stack.lead(cid) or {}).get("completed", {}).get("day_30"), timeout=60,
                 what="day_30 to complete")
        lead = stack.lead(cid)
        assert lead is not None
        steps = _steps(lead)
        for step in ("day_3", "day_7", "day_14", "day_30"):
            assert steps[step].count("sent") == 1, (step, lead["timeline"])
        assert lead["status"] == "nurture"
        assert lead["next_step"] == "nurture"
        enrolled_at = parse_time(lead["enrolled_at"])
        assert enrolled_at is not None
        assert parse_time(lead["next_due_at"]) >= enrolled_at + timedelta(days=57)  # type: ignore[operator]

        sms = stack.ghl.sent_sms(cid)
        assert len(sms) == 2  # day_3 and day_30
        assert len(stack.ghl.sent_emails(cid)) == 1
        calls = stack.retell.calls_for_contact(cid)
        assert len(calls) == 1 and calls[0]["metadata"]["sequence_step"] == "day_7"
        for item in lead["timeline"]:  # virtual ISO 8601 UTC times with reasons
            assert item["at"].endswith("Z") and item["reason"]


def test_signed_inbound_reply_is_answered(stack: Stack) -> None:
    cid = stack.add_lead()
    stack.enroll(cid)
    wait_for(lambda: stack.ghl.sent_sms(cid), what="the day_3 text")
    response = stack.post_ghl(stack.inbound(cid, "What are HOA fees like in that area?"))
    assert response.status_code == 200 and response.json()["status"] == "accepted"
    replies = wait_for(lambda: stack.replies(cid), what="the reply SMS")
    assert len(replies) == 1
    lead = stack.lead(cid)
    assert lead is not None and lead["engagement"]["replies"] == 1
    assert any(item["action"] == "reply" and item["outcome"] == "sent" for item in lead["timeline"])


def test_email_reply_is_answered_by_email(stack: Stack) -> None:
    cid = stack.add_lead()
    stack.enroll(cid)
    wait_for(lambda: stack.ghl.sent_sms(cid), what="the day_3 text")
    emails_before = len(stack.ghl.sent_emails(cid))
    payload = stack.inbound(cid, "<p>What are the HOA fees like?</p>", message_type="Email")
    assert stack.post_ghl(payload).json()["status"] == "accepted"
    wait_for(lambda: len(stack.ghl.sent_emails(cid)) > emails_before, what="the reply email")


def test_retell_result_webhook_is_applied(stack: Stack) -> None:
    cid = stack.add_lead()
    stack.enroll(cid)
    call = wait_for(lambda: stack.retell.calls_for_contact(cid), timeout=30, what="the day_7 call")[0]
    events = stack.retell.finish_call(call["call_id"])  # positive answered call
    for event in events:
        response = stack.post_retell(event)
        assert response.status_code == 200, response.text
    started = [e for e in events if e["event"] == "call_started"]
    assert started and stack.post_retell(started[0]).json()["status"] == "ignored"
    lead = wait_for(lambda: (lead := stack.lead(cid)) and lead["status"] == "qualified" and lead,
                    what="the call result to qualify the lead")
    assert any(item["action"] == "call_result" and item["outcome"] == "done" for item in lead["timeline"])
    assert any("lead-bot-call-answered-positive" in t for t in stack.ghl.contact(cid)["tags"])
    assert len(stack.ghl.tasks(cid)) == 1
    # A redelivery of the same (call_id, event) is acknowledged once.
    assert stack.post_retell(events[-1]).json()["status"] == "duplicate"


def test_unsigned_tampered_and_stale_webhooks_are_rejected_without_effect(stack: Stack) -> None:
    cid = stack.add_lead()
    stack.enroll(cid)
    wait_for(lambda: stack.ghl.sent_sms(cid), what="the day_3 text")
    payload = stack.inbound(cid, "What are HOA fees like?")
    signed = webhooks.sign_ghl_webhook(payload)

    unsigned = stack.post_ghl(payload, headers={"Content-Type": "application/json"})
    tampered = stack.post_ghl(payload, body=signed.body.replace(b"HOA", b"HOB"))
    wrong_key = stack.post_ghl(payload, headers={**signed.headers, "X-GHL-Signature": "A" * 88})
    stale_payload = stack.inbound(cid, "What are HOA fees like?",
                                  timestamp=datetime.now(UTC) - timedelta(minutes=6))
    stale = stack.post_ghl(stale_payload)
    for response in (unsigned, tampered, wrong_key, stale):
        assert response.status_code == 401, response.text
        assert "error" in response.json()

    retell_body = webhooks.encode(webhooks.call_ended(webhooks.retell_call(metadata={"ghl_contact_id": cid})))
    no_sig = httpx.post(stack.url + "/webhooks/retell", content=retell_body)
    old = stack.post_retell(webhooks.call_ended(webhooks.retell_call(metadata={"ghl_contact_id": cid})),
                            ts_ms=int((time.time() - 600) * 1000))
    assert no_sig.status_code == 401 and old.status_code == 401

    # The legacy RSA header alone is accepted (and proves the route works after the rejections).
    legacy = webhooks.sign_ghl_webhook(stack.inbound(cid, "What are HOA fees like?"), ed25519=False,
                                       rsa_legacy=True)
    response = httpx.post(stack.url + "/webhooks/ghl", content=legacy.body, headers=legacy.headers)
    assert response.status_code == 200
    wait_for(lambda: stack.replies(cid), what="the reply to the legitimate webhook")
    # The rejected deliveries were never queued: exactly one inbound turn.
    lead = stack.lead(cid)
    assert lead is not None and lead["engagement"]["replies"] == 1
    assert len(stack.replies(cid)) == 1


def test_the_same_webhook_delivered_three_times_is_answered_once(stack: Stack) -> None:
    cid = stack.add_lead()
    stack.enroll(cid)
    wait_for(lambda: stack.ghl.sent_sms(cid), what="the day_3 text")
    payload = stack.inbound(cid, "Is the HOA fee included?")
    answers = [stack.post_ghl(payload).json()["status"] for _ in range(3)]
    assert answers == ["accepted", "duplicate", "duplicate"]
    # Same messageId, new webhookId (a re-sent event): the graph's reply key still answers once.
    again = dict(payload, webhookId="another-webhook-id")
    assert stack.post_ghl(again).json()["status"] == "accepted"
    wait_for(lambda: stack.replies(cid), what="the reply")
    wait_for(lambda: len((stack.lead(cid) or {"timeline": []})["timeline"]) >= 4, what="both turns")
    assert len(stack.replies(cid)) == 1


def test_outbound_messages_human_versus_the_bots_own(stack: Stack) -> None:
    cid = stack.add_lead()
    stack.enroll(cid)
    wait_for(lambda: stack.ghl.sent_sms(cid), what="the day_3 text")
    own_id = stack.ghl.messages(cid, "SMS")[0]["id"]
    own = webhooks.outbound_message(cid, "Hi Jane", message_id=own_id, location_id=stack.ghl.location_id)
    assert stack.post_ghl(own).json()["status"] == "accepted"
    api_sent = webhooks.outbound_message(cid, "Hi", source="api", location_id=stack.ghl.location_id)
    assert stack.post_ghl(api_sent).json()["status"] == "ignored"
    no_user = webhooks.outbound_message(cid, "Hi", user_id=None, location_id=stack.ghl.location_id)
    assert stack.post_ghl(no_user).json()["status"] == "ignored"
    stack.wait_idle()  # the bot's own message was processed (and must have been dropped)
    lead = stack.lead(cid)
    assert lead is not None and not lead["takeover_until"]

    human = webhooks.outbound_message(cid, "Hi Jane, Sam here - I'll call you later",
                                      location_id=stack.ghl.location_id)
    assert stack.post_ghl(human).json()["status"] == "accepted"
    lead = wait_for(lambda: (lead := stack.lead(cid)) and lead["takeover_until"] and lead,
                    what="the human takeover")
    assert any(item["action"] == "human_takeover" for item in lead["timeline"])


def test_contact_events_change_the_lead(stack: Stack) -> None:
    opted = stack.add_lead()
    stack.enroll(opted)
    contact = stack.ghl.contact(opted)
    assert stack.post_ghl(webhooks.contact_dnd_update(contact)).json()["status"] == "accepted"
    wait_for(lambda: (stack.lead(opted) or {}).get("status") == "opted_out", what="the DND opt-out")

    deleted = stack.add_lead()
    stack.enroll(deleted)
    deletion = webhooks.contact_delete(deleted, location_id=stack.ghl.location_id)
    assert stack.post_ghl(deletion).status_code == 200
    wait_for(lambda: (stack.lead(deleted) or {}).get("status") == "cancelled", what="the deletion")

    tagged = stack.add_lead()
    stack.enroll(tagged)
    update = webhooks.contact_tag_update(stack.ghl.contact(tagged), ["buyer", "lead-bot-opted-out"])
    assert stack.post_ghl(update).json()["status"] == "accepted"
    wait_for(lambda: (stack.lead(tagged) or {}).get("status") == "opted_out", what="the opt-out tag")


def test_ignored_and_malformed_ghl_events(stack: Stack) -> None:
    cid = stack.add_lead()
    call = stack.inbound(cid, "hello", message_type="CALL")
    assert stack.post_ghl(call).json()["status"] == "ignored"
    unknown = {"type": "NoteCreate", "locationId": stack.ghl.location_id, "timestamp": webhooks.iso(),
               "webhookId": "w-note"}
    assert stack.post_ghl(unknown).json()["status"] == "ignored"
    other_location = stack.inbound(cid, "hi", location_id="SomeOtherLocation")
    assert stack.post_ghl(other_location).json()["status"] == "ignored"
    for bad in (
        {"type": "InboundMessage", "locationId": stack.ghl.location_id, "timestamp": webhooks.iso()},
        {"locationId": stack.ghl.location_id, "timestamp": webhooks.iso()},
        {"type": "InboundMessage", "contactId": cid, "messageType": "SMS", "body": "x"},  # no timestamp
    ):
        response = stack.post_ghl(bad)
        assert response.status_code == 400 and "error" in response.json(), response.text
    body = b"{not json"
    response = httpx.post(stack.url + "/webhooks/ghl", content=body, headers=sign_ghl(body))
    assert response.status_code == 400 and "error" in response.json()


def test_workflow_enrollment_and_operator_api(stack: Stack) -> None:
    cid = stack.add_lead()
    payload = {"contact_id": cid, "first_name": "Jane", "location": {"id": stack.ghl.location_id}}
    assert httpx.post(stack.url + "/webhooks/ghl/workflow", json=payload).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(stack.url + "/webhooks/ghl/workflow", json=payload, headers=wrong).status_code == 401
    with stack.api() as api:
        assert api.post("/webhooks/ghl/workflow", json={"location": {}}).status_code == 400
        response = api.post("/webhooks/ghl/workflow", json=payload)
        assert response.status_code == 200 and response.json()["status"] == "accepted"
        wait_for(lambda: stack.lead(cid), what="the workflow enrollment")

        assert httpx.get(stack.url + f"/api/leads/{cid}").status_code == 401
        assert api.get("/api/leads/no-such-contact").status_code == 404
        assert api.get("/api/leads/no-such-contact").json()["error"]
        assert api.post("/api/leads/bad%20id/pause").status_code in (404, 422)

        paused = api.post(f"/api/leads/{cid}/pause", params={"wait": 20}, json={"reason": "on vacation"})
        assert paused.status_code == 200, paused.text
        assert paused.json()["lead"]["status"] == "paused"
        again = api.post(f"/api/leads/{cid}/pause", params={"wait": 20})
        assert again.status_code == 409 and again.json()["status"] == "skipped"
        queued = api.post(f"/api/leads/{cid}/resume")
        assert queued.status_code == 202 and queued.json()["request_id"]
        wait_for(lambda: (stack.lead(cid) or {}).get("status") in ("active", "nurture"), what="resume")
        cancelled = api.post(f"/api/leads/{cid}/cancel", params={"wait": 20})
        assert cancelled.json()["lead"]["status"] == "cancelled"
        bad_body = api.post(f"/api/leads/{cid}/pause", json={"until": "not a time"})
        assert bad_body.status_code == 422 and "error" in bad_body.json()
        unknown = api.post("/api/leads/ghost-contact-1/pause", params={"wait": 20})
        assert unknown.status_code == 409 and "enroll it first" in unknown.json()["error"]


def test_health_and_metrics(stack: Stack) -> None:
    cid = stack.add_lead()
    stack.enroll(cid)
    wait_for(lambda: stack.ghl.sent_sms(cid), what="a send to count")
    health = httpx.get(stack.url + "/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    now = parse_time(body["now"])
    assert now is not None and body["now"].endswith("Z")
    metrics = httpx.get(stack.url + "/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    for name in ("lead_bot_webhooks_total", "lead_bot_sends_total", "lead_bot_intake_backlog",
                 "lead_bot_step_due_lag_seconds", "lead_bot_scheduler_leader", "lead_bot_errors_total"):
        assert name in text, name
    assert 'lead_bot_sends_total{channel="sms",outcome="sent"}' in text
    assert "lead_bot_scheduler_leader 1.0" in text
    assert httpx.get(stack.url + "/nope").json() == {"error": "Not Found"}
    assert json.loads(httpx.post(stack.url + "/healthz").text)["error"]


def test_serve_refuses_to_start_without_a_ghl_token(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ghl_real_estate_ai.cli", "serve"], cwd=tmp_path,
                            env=base_env(REDIS_URL="redis://127.0.0.1:1/0"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "GHL_API_TOKEN" in lines[0], result.stderr
    assert API_TOKEN not in result.stderr
