"""In-process fakes of GHL (``FakeCrm``) and Retell (``FakeVoice``) that record every call.

They implement the same protocols as the HTTP clients, enforce the same rules the real services do that
matter to the bot (DND refuses a send; an SMS or a call needs a phone number, an email an address; each
refusal is kept in ``refused``), record every send with its time, step and send key (the bot's
``send_label``), and can be told to fail, so tests, the demo and the notebooks
exercise the graph without a network. Reading back a send (``find_sent_message``, ``find_call``) answers
from what was recorded; ``fail_next_send`` makes a send fail before it happens, ``lose_next_answer`` makes
it happen and then fail (an answer lost on the way back), and ``lookup_unknown`` makes read-backs answer
"unknown". Like GHL and Retell, the fakes date
what they record by the provider's clock (``provider_clock``, wall time by default), which is what a
read-back's ``since`` is compared with; ``Sent.at`` stays the bot's (possibly virtual) time. The
wire-format fakes (real HTTP servers) are in ``ghl_server`` and ``retell_server``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ghl_real_estate_ai.clock import Clock, FakeClock, SystemClock
from ghl_real_estate_ai.errors import NotFoundError, PermanentIntegrationError, SendBlockedError
from ghl_real_estate_ai.integrations.models import (
    CallResult,
    Contact,
    SendLookup,
    SendResult,
    lookup_arguments,
)
from ghl_real_estate_ai.integrations.send_label import current_label


@dataclass
class Sent:
    """One outbound message or call the bot made."""

    contact_id: str
    channel: str  # sms | email | call
    at: datetime
    body: str = ""
    subject: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str = ""  # the message id or call id the fake answered
    recorded_at: datetime | None = field(default=None, compare=False, repr=False)  # the provider's date
    step: str = ""  # what the bot sent it for ("day_3", "reply", "cma", ...), from its send label
    key: str = ""  # the send key the bot claimed for it
    refused: str = ""  # for an attempt the fake refused: why (``FakeCrm.refused``)


def _labelled(contact_id: str, channel: str, at: datetime, body: str = "", **fields: Any) -> Sent:
    """A ``Sent`` carrying the bot's current send label (``integrations.send_label``), if any."""
    label = current_label()
    return Sent(contact_id, channel, at, body, step=label.step if label else "",
                key=label.key if label else "", **fields)


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
    what the bot did; ``refused`` holds the sends it refused, as GHL would (DND, no phone, no email), each
    with its reason. Every ``Sent`` carries the time, the step and the send key. ``clock`` dates
    ``Sent.at``; ``provider_clock`` (wall time by default) is GHL's own clock, which dates messages for
    :meth:`find_sent_message`. Set ``lookup_unknown`` to a detail string to make :meth:`find_sent_message`
    answer "unknown" with it."""

    def __init__(self, clock: Clock | None = None, *, provider_clock: Clock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.provider_clock = provider_clock or SystemClock()
        self.contacts: dict[str, dict[str, Any]] = {}
        self.sent: list[Sent] = []
        self.refused: list[Sent] = []
        self.notes: list[tuple[str, str]] = []
        self.tasks: list[dict[str, Any]] = []
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.lookup_unknown: str | None = None
        self._failures: list[BaseException] = []
        self._lost_answers: list[BaseException] = []
        self._send_failures: list[BaseException] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- test controls
    def add_contact(self, record: dict[str, Any]) -> dict[str, Any]:
        self.contacts[record["id"]] = record
        return record

    def fail_next(self, *errors: BaseException) -> None:
        """Make the next calls raise these errors, in order (any method)."""
        self._failures.extend(errors)

    def fail_next_send(self, *errors: BaseException) -> None:
        """Make the next sends (SMS or email, not other methods) raise these errors in order, without
        sending: a request that never reached GHL."""
        self._send_failures.extend(errors)

    def lose_next_answer(self, *errors: BaseException) -> None:
        """Make the next sends (SMS or email) happen, and be recorded, and then raise these errors in
        order: an answer lost on the way back (typically ``OutcomeUnknownError``)."""
        self._lost_answers.extend(errors)

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
        self._send_failed()
        contact = Contact.from_ghl(self._record(contact_id))
        if not contact.phone:
            self._refuse(_labelled(contact_id, "sms", self.clock.now(), message), "no phone number")
            raise PermanentIntegrationError("ghl", "send message", "Contact has no phone number", status=400)
        if contact.blocks("sms"):
            self._refuse(_labelled(contact_id, "sms", self.clock.now(), message), "SMS DND is active")
            raise SendBlockedError(
                "ghl", "send message", "Cannot send message as DND is active for SMS", status=400
            )
        message_id = f"msg-{next(self._ids)}"
        self.sent.append(_labelled(contact_id, "sms", self.clock.now(), message, id=message_id,
                                   recorded_at=self.provider_clock.now()))
        self._answer_lost()
        return SendResult(message_id, f"conv-{contact_id}", "pending")

    async def send_email(self, contact_id: str, subject: str, html: str) -> SendResult:
        self._call("send_email", contact_id, subject)
        self._send_failed()
        contact = Contact.from_ghl(self._record(contact_id))
        if not contact.email:
            self._refuse(_labelled(contact_id, "email", self.clock.now(), html, subject=subject),
                         "no email address")
            raise PermanentIntegrationError("ghl", "send message", "Contact has no email address", status=400)
        if contact.blocks("email"):
            self._refuse(_labelled(contact_id, "email", self.clock.now(), html, subject=subject),
                         "Email DND is active")
            raise SendBlockedError(
                "ghl", "send message", "Cannot send message as DND is active for Email", status=400
            )
        message_id = f"msg-{next(self._ids)}"
        self.sent.append(_labelled(contact_id, "email", self.clock.now(), html, subject=subject,
                                   id=message_id, recorded_at=self.provider_clock.now()))
        self._answer_lost()
        return SendResult(message_id, f"conv-{contact_id}", "pending")

    def _refuse(self, attempt: Sent, why: str) -> None:
        attempt.refused = why
        with self._lock:
            self.refused.append(attempt)

    def _send_failed(self) -> None:
        with self._lock:
            failure = self._send_failures.pop(0) if self._send_failures else None
        if failure is not None:
            raise failure

    def _answer_lost(self) -> None:
        with self._lock:
            lost = self._lost_answers.pop(0) if self._lost_answers else None
        if lost is not None:
            raise lost

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

    async def find_sent_message(
        self, contact_id: str, *, channel: str, text: str, since: datetime
    ) -> SendLookup:
        """An outbound ``channel`` message that GHL's clock (``provider_clock``) dated at or after
        ``since`` whose body (SMS) or subject (email) is ``text`` (stripped). Recorded in ``calls``; never
        consumes :meth:`fail_next` errors."""
        channel, wanted, since = lookup_arguments(channel, text, since)
        with self._lock:
            self.calls.append(("find_sent_message", (contact_id, channel, text)))
        if self.lookup_unknown is not None:
            return SendLookup("unknown", detail=self.lookup_unknown)
        for sent in reversed(self.sent):
            dated = sent.recorded_at or sent.at
            if sent.contact_id != contact_id or sent.channel != channel or dated < since:
                continue
            if (sent.body if channel == "sms" else sent.subject or "").strip() == wanted:
                return SendLookup("found", id=sent.id, at=dated,
                                  detail=f"the fake CRM has {channel} {sent.id} dated {dated.isoformat()}")
        return SendLookup("absent", detail=f"no {channel} with that text to {contact_id} since "
                                           f"{since.isoformat()}")


class FakeVoice:
    """Retell in memory: records every call it is asked to place (``placed``; each ``Sent.metadata`` holds
    the call's ``metadata`` and ``dynamic_variables``). ``provider_clock`` (the CRM's, else wall time) is
    Retell's clock, which dates calls for :meth:`find_call`. Set ``lookup_unknown`` to a detail string to
    make :meth:`find_call` answer "unknown" with it."""

    def __init__(
        self, crm: FakeCrm | None = None, clock: Clock | None = None, *, provider_clock: Clock | None = None
    ) -> None:
        self.crm = crm
        self.clock = clock or (crm.clock if crm else FakeClock())
        self.provider_clock = provider_clock or (crm.provider_clock if crm else SystemClock())
        self.placed: list[Sent] = []
        self.refused: list[Sent] = []
        self.lookup_unknown: str | None = None
        self._failures: list[BaseException] = []
        self._lost_answers: list[BaseException] = []
        self._ids = itertools.count(1)

    def fail_next(self, *errors: BaseException) -> None:
        self._failures.extend(errors)

    def lose_next_answer(self, *errors: BaseException) -> None:
        """Make the next calls be placed, and recorded, and then raise these errors in order."""
        self._lost_answers.extend(errors)

    async def create_phone_call(
        self, to_number: str, metadata: dict[str, Any], dynamic_variables: dict[str, str]
    ) -> CallResult:
        if self._failures:
            raise self._failures.pop(0)
        contact_id = str(metadata.get("ghl_contact_id", ""))
        data = {"metadata": dict(metadata), "dynamic_variables": dict(dynamic_variables)}
        why = self._refusal(contact_id, to_number)
        if why:
            attempt = _labelled(contact_id, "call", self.clock.now(), to_number, metadata=data, refused=why)
            self.refused.append(attempt)
            if self.crm is not None:
                self.crm.refused.append(attempt)
            if why == "call DND is active":
                raise SendBlockedError("retell", "create phone call", "Call DND is active", status=400)
            raise PermanentIntegrationError("retell", "create phone call", why, status=400)
        call = _labelled(contact_id, "call", self.clock.now(), to_number, metadata=data,
                         id=f"call-{next(self._ids)}", recorded_at=self.provider_clock.now())
        self.placed.append(call)
        if self.crm is not None:  # one list of every touch makes sequence assertions simple
            self.crm.sent.append(call)
        if self._lost_answers:
            raise self._lost_answers.pop(0)
        return CallResult(call.id, "registered")

    def _refusal(self, contact_id: str, to_number: str) -> str:
        """Why this call must not be placed ("" when it may): no number, or the contact's call DND."""
        if not to_number:
            return "to_number is required"
        record = self.crm.contacts.get(contact_id) if self.crm is not None else None
        if record is not None and Contact.from_ghl(record).blocks("call"):
            return "call DND is active"
        return ""

    async def find_call(self, to_number: str, metadata: Mapping[str, str], *, since: datetime) -> SendLookup:
        """A placed call to ``to_number``, dated by Retell's clock (``provider_clock``) at or after
        ``since``, whose metadata holds every given key/value."""
        if not to_number:
            raise ValueError("to_number must be the number the call was placed to")
        if not metadata:
            raise ValueError("metadata must hold at least the send key that tells this call from others")
        if since.tzinfo is None:
            raise ValueError("since must be a timezone-aware datetime")
        if self.lookup_unknown is not None:
            return SendLookup("unknown", detail=self.lookup_unknown)
        for call in reversed(self.placed):
            placed_with = call.metadata.get("metadata") or {}
            dated = call.recorded_at or call.at
            if call.body == to_number and dated >= since and all(
                placed_with.get(k) == v for k, v in metadata.items()
            ):
                return SendLookup("found", id=call.id, at=dated,
                                  detail=f"the fake Retell has call {call.id} dated {dated.isoformat()}")
        return SendLookup("absent",
                          detail=f"no call to {to_number} with that metadata since {since.isoformat()}")
