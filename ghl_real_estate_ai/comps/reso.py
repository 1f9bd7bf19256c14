"""Closed sales from an MLS's RESO Web API (OData v4): ``ResoClient`` (auth, paging, rate limits) and
``ResoCompsProvider`` (the area query, lookups normalised, a day's cache in Redis).

Auth: a static bearer token (Bridge, Spark, MLS Grid) or OAuth2 client credentials (Trestle, generic
RESO servers): the token is fetched from ``token_url`` (``grant_type=client_credentials``, ``scope``),
kept until a minute before ``expires_in`` runs out, and fetched again then or when the server answers
401 (once per request).

Query (``reference/comps_and_cma.md`` §1.4): ``StandardStatus eq 'Closed' and PropertyType eq
'Residential' and CloseDate ge <since> and CloseDate lt <as_of>`` plus a Latitude/Longitude bounding box
around the subject (portable: plain numeric comparisons), or ``PostalCode eq '<zip>'`` (``City eq`` when
there is no zip) when it has no coordinates; ``$select`` the Data Dictionary fields the CMA uses,
``$top`` the page size (a server's cap is respected: it pages with ``@odata.nextLink``, which is followed
until absent). The subtype is filtered locally after normalising both lookup forms ('Single Family
Residence' / 'SingleFamilyResidence'), and the distance is computed locally.

Rate limits: requests are spaced by ``1 / requests_per_second`` (MLS Grid allows 2 a second); a 429 or
5xx is retried with backoff, ``Retry-After`` honoured (``integrations._http``). Errors become
``IntegrationError``s of service "RESO" (transient: retry later; permanent: wrong token or query).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

import httpx
from redis.asyncio import Redis

from ghl_real_estate_ai.conversation.appraisal import AREA_MONTHS, AREA_RADIUS_MILES, in_area
from ghl_real_estate_ai.conversation.cma import Sale, Subject, months_before, property_type_of
from ghl_real_estate_ai.errors import (
    AuthenticationError,
    PermanentIntegrationError,
    TransientIntegrationError,
)
from ghl_real_estate_ai.integrations._http import RetryPolicy, Sleep, error_message, send_with_retries

logger = logging.getLogger(__name__)

SERVICE = "RESO"
SELECT = (
    "ListingKey", "ListingId", "UnparsedAddress", "City", "StateOrProvince", "PostalCode", "Latitude",
    "Longitude", "StandardStatus", "CloseDate", "ClosePrice", "LivingArea", "BedroomsTotal",
    "BathroomsTotalInteger", "YearBuilt", "PropertyType", "PropertySubType",
)
MILES_PER_DEGREE_LAT = 69.0
CACHE_SECONDS = 86_400


class ResoClient:
    """One RESO Web API server. ``transport`` lets tests swap the network; ``sleep`` and ``clock`` the
    time (spacing requests, token expiry)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        token_url: str | None = None,
        scope: str = "api",
        page_size: int = 200,
        requests_per_second: float = 2.0,
        timeout: float = 20.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not token and not (client_id and client_secret and token_url):
            raise ValueError("a RESO client needs a token, or a client id, secret and token URL")
        self.base_url = base_url.rstrip("/")
        self._static_token = token
        self._client_id = client_id
        self._client_secret = client_secret
        self._token_url = token_url
        self._scope = scope
        self.page_size = page_size
        self._interval = 1.0 / requests_per_second if requests_per_second > 0 else 0.0
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport)
        self._token: str | None = None
        self._token_expires = 0.0
        self._next_slot = 0.0
        self._lock = asyncio.Lock()
        self.requests = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _pace(self) -> None:
        async with self._lock:
            now = self._clock()
            wait = self._next_slot - now
            self._next_slot = max(now, self._next_slot) + self._interval
        if wait > 0:
            await self._sleep(wait)

    async def _bearer(self, *, refresh: bool = False) -> str:
        if self._static_token:
            return self._static_token
        if not refresh and self._token and self._clock() < self._token_expires:
            return self._token
        assert self._token_url and self._client_id and self._client_secret
        token_url, form = self._token_url, {
            "grant_type": "client_credentials", "client_id": self._client_id,
            "client_secret": self._client_secret, "scope": self._scope,
        }

        async def send() -> httpx.Response:
            await self._pace()
            self.requests += 1
            return await self._http.post(token_url, data=form, headers={"Accept": "application/json"})

        response = await self._send(send, "token", idempotent=True)
        if response.status_code in (400, 401, 403):
            raise AuthenticationError(SERVICE, "token", error_message(response), status=response.status_code)
        self._raise_for_status(response, "token")
        payload = response.json()
        token = payload.get("access_token") if isinstance(payload, dict) else None
        if not token:
            raise AuthenticationError(SERVICE, "token", "the token answer carries no access_token")
        lifetime = float(payload.get("expires_in") or 3600)
        self._token = str(token)
        self._token_expires = self._clock() + max(0.0, lifetime - 60.0)
        return self._token

    async def _send(self, send: Callable[[], Any], operation: str, *, idempotent: bool) -> httpx.Response:
        return await send_with_retries(send, service=SERVICE, operation=operation, policy=self._retry,
                                       idempotent=idempotent, sleep=self._sleep)

    @staticmethod
    def _raise_for_status(response: httpx.Response, operation: str) -> None:
        if response.status_code >= 400:
            raise PermanentIntegrationError(SERVICE, operation, error_message(response),
                                            status=response.status_code)

    async def query(self, resource: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        """Every record of ``resource`` matching ``params`` (``$filter``, ``$select``...), page after page
        by ``@odata.nextLink``."""
        url: str | None = f"{self.base_url}/{resource}"
        query: Mapping[str, str] | None = {**params, "$top": str(self.page_size)}
        records: list[dict[str, Any]] = []
        while url is not None:
            page_url, page_query = url, query
            refreshed = False
            while True:
                token = await self._bearer(refresh=refreshed)

                async def send(page_url: str = page_url, page_query: Any = page_query,
                               token: str = token) -> httpx.Response:
                    await self._pace()
                    self.requests += 1
                    return await self._http.get(page_url, params=page_query, headers={
                        "Authorization": f"Bearer {token}", "Accept": "application/json",
                        "Accept-Encoding": "gzip"})

                response = await self._send(send, resource, idempotent=True)
                if response.status_code == 401 and not refreshed and not self._static_token:
                    refreshed = True  # the token expired early or was revoked: fetch one more
                    continue
                break
            if response.status_code in (401, 403):
                raise AuthenticationError(SERVICE, resource, error_message(response),
                                          status=response.status_code)
            self._raise_for_status(response, resource)
            try:
                payload = response.json()
            except ValueError:
                raise TransientIntegrationError(SERVICE, resource, "the answer is not JSON") from None
            page = payload.get("value") if isinstance(payload, dict) else None
            if not isinstance(page, list):
                raise PermanentIntegrationError(SERVICE, resource, "the answer has no OData value array")
            records.extend(item for item in page if isinstance(item, dict))
            next_link = payload.get("@odata.nextLink")
            url, query = (str(next_link), None) if next_link else (None, None)
        return records


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def area_filter(subject: Subject, *, since: date, as_of: date, radius_miles: float) -> str:
    """The ``$filter`` for the subject's area (see the module docstring)."""
    clauses = [
        "StandardStatus eq 'Closed'",
        "PropertyType eq 'Residential'",
        f"CloseDate ge {since.isoformat()}",
        f"CloseDate lt {as_of.isoformat()}",
    ]
    if subject.lat is not None and subject.lon is not None:
        dlat = radius_miles / MILES_PER_DEGREE_LAT
        dlon = radius_miles / (MILES_PER_DEGREE_LAT * max(0.01, math.cos(math.radians(subject.lat))))
        clauses += [
            f"Latitude ge {subject.lat - dlat:.6f}", f"Latitude le {subject.lat + dlat:.6f}",
            f"Longitude ge {subject.lon - dlon:.6f}", f"Longitude le {subject.lon + dlon:.6f}",
        ]
    elif subject.zip:
        clauses.append(f"PostalCode eq {_literal(subject.zip)}")
    elif subject.city:
        clauses.append(f"City eq {_literal(subject.city)}")
    else:
        raise ValueError("the property has neither coordinates nor a zip code or city")
    return " and ".join(clauses)


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def sale_from_record(record: Mapping[str, Any]) -> Sale | None:
    """A RESO Property record as a ``Sale``; None when it lacks what the CMA needs or is of a type the CMA
    does not value."""
    kind = property_type_of(str(record.get("PropertySubType") or ""))
    price, area = _num(record.get("ClosePrice")), _num(record.get("LivingArea"))
    close = str(record.get("CloseDate") or "")[:10]
    lat, lon = _num(record.get("Latitude")), _num(record.get("Longitude"))
    if kind is None or not price or not area or price <= 0 or area <= 0 or len(close) != 10:
        return None
    try:
        sold_on = date.fromisoformat(close)
    except ValueError:
        return None
    baths = _num(record.get("BathroomsTotalDecimal")) or _num(record.get("BathroomsTotalInteger"))
    year = _num(record.get("YearBuilt"))
    return Sale(
        address=str(record.get("UnparsedAddress") or ""), city=str(record.get("City") or ""),
        state=str(record.get("StateOrProvince") or ""), zip=str(record.get("PostalCode") or "")[:5],
        lat=lat or 0.0, lon=lon or 0.0, beds=round(_num(record.get("BedroomsTotal")) or 0),
        baths=baths or 0.0, sqft=round(area), price=round(price), sold_on=sold_on, property_type=kind,
        year_built=round(year) if year else None,
        key=str(record.get("ListingKey") or record.get("ListingId") or ""),
    )


class ResoCompsProvider:
    """The ``CompsSource`` over a RESO server. An area's sales are cached in Redis for a day (when a
    ``redis`` is given) under a key made of the area (bounding box rounded to 0.01°, or zip/city), the
    window and the radius, so the leads of one street cost one query a day."""

    def __init__(self, client: ResoClient, redis: Redis | None = None, *, prefix: str = "lead-bot:reso",
                 cache_seconds: int = CACHE_SECONDS) -> None:
        self.client = client
        self.redis = redis
        self.prefix = prefix
        self.cache_seconds = cache_seconds

    async def aclose(self) -> None:
        await self.client.aclose()

    @staticmethod
    def _query_area(subject: Subject, radius_miles: float) -> tuple[Subject, float, str]:
        """The area actually queried and cached: around the subject's point rounded to 0.01° (so the
        leads of one neighbourhood share an entry) with the radius grown by the 0.75 mile the rounding
        may move it; or its zip or city."""
        if subject.lat is not None and subject.lon is not None:
            lat, lon = round(subject.lat, 2), round(subject.lon, 2)
            return Subject(subject.address, lat=lat, lon=lon), radius_miles + 0.75, f"pt:{lat:.2f}:{lon:.2f}"
        area = f"zip:{subject.zip}" if subject.zip else f"city:{subject.city.lower()}"
        return subject, radius_miles, area

    async def area_sales(
        self, subject: Subject, *, as_of: date, radius_miles: float = AREA_RADIUS_MILES,
        months: int = AREA_MONTHS,
    ) -> list[Sale]:
        since = months_before(as_of, months)
        where, radius, area = self._query_area(subject, radius_miles)
        key = f"{self.prefix}:area:{area}:{radius:g}:{since}:{as_of}"
        cached = await self.redis.get(key) if self.redis is not None else None
        if cached is not None:
            states = json.loads(cached)
        else:
            params = {
                "$filter": area_filter(where, since=since, as_of=as_of, radius_miles=radius),
                "$select": ",".join(SELECT),
            }
            records = await self.client.query("Property", params)
            states = [s.to_state() for s in (sale_from_record(r) for r in records) if s is not None]
            if self.redis is not None:
                await self.redis.set(key, json.dumps(states), ex=self.cache_seconds)
            logger.info("RESO: %d records, %d usable sales for %s", len(records), len(states), key)
        sales = [Sale.from_state(s) for s in states]
        return [
            s for s in sales
            if s.property_type == subject.property_type and since <= s.sold_on < as_of
            and (subject.lat is None or subject.lon is None or in_area(s, subject, radius_miles))
        ]
