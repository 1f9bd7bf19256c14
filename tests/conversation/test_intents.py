"""The rule classifier: parametrised tables per intent, the tricky negatives, hints, and a fuzz test."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ghl_real_estate_ai.conversation.intents import (
    COMPLIANCE_INTENTS,
    Intent,
    classify,
    extract_meeting_hint,
    normalize,
    strip_quoted_reply,
    typo_distance,
)

OPT_OUT = [
    "STOP",
    "stop",
    "Stop.",
    "  STOP  ",
    "stop!!!",
    "STOP\n",
    "Stpo",
    "sotp",
    "stooooop",
    "STOP STOP STOP",
    "s t o p",
    "S-T-O-P",
    "s.t.o.p",
    "Stop 🙂",
    "STOPALL",
    "stop all",
    "Unsubscribe",
    "unsubscibe",
    "UNSUBSCRIBE please",
    "unsubscirbe me",
    "unsub",
    "quit",
    "End",
    "End.",
    "revoke",
    "Opt out",
    "opt-out",
    "OPTOUT",
    "Opt Out Please",
    "cancel",
    "Cancel.",
    "REMOVE",
    "ARRET",
    "arrêt",
    "TD",
    "plz stop",
    "Stop pls",
    "Please stop texting me",
    "pls stpo texting",
    "stop messaging me",
    "STOP MESSAGING ME 😡",
    "stop txting me",
    "can you stop texting me?",
    "could you stop texting me please",
    "Stop sending me listings",
    "STOP texting me and STOP calling me",
    "wrong number",
    "Wrong #",
    "u got the wrong number",
    "Wrong #, this is Bob",
    "remove me from your list",
    "Take me off your list",
    "take me off",
    "please take me off ur list thx",
    "please delete my number",
    "no more texts",
    "No more!",
    "No more, thanks",
    "don't contact me",
    "Do not contact me again",
    "dont text me",
    "never contact me again",
    "leave me alone",
    "leave me alone!!",
    "No mas",
    "no más",
    "No más mensajes",
    "basta ya",
    "Not interested. Stop",
    "not interested stop",
    "Stop I'm not interested",
    "Stop contacting me, I'm not selling",
    "stop it",
    "stop it now!!",
    "I said STOP",
    "How do I unsubscribe?",
    "how do I make these texts stop?",
    "I'd like to cancel",
    "lose my number",
    "quit texting me",
    "i revoke my consent",
    "please remove my number",
    "This is spam",
    "stop spamming me",
    "texting me is harassment",
    "I never signed up for this",
    "don't start texting me",
    "🛑",
    "⛔️",
    "stoo",
]

OPT_IN = [
    "START",
    "start",
    "Start.",
    "  start  ",
    "Start 🙂",
    "UNSTOP",
    "unstop please",
    "resume",
    "Resume texts",
    "resume messages",
    "START again",
    "Start texting me again",
    "you can text me again",
    "opt in",
    "Opt-in",
    "OPTIN",
    "subscribe",
    "resubscribe",
    "re-subscribe",
    "please start sending texts again",
    "I want to receive texts again",
    "sign me back up",
    "YES START",
]

HELP = [
    "HELP",
    "help",
    "Help!",
    "help?",
    "HELP me",
    "need help",
    "INFO",
    "info",
    "Info please",
    "who is this?",
    "Who's this",
    "who dis",
    "whos this",
    "who is this??",
    "WHO ARE YOU",
    "who r u",
    "new phone who dis",
    "what is this?",
    "what's this about?",
    "How did you get my number?",
    "is this a bot?",
    "are you a real person?",
    "who is texting me",
    "what company is this",
    "Is this spam?",
    "help 🙏",
    "  Who is this??  ",
    "hlep me",
]

INTERESTED = [
    "call me Saturday",
    "yes let's see it",
    "Can we schedule a showing?",
    "I'd like to talk to an agent",
    "Call me tomorrow at 3pm",
    "give me a call",
    "Yeah call me",
    "Yes!",
    "YES",
    "yes please",
    "Sure, what time works?",
    "I'm interested",
    "interested!",
    "Ya I'm interested",
    "Intrested, when can I see it?",
    "Sounds good",
    "can you stop by Saturday?",
    "cancel my Tuesday showing, can we do Wed?",
    "Cancel. Can we do Wed instead?",
    "Let's set up a tour",
    "I want to see the house this weekend",
    "can we meet next Tuesday at 10:30am",
    "Saturday works",
    "SATURDAY WORKS 🙌",
    "the end of the month works",
    "free after 5pm",
    "I'd love to see it",
    "book a showing plz",
    "Can someone call me?",
    "Yes, I'm still looking 👍",
    "i want to talk to someone",
    "Let's chat",
    "Let's do Thursday morning",
    "I don't have an agent yet, can we talk?",
    "don't stop sending me listings",
    "we sold our condo last year and now want to buy",
    "  call me   tomorrow  ",
    "CAN WE SCHEDULE A SHOWNG FOR SATERDAY?",
]

HOME_VALUE = [
    "what's my house worth?",
    "how much could I sell for",
    "home valuation",
    "HOME VALUE",
    "What is my home worth",
    "how much is my house worth?",
    "Whats my place worth",
    "can you do a CMA?",
    "how much can I get for my condo",
    "what would my home sell for",
    "I'd like a home value estimate",
    "property value?",
    "appraisal",
    "What's my property worth these days 🤔",
    "how much would our house go for",
    "market value of my home?",
    "send me comps",
    "what could we list it for",
    "wht is my house wroth",
    "not now, but what's my house worth?",
    "My neighbor sold their house for 500k, what's mine worth?",
    "I have an agent, but what's my home worth?",
    "  how much is my   home worth  ",
    "HOW MUCH COULD I GET FOR MY HOUSE??",
]

NOT_INTERESTED = [
    "not interested",
    "NOT INTERESTED",
    "Not intrested",
    "No thanks",
    "no thank you",
    "No",
    "NO.",
    "nope",
    "no thx 👎",
    "Nah I'm good",
    "not looking anymore",
    "We're not selling",
    "not in the market",
    "changed my mind",
    "no longer interested",
    "maybe later",
    "not right now",
    "I'm good, thanks",
    "we decided to stay put",
    "not ready to sell",
    "pass",
    "not buying right now",
    "  no   thanks  ",
]

HAS_AGENT = [
    "already working with a realtor",
    "ALREADY WORKING WITH AN AGENT!!",
    "I have an agent",
    "We already have a realtor",
    "Already have a relator",
    "my wife is a realtor",
    "I'm working with someone already",
    "we're using another agent",
    "signed with an agent last week",
    "my brother is a broker",
    "I am a realtor myself",
    "we have representation",
    "my realtor is handling it",
    "got an agent thanks",
    "I use my own agent",
    "I have a buyer's agent",
    "I have an agent but thanks",
    "I have an agent 🙂",
    "  we are   working with an agnet  ",
]

ALREADY_SOLD = [
    "we already sold",
    "alredy sold",
    "bought a house already",
    "We sold it",
    "house is sold",
    "sold!",
    "SOLD already thanks",
    "We already bought",
    "we closed on a house last week",
    "already purchased a home",
    "We're under contract",
    "in escrow now",
    "sold our home in March",
    "we bought a place",
    "found a house already",
    "the house sold",
    "already moved",
    "Sold 🎉",
    "  we   already   sold  ",
]

QUESTION = [
    "what are the HOA fees?",
    "is it still available?",
    "How many bedrooms?",
    "Does it have a pool",
    "what's the price",
    "Are pets allowed?",
    "Any price drops?",
    "hoa fees",
    "what school district is it in?",
    "How old is the roof?",
    "is there a garage?",
    "When was it built?",
    "what are the taxes?",
    "Is the price negotiable?",
    "how big is the lot",
    "Where is it?",
    "still for sale?",
    "Has it sold yet?",
    "is it under contract?",
    "What time works for you?",
    "HOA fees? 🤔",
    "is it stil availible?",
    "  how many   bedrooms  ?",
]

OTHER = [
    "ok",
    "OK!",
    "Thanks",
    "thank you!",
    "👍",
    "😂",
    "lol",
    "k",
    "cool",
    "hmm",
    "",
    "   ",
    "Got it",
    "Happy holidays!",
    "Happy Saturday!",
    "🏠🏠",
    "great",
    "will do",
    "sorry, busy",
    "Merry Christmas",
    "good morning",
    "shop",
    "top",
]

# Must NOT be read as an opt-out (see the intents module docstring for why).
NOT_OPT_OUT = [
    ("don't stop sending me listings", Intent.INTERESTED),
    ("can you stop by Saturday?", Intent.INTERESTED),
    ("the end of the month works", Intent.INTERESTED),
    ("cancel my Tuesday showing, can we do Wed?", Intent.INTERESTED),
    ("Cancel. Can we do Wed instead?", Intent.INTERESTED),
    ("I need to cancel, can we do Wed?", Intent.INTERESTED),
    ("I'll stop by the open house", Intent.INTERESTED),
    ("please stop by at 3", Intent.INTERESTED),
    ("stop over on Sunday?", Intent.INTERESTED),
    ("Stop by anytime", Intent.INTERESTED),
    ("Is there a bus stop nearby?", Intent.QUESTION),
    ("stop at the house at 3?", Intent.QUESTION),
    ("Saturday is my last stop", Intent.OTHER),
    ("we went to the end of the street", Intent.OTHER),
    ("What's the cancellation policy?", Intent.QUESTION),
    ("I need to remove the pool table before the showing", Intent.INTERESTED),
    ("I quit my job so we need to sell", Intent.INTERESTED),
    ("I'm going to stop looking for now", Intent.OTHER),
    ("subscribe", Intent.OPT_IN),
    ("top floor?", Intent.QUESTION),
    ("don't stop", Intent.OTHER),
    ("I want to end my lease", Intent.OTHER),
    ("THE END", Intent.OTHER),
    ("Is this spam?", Intent.HELP),
]


def _check(text: str, expected: Intent) -> None:
    verdict = classify(text)
    assert verdict.intent == expected, f"{text!r} -> {verdict}"
    assert 0.0 <= verdict.confidence <= 1.0


@pytest.mark.parametrize("text", OPT_OUT)
def test_opt_out(text: str) -> None:
    _check(text, Intent.OPT_OUT)


@pytest.mark.parametrize("text", OPT_IN)
def test_opt_in(text: str) -> None:
    _check(text, Intent.OPT_IN)


@pytest.mark.parametrize("text", HELP)
def test_help(text: str) -> None:
    _check(text, Intent.HELP)


@pytest.mark.parametrize("text", INTERESTED)
def test_interested(text: str) -> None:
    _check(text, Intent.INTERESTED)


@pytest.mark.parametrize("text", HOME_VALUE)
def test_home_value(text: str) -> None:
    _check(text, Intent.HOME_VALUE)


@pytest.mark.parametrize("text", NOT_INTERESTED)
def test_not_interested(text: str) -> None:
    _check(text, Intent.NOT_INTERESTED)


@pytest.mark.parametrize("text", HAS_AGENT)
def test_has_agent(text: str) -> None:
    _check(text, Intent.HAS_AGENT)


@pytest.mark.parametrize("text", ALREADY_SOLD)
def test_already_sold(text: str) -> None:
    _check(text, Intent.ALREADY_SOLD)


@pytest.mark.parametrize("text", QUESTION)
def test_question(text: str) -> None:
    _check(text, Intent.QUESTION)


@pytest.mark.parametrize("text", OTHER)
def test_other(text: str) -> None:
    _check(text, Intent.OTHER)


@pytest.mark.parametrize(("text", "expected"), NOT_OPT_OUT)
def test_tricky_messages_are_not_opt_outs(text: str, expected: Intent) -> None:
    _check(text, expected)


def test_every_intent_has_at_least_fifteen_phrasings() -> None:
    tables = {
        Intent.OPT_OUT: OPT_OUT,
        Intent.OPT_IN: OPT_IN,
        Intent.HELP: HELP,
        Intent.INTERESTED: INTERESTED,
        Intent.HOME_VALUE: HOME_VALUE,
        Intent.NOT_INTERESTED: NOT_INTERESTED,
        Intent.HAS_AGENT: HAS_AGENT,
        Intent.ALREADY_SOLD: ALREADY_SOLD,
        Intent.QUESTION: QUESTION,
        Intent.OTHER: OTHER,
    }
    assert set(tables) == set(Intent)
    assert all(len(set(rows)) >= 15 for rows in tables.values())


def test_intent_values_are_the_documented_strings() -> None:
    assert [i.value for i in Intent] == [
        "opt_out", "opt_in", "help", "interested", "home_value", "not_interested", "has_agent",
        "already_sold", "question", "other",
    ]
    assert Intent("opt_out") is Intent.OPT_OUT
    assert f"{Intent.HELP}" == "help"
    assert {Intent.OPT_OUT, Intent.OPT_IN, Intent.HELP} == COMPLIANCE_INTENTS


@pytest.mark.parametrize(
    ("text", "matched", "confidence"),
    [
        ("STOP", "keyword:stop", 1.0),
        ("stpo", "keyword:stop", 0.9),
        ("wrong number", "phrase:wrong number", 0.9),
        ("Not interested. Stop", "keyword:stop", 0.95),
        ("ok", None, 0.3),
        ("", None, 0.0),
    ],
)
def test_matched_rule_and_confidence(text: str, matched: str | None, confidence: float) -> None:
    verdict = classify(text)
    assert verdict.matched == matched
    assert verdict.confidence == pytest.approx(confidence)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("call me Saturday", "Saturday"),
        ("Call me tomorrow at 3pm", "tomorrow at 3pm"),
        ("can we meet next Tuesday at 10:30am", "next Tuesday at 10:30am"),
        ("cancel my Tuesday showing, can we do Wed?", "Wednesday"),
        ("I can meet Sat at 2", "Saturday at 2"),
        ("Let's do Thursday morning", "Thursday morning"),
        ("sure, tmrw @ 4pm?", "tomorrow at 4pm"),
        ("i will stop by tomorrow at noon", "tomorrow at noon"),
        ("I want to see the house this weekend", "this weekend"),
        ("the end of the month works", "end of the month"),
        ("free after 5pm", "after 5pm"),
        ("at 3pm on Saturday works", "Saturday at 3pm"),
        ("how about saterday at 4 p.m.?", "Saturday at 4pm"),
        ("yes let's see it", None),
        ("we'd like to see it", None),
        ("good morning", None),
    ],
)
def test_meeting_hint(text: str, hint: str | None) -> None:
    assert extract_meeting_hint(text) == hint
    verdict = classify(text)
    if verdict.intent in (Intent.INTERESTED, Intent.QUESTION):
        assert verdict.meeting_hint == hint


def test_no_meeting_hint_outside_interest_and_questions() -> None:
    assert classify("STOP, I'm busy Saturday").meeting_hint is None
    assert classify("Happy Saturday!").meeting_hint is None


@pytest.mark.parametrize(
    ("typo", "word", "distance"),
    [
        ("stpo", "stop", 1),
        ("stoo", "stop", 1),
        ("shop", "stop", 2),
        ("unsubscibe", "unsubscribe", 1),
        ("stop", "stop", 0),
    ],
)
def test_typo_distance(typo: str, word: str, distance: int) -> None:
    assert typo_distance(typo, word) == distance


@pytest.mark.parametrize("word", ["subscribe", "top", "atop", "shop", "step", "stops", "uninterested"])
def test_real_words_are_never_corrected_into_keywords(word: str) -> None:
    assert normalize(word).tokens == (word,)
    assert not normalize(word).corrected


def test_normalize_splits_clauses_and_marks_questions() -> None:
    normalized = normalize("Hi!  Who's THIS?? Stop 😡 now")
    assert [c.text for c in normalized.clauses] == ["hi", "who's this", "stop", "now"]
    assert [c.question for c in normalized.clauses] == [False, True, False, False]


def test_strip_quoted_reply_drops_the_bots_own_footer() -> None:
    email = (
        "Sounds great, Saturday works.\n\nOn Tue, Nov 3, 2026 at 9:00 AM Sam <sam@acme.test> wrote:\n"
        "> Hi Jane, want to see it? Reply STOP to opt out."
    )
    assert strip_quoted_reply(email) == "Sounds great, Saturday works."
    assert classify(strip_quoted_reply(email)).intent == Intent.INTERESTED
    assert strip_quoted_reply("> quoted only\nreal text") == "real text"
    below = "On Tue, Nov 3, 2026 Sam <sam@acme.test> wrote:\n> Want to see it?\n\nSTOP"
    assert strip_quoted_reply(below) == "STOP"
    assert strip_quoted_reply("Thanks!\n\n-- \nJane Doe\nReply STOP? no") == "Thanks!"


def test_long_messages_classify_in_linear_time() -> None:
    text = "don't stop sending me listings, " * 5_000
    started = time.perf_counter()
    assert classify(text).intent == Intent.INTERESTED
    assert classify(text + " STOP").intent == Intent.OPT_OUT
    assert time.perf_counter() - started < 5.0


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_classify_never_raises_on_arbitrary_unicode(text: str) -> None:
    verdict = classify(text)
    assert isinstance(verdict.intent, Intent)
    assert 0.0 <= verdict.confidence <= 1.0
    assert verdict.matched is None or isinstance(verdict.matched, str)
    assert verdict.meeting_hint is None or isinstance(verdict.meeting_hint, str)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["STOP", "stop", "Stop", "UNSUBSCRIBE", "quit", "cancel", "end", "opt out"]),
       st.sampled_from(["", " ", "  ", "\n", "\t"]), st.sampled_from(["", ".", "!", "!!!", " 😡", "."]))
def test_fcc_words_alone_are_always_opt_outs(word: str, space: str, tail: str) -> None:
    assert classify(f"{space}{word}{tail}{space}").intent == Intent.OPT_OUT
