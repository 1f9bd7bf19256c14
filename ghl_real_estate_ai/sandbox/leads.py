"""The demo world's leads: six contacts with a story each and the scripted replies that tell it (``lead-bot
demo`` plays the scripts; Studio's demo world holds the contacts), and the contact an unknown id gets in
Studio."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ghl_real_estate_ai.sandbox.fakes import make_contact

# Monday 2026-03-02, 14:00 UTC: morning on the mainland, 04:00 in Honolulu. The run crosses the DST change.
DEMO_START = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


@dataclass(frozen=True)
class DemoLead:
    record: dict[str, Any]
    story: str
    script: tuple[tuple[timedelta, dict[str, Any]], ...] = ()


def _says(after: timedelta, text: str) -> tuple[timedelta, dict[str, Any]]:
    """A scripted SMS from the lead, ``after`` enrollment."""
    return after, {"type": "inbound_message", "channel": "sms", "text": text}


def demo_leads() -> list[DemoLead]:
    day = timedelta(days=1)
    return [
        DemoLead(
            make_contact(
                "demo-maria",
                first_name="Maria",
                last_name="Lopez",
                city="Austin",
                state="TX",
                timezone="America/Chicago",
                phone="+15125550101",
                email="maria@example.com",
            ),
            "Austin, TX: never replies; gets the whole 3-7-30 sequence, then monthly nurture",
        ),
        DemoLead(
            make_contact(
                "demo-dev",
                first_name="Dev",
                last_name="Patel",
                city="Tampa",
                state="FL",
                timezone="America/New_York",
                phone="+18135550102",
                email="dev@example.com",
            ),
            "Tampa, FL (texts only 08:00-20:00): asks a question on day 8, then goes quiet",
            (_says(8 * day + timedelta(hours=6), "What are HOA fees like in those neighborhoods?"),),
        ),
        DemoLead(
            make_contact(
                "demo-sam",
                first_name="Sam",
                last_name="Lee",
                city="Seattle",
                state=None,
                timezone=None,
                phone="+12065550103",
                email=None,
            ),
            "Seattle (zone from the 206 area code, WA window), no email: day_14 falls back to SMS",
        ),
        DemoLead(
            make_contact(
                "demo-chris",
                first_name="Chris",
                last_name="Young",
                city="Phoenix",
                state="AZ",
                timezone="America/Phoenix",
                phone="+16025550104",
                email="chris@example.com",
            ),
            "Phoenix, AZ: replies STOP on day 5; gets one confirmation and nothing else, ever",
            (_says(5 * day + timedelta(hours=3), "STOP"),),
        ),
        DemoLead(
            make_contact(
                "demo-ana",
                first_name="Ana",
                last_name="Ruiz",
                city="Miami",
                state="FL",
                timezone="America/New_York",
                phone="+13055550105",
                email="ana@example.com",
            ),
            "Miami, FL: 'call me Saturday' on day 1: qualified and handed to a human agent",
            (_says(1 * day + timedelta(hours=4), "Yes! Can you call me Saturday morning?"),),
        ),
        DemoLead(
            make_contact(
                "demo-kai",
                first_name="Kai",
                last_name="Akana",
                city="Austin",
                state="TX",
                timezone="Pacific/Honolulu",
                phone="+18085550106",
                email="kai@example.com",
                address="1402 S Congress Ave",
                postal_code="78704",
            ),
            "Honolulu time zone, owns in Austin: asks what the house is worth on day 12: gets a CMA by email",
            (_says(12 * day + timedelta(hours=8), "what's my house worth these days?"),),
        ),
    ]


def generated_contact(contact_id: str) -> dict[str, Any]:
    """A GHL-shaped contact for an id the demo world has never seen (Studio: any ``contact_id`` works): an
    Austin, TX lead with a phone number and an email address derived from the id, so the same id always
    gets the same contact."""
    digits = int(hashlib.sha256(contact_id.encode()).hexdigest(), 16) % 10_000
    handle = "".join(c if c.isalnum() else "." for c in contact_id.lower()).strip(".") or "lead"
    return make_contact(
        contact_id,
        first_name="Lead",
        last_name=contact_id,
        email=f"{handle}@example.com",
        phone=f"+1512555{digits:04d}",
        timezone="America/Chicago",
        state="TX",
        city="Austin",
    )
