"""``FakeRetellServer``: a local HTTP stand-in for Retell AI's ``POST /v2/create-phone-call``,
``GET /v2/get-call/{call_id}`` and ``POST /v2/list-calls``, with Retell's status codes and
``{"status": "error", "message"}`` errors.

It checks ``Authorization: Bearer <api key>`` (401), validates the body (400 when ``from_number`` or
``to_number`` is missing or not E.164, or a dynamic variable is not a string), answers 422 for an
unknown ``from_number`` or agent when those lists are configured, and answers 201 with the call object
(``call_status`` "registered"). Calls are kept in memory; :meth:`FakeRetellServer.finish_call` turns one
into the webhook events Retell would send, ready to sign and deliver with ``testing.webhooks``.

``POST /v2/list-calls`` (as in Retell's Python SDK up to 2026-05; later SDKs use ``/v3/list-calls``)
takes ``{"filter_criteria", "sort_order", "limit", "pagination_key"}`` and answers a JSON array of call
objects. ``limit`` defaults to 50 and is at most 1000; ``pagination_key`` is a call id, exclusive;
``filter_criteria`` lists ``agent_id``, ``to_number`` and ``from_number`` are honoured, other criteria are
ignored [assumed]. Retell sorts by ``start_timestamp``; the fake sorts by creation time (kept beside the
call, not in the call object), so a call not yet started sorts among the newest [assumed].
"""

from __future__ import annotations

import copy
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ghl_real_estate_ai.testing import webhooks
from ghl_real_estate_ai.testing.fake_http import FakeHTTPServer, Fault, RecordedRequest
from ghl_real_estate_ai.testing.keys import TEST_RETELL_API_KEY

__all__ = ["DEFAULT_AGENT_ID", "DEFAULT_FROM_NUMBER", "FakeRetellServer", "Fault", "RecordedRequest"]

DEFAULT_AGENT_ID = "agent_test_lead_bot_000000000001"
DEFAULT_FROM_NUMBER = "+15125550100"

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_GET_CALL = re.compile(r"^/v2/get-call/(?P<id>[^/]+)/?$")
_LIST_FILTERS = ("agent_id", "to_number", "from_number")

_ERROR_MESSAGES = {
    400: "Invalid request format, please check API reference.",
    401: "API key is missing or invalid.",
    402: "Trial has ended, please add payment method.",
    404: "Not found.",
    422: "Cannot find requested asset under given api key.",
    429: "Account rate limited, please throttle your requests.",
    500: "An unexpected server error occurred.",
}


def _error(status: int, message: str | None = None) -> JSONResponse:
    text = message or _ERROR_MESSAGES.get(status, "An unexpected server error occurred.")
    return JSONResponse({"status": "error", "message": text}, status_code=status)


class FakeRetellServer(FakeHTTPServer):
    """An in-memory Retell. Thread-safe; helpers may be called from tests while it serves.

    Knobs: ``api_key``; ``numbers`` and ``agents`` (when given, other from-numbers/agents get 422);
    ``default_agent_id`` (the number's agent when no ``override_agent_id`` is sent); ``payment_required``
    (every create answers 402); ``list_calls_enabled`` (False: ``POST /v2/list-calls`` answers 404 like
    an unknown route, so a read-back cannot tell); ``now`` (wall time of a call's creation, in ms, for the
    listing order and the default ``start_timestamp`` of :meth:`finish_call`); ``clock``/``seed``; and
    the inherited fault injection.
    """

    service_name = "Retell"

    def __init__(
        self,
        *,
        api_key: str = TEST_RETELL_API_KEY,
        numbers: Iterable[str] | None = None,
        agents: Iterable[str] | None = None,
        default_agent_id: str = DEFAULT_AGENT_ID,
        payment_required: bool = False,
        list_calls_enabled: bool = True,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port, clock=clock, seed=seed)
        self.api_key = api_key
        self.numbers = frozenset(numbers) if numbers is not None else None
        self.agents = frozenset(agents) if agents is not None else None
        self.default_agent_id = default_agent_id
        self.payment_required = payment_required
        self.list_calls_enabled = list_calls_enabled
        self._now = now
        self._state_lock = threading.RLock()
        self._calls: dict[str, dict[str, Any]] = {}
        self._created: dict[str, tuple[int, int]] = {}  # call id -> (created_at_ms, creation sequence)
        self._sequence = itertools.count()

    # -- what the bot did --------------------------------------------------------------------------

    def calls(self, to_number: str | None = None) -> list[dict[str, Any]]:
        """Created calls (copies), oldest first, optionally only those to ``to_number``."""
        with self._state_lock:
            return [copy.deepcopy(c) for c in self._calls.values() if to_number in (None, c["to_number"])]

    def call(self, call_id: str) -> dict[str, Any] | None:
        with self._state_lock:
            found = self._calls.get(call_id)
            return copy.deepcopy(found) if found is not None else None

    def calls_for_contact(self, contact_id: str, key: str = "ghl_contact_id") -> list[dict[str, Any]]:
        """Calls whose ``metadata[key]`` is ``contact_id``."""
        return [c for c in self.calls() if (c.get("metadata") or {}).get(key) == contact_id]

    def finish_call(
        self,
        call_id: str,
        *,
        disconnection_reason: str = "user_hangup",
        duration_ms: int = 121_000,
        transcript: str | None = None,
        start_timestamp: int | None = None,
        **analysis: Any,
    ) -> list[dict[str, Any]]:
        """End a created call and return its webhook events (``call_started`` only if it connected,
        then ``call_ended`` and ``call_analyzed``; ``analysis`` goes to ``webhooks.call_analyzed``).
        ``start_timestamp`` (epoch ms) defaults to the call's creation time.
        """
        with self._state_lock:
            stored = self._calls[call_id]
            created = self._created.get(call_id)
            finished = webhooks.retell_call(
                call_id,
                from_number=stored["from_number"],
                to_number=stored["to_number"],
                agent_id=stored["agent_id"],
                metadata=stored.get("metadata"),
                dynamic_variables=stored.get("retell_llm_dynamic_variables"),
                start_timestamp=start_timestamp if start_timestamp is not None else (
                    created[0] if created is not None else None),
                duration_ms=0 if disconnection_reason.startswith("dial_") else duration_ms,
                disconnection_reason=disconnection_reason,
            )
            if transcript is not None and finished["transcript"]:
                finished["transcript"] = transcript
            stored.update({k: v for k, v in finished.items() if k not in ("metadata",)})
            events = webhooks.retell_call_events(finished, **analysis)
            if any(e["event"] == "call_analyzed" for e in events):
                stored["call_analysis"] = events[-1]["call"]["call_analysis"]
            return events

    # -- HTTP --------------------------------------------------------------------------------------

    async def handle(self, request: Request, record: RecordedRequest) -> Response:
        method, path = record.method, record.path
        is_create = method == "POST" and path.rstrip("/") == "/v2/create-phone-call"
        is_list = method == "POST" and path.rstrip("/") == "/v2/list-calls" and self.list_calls_enabled
        get_match = _GET_CALL.match(path) if method == "GET" else None
        if not is_create and not is_list and get_match is None:
            return _error(404, f"Cannot {method} {path}")
        header = record.header("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.api_key:
            return _error(401)
        fault = self.take_fault(method, path)
        record.fault = fault
        if fault is not None and fault.status is not None:
            return self._fault_response(fault)
        if get_match is not None:
            found = self.call(get_match.group("id"))
            return JSONResponse(found) if found is not None else _error(404, "Call not found.")
        if is_list:
            return self._list(record)
        return self._create(record)

    def _fault_response(self, fault: Fault) -> Response:
        status = fault.status or 500
        response = (JSONResponse(fault.body, status_code=status) if fault.body is not None
                    else _error(status))
        if fault.retry_after is not None:
            response.headers["Retry-After"] = f"{fault.retry_after:g}"
        return response

    def _create(self, record: RecordedRequest) -> Response:
        body = record.json
        if not isinstance(body, dict):
            return _error(400)
        for key in ("from_number", "to_number"):
            value = body.get(key)
            if not isinstance(value, str) or not _E164.match(value):
                return _error(400, f"Invalid request format: {key} must be an E.164 phone number.")
        variables = body.get("retell_llm_dynamic_variables")
        if variables is not None and (
            not isinstance(variables, Mapping) or not all(isinstance(v, str) for v in variables.values())
        ):
            return _error(400, "Invalid request format: retell_llm_dynamic_variables values must be strings.")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            return _error(400, "Invalid request format: metadata must be an object.")
        if self.payment_required:
            return _error(402)
        if self.numbers is not None and body["from_number"] not in self.numbers:
            return _error(422, "Cannot find requested asset under given api key: from_number.")
        agent_id = body.get("override_agent_id") or self.default_agent_id
        if self.agents is not None and agent_id not in self.agents:
            return _error(422, "Cannot find requested asset under given api key: agent.")
        call: dict[str, Any] = {
            "call_id": self.new_id(32),
            "call_type": "phone_call",
            "agent_id": agent_id,
            "agent_version": 1,
            "call_status": "registered",
            "direction": "outbound",
            "from_number": body["from_number"],
            "to_number": body["to_number"],
        }
        if metadata is not None:
            call["metadata"] = copy.deepcopy(metadata)
        if variables:
            call["retell_llm_dynamic_variables"] = dict(variables)
        with self._state_lock:
            self._calls[call["call_id"]] = copy.deepcopy(call)
            self._created[call["call_id"]] = (int(self._now().timestamp() * 1000), next(self._sequence))
        return JSONResponse(call, status_code=201)

    def _list(self, record: RecordedRequest) -> Response:
        body = record.json if record.body else {}
        if not isinstance(body, dict):
            return _error(400)
        limit = body.get("limit", 50)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            return _error(400, "Invalid request format: limit must be an integer between 1 and 1000.")
        order = body.get("sort_order", "descending")
        if order not in ("ascending", "descending"):
            return _error(400, "Invalid request format: sort_order must be ascending or descending.")
        criteria = body.get("filter_criteria") or {}
        if not isinstance(criteria, dict):
            return _error(400, "Invalid request format: filter_criteria must be an object.")
        filters = {key: criteria[key] for key in _LIST_FILTERS if key in criteria}
        for key, values in filters.items():
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                return _error(400, f"Invalid request format: filter_criteria.{key} must be a list of "
                                   "strings.")
        with self._state_lock:
            ordered = sorted(self._calls, key=lambda call_id: self._created.get(call_id, (0, -1)),
                             reverse=order == "descending")
            cursor = body.get("pagination_key")
            if cursor is not None:
                if cursor not in self._created:
                    return _error(400, "Invalid request format: pagination_key is not a known call id.")
                ordered = ordered[ordered.index(cursor) + 1:]
            calls = [copy.deepcopy(self._calls[call_id]) for call_id in ordered]
        calls = [c for c in calls if all(c.get(key) in values for key, values in filters.items())]
        return JSONResponse(calls[:limit])
