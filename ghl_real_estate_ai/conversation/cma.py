"""Comparable-sales data for the CMA: the lead's property (``Subject``), closed sales (``Sale``), the value
(``Valuation``) with its plain-data form for graph state, the bundled synthetic sales (``read_sales``,
``load_sales``: ``data/sales.csv``), property-type normalisation, finding a street address in a lead's
message (``find_address``), a subject from a contact (``subject_from_contact``), and small helpers
(``haversine_miles``, ``months_before``, ``round_to_thousand``). Pure apart from reading a sales CSV.

The estimate itself is ``appraisal.appraise``; where comparable sales come from (the bundled data, the
Redis store, an MLS's RESO Web API) is ``ghl_real_estate_ai.comps``.
"""

from __future__ import annotations

import calendar
import csv
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TextIO

PropertyType = Literal["single_family", "condo", "townhouse"]
PROPERTY_TYPES: tuple[PropertyType, ...] = ("single_family", "condo", "townhouse")
_TYPE_ALIASES: dict[str, PropertyType] = {
    "single_family": "single_family", "single family": "single_family", "sfh": "single_family",
    "sfr": "single_family", "house": "single_family", "single-family": "single_family",
    "detached": "single_family", "condo": "condo", "condominium": "condo", "apartment": "condo",
    "flat": "condo", "townhouse": "townhouse", "townhome": "townhouse", "town house": "townhouse",
    "row house": "townhouse",
}
EARTH_RADIUS_MILES = 3958.7613


class NoComparablesError(ValueError):
    """No comparable sale was found, so no estimate can be made. The message says what was searched."""


# Both forms of a RESO lookup ("Single Family Residence" / "SingleFamilyResidence") and the words MLS
# exports use, compared with everything but letters and digits removed.
_SUBTYPE_WORDS: dict[str, PropertyType] = {
    "singlefamilyresidence": "single_family", "singlefamily": "single_family", "sfr": "single_family",
    "sfh": "single_family", "sf": "single_family", "house": "single_family", "detached": "single_family",
    "singlefamilydetached": "single_family", "residential": "single_family",
    "condominium": "condo", "condo": "condo", "apartment": "condo", "flat": "condo",
    "townhouse": "townhouse", "townhome": "townhouse", "rowhouse": "townhouse",
    "singlefamilyattached": "townhouse",
}


def normalize_property_type(value: str | None) -> PropertyType:
    """``"Townhome"`` -> ``"townhouse"``; unknown or empty values mean a single-family house."""
    key = re.sub(r"[\s_\-]+", " ", (value or "").strip().lower())
    known = _TYPE_ALIASES.get(key, _TYPE_ALIASES.get(key.replace(" ", "_")))
    return known or property_type_of(value) or "single_family"


def property_type_of(value: str | None) -> PropertyType | None:
    """The property type a RESO ``PropertySubType`` (either lookup form) or an export's word names, or
    ``None`` for one the CMA does not value (duplex, land, manufactured home...)."""
    return _SUBTYPE_WORDS.get(re.sub(r"[^a-z0-9]+", "", (value or "").lower()))


@dataclass(frozen=True)
class Sale:
    """One closed sale from the comparable-sales data."""

    address: str
    city: str
    state: str
    zip: str
    lat: float
    lon: float
    beds: int
    baths: float
    sqft: int
    price: int
    sold_on: date
    property_type: PropertyType
    year_built: int | None = None
    key: str = ""  # the listing's key (RESO ListingKey, MLS number) when the source has one

    @property
    def price_per_sqft(self) -> float:
        return self.price / self.sqft

    def to_state(self) -> dict[str, Any]:
        """Plain data for graph state (the date as ISO)."""
        return {
            "key": self.key,
            "year_built": self.year_built,
            "address": self.address,
            "city": self.city,
            "state": self.state,
            "zip": self.zip,
            "lat": self.lat,
            "lon": self.lon,
            "beds": self.beds,
            "baths": self.baths,
            "sqft": self.sqft,
            "price": self.price,
            "sold_on": self.sold_on.isoformat(),
            "property_type": self.property_type,
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Sale:
        return cls(
            address=str(data["address"]),
            city=str(data["city"]),
            state=str(data["state"]),
            zip=str(data["zip"]),
            lat=float(data["lat"]),
            lon=float(data["lon"]),
            beds=int(data["beds"]),
            baths=float(data["baths"]),
            sqft=int(data["sqft"]),
            price=int(data["price"]),
            sold_on=date.fromisoformat(str(data["sold_on"])),
            property_type=normalize_property_type(str(data["property_type"])),
            year_built=_number(data.get("year_built"), int),
            key=str(data.get("key") or ""),
        )


@dataclass(frozen=True)
class Subject:
    """The lead's property, as far as known: a GHL contact usually gives only address, city, state, zip."""

    address: str
    city: str = ""
    state: str = ""
    zip: str = ""
    lat: float | None = None
    lon: float | None = None
    beds: int | None = None
    baths: float | None = None
    sqft: int | None = None
    property_type: PropertyType = "single_family"
    year_built: int | None = None

    @property
    def has_coordinates(self) -> bool:
        return self.lat is not None and self.lon is not None

    def to_state(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "city": self.city,
            "state": self.state,
            "zip": self.zip,
            "lat": self.lat,
            "lon": self.lon,
            "beds": self.beds,
            "baths": self.baths,
            "sqft": self.sqft,
            "property_type": self.property_type,
            "year_built": self.year_built,
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Subject:
        return cls(
            address=str(data.get("address") or ""),
            city=str(data.get("city") or ""),
            state=str(data.get("state") or ""),
            zip=str(data.get("zip") or ""),
            lat=_number(data.get("lat"), float),
            lon=_number(data.get("lon"), float),
            beds=_number(data.get("beds"), int),
            baths=_number(data.get("baths"), float),
            sqft=_number(data.get("sqft"), int),
            property_type=normalize_property_type(data.get("property_type")),
            year_built=_number(data.get("year_built"), int),
        )


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    """``value`` as ``kind`` ("1,850" -> 1850), or ``None`` when it is missing or not a positive number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(str(value).replace(",", "").replace("$", "").strip())
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if kind is int:
        return round(number) if number > 0 else None
    return number


def subject_from_contact(contact: Mapping[str, Any]) -> Subject:
    """The lead's property from a contact snapshot in graph state (``Contact.to_state()``): ``address``,
    ``city``, ``state``, ``postal_code``, plus ``sqft``, ``beds``, ``baths``, ``property_type``, ``lat`` and
    ``lon`` when present (GHL keys such as ``address1``/``postalCode`` are accepted too). Never raises: what
    is missing stays unknown and the comps source and ``appraisal.appraise`` decide what they can do
    with it."""
    zip_code = contact.get("postal_code") or contact.get("postalCode") or contact.get("zip") or ""
    zip_code = str(zip_code).strip()
    lat = _number(contact.get("lat"), float)
    lon = _number(contact.get("lon"), float)
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        lat = lon = None
    return Subject(
        address=str(contact.get("address") or contact.get("address1") or "").strip(),
        city=str(contact.get("city") or "").strip(),
        state=str(contact.get("state") or "").strip(),
        zip=zip_code[:5],
        lat=lat,
        lon=lon,
        beds=_number(contact.get("beds"), int),
        baths=_number(contact.get("baths"), float),
        sqft=_number(contact.get("sqft"), int),
        property_type=normalize_property_type(contact.get("property_type")),
    )


_STREET_SUFFIX = (
    r"(?:St|Street|Ave|Avenue|Rd|Road|Blvd|Boulevard|Dr|Drive|Ln|Lane|Ct|Court|Way|Pl|Place|Ter|Terrace|Cir|"
    r"Circle|Pkwy|Parkway|Hwy|Highway|Trl|Trail|Loop|Sq|Square|Row|Run|Pass|Path|Xing|Crossing)"
)
_ADDRESS = re.compile(
    r"\b(?P<street>\d{1,6}[A-Za-z]?\s+(?:[NSEW]\.?\s+|(?:North|South|East|West)\s+)?"
    r"(?:[A-Za-z0-9'.-]+\s+){0,4}?" + _STREET_SUFFIX + r"\b\.?(?:\s+[NSEW]{1,2}\b)?"
    r"(?:\s*,?\s*(?:Apt|Unit|Ste|Suite|#)\s*[\w-]+)?)"
    r"(?:\s*,\s*(?P<city>[A-Za-z][A-Za-z .'-]{1,40}?))?"
    r"(?:\s*,?\s+(?P<state>[A-Z]{2}))?"
    r"(?:\s*,?\s*(?P<zip>\d{5})(?:-\d{4})?)?"
    r"(?=\s*[.!?]?\s*$|\s*[.!?,;]\s|\s+(?:and|please|thanks)\b)",
    re.IGNORECASE,
)


def find_address(text: str) -> dict[str, str] | None:
    """A street address a lead wrote ("It's 55 Elm St, Denver, CO 80205"): ``address`` and, when given,
    ``city``, ``state``, ``postal_code``; None when the text holds none."""
    match = _ADDRESS.search(text or "")
    if match is None:
        return None
    found = {"address": re.sub(r"\s+", " ", match["street"]).strip().rstrip(".")}
    if match["city"]:
        found["city"] = match["city"].strip()
    if match["state"]:
        found["state"] = match["state"].upper()
    if match["zip"]:
        found["postal_code"] = match["zip"]
    return found


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

CSV_FIELDS = (
    "address", "city", "state", "zip", "lat", "lon", "beds", "baths", "sqft", "price", "sold_on",
    "property_type",
)


def read_sales(stream: TextIO) -> list[Sale]:
    """Parse comparable-sales CSV (header ``CSV_FIELDS``). Raises ``ValueError`` naming the bad line."""
    reader = csv.DictReader(stream)
    missing = [name for name in CSV_FIELDS if name not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f"sales CSV is missing the columns {', '.join(missing)}")
    sales = []
    for row in reader:
        try:
            sale = Sale(
                address=row["address"].strip(),
                city=row["city"].strip(),
                state=row["state"].strip(),
                zip=row["zip"].strip(),
                lat=float(row["lat"]),
                lon=float(row["lon"]),
                beds=int(row["beds"]),
                baths=float(row["baths"]),
                sqft=int(row["sqft"]),
                price=int(row["price"]),
                sold_on=date.fromisoformat(row["sold_on"]),
                property_type=normalize_property_type(row["property_type"]),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sales CSV line {reader.line_num}: {exc}") from exc
        if sale.sqft <= 0 or sale.price <= 0:
            raise ValueError(f"sales CSV line {reader.line_num}: sqft and price must be positive")
        sales.append(sale)
    return sales


def load_sales(path: str | Path | None = None) -> list[Sale]:
    """Sales from ``path``, or from the data set bundled with the package (``data/sales.csv``)."""
    if path is not None:
        with open(path, encoding="utf-8", newline="") as stream:
            return read_sales(stream)
    bundled = resources.files("ghl_real_estate_ai").joinpath("data", "sales.csv")
    return read_sales(io.StringIO(bundled.read_text(encoding="utf-8"), newline=""))


# --------------------------------------------------------------------------------------------------
# Geometry, dates and names (used by ``appraisal`` and the comps sources)
# --------------------------------------------------------------------------------------------------


def haversine_miles(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in miles."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_MILES * math.asin(min(1.0, math.sqrt(a)))


def months_before(day: date, months: int) -> date:
    """The same day ``months`` calendar months earlier (clamped to the month's last day)."""
    year, month_index = divmod(day.year * 12 + day.month - 1 - months, 12)
    month = month_index + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _key(text: str) -> str:
    """A name for loose comparison ("St. Louis" -> "st louis"): lower case, other runs as one space."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


# --------------------------------------------------------------------------------------------------
# The value
# --------------------------------------------------------------------------------------------------


def round_to_thousand(amount: float) -> int:
    """Round half-up to the nearest $1,000 (``round`` would round half to even)."""
    return int((Decimal(repr(amount)) / 1000).to_integral_value(ROUND_HALF_UP)) * 1000


@dataclass(frozen=True)
class Valuation:
    """A value estimate with its range and the sales behind it.

    ``method`` is ``"price_per_sqft"`` when the subject's size is known, else ``"median_price"``.
    """

    value: int
    low: int
    high: int
    price_per_sqft_median: float
    comps: list[Sale] = field(default_factory=list)
    subject: Subject = field(default_factory=lambda: Subject(address=""))
    as_of: date = date(1970, 1, 1)
    method: Literal["price_per_sqft", "median_price"] = "price_per_sqft"
    confidence: str = ""  # "high", "medium" or "low" (see ``appraisal``); "" when not given
    trend_per_month: float = 0.0  # the area's monthly price trend the comps were adjusted by

    def to_state(self) -> dict[str, Any]:
        """Plain data for LangGraph state: str, int, float, lists and dicts only; dates as ISO strings."""
        return {
            "confidence": self.confidence,
            "trend_per_month": self.trend_per_month,
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "price_per_sqft_median": round(self.price_per_sqft_median, 2),
            "method": self.method,
            "as_of": self.as_of.isoformat(),
            "subject": self.subject.to_state(),
            "comps": [sale.to_state() for sale in self.comps],
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Valuation:
        """The inverse of ``to_state`` (for nodes that render a stored valuation)."""
        method: Literal["price_per_sqft", "median_price"] = (
            "median_price" if data.get("method") == "median_price" else "price_per_sqft"
        )
        return cls(
            value=int(data["value"]),
            low=int(data["low"]),
            high=int(data["high"]),
            price_per_sqft_median=float(data["price_per_sqft_median"]),
            comps=[Sale.from_state(c) for c in data.get("comps", [])],
            subject=Subject.from_state(data.get("subject", {})),
            as_of=date.fromisoformat(str(data["as_of"])),
            method=method,
            confidence=str(data.get("confidence") or ""),
            trend_per_month=float(data.get("trend_per_month") or 0.0),
        )

