"""Reading an MLS export (CSV) into closed sales: RESO Data Dictionary column names and the common export
variants (``reference/comps_and_cma.md`` §2). Pure: no I/O but the stream it is given.

Headers are compared with everything but letters and digits removed, casefolded (``"Sold Price"``,
``"SOLD PRICE"`` and ``"sold_price"`` are one name; ``#`` reads as "number", so ``"MLS #"`` is
``mlsnumber``). A file is refused whole (``MlsFileError``, one line naming the problem) when a required
column is missing or a value cannot be read; rows that are not closed sales (a status column says
otherwise), rows of a type the CMA does not value (duplex, land...) and rows with an empty required cell
are skipped and counted.

Values: ``$``, ``,`` and units (``sqft``) are ignored in numbers; dates are ``YYYY-MM-DD`` (a timestamp's
date part), ``MM/DD/YYYY``, ``M/D/YY`` or ``October-31-2025``; the byte-order mark is dropped. A bath
total written in Matrix's full.half notation (``2.1`` = two full baths and one half) is read as 2.5 when
the column holds such values and no ``.5``/``.25``/``.75``.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TextIO

from ghl_real_estate_ai.conversation.cma import Sale, property_type_of


class MlsFileError(ValueError):
    """The file cannot be loaded as it is; the message says why in one line."""


def _norm(header: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", header.replace("#", " number ").casefold())


# canonical field -> header names (normalised), best first. The first present wins.
ALIASES: dict[str, tuple[str, ...]] = {
    "price": ("closeprice", "closedprice", "soldprice", "saleprice", "salesprice", "sellingprice", "sp",
              "price"),
    "sold_on": ("closedate", "closeofescrowdate", "coedate", "solddate", "closingdate", "datesold",
                "dateclosed", "saledate"),
    "sqft": ("livingarea", "sqft", "squarefeet", "approxsqft", "sqftlivarea", "totalfinishedarea",
             "totflarea", "abovegradefinishedarea", "totalsqft", "buildingareatotal", "livingsqft"),
    "beds": ("bedroomstotal", "beds", "numberbedrooms", "numberbeds", "bedrooms", "totbr", "br"),
    "baths": ("bathroomstotaldecimal", "bathroomstotalinteger", "baths", "totalbathrooms", "totalbaths",
              "bathstotal", "totbaths", "ba"),
    "baths_full": ("bathroomsfull", "fullbathrooms", "numberfbaths", "fullbaths"),
    "baths_half": ("bathroomshalf", "halfbathrooms", "numberhbaths", "halfbaths"),
    "year_built": ("yearbuilt", "yrblt", "yrbuilt"),
    "lat": ("latitude", "geolat", "lat"),
    "lon": ("longitude", "geolon", "lon", "lng"),
    "zip": ("postalcode", "zip", "zipcode", "ziporpostalcode"),
    "city": ("city", "postalcity"),
    "state": ("stateorprovince", "state", "stateprovince"),
    "address": ("unparsedaddress", "address", "fulladdress", "streetaddress"),
    "street_number": ("streetnumber", "housenumber"),
    "street_name": ("streetname",),
    "status": ("standardstatus", "status", "listingstatus", "mlsstatus", "saletype"),
    "subtype": ("propertysubtype", "dwellingtype", "typeofproperty", "typedwel",
                "proptype", "propertytype"),
    "key": ("listingkey", "listingid", "mlsnumber", "mlnumber", "mlsnumberlink", "listnumber"),
}
REQUIRED = ("price", "sold_on", "sqft", "subtype")
SHOWN = {"price": "ClosePrice", "sold_on": "CloseDate", "sqft": "LivingArea", "subtype": "PropertySubType",
         "lat": "Latitude", "lon": "Longitude", "zip": "PostalCode"}
CLOSED = frozenset({"closed", "c", "closd", "cs", "s", "sold", "pastsale"})
_MONTHS = {name: number for number, name in enumerate(
    ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
     "november", "december"), start=1)}


@dataclass
class ImportedFile:
    """What a file held: the sales to load and, by reason, the rows skipped."""

    sales: list[Sale]
    skipped: Counter[str] = field(default_factory=Counter)
    columns: dict[str, str] = field(default_factory=dict)  # canonical field -> the file's header


def map_columns(headers: Sequence[str]) -> dict[str, str]:
    """Canonical field -> header for ``headers``. Raises ``MlsFileError`` naming a missing column."""
    by_norm: dict[str, str] = {}
    for header in headers:
        by_norm.setdefault(_norm(header or ""), header)
    mapping = {}
    for name, aliases in ALIASES.items():
        for alias in aliases:
            if alias in by_norm:
                mapping[name] = by_norm[alias]
                break
    if mapping.get("subtype") == mapping.get("status"):  # Redfin's SALE TYPE is a status, not a type
        mapping.pop("subtype", None)
    for name in REQUIRED:
        if name not in mapping:
            raise MlsFileError(f"no {SHOWN[name]} column (or a known export name for it) in the header")
    if not ({"lat", "lon"} <= mapping.keys()) and "zip" not in mapping:
        raise MlsFileError("no Latitude/Longitude columns and no PostalCode column: sales could not be "
                           "found by area")
    if "baths" not in mapping and "baths_full" not in mapping:
        mapping.pop("baths_half", None)
    return mapping


def number(text: str) -> float | None:
    """``"$1,234,000"`` -> 1234000.0, ``"1,850 sqft"`` -> 1850.0, ``""`` -> None. Raises ``ValueError``."""
    cleaned = re.sub(r"(?i)[$,\s]|sq\.?\s*ft\.?|sqft|sf", "", text or "")
    return float(cleaned) if cleaned else None


def parse_date(text: str) -> date | None:
    """A close date in the forms the module docstring lists; None when empty. Raises ``ValueError``."""
    text = (text or "").strip()
    if not text:
        return None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ].*)?", text):
        return date.fromisoformat(text[:10])
    match = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})", text)
    if match:
        month, day, year = (int(g) for g in match.groups())
        return date(year + 2000 if year < 100 else year, month, day)
    match = re.fullmatch(r"([A-Za-z]+)[- ](\d{1,2}),?[- ](\d{4})", text)
    if match and match.group(1).lower() in _MONTHS:
        return date(int(match.group(3)), _MONTHS[match.group(1).lower()], int(match.group(2)))
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T.*", text):
        return datetime.fromisoformat(text).date()
    raise ValueError(f"unreadable date {text!r}")


def _full_half_notation(values: Iterable[str]) -> bool:
    fractions = set()
    for value in values:
        match = re.fullmatch(r"\s*\d+\.(\d+)\s*", value or "")
        if match:
            fractions.add(match.group(1).rstrip("0") or "0")
    return bool(fractions & {"1", "2", "3"}) and not (fractions & {"5", "25", "75"})


def _row_key(row: Mapping[str, str], mapping: Mapping[str, str], sale: Sale) -> str:
    if "key" in mapping and (row.get(mapping["key"]) or "").strip():
        return "mls:" + row[mapping["key"]].strip()
    digest = hashlib.sha256(
        f"{sale.address}|{sale.zip}|{sale.lat:.6f}|{sale.lon:.6f}|{sale.sold_on}|{sale.price}".encode()
    ).hexdigest()
    return "h:" + digest[:20]


def read_mls_csv(stream: TextIO) -> ImportedFile:
    """Every closed sale of an MLS export. Raises ``MlsFileError`` (nothing is returned) when the file
    cannot be mapped or a value cannot be read (the message names the line and column)."""
    lines = stream.read().lstrip("\ufeff").splitlines()
    # Some exports (Redfin) put a disclaimer line before the header: the header is the first line with a
    # close-price column.
    start = 0
    for position, text in enumerate(lines[:5]):
        cells = next(csv.reader([text]), [])
        if any(_norm(c) in ALIASES["price"] for c in cells) and len(cells) > 2:
            start = position
            break
    reader = csv.DictReader(lines[start:])
    headers = reader.fieldnames or []
    if not headers:
        raise MlsFileError("the file is empty")
    mapping = map_columns(headers)
    rows = list(reader)
    full_half = "baths" in mapping and _full_half_notation(r.get(mapping["baths"]) or "" for r in rows)
    result = ImportedFile([], Counter(), dict(mapping))
    seen: set[str] = set()
    for offset, row in enumerate(rows):
        line = start + offset + 2

        def cell(name: str, row: Mapping[str, str] = row) -> str:
            column = mapping.get(name)
            return (row.get(column) or "").strip() if column else ""

        status = _norm(cell("status"))
        if status and status not in CLOSED:
            result.skipped["not a closed sale"] += 1
            continue
        kind = property_type_of(cell("subtype"))
        if kind is None:
            result.skipped["a property type the CMA does not value"] += 1
            continue
        column = ""
        try:
            column = mapping["price"]
            price = number(cell("price"))
            column = mapping["sold_on"]
            sold_on = parse_date(cell("sold_on"))
            column = mapping["sqft"]
            sqft = number(cell("sqft"))
            column = mapping.get("beds", "")
            beds = number(cell("beds"))
            column = mapping.get("baths") or mapping.get("baths_full", "")
            baths = number(cell("baths") or cell("baths_full"))
            if baths is not None and full_half:
                whole = int(baths)
                baths = whole + 0.5 * round((baths - whole) * 10)
            elif baths is not None and "baths" not in mapping:
                column = mapping.get("baths_half", "")
                baths += 0.5 * (number(cell("baths_half")) or 0)
            column = mapping.get("year_built", "")
            year_built = number(cell("year_built"))
            column = mapping.get("lat", "")
            lat = number(cell("lat"))
            column = mapping.get("lon", "")
            lon = number(cell("lon"))
        except ValueError as exc:
            raise MlsFileError(f"line {line}, column {column!r}: {exc}") from None
        if price is None or sold_on is None or sqft is None:
            result.skipped["an empty price, close date or living area"] += 1
            continue
        if price <= 0 or sqft <= 0:
            raise MlsFileError(f"line {line}: price and living area must be positive")
        has_point = lat is not None and lon is not None and (lat, lon) != (0.0, 0.0)
        if has_point and not (-90 <= lat <= 90 and -180 <= lon <= 180):  # type: ignore[operator]
            raise MlsFileError(f"line {line}: latitude/longitude {lat}, {lon} out of range")
        zip_code = cell("zip")[:5]
        if not has_point and not zip_code:
            result.skipped["no coordinates and no postal code"] += 1
            continue
        address = cell("address") or " ".join(p for p in (cell("street_number"), cell("street_name")) if p)
        sale = Sale(
            address=address, city=cell("city"), state=cell("state")[:2].upper() if cell("state") else "",
            zip=zip_code, lat=float(lat) if has_point else 0.0, lon=float(lon) if has_point else 0.0,  # type: ignore[arg-type]
            beds=round(beds or 0), baths=float(baths or 0.0), sqft=round(sqft), price=round(price),
            sold_on=sold_on, property_type=kind, year_built=round(year_built) if year_built else None,
        )
        key = _row_key(row, mapping, sale)
        if key in seen:
            result.skipped["a repeated row"] += 1
            continue
        seen.add(key)
        result.sales.append(Sale(**{**sale.__dict__, "key": key}))
    if not result.sales:
        reasons = ", ".join(f"{n} {why}" for why, n in result.skipped.items()) or "no data rows"
        raise MlsFileError(f"no closed sale to load ({reasons})")
    return result
