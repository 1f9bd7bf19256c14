"""``GHLClient``: the typed async client of the GoHighLevel (LeadConnector) API v2 that implements ``Crm``.

Every request carries ``Authorization: Bearer <token>`` (from a token provider) and the ``Version``
header of its endpoint family, goes through the location's rate limiter, and is retried with backoff
only where that is safe (see ``integrations._http``). Errors leave this module only as the
``ghl_real_estate_ai.errors`` tree:

* 400 whose message says "DND is active"        -> ``SendBlockedError`` (never retried)
* 401 (after one token refresh) or 403          -> ``AuthenticationError``
* 404, or 400/422 whose message says not found  -> ``NotFoundError``
* any other 4xx                                 -> ``PermanentIntegrationError``
* 408/429/5xx/transport errors, retries used up -> ``TransientIntegrationError``
* a send whose outcome is unknown               -> ``OutcomeUnknownError`` (transient, ``outcome_unknown``)

Reading back a send whose answer never came (``find_sent_message``) never raises for HTTP problems: it
answers a ``SendLookup`` (found / absent / unknown). The endpoint facts it relies on, from GHL's v2
OpenAPI spec (``apps/conversations.json``; ``Version: 2021-04-15``, scope ``conversations.readonly`` /
``conversations/message.readonly``):

* ``GET /conversations/search?locationId=&contactId=`` -> ``{"conversations": [{"id", "contactId",
  "locationId", "lastMessageBody", "lastMessageType", ...}], "total"}``; ``locationId`` is required.
* ``GET /conversations/{conversationId}/messages?limit=&lastMessageId=`` -> ``{"lastMessageId",
  "nextPage", "messages": [...]}``, newest first; the next page starts after ``lastMessageId``. Some
  third-party code reads that object nested under a top-level ``"messages"`` key: both are accepted.
  A message has ``id`` (the ``messageId`` a send returned), ``messageType`` ("TYPE_SMS", "TYPE_EMAIL"),
  ``type`` (a number in the spec), ``direction``, ``body``, ``dateAdded`` (ISO 8601) and, for email,
  ``meta.email.messageIds``.
* ``GET /conversations/messages/email/{id}`` -> the email (``subject``, ``body``, ...) by an id from
  ``meta.email.messageIds``; the spec's message list carries no subject.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import httpx
from redis.exceptions import RedisError

from ghl_real_estate_ai import __version__
from ghl_real_estate_ai.errors import (
    AuthenticationError,
    IntegrationError,
    NotFoundError,
    PermanentIntegrationError,
    SendBlockedError,
    TransientIntegrationError,
)
from ghl_real_estate_ai.integrations._http import (
    OutcomeUnknownError,
    RetryPolicy,
    Sleep,
    error_message,
    json_body,
    parse_retry_after,
    send_with_retries,
)
from ghl_real_estate_ai.integrations.auth import StaticTokenProvider, TokenProvider
from ghl_real_estate_ai.integrations.models import Contact, SendLookup, SendResult, lookup_arguments
from ghl_real_estate_ai.integrations.rate_limit import RateLimiter, SlidingWindowLimiter, Ticket
from ghl_real_estate_ai.integrations.send_window import check_send_window

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_VERSIONS", "GHLClient", "OutcomeUnknownError"]

logger = logging.getLogger(__name__)

SERVICE: Final = "GHL"
DEFAULT_BASE_URL: Final = "https://services.leadconnectorhq.com"

# Endpoint family -> Version header. The v2 specs pin contacts/locations to 2021-07-28 and
# POST /conversations/messages to 2021-04-15; "v3" works for every family.
DEFAULT_VERSIONS: Final[Mapping[str, str]] = {
    "contacts": "2021-07-28",
    "conversations": "2021-04-15",
    "locations": "2021-07-28",
}

# Bot channel -> dndSettings key, in the v2 and the v3 spelling.
_DND_KEYS_V2: Final = {"sms": "SMS", "email": "Email", "call": "Call"}
_DND_KEYS_V3: Final = {"sms": "sms", "email": "email", "call": "call"}

_NOT_FOUND_HINTS: Final = ("not found", "does not exist", "doesn't exist", "no contact")

# Bot channel -> (messageType, the send's ``type``) of a conversation message.
_READBACK_TYPES: Final = {"sms": ("TYPE_SMS", "sms"), "email": ("TYPE_EMAIL", "email")}
# Emails whose subject is read one by one (``GET /conversations/messages/email/{id}``) per lookup.
_MAX_EMAIL_READS: Final = 20


class GHLClient:
    """Async GHL client for one location (sub-account). Implements ``integrations.models.Crm``.

    ``token_provider`` is a :class:`~ghl_real_estate_ai.integrations.auth.TokenProvider` or a plain token
    string (a Private Integration token). ``versions`` overrides the ``Version`` header per family
    (``contacts``, ``conversations``, ``locations``); a contacts version of ``"v3"`` also switches
    ``dndSettings`` keys to lowerCamel and custom-field writes to ``fieldValue``. ``transport`` replaces
    httpx's network transport (tests). ``rate_limiter`` defaults to an in-process 100-per-10-s window;
    pass a :class:`~ghl_real_estate_ai.integrations.rate_limit.RedisSlidingWindowLimiter` to share the
    budget between processes. ``read_timeout`` (seconds) replaces ``timeout`` for reads (GET): a read
    that hangs is abandoned and retried, while a send keeps the longer ``timeout`` (its outcome would
    be unknown). ``max_retries`` counts retries after the first attempt (a ``retry_policy``
    replaces it along with the backoff settings). ``sleep`` and ``rng`` drive the backoff (tests inject
    virtual time and a seeded generator).

    Use it as an async context manager, or call :meth:`aclose`.
    """

    readback_page_size: int = 20
    """Messages asked for per page when reading back a send (GHL's default page; at most 100)."""
    readback_max_pages: int = 10
    """Pages read per conversation before a read-back gives up as "unknown"."""

    def __init__(
        self,
        base_url: str,
        token_provider: TokenProvider | str,
        location_id: str,
        *,
        versions: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rate_limiter: RateLimiter | None = None,
        timeout: float | httpx.Timeout = 15.0,
        read_timeout: float | None = None,
        max_retries: int = 3,
        retry_policy: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not location_id:
            raise ValueError("GHLClient needs a location id")
        self.location_id = location_id
        self._tokens: TokenProvider = (
            StaticTokenProvider(token_provider) if isinstance(token_provider, str) else token_provider
        )
        self.versions: dict[str, str] = {**DEFAULT_VERSIONS, **(versions or {})}
        self._contacts_v3 = self.versions["contacts"].strip().lower() == "v3"
        self._limiter: RateLimiter = rate_limiter or SlidingWindowLimiter()
        self._policy = retry_policy or RetryPolicy(max_retries=max_retries)
        self._read_timeout = read_timeout
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            transport=transport,
            timeout=timeout,
            headers={"Accept": "application/json", "User-Agent": f"ghl-real-estate-ai/{__version__}"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> GHLClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- contacts ---------------------------------------------------------------------------------

    async def get_contact(self, contact_id: str) -> Contact:
        """``GET /contacts/{id}``. Raises ``NotFoundError`` for an unknown id."""
        response = await self._request("GET", _contact_path(contact_id), family="contacts",
                                       operation="get contact")
        contact = json_body(response).get("contact")
        if not isinstance(contact, dict):
            raise PermanentIntegrationError(SERVICE, "get contact", "the answer has no contact object",
                                            status=response.status_code)
        return Contact.from_ghl(contact)

    async def update_contact(self, contact_id: str, fields: Mapping[str, Any]) -> Contact:
        """``PUT /contacts/{id}`` with ``fields`` as given (GHL keys, e.g. ``timezone``, ``dndSettings``).

        Note that ``tags`` here *replaces* all tags; use :meth:`add_tags`/:meth:`remove_tags` instead.
        Returns the updated contact from the answer (``{"succeded": true, "contact": {...}}``).
        """
        response = await self._request("PUT", _contact_path(contact_id), family="contacts",
                                       operation="update contact", json=dict(fields))
        contact = json_body(response).get("contact")
        if isinstance(contact, dict):
            return Contact.from_ghl(contact)
        logger.debug("GHL update of %s returned no contact; reading it back", contact_id)
        return await self.get_contact(contact_id)

    async def update_custom_fields(self, contact_id: str, values: Mapping[str, Any]) -> Contact:
        """Set custom fields by field id (``{field_id: value}``) through ``PUT /contacts/{id}``.

        Values may be strings, numbers, lists (multi-select) or objects, as GHL allows. Written as
        ``{"id", "field_value"}`` (``fieldValue`` when the contacts version is v3).
        """
        value_key = "fieldValue" if self._contacts_v3 else "field_value"
        fields = [{"id": field_id, value_key: value} for field_id, value in values.items()]
        return await self.update_contact(contact_id, {"customFields": fields})

    async def set_dnd(self, contact_id: str, channel: str, active: bool, message: str = "") -> None:
        """Turn DND for one channel (``sms``, ``email`` or ``call``) on or off.

        ``PUT /contacts/{id}`` with ``{"dndSettings": {"SMS": {"status": "active", "message": ...}}}``
        (keys ``sms``/``email``/``call`` with a v3 contacts version). Setting the same state twice is
        harmless, so this is safe to repeat.
        """
        keys = _DND_KEYS_V3 if self._contacts_v3 else _DND_KEYS_V2
        try:
            key = keys[channel.lower()]
        except KeyError:
            raise ValueError(f"unknown DND channel {channel!r}; use one of {sorted(keys)}") from None
        entry = {"status": "active" if active else "inactive", "message": message}
        await self._request("PUT", _contact_path(contact_id), family="contacts", operation="set DND",
                            json={"dndSettings": {key: entry}})

    async def add_tags(self, contact_id: str, tags: list[str]) -> None:
        """``POST /contacts/{id}/tags`` with ``{"tags": [...]}`` (201). Idempotent."""
        if not tags:
            return
        await self._request("POST", f"{_contact_path(contact_id)}/tags", family="contacts",
                            operation="add tags", json={"tags": list(tags)})

    async def remove_tags(self, contact_id: str, tags: list[str]) -> None:
        """``DELETE /contacts/{id}/tags`` with the same JSON body (200). Idempotent."""
        if not tags:
            return
        await self._request("DELETE", f"{_contact_path(contact_id)}/tags", family="contacts",
                            operation="remove tags", json={"tags": list(tags)})

    async def add_note(
        self, contact_id: str, body: str, *, user_id: str | None = None, retry_unknown_outcome: bool = True
    ) -> None:
        """``POST /contacts/{id}/notes`` with ``{"body": ...}``.

        Not idempotent, but a duplicated internal note is cheaper than a lost one, so by default a
        request whose outcome is unknown is retried; pass ``retry_unknown_outcome=False`` to refuse.
        """
        payload: dict[str, Any] = {"body": body}
        if user_id:
            payload["userId"] = user_id
        await self._request("POST", f"{_contact_path(contact_id)}/notes", family="contacts",
                            operation="add note", json=payload, idempotent=retry_unknown_outcome)

    async def add_task(
        self,
        contact_id: str,
        title: str,
        body: str,
        due_at: str,
        assigned_to: str | None,
        *,
        retry_unknown_outcome: bool = True,
    ) -> None:
        """``POST /contacts/{id}/tasks`` with ``title``, ``body``, ``dueDate`` (ISO 8601),
        ``completed: false`` and ``assignedTo`` when given. Retries an unknown outcome by default, as
        :meth:`add_note` does.
        """
        payload: dict[str, Any] = {"title": title, "body": body, "dueDate": due_at, "completed": False}
        if assigned_to:
            payload["assignedTo"] = assigned_to
        await self._request("POST", f"{_contact_path(contact_id)}/tasks", family="contacts",
                            operation="add task", json=payload, idempotent=retry_unknown_outcome)

    # -- conversations ----------------------------------------------------------------------------

    async def send_sms(
        self,
        contact_id: str,
        message: str,
        *,
        from_number: str | None = None,
        retry_unknown_outcome: bool = False,
    ) -> SendResult:
        """Text the contact: ``POST /conversations/messages`` ``{"type": "SMS", "contactId", "message"}``.

        Delivery semantics: 429, 5xx and failures to connect are retried (the message was not taken).
        A timeout or dropped connection *after* the request left may mean the text was queued anyway;
        by default that raises ``OutcomeUnknownError`` (a ``TransientIntegrationError`` with
        ``outcome_unknown = True``) instead of risking a duplicate text. ``retry_unknown_outcome=True``
        retries such failures too (at-least-once).

        Raises ``SendBlockedError`` when GHL refuses because SMS DND is active (never retried).
        """
        payload: dict[str, Any] = {"type": "SMS", "contactId": contact_id, "message": message}
        if from_number:
            payload["fromNumber"] = from_number
        return await self._send_message(payload, "send SMS", retry_unknown_outcome)

    async def send_email(
        self,
        contact_id: str,
        subject: str,
        html: str,
        *,
        email_from: str | None = None,
        retry_unknown_outcome: bool = False,
    ) -> SendResult:
        """Email the contact: ``POST /conversations/messages`` ``{"type": "Email", "contactId", "subject",
        "html"}`` (plus ``emailFrom`` when given). Same delivery semantics as :meth:`send_sms`.
        """
        payload: dict[str, Any] = {"type": "Email", "contactId": contact_id, "subject": subject, "html": html}
        if email_from:
            payload["emailFrom"] = email_from
        return await self._send_message(payload, "send email", retry_unknown_outcome)

    async def _send_message(
        self, payload: dict[str, Any], operation: str, retry_unknown_outcome: bool
    ) -> SendResult:
        _require_id(payload["contactId"])
        response = await self._request("POST", "/conversations/messages", family="conversations",
                                       operation=operation, json=payload, idempotent=retry_unknown_outcome,
                                       send=True)
        body = json_body(response)
        message_id = body.get("messageId") or body.get("emailMessageId") or ""
        if not message_id:
            # The send went through (2xx); failing now would invite a duplicate on retry.
            logger.warning("GHL %s for %s succeeded without a messageId", operation, payload["contactId"])
        return SendResult(
            message_id=str(message_id),
            conversation_id=body.get("conversationId") or None,
            status=body.get("status") or None,
        )

    # -- reading back a send ----------------------------------------------------------------------

    async def find_sent_message(
        self, contact_id: str, *, channel: str, text: str, since: datetime
    ) -> SendLookup:
        """Read back whether an outbound SMS or email went out after its send's answer was lost.

        Lists the contact's conversations (``GET /conversations/search``) and pages each one's messages
        newest first (``GET /conversations/{id}/messages``) until a message dated before ``since`` or the
        last page. A message matches when it is ``outbound``, of ``channel`` ("sms": ``TYPE_SMS``;
        "email": ``TYPE_EMAIL``; a ``type`` of "SMS"/"Email" is accepted too), dated at or after
        ``since`` (compared to the millisecond, as GHL dates them), and its body (SMS) or subject (email)
        equals ``text`` once stripped. ``since`` is compared with GHL's clock: pass a time a little
        before the send to absorb clock skew.

        Answers ``found`` (with the message id and ``dateAdded``), ``absent`` (every conversation was
        read back to ``since`` and nothing matched) or ``unknown`` (a read failed after the usual
        retries, an endpoint is missing, an answer is malformed, more than :attr:`readback_max_pages`
        pages, or an email since ``since`` whose subject could not be read). Raises ``ValueError`` only
        for bad arguments.
        """
        _require_id(contact_id)
        channel, wanted, since = lookup_arguments(channel, text, since)
        floor = since.replace(microsecond=since.microsecond // 1000 * 1000)  # GHL dates to the millisecond
        search = _Readback(channel=channel, kinds=_READBACK_TYPES[channel], wanted=wanted, floor=floor)
        try:
            response = await self._request(
                "GET", "/conversations/search", family="conversations", operation="search conversations",
                params={"locationId": self.location_id, "contactId": contact_id},
            )
        except IntegrationError as exc:
            return _lookup_failed(exc)
        body = json_body(response)
        conversations = body.get("conversations")
        if not isinstance(conversations, list) or not all(
            isinstance(c, dict) and isinstance(c.get("id"), str) and c["id"] for c in conversations
        ):
            return SendLookup("unknown", detail="GHL conversation search answered without a list of "
                                                "conversations with ids")
        ids = [c["id"] for c in conversations if c.get("contactId") in (None, contact_id)]
        for conversation_id in ids:
            found = await self._read_back_conversation(conversation_id, search)
            if found is not None:
                return found
        total = body.get("total")
        if isinstance(total, int) and not isinstance(total, bool) and total > len(conversations):
            search.doubts.append(f"the search listed {len(conversations)} of {total} conversations")
        what = "text" if search.channel == "sms" else "subject"
        if search.doubts:
            return SendLookup("unknown", detail=f"no outbound {search.channel} with that {what} seen, but "
                                                f"{'; '.join(search.doubts)}")
        return SendLookup("absent", detail=(
            f"no outbound {search.channel} with that {what} since {_iso(search.floor)} in "
            f"{len(ids)} conversation(s) of contact {contact_id} ({search.pages} page(s) read)"
        ))

    async def _read_back_conversation(self, conversation_id: str, search: _Readback) -> SendLookup | None:
        """Page one conversation back to ``search.floor``: a ``found`` lookup, or None (the reason
        when it could not be covered is added to ``search.doubts``)."""
        path = f"/conversations/{quote(conversation_id, safe='')}/messages"
        cursor: str | None = None
        for _ in range(self.readback_max_pages):
            params = {"limit": str(self.readback_page_size)}
            if cursor:
                params["lastMessageId"] = cursor
            try:
                response = await self._request("GET", path, family="conversations", operation="list messages",
                                               params=params)
            except IntegrationError as exc:
                search.doubts.append(_lookup_failed(exc).detail)
                return None
            search.pages += 1
            page = _messages_page(json_body(response))
            if page is None:
                search.doubts.append(f"the messages of conversation {conversation_id} came back malformed")
                return None
            messages, next_page, last_id = page
            reached_floor = False
            for message in messages:
                at = _parse_ghl_date(message.get("dateAdded"))
                if at is not None and at < search.floor:
                    reached_floor = True
                    continue
                found = await self._match(message, at, search)
                if found is not None:
                    return found
            if next_page is None:  # no usable nextPage: only a short page proves the end
                next_page = len(messages) >= self.readback_page_size
            if reached_floor or not next_page:
                return None
            following = last_id or (str(messages[-1].get("id") or "") if messages else "")
            if not following or following == cursor:
                search.doubts.append(f"conversation {conversation_id} has more messages but no usable "
                                     "lastMessageId to page with")
                return None
            cursor = following
        search.doubts.append(f"conversation {conversation_id} was not read back to {_iso(search.floor)} "
                             f"within {self.readback_max_pages} pages")
        return None

    async def _match(
        self, message: dict[str, Any], at: datetime | None, search: _Readback
    ) -> SendLookup | None:
        """``found`` when ``message`` (dated ``at``, not before the floor) is the send looked for."""
        if message.get("direction") != "outbound":
            return None
        message_type, send_type = search.kinds
        kind = message.get("type")
        if message.get("messageType") != message_type and not (
            isinstance(kind, str) and kind.lower() == send_type
        ):
            return None
        message_id = str(message.get("id") or "")
        if search.channel == "sms":
            body = message.get("body")
            matched = isinstance(body, str) and body.strip() == search.wanted
        else:
            subject = await self._email_subject(message, search)
            if subject is None:
                return None
            matched = subject.strip() == search.wanted
        if not matched:
            return None
        if at is None:
            search.doubts.append(f"outbound {search.channel} {message_id} matches but has no readable "
                                 "dateAdded")
            return None
        return SendLookup("found", id=message_id, at=at, detail=(
            f"GHL has outbound {search.channel} {message_id} in conversation "
            f"{message.get('conversationId') or '?'} dated {_iso(at)}"
        ))

    async def _email_subject(self, message: dict[str, Any], search: _Readback) -> str | None:
        """The subject of an outbound email message, or None (with a doubt) when it cannot be read."""
        meta = message.get("meta")
        email = meta.get("email") if isinstance(meta, dict) else None
        email = email if isinstance(email, dict) else {}
        # [assumed] ``meta.email.subject`` and a top-level ``subject``: GHL's spec lists neither on a
        # conversation message (only ``meta.email.messageIds``); they are read first when present.
        for subject in (email.get("subject"), message.get("subject")):
            if isinstance(subject, str):
                return subject
        ids = email.get("messageIds")
        message_id = message.get("id")
        if not isinstance(ids, list) or not ids:
            search.doubts.append(f"outbound email {message_id} has no subject and no email ids to read it by")
            return None
        for email_id in ids[:3]:
            if not isinstance(email_id, str) or not email_id:
                continue
            if search.email_reads >= _MAX_EMAIL_READS:
                search.doubts.append(f"more than {_MAX_EMAIL_READS} emails to open for their subject")
                return None
            search.email_reads += 1
            try:
                response = await self._request(
                    "GET", f"/conversations/messages/email/{quote(email_id, safe='')}",
                    family="conversations", operation="get email",
                )
            except IntegrationError as exc:
                search.doubts.append(_lookup_failed(exc).detail)
                return None
            body = json_body(response)
            nested = body.get("emailMessage")  # [assumed] a wrapped answer; the spec's is the bare email
            subject = (nested if isinstance(nested, dict) else body).get("subject")
            if isinstance(subject, str):
                return subject
        search.doubts.append(f"the subject of outbound email {message_id} could not be read")
        return None

    # -- plumbing ---------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        family: str,
        operation: str,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool = True,
        send: bool = False,
    ) -> httpx.Response:
        """One logical call: rate limit, auth (one refresh on 401), retries; a 2xx answer or an error.

        ``send``: a message to the lead; each attempt checks the caller's send window
        (``integrations.send_window``) once the rate limiter let it go, right before it leaves.
        """
        guard = operation if send else None
        version = self.versions[family]
        refreshed = False

        async def attempt() -> httpx.Response:
            nonlocal refreshed
            token = await self._tokens.get_token()
            response = await self._once(method, path, version, token, json, params, guard)
            if response.status_code == 401 and not refreshed:
                refreshed = True
                replacement = await self._tokens.refresh(token)
                if replacement is not None and replacement != token:
                    logger.info("GHL rejected the token for %s; retrying with a refreshed one", operation)
                    response = await self._once(method, path, version, replacement, json, params, guard)
            return response

        response = await send_with_retries(
            attempt, service=SERVICE, operation=operation, policy=self._policy, idempotent=idempotent,
            sleep=self._sleep, rng=self._rng,
        )
        if response.is_success:
            return response
        raise self._error(response, operation)

    async def _once(
        self,
        method: str,
        path: str,
        version: str,
        token: str,
        json: Any,
        params: Mapping[str, str] | None,
        guard: str | None = None,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Version": version}
        response: httpx.Response | None = None
        ticket: Ticket | None = None
        try:
            async with self._limiter.slot(self.location_id) as ticket:
                if guard is not None:
                    check_send_window(SERVICE, guard)  # the slot may have waited past the window
                read = method == "GET" and self._read_timeout
                response = await self._http.request(
                    method, path, json=json, params=params, headers=headers,
                    timeout=self._read_timeout if read else httpx.USE_CLIENT_DEFAULT,
                )
        except (RedisError, OSError) as exc:
            if response is None:  # the shared limiter failed before the request left: nothing was sent
                raise TransientIntegrationError(
                    SERVICE, "rate limit", f"the shared rate limiter is unreachable: {exc}"
                ) from exc
            logger.warning("the rate limiter could not record a finished GHL request: %s", exc)
        assert response is not None
        try:
            await self._limiter.observe(self.location_id, response.headers, ticket)
            if response.status_code == 429:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                if retry_after:
                    await self._limiter.block(self.location_id, retry_after)
        except (RedisError, OSError) as exc:
            # The answer is in hand; losing it to a limiter hiccup could send twice on a retry.
            logger.warning("the rate limiter could not record GHL's rate-limit headers: %s", exc)
        return response

    def _error(self, response: httpx.Response, operation: str) -> IntegrationError:
        status = response.status_code
        message = error_message(response)
        lowered = message.lower()
        if status == 400 and "dnd is active" in lowered:
            logger.info("GHL refused %s: %s", operation, message)
            return SendBlockedError(SERVICE, operation, message, status=status)
        if status in (401, 403):
            return AuthenticationError(SERVICE, operation, message, status=status)
        if status == 404 or (status in (400, 422) and any(hint in lowered for hint in _NOT_FOUND_HINTS)):
            return NotFoundError(SERVICE, operation, message, status=status)
        return PermanentIntegrationError(SERVICE, operation, message, status=status)


def _require_id(contact_id: str) -> str:
    if not contact_id or not contact_id.strip():
        raise ValueError("contact_id must be a non-empty GHL contact id")
    return contact_id


def _contact_path(contact_id: str) -> str:
    return f"/contacts/{quote(_require_id(contact_id), safe='')}"


@dataclass
class _Readback:
    """One ``find_sent_message`` in progress: what is looked for, and why it may not be able to tell."""

    channel: str
    kinds: tuple[str, str]
    wanted: str
    floor: datetime
    pages: int = 0
    email_reads: int = 0
    doubts: list[str] = field(default_factory=list)


def _lookup_failed(exc: IntegrationError) -> SendLookup:
    """An ``unknown`` lookup whose one-line detail says which read failed and how."""
    if exc.status in (404, 405):
        detail = f"{exc.service} {exc.operation}: the endpoint is missing (HTTP {exc.status}): {exc.detail}"
    else:
        detail = str(exc)
    return SendLookup("unknown", detail=" ".join(detail.split()))


def _messages_page(body: dict[str, Any]) -> tuple[list[dict[str, Any]], bool | None, str] | None:
    """``(messages, nextPage, lastMessageId)`` from either answer shape, or None when malformed."""
    page = body.get("messages")
    if not isinstance(page, dict):
        page = body
    messages = page.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None
    next_page = page.get("nextPage")
    last_id = page.get("lastMessageId")
    return (messages, next_page if isinstance(next_page, bool) else None,
            last_id if isinstance(last_id, str) else "")


def _parse_ghl_date(value: Any) -> datetime | None:
    """A GHL ``dateAdded``: ISO 8601 (``...Z``), or epoch milliseconds; naive times are taken as UTC."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
