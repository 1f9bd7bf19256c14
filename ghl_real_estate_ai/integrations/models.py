"""Small response models and the protocols that nodes depend on (never on httpx)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

Channel = Literal["sms", "email", "call"]

# GHL dndSettings keys (v2 spelling) per bot channel; v3 uses lower camel case ("sms", "email", "call").
DND_KEYS: dict[str, tuple[str, ...]] = {
    "sms": ("SMS", "sms"),
    "email": ("Email", "email"),
    "call": ("Call", "call"),
}


@dataclass(frozen=True)
class Contact:
    """The parts of a GHL contact the bot reads. ``dnd_channels`` holds the bot channels blocked by DND."""

    id: str
    first_name: str = ""
    last_name: str = ""
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    state: str | None = None
    address: str | None = None
    city: str | None = None
    postal_code: str | None = None
    dnd: bool = False
    dnd_channels: frozenset[str] = frozenset()
    tags: tuple[str, ...] = ()
    assigned_to: str | None = None
    location_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_ghl(cls, data: dict[str, Any]) -> Contact:
        """Build from a GHL contact object (the value under ``contact`` of ``GET /contacts/{id}``)."""
        settings = data.get("dndSettings") or {}
        blocked = set()
        for channel, keys in DND_KEYS.items():
            for key in keys:
                entry = settings.get(key)
                if isinstance(entry, dict) and entry.get("status") in ("active", "permanent"):
                    blocked.add(channel)
        return cls(
            id=str(data.get("id") or data.get("contactId") or ""),
            first_name=data.get("firstName") or (data.get("name") or "").split(" ")[0] or "",
            last_name=data.get("lastName") or "",
            email=data.get("email") or None,
            phone=data.get("phone") or None,
            timezone=data.get("timezone") or None,
            state=data.get("state") or None,
            address=data.get("address1") or None,
            city=data.get("city") or None,
            postal_code=data.get("postalCode") or None,
            dnd=bool(data.get("dnd")),
            dnd_channels=frozenset(blocked),
            tags=tuple(str(t) for t in data.get("tags") or ()),
            assigned_to=data.get("assignedTo") or None,
            location_id=data.get("locationId") or None,
            raw=dict(data),
        )

    def blocks(self, channel: str) -> bool:
        """True when DND (overall or for this channel) forbids contacting on ``channel``."""
        return self.dnd or channel in self.dnd_channels

    def to_state(self) -> dict[str, Any]:
        """Plain-data snapshot kept in the graph state."""
        return {
            "id": self.id,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "email": self.email,
            "phone": self.phone,
            "timezone": self.timezone,
            "state": self.state,
            "address": self.address,
            "city": self.city,
            "postal_code": self.postal_code,
            "assigned_to": self.assigned_to,
            "location_id": self.location_id,
        }


@dataclass(frozen=True)
class SendResult:
    message_id: str
    conversation_id: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class CallResult:
    call_id: str
    call_status: str


def lookup_arguments(channel: str, text: str, since: datetime) -> tuple[str, str, datetime]:
    """The arguments of ``Crm.find_sent_message`` checked and normalised: ``(channel, stripped text, since
    in UTC)``. Raises ``ValueError`` for an unknown channel, empty text or a naive ``since``."""
    normalised = channel.strip().lower()
    if normalised not in ("sms", "email"):
        raise ValueError(f"unknown channel {channel!r}; use 'email' or 'sms'")
    wanted = text.strip()
    if not wanted:
        raise ValueError("text must be the non-empty SMS body or email subject that was sent")
    if since.tzinfo is None:
        raise ValueError("since must be a timezone-aware datetime")
    return normalised, wanted, since.astimezone(UTC)


@dataclass(frozen=True)
class SendLookup:
    """What reading back a send whose answer never came found.

    ``found``: a matching record exists. ``absent``: the read succeeded, covered everything since the
    given time, and nothing matched. ``unknown``: the read could not tell (endpoint missing, errors after
    retries, a malformed answer, too many pages); ``detail`` says which.
    """

    outcome: Literal["found", "absent", "unknown"]
    id: str = ""  # the provider's message id / call id when found
    at: datetime | None = None  # when the provider recorded it (found), UTC-aware
    detail: str = ""  # what was read, or why the outcome is unknown (one line, for the timeline)


class Crm(Protocol):
    """What the bot needs from GHL. Implemented by ``GHLClient`` and by the fakes in ``sandbox``."""

    async def get_contact(self, contact_id: str) -> Contact: ...

    async def send_sms(self, contact_id: str, message: str) -> SendResult: ...

    async def send_email(self, contact_id: str, subject: str, html: str) -> SendResult: ...

    async def set_dnd(self, contact_id: str, channel: str, active: bool, message: str = "") -> None: ...

    async def add_tags(self, contact_id: str, tags: list[str]) -> None: ...

    async def remove_tags(self, contact_id: str, tags: list[str]) -> None: ...

    async def add_note(self, contact_id: str, body: str) -> None: ...

    async def add_task(
        self, contact_id: str, title: str, body: str, due_at: str, assigned_to: str | None
    ) -> None: ...

    async def find_sent_message(
        self, contact_id: str, *, channel: str, text: str, since: datetime
    ) -> SendLookup:
        """Whether an outbound ``channel`` ("sms" or "email") message whose body (SMS) or subject (email)
        is ``text`` was recorded at or after ``since`` (UTC-aware). Never raises for HTTP or transport
        problems (answers "unknown"); raises ``ValueError`` for bad arguments."""
        ...


class VoiceCaller(Protocol):
    """What the bot needs from Retell AI."""

    async def create_phone_call(
        self,
        to_number: str,
        metadata: dict[str, Any],
        dynamic_variables: dict[str, str],
    ) -> CallResult: ...

    async def find_call(self, to_number: str, metadata: Mapping[str, str], *, since: datetime) -> SendLookup:
        """Whether a call to ``to_number`` whose metadata holds every ``metadata`` key/value exists, placed
        at or after ``since`` (UTC-aware). Never raises for HTTP or transport problems (answers
        "unknown"); raises ``ValueError`` for bad arguments."""
        ...
