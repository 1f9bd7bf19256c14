"""Reading back a send whose answer never came: ``GHLClient.find_sent_message`` and ``RetellClient.find_call``
against the wire-format fakes over real loopback HTTP, the fakes' read endpoints themselves, and the
in-process ``FakeCrm``/``FakeVoice`` read-backs."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ghl_real_estate_ai.clock import FakeClock
from ghl_real_estate_ai.errors import OutcomeUnknownError, TransientIntegrationError
from ghl_real_estate_ai.integrations.ghl import GHLClient
from ghl_real_estate_ai.integrations.models import Crm, SendLookup, VoiceCaller
from ghl_real_estate_ai.integrations.rate_limit import SlidingWindowLimiter
from ghl_real_estate_ai.integrations.retell import RetellClient
from ghl_real_estate_ai.testing.fake_http import Fault, VirtualTime
from ghl_real_estate_ai.testing.fakes import FakeCrm, FakeVoice, make_contact
from ghl_real_estate_ai.testing.ghl_server import FakeGHLServer
from ghl_real_estate_ai.testing.retell_server import DEFAULT_FROM_NUMBER, FakeRetellServer
from ghl_real_estate_ai.testing.webhooks import iso

START = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
TEXT = "Hi Jane, it's Sam - still thinking about 12 Oak St? Reply STOP to opt out."
LEAD = "+15125550123"
AGENT = "oBeDLoLOeuAbiuaMFXRtDOLriTJ5tSxD"
RATE_HEADERS = ("x-ratelimit-limit-daily", "x-ratelimit-daily-remaining", "x-ratelimit-interval-milliseconds",
                "x-ratelimit-max", "x-ratelimit-remaining")


def ghl_client(ghl: FakeGHLServer, vtime: VirtualTime, **kwargs: Any) -> GHLClient:
    """A client whose backoff and rate-limit waits run on virtual time."""
    kwargs.setdefault("rng", random.Random(7))
    kwargs.setdefault("rate_limiter", SlidingWindowLimiter(clock=vtime.clock, sleep=vtime.sleep))
    return GHLClient(ghl.base_url, ghl.token, ghl.location_id, sleep=vtime.sleep, **kwargs)


def retell_client(retell: FakeRetellServer, vtime: VirtualTime, **kwargs: Any) -> RetellClient:
    kwargs.setdefault("rng", random.Random(3))
    agent = kwargs.pop("agent_id", AGENT)
    return RetellClient(retell.base_url, retell.api_key, DEFAULT_FROM_NUMBER, agent, sleep=vtime.sleep,
                        **kwargs)


def message_pages(ghl: FakeGHLServer, contact_id: str) -> list[Any]:
    return ghl.requests_to("GET", f"/conversations/{ghl.conversation_id(contact_id)}/messages")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def timed_ghl(clock: FakeClock) -> Iterator[FakeGHLServer]:
    """A fake GHL that dates messages by ``clock`` (so tests can place ``since`` between sends)."""
    with FakeGHLServer(now=clock.now) as server:
        yield server


# -- GHLClient.find_sent_message ----------------------------------------------------------------------


def test_clients_satisfy_the_protocols(
    ghl: FakeGHLServer, retell: FakeRetellServer, vtime: VirtualTime
) -> None:
    crm: Crm = ghl_client(ghl, vtime)
    voice: VoiceCaller = retell_client(retell, vtime)
    assert crm is not None and voice is not None


async def test_sms_found_after_a_normal_send(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    since = datetime.now(UTC)
    async with ghl_client(ghl, vtime) as client:
        sent = await client.send_sms(contact["id"], TEXT)
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=f"  {TEXT}\n", since=since)
    assert lookup.outcome == "found"
    assert lookup.id == sent.message_id
    assert lookup.at is not None and lookup.at.tzinfo is not None
    assert since - timedelta(milliseconds=1) < lookup.at < since + timedelta(seconds=5)
    assert sent.message_id in lookup.detail
    [search] = ghl.requests_to("GET", "/conversations/search")
    assert search.header("version") == "2021-04-15"
    assert search.header("authorization") == f"Bearer {ghl.token}"
    assert dict(httpx.QueryParams(search.query)) == {"locationId": ghl.location_id,
                                                     "contactId": contact["id"]}
    [page] = message_pages(ghl, contact["id"])
    assert page.header("version") == "2021-04-15"
    assert dict(httpx.QueryParams(page.query)) == {"limit": "20"}


async def test_sms_found_after_the_send_answer_was_lost(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    since = datetime.now(UTC)
    ghl.script_faults([Fault(delay=2.0)], method="POST", path="/conversations/messages")
    async with ghl_client(ghl, vtime, timeout=0.3) as client:
        with pytest.raises(OutcomeUnknownError):
            await client.send_sms(contact["id"], TEXT)
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT, since=since)
    assert lookup.outcome == "found"
    [stored] = ghl.messages(contact["id"])
    assert lookup.id == stored["id"]
    assert len(ghl.requests_to("POST", "/conversations/messages")) == 1


async def test_absent_when_nothing_was_sent(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    async with ghl_client(ghl, vtime) as client:
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT,
                                                since=datetime.now(UTC))
    assert lookup == SendLookup("absent", detail=lookup.detail)
    assert "0 conversation(s)" in lookup.detail


async def test_absent_when_the_send_request_failed_before_it_was_handled(
    ghl: FakeGHLServer, vtime: VirtualTime
) -> None:
    contact = ghl.add_contact()
    ghl.conversation_id(contact["id"])  # the conversation exists, empty
    ghl.script_faults([500, 500], method="POST", path="/conversations/messages")
    async with ghl_client(ghl, vtime, max_retries=1) as client:
        with pytest.raises(TransientIntegrationError):
            await client.send_sms(contact["id"], TEXT)
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT,
                                                since=datetime.now(UTC) - timedelta(minutes=1))
    assert lookup.outcome == "absent"
    assert "1 conversation(s)" in lookup.detail


async def test_absent_when_only_older_or_other_texts_exist_across_pages(
    timed_ghl: FakeGHLServer, clock: FakeClock, vtime: VirtualTime
) -> None:
    contact = timed_ghl.add_contact()
    async with ghl_client(timed_ghl, vtime) as client:
        await client.send_sms(contact["id"], TEXT)  # the same text, but before `since`
        for i in range(3):
            await client.send_sms(contact["id"], f"older {i}")
        clock.advance(60)
        since = clock.now()
        for i in range(25):
            await client.send_sms(contact["id"], f"other {i}")
            clock.advance(1)
        await client.send_email(contact["id"], TEXT, "<p>an email whose subject is the SMS text</p>")
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT, since=since)
    assert lookup.outcome == "absent", lookup.detail
    first, second = message_pages(timed_ghl, contact["id"])
    assert "lastMessageId" not in first.query
    assert "lastMessageId=" in second.query and "2 page(s)" in lookup.detail


async def test_found_on_a_later_page(timed_ghl: FakeGHLServer, clock: FakeClock, vtime: VirtualTime) -> None:
    contact = timed_ghl.add_contact()
    async with ghl_client(timed_ghl, vtime) as client:
        since = clock.now()
        sent = await client.send_sms(contact["id"], TEXT)
        for i in range(25):
            clock.advance(1)
            await client.send_sms(contact["id"], f"other {i}")
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT, since=since)
    assert (lookup.outcome, lookup.id, lookup.at) == ("found", sent.message_id, START)
    assert len(message_pages(timed_ghl, contact["id"])) == 2


async def test_a_message_dated_within_the_millisecond_of_since_matches(
    timed_ghl: FakeGHLServer, clock: FakeClock, vtime: VirtualTime
) -> None:
    contact = timed_ghl.add_contact()
    clock.advance(0.0007)  # GHL keeps milliseconds: the message is dated START, before `since` by 0.7 ms
    async with ghl_client(timed_ghl, vtime) as client:
        await client.send_sms(contact["id"], TEXT)
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT, since=clock.now())
    assert lookup.outcome == "found"


async def test_unknown_when_more_pages_than_the_cap(
    timed_ghl: FakeGHLServer, clock: FakeClock, vtime: VirtualTime
) -> None:
    contact = timed_ghl.add_contact()
    async with ghl_client(timed_ghl, vtime) as client:
        client.readback_page_size = 2
        client.readback_max_pages = 2
        since = clock.now()
        for i in range(6):
            await client.send_sms(contact["id"], f"other {i}")
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT, since=since)
    assert lookup.outcome == "unknown"
    assert "within 2 pages" in lookup.detail
    assert len(message_pages(timed_ghl, contact["id"])) == 2


async def test_unknown_when_the_read_endpoints_are_missing(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    ghl.read_endpoints = False
    contact = ghl.add_contact()
    async with ghl_client(ghl, vtime) as client:
        await client.send_sms(contact["id"], TEXT)
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT,
                                                since=datetime.now(UTC) - timedelta(minutes=1))
    assert lookup.outcome == "unknown"
    assert "missing" in lookup.detail and "404" in lookup.detail
    assert len(ghl.requests_to("GET", "/conversations/search")) == 1  # a 404 is not retried


@pytest.mark.parametrize("where", ["search", "messages"])
async def test_unknown_when_a_read_keeps_failing(ghl: FakeGHLServer, vtime: VirtualTime, where: str) -> None:
    contact = ghl.add_contact()
    path = ("/conversations/search" if where == "search"
            else f"/conversations/{ghl.conversation_id(contact['id'])}/messages")
    async with ghl_client(ghl, vtime) as client:
        await client.send_sms(contact["id"], TEXT)
        ghl.script_faults([500] * 4, method="GET", path=path)
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT,
                                                since=datetime.now(UTC) - timedelta(minutes=1))
    assert lookup.outcome == "unknown"
    assert "HTTP 500" in lookup.detail and "4 attempts" in lookup.detail
    assert len(ghl.requests_to("GET", path)) == 4  # the client's normal retries (3), then it gave up


async def test_unknown_when_the_token_is_refused(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    ghl.revoke_token(ghl.token)
    async with ghl_client(ghl, vtime) as client:
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT,
                                                since=datetime.now(UTC))
    assert lookup.outcome == "unknown" and "401" in lookup.detail


@pytest.mark.parametrize(
    "body", [{"items": []}, {"conversations": [{"contactId": "x"}]}, ["not", "an object"]]
)
async def test_unknown_when_the_search_answer_is_malformed(
    ghl: FakeGHLServer, vtime: VirtualTime, body: Any
) -> None:
    contact = ghl.add_contact()
    ghl.script_faults([Fault(status=200, body=body)], path="/conversations/search")
    async with ghl_client(ghl, vtime) as client:
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT,
                                                since=datetime.now(UTC))
    assert lookup.outcome == "unknown" and "search" in lookup.detail


async def test_unknown_when_the_messages_answer_is_malformed(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    conversation = ghl.conversation_id(contact["id"])
    ghl.script_faults([Fault(status=200, body={"messages": "none"})],
                      path=f"/conversations/{conversation}/messages")
    async with ghl_client(ghl, vtime) as client:
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT,
                                                since=datetime.now(UTC))
    assert lookup.outcome == "unknown" and "malformed" in lookup.detail


async def test_the_spec_top_level_messages_shape_is_read_too(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    conversation = ghl.conversation_id(contact["id"])
    since = datetime.now(UTC)
    listed = {"id": "msg-top-level", "conversationId": conversation, "contactId": contact["id"],
              "type": 2, "messageType": "TYPE_SMS", "direction": "outbound", "body": TEXT,
              "dateAdded": iso(since + timedelta(seconds=1)), "contentType": "text/plain"}
    ghl.script_faults([Fault(status=200, body={"lastMessageId": "msg-top-level", "nextPage": False,
                                               "messages": [listed]})],
                      path=f"/conversations/{conversation}/messages")
    async with ghl_client(ghl, vtime) as client:
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT, since=since)
    assert (lookup.outcome, lookup.id) == ("found", "msg-top-level")


async def test_inbound_and_other_channel_messages_do_not_match(
    ghl: FakeGHLServer, vtime: VirtualTime
) -> None:
    contact = ghl.add_contact()
    conversation = ghl.conversation_id(contact["id"])
    since = datetime.now(UTC)
    base = {"conversationId": conversation, "contactId": contact["id"], "body": TEXT, "dateAdded": iso(since)}
    listed = [{**base, "id": "in", "messageType": "TYPE_SMS", "direction": "inbound"},
              {**base, "id": "wa", "messageType": "TYPE_WHATSAPP", "direction": "outbound"}]
    ghl.script_faults([Fault(status=200, body={"messages": {"lastMessageId": "wa", "nextPage": False,
                                                            "messages": listed}})],
                      path=f"/conversations/{conversation}/messages")
    async with ghl_client(ghl, vtime) as client:
        lookup = await client.find_sent_message(contact["id"], channel="sms", text=TEXT, since=since)
    assert lookup.outcome == "absent"


async def test_email_matched_by_subject(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    since = datetime.now(UTC)
    async with ghl_client(ghl, vtime) as client:
        sent = await client.send_email(contact["id"], "Homes near Oak St", "<p>Hi Jane</p>")
        found = await client.find_sent_message(contact["id"], channel="email", text="Homes near Oak St",
                                               since=since)
        by_body = await client.find_sent_message(contact["id"], channel="email", text="<p>Hi Jane</p>",
                                                 since=since)
        as_sms = await client.find_sent_message(contact["id"], channel="sms", text="Homes near Oak St",
                                                since=since)
    assert (found.outcome, found.id) == ("found", sent.message_id)
    assert by_body.outcome == "absent" and as_sms.outcome == "absent"
    assert ghl.requests_to("GET", "/conversations/messages/email") == []  # the listed subject sufficed


async def test_email_subject_read_by_email_id_when_the_list_has_none(vtime: VirtualTime) -> None:
    with FakeGHLServer(email_subject_in_list=False) as ghl:
        contact = ghl.add_contact()
        since = datetime.now(UTC)
        async with ghl_client(ghl, vtime) as client:
            sent = await client.send_email(contact["id"], "Homes near Oak St", "<p>Hi Jane</p>")
            lookup = await client.find_sent_message(contact["id"], channel="email", text="Homes near Oak St",
                                                    since=since)
        [stored] = ghl.sent_emails(contact["id"])
        [read] = ghl.requests_to("GET", "/conversations/messages/email")
    assert (lookup.outcome, lookup.id) == ("found", sent.message_id)
    assert read.path == f"/conversations/messages/email/{stored['emailMessageId']}"
    assert read.header("version") == "2021-04-15"


async def test_an_email_whose_subject_cannot_be_read_makes_the_lookup_unknown(vtime: VirtualTime) -> None:
    with FakeGHLServer(email_subject_in_list=False) as ghl:
        contact = ghl.add_contact()
        since = datetime.now(UTC)
        async with ghl_client(ghl, vtime) as client:
            await client.send_email(contact["id"], "Some other subject", "<p>Hi</p>")
            ghl.script_faults([500] * 4, method="GET", path="/conversations/messages/email")
            lookup = await client.find_sent_message(contact["id"], channel="email", text="Homes near Oak St",
                                                    since=since)
    assert lookup.outcome == "unknown"  # that email might be the one looked for: never "absent"
    assert "HTTP 500" in lookup.detail


async def test_bad_arguments_raise_value_error(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    async with ghl_client(ghl, vtime) as client:
        with pytest.raises(ValueError, match="channel"):
            await client.find_sent_message("c1", channel="fax", text=TEXT, since=START)
        with pytest.raises(ValueError, match="text"):
            await client.find_sent_message("c1", channel="sms", text="  ", since=START)
        with pytest.raises(ValueError, match="timezone"):
            await client.find_sent_message("c1", channel="sms", text=TEXT, since=datetime(2026, 1, 5))
        with pytest.raises(ValueError, match="contact"):
            await client.find_sent_message("", channel="sms", text=TEXT, since=START)
    assert ghl.requests == []


# -- FakeGHLServer read endpoints ------------------------------------------------------------------------


def auth(ghl: FakeGHLServer, version: str | None = "2021-04-15") -> dict[str, str]:
    headers = {"Authorization": f"Bearer {ghl.token}"}
    if version:
        headers["Version"] = version
    return headers


async def test_fake_search_conversations_wire_shape(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    other = ghl.add_contact(first_name="Bob")
    async with ghl_client(ghl, vtime) as client:
        await client.send_sms(contact["id"], TEXT)
        await client.send_sms(other["id"], "hello Bob")
    params = {"locationId": ghl.location_id, "contactId": contact["id"]}
    async with httpx.AsyncClient(base_url=ghl.base_url) as http:
        ok = await http.get("/conversations/search", params=params, headers=auth(ghl))
        everyone = await http.get("/conversations/search", params={"locationId": ghl.location_id},
                                  headers=auth(ghl))
        no_token = await http.get("/conversations/search", params=params, headers={"Version": "2021-04-15"})
        no_version = await http.get("/conversations/search", params=params, headers=auth(ghl, None))
        no_location = await http.get("/conversations/search", params={"contactId": contact["id"]},
                                     headers=auth(ghl))
    assert ok.status_code == 200
    assert all(name in ok.headers for name in RATE_HEADERS)
    body = ok.json()
    assert body["total"] == 1
    [conversation] = body["conversations"]
    assert conversation["id"] == ghl.conversation_id(contact["id"])
    assert conversation["contactId"] == contact["id"] and conversation["locationId"] == ghl.location_id
    assert conversation["lastMessageBody"] == TEXT and conversation["lastMessageType"] == "TYPE_SMS"
    assert isinstance(conversation["lastMessageDate"], int)
    assert {"type", "unreadCount", "fullName", "contactName", "email", "phone"} <= set(conversation)
    assert everyone.json()["total"] == 2
    assert no_token.status_code == 401 and no_token.json()["message"].startswith("Invalid token")
    assert no_version.status_code == 400 and "Version" in no_version.json()["message"]
    assert no_location.status_code == 422


async def test_fake_conversation_messages_wire_shape_and_paging(
    timed_ghl: FakeGHLServer, clock: FakeClock, vtime: VirtualTime
) -> None:
    ghl = timed_ghl
    contact = ghl.add_contact()
    async with ghl_client(ghl, vtime) as client:
        sms = await client.send_sms(contact["id"], TEXT)
        clock.advance(1)
        email = await client.send_email(contact["id"], "Homes near Oak St", "<p>Hi Jane</p>")
        for i in range(22):
            clock.advance(1)
            await client.send_sms(contact["id"], f"other {i}")
    path = f"/conversations/{ghl.conversation_id(contact['id'])}/messages"
    async with httpx.AsyncClient(base_url=ghl.base_url) as http:
        first = await http.get(path, headers=auth(ghl))
        cursor = first.json()["messages"]["lastMessageId"]
        second = await http.get(path, params={"lastMessageId": cursor}, headers=auth(ghl))
        big = await http.get(path, params={"limit": "101"}, headers=auth(ghl))
        emails = await http.get(path, params={"type": "TYPE_EMAIL"}, headers=auth(ghl))
        no_token = await http.get(path)
        no_version = await http.get(path, headers=auth(ghl, None))
    assert first.status_code == 200 and all(name in first.headers for name in RATE_HEADERS)
    page = first.json()["messages"]
    assert len(page["messages"]) == 20 and page["nextPage"] is True
    assert page["messages"][0]["body"] == "other 21"  # newest first
    assert cursor == page["messages"][-1]["id"]
    rest = second.json()["messages"]
    assert rest["nextPage"] is False
    assert [m["id"] for m in rest["messages"][-2:]] == [email.message_id, sms.message_id]
    listed_sms, listed_email = rest["messages"][-1], rest["messages"][-2]
    assert listed_sms == {
        "id": sms.message_id, "conversationId": sms.conversation_id, "contactId": contact["id"],
        "locationId": ghl.location_id, "type": "SMS", "messageType": "TYPE_SMS", "direction": "outbound",
        "status": "pending", "body": TEXT, "contentType": "text/plain", "attachments": [],
        "dateAdded": "2026-01-05T15:00:00.000Z", "source": "api",
    }
    [stored_email] = ghl.sent_emails(contact["id"])
    assert listed_email["messageType"] == "TYPE_EMAIL" and listed_email["body"] == "<p>Hi Jane</p>"
    assert listed_email["meta"] == {"email": {"messageIds": [stored_email["emailMessageId"]],
                                              "subject": "Homes near Oak St"}}
    assert big.status_code == 422
    assert [m["id"] for m in emails.json()["messages"]["messages"]] == [email.message_id]
    assert no_token.status_code == 401 and no_version.status_code == 400


async def test_fake_reads_answer_404_when_disabled(ghl: FakeGHLServer) -> None:
    ghl.read_endpoints = False
    contact = ghl.add_contact()
    async with httpx.AsyncClient(base_url=ghl.base_url) as http:
        search = await http.get("/conversations/search", params={"locationId": ghl.location_id})
        messages = await http.get(f"/conversations/{ghl.conversation_id(contact['id'])}/messages",
                                  headers=auth(ghl))
    assert search.status_code == messages.status_code == 404
    assert search.json()["message"].startswith("Cannot GET /conversations/search")


async def test_fake_email_by_id(ghl: FakeGHLServer, vtime: VirtualTime) -> None:
    contact = ghl.add_contact()
    async with ghl_client(ghl, vtime) as client:
        await client.send_email(contact["id"], "Homes near Oak St", "<p>Hi Jane</p>")
    [stored] = ghl.sent_emails(contact["id"])
    async with httpx.AsyncClient(base_url=ghl.base_url) as http:
        found = await http.get(f"/conversations/messages/email/{stored['emailMessageId']}", headers=auth(ghl))
        missing = await http.get("/conversations/messages/email/nope", headers=auth(ghl))
    assert found.status_code == 200
    assert found.json()["subject"] == "Homes near Oak St" and found.json()["to"] == [contact["email"]]
    assert missing.status_code == 400


# -- RetellClient.find_call ------------------------------------------------------------------------------


def meta(key: str) -> dict[str, str]:
    return {"ghl_contact_id": "cI08i1Bls3iTB9bKgFJh", "sequence_step": "day_7", "lead_bot_send_key": key}


async def test_call_found_after_a_normal_create(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    since = datetime.now(UTC)
    async with retell_client(retell, vtime) as client:
        placed = await client.create_phone_call(LEAD, meta("k1"), {"first_name": "Jane"})
        lookup = await client.find_call(LEAD, {"lead_bot_send_key": "k1"}, since=since)
    assert (lookup.outcome, lookup.id, lookup.at) == ("found", placed.call_id, None)  # registered: no start
    assert placed.call_id in lookup.detail
    [listing] = retell.requests_to("POST", "/v2/list-calls")
    assert listing.header("authorization") == f"Bearer {retell.api_key}"
    assert listing.json == {"filter_criteria": {"to_number": [LEAD], "agent_id": [AGENT]},
                            "sort_order": "descending", "limit": 100}


async def test_call_found_after_the_create_answer_was_lost(
    retell: FakeRetellServer, vtime: VirtualTime
) -> None:
    since = datetime.now(UTC)
    retell.script_faults([Fault(delay=2.0)], method="POST", path="/v2/create-phone-call")
    async with retell_client(retell, vtime, timeout=0.3) as client:
        with pytest.raises(OutcomeUnknownError):
            await client.create_phone_call(LEAD, meta("k1"), {})
        lookup = await client.find_call(LEAD, {"lead_bot_send_key": "k1"}, since=since)
    [call] = retell.calls()
    assert (lookup.outcome, lookup.id) == ("found", call["call_id"])


async def test_started_call_found_with_its_start_time(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    since = datetime.now(UTC)
    async with retell_client(retell, vtime) as client:
        placed = await client.create_phone_call(LEAD, meta("k1"), {})
        start_ms = int(since.timestamp() * 1000) + 2000
        retell.finish_call(placed.call_id, start_timestamp=start_ms)
        lookup = await client.find_call(LEAD, {"lead_bot_send_key": "k1"}, since=since)
    assert lookup.outcome == "found"
    assert lookup.at == datetime.fromtimestamp(start_ms / 1000, UTC)


async def test_call_absent_after_paging_through_other_calls(
    retell: FakeRetellServer, vtime: VirtualTime
) -> None:
    async with retell_client(retell, vtime) as client:
        client.readback_page_size = 2
        since = datetime.now(UTC)
        for i in range(5):
            await client.create_phone_call(LEAD, meta(f"other-{i}"), {})
        await client.create_phone_call("+15125550199", meta("k1"), {})  # the key, but to another number
        lookup = await client.find_call(LEAD, {"lead_bot_send_key": "k1"}, since=since)
    assert lookup.outcome == "absent", lookup.detail
    pages = retell.requests_to("POST", "/v2/list-calls")
    assert len(pages) == 3  # 2 + 2 + 1: the short page ends the listing
    newest_first = [c["call_id"] for c in reversed(retell.calls(LEAD))]
    assert "pagination_key" not in pages[0].json
    assert pages[1].json["pagination_key"] == newest_first[1]
    assert pages[2].json["pagination_key"] == newest_first[3]


async def test_call_found_on_a_later_page(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    since = datetime.now(UTC)
    async with retell_client(retell, vtime) as client:
        client.readback_page_size = 2
        placed = await client.create_phone_call(LEAD, meta("k1"), {})
        for i in range(3):
            await client.create_phone_call(LEAD, meta(f"other-{i}"), {})
        lookup = await client.find_call(LEAD, {"lead_bot_send_key": "k1"}, since=since)
    assert (lookup.outcome, lookup.id) == ("found", placed.call_id)
    assert len(retell.requests_to("POST", "/v2/list-calls")) == 2


async def test_calls_started_before_since_end_the_listing(clock: FakeClock, vtime: VirtualTime) -> None:
    with FakeRetellServer(now=clock.now) as retell:
        async with retell_client(retell, vtime) as client:
            client.readback_page_size = 2
            for i in range(3):
                old = await client.create_phone_call(LEAD, meta("k1" if i == 0 else f"old-{i}"), {})
                retell.finish_call(old.call_id)  # started when created: at START
            clock.advance(3600)
            since = clock.now()
            await client.create_phone_call(LEAD, meta("other"), {})
            lookup = await client.find_call(LEAD, {"lead_bot_send_key": "k1"}, since=since)
        pages = retell.requests_to("POST", "/v2/list-calls")
    assert lookup.outcome == "absent"  # the old call with that key is before `since`
    assert len(pages) == 1


async def test_call_unknown_when_the_listing_is_missing(vtime: VirtualTime) -> None:
    with FakeRetellServer(list_calls_enabled=False) as retell:
        async with retell_client(retell, vtime) as client:
            await client.create_phone_call(LEAD, meta("k1"), {})
            lookup = await client.find_call(LEAD, {"lead_bot_send_key": "k1"},
                                            since=datetime.now(UTC) - timedelta(minutes=1))
    assert lookup.outcome == "unknown"
    assert "missing" in lookup.detail and "404" in lookup.detail


async def test_call_unknown_when_the_listing_keeps_failing(
    retell: FakeRetellServer, vtime: VirtualTime
) -> None:
    retell.script_faults([500] * 4, path="/v2/list-calls")
    async with retell_client(retell, vtime) as client:
        lookup = await client.find_call(LEAD, {"lead_bot_send_key": "k1"}, since=datetime.now(UTC))
    assert lookup.outcome == "unknown" and "HTTP 500" in lookup.detail
    assert len(retell.requests_to("POST", "/v2/list-calls")) == 4


async def test_call_unknown_past_the_page_cap(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    async with retell_client(retell, vtime) as client:
        client.readback_page_size = 1
        client.readback_max_pages = 2
        since = datetime.now(UTC)
        for i in range(3):
            await client.create_phone_call(LEAD, meta(f"other-{i}"), {})
        lookup = await client.find_call(LEAD, {"lead_bot_send_key": "k1"}, since=since)
    assert lookup.outcome == "unknown" and "2 pages" in lookup.detail


@pytest.mark.parametrize("body", [{"calls": []}, [1, 2]])
async def test_call_unknown_when_the_listing_is_malformed(
    retell: FakeRetellServer, vtime: VirtualTime, body: Any
) -> None:
    retell.script_faults([Fault(status=200, body=body)], path="/v2/list-calls")
    async with retell_client(retell, vtime) as client:
        lookup = await client.find_call(LEAD, {"lead_bot_send_key": "k1"}, since=datetime.now(UTC))
    assert lookup.outcome == "unknown" and "list of call objects" in lookup.detail


async def test_find_call_bad_arguments(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    async with retell_client(retell, vtime) as client:
        with pytest.raises(ValueError, match="metadata"):
            await client.find_call(LEAD, {}, since=START)
        with pytest.raises(ValueError, match="timezone"):
            await client.find_call(LEAD, {"k": "v"}, since=datetime(2026, 1, 5))
        with pytest.raises(ValueError, match="to_number"):
            await client.find_call("", {"k": "v"}, since=START)
    assert retell.requests == []


async def test_fake_list_calls_wire_shape(retell: FakeRetellServer, vtime: VirtualTime) -> None:
    async with retell_client(retell, vtime) as client:
        for i in range(51):
            await client.create_phone_call(LEAD, meta(f"k{i}"), {})
    async with retell_client(retell, vtime, agent_id="agent_other") as client:
        other_agent = await client.create_phone_call("+15125550199", meta("x"), {})
    headers = {"Authorization": f"Bearer {retell.api_key}"}
    async with httpx.AsyncClient(base_url=retell.base_url) as http:
        default = await http.post("/v2/list-calls", json={}, headers=headers)
        oldest = await http.post("/v2/list-calls", json={"sort_order": "ascending", "limit": 2},
                                 headers=headers)
        by_agent = await http.post("/v2/list-calls", json={"filter_criteria": {"agent_id": ["agent_other"]}},
                                   headers=headers)
        by_number = await http.post("/v2/list-calls", json={"filter_criteria": {"to_number": [LEAD]},
                                                            "limit": 1000}, headers=headers)
        bad_limit = await http.post("/v2/list-calls", json={"limit": 1001}, headers=headers)
        bad_key = await http.post("/v2/list-calls", json={"pagination_key": "nope"}, headers=headers)
        no_token = await http.post("/v2/list-calls", json={})
    calls = default.json()
    assert default.status_code == 200 and len(calls) == 50  # Retell's default limit
    assert calls[0]["call_id"] == other_agent.call_id  # newest first
    assert "created_at_ms" not in calls[0] and calls[0]["call_status"] == "registered"
    assert [c["metadata"]["lead_bot_send_key"] for c in oldest.json()] == ["k0", "k1"]
    assert [c["call_id"] for c in by_agent.json()] == [other_agent.call_id]
    assert len(by_number.json()) == 51
    assert bad_limit.status_code == 400 and bad_key.status_code == 400
    assert no_token.status_code == 401 and no_token.json()["status"] == "error"


# -- FakeCrm / FakeVoice ---------------------------------------------------------------------------------


async def test_fake_crm_read_back(clock: FakeClock) -> None:
    crm = FakeCrm(clock, provider_clock=clock)
    crm.add_contact(make_contact("c1"))
    since = clock.now()
    crm.fail_next(RuntimeError("for the next call, not for the read-back"))
    with pytest.raises(RuntimeError):
        await crm.send_sms("c1", "first")
    crm.fail_next_send(OutcomeUnknownError("ghl", "send SMS", "ConnectionReset before GHL took it"))
    await crm.get_contact("c1")  # other methods do not take a send's failure
    with pytest.raises(OutcomeUnknownError):
        await crm.send_sms("c1", TEXT)
    assert crm.sent == []
    crm.lose_next_answer(OutcomeUnknownError("ghl", "send SMS", "ReadTimeout after the request was sent"))
    with pytest.raises(OutcomeUnknownError):
        await crm.send_sms("c1", TEXT)
    clock.advance(60)
    email = await crm.send_email("c1", "Homes near Oak St", "<p>Hi</p>")
    found = await crm.find_sent_message("c1", channel="sms", text=f" {TEXT} ", since=since)
    email_found = await crm.find_sent_message("c1", channel="email", text="Homes near Oak St", since=since)
    later = await crm.find_sent_message("c1", channel="sms", text=TEXT, since=clock.now())
    other = await crm.find_sent_message("c2", channel="sms", text=TEXT, since=since)
    assert (found.outcome, found.at) == ("found", START) and found.id == crm.sent[0].id
    assert (email_found.outcome, email_found.id) == ("found", email.message_id)
    assert later.outcome == other.outcome == "absent"
    crm.lookup_unknown = "GHL search conversations failed (HTTP 500)"
    assert await crm.find_sent_message("c1", channel="sms", text=TEXT, since=since) == SendLookup(
        "unknown", detail="GHL search conversations failed (HTTP 500)")
    assert ("find_sent_message", ("c1", "sms", TEXT)) in crm.calls
    with pytest.raises(ValueError):
        await crm.find_sent_message("c1", channel="call", text=TEXT, since=since)


async def test_fake_voice_read_back(clock: FakeClock) -> None:
    crm = FakeCrm(clock, provider_clock=clock)
    voice = FakeVoice(crm)
    since = clock.now()
    voice.lose_next_answer(OutcomeUnknownError("Retell", "create phone call", "ReadTimeout"))
    with pytest.raises(OutcomeUnknownError):
        await voice.create_phone_call(LEAD, meta("k1"), {"first_name": "Jane"})
    placed = await voice.create_phone_call(LEAD, meta("k2"), {})
    first = await voice.find_call(LEAD, {"lead_bot_send_key": "k1"}, since=since)
    second = await voice.find_call(LEAD, {"lead_bot_send_key": "k2", "sequence_step": "day_7"}, since=since)
    elsewhere = await voice.find_call("+15125550199", {"lead_bot_send_key": "k1"}, since=since)
    later = await voice.find_call(LEAD, {"lead_bot_send_key": "k1"}, since=since + timedelta(seconds=1))
    assert (first.outcome, first.id, first.at) == ("found", voice.placed[0].id, START)
    assert (second.outcome, second.id) == ("found", placed.call_id)
    assert elsewhere.outcome == later.outcome == "absent"
    assert len(crm.sent_to("cI08i1Bls3iTB9bKgFJh", "call")) == 2
    # By default the fakes date records in wall time, as GHL and Retell do; `since` is wall time too.
    walled = FakeVoice(FakeCrm(clock))
    wall_since = datetime.now(UTC)
    await walled.create_phone_call(LEAD, meta("k3"), {})
    assert (await walled.find_call(LEAD, {"lead_bot_send_key": "k3"}, since=wall_since)).outcome == "found"
    assert walled.placed[0].at == START  # the bot's own record keeps the bot's (virtual) time
    voice.lookup_unknown = "Retell list calls: the endpoint is missing (HTTP 404)"
    assert (await voice.find_call(LEAD, {"lead_bot_send_key": "k1"}, since=since)).outcome == "unknown"
