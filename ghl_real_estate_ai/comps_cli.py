"""The comps commands: ``lead-bot comps import FILE.csv`` and ``lead-bot cma`` (``--batch IN --out OUT``, or
one property by flags).

``comps import`` reads the whole file first (``comps.mls_import``) and writes nothing unless every row can
be read; then one Redis transaction loads it into the store that ``LEAD_BOT_COMPS=store`` queries.

``cma`` values properties with the comps source ``LEAD_BOT_COMPS`` names (demo data by default) and the
estimator the bot uses (``conversation.appraisal``). Batch input uses the import's column names: ``id``,
``Latitude``/``Longitude`` (or ``PostalCode``/``City``), ``LivingArea``, ``BedroomsTotal``,
``BathroomsTotalDecimal`` or ``BathroomsTotalInteger``, ``YearBuilt``, ``PropertySubType`` and ``AsOfDate``
(only sales closed before it count); the output has ``id, estimate, low, high, comps, confidence``, with
``estimate`` empty (and confidence ``none``) when no estimate can be made.

Exit codes: 0 done; 1 ``cma`` for one property found too few comparable sales; 2 bad input or an
unreachable service (one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from ghl_real_estate_ai.comps.mls_import import (
    ALIASES,
    MlsFileError,
    _norm,
    number,
    parse_date,
    read_mls_csv,
)
from ghl_real_estate_ai.config import Settings
from ghl_real_estate_ai.conversation.appraisal import appraise
from ghl_real_estate_ai.conversation.cma import NoComparablesError, Subject, Valuation, property_type_of
from ghl_real_estate_ai.errors import InvalidEventError, LeadBotError

OUT_COLUMNS = ("id", "estimate", "low", "high", "comps", "confidence")


def add_parsers(commands: Any) -> None:
    """Declare ``comps import`` and ``cma`` on the ``lead-bot`` sub-command parser."""
    comps = commands.add_parser("comps", help="manage the comparable-sales store")
    actions = comps.add_subparsers(dest="comps_command", required=True, metavar="ACTION")
    load = actions.add_parser("import",
                              help="load closed sales from an MLS export (CSV) into the comps store")
    load.add_argument("file", type=Path, help="the CSV file (RESO names or common MLS export headers)")

    cma = commands.add_parser("cma", help="estimate property values from comparable sales")
    cma.add_argument("--batch", type=Path, metavar="IN.csv", help="estimate every row of this CSV")
    cma.add_argument("--out", type=Path, metavar="OUT.csv", help="where --batch writes (default: stdout)")
    cma.add_argument("--latitude", type=float)
    cma.add_argument("--longitude", type=float)
    cma.add_argument("--zip", default="", help="postal code (when there are no coordinates)")
    cma.add_argument("--city", default="")
    cma.add_argument("--state", default="")
    cma.add_argument("--address", default="")
    cma.add_argument("--sqft", type=float, help="living area")
    cma.add_argument("--beds", type=float)
    cma.add_argument("--baths", type=float)
    cma.add_argument("--year-built", type=int)
    cma.add_argument("--type", default="Single Family Residence",
                     help="property subtype (default: single family)")
    cma.add_argument("--as-of", default=None, help="value as of this date (YYYY-MM-DD; default today)")


def _err(command: str, text: str) -> None:
    print(f"lead-bot {command}: {text}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def _redis(settings: Settings) -> AsyncIterator[Any]:
    from ghl_real_estate_ai.service import LeadBotService

    async with LeadBotService(settings, role="operator") as service:
        yield service.redis


async def run(args: argparse.Namespace) -> int:
    command = "comps import" if args.command == "comps" else "cma"
    try:
        settings = Settings.from_env()
        if args.command == "comps":
            return await import_file(settings, args.file)
        if args.batch is not None:
            return await batch(settings, args.batch, args.out)
        return await single(settings, args)
    except (LeadBotError, MlsFileError) as exc:
        _err(command, str(exc))
        return 2
    except OSError as exc:
        _err(command, f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        return 2
    except RedisError as exc:
        _err(command, f"Redis error: {exc}")
        return 2


def _read_text(path: Path) -> io.StringIO:
    # A CLI reads its one input file before any await; "utf-8-sig" drops a byte-order mark.
    return io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")


async def import_file(settings: Settings, path: Path) -> int:
    from ghl_real_estate_ai.comps.store import RedisCompsStore

    imported = read_mls_csv(_read_text(path))
    async with _redis(settings) as redis:
        result = await RedisCompsStore(redis).import_sales(imported.sales)
    skipped = "; skipped " + ", ".join(f"{n} ({why})" for why, n in sorted(imported.skipped.items())) \
        if imported.skipped else ""
    print(f"loaded {result.loaded:,} closed sales from {path} ({result.new:,} new, "
          f"{result.changed:,} changed){skipped}", flush=True)
    return 0


@dataclass(frozen=True)
class BatchRow:
    id: str
    subject: Subject
    as_of: date


def read_batch(stream: io.TextIOBase | Any) -> list[BatchRow]:
    """The rows of a batch input file. Raises ``MlsFileError`` naming the missing column or bad line."""
    reader = csv.DictReader(stream)
    headers = {_norm(h): h for h in reader.fieldnames or []}

    def column(name: str, *aliases: str) -> str | None:
        return next((headers[a] for a in (*aliases, *ALIASES.get(name, ())) if a in headers), None)

    id_column = column("id", "id", "subjectid", "listingkey", "listingid")
    as_of_column = column("as_of", "asofdate", "asof", "valuationdate")
    if id_column is None:
        raise MlsFileError("no id column in the header")
    if as_of_column is None:
        raise MlsFileError("no AsOfDate column in the header")
    names = ("lat", "lon", "zip", "city", "state", "address", "sqft", "beds", "baths", "year_built",
             "subtype")
    columns = {name: column(name) for name in names}
    if not (columns["lat"] and columns["lon"]) and not columns["zip"] and not columns["city"]:
        raise MlsFileError("no Latitude/Longitude columns and no PostalCode or City column")
    rows = []
    for line, raw in enumerate(reader, start=2):
        def cell(name: str, raw: dict[str, str] = raw) -> str:
            header = columns.get(name)
            return (raw.get(header) or "").strip() if header else ""

        try:
            as_of = parse_date(raw.get(as_of_column) or "")
            lat, lon = number(cell("lat")), number(cell("lon"))
            sqft, beds, baths, year = number(cell("sqft")), number(cell("beds")), number(cell("baths")), \
                number(cell("year_built"))
        except ValueError as exc:
            raise MlsFileError(f"line {line}: {exc}") from None
        if as_of is None:
            raise MlsFileError(f"line {line}: empty AsOfDate")
        subtype = cell("subtype")
        kind = property_type_of(subtype) if subtype else "single_family"
        if kind is None:
            raise MlsFileError(f"line {line}: property subtype {subtype!r} is not one the CMA values")
        point = lat is not None and lon is not None
        rows.append(BatchRow(
            id=(raw.get(id_column) or "").strip(),
            subject=Subject(
                address=cell("address"), city=cell("city"), state=cell("state"), zip=cell("zip")[:5],
                lat=lat if point else None, lon=lon if point else None,
                beds=round(beds) if beds is not None else None, baths=baths,
                sqft=round(sqft) if sqft else None, property_type=kind,
                year_built=round(year) if year else None,
            ),
            as_of=as_of,
        ))
    return rows


async def _value(source: Any, subject: Subject, as_of: date) -> Valuation | None:
    try:
        return appraise(subject, await source.area_sales(subject, as_of=as_of), as_of=as_of)
    except NoComparablesError:
        return None


@contextlib.asynccontextmanager
async def _source(settings: Settings) -> AsyncIterator[Any]:
    from ghl_real_estate_ai.comps import IndexedComps, comps_from_settings

    if settings.comps == "demo":
        yield IndexedComps()
        return
    async with _redis(settings) as redis:
        source = comps_from_settings(settings, redis)
        try:
            yield source
        finally:
            if hasattr(source, "aclose"):
                await source.aclose()


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


async def batch(settings: Settings, path: Path, out: Path | None) -> int:
    rows = read_batch(_read_text(path))
    lines: list[dict[str, Any]] = []
    async with _source(settings) as source:
        for row in rows:
            valuation = await _value(source, row.subject, row.as_of)
            if valuation is None:
                lines.append({"id": row.id, "estimate": "", "low": "", "high": "", "comps": 0,
                              "confidence": "none"})
            else:
                lines.append({"id": row.id, "estimate": valuation.value, "low": valuation.low,
                              "high": valuation.high, "comps": len(valuation.comps),
                              "confidence": valuation.confidence})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=OUT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    if out is None:
        sys.stdout.write(text.getvalue())
    else:
        _write_text(out, text.getvalue())
        made = sum(1 for line in lines if line["estimate"] != "")
        print(f"estimated {made:,} of {len(lines):,} properties into {out}", flush=True)
    return 0


async def single(settings: Settings, args: argparse.Namespace) -> int:
    if (args.latitude is None) != (args.longitude is None):
        raise InvalidEventError("give both --latitude and --longitude, or neither")
    if args.latitude is None and not args.zip and not args.city:
        raise InvalidEventError("say where the property is: --latitude/--longitude, --zip or --city")
    kind = property_type_of(args.type)
    if kind is None:
        raise InvalidEventError(f"--type {args.type!r} is not a property subtype the CMA values")
    try:
        as_of = parse_date(args.as_of) if args.as_of else date.today()
    except ValueError as exc:
        raise InvalidEventError(f"--as-of: {exc}") from None
    assert as_of is not None
    subject = Subject(
        address=args.address, city=args.city, state=args.state, zip=args.zip[:5], lat=args.latitude,
        lon=args.longitude, beds=round(args.beds) if args.beds is not None else None, baths=args.baths,
        sqft=round(args.sqft) if args.sqft else None, property_type=kind, year_built=args.year_built,
    )
    async with _source(settings) as source:
        valuation = await _value(source, subject, as_of)
    if valuation is None:
        print(f"no estimate as of {as_of}: fewer than 3 comparable sales near the property", flush=True)
        return 1
    print(f"estimate ${valuation.value:,} (likely ${valuation.low:,} - ${valuation.high:,}), "
          f"{len(valuation.comps)} comps, confidence {valuation.confidence}, as of {as_of}", flush=True)
    for sale in valuation.comps:
        print(f"  {sale.sold_on}  ${sale.price:>10,}  {sale.sqft:>5,} sq ft  {sale.beds} bd  "
              f"{sale.address}, {sale.city} {sale.zip}", flush=True)
    return 0
