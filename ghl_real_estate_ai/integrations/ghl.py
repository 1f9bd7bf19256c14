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
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
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
from ghl_real_estate_ai.integrations.models import Contact, SendResult
from ghl_real_estate_ai.integrations.rate_limit import RateLimiter, SlidingWindowLimiter

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


class GHLClient:
    """Async GHL client for one location (sub-account). Implements ``integrations.models.Crm``.

    ``token_provider`` is a :class:`~ghl_real_estate_ai.integrations.auth.TokenProvider` or a plain token
    string (a Private Integration token). ``versions`` overrides the ``Version`` header per family
    (``contacts``, ``conversations``, ``locations``); a contacts version of ``"v3"`` also switches
    ``dndSettings`` keys to lowerCamel and custom-field writes to ``fieldValue``. ``transport`` replaces
    httpx's network transport (tests). ``rate_limiter`` defaults to an in-process 100-per-10-s window;
    pass a :class:`~ghl_real_estate_ai.integrations.rate_limit.RedisSlidingWindowLimiter` to share the
    budget between processes. ``max_retries`` counts retries after the first attempt (a ``retry_policy``
    replaces it along with the backoff settings). ``sleep`` and ``rng`` drive the backoff (tests inject
    virtual time and a seeded generator).

    Use it as an async context manager, or call :meth:`aclose`.
    """

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
                                       operation=operation, json=payload, idempotent=retry_unknown_outcome)
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

    # -- plumbing ---------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        family: str,
        operation: str,
        json: Any = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """One logical call: rate limit, auth (one refresh on 401), retries; a 2xx answer or an error."""
        version = self.versions[family]
        refreshed = False

        async def attempt() -> httpx.Response:
            nonlocal refreshed
            token = await self._tokens.get_token()
            response = await self._once(method, path, version, token, json)
            if response.status_code == 401 and not refreshed:
                refreshed = True
                replacement = await self._tokens.refresh(token)
                if replacement is not None and replacement != token:
                    logger.info("GHL rejected the token for %s; retrying with a refreshed one", operation)
                    response = await self._once(method, path, version, replacement, json)
            return response

        response = await send_with_retries(
            attempt, service=SERVICE, operation=operation, policy=self._policy, idempotent=idempotent,
            sleep=self._sleep, rng=self._rng,
        )
        if response.is_success:
            return response
        raise self._error(response, operation)

    async def _once(self, method: str, path: str, version: str, token: str, json: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Version": version}
        response: httpx.Response | None = None
        try:
            async with self._limiter.slot(self.location_id):
                response = await self._http.request(method, path, json=json, headers=headers)
        except (RedisError, OSError) as exc:
            if response is None:  # the shared limiter failed before the request left: nothing was sent
                raise TransientIntegrationError(
                    SERVICE, "rate limit", f"the shared rate limiter is unreachable: {exc}"
                ) from exc
            logger.warning("the rate limiter could not record a finished GHL request: %s", exc)
        assert response is not None
        try:
            await self._limiter.observe(self.location_id, response.headers)
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
