"""Reply templates: SMS length and encoding with hostile names, compliance wording, and the CMA email."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pytest

from ghl_real_estate_ai.conversation import templates
from ghl_real_estate_ai.conversation.cma import Sale, Subject, Valuation

LONG = "Maximilian-Alexander " * 30
WEIRD = "Zoë 🏡\n\t\u200b\x07 " * 20
AS_OF = date(2026, 11, 1)


def _valuation(
    address: str = "12 Oak St", sqft: int | None = 2000, comps_address: str = "1 Elm St"
) -> Valuation:
    comps = [
        Sale(f"{comps_address} #{i}", "Austin", "TX", "78704", 30.25, -97.75, 3, 2.5, 1000, price,
             date(2026, 9, i + 1), "single_family")
        for i, price in enumerate((200_000, 250_000, 300_000, 350_000))
    ]
    # $/sqft 200, 250, 300, 350: median 275 and inclusive quartiles 237.5 and 312.5, times 2,000 sq ft (the
    # default size), or the same of the prices when the size is unknown; rounded to the nearest thousand.
    value, low, high = (550_000, 475_000, 625_000) if sqft else (275_000, 238_000, 313_000)
    return Valuation(
        value=value,
        low=low,
        high=high,
        price_per_sqft_median=275.0,
        comps=comps,
        subject=Subject(address, "Austin", "TX", "78704", sqft=sqft),
        as_of=AS_OF,
        method="price_per_sqft" if sqft else "median_price",
    )


SMS_BUILDERS: dict[str, Callable[[str], str]] = {
    "opt_out": lambda v: templates.opt_out_confirmation(v),
    "opt_in": lambda v: templates.opt_in_confirmation(v),
    "help": lambda v: templates.help_reply(v, v, v),
    "help_email": lambda v: templates.help_reply(v, v, v + "@example.com"),
    "help_no_contact": lambda v: templates.help_reply(v, v),
    "handoff": lambda v: templates.handoff_confirmation(v, v, v),
    "handoff_no_hint": lambda v: templates.handoff_confirmation(v, v),
    "home_value": lambda v: templates.home_value_ack(v, v),
    "not_interested": lambda v: templates.not_interested_close(v),
    "has_agent": lambda v: templates.has_agent_close(v),
    "already_sold": lambda v: templates.already_sold_close(v),
    "question": lambda v: templates.question_reply(v, v, v),
    "other": lambda v: templates.other_reply(v, v),
    "cma": lambda v: templates.cma_sms(_valuation(address=v), first_name=v, agent_name=v),
    "cma_no_size": lambda v: templates.cma_sms(_valuation(address=v, sqft=None), first_name=v, agent_name=v),
}


@pytest.mark.parametrize("value", ["Jo", "", LONG, WEIRD, "<b>&amp;</b>"])
@pytest.mark.parametrize("name", sorted(SMS_BUILDERS))
def test_every_sms_stays_under_the_limit(name: str, value: str) -> None:
    text = SMS_BUILDERS[name](value)
    assert 0 < len(text) <= templates.SMS_LIMIT
    assert "\n" not in text and "\t" not in text and "\x07" not in text
    assert "{" not in text and "}" not in text


@pytest.mark.parametrize("name", sorted(SMS_BUILDERS))
def test_sms_with_plain_inputs_is_plain_ascii(name: str) -> None:
    assert SMS_BUILDERS[name]("Jane Smith").isascii()


def test_opt_out_confirmation_only_confirms() -> None:
    text = templates.opt_out_confirmation("Acme Realty")
    assert text == (
        "You're unsubscribed from Acme Realty messages. No more texts will be sent. "
        "Reply START to resubscribe."
    )
    assert templates.is_opt_out_confirmation(text)
    assert not templates.is_opt_out_confirmation(templates.opt_in_confirmation("Acme Realty"))
    for marketing in ("home", "listing", "agent", "value", "http"):
        assert marketing not in text.lower()


def test_opt_in_confirmation() -> None:
    text = templates.opt_in_confirmation("Acme Realty")
    assert "resubscribed to Acme Realty" in text
    assert "STOP" in text and "HELP" in text and "Msg & data rates may apply" in text


@pytest.mark.parametrize(
    ("contact", "reach"),
    [
        ("+1 512-555-0100", "Call or text +1 512-555-0100."),
        ("sam@acme.test", "Email sam@acme.test."),
        ("", "Reply here and Sam Lee will get back to you."),
    ],
)
def test_help_reply_has_everything_ctia_asks_for(contact: str, reach: str) -> None:
    text = templates.help_reply("Acme Realty", "Sam Lee", contact)
    assert text.startswith("Acme Realty:")
    assert reach in text
    assert templates.DEFAULT_FREQUENCY in text
    assert "Msg & data rates may apply" in text
    assert "Reply STOP to opt out" in text
    assert "Up to 4 msgs/mo." in templates.help_reply("Acme", "Sam", frequency="Up to 4 msgs/mo.")


def test_handoff_confirmation_mentions_the_time() -> None:
    confirm = templates.handoff_confirmation("Jane", "Sam", "Saturday")
    assert confirm == "Great, Jane! Sam will reach out to confirm Saturday."
    assert templates.handoff_confirmation("Jane", "Sam") == "Great, Jane! Sam will reach out shortly."
    assert templates.handoff_confirmation("", "Sam").startswith("Great, there!")


def test_home_value_ack_and_question_reply() -> None:
    assert "Pulling recent sales near 12 Oak St now" in templates.home_value_ack("Jane", "12 Oak St")
    assert "near you now" in templates.home_value_ack("Jane")
    question = templates.question_reply("Jane", "Sam", "12 Oak St")
    assert "Sam get you the details on 12 Oak St" in question
    assert question.count("?") == 1


def test_closes() -> None:
    assert "STOP" in templates.not_interested_close("Jane")
    assert "close out my follow-ups" in templates.has_agent_close("Jane")
    assert templates.already_sold_close("Jane").startswith("Congratulations, Jane!")
    assert templates.other_reply("Jane", "your agent").endswith("Your agent is happy to help.")


def test_clean_and_money() -> None:
    assert templates.clean("  a\n\tb  ", 10) == "a b"
    assert templates.clean("abcdefghij", 6) == "abc..."
    assert templates.clean(None, 5) == ""
    assert templates.money(452_000) == "$452,000"
    assert templates.reply_subject("Acme", "12 Oak St") == "Re: 12 Oak St"
    assert templates.reply_subject("Acme") == "Re: your message to Acme"


def test_cma_sms() -> None:
    text = templates.cma_sms(_valuation(), first_name="Jane", agent_name="Sam")
    assert text == (
        "Jane, homes like 12 Oak St are selling for about $550,000 (likely $475,000-$625,000), based on 4 "
        "recent nearby sales. Reply EMAIL for the full report. - Sam"
    )
    no_size = templates.cma_sms(_valuation(address="", sqft=None), first_name="Jane", agent_name="Sam")
    assert "homes like yours" in no_size and "square footage" in no_size


def test_cma_email_escapes_everything_the_lead_or_data_supplied() -> None:
    script = "<script>alert('x')</script>"
    valuation = _valuation(address=f"12 Oak St {script}", comps_address=f"1 Elm {script}")
    mail = templates.cma_email(
        valuation, first_name=f"Jane {script}", agent_name="Sam & Co <b>", program_name="Acme <i>",
        agent_contact="sam@acme.test",
    )
    assert "<script>" not in mail.html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in mail.html
    assert "Sam &amp; Co &lt;b&gt;" in mail.html and "Acme &lt;i&gt;" in mail.html
    assert "\n" not in mail.subject
    assert mail.subject.startswith("Your home value estimate: about $550,000 for")
    assert mail.html.count("<tr>") == 1 + 4  # header and four comparables
    for expected in ("$550,000", "$475,000 to $625,000", "$275/sq ft", "2,000 sq ft", "2026-09-01", "2.5 ba"):
        assert expected in mail.html
    assert "not an appraisal" in mail.html and "UNSUBSCRIBE" in mail.html
    assert "$550,000 (likely $475,000 to $625,000)" in mail.text  # plain text: nothing to escape


def test_cma_email_without_size_explains_the_method() -> None:
    valuation = _valuation(sqft=None)
    mail = templates.cma_email(valuation, first_name="Jane", agent_name="Sam", program_name="Acme")
    assert "median price of 4 comparable sales" in mail.html
