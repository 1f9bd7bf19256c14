"""``FakeResoServer``: a local RESO Web API (OData v4 JSON) for closed sales, on a real loopback port.

Serves ``GET /odata/Property`` and ``POST /token`` (OAuth2 client credentials,
``application/x-www-form-urlencoded``), and checks what a RESO server checks:

* ``Authorization: Bearer``: the static ``token``, or one the token endpoint issued and that has not
  expired (``token_lifetime`` seconds on the fake's ``clock``); otherwise 401.
* ``$filter``: the subset a comps query needs: clauses joined by ``and``, each ``Field op literal`` with
  ``eq ne gt ge lt le``, literals ``'text'`` (``''`` escapes a quote), numbers and unquoted dates
  (``2026-01-31``). Anything else is 400, as is an unknown field (names are case-sensitive).
* ``$select`` (unknown field: 400), ``$top`` capped at ``max_top`` (the server's page size; Bridge 200,
  Trestle 1000), ``$skip``; a page that is not the last carries an absolute ``@odata.nextLink``.
* ``rate_limit`` requests per ``rate_window`` seconds (all endpoints): beyond, 429 with ``Retry-After``.
* ``lookups``: ``"display"`` answers ``PropertySubType`` as 'Single Family Residence' (DD 2.0 string
  lookups), ``"enum"`` as 'SingleFamilyResidence' (legacy enum servers); filters accept the form served.

Faults (``script_faults``) come from ``FakeHTTPServer``. Records are plain dicts of DD fields
(``add_property``).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ghl_real_estate_ai.testing.fake_http import FakeHTTPServer, RecordedRequest

DEFAULT_TOKEN = "reso-test-server-token"
DEFAULT_CLIENT_ID = "reso-test-client"
DEFAULT_CLIENT_SECRET = "reso-test-secret"
FIELDS = frozenset({
    "ListingKey", "ListingId", "UnparsedAddress", "City", "StateOrProvince", "PostalCode", "Latitude",
    "Longitude", "StandardStatus", "CloseDate", "ClosePrice", "ListPrice", "LivingArea", "BedroomsTotal",
    "BathroomsTotalInteger", "BathroomsTotalDecimal", "YearBuilt", "PropertyType", "PropertySubType",
    "ModificationTimestamp",
})
_ENUM = {"Single Family Residence": "SingleFamilyResidence", "Manufactured Home": "ManufacturedHome"}
_CLAUSE = re.compile(
    r"^(?P<field>[A-Za-z][A-Za-z0-9_]*) (?P<op>eq|ne|gt|ge|lt|le) "
    r"(?P<value>'(?:[^']|'')*'|-?\d+(?:\.\d+)?|\d{4}-\d{2}-\d{2})$"
)


def _odata_error(status: int, message: str, code: str = "") -> JSONResponse:
    return JSONResponse({"error": {"code": code or str(status), "message": message}}, status_code=status)


class FakeResoServer(FakeHTTPServer):
    service_name = "reso"

    def __init__(
        self,
        *,
        token: str | None = DEFAULT_TOKEN,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        token_lifetime: float = 28_800.0,
        max_top: int = 200,
        lookups: str = "display",
        rate_limit: int | None = None,
        rate_window: float = 1.0,
        clock: Callable[[], float] | None = None,
        **kwargs: Any,
    ) -> None:
        if clock is not None:
            kwargs["clock"] = clock
        super().__init__(**kwargs)
        self.token = token
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.max_top = max_top
        self.lookups = lookups
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.records: list[dict[str, Any]] = []
        self.issued: dict[str, float] = {}  # token -> expiry on the fake's clock
        self._recent: deque[float] = deque()
        self._data_lock = threading.Lock()

    @property
    def service_root(self) -> str:
        return f"{self.base_url}/odata"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    def add_property(self, **fields: Any) -> dict[str, Any]:
        """Add one Property record (DD field names). Defaults make it a closed residential sale."""
        record = {"StandardStatus": "Closed", "PropertyType": "Residential",
                  "PropertySubType": "Single Family Residence", **fields}
        record.setdefault("ListingKey", f"LK{len(self.records) + 1:06d}")
        with self._data_lock:
            self.records.append(record)
        return record

    def expire_tokens(self) -> None:
        """Revoke every issued token (the next request with one gets 401)."""
        with self._data_lock:
            self.issued.clear()

    def _served(self, record: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(record)
        subtype = out.get("PropertySubType")
        if self.lookups == "enum" and isinstance(subtype, str):
            out["PropertySubType"] = _ENUM.get(subtype, subtype.replace(" ", ""))
        return out

    def _rate_limited(self) -> bool:
        if self.rate_limit is None:
            return False
        now = self.clock()
        with self._data_lock:
            while self._recent and self._recent[0] <= now - self.rate_window:
                self._recent.popleft()
            if len(self._recent) >= self.rate_limit:
                return True
            self._recent.append(now)
        return False

    async def handle(self, request: Request, record: RecordedRequest) -> Response:
        fault = self.take_fault(request.method, request.url.path)
        record.fault = fault
        if fault is not None and fault.status is not None:
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
            return JSONResponse(fault.body or {"error": {"code": str(fault.status), "message": "fault"}},
                                status_code=fault.status, headers=headers)
        if self._rate_limited():
            return JSONResponse({"error": {"code": "429", "message": "Too Many Requests"}}, status_code=429,
                                headers={"Retry-After": f"{self.rate_window:g}"})
        if request.method == "POST" and request.url.path == "/token":
            return self._token(record)
        if request.method == "GET" and request.url.path in ("/odata/Property", "/odata/Property/"):
            if not self._authorized(record.header("authorization")):
                return _odata_error(401, "Unauthorized: invalid or expired token")
            return self._property(request)
        return _odata_error(404, f"no resource at {request.url.path}")

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        token = header[len("Bearer "):]
        if self.token is not None and token == self.token:
            return True
        with self._data_lock:
            expiry = self.issued.get(token)
        return expiry is not None and self.clock() < expiry

    def _token(self, record: RecordedRequest) -> Response:
        form = {k: v[0] for k, v in parse_qs(record.body.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        token = "tok-" + self.new_id(24)
        with self._data_lock:
            self.issued[token] = self.clock() + self.token_lifetime
        return JSONResponse({"access_token": token, "token_type": "Bearer",
                             "expires_in": int(self.token_lifetime), "scope": form.get("scope", "api")})

    def _property(self, request: Request) -> Response:
        params = request.query_params
        try:
            predicates = self._parse_filter(params.get("$filter", ""))
        except ValueError as exc:
            return _odata_error(400, str(exc))
        select = [f for f in params.get("$select", "").split(",") if f]
        unknown = [f for f in select if f not in FIELDS]
        if unknown:
            return _odata_error(400, f"Could not find a property named '{unknown[0]}' on type 'Property'")
        try:
            top = min(int(params.get("$top", "10")), self.max_top)
            skip = int(params.get("$skip", "0"))
        except ValueError:
            return _odata_error(400, "$top and $skip must be integers")
        with self._data_lock:
            served = [self._served(r) for r in self.records]
        matching = [r for r in served if all(p(r) for p in predicates)]
        page = matching[skip:skip + top]
        if select:
            page = [{f: r.get(f) for f in select} for r in page]
        body: dict[str, Any] = {"@odata.context": f"{self.service_root}/$metadata#Property", "value": page}
        if skip + top < len(matching):
            query = {k: v for k, v in params.items() if k != "$skip"}
            query.update({"$top": str(top), "$skip": str(skip + top)})
            body["@odata.nextLink"] = f"{self.service_root}/Property?{urlencode(query)}"
        return JSONResponse(body)

    @staticmethod
    def _parse_filter(text: str) -> list[Callable[[Mapping[str, Any]], bool]]:
        if not text.strip():
            return []
        predicates: list[Callable[[Mapping[str, Any]], bool]] = []
        for clause in text.split(" and "):
            match = _CLAUSE.match(clause.strip())
            if match is None:
                raise ValueError(f"unsupported $filter clause: {clause.strip()!r}")
            name, op, raw = match["field"], match["op"], match["value"]
            if name not in FIELDS:
                raise ValueError(f"Could not find a property named '{name}' on type 'Property'")
            value: Any
            if raw.startswith("'"):
                value = raw[1:-1].replace("''", "'")
            elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
                value = date.fromisoformat(raw)
            else:
                value = float(raw)

            def predicate(r: Mapping[str, Any], name: str = name, op: str = op, value: Any = value) -> bool:
                have = r.get(name)
                if have is None:
                    return False
                if isinstance(value, date):
                    have = date.fromisoformat(str(have)[:10])
                elif isinstance(value, float):
                    have = float(have)
                else:
                    have = str(have)
                return {
                    "eq": have == value, "ne": have != value, "gt": have > value, "ge": have >= value,
                    "lt": have < value, "le": have <= value,
                }[op]

            predicates.append(predicate)
        return predicates
