"""In-process fakes of GHL (``FakeCrm``) and Retell (``FakeVoice``) that record every call.

They implement the same protocols as the HTTP clients, enforce the same rules the real services do that
matter to the bot (SMS DND refuses a send), and can be told to fail, so tests, the demo and the notebooks
exercise the graph without a network. The wire-format fakes (real HTTP servers) are in ``ghl_server`` and
``retell_server``.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ghl_real_estate_ai.clock import Clock, FakeClock
from ghl_real_estate_ai.errors import NotFoundError, SendBlockedError
from ghl_real_estate_ai.integrations.models import CallResult, Contact, SendResult


@dataclass
class Sent:
    """One outbound message or call the bot made."""

    contact_id: str
    channel: str  # sms | email | call
    at: datetime
    body: str = ""
    subject: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def make_contact(
    contact_id: str,
    *,
    first_name: str = "Jane",
    last_name: str = "Doe",
    email: str | None = "jane@example.com",
    phone: str | None = "+15125550123",
    timezone: str | None = "America/Chicago",
    state: str | None = "TX",
    city: str | None = "Austin",
    address: str | None = "12 Oak St",
    postal_code: str | None = "78704",
    tags: list[str] | None = None,
    dnd: bool = False,
    dnd_channels: dict[str, str] | None = None,
    assigned_to: str | None = "user-1",
    location_id: str = "loc-1",
) -> dict[str, Any]:
    """A GHL-shaped contact record (the object under ``contact`` of ``GET /contacts/{id}``)."""
    settings = {
        key: {"status": status, "message": "", "code": ""} for key, status in (dnd_channels or {}).items()
    }
    return {
        "id": contact_id,
        "locationId": location_id,
        "firstName": first_name,
        "lastName": last_name,
        "name": f"{first_name} {last_name}".strip(),
        "email": email,
        "phone": phone,
        "timezone": timezone,
        "state": state,
        "city": city,
        "address1": address,
        "postalCode": postal_code,
        "dnd": dnd,
        "dndSettings": settings,
        "tags": list(tags or []),
        "assignedTo": assigned_to,
        "customFields": [],
    }


class FakeCrm:
    """GHL in memory. ``contacts`` holds GHL-shaped records; ``sent``, ``notes``, ``tasks``, ``calls`` record
    what the bot did."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.contacts: dict[str, dict[str, Any]] = {}
        self.sent: list[Sent] = []
        self.notes: list[tuple[str, str]] = []
        self.tasks: list[dict[str, Any]] = []
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._failures: list[BaseException] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- test controls
    def add_contact(self, record: dict[str, Any]) -> dict[str, Any]:
        self.contacts[record["id"]] = record
        return record

    def fail_next(self, *errors: BaseException) -> None:
        """Make the next calls raise these errors, in order (any method)."""
        self._failures.extend(errors)

    def sent_to(self, contact_id: str, channel: str | None = None) -> list[Sent]:
        return [
            s for s in self.sent if s.contact_id == contact_id and (channel is None or s.channel == channel)
        ]

    def _call(self, name: str, *args: Any) -> None:
        with self._lock:
            self.calls.append((name, args))
            if self._failures:
                raise self._failures.pop(0)

    def _record(self, contact_id: str) -> dict[str, Any]:
        record = self.contacts.get(contact_id)
        if record is None:
            raise NotFoundError("ghl", "get contact", f"contact {contact_id} not found", status=400)
        return record

    # -- the Crm protocol
    async def get_contact(self, contact_id: str) -> Contact:
        self._call("get_contact", contact_id)
        return Contact.from_ghl(self._record(contact_id))

    async def send_sms(self, contact_id: str, message: str) -> SendResult:
        self._call("send_sms", contact_id, message)
        contact = Contact.from_ghl(self._record(contact_id))
        if contact.blocks("sms"):
            raise SendBlockedError(
                "ghl", "send message", "Cannot send message as DND is active for SMS", status=400
            )
        self.sent.append(Sent(contact_id, "sms", self.clock.now(), message))
        return SendResult(f"msg-{next(self._ids)}", f"conv-{contact_id}", "pending")

    async def send_email(self, contact_id: str, subject: str, html: str) -> SendResult:
        self._call("send_email", contact_id, subject)
        contact = Contact.from_ghl(self._record(contact_id))
        if contact.blocks("email"):
            raise SendBlockedError(
                "ghl", "send message", "Cannot send message as DND is active for Email", status=400
            )
        self.sent.append(Sent(contact_id, "email", self.clock.now(), html, subject))
        return SendResult(f"msg-{next(self._ids)}", f"conv-{contact_id}", "pending")

    async def set_dnd(self, contact_id: str, channel: str, active: bool, message: str = "") -> None:
        self._call("set_dnd", contact_id, channel, active)
        record = self._record(contact_id)
        key = {"sms": "SMS", "email": "Email", "call": "Call"}[channel]
        record.setdefault("dndSettings", {})[key] = {
            "status": "active" if active else "inactive",
            "message": message,
            "code": "",
        }

    async def add_tags(self, contact_id: str, tags: list[str]) -> None:
        self._call("add_tags", contact_id, tuple(tags))
        record = self._record(contact_id)
        record["tags"] = [*record.get("tags", []), *(t for t in tags if t not in record.get("tags", []))]

    async def remove_tags(self, contact_id: str, tags: list[str]) -> None:
        self._call("remove_tags", contact_id, tuple(tags))
        record = self._record(contact_id)
        record["tags"] = [t for t in record.get("tags", []) if t not in tags]

    async def add_note(self, contact_id: str, body: str) -> None:
        self._call("add_note", contact_id, body)
        self._record(contact_id)
        self.notes.append((contact_id, body))

    async def add_task(
        self, contact_id: str, title: str, body: str, due_at: str, assigned_to: str | None
    ) -> None:
        self._call("add_task", contact_id, title)
        self._record(contact_id)
        self.tasks.append(
            {
                "contact_id": contact_id,
                "title": title,
                "body": body,
                "due_at": due_at,
                "assigned_to": assigned_to,
            }
        )


class FakeVoice:
    """Retell in memory: records every call it is asked to place."""

    def __init__(self, crm: FakeCrm | None = None, clock: Clock | None = None) -> None:
        self.crm = crm
        self.clock = clock or (crm.clock if crm else FakeClock())
        self.placed: list[Sent] = []
        self._failures: list[BaseException] = []
        self._ids = itertools.count(1)

    def fail_next(self, *errors: BaseException) -> None:
        self._failures.extend(errors)

    async def create_phone_call(
        self, to_number: str, metadata: dict[str, Any], dynamic_variables: dict[str, str]
    ) -> CallResult:
        if self._failures:
            raise self._failures.pop(0)
        call = Sent(
            str(metadata.get("ghl_contact_id", "")),
            "call",
            self.clock.now(),
            to_number,
            metadata={"metadata": dict(metadata), "dynamic_variables": dict(dynamic_variables)},
        )
        self.placed.append(call)
        if self.crm is not None:  # one list of every touch makes sequence assertions simple
            self.crm.sent.append(call)
        return CallResult(f"call-{next(self._ids)}", "registered")
