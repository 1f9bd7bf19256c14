"""The CMA estimate (``appraisal``): similarity limits, the area's trend, outliers, weights, the range and
the area index."""

from __future__ import annotations

import math
import random
from datetime import date, timedelta

import pytest

from ghl_real_estate_ai.conversation.appraisal import (
    MIN_COMPS,
    SalesIndex,
    appraise,
    area_adjustments,
    in_area,
)
from ghl_real_estate_ai.conversation.cma import (
    NoComparablesError,
    Sale,
    Subject,
    months_before,
    property_type_of,
)

AS_OF = date(2026, 11, 1)
MILE = 1 / 69.05
LAT, LON = 47.60, -122.33


def sale(
    name: str,
    *,
    north: float = 0.0,
    sqft: int = 2000,
    price: int | None = None,
    days_ago: int = 30,
    kind: str = "single_family",
    year: int = 1990,
    beds: int = 3,
    zip_code: str = "98101",
) -> Sale:
    return Sale(
        address=name, city="Seattle", state="WA", zip=zip_code, lat=LAT + north * MILE, lon=LON, beds=beds,
        baths=2.0, sqft=sqft, price=price if price is not None else sqft * 400,
        sold_on=AS_OF - timedelta(days=days_ago), property_type=kind, year_built=year,  # type: ignore[arg-type]
    )


SUBJECT = Subject("1 Subject St", "Seattle", "WA", "98101", LAT, LON, 3, 2.0, 2000, "single_family", 1990)


def test_uniform_comps_give_their_price_and_a_range_around_it() -> None:
    comps = [sale(f"s{i}", north=0.1 * i) for i in range(1, 9)]
    valuation = appraise(SUBJECT, comps, as_of=AS_OF)
    assert valuation.value == 800_000
    assert valuation.low < 800_000 < valuation.high
    assert len(valuation.comps) == 8 and valuation.method == "price_per_sqft"


def test_sales_on_or_after_as_of_the_subject_and_other_types_never_count() -> None:
    near = [sale(f"s{i}", north=0.1 * i) for i in range(1, 4)]
    later = [sale("later", days_ago=0, price=9_000_000), sale("future", days_ago=-10, price=9_000_000)]
    own = sale("1 SUBJECT ST.", price=9_000_000)
    condo = sale("condo", kind="condo", price=9_000_000)
    valuation = appraise(SUBJECT, [*near, *later, own, condo], as_of=AS_OF)
    assert {c.address for c in valuation.comps} == {"s1", "s2", "s3"}
    assert valuation.value == 800_000


def test_too_few_comparables_is_a_clear_error() -> None:
    problem = f"1 comparable single family sales near 1 Subject St .*at least {MIN_COMPS}"
    with pytest.raises(NoComparablesError, match=problem):
        appraise(SUBJECT, [sale("only")], as_of=AS_OF)
    with pytest.raises(NoComparablesError, match="0 comparable"):
        appraise(Subject("9 Far Rd", city="Denver", state="CO", zip="80205"), [sale("s")], as_of=AS_OF)


def test_similar_nearby_sales_win_over_dissimilar_or_distant_ones() -> None:
    similar = [sale(f"near {i}", north=0.05 * i) for i in range(1, 11)]
    big = [sale(f"big {i}", north=0.05 * i, sqft=4500, price=1_000_000) for i in range(1, 6)]
    old = [sale(f"old {i}", north=0.05 * i, year=1905, price=500_000) for i in range(1, 6)]
    far = [sale(f"far {i}", north=4.0 + 0.05 * i, price=2_000_000) for i in range(1, 6)]
    valuation = appraise(SUBJECT, [*similar, *big, *old, *far], as_of=AS_OF)
    assert {c.address for c in valuation.comps} == {s.address for s in similar}
    assert valuation.value == 800_000


def test_the_search_widens_when_the_first_step_finds_too_few() -> None:
    comps = [sale(f"s{i}", north=2.5 + 0.05 * i, days_ago=400) for i in range(1, 5)]
    valuation = appraise(SUBJECT, comps, as_of=AS_OF)
    assert len(valuation.comps) == 4


def test_prices_are_brought_to_as_of_by_the_areas_trend() -> None:
    # 60 sales over 24 months in a market rising 1% a month, same home everywhere.
    rng = random.Random(4)
    sales = []
    for i in range(60):
        months_ago = rng.uniform(0.5, 23.5)
        price = 800_000 * math.exp(-0.01 * months_ago) * rng.uniform(0.99, 1.01)
        sales.append(sale(f"s{i}", north=rng.uniform(-0.5, 0.5), days_ago=round(months_ago * 30.44),
                          price=round(price)))
    adjustments = area_adjustments(sales, AS_OF)
    assert adjustments.months == pytest.approx(0.01, abs=0.002)
    valuation = appraise(SUBJECT, sales, as_of=AS_OF)
    assert valuation.value == pytest.approx(800_000, rel=0.02)
    assert valuation.trend_per_month == pytest.approx(0.01, abs=0.002)
    # Without the adjustment the same sales would say about 11% less (their mean age is ~12 months).
    unadjusted = sorted(s.price for s in valuation.comps)[len(valuation.comps) // 2]
    assert valuation.value > unadjusted * 1.01


def test_a_bigger_subject_is_worth_more_but_less_per_square_foot() -> None:
    comps = [sale(f"s{i}", north=0.05 * i) for i in range(1, 9)]
    bigger = Subject("2 Big St", "Seattle", "WA", "98101", LAT, LON, 3, 2.0, 2400, "single_family", 1990)
    valuation = appraise(bigger, comps, as_of=AS_OF)
    assert 800_000 < valuation.value < 2400 * 400


def test_an_outlier_is_dropped() -> None:
    comps = [sale(f"s{i}", north=0.05 * i, price=800_000 + 5_000 * i) for i in range(1, 9)]
    comps.append(sale("mansion next door", north=0.01, price=3_000_000))
    valuation = appraise(SUBJECT, comps, as_of=AS_OF)
    assert "mansion next door" not in {c.address for c in valuation.comps}
    assert valuation.high < 1_000_000


def test_the_range_is_wider_with_fewer_or_more_scattered_comps() -> None:
    tight = [sale(f"s{i}", north=0.05 * i, price=800_000 + 1_000 * i) for i in range(1, 11)]
    few = tight[:3]
    scattered = [sale(f"s{i}", north=0.05 * i, price=450_000 + 80_000 * i) for i in range(1, 11)]

    def width(comps: list[Sale]) -> float:
        v = appraise(SUBJECT, comps, as_of=AS_OF)
        return (v.high - v.low) / v.value

    assert width(few) > width(tight)
    assert width(scattered) > width(tight)
    assert appraise(SUBJECT, tight, as_of=AS_OF).confidence == "high"
    assert appraise(SUBJECT, few, as_of=AS_OF).confidence == "medium"
    assert appraise(SUBJECT, scattered, as_of=AS_OF).confidence == "low"


def test_without_size_the_estimate_uses_prices_and_without_coordinates_the_zip() -> None:
    comps = [sale(f"s{i}", north=30.0, price=700_000 + 10_000 * i) for i in range(1, 6)]
    subject = Subject("5 Zip St", city="Seattle", state="WA", zip="98101")
    valuation = appraise(subject, [*comps, sale("other zip", zip_code="98999", price=5_000_000)], as_of=AS_OF)
    assert valuation.method == "median_price"
    assert "other zip" not in {c.address for c in valuation.comps}
    assert 700_000 < valuation.value < 760_000


def test_valuation_state_round_trips_with_the_new_fields() -> None:
    from ghl_real_estate_ai.conversation.cma import Valuation

    valuation = appraise(SUBJECT, [sale(f"s{i}", north=0.1 * i) for i in range(1, 6)], as_of=AS_OF)
    assert Valuation.from_state(valuation.to_state()) == valuation


@pytest.mark.parametrize(
    ("value", "kind"),
    [("Single Family Residence", "single_family"), ("SingleFamilyResidence", "single_family"),
     ("Condominium", "condo"), ("Townhouse", "townhouse"), ("sfr", "single_family"), ("Duplex", None),
     ("Manufactured Home", None), ("", None)],
)
def test_both_lookup_forms_name_the_same_type(value: str, kind: str | None) -> None:
    assert property_type_of(value) == kind


def test_the_index_finds_what_a_full_scan_finds() -> None:
    rng = random.Random(9)
    sales = [
        sale(f"s{i}", north=rng.uniform(-8, 8), days_ago=rng.randint(-30, 900),
             kind=rng.choice(["single_family", "condo"]), zip_code=rng.choice(["98101", "98102"]))
        for i in range(600)
    ]
    index = SalesIndex(sales)
    for radius, months in ((1.0, 6), (3.0, 12), (5.0, 24)):
        cutoff = months_before(AS_OF, months)
        expected = {
            s.address for s in sales
            if s.property_type == "single_family" and cutoff <= s.sold_on < AS_OF
            and in_area(s, SUBJECT, radius)
        }
        found = index.area(SUBJECT, as_of=AS_OF, radius_miles=radius, months=months)
        assert {s.address for s in found} == expected
    by_zip = Subject("x", zip="98102", property_type="condo")
    assert {s.address for s in index.area(by_zip, as_of=AS_OF)} == {
        s.address for s in sales
        if s.property_type == "condo" and s.zip == "98102" and date(2024, 11, 1) <= s.sold_on < AS_OF
    }


def test_comparables_on_the_pricier_side_are_adjusted_to_the_subjects_spot() -> None:
    # Prices rise 5% a mile going north; the subject sits at the south edge of its comparables.
    rng = random.Random(11)
    sales = []
    for i in range(80):
        north = rng.uniform(0.0, 2.0)
        sales.append(sale(f"s{i}", north=north, price=round(800_000 * math.exp(0.05 * north)),
                          days_ago=rng.randint(10, 300)))
    adjustments = area_adjustments(sales, AS_OF)
    assert adjustments.north == pytest.approx(0.05, abs=0.005)
    assert appraise(SUBJECT, sales, as_of=AS_OF).value == pytest.approx(800_000, rel=0.01)
