"""The words the bot sends back when a lead replies: compliance texts, closes, hand-offs and the CMA.

Each reply is a plain ``str.format`` template with named fields plus a function that fills it. The
functions clean what they insert (whitespace collapsed, control characters dropped, long values clipped)
so that every SMS stays within ``SMS_LIMIT`` (two segments) whatever the names are, and the SMS texts
themselves are plain ASCII so they go out as GSM-7. The CMA email escapes every inserted value with
``html.escape``. Compliance texts follow CTIA/FCC practice: the opt-out confirmation only confirms (no
marketing); the HELP reply names the program, a human to reach, the message frequency, "Msg & data rates
may apply" and how to opt out.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ghl_real_estate_ai.conversation.cma import Valuation

SMS_LIMIT = 320
"""Longest SMS the bot sends: two GSM-7 segments' worth, so a reply is never split into three."""

# How much of each inserted value is kept, so long names cannot push a text past SMS_LIMIT.
NAME_LIMIT = 30
PROGRAM_LIMIT = 40
AGENT_LIMIT = 40
CONTACT_LIMIT = 60
ADDRESS_LIMIT = 60
HINT_LIMIT = 40

OPT_OUT_CONFIRMATION = (
    "You're unsubscribed from {program} messages. No more texts will be sent. Reply START to resubscribe."
)
OPT_OUT_CONFIRMATION_EMAIL = (
    "You're unsubscribed from {program} messages. No more emails or texts will be sent. "
    "Reply START to resubscribe."
)
OPT_IN_CONFIRMATION = (
    "You're resubscribed to {program} texts. Msg & data rates may apply. "
    "Reply HELP for help, STOP to opt out."
)
HELP_REPLY = (
    "{program}: real-estate follow-up texts from {agent}. {reach} {frequency} Msg & data rates may apply. "
    "Reply STOP to opt out."
)
HELP_REACH_PHONE = "Questions? Call or text {contact}."
HELP_REACH_EMAIL = "Questions? Email {contact}."
HELP_REACH_REPLY = "Questions? Reply here and {agent} will get back to you."
DEFAULT_FREQUENCY = "Msg frequency varies."
HANDOFF_CONFIRMATION = "Great, {first_name}! {agent} will reach out {when}."
HOME_VALUE_ACK = (
    "Great question, {first_name}! Pulling recent sales near {place} now. "
    "I'll send your estimate in a moment."
)
CMA_BY_AGENT = (
    "Thanks, {first_name}! I don't have enough recent sales near {place} for a reliable automatic "
    "estimate, so {agent} will prepare your home value report personally and send it to you."
)
CMA_ASK_ADDRESS = (
    "Happy to, {first_name}! What's the property's address (street, city and zip)? "
    "I'll pull recent sales near it."
)
NOT_INTERESTED_CLOSE = (
    "No problem, {first_name}, thanks for letting me know. If your plans change, just reply here. "
    "Reply STOP anytime to opt out."
)
HAS_AGENT_CLOSE = (
    "Thanks for letting me know, {first_name}, and good luck! I'll close out my follow-ups. "
    "If you ever want a second opinion, just reply here."
)
ALREADY_SOLD_CLOSE = (
    "Congratulations, {first_name}! I'll close out my follow-ups. "
    "If you ever need anything real-estate related, just reply here."
)
QUESTION_REPLY = (
    "Good question, {first_name}! I'll have {agent} get you the details{about}. "
    "Would a quick call or a showing be easiest?"
)
OTHER_REPLY = (
    "Thanks, {first_name}! Are you still thinking about buying or selling? {agent} is happy to help."
)
CMA_REPORT_PROMPT = "Reply EMAIL for the full report."
CMA_SMS = (
    "{first_name}, {subject} are selling for about {value} (likely {low}-{high}), based on {count} "
    "recent nearby sales. " + CMA_REPORT_PROMPT + "{size_hint} - {agent}"
)
CMA_SIZE_HINT = " Send your home's square footage for a sharper number."
CMA_EMAIL_SUBJECT = "Your home value estimate: about {value}"


Words = Mapping[str, Any]
"""A location's own templates by name (``locations_config.TEMPLATE_FIELDS``); missing ones are built in."""


def _t(words: Words | None, name: str, builtin: str) -> str:
    return str((words or {}).get(name) or builtin)


@dataclass(frozen=True)
class EmailContent:
    """An email ready for GHL: ``subject`` and ``text`` are plain text, ``html`` is escaped markup."""

    subject: str
    html: str
    text: str


def clean(value: object, limit: int) -> str:
    """``value`` as one line of text: control characters dropped, whitespace collapsed, clipped to
    ``limit`` characters (ending in "...")."""
    text = "".join(" " if unicodedata.category(ch)[0] in "CZ" else ch for ch in str(value or ""))
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > limit:
        text = text[: max(0, limit - 3)].rstrip() + "..."
    return text


def fit_sms(text: str) -> str:
    """The last guard: collapse whitespace and clip to ``SMS_LIMIT``. Filled templates never need clipping
    (fields are clipped first); this keeps a caller's own text from becoming a third segment."""
    return clean(text, SMS_LIMIT)


def money(amount: float) -> str:
    """``452000`` -> ``"$452,000"``."""
    return f"${amount:,.0f}"


def _name(first_name: str) -> str:
    return clean(first_name, NAME_LIMIT) or "there"


def opt_out_confirmation(program: str, channel: str = "sms") -> str:
    """The single confirmation allowed after an opt-out: confirms and says how to undo it, nothing else.
    It goes back on the channel the opt-out came in on."""
    template = OPT_OUT_CONFIRMATION_EMAIL if channel == "email" else OPT_OUT_CONFIRMATION
    return fit_sms(template.format(program=clean(program, PROGRAM_LIMIT) or "these"))


def is_opt_out_confirmation(text: str) -> bool:
    """True when ``text`` is (a filled) ``OPT_OUT_CONFIRMATION``; used to send it at most once."""
    return text.startswith("You're unsubscribed from ") and "Reply START to resubscribe." in text


def opt_in_confirmation(program: str, words: Words | None = None) -> str:
    """Sent after START: texts are allowed again (the sequence is not restarted, so nothing is promised)."""
    template = _t(words, "opt_in_confirmation", OPT_IN_CONFIRMATION)
    return fit_sms(template.format(program=clean(program, PROGRAM_LIMIT) or "these"))


def help_reply(program: str, agent: str, contact: str = "", *, frequency: str = DEFAULT_FREQUENCY,
               words: Words | None = None) -> str:
    """The HELP/INFO answer: program, a human to reach, frequency, rates, and how to opt out."""
    agent_text = clean(agent, AGENT_LIMIT) or "your agent"
    contact_text = clean(contact, CONTACT_LIMIT)
    if not contact_text:
        reach = HELP_REACH_REPLY.format(agent=agent_text)
    elif "@" in contact_text:
        reach = HELP_REACH_EMAIL.format(contact=contact_text)
    else:
        reach = HELP_REACH_PHONE.format(contact=contact_text)
    return fit_sms(
        _t(words, "help_reply", HELP_REPLY).format(
            program=clean(program, PROGRAM_LIMIT) or "Lead Bot",
            agent=agent_text,
            reach=reach,
            frequency=clean(frequency, 60) or DEFAULT_FREQUENCY,
        )
    )


def handoff_confirmation(first_name: str, agent: str, meeting_hint: str | None = None,
                         words: Words | None = None) -> str:
    """Tells a lead who wants to talk or meet that a human will follow up (and when, if they said)."""
    hint = clean(meeting_hint, HINT_LIMIT)
    when = f"to confirm {hint}" if hint else "shortly"
    return fit_sms(
        _t(words, "handoff_confirmation", HANDOFF_CONFIRMATION).format(
            first_name=_name(first_name), agent=clean(agent, AGENT_LIMIT), when=when)
    )


def home_value_ack(first_name: str, address: str | None = None, words: Words | None = None) -> str:
    """The quick answer to "what's my house worth?" while the CMA is prepared and sent separately."""
    place = clean(address, ADDRESS_LIMIT) or "you"
    template = _t(words, "home_value_ack", HOME_VALUE_ACK)
    return fit_sms(template.format(first_name=_name(first_name), place=place))


def cma_by_agent(first_name: str, agent: str, address: str | None = None, words: Words | None = None) -> str:
    """The answer when no automatic estimate can be made: a human will send one (a task was created)."""
    place = clean(address, ADDRESS_LIMIT) or "you"
    return fit_sms(_t(words, "cma_by_agent", CMA_BY_AGENT).format(first_name=_name(first_name), place=place,
                                       agent=clean(agent, AGENT_LIMIT) or "your agent"))


def cma_ask_address(first_name: str, words: Words | None = None) -> str:
    """The answer to "what's my house worth?" when the bot does not know which house."""
    return fit_sms(_t(words, "cma_ask_address", CMA_ASK_ADDRESS).format(first_name=_name(first_name)))


def not_interested_close(first_name: str, words: Words | None = None) -> str:
    template = _t(words, "not_interested_close", NOT_INTERESTED_CLOSE)
    return fit_sms(template.format(first_name=_name(first_name)))


def has_agent_close(first_name: str, words: Words | None = None) -> str:
    return fit_sms(_t(words, "has_agent_close", HAS_AGENT_CLOSE).format(first_name=_name(first_name)))


def already_sold_close(first_name: str, words: Words | None = None) -> str:
    return fit_sms(_t(words, "already_sold_close", ALREADY_SOLD_CLOSE).format(first_name=_name(first_name)))


def question_reply(first_name: str, agent: str, address: str | None = None,
                   words: Words | None = None) -> str:
    """A generic answer to a question the rules cannot answer: promises the details, asks one question."""
    place = clean(address, ADDRESS_LIMIT)
    return fit_sms(
        _t(words, "question_reply", QUESTION_REPLY).format(
            first_name=_name(first_name),
            agent=clean(agent, AGENT_LIMIT) or "your agent",
            about=f" on {place}" if place else "",
        )
    )


def other_reply(first_name: str, agent: str, words: Words | None = None) -> str:
    agent_text = clean(agent, AGENT_LIMIT) or "your agent"
    agent_text = agent_text[:1].upper() + agent_text[1:]
    template = _t(words, "other_reply", OTHER_REPLY)
    return fit_sms(template.format(first_name=_name(first_name), agent=agent_text))


def reply_subject(program: str, address: str | None = None) -> str:
    """Subject line for an emailed reply (plain text, one line)."""
    place = clean(address, ADDRESS_LIMIT)
    return f"Re: {place}" if place else f"Re: your message to {clean(program, PROGRAM_LIMIT) or 'us'}"


def cma_sms(valuation: Valuation, *, first_name: str, agent_name: str, words: Words | None = None) -> str:
    """A short text with the estimate and its range; the full report goes by email."""
    address = clean(valuation.subject.address, ADDRESS_LIMIT)
    return fit_sms(
        _t(words, "cma_sms", CMA_SMS).format(
            first_name=_name(first_name),
            subject=f"homes like {address}" if address else "homes like yours",
            value=money(valuation.value),
            low=money(valuation.low),
            high=money(valuation.high),
            count=len(valuation.comps),
            size_hint=CMA_SIZE_HINT if valuation.method == "median_price" else "",
            agent=clean(agent_name, AGENT_LIMIT) or "your agent",
        )
    )


def cma_email(
    valuation: Valuation, *, first_name: str, agent_name: str, program_name: str, agent_contact: str = "",
    words: Words | None = None,
) -> EmailContent:
    """The full CMA: estimate, range, how it was made, and a table of the comparable sales.

    Every inserted value is escaped with ``html.escape``; the subject is plain text on one line.
    """
    esc = html.escape
    name = _name(first_name)
    agent = clean(agent_name, 80) or "your agent"
    program = clean(program_name, 80) or "Lead Bot"
    address = clean(valuation.subject.address, 120)
    value, low, high = money(valuation.value), money(valuation.low), money(valuation.high)
    subject_line = _t(words, "cma_email_subject", CMA_EMAIL_SUBJECT).format(value=value)
    subject = clean(subject_line + (f" for {address}" if address else ""), 150)
    if valuation.confidence and valuation.method == "price_per_sqft":  # the appraisal's estimate
        how = (
            f"{len(valuation.comps)} comparable sales nearby (median {money(valuation.price_per_sqft_median)}"
            f"/sq ft), each adjusted for size, age and the local market's trend since it sold, the closest "
            f"and most similar counting most, for {valuation.subject.sqft:,} sq ft"
        )
    elif valuation.confidence:
        how = (
            f"the prices of {len(valuation.comps)} comparable sales nearby, adjusted for the local market's "
            "trend since each sold; tell us your home's square footage for a sharper estimate"
        )
    elif valuation.method == "price_per_sqft":
        how = (
            f"the median price per square foot of {len(valuation.comps)} comparable sales "
            f"({money(valuation.price_per_sqft_median)}/sq ft) times {valuation.subject.sqft:,} sq ft"
        )
    else:
        how = (
            f"the median price of {len(valuation.comps)} comparable sales; tell us your home's square "
            "footage for a sharper estimate"
        )
    rows = "".join(
        "<tr>"
        f"<td>{esc(clean(sale.address, 120))}, {esc(clean(sale.city, 60))}</td>"
        f"<td>{sale.beds} bd / {sale.baths:g} ba</td>"
        f"<td style=\"text-align:right\">{sale.sqft:,}</td>"
        f"<td style=\"text-align:right\">{money(sale.price)}</td>"
        f"<td style=\"text-align:right\">{money(sale.price_per_sqft)}</td>"
        f"<td>{sale.sold_on.isoformat()}</td>"
        "</tr>"
        for sale in valuation.comps
    )
    contact = clean(agent_contact, CONTACT_LIMIT)
    reach = f" at {esc(contact)}" if contact else ""
    property_line = f" for <strong>{esc(address)}</strong>" if address else ""
    body = (
        f"<p>Hi {esc(name)},</p>"
        f"<p>Here is your home value estimate{property_line} as of {valuation.as_of.isoformat()}:</p>"
        f"<p style=\"font-size:1.4em\"><strong>{value}</strong><br>"
        f"Likely range: {low} to {high}</p>"
        f"<p>How we got there: {esc(how)}.</p>"
        "<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\">"
        "<thead><tr><th>Address</th><th>Beds / baths</th><th>Sq ft</th><th>Price</th><th>$/sq ft</th>"
        "<th>Sold</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        "<p>This is an automated estimate from recent nearby sales, not an appraisal. For a precise number, "
        f"{esc(agent)} can walk through your home with you{reach}: just reply to this email.</p>"
        f"<p>{esc(agent)}<br>{esc(program)}</p>"
        "<p style=\"font-size:small\">Don't want these emails? Reply UNSUBSCRIBE.</p>"
    )
    text_lines = [
        f"Hi {name},",
        f"Your home value estimate{f' for {address}' if address else ''}: {value} (likely {low} to {high}).",
        f"How we got there: {how}.",
        *(
            f"- {clean(s.address, 120)}, {clean(s.city, 60)}: {s.beds} bd / {s.baths:g} ba, "
            f"{s.sqft:,} sq ft, {money(s.price)}, sold {s.sold_on.isoformat()}"
            for s in valuation.comps
        ),
        "This is an automated estimate from recent nearby sales, not an appraisal.",
        f"{agent}, {program}",
    ]
    return EmailContent(subject=subject, html=body, text="\n".join(text_lines))
