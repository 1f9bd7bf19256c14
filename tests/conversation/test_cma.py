"""CMA data: the bundled data set, reading sales CSV, geometry and rounding helpers, plain-data state, and
subjects from contacts. The estimate itself is tested in ``test_appraisal.py``."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from ghl_real_estate_ai.conversation import cma
from ghl_real_estate_ai.conversation.cma import (
    Sale,
    Subject,
    Valuation,
    haversine_miles,
    load_sales,
    months_before,
    round_to_thousand,
    subject_from_contact,
)
from ghl_real_estate_ai.data import make_sales

AS_OF = date(2026, 11, 1)
# About 1/69 of a degree of latitude per mile.
MILE = 1 / 69.05
BASE_LAT, BASE_LON = 30.2500, -97.7500


def sale(
    name: str,
    *,
    miles_north: float = 0.0,
    sqft: int = 2000,
    beds: int = 3,
    price: int | None = None,
    days_ago: int = 30,
    kind: str = "single_family",
    zip_code: str = "78704",
    city: str = "Austin",
) -> Sale:
    return Sale(
        address=name,
        city=city,
        state="TX",
        zip=zip_code,
        lat=BASE_LAT + miles_north * MILE,
        lon=BASE_LON,
        beds=beds,
        baths=2.0,
        sqft=sqft,
        price=price if price is not None else sqft * 300,
        sold_on=AS_OF - timedelta(days=days_ago),
        property_type=kind,  # type: ignore[arg-type]
    )


SUBJECT = Subject(
    address="100 Subject St", city="Austin", state="TX", zip="78704", lat=BASE_LAT, lon=BASE_LON, beds=3,
    baths=2.0, sqft=2000,
)


def addresses(sales: list[Sale]) -> list[str]:
    return [s.address for s in sales]


# --------------------------------------------------------------------------------------------------
# The bundled data set
# --------------------------------------------------------------------------------------------------


def test_bundled_data_set_loads_and_is_plausible() -> None:
    sales = load_sales()
    assert 300 <= len(sales) <= 600
    assert {s.city for s in sales} == {"Austin", "Tampa", "Seattle", "Phoenix"}
    assert {s.property_type for s in sales} == {"single_family", "condo", "townhouse"}
    assert min(s.sold_on for s in sales) >= date(2025, 5, 1)
    assert max(s.sold_on for s in sales) < AS_OF
    assert all(400 <= s.sqft <= 5000 and 1 <= s.beds <= 6 and s.price > 100_000 for s in sales)
    by_city = {city: [s for s in sales if s.city == city] for city in ("Seattle", "Phoenix")}
    median = sorted(s.price_per_sqft for s in by_city["Seattle"])[len(by_city["Seattle"]) // 2]
    assert median > 1.5 * sorted(s.price_per_sqft for s in by_city["Phoenix"])[len(by_city["Phoenix"]) // 2]


def test_generator_reproduces_the_committed_csv() -> None:
    committed = Path(cma.__file__).parent.parent / "data" / "sales.csv"
    assert make_sales.generate() == committed.read_text(encoding="utf-8")
    assert make_sales.main(["--check", "--out", str(committed)]) == 0


def test_generator_check_flags_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "sales.csv"
    stale.write_text("address\n", encoding="utf-8")
    assert make_sales.main(["--check", "--out", str(stale)]) == 1
    assert make_sales.main(["--out", str(stale)]) == 0
    assert make_sales.main(["--check", "--out", str(stale)]) == 0


def test_load_sales_reads_a_given_file(tmp_path: Path) -> None:
    path = tmp_path / "sales.csv"
    path.write_text(
        "address,city,state,zip,lat,lon,beds,baths,sqft,price,sold_on,property_type\n"
        "1 A St,Austin,TX,78704,30.25,-97.75,3,2.0,2000,600000,2026-10-01,single_family\n"
        "2 B St,Austin,TX,78704,30.251,-97.75,3,2.0,2100,620000,2026-09-01,Single Family\n"
        "3 C St,Austin,TX,78704,30.252,-97.75,3,2.5,1900,580000,2026-08-01,house\n",
        encoding="utf-8",
    )
    sales = load_sales(path)
    assert addresses(sales) == ["1 A St", "2 B St", "3 C St"]
    assert {s.property_type for s in sales} == {"single_family"}
    assert sales[1] == Sale("2 B St", "Austin", "TX", "78704", 30.251, -97.75, 3, 2.0, 2100, 620_000,
                            date(2026, 9, 1), "single_family")


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("1 A St,Austin,TX,78704,north,-97.75,3,2.0,2000,600000,2026-10-01,condo", "line 2"),
        ("1 A St,Austin,TX,78704,30.25,-97.75,3,2.0,0,600000,2026-10-01,condo", "must be positive"),
        ("1 A St,Austin,TX,78704,30.25,-97.75,3,2.0,2000,600000,someday,condo", "line 2"),
    ],
)
def test_malformed_csv_names_the_line(tmp_path: Path, row: str, problem: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(",".join(cma.CSV_FIELDS) + "\n" + row + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=problem):
        cma.load_sales(path)


def test_missing_columns_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("address,city\nx,y\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing the columns state"):
        cma.load_sales(path)


# --------------------------------------------------------------------------------------------------
# Helpers, the valuation's state, subjects from contacts
# --------------------------------------------------------------------------------------------------


def test_geometry_helpers() -> None:
    assert haversine_miles(30.0, -97.0, 31.0, -97.0) == pytest.approx(69.09, abs=0.05)
    assert haversine_miles(30.0, -97.0, 30.0, -97.0) == 0.0
    assert months_before(date(2026, 3, 31), 1) == date(2026, 2, 28)
    assert months_before(date(2026, 11, 1), 12) == date(2025, 11, 1)
    assert months_before(date(2024, 2, 29), 12) == date(2023, 2, 28)


def test_round_to_thousand_rounds_half_up() -> None:
    assert round_to_thousand(550_500) == 551_000  # half up, not to even
    assert round_to_thousand(2_500) == 3_000
    assert round_to_thousand(1_499.99) == 1_000


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def test_valuation_state_is_plain_data_and_round_trips() -> None:
    comps = [sale("a", sqft=1000, price=200_000), sale("b", sqft=1000, price=250_000),
             sale("c", sqft=1000, price=300_000), sale("d", sqft=1000, price=350_000)]
    valuation = Valuation(
        value=550_000, low=475_000, high=625_000, price_per_sqft_median=275.0, comps=comps, subject=SUBJECT,
        as_of=AS_OF,
    )
    state = valuation.to_state()
    assert _plain(state)
    assert state["as_of"] == "2026-11-01"
    assert state["comps"][0]["sold_on"] == (AS_OF - timedelta(days=30)).isoformat()
    assert json.loads(json.dumps(state)) == state
    assert Valuation.from_state(state) == valuation


def test_subject_from_contact_state() -> None:
    contact = {"id": "c1", "first_name": "Jane", "address": " 12 Oak St ", "city": "Austin", "state": "TX",
               "postal_code": "78704-1234", "sqft": "1,850", "beds": "3", "property_type": "Townhome"}
    subject = subject_from_contact(contact)
    assert subject == Subject("12 Oak St", "Austin", "TX", "78704", None, None, 3, None, 1850, "townhouse")
    ghl = subject_from_contact({"address1": "1 Main", "postalCode": "33629", "lat": 27.9, "lon": -82.5})
    assert (ghl.address, ghl.zip, ghl.has_coordinates) == ("1 Main", "33629", True)


@pytest.mark.parametrize(
    "contact",
    [{}, {"sqft": "big", "beds": None, "lat": "x", "lon": 5}, {"sqft": -5, "lat": 500, "lon": 0},
     {"address": None, "postal_code": 78704, "sqft": float("nan"), "beds": True}],
)
def test_subject_from_contact_never_raises(contact: dict[str, Any]) -> None:
    subject = subject_from_contact(contact)
    assert subject.sqft is None or subject.sqft > 0
    assert not subject.has_coordinates or contact.get("lat") == 27.9
