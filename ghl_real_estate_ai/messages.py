"""The words the timed sequence sends: one template per step, plus nurture and stall-breaker variants.

Templates use ``str.format`` fields: ``first_name``, ``agent_name``, ``program_name``, ``area``.
Every first SMS names the sender and says how to opt out (10DLC / LC Phone policy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Words = Mapping[str, Any]
"""A location's own templates by name (``locations_config.TEMPLATE_FIELDS``); missing ones are built in."""

OPT_OUT_FOOTER = "Reply STOP to opt out."

DAY_3_SMS = (
    "Hi {first_name}, it's {agent_name} with {program_name}. Thanks for your interest in homes{area}! "
    "Are you thinking of buying, selling, or both? " + OPT_OUT_FOOTER
)
DAY_14_EMAIL_SUBJECT = "{first_name}, a few homes{area} you might like"
DAY_14_EMAIL_HTML = (
    "<p>Hi {first_name},</p>"
    "<p>It's {agent_name} with {program_name}. I put together a few thoughts on the market{area} and "
    "would love to hear what you're looking for: timing, budget, must-haves.</p>"
    "<p>Just reply to this email, or text me back, and I'll take it from there.</p>"
    "<p>{agent_name}<br>{program_name}</p>"
    '<p style="font-size:small">Don\'t want these emails? Reply UNSUBSCRIBE.</p>'
)
DAY_30_SMS = (
    "Hi {first_name}, {agent_name} again. Still keeping an eye on the market{area} for you. "
    "Want me to send a few new listings or a quick home-value estimate? " + OPT_OUT_FOOTER
)
NURTURE_SMS: tuple[str, ...] = (
    "Hi {first_name}, {agent_name} here with your monthly market note: homes{area} are still moving. "
    "Happy to help whenever you're ready. " + OPT_OUT_FOOTER,
    "Hi {first_name}, curious what your home is worth this month? Reply VALUE and I'll send an estimate. "
    + OPT_OUT_FOOTER,
    "Hi {first_name}, new listings just hit the market{area}. Want me to send the best ones? "
    + OPT_OUT_FOOTER,
)
STALL_BREAKER_SMS: tuple[str, ...] = (
    "Hi {first_name}, just checking you saw my last message. Any questions I can answer?",
    "{first_name}, would a quick call this week help? Tell me a time that works.",
    "No rush, {first_name}. Should I keep sending you homes{area}, or is now not a good time?",
    "Hi {first_name}, still here if you need anything. Want a few listings to look at this weekend?",
)


@dataclass(frozen=True)
class Email:
    subject: str
    html: str


def fields(contact: dict[str, Any], *, agent_name: str, program_name: str) -> dict[str, str]:
    """The template fields for a contact snapshot (missing values get friendly defaults)."""
    city = contact.get("city")
    return {
        "first_name": contact.get("first_name") or "there",
        "agent_name": agent_name,
        "program_name": program_name,
        "area": f" in {city}" if city else "",
    }


DAY_14_SMS = (
    "Hi {first_name}, it's {agent_name} with {program_name}. What are you looking for in your next "
    "home? Tell me and I'll send matches. " + OPT_OUT_FOOTER
)
DAY_7_SMS = (
    "Hi {first_name}, {agent_name} with {program_name}. I tried to reach you: when's a good time "
    "for a quick call? " + OPT_OUT_FOOTER
)


def stall_breaker_count(words: Words | None = None) -> int:
    """How many stall-breaker variants there are (a location may have its own list)."""
    return len((words or {}).get("stall_breaker_sms") or STALL_BREAKER_SMS)


def sms_for(step: str, values: dict[str, str], variant: int = 0, words: Words | None = None) -> str:
    """The step's SMS, from the location's ``words`` where it has its own template."""
    own = words or {}
    if step in ("nurture", "stall_breaker"):
        variants = own.get(f"{step}_sms") or (NURTURE_SMS if step == "nurture" else STALL_BREAKER_SMS)
        return str(variants[variant % len(variants)]).format(**values)
    # day_14 falls back to SMS without an email address, day_7 when the call cannot be placed
    builtin = {"day_3": DAY_3_SMS, "day_7": DAY_7_SMS, "day_14": DAY_14_SMS, "day_30": DAY_30_SMS}.get(step)
    if builtin is None:
        raise ValueError(f"no SMS template for step {step!r}")
    return str(own.get(f"{step}_sms") or builtin).format(**values)


def email_for(step: str, values: dict[str, str], words: Words | None = None) -> Email:
    if step != "day_14":
        raise ValueError(f"no email template for step {step!r}")
    import html

    own = words or {}
    safe = {k: html.escape(v) for k, v in values.items()}
    subject = str(own.get("day_14_email_subject") or DAY_14_EMAIL_SUBJECT)
    body = str(own.get("day_14_email_html") or DAY_14_EMAIL_HTML)
    return Email(subject.format(**values), body.format(**safe))
