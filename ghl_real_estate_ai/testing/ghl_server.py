"""``FakeGHLServer``: a local HTTP stand-in for the GHL (LeadConnector) API v2, faithful on the wire.

It serves the calls the bot makes (``GET/PUT /contacts/{id}``, ``POST/DELETE /contacts/{id}/tags``,
``POST /contacts/{id}/notes``, ``POST /contacts/{id}/tasks``, ``POST /conversations/messages``) and
``POST /oauth/token``, and checks what GHL checks: ``Authorization: Bearer`` (401 with GHL's body), the
``Version`` header of each endpoint family, request bodies (422 in NestJS's shape), and SMS/Email DND
(400 "Cannot send message as DND is active for SMS"). Every authenticated answer carries the five
``X-RateLimit-*`` headers, and more than ``rate_limit`` requests per ``rate_window`` seconds for one
location are answered 429. Contacts, messages, notes and tasks live in memory.

Assumed where GHL's docs are silent (marked [assumed]): the 429 body, the unknown-contact answer (400
"Contact not found" by default, configurable), the missing/invalid-Version answer (400), and the
OAuth error bodies.

The read side, for reading back a send whose answer never came (``conversations`` Version family):

* ``GET /conversations/search?locationId=&contactId=[&limit=]`` -> ``{"conversations": [...], "total"}``
  with the spec's required conversation fields (``id``, ``contactId``, ``locationId``, ``lastMessageBody``,
  ``lastMessageType``, ``type``, ``unreadCount``, ``fullName``, ``contactName``, ``email``, ``phone``) plus
  ``lastMessageDirection`` and ``lastMessageDate`` (epoch ms, [assumed]). ``locationId`` is required (422).
* ``GET /conversations/{conversationId}/messages[?limit=&lastMessageId=&type=]`` -> newest first, ``limit``
  20 by default and at most 100, the page after ``lastMessageId``. Answered nested as
  ``{"messages": {"lastMessageId", "nextPage", "messages": [...]}}`` [assumed: the spec puts that object
  at the top level; third-party code reads it nested]. A message: ``id`` (the send's ``messageId``),
  ``conversationId``, ``contactId``, ``locationId``, ``type`` (the send's "SMS"/"Email" [assumed]: the spec
  types it as a number), ``messageType`` ("TYPE_SMS"/"TYPE_EMAIL"), ``direction`` "outbound", ``status``,
  ``body`` (the SMS text; an email's html), ``contentType``, ``attachments``, ``dateAdded`` (ISO 8601),
  ``source`` "api" and, for email, ``meta.email`` = ``{"messageIds": [emailMessageId], "subject"}``
  (``subject`` there is [assumed] and left out with ``email_subject_in_list=False``, as in the spec).
* ``GET /conversations/messages/email/{emailMessageId}`` -> the email with its ``subject`` (bare object).

Marketplace installs (OAuth, ``Version: 2021-07-28``, form bodies): ``authorize(location_id)`` (a
sub-account install) or ``authorize(company_id=, locations=[...])`` (an agency bulk install) returns the
single-use ``code`` the redirect carries; ``POST /oauth/token`` exchanges it for a Location token, or for a
Company token with ``isBulkInstallation`` and ``approvedLocations``; refresh tokens rotate and are
single-use (a reuse within ``refresh_reuse_window`` seconds, 30 like GHL, gets the same answer; 0 makes them
strictly single-use); ``POST /oauth/locationToken`` (Company bearer, ``companyId``/``locationId``) mints a
Location pair; ``GET /oauth/installedLocations?companyId=&appId=&skip=&limit=`` lists ``{_id, name, ...}``
with ``count``. Agency calls count against the company's own rate window. ``uninstall``,
``lose_refresh_tokens`` and ``expire_access_tokens`` break tokens; ``emit(url, payload)`` delivers a signed
webhook (``testing.webhooks.app_install`` / ``app_uninstall`` build INSTALL and UNINSTALL). The error bodies
of refused codes and agency calls are [assumed].

Every message a ``POST /conversations/messages`` stored is readable, including one whose answer a
``Fault(delay=...)`` held back (the request is handled before the delay).

Typical use::

    with FakeGHLServer() as ghl:
        contact = ghl.add_contact(first_name="Jane")
        client = GHLClient(ghl.base_url, ghl.token, ghl.location_id)
        ...
        assert ghl.sent_sms(contact["id"]) == ["Hi Jane ..."]
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ghl_real_estate_ai.testing import webhooks
from ghl_real_estate_ai.testing.fake_http import FakeHTTPServer, Fault, RecordedRequest

__all__ = ["DEFAULT_LOCATION_ID", "DEFAULT_TOKEN", "FakeGHLServer", "Fault", "RecordedRequest"]

DEFAULT_LOCATION_ID = webhooks.DEFAULT_LOCATION_ID
DEFAULT_TOKEN = "pit-00000000-test-lead-bot-0000-000000000000"
DEFAULT_CLIENT_ID = "lead-bot-test.client"
DEFAULT_CLIENT_SECRET = "lead-bot-test-secret"

ACCEPTED_VERSIONS: dict[str, frozenset[str]] = {
    "contacts": frozenset({"2021-07-28", "v3"}),
    "conversations": frozenset({"2021-04-15", "v3"}),
    "locations": frozenset({"2021-07-28", "v3"}),
}

UNAUTHORIZED_BODY = {
    "statusCode": 401, "message": "Invalid token: access token is invalid", "error": "Unauthorized"
}
RATE_LIMITED_BODY = {"statusCode": 429, "message": "Too Many Requests"}  # [assumed]

MESSAGE_TYPES = ("SMS", "RCS", "Email", "WhatsApp", "IG", "FB", "Custom", "Live_Chat", "TIKTOK")
UPDATABLE_CONTACT_KEYS = frozenset({
    "firstName", "lastName", "name", "email", "phone", "address1", "city", "state", "postalCode", "website",
    "timezone", "dnd", "dndSettings", "inboundDndSettings", "tags", "customFields", "source", "dateOfBirth",
    "country", "assignedTo", "companyName",
})
_V2_DND_KEYS = ("Call", "Email", "SMS", "WhatsApp", "GMB", "FB")
_V3_DND_KEYS = ("call", "email", "sms", "whatsApp", "gmb", "fb")
_V3_TO_V2 = dict(zip(_V3_DND_KEYS, _V2_DND_KEYS, strict=True))
_V2_TO_V3 = dict(zip(_V2_DND_KEYS, _V3_DND_KEYS, strict=True))
_DND_STATUSES = ("active", "inactive", "permanent")

_CONTACT = re.compile(r"^/contacts/(?P<id>[^/]+)/?$")
_CONTACT_SUB = re.compile(r"^/contacts/(?P<id>[^/]+)/(?P<sub>tags|notes|tasks)/?$")
_CONVERSATION_MESSAGES = re.compile(r"^/conversations/(?P<id>[^/]+)/messages/?$")
_EMAIL_MESSAGE = re.compile(r"^/conversations/messages/email/(?P<id>[^/]+)/?$")

# The send's ``type`` -> a conversation message's ``messageType``.
_MESSAGE_TYPES = {
    "SMS": "TYPE_SMS", "RCS": "TYPE_RCS", "Email": "TYPE_EMAIL", "WhatsApp": "TYPE_WHATSAPP",
    "IG": "TYPE_INSTAGRAM", "FB": "TYPE_FACEBOOK", "Live_Chat": "TYPE_LIVE_CHAT", "TIKTOK": "TYPE_TIKTOK",
}


@dataclass
class _Token:
    location_id: str  # for a Company token: the company id
    oauth: bool = False
    expired: bool = False
    user_type: str = "Location"


def _unprocessable(*messages: str) -> JSONResponse:
    return JSONResponse(
        {"statusCode": 422, "message": list(messages), "error": "Unprocessable Entity"}, status_code=422
    )


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"statusCode": 400, "message": message}, status_code=400)


class FakeGHLServer(FakeHTTPServer):
    """An in-memory GHL for one or more locations. Thread-safe; every helper may be called from tests.

    Knobs: ``rate_limit``/``rate_window`` (None disables the burst limit), ``daily_limit``,
    ``strict_versions`` (reject a Version outside the documented values of the endpoint family; a
    missing Version is always rejected), ``not_found_status`` (answer for unknown contacts), ``clock``
    (drives the rate window and request timestamps), ``now`` (dates written into records), ``seed``,
    ``read_endpoints`` (False: the conversation reads answer 404 like an unknown route, so a read-back
    cannot tell), ``email_subject_in_list`` (False: listed email messages carry no subject, only
    ``meta.email.messageIds``, as GHL's spec describes).
    Fault injection (``script_faults``, ``set_random_faults``) is inherited from ``FakeHTTPServer``;
    faults apply after authentication and rate limiting, and not to ``/oauth/token`` unless scripted
    for that path.
    """

    service_name = "GHL"

    def __init__(
        self,
        *,
        location_id: str = DEFAULT_LOCATION_ID,
        token: str = DEFAULT_TOKEN,
        oauth_client_id: str = DEFAULT_CLIENT_ID,
        oauth_client_secret: str = DEFAULT_CLIENT_SECRET,
        rate_limit: int | None = 100,
        rate_window: float = 10.0,
        daily_limit: int = 200_000,
        strict_versions: bool = True,
        not_found_status: int = 400,
        send_retry_after: bool = False,
        read_endpoints: bool = True,
        email_subject_in_list: bool = True,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port, clock=clock, seed=seed)
        self.location_id = location_id
        self.token = token
        self.oauth_client_id = oauth_client_id
        self.oauth_client_secret = oauth_client_secret
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.daily_limit = daily_limit
        self.strict_versions = strict_versions
        self.not_found_status = not_found_status
        self.send_retry_after = send_retry_after
        self.read_endpoints = read_endpoints
        self.email_subject_in_list = email_subject_in_list
        self._now = now
        self._state_lock = threading.RLock()
        self._tokens: dict[str, _Token] = {token: _Token(location_id)}
        self._refresh_tokens: dict[str, tuple[str, str]] = {}
        self._recent_refreshes: dict[str, tuple[dict[str, Any], float]] = {}
        self.refresh_count = 0
        self.refreshes: dict[str, int] = {}
        self.refresh_reuse_window = 30.0  # GHL: a refresh token reused within 30 s gets the same answer
        self.company_id = "LeadBotTestCompany01"
        self._grants: dict[str, dict[str, Any]] = {}
        self._installed: dict[str, set[str]] = {}  # company id -> locations where the app is installed
        self._location_company: dict[str, str] = {}
        self._windows: dict[str, deque[float]] = {}
        self._daily: dict[str, int] = {}
        self._contacts: dict[str, dict[str, Any]] = {}
        self._conversations: dict[str, str] = {}
        self._messages: list[dict[str, Any]] = []
        self._notes: list[dict[str, Any]] = []
        self._tasks: list[dict[str, Any]] = []

    # -- tokens ------------------------------------------------------------------------------------

    def add_token(self, token: str, location_id: str | None = None) -> None:
        """Accept another bearer token (e.g. a second location's Private Integration token)."""
        with self._state_lock:
            self._tokens[token] = _Token(location_id or self.location_id)

    def issue_oauth_tokens(
        self, location_id: str | None = None, *, expires_in: int = 86399
    ) -> dict[str, Any]:
        """Mint an OAuth pair as an app install would; returns the ``/oauth/token`` answer body."""
        with self._state_lock:
            return self._mint(location_id or self.location_id, expires_in)

    def _mint(self, location_id: str, expires_in: int = 86399, *, user_type: str = "Location",
              company_id: str | None = None) -> dict[str, Any]:
        access = f"at-{self.new_id(32)}"
        refresh = f"rt-{self.new_id(32)}"
        self._tokens[access] = _Token(location_id, oauth=True, user_type=user_type)
        self._refresh_tokens[refresh] = (location_id, user_type)
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "refresh_token": refresh,
            "scope": "contacts.readonly contacts.write conversations/message.readonly "
                     "conversations/message.write",
            "userType": user_type,
            "companyId": company_id or self._location_company.get(location_id, self.company_id),
            "userId": "LeadBotTestUser00001",
        }
        if user_type == "Location":
            answer["locationId"] = location_id
        else:
            answer["companyId"] = location_id
        return answer

    # -- Marketplace installs ----------------------------------------------------------------------

    def authorize(self, location_id: str | None = None, *, company_id: str | None = None,
                  locations: Iterable[str] = ()) -> str:
        """A user approved the app: returns the one-time ``code`` the redirect carries. With
        ``location_id`` a sub-account install (the exchange yields a Location token); otherwise an agency
        bulk install of ``locations`` under ``company_id`` (the exchange yields a Company token)."""
        company = company_id or self.company_id
        code = f"code-{self.new_id(24)}"
        with self._state_lock:
            if location_id is not None:
                self._install(company, [location_id])
                self._grants[code] = {"location_id": location_id, "company_id": company}
            else:
                chosen = list(locations)
                self._install(company, chosen)
                self._grants[code] = {"company_id": company, "locations": chosen}
        return code

    def _install(self, company: str, locations: Iterable[str]) -> None:
        for location in locations:
            self._installed.setdefault(company, set()).add(location)
            self._location_company[location] = company

    def installed_locations(self, company_id: str | None = None) -> list[str]:
        with self._state_lock:
            return sorted(self._installed.get(company_id or self.company_id, set()))

    def uninstall(self, location_id: str) -> None:
        """The app was removed from a location: its tokens stop working."""
        with self._state_lock:
            for members in self._installed.values():
                members.discard(location_id)
            for token in self._tokens.values():
                if token.oauth and token.user_type == "Location" and token.location_id == location_id:
                    token.expired = True
            self._drop_refresh_tokens(location_id)

    def lose_refresh_tokens(self, location_id: str) -> int:
        """Every refresh token of ``location_id`` becomes invalid (as if revoked); returns how many."""
        with self._state_lock:
            return self._drop_refresh_tokens(location_id)

    def _drop_refresh_tokens(self, location_id: str) -> int:
        lost = [rt for rt, (owner, _) in self._refresh_tokens.items() if owner == location_id]
        for rt in lost:
            del self._refresh_tokens[rt]
            self._recent_refreshes.pop(rt, None)
        return len(lost)

    def location_tokens(self, location_id: str) -> list[str]:
        """Access tokens ever minted for ``location_id`` (OAuth, Location)."""
        with self._state_lock:
            return [t for t, v in self._tokens.items()
                    if v.oauth and v.user_type == "Location" and v.location_id == location_id]

    def requests_by_token(self) -> dict[str, str]:
        """Bearer token of every authenticated API request -> the location it belonged to (for tests)."""
        with self._state_lock:
            return {t: v.location_id for t, v in self._tokens.items()}

    def emit(self, url: str, payload: Mapping[str, Any], **sign: Any) -> Any:
        """POST ``payload`` to ``url`` signed with the test keys (as GHL delivers INSTALL/UNINSTALL)."""
        import httpx

        signed = webhooks.sign_ghl_webhook(payload, **sign)
        return httpx.post(url, content=signed.body, headers=signed.headers, timeout=30)

    def expire_access_tokens(self, location_id: str | None = None) -> int:
        """Make every OAuth access token (of one location, or all) answer 401 from now on; returns count."""
        with self._state_lock:
            count = 0
            for token in self._tokens.values():
                if token.oauth and not token.expired and location_id in (None, token.location_id):
                    token.expired = True
                    count += 1
            return count

    def expire_access_token(self, access_token: str) -> None:
        with self._state_lock:
            self._tokens[access_token].expired = True

    def revoke_token(self, token: str) -> None:
        """Forget a token entirely (a rotated Private Integration token)."""
        with self._state_lock:
            self._tokens.pop(token, None)

    # -- contacts ----------------------------------------------------------------------------------

    def add_contact(
        self,
        contact_id: str | None = None,
        *,
        first_name: str = "Jane",
        last_name: str = "Doe",
        phone: str | None = "+15125550123",
        email: str | None = "jane@example.com",
        timezone: str | None = "America/Chicago",
        state: str | None = "TX",
        city: str | None = "Austin",
        address1: str | None = "12 Oak St",
        postal_code: str | None = "78701",
        tags: Iterable[str] = ("buyer",),
        dnd: bool = False,
        dnd_sms: bool = False,
        dnd_email: bool = False,
        dnd_call: bool = False,
        assigned_to: str | None = "AgentUser00000000001",
        source: str | None = "zillow",
        custom_fields: Iterable[Mapping[str, Any]] = (),
        location_id: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Store a contact with GHL's fields (``extra`` camelCase keys are stored as given); return a copy."""
        cid = contact_id or self.new_id()
        added = webhooks.iso(self._now())
        settings = {
            "SMS": {"status": "active" if dnd_sms else "inactive", "message": "", "code": ""},
            "Email": {"status": "active" if dnd_email else "inactive", "message": "", "code": ""},
            "Call": {"status": "active" if dnd_call else "inactive", "message": "", "code": ""},
        }
        contact: dict[str, Any] = {
            "id": cid,
            "locationId": location_id or self.location_id,
            "firstName": first_name,
            "lastName": last_name,
            "name": f"{first_name} {last_name}".strip(),
            "firstNameLowerCase": first_name.lower(),
            "lastNameLowerCase": last_name.lower(),
            "email": email,
            "emailLowerCase": email.lower() if email else None,
            "phone": phone,
            "timezone": timezone,
            "address1": address1,
            "city": city,
            "state": state,
            "postalCode": postal_code,
            "country": "US",
            "dnd": dnd,
            "dndSettings": settings,
            "tags": list(tags),
            "customFields": [dict(f) for f in custom_fields],
            "type": "lead",
            "source": source,
            "assignedTo": assigned_to,
            "dateAdded": added,
            "dateUpdated": added,
            "attachments": [],
        }
        contact.update(extra)
        with self._state_lock:
            self._contacts[cid] = contact
            return copy.deepcopy(contact)

    def contact(self, contact_id: str) -> dict[str, Any] | None:
        """The stored contact (a copy, v2 keys), or None."""
        with self._state_lock:
            found = self._contacts.get(contact_id)
            return copy.deepcopy(found) if found is not None else None

    def contacts(self) -> list[dict[str, Any]]:
        with self._state_lock:
            return copy.deepcopy(list(self._contacts.values()))

    def delete_contact(self, contact_id: str) -> None:
        with self._state_lock:
            self._contacts.pop(contact_id, None)

    def set_contact_dnd(self, contact_id: str, channel: str = "SMS", active: bool = True,
                        message: str = "Opted out via STOP") -> None:
        """Change DND the way GHL does by itself (a STOP reply, a carrier error)."""
        key = _V3_TO_V2.get(channel, channel if channel in _V2_DND_KEYS else channel.upper())
        with self._state_lock:
            contact = self._contacts[contact_id]
            contact["dndSettings"][key] = {
                "status": "active" if active else "inactive", "message": message if active else "", "code": ""
            }

    # -- what the bot did --------------------------------------------------------------------------

    def messages(self, contact_id: str | None = None, type: str | None = None) -> list[dict[str, Any]]:
        """Messages accepted by ``POST /conversations/messages`` (copies), oldest first."""
        with self._state_lock:
            return [copy.deepcopy(m) for m in self._messages
                    if contact_id in (None, m["contactId"]) and type in (None, m["type"])]

    def sent_sms(self, contact_id: str | None = None) -> list[str]:
        """The texts of accepted SMS sends, oldest first."""
        return [m["message"] for m in self.messages(contact_id, "SMS")]

    def sent_emails(self, contact_id: str | None = None) -> list[dict[str, Any]]:
        """Accepted email sends as ``{"subject", "html", ...}`` records."""
        return self.messages(contact_id, "Email")

    def notes(self, contact_id: str | None = None) -> list[dict[str, Any]]:
        with self._state_lock:
            return [copy.deepcopy(n) for n in self._notes if contact_id in (None, n["contactId"])]

    def tasks(self, contact_id: str | None = None) -> list[dict[str, Any]]:
        with self._state_lock:
            return [copy.deepcopy(t) for t in self._tasks if contact_id in (None, t["contactId"])]

    def conversation_id(self, contact_id: str) -> str:
        """The contact's (single) conversation id, created on first use."""
        with self._state_lock:
            if contact_id not in self._conversations:
                self._conversations[contact_id] = self.new_id()
            return self._conversations[contact_id]

    def inbound_message_payload(self, contact_id: str, body: str, **kwargs: Any) -> dict[str, Any]:
        """An ``InboundMessage`` event from this contact, in its location and conversation."""
        contact = self.contact(contact_id) or {"locationId": self.location_id}
        kwargs.setdefault("location_id", contact.get("locationId") or self.location_id)
        kwargs.setdefault("conversation_id", self.conversation_id(contact_id))
        return webhooks.inbound_message(contact_id, body, **kwargs)

    # -- HTTP --------------------------------------------------------------------------------------

    async def handle(self, request: Request, record: RecordedRequest) -> Response:
        method, path = record.method, record.path
        if path.rstrip("/") == "/oauth/token":
            fault = self.take_fault(method, path)
            record.fault = fault
            if fault is not None and fault.status is not None:
                return self._fault_response(fault, {})
            return self._oauth_token(record)
        if path.rstrip("/") in ("/oauth/locationToken", "/oauth/installedLocations"):
            return self._agency_call(record, path.rstrip("/"))
        family = "conversations" if path.startswith("/conversations") else (
            "locations" if path.startswith("/locations") else "contacts")
        route = self._route(method, path)
        if route is None:
            return JSONResponse(
                {"statusCode": 404, "message": f"Cannot {method} {path}", "error": "Not Found"},
                status_code=404,
            )
        location = self._authenticate(record)
        if location is None:
            return JSONResponse(UNAUTHORIZED_BODY, status_code=401)
        record.extra["location_id"] = location
        version = record.header("version")
        if not version:
            return _bad_request("Version header was not found")  # [assumed]
        if self.strict_versions and version not in ACCEPTED_VERSIONS[family]:
            return _bad_request(f"Version {version!r} is not supported on this endpoint")  # [assumed]
        allowed, rate_headers = self._count(location)
        if not allowed:
            headers = dict(rate_headers)
            if self.send_retry_after:
                headers["Retry-After"] = str(max(1, int(self.rate_window)))
            return JSONResponse(RATE_LIMITED_BODY, status_code=429, headers=headers)
        fault = self.take_fault(method, path)
        record.fault = fault
        if fault is not None and fault.status is not None:
            return self._fault_response(fault, rate_headers)
        response = route(record, location)
        response.headers.update(rate_headers)
        return response

    def _route(self, method: str, path: str) -> Callable[[RecordedRequest, str], Response] | None:
        if path.rstrip("/") == "/conversations/messages":
            return self._send_message if method == "POST" else None
        if path.startswith("/conversations/"):
            if method != "GET" or not self.read_endpoints:
                return None
            if path.rstrip("/") == "/conversations/search":
                return self._search_conversations
            if _EMAIL_MESSAGE.match(path):
                return self._get_email
            if _CONVERSATION_MESSAGES.match(path):
                return self._conversation_messages
            return None
        match = _CONTACT_SUB.match(path)
        if match:
            sub = match.group("sub")
            if sub == "tags" and method in ("POST", "DELETE"):
                return self._tags
            if sub == "notes" and method == "POST":
                return self._add_note
            if sub == "tasks" and method == "POST":
                return self._add_task
            return None
        match = _CONTACT.match(path)
        if match:
            if method == "GET":
                return self._get_contact
            if method == "PUT":
                return self._update_contact
        return None

    def _authenticate(self, record: RecordedRequest) -> str | None:
        header = record.header("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        with self._state_lock:
            known = self._tokens.get(token.strip())
            if known is None or known.expired:
                return None
            return known.location_id

    def _count(self, location: str) -> tuple[bool, dict[str, str]]:
        now = self.clock()
        with self._state_lock:
            window = self._windows.setdefault(location, deque())
            limit = self.rate_limit
            if limit is not None:
                while window and window[0] <= now - self.rate_window:
                    window.popleft()
            allowed = limit is None or len(window) < limit
            if allowed:
                window.append(now)
                self._daily[location] = self._daily.get(location, 0) + 1
            maximum = limit if limit is not None else 100
            remaining = max(0, maximum - len(window)) if limit is not None else maximum
            headers = {
                "X-RateLimit-Limit-Daily": str(self.daily_limit),
                "X-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - self._daily.get(location, 0))),
                "X-RateLimit-Interval-Milliseconds": str(int(self.rate_window * 1000)),
                "X-RateLimit-Max": str(maximum),
                "X-RateLimit-Remaining": str(remaining),
            }
        return allowed, headers

    def _fault_response(self, fault: Fault, rate_headers: Mapping[str, str]) -> Response:
        status = fault.status or 500
        if fault.body is not None:
            body = fault.body
        elif status == 429:
            body = RATE_LIMITED_BODY
        else:
            message = "Internal server error" if status >= 500 else "Bad Request"
            body = {"statusCode": status, "message": message}
        headers = dict(rate_headers)
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        return JSONResponse(body, status_code=status, headers=headers)

    def _find_contact(self, contact_id: str, location: str) -> dict[str, Any] | None:
        contact = self._contacts.get(contact_id)
        if contact is None or contact.get("locationId") != location:
            return None
        return contact

    def _not_found(self) -> JSONResponse:
        status = self.not_found_status
        body: dict[str, Any] = {"statusCode": status, "message": "Contact not found"}  # [assumed]
        if status == 422:
            body["message"] = ["Contact not found"]
            body["error"] = "Unprocessable Entity"
        return JSONResponse(body, status_code=status)

    def _contact_view(self, contact: dict[str, Any], record: RecordedRequest) -> dict[str, Any]:
        view = copy.deepcopy(contact)
        if record.header("version") == "v3":
            view["dndSettings"] = {_V2_TO_V3.get(k, k): v for k, v in view.get("dndSettings", {}).items()}
        return view

    def _get_contact(self, record: RecordedRequest, location: str) -> Response:
        contact_id = _CONTACT.match(record.path).group("id")  # type: ignore[union-attr]
        with self._state_lock:
            contact = self._find_contact(contact_id, location)
            if contact is None:
                return self._not_found()
            return JSONResponse({"contact": self._contact_view(contact, record)})

    def _update_contact(self, record: RecordedRequest, location: str) -> Response:
        contact_id = _CONTACT.match(record.path).group("id")  # type: ignore[union-attr]
        body = record.json
        if not isinstance(body, dict):
            return _unprocessable("body must be a JSON object")
        unknown = sorted(set(body) - UPDATABLE_CONTACT_KEYS)
        if unknown:
            return _unprocessable(*(f"property {key} should not exist" for key in unknown))
        v3 = record.header("version") == "v3"
        problems = self._check_dnd(body.get("dndSettings"), v3) if "dndSettings" in body else []
        fields = body.get("customFields")
        if fields is not None:
            problems += self._check_custom_fields(fields, v3)
        if "tags" in body and not _is_str_list(body["tags"]):
            problems.append("each value in tags must be a string")
        if problems:
            return _unprocessable(*problems)
        with self._state_lock:
            contact = self._find_contact(contact_id, location)
            if contact is None:
                return self._not_found()
            for key, value in body.items():
                if key == "dndSettings":
                    for channel, entry in value.items():
                        contact["dndSettings"][_V3_TO_V2.get(channel, channel)] = {
                            "status": entry["status"], "message": entry.get("message", ""),
                            "code": entry.get("code", ""),
                        }
                elif key == "customFields":
                    self._merge_custom_fields(contact, value)
                else:
                    contact[key] = copy.deepcopy(value)
            contact["dateUpdated"] = webhooks.iso(self._now())
            return JSONResponse({"succeded": True, "contact": self._contact_view(contact, record)})

    @staticmethod
    def _check_dnd(settings: Any, v3: bool) -> list[str]:
        if not isinstance(settings, dict):
            return ["dndSettings must be an object"]
        keys = _V3_DND_KEYS if v3 else _V2_DND_KEYS
        problems = []
        for channel, entry in settings.items():
            if channel not in keys:
                problems.append(f"dndSettings.property {channel} should not exist")
            elif not isinstance(entry, dict) or entry.get("status") not in _DND_STATUSES:
                problems.append(f"dndSettings.{channel}.status must be one of: {', '.join(_DND_STATUSES)}")
        return problems

    @staticmethod
    def _check_custom_fields(fields: Any, v3: bool) -> list[str]:
        if not isinstance(fields, list):
            return ["customFields must be an array"]
        problems = []
        value_keys = ("fieldValue", "field_value") if v3 else ("field_value",)
        for i, entry in enumerate(fields):
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
                problems.append(f"customFields.{i}.id must be a string")
            elif not any(k in entry for k in value_keys):
                problems.append(f"customFields.{i}.{value_keys[0]} should not be empty")
        return problems

    @staticmethod
    def _merge_custom_fields(contact: dict[str, Any], fields: list[dict[str, Any]]) -> None:
        current = {f["id"]: f for f in contact.setdefault("customFields", [])}
        for entry in fields:
            value = entry.get("fieldValue", entry.get("field_value"))
            current[entry["id"]] = {"id": entry["id"], "value": copy.deepcopy(value)}
        contact["customFields"] = list(current.values())

    def _tags(self, record: RecordedRequest, location: str) -> Response:
        contact_id = _CONTACT_SUB.match(record.path).group("id")  # type: ignore[union-attr]
        body = record.json
        if not isinstance(body, dict) or not _is_str_list(body.get("tags")):
            return _unprocessable("tags must be an array", "each value in tags must be a string")
        with self._state_lock:
            contact = self._find_contact(contact_id, location)
            if contact is None:
                return self._not_found()
            tags: list[str] = contact.setdefault("tags", [])
            if record.method == "POST":
                for tag in body["tags"]:
                    if tag not in tags:
                        tags.append(tag)
                return JSONResponse({"tags": list(tags)}, status_code=201)
            contact["tags"] = [t for t in tags if t not in set(body["tags"])]
            return JSONResponse({"tags": list(contact["tags"])}, status_code=200)

    def _add_note(self, record: RecordedRequest, location: str) -> Response:
        contact_id = _CONTACT_SUB.match(record.path).group("id")  # type: ignore[union-attr]
        body = record.json
        if not isinstance(body, dict) or not isinstance(body.get("body"), str) or not body["body"]:
            return _unprocessable("body must be a string", "body should not be empty")
        with self._state_lock:
            if self._find_contact(contact_id, location) is None:
                return self._not_found()
            note = {"id": self.new_id(), "body": body["body"], "userId": body.get("userId"),
                    "dateAdded": webhooks.iso(self._now()), "contactId": contact_id}
            self._notes.append(note)
            return JSONResponse({"note": note}, status_code=201)

    def _add_task(self, record: RecordedRequest, location: str) -> Response:
        contact_id = _CONTACT_SUB.match(record.path).group("id")  # type: ignore[union-attr]
        body = record.json
        if not isinstance(body, dict):
            return _unprocessable("body must be a JSON object")
        problems = []
        if not isinstance(body.get("title"), str) or not body["title"]:
            problems.append("title must be a string")
        if not isinstance(body.get("dueDate"), str) or not _is_iso(body["dueDate"]):
            problems.append("dueDate must be a valid ISO 8601 date string")
        if not isinstance(body.get("completed"), bool):
            problems.append("completed must be a boolean value")
        if "body" in body and not isinstance(body["body"], str):
            problems.append("body must be a string")
        if "assignedTo" in body and not isinstance(body["assignedTo"], str):
            problems.append("assignedTo must be a string")
        if problems:
            return _unprocessable(*problems)
        with self._state_lock:
            if self._find_contact(contact_id, location) is None:
                return self._not_found()
            task = {"id": self.new_id(), "title": body["title"], "body": body.get("body", ""),
                    "assignedTo": body.get("assignedTo"), "dueDate": body["dueDate"],
                    "completed": body["completed"], "contactId": contact_id}
            self._tasks.append(task)
            return JSONResponse({"task": task}, status_code=201)

    def _send_message(self, record: RecordedRequest, location: str) -> Response:
        body = record.json
        if not isinstance(body, dict):
            return _unprocessable("body must be a JSON object")
        problems = []
        if body.get("type") not in MESSAGE_TYPES:
            problems.append(f"type must be one of the following values: {', '.join(MESSAGE_TYPES)}")
        if not isinstance(body.get("contactId"), str) or not body["contactId"]:
            problems.append("contactId must be a string")
        if problems:
            return _unprocessable(*problems)
        kind, contact_id = body["type"], body["contactId"]
        with self._state_lock:
            contact = self._find_contact(contact_id, location)
            if contact is None:
                return self._not_found()
            settings = contact.get("dndSettings") or {}
            channel = "Email" if kind == "Email" else "SMS"
            blocked = (settings.get(channel) or {}).get("status") in ("active", "permanent")
            if kind in ("SMS", "Email") and (contact.get("dnd") or blocked):
                return _bad_request(f"Cannot send message as DND is active for {channel}")
            if kind == "SMS":
                text = body.get("message")
                if not (isinstance(text, str) and text) and not body.get("attachments"):
                    return _unprocessable("message should not be empty")
                if not (contact.get("phone") or body.get("toNumber")):
                    return _bad_request("Contact does not have a phone number")  # [assumed]
            if kind == "Email":
                if not (body.get("html") or body.get("message")):
                    return _unprocessable("html should not be empty")
                if not (contact.get("email") or body.get("emailTo")):
                    return _bad_request("Contact does not have an email address")  # [assumed]
            message_id = self.new_id()
            stored = {
                "id": message_id,
                "conversationId": self.conversation_id(contact_id),
                "contactId": contact_id,
                "locationId": location,
                "type": kind,
                "message": body.get("message"),
                "subject": body.get("subject"),
                "html": body.get("html"),
                "fromNumber": body.get("fromNumber"),
                "emailFrom": body.get("emailFrom"),
                "dateAdded": webhooks.iso(self._now()),
                "at": record.at,
                "status": "pending",
                "request": copy.deepcopy(body),
            }
            answer: dict[str, Any] = {
                "conversationId": stored["conversationId"],
                "messageId": message_id,
                "msg": "Message queued successfully.",
                "status": "pending",
            }
            if kind == "Email":
                answer["emailMessageId"] = self.new_id()
                stored["emailMessageId"] = answer["emailMessageId"]
            self._messages.append(stored)
            return JSONResponse(answer, status_code=200)

    # -- conversation reads ------------------------------------------------------------------------

    def _search_conversations(self, record: RecordedRequest, location: str) -> Response:
        query = _query(record)
        wanted_location = query.get("locationId")
        if not wanted_location:
            return _unprocessable("locationId should not be empty")
        if wanted_location != location:
            return JSONResponse({"statusCode": 403, "message": "The token does not have access to this "
                                 "location.", "error": "Forbidden"}, status_code=403)  # [assumed]
        limit = _page_limit(query.get("limit"))
        if limit is None:
            return _unprocessable("limit must be a number between 1 and 100")
        contact_id = query.get("contactId")
        with self._state_lock:
            views = [
                self._conversation_view(cid, conversation_id)
                for cid, conversation_id in self._conversations.items()
                if contact_id in (None, cid) and self._conversation_location(cid) == location
            ]
        views.sort(key=lambda v: v["lastMessageDate"] or 0, reverse=True)
        return JSONResponse({"conversations": views[:limit], "total": len(views)})

    def _conversation_messages(self, record: RecordedRequest, location: str) -> Response:
        conversation_id = _CONVERSATION_MESSAGES.match(record.path).group("id")  # type: ignore[union-attr]
        query = _query(record)
        limit = _page_limit(query.get("limit"))
        if limit is None:
            return _unprocessable("limit must be a number between 1 and 100")
        types = {t for t in (query.get("type") or "").split(",") if t}
        with self._state_lock:
            owner = next((cid for cid, conv in self._conversations.items() if conv == conversation_id), None)
            if owner is None or self._conversation_location(owner) != location:
                return _bad_request("Conversation not found")  # [assumed]
            newest_first = [m for _, m in sorted(
                ((i, m) for i, m in enumerate(self._messages) if m["conversationId"] == conversation_id),
                key=lambda pair: (pair[1]["dateAdded"], pair[0]), reverse=True,
            )]
            start = 0
            after = query.get("lastMessageId")
            if after:
                position = next((i for i, m in enumerate(newest_first) if m["id"] == after), None)
                if position is None:
                    return _bad_request("lastMessageId not found in this conversation")  # [assumed]
                start = position + 1
            rest = [self._message_view(m) for m in newest_first[start:]]
        if types:
            rest = [m for m in rest if m["messageType"] in types]
        page = rest[:limit]
        return JSONResponse({"messages": {  # nested [assumed]; the spec has this object at the top level
            "lastMessageId": page[-1]["id"] if page else None,
            "nextPage": len(rest) > limit,
            "messages": page,
        }})

    def _get_email(self, record: RecordedRequest, location: str) -> Response:
        email_id = _EMAIL_MESSAGE.match(record.path).group("id")  # type: ignore[union-attr]
        with self._state_lock:
            stored = next((m for m in self._messages
                           if m.get("emailMessageId") == email_id and m["locationId"] == location), None)
            if stored is None:
                return _bad_request("Email message not found")  # [assumed]
            contact = self._contacts.get(stored["contactId"]) or {}
            return JSONResponse({
                "id": email_id,
                "threadId": email_id,
                "locationId": stored["locationId"],
                "contactId": stored["contactId"],
                "conversationId": stored["conversationId"],
                "dateAdded": stored["dateAdded"],
                "subject": stored.get("subject"),
                "body": stored.get("html") or stored.get("message") or "",
                "direction": "outbound",
                "status": stored["status"],
                "contentType": "text/html",
                "attachments": list(stored["request"].get("attachments") or []),
                "from": stored.get("emailFrom") or "",
                "to": [stored["request"].get("emailTo") or contact.get("email") or ""],
                "source": "api",
            })

    def _conversation_location(self, contact_id: str) -> str:
        contact = self._contacts.get(contact_id)
        if contact is not None:
            return str(contact.get("locationId") or self.location_id)
        conversation_id = self._conversations.get(contact_id)
        sent = next((m for m in self._messages if m["conversationId"] == conversation_id), None)
        return str(sent["locationId"]) if sent is not None else self.location_id

    def _conversation_view(self, contact_id: str, conversation_id: str) -> dict[str, Any]:
        sent = [m for m in self._messages if m["conversationId"] == conversation_id]
        last = max(sent, key=lambda m: m["dateAdded"]) if sent else None
        contact = self._contacts.get(contact_id) or {}
        last_view = self._message_view(last) if last is not None else None
        return {
            "id": conversation_id,
            "contactId": contact_id,
            "locationId": self._conversation_location(contact_id),
            "lastMessageBody": last_view["body"] if last_view else "",
            "lastMessageType": last_view["messageType"] if last_view else None,
            "lastMessageDirection": "outbound" if last_view else None,
            "lastMessageDate": _epoch_ms(last["dateAdded"]) if last is not None else None,  # [assumed]
            "type": "TYPE_PHONE",
            "unreadCount": 0,
            "fullName": contact.get("name") or "",
            "contactName": contact.get("name") or "",
            "email": contact.get("email") or "",
            "phone": contact.get("phone") or "",
        }

    def _message_view(self, stored: dict[str, Any]) -> dict[str, Any]:
        """A stored send as ``GET /conversations/{id}/messages`` lists it."""
        kind = stored["type"]
        email = kind == "Email"
        view: dict[str, Any] = {
            "id": stored["id"],
            "conversationId": stored["conversationId"],
            "contactId": stored["contactId"],
            "locationId": stored["locationId"],
            "type": kind,
            "messageType": _MESSAGE_TYPES.get(kind, f"TYPE_{kind.upper()}"),
            "direction": "outbound",
            "status": stored["status"],
            "body": (stored.get("html") if email else None) or stored.get("message") or "",
            "contentType": "text/html" if email else "text/plain",
            "attachments": list(stored["request"].get("attachments") or []),
            "dateAdded": stored["dateAdded"],
            "source": "api",
        }
        if email:
            meta: dict[str, Any] = {"messageIds": [stored["emailMessageId"]]}
            if self.email_subject_in_list:
                meta["subject"] = stored.get("subject")
            view["meta"] = {"email": meta}
        return view

    def _agency_call(self, record: RecordedRequest, path: str) -> Response:
        header = record.header("authorization") or ""
        scheme, _, token = header.partition(" ")
        with self._state_lock:
            known = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if known is None or known.expired:
            return JSONResponse(UNAUTHORIZED_BODY, status_code=401)
        if known.user_type != "Company":
            return JSONResponse({"statusCode": 401, "message": "This route is not yet supported by the IAM "
                                 "Service", "error": "Unauthorized"}, status_code=401)  # [assumed]
        company = known.location_id
        allowed, rate_headers = self._count(company)  # the agency's own bucket
        if not allowed:
            return JSONResponse(RATE_LIMITED_BODY, status_code=429, headers=rate_headers)
        record.extra["location_id"] = company
        if path == "/oauth/installedLocations":
            query = _query(record)
            if query.get("companyId") != company:
                return _unprocessable("companyId does not match the token")
            if query.get("appId") != self.oauth_client_id.split("-")[0]:
                return _unprocessable("appId is invalid")
            skip, limit = int(query.get("skip") or 0), int(query.get("limit") or 20)
            with self._state_lock:
                members = sorted(self._installed.get(company, set()))
            page = [{"_id": loc, "name": f"Location {loc}", "address": "", "isInstalled": True}
                    for loc in members[skip:skip + limit]]
            return JSONResponse({"locations": page, "count": len(members), "installToFutureLocations": False},
                                headers=rate_headers)
        form = {k: v[0] for k, v in parse_qs(record.body.decode("utf-8", "replace")).items()}
        location = form.get("locationId") or ""
        if form.get("companyId") != company:
            return _unprocessable("companyId does not match the token")
        with self._state_lock:
            if location not in self._installed.get(company, set()):
                return _bad_request("The app is not installed on this location")  # [assumed]
            answer = self._mint(location, company_id=company)
        return JSONResponse(answer, headers=rate_headers)

    def _oauth_token(self, record: RecordedRequest) -> Response:
        content_type = (record.header("content-type") or "").split(";")[0].strip().lower()
        if content_type == "application/json":
            form = record.json if isinstance(record.json, dict) else {}
        elif content_type == "application/x-www-form-urlencoded":
            form = {k: v[0] for k, v in parse_qs(record.body.decode("utf-8", "replace")).items()}
        else:
            return _bad_request("Unsupported content type; use application/x-www-form-urlencoded")
        client_ok = form.get("client_id") == self.oauth_client_id
        if not client_ok or form.get("client_secret") != self.oauth_client_secret:
            return JSONResponse({"statusCode": 401, "message": "Invalid client credentials",
                                 "error": "Unauthorized"}, status_code=401)  # [assumed]
        grant = form.get("grant_type")
        now = self.clock()
        with self._state_lock:
            if grant == "authorization_code":
                code = form.get("code")
                if not code:
                    return _unprocessable("code should not be empty")
                grant_data = self._grants.pop(code, None)
                if grant_data is None:  # unknown or already used: codes are single-use
                    return JSONResponse({"statusCode": 400, "error": "invalid_grant",  # [assumed]
                                         "message": "Invalid grant: authorization code is invalid"},
                                        status_code=400)
                if "location_id" in grant_data:
                    return JSONResponse(self._mint(grant_data["location_id"],
                                                   company_id=grant_data["company_id"]))
                answer = self._mint(grant_data["company_id"], user_type="Company")
                answer.update(isBulkInstallation=True, approvedLocations=grant_data["locations"],
                              installToFutureLocations=False, approveAllLocations=False)
                return JSONResponse(answer)
            if grant != "refresh_token":
                return _unprocessable("grant_type must be one of: authorization_code, refresh_token, "
                                      "client_credentials")
            refresh = str(form.get("refresh_token") or "")
            recent = self._recent_refreshes.get(refresh)
            if recent is not None and now - recent[1] <= self.refresh_reuse_window:
                return JSONResponse(copy.deepcopy(recent[0]))  # GHL: same answer within 30 s
            owner = self._refresh_tokens.pop(refresh, None)
            if owner is None:
                return JSONResponse({"statusCode": 400, "message": "Invalid grant: refresh token is invalid",
                                     "error": "invalid_grant"}, status_code=400)  # [assumed]
            answer = self._mint(owner[0], user_type=owner[1])
            self._recent_refreshes[refresh] = (copy.deepcopy(answer), now)
            self.refresh_count += 1
            self.refreshes[owner[0]] = self.refreshes.get(owner[0], 0) + 1
            return JSONResponse(answer)


def _query(record: RecordedRequest) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(record.query).items()}


def _page_limit(value: str | None, default: int = 20, maximum: int = 100) -> int | None:
    """A ``limit`` query value, or None when it is not a whole number in 1..maximum."""
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        return None
    return number if 1 <= number <= maximum else None


def _epoch_ms(iso_text: str) -> int:
    when = datetime.fromisoformat(iso_text[:-1] + "+00:00" if iso_text.endswith("Z") else iso_text)
    return int(when.timestamp() * 1000)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_iso(value: str) -> bool:
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True

