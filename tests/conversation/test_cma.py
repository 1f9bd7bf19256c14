"""CMA: the bundled data set, choosing comparables, the estimate arithmetic, and plain-data state."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from ghl_real_estate_ai.conversation import cma
from ghl_real_estate_ai.conversation.cma import (
    CsvCompsProvider,
    ListCompsProvider,
    NoComparablesError,
    Sale,
    Subject,
    Valuation,
    estimate,
    haversine_miles,
    months_before,
    round_to_thousand,
    select_comparables,
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
    sales = CsvCompsProvider().sales
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


def test_csv_provider_reads_a_given_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sales.csv"
    path.write_text(
        "address,city,state,zip,lat,lon,beds,baths,sqft,price,sold_on,property_type\n"
        "1 A St,Austin,TX,78704,30.25,-97.75,3,2.0,2000,600000,2026-10-01,single_family\n"
        "2 B St,Austin,TX,78704,30.251,-97.75,3,2.0,2100,620000,2026-09-01,Single Family\n"
        "3 C St,Austin,TX,78704,30.252,-97.75,3,2.5,1900,580000,2026-08-01,house\n",
        encoding="utf-8",
    )
    calls: list[Any] = []
    real = cma.load_sales
    monkeypatch.setattr(cma, "load_sales", lambda p: calls.append(p) or real(p))
    provider = CsvCompsProvider(path)
    first = provider.comparables(SUBJECT, as_of=AS_OF)
    second = provider.comparables(SUBJECT)
    assert calls == [path]
    assert addresses(first) == ["1 A St", "2 B St", "3 C St"]
    assert first == second


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


def test_real_subject_gets_comps_from_the_bundled_data() -> None:
    subject = Subject("123 Test St", "Austin", "TX", "78704", 30.2430, -97.7650, 3, 2.0, 1800)
    comps = CsvCompsProvider().comparables(subject, as_of=AS_OF)
    assert 3 <= len(comps) <= 6
    assert all(c.property_type == "single_family" and c.city == "Austin" for c in comps)
    distances = [haversine_miles(30.2430, -97.7650, c.lat, c.lon) for c in comps]
    assert distances == sorted(distances)
    valuation = estimate(subject, comps, as_of=AS_OF)
    assert 300_000 < valuation.value < 1_500_000
    assert valuation.low <= valuation.value <= valuation.high


# --------------------------------------------------------------------------------------------------
# Choosing comparables
# --------------------------------------------------------------------------------------------------


def test_same_property_type_only() -> None:
    sales = [sale("condo 1", kind="condo"), sale("house 1"), sale("house 2"), sale("house 3"),
             sale("town 1", kind="townhouse")]
    assert addresses(select_comparables(sales, SUBJECT, as_of=AS_OF)) == ["house 1", "house 2", "house 3"]
    condo = Subject("9 Unit", "Austin", "TX", "78704", BASE_LAT, BASE_LON, 2, 1.0, 900, "condo")
    assert addresses(select_comparables(sales, condo, as_of=AS_OF)) == ["condo 1"]


def test_nearest_first_and_limit() -> None:
    sales = [sale(f"{d} mi", miles_north=d) for d in (0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8)]
    chosen = select_comparables(sales, SUBJECT, as_of=AS_OF, limit=4)
    assert addresses(chosen) == ["0.1 mi", "0.2 mi", "0.3 mi", "0.5 mi"]
    assert select_comparables(sales, SUBJECT, as_of=AS_OF, limit=0) == []


def test_radius_widens_one_mile_then_two_then_five() -> None:
    near = [sale("0.5 mi", miles_north=0.5), sale("0.6 mi", miles_north=0.6)]
    two = [sale("1.5 mi", miles_north=1.5)]
    five = [sale("4 mi", miles_north=4.0), sale("4.5 mi", miles_north=4.5)]
    far = [sale("12 mi", miles_north=12.0)]
    # Two within a mile is too few: step 2 (2 miles) finds three.
    assert addresses(select_comparables(near + two + five + far, SUBJECT, as_of=AS_OF)) == [
        "0.5 mi", "0.6 mi", "1.5 mi",
    ]
    # Nothing within two miles: step 3 (5 miles).
    sales = [*five, *far, sale("3 mi", miles_north=3)]
    assert addresses(select_comparables(sales, SUBJECT, as_of=AS_OF)) == ["3 mi", "4 mi", "4.5 mi"]


def test_first_step_with_enough_sales_wins() -> None:
    strict = [sale(f"strict {i}", miles_north=0.1 * i) for i in range(1, 4)]
    wider = [sale(f"wider {i}", miles_north=1.5) for i in range(3)]
    assert addresses(select_comparables(strict + wider, SUBJECT, as_of=AS_OF)) == [
        "strict 1", "strict 2", "strict 3",
    ]


def test_sqft_band_is_thirty_percent_before_widening() -> None:
    inside = [sale("1400 sqft", sqft=1400), sale("2600 sqft", sqft=2600), sale("2000 sqft", sqft=2000)]
    outside = [sale("1300 sqft", sqft=1300), sale("2700 sqft", sqft=2700)]
    chosen = select_comparables(inside + outside, SUBJECT, as_of=AS_OF)
    assert set(addresses(chosen)) == {"1400 sqft", "2600 sqft", "2000 sqft"}
    # Closest in size first among equally near sales.
    assert addresses(chosen)[0] == "2000 sqft"
    # With too few in the ±30% band, step 4 allows ±50%.
    assert set(addresses(select_comparables([*inside[:2], *outside], SUBJECT, as_of=AS_OF))) == {
        "1400 sqft", "2600 sqft", "1300 sqft", "2700 sqft",
    }


def test_beds_band() -> None:
    sales = [sale("2 bd", beds=2), sale("4 bd", beds=4), sale("3 bd", beds=3), sale("5 bd", beds=5),
             sale("1 bd", beds=1)]
    assert set(addresses(select_comparables(sales, SUBJECT, as_of=AS_OF))) == {"2 bd", "3 bd", "4 bd"}


def test_look_back_is_twelve_months_and_never_after_as_of() -> None:
    recent = [sale(f"recent {i}", days_ago=10 * i) for i in range(1, 4)]
    old = sale("14 months", days_ago=425)
    future = sale("future", days_ago=-5)
    assert set(addresses(select_comparables([*recent, old, future], SUBJECT, as_of=AS_OF))) == {
        "recent 1", "recent 2", "recent 3",
    }
    # Too few recent sales: step 5 reaches back 18 months.
    assert "14 months" in addresses(select_comparables([*recent[:2], old], SUBJECT, as_of=AS_OF))
    assert "future" not in addresses(select_comparables([future], SUBJECT, as_of=AS_OF))


def test_last_resort_relaxes_size_and_age_but_never_type() -> None:
    odd = [sale("tiny", sqft=600, beds=1, days_ago=600, miles_north=20), sale("condo", kind="condo")]
    assert addresses(select_comparables(odd, SUBJECT, as_of=AS_OF)) == ["tiny"]
    assert select_comparables([sale("condo", kind="condo")], SUBJECT, as_of=AS_OF) == []


def test_subject_itself_is_not_its_own_comparable() -> None:
    sales = [sale("100 SUBJECT ST."), sale("a"), sale("b"), sale("c")]
    assert "100 SUBJECT ST." not in addresses(select_comparables(sales, SUBJECT, as_of=AS_OF))


def test_without_coordinates_same_zip_then_same_city() -> None:
    subject = Subject("1 Main St", "Austin", "TX", "78704", sqft=2000, beds=3)
    in_zip = [sale(f"zip {i}", miles_north=9) for i in range(3)]
    in_city = [sale(f"city {i}", zip_code="78745", miles_north=3) for i in range(3)]
    elsewhere = [sale(f"tampa {i}", city="Tampa", zip_code="33629") for i in range(3)]
    assert set(addresses(select_comparables(in_zip + in_city + elsewhere, subject, as_of=AS_OF))) == {
        "zip 0", "zip 1", "zip 2",
    }
    sales = in_zip[:1] + in_city + elsewhere
    assert set(addresses(select_comparables(sales, subject, as_of=AS_OF, limit=9))) == {
        "zip 0", "city 0", "city 1", "city 2",
    }
    # Same-zip sales rank first once the search reaches the whole city.
    chosen = select_comparables(in_zip[:1] + in_city, subject, as_of=AS_OF)
    assert chosen[0].address == "zip 0"
    nowhere = Subject("1 Main St", "Round Rock", "TX", "78664", sqft=2000)
    assert select_comparables(in_zip + in_city, nowhere, as_of=AS_OF) == []


def test_list_provider_defaults_as_of_to_the_newest_sale() -> None:
    sales = [sale(f"s{i}", days_ago=400 + i) for i in range(3)]
    assert len(ListCompsProvider(sales).comparables(SUBJECT)) == 3
    assert ListCompsProvider([]).comparables(SUBJECT) == []


def test_geometry_helpers() -> None:
    assert haversine_miles(30.0, -97.0, 31.0, -97.0) == pytest.approx(69.09, abs=0.05)
    assert haversine_miles(30.0, -97.0, 30.0, -97.0) == 0.0
    assert months_before(date(2026, 3, 31), 1) == date(2026, 2, 28)
    assert months_before(date(2026, 11, 1), 12) == date(2025, 11, 1)
    assert months_before(date(2024, 2, 29), 12) == date(2023, 2, 28)


# --------------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------------


def test_estimate_with_four_comps_uses_median_and_interquartile_range() -> None:
    comps = [sale("a", sqft=1000, price=200_000), sale("b", sqft=1000, price=250_000),
             sale("c", sqft=1000, price=300_000), sale("d", sqft=1000, price=350_000)]
    valuation = estimate(SUBJECT, comps, as_of=AS_OF)
    # $/sqft 200, 250, 300, 350: median 275; inclusive quartiles 237.5 and 312.5; times 2,000 sqft.
    assert (valuation.value, valuation.low, valuation.high) == (550_000, 475_000, 625_000)
    assert valuation.price_per_sqft_median == 275.0
    assert valuation.method == "price_per_sqft"
    assert valuation.as_of == AS_OF
    assert valuation.comps == comps


def test_estimate_with_fewer_than_four_comps_uses_seven_and_a_half_percent() -> None:
    comps = [sale("a", sqft=1000, price=300_000), sale("b", sqft=1000, price=310_000),
             sale("c", sqft=1000, price=320_000)]
    subject = Subject("1 Main", sqft=1500)
    valuation = estimate(subject, comps)
    # 310 $/sqft x 1,500 = 465,000; ±7.5% = 430,125 and 499,875, rounded to the nearest thousand.
    assert (valuation.value, valuation.low, valuation.high) == (465_000, 430_000, 500_000)
    assert valuation.as_of == AS_OF - timedelta(days=30)


def test_estimate_rounds_half_up_to_the_nearest_thousand() -> None:
    comps = [sale("a", sqft=1000, price=275_250)]
    assert estimate(Subject("x", sqft=2000), comps).value == 551_000  # 550,500 rounds up, not to even
    assert round_to_thousand(2_500) == 3_000
    assert round_to_thousand(1_499.99) == 1_000


def test_estimate_without_size_uses_sale_prices() -> None:
    comps = [sale("a", sqft=1000, price=400_000), sale("b", sqft=2000, price=500_000),
             sale("c", sqft=1500, price=600_000), sale("d", sqft=3000, price=700_000)]
    valuation = estimate(Subject("1 Main", city="Austin"), comps, as_of=AS_OF)
    assert (valuation.value, valuation.low, valuation.high) == (550_000, 475_000, 625_000)
    assert valuation.method == "median_price"


def test_estimate_without_comps_raises_a_clear_error() -> None:
    with pytest.raises(NoComparablesError, match="no comparable single family sales near 1 Main St"):
        estimate(Subject("1 Main St", zip="78664"), [])
    assert issubclass(NoComparablesError, ValueError)


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def test_valuation_state_is_plain_data_and_round_trips() -> None:
    comps = [sale("a", sqft=1000, price=200_000), sale("b", sqft=1000, price=250_000),
             sale("c", sqft=1000, price=300_000), sale("d", sqft=1000, price=350_000)]
    valuation = estimate(SUBJECT, comps, as_of=AS_OF)
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
