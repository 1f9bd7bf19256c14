"""Conversation turns through the graph (InMemorySaver, in-process fakes): every intent and its effect."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langgraph.checkpoint.base import BaseCheckpointSaver

from ghl_real_estate_ai.conversation.responders import LLMResponder
from ghl_real_estate_ai.errors import PermanentIntegrationError, TransientIntegrationError
from ghl_real_estate_ai.sandbox.simulation import Simulation
from ghl_real_estate_ai.testing.fakes import make_contact

START = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)  # 10:00 in Austin
DAY = timedelta(days=1)


async def _lead(sim: Simulation, cid: str = "c1", **contact: Any) -> str:
    sim.add_lead(make_contact(cid, **contact))
    await sim.dispatch(cid, {"type": "enroll"})
    await sim.run_until(sim.clock.now() + timedelta(hours=1))  # day_3 goes out
    return cid


def _inbound(text: str, message_id: str, channel: str = "sms") -> dict[str, Any]:
    return {"type": "inbound_message", "text": text, "channel": channel, "message_id": message_id}


async def test_question_is_answered_then_stall_breakers_then_the_sequence_resumes(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    sim.clock.advance(timedelta(hours=2))
    state = await sim.dispatch(cid, _inbound("Do any of them have a pool?", "m1"))
    reply = sim.crm.sent_to(cid)[-1]
    assert reply.channel == "sms" and reply.at == sim.clock.now()  # answered at once
    assert state["engagement"]["replies"] == 1 and state["engagement"]["conversation_active"]
    assert state["engagement"]["temperature"] == "hot"
    assert state["sequence"]["next_step"] == "stall_breaker"
    replied_at = sim.clock.now()
    await sim.run_until(START + 20 * DAY)
    after = [s for s in sim.crm.sent_to(cid) if s.at > replied_at]
    # Three nudges two days apart (rotating texts), then the sequence picks up its next step (the overdue
    # day_7 call), and day_14 keeps its enrollment-anchored time.
    assert [(s.channel, s.at - replied_at) for s in after[:3]] == [
        ("sms", 2 * DAY),
        ("sms", 4 * DAY),
        ("sms", 6 * DAY),
    ]
    assert len({s.body for s in after[:3]}) == 3
    assert after[3].channel == "call" and after[3].at == replied_at + 8 * DAY
    assert after[4].channel == "email" and after[4].at == START + 11 * DAY


async def test_reply_resets_the_stall_breakers(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    await sim.dispatch(cid, _inbound("what neighborhoods?", "m1"))
    await sim.run_until(sim.clock.now() + 2 * DAY + timedelta(hours=1))
    assert (await sim.state(cid))["stall"]["attempts"] == 1
    await sim.dispatch(cid, _inbound("what about schools?", "m2"))
    state = await sim.state(cid)
    assert state["stall"]["attempts"] == 0 and state["sequence"]["next_step"] == "stall_breaker"


async def test_a_lead_who_never_replies_stays_on_the_timed_sequence(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    await sim.run_until(START + 12 * DAY)
    assert not any(e["action"] == "stall_breaker" for e in (await sim.state(cid))["timeline"])


@pytest.mark.parametrize("channel", ["sms", "email"])
async def test_reply_goes_back_on_the_channel_it_came_in_on(
    channel: str, checkpointer: BaseCheckpointSaver[Any]
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    await sim.dispatch(cid, _inbound("Is the Oak St house still available?", "m1", channel))
    assert sim.crm.sent_to(cid)[-1].channel == channel


async def test_interested_qualifies_and_hands_off_to_a_human(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim, assigned_to="user-7")
    await sim.dispatch(cid, _inbound("Yes! Can you call me Saturday?", "m1"))
    state = await sim.state(cid)
    assert state["sequence"]["status"] == "qualified"
    assert state["sequence"]["next_step"] is None
    assert "lead-bot-qualified" in sim.crm.contacts[cid]["tags"]
    note = sim.crm.notes[-1][1]
    assert "Saturday" in note and "call me Saturday" in note
    task = sim.crm.tasks[-1]
    assert task["assigned_to"] == "user-7" and "qualified" in task["title"]
    confirmation = sim.crm.sent_to(cid)[-1].body
    assert "reach out" in confirmation and "Saturday" in confirmation
    # The sequence stops, and a redelivery creates no second task.
    await sim.dispatch(cid, _inbound("Yes! Can you call me Saturday?", "m1"))
    await sim.run_until(START + 90 * DAY)
    assert len(sim.crm.tasks) == 1
    assert [s.channel for s in sim.crm.sent_to(cid)] == ["sms", "sms"]


async def test_home_value_question_gets_a_cma_by_email_or_sms(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim, address="1402 S Congress Ave", postal_code="78704", city="Austin")
    await sim.dispatch(cid, _inbound("what's my house worth??", "m1"))
    state = await sim.state(cid)
    cma = state["cma"]
    assert cma["requested_at"] and cma["generated_at"] and cma["sent_at"] and cma["channel"] == "email"
    valuation = cma["valuation"]
    assert valuation["low"] <= valuation["value"] <= valuation["high"] and valuation["comps"]
    email = sim.crm.sent_to(cid, "email")[-1]
    assert "$" in (email.subject or "") and "<table" in email.body
    json.dumps(state["cma"])  # plain data

    no_email = await _lead(sim, "c2", email=None, address="1402 S Congress Ave", postal_code="78704")
    await sim.dispatch(no_email, _inbound("How much could I sell for?", "m2"))
    texts = [s for s in sim.crm.sent_to(no_email) if "$" in s.body]
    assert texts and len(texts[0].body) <= 320
    assert (await sim.state(no_email))["cma"]["channel"] == "sms"


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("Not interested right now, thanks", "nurture"),
        ("We're already working with a realtor", "completed"),
        ("We already sold our house", "completed"),
    ],
)
async def test_closing_intents(text: str, status: str, checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    await sim.dispatch(cid, _inbound(text, "m1"))
    state = await sim.state(cid)
    assert state["sequence"]["status"] == status
    sent_before = len(sim.crm.sent_to(cid))
    await sim.run_until(START + 56 * DAY)
    if status == "completed":
        assert len(sim.crm.sent_to(cid)) == sent_before
    else:  # long-term nurture only: no day_7/day_14/day_30, the next touch is the monthly nurture
        assert len(sim.crm.sent_to(cid)) == sent_before
        assert state["sequence"]["next_step"] == "nurture"
        await sim.run_until(START + 58 * DAY)
        assert len(sim.crm.sent_to(cid)) == sent_before + 1


async def test_help_names_the_program_and_how_to_stop(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    await sim.dispatch(cid, _inbound("HELP", "m1"))
    text = sim.crm.sent_to(cid)[-1].body
    assert "Lead Bot" in text and "STOP" in text


STEPS = ["day_3", "day_7", "day_14", "day_30", "nurture"]


@pytest.mark.parametrize("stop_after", STEPS)
@pytest.mark.parametrize("word", ["STOP", "unsubscribe", "please stop texting me", "Wrong number"])
async def test_stop_at_any_point_leaves_no_later_send_of_any_kind(
    stop_after: str, word: str, checkpointer: BaseCheckpointSaver[Any]
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    while stop_after not in (await sim.state(cid))["sequence"].get("completed", {}) and not (
        stop_after == "nurture" and (await sim.state(cid))["sequence"].get("nurture_sent")
    ):
        due = await sim.next_due()
        assert due is not None
        await sim.run_until(due[0])
    await sim.dispatch(cid, _inbound(word, "stop-1"))
    confirmation = sim.crm.sent_to(cid)[-1]
    assert "unsubscribed" in confirmation.body.lower()
    count = len(sim.crm.sent_to(cid))
    # Every kind of later event: due steps, replays, more messages, operator resume, a call result.
    await sim.dispatch(cid, _inbound("hello?", "after-1"))
    await sim.dispatch(cid, _inbound("STOP", "after-2"))
    await sim.dispatch(cid, {"type": "resume"})
    for step in [*STEPS, "stall_breaker"]:
        await sim.dispatch(cid, {"type": "step_due", "step": step})
    await sim.run_until(START + 400 * DAY)
    assert len(sim.crm.sent_to(cid)) == count
    assert sim.crm.contacts[cid]["dndSettings"]["SMS"]["status"] == "active"
    assert (await sim.state(cid))["sequence"]["status"] == "opted_out"


async def test_stop_is_honoured_even_when_ghl_is_down(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    down = TransientIntegrationError("ghl", "send message", "HTTP 503", status=503)
    sim.crm.fail_next(down, down, down)
    state = await sim.dispatch(cid, _inbound("STOP", "m1"))
    assert state["sequence"]["status"] == "opted_out"
    await sim.run_until(START + 60 * DAY)
    assert len(sim.crm.sent_to(cid)) == 1  # only day_3, before the STOP


async def test_start_lifts_dnd_but_does_not_re_enroll(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    await sim.dispatch(cid, _inbound("stop", "m1"))
    await sim.dispatch(cid, _inbound("START", "m2"))
    assert sim.crm.contacts[cid]["dndSettings"]["SMS"]["status"] == "inactive"
    state = await sim.state(cid)
    assert state["sequence"]["status"] != "active" and state["sequence"]["next_step"] is None
    count = len(sim.crm.sent_to(cid))
    await sim.run_until(START + 60 * DAY)
    assert len(sim.crm.sent_to(cid)) == count
    # An operator may enroll the lead again now that consent is back.
    await sim.dispatch(cid, {"type": "enroll"})
    assert (await sim.state(cid))["sequence"]["status"] == "active"


async def test_duplicate_inbound_message_is_answered_once(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    for _ in range(3):
        await sim.dispatch(cid, _inbound("What's the HOA fee?", "same-id"))
    assert len(sim.crm.sent_to(cid)) == 2  # day_3 + one reply


async def test_human_takeover_puts_the_bot_in_the_background(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    await sim.dispatch(
        cid, {"type": "human_message", "text": "Hi Jane, Sam here, personally!", "message_id": "h1"}
    )
    count = len(sim.crm.sent_to(cid))
    # The lead answers the human: the bot stays quiet; no timed step for 7 days.
    await sim.dispatch(cid, _inbound("Hi Sam! Sure.", "m1"))
    await sim.run_until(START + 7 * DAY)
    assert len(sim.crm.sent_to(cid)) == count
    # After the takeover window the sequence goes on (day_7 was due on day 4: it runs now).
    await sim.run_until(START + 8 * DAY + timedelta(hours=1))
    assert sim.crm.sent_to(cid)[-1].channel == "call"
    # An operator can end a takeover early.
    await sim.dispatch(cid, {"type": "human_message", "text": "checking in", "message_id": "h2"})
    await sim.dispatch(cid, {"type": "resume"})
    assert (await sim.state(cid))["sequence"]["takeover_until"] is None


def _call(outcome: str) -> dict[str, Any]:
    base: dict[str, Any] = {
        "call_id": f"call-{outcome}",
        "call_status": "ended",
        "metadata": {"ghl_contact_id": "c1"},
    }
    if outcome == "positive":
        base |= {
            "disconnection_reason": "user_hangup",
            "call_analysis": {
                "call_successful": True,
                "user_sentiment": "Positive",
                "in_voicemail": False,
                "call_summary": "Wants a showing Saturday.",
            },
        }
    elif outcome == "voicemail":
        base |= {"disconnection_reason": "voicemail_reached", "call_analysis": {"in_voicemail": True}}
    elif outcome == "no_answer":
        base |= {"disconnection_reason": "dial_no_answer"}
    else:
        base |= {"disconnection_reason": "dial_failed"}
    return base


@pytest.mark.parametrize(
    ("outcome", "event", "status", "tag"),
    [
        ("positive", "call_analyzed", "qualified", "lead-bot-call-answered-positive"),
        ("voicemail", "call_analyzed", "active", "lead-bot-call-voicemail"),
        ("no_answer", "call_ended", "active", "lead-bot-call-no-answer"),
        ("failed", "call_ended", "active", "lead-bot-call-failed"),
    ],
)
async def test_call_results(
    outcome: str, event: str, status: str, tag: str, checkpointer: BaseCheckpointSaver[Any]
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    await sim.run_until(START + 4 * DAY + timedelta(hours=1))
    assert sim.voice.placed
    for _ in range(2):  # Retell retries webhooks: the second delivery changes nothing
        await sim.dispatch(cid, {"type": "call_result", "reason": event, "call": _call(outcome)})
    state = await sim.state(cid)
    assert state["sequence"]["status"] == status
    assert tag in sim.crm.contacts[cid]["tags"]
    results = [e for e in state["timeline"] if e["action"] == "call_result"]
    assert results[0]["outcome"] == "done" and outcome.split("_")[0] in results[0]["reason"]
    assert results[1]["outcome"] == "skipped"
    if status == "qualified":
        assert sim.crm.tasks and "Saturday" in sim.crm.tasks[-1]["body"]
    else:
        await sim.run_until(START + 12 * DAY)
        assert sim.crm.sent_to(cid, "email")  # the sequence went on


async def test_call_started_changes_nothing(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    await sim.dispatch(cid, {"type": "call_result", "reason": "call_started", "call": {"call_id": "x"}})
    assert (await sim.state(cid))["timeline"][-1]["outcome"] == "skipped"


async def test_llm_responder_through_the_context_and_stop_never_reaches_it(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    answer = json.dumps(
        {
            "intent": "question",
            "reply": "Great question! HOA is about $45/month.",
            "summary": "Asked about HOA.",
            "meeting_hint": None,
        }
    )
    model = FakeListChatModel(responses=[answer, answer])
    sim = Simulation(START, checkpointer=checkpointer, responder=LLMResponder(model))
    cid = await _lead(sim)
    await sim.dispatch(cid, _inbound("how much is the HOA?", "m1"))
    assert sim.crm.sent_to(cid)[-1].body == "Great question! HOA is about $45/month."
    assert model.i == 1
    await sim.dispatch(cid, _inbound("STOP", "m2"))
    assert model.i == 1  # the model was not asked
    assert (await sim.state(cid))["sequence"]["status"] == "opted_out"


async def test_opted_out_lead_only_gets_answers_to_start_and_help(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    await sim.dispatch(cid, _inbound("STOP", "m1"))
    count = len(sim.crm.sent_to(cid))
    await sim.dispatch(cid, _inbound("what's my house worth", "m2"))
    assert len(sim.crm.sent_to(cid)) == count


async def test_email_reply_escapes_the_leads_own_words(checkpointer: BaseCheckpointSaver[Any]) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim, first_name="<script>x</script>")
    await sim.dispatch(cid, _inbound("Is it near a park?", "m1", "email"))
    email = sim.crm.sent_to(cid, "email")[-1]
    assert "<script>" not in email.body and "&lt;script&gt;" in email.body


async def test_stop_before_enrollment_is_on_record_and_blocks_enrollment(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = sim.add_lead(make_contact("c-early"))
    await sim.dispatch(cid, _inbound("stop texting me", "m1"))
    assert (await sim.state(cid))["sequence"]["status"] == "opted_out"
    await sim.dispatch(cid, {"type": "enroll"})
    await sim.run_until(START + 30 * DAY)
    assert [s.body for s in sim.crm.sent_to(cid)] == [sim.crm.sent_to(cid)[0].body]
    assert "unsubscribed" in sim.crm.sent_to(cid)[0].body.lower()
    # Anything else from a contact that is not enrolled gets no answer.
    other = sim.add_lead(make_contact("c-stranger"))
    await sim.dispatch(other, _inbound("hi, who is this? what's the price?", "m2"))
    assert not [s for s in sim.crm.sent_to(other) if "price" in s.body.lower()]


async def test_a_reply_ghl_refuses_is_recorded_and_not_retried(
    checkpointer: BaseCheckpointSaver[Any],
) -> None:
    sim = Simulation(START, checkpointer=checkpointer)
    cid = await _lead(sim)
    refused = PermanentIntegrationError("ghl", "send message", "Unprocessable Entity", status=422)
    sim.crm.fail_next(refused)
    sends = len(sim.crm.sent_to(cid))
    await sim.dispatch(
        cid, {"type": "inbound_message", "text": "what's the HOA?", "channel": "sms", "message_id": "m"}
    )
    entry = [e for e in (await sim.state(cid))["timeline"] if e["action"] == "reply"][-1]
    assert entry["outcome"] == "failed" and "refused" in entry["reason"]
    assert (await sim.context.ledger.get(f"{cid}|reply|m")) == {
        "state": "sent",
        "outcome": "failed",
        "error": str(refused),
    }
    assert len(sim.crm.sent_to(cid)) == sends
