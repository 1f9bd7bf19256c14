"""Regenerate ``sales.csv``: a synthetic, deterministic set of closed sales for the CMA.

600 sales (150 per metro) in Austin TX, Tampa FL, Seattle WA and Phoenix AZ, clustered around real zip
codes, sold between 2025-05-01 and 2026-10-31 (the 18 months before 2026-11-01). Prices follow a
per-zip price per square foot, a discount for condos and townhouses and for large homes, a market trend of
+3% a year, and ±7% noise. Nothing here describes a real property.

    python -m ghl_real_estate_ai.data.make_sales            # rewrite sales.csv next to this file
    python -m ghl_real_estate_ai.data.make_sales --check    # exit 1 if the committed file is out of date
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

SEED = 20261101
SALES_PER_METRO = 150
FIRST_SALE = date(2025, 5, 1)
LAST_SALE = date(2026, 10, 31)
FIELDS = (
    "address", "city", "state", "zip", "lat", "lon", "beds", "baths", "sqft", "price", "sold_on",
    "property_type",
)


@dataclass(frozen=True)
class Zip:
    code: str
    lat: float
    lon: float
    price_per_sqft: float
    condo_share: float = 0.10
    townhouse_share: float = 0.15


@dataclass(frozen=True)
class Metro:
    city: str
    state: str
    streets: tuple[str, ...]
    zips: tuple[Zip, ...]


METROS = (
    Metro(
        "Austin", "TX",
        ("Barton Springs Rd", "Congress Ave", "Lamar Blvd", "Guadalupe St", "Manor Rd", "Cesar Chavez St",
         "Burnet Rd", "Airport Blvd", "Rosedale Ave", "Shoal Creek Blvd", "Oltorf St", "Mopac Loop"),
        (
            Zip("78701", 30.2711, -97.7437, 620, condo_share=0.70, townhouse_share=0.10),
            Zip("78702", 30.2635, -97.7166, 430),
            Zip("78704", 30.2428, -97.7658, 480),
            Zip("78731", 30.3472, -97.7687, 400),
            Zip("78745", 30.2076, -97.7956, 300),
            Zip("78751", 30.3102, -97.7229, 420),
            Zip("78757", 30.3516, -97.7324, 380),
        ),
    ),
    Metro(
        "Tampa", "FL",
        ("Bayshore Blvd", "Kennedy Blvd", "Dale Mabry Hwy", "Swann Ave", "Armenia Ave", "Howard Ave",
         "Gandy Blvd", "Busch Blvd", "Bruce B Downs Blvd", "Platt St", "Hillsborough Ave", "Fowler Ave"),
        (
            Zip("33602", 27.9517, -82.4588, 420, condo_share=0.70, townhouse_share=0.10),
            Zip("33606", 27.9350, -82.4680, 450),
            Zip("33609", 27.9425, -82.5050, 400),
            Zip("33611", 27.8905, -82.5060, 340),
            Zip("33614", 28.0023, -82.5020, 240),
            Zip("33629", 27.9220, -82.5090, 480),
            Zip("33647", 28.1310, -82.3650, 230),
        ),
    ),
    Metro(
        "Seattle", "WA",
        ("Aurora Ave N", "Greenwood Ave N", "Market St", "Rainier Ave S", "California Ave SW", "15th Ave NE",
         "Roosevelt Way NE", "Pike St", "Fremont Ave N", "35th Ave NE", "Delridge Way SW", "Leary Way NW"),
        (
            Zip("98103", 47.6710, -122.3420, 620),
            Zip("98105", 47.6630, -122.3020, 640),
            Zip("98107", 47.6670, -122.3790, 600),
            Zip("98115", 47.6850, -122.2990, 580),
            Zip("98118", 47.5410, -122.2710, 450),
            Zip("98122", 47.6110, -122.3050, 610, condo_share=0.45, townhouse_share=0.25),
            Zip("98126", 47.5440, -122.3740, 480),
        ),
    ),
    Metro(
        "Phoenix", "AZ",
        ("Camelback Rd", "Indian School Rd", "Central Ave", "Thomas Rd", "McDowell Rd", "7th St",
         "Bell Rd", "Cactus Rd", "Ray Rd", "Osborn Rd", "24th St", "Glendale Ave"),
        (
            Zip("85004", 33.4510, -112.0700, 330, condo_share=0.65, townhouse_share=0.15),
            Zip("85008", 33.4650, -111.9980, 260),
            Zip("85016", 33.5090, -112.0300, 340),
            Zip("85018", 33.4960, -111.9880, 420),
            Zip("85020", 33.5630, -112.0560, 290),
            Zip("85032", 33.6250, -112.0020, 250),
            Zip("85044", 33.3290, -111.9930, 260),
        ),
    ),
)


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _sale(rng: random.Random, metro: Metro, used: set[str]) -> dict[str, str]:
    zone = rng.choice(metro.zips)
    roll = rng.random()
    if roll < zone.condo_share:
        kind, type_factor = "condo", 0.95
        sqft = _clamp(rng.gauss(1000, 280), 450, 2200)
        beds = int(_clamp(round(sqft / 550), 1, 3))
    elif roll < zone.condo_share + zone.townhouse_share:
        kind, type_factor = "townhouse", 0.92
        sqft = _clamp(rng.gauss(1500, 350), 900, 2600)
        beds = int(_clamp(round(sqft / 520) + rng.choice((-1, 0, 0, 1)), 2, 4))
    else:
        kind, type_factor = "single_family", 1.0
        sqft = _clamp(rng.gauss(1900, 550), 900, 4500)
        beds = int(_clamp(round(sqft / 600) + rng.choice((-1, 0, 0, 1)), 2, 6))
    sqft = int(round(sqft / 10) * 10)
    baths = _clamp(beds - rng.choice((0.0, 0.5, 1.0)), 1.0, 5.0)
    sold_on = FIRST_SALE + timedelta(days=rng.randrange((LAST_SALE - FIRST_SALE).days + 1))
    years = (sold_on - FIRST_SALE).days / 365.25
    size_factor = (1900 / sqft) ** 0.15
    trend = 1 + 0.03 * years
    price_per_sqft = zone.price_per_sqft * type_factor * size_factor * trend * rng.gauss(1.0, 0.07)
    price = int(round(price_per_sqft * sqft / 500) * 500)
    while True:
        address = f"{rng.randrange(100, 9900)} {rng.choice(metro.streets)}"
        if kind == "condo":
            address += f" Unit {rng.randrange(1, 30)}{rng.choice('ABCD')}"
        if address not in used:
            used.add(address)
            break
    return {
        "address": address,
        "city": metro.city,
        "state": metro.state,
        "zip": zone.code,
        "lat": f"{zone.lat + rng.gauss(0, 0.008):.6f}",
        "lon": f"{zone.lon + rng.gauss(0, 0.008):.6f}",
        "beds": str(beds),
        "baths": f"{baths:.1f}",
        "sqft": str(sqft),
        "price": str(price),
        "sold_on": sold_on.isoformat(),
        "property_type": kind,
    }


def generate(seed: int = SEED) -> str:
    """The CSV text. The same seed always gives the same bytes."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    for metro in METROS:
        used: set[str] = set()
        rows.extend(_sale(rng, metro, used) for _ in range(SALES_PER_METRO))
    rows.sort(key=lambda row: (row["state"], row["city"], row["sold_on"], row["address"]))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("sales.csv"))
    parser.add_argument("--check", action="store_true", help="only check that --out is up to date")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: python -m ghl_real_estate_ai.data.make_sales", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {text.count(chr(10)) - 1} sales to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
