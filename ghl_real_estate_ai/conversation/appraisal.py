"""The CMA estimate: from the closed sales of an area to a value, a range and a confidence word. Pure.

``appraise(subject, sales, as_of=...)`` is what the bot, ``lead-bot cma`` and the accuracy benchmark use.
It starts from the bot's first method (median price per square foot of the nearest similar sales, widening
step by step) and adds what appraisers and CMA tools do (``reference/comps_and_cma.md`` §3):

1. **Candidates**: the same property type, closed strictly before ``as_of``, never the subject itself.
2. **Similarity limits, widening** (``STEPS``): the first step that finds ``TARGET_COMPS`` sales wins (the
   last step takes what it finds, at least ``MIN_COMPS``). Size and age bands apply only when the subject's
   size and year built are known; without coordinates, "radius" means the same zip, then the same city.

   ====  ======  =========  ========  =========
   step  radius  sqft band  age band  look-back
   ====  ======  =========  ========  =========
   1     0.5 mi  ±20%       ±15 yr    6 months
   2     1 mi    ±25%       ±20 yr    12 months
   3     2 mi    ±35%       ±30 yr    12 months
   4     3 mi    ±50%       any       24 months
   5     5 mi    any        any       24 months
   ====  ======  =========  ========  =========

3. **Market-derived adjustments** (``area_adjustments``): least squares of log price on the month of sale,
   log living area, year built, baths, beds and position (miles north and east) over the
   ``ADJUSTMENT_SALES`` nearest sales of the type, each zip's own level taken out. Each comparable's price
   is then brought to ``as_of`` by the area's monthly trend (capped at ±``TREND_LIMIT``) and adjusted for
   every difference from the subject the known facts show (``adjusted_value``): a bigger home is worth
   more but less per square foot, an older one less, a comparable on the pricier side of the street grid
   less. With too few sales only the default size elasticity applies.
4. **Similarity weights**: distance, size, age, bedrooms and recency each shrink a sale's weight; the
   ``MAX_COMPS`` best-weighted sales are kept.
5. **Outliers**: with five or more, sales whose implied value lies outside 1.5 × IQR of the others (on the
   log scale) are dropped.
6. **Estimate** = the weighted median of the implied values, rounded half-up to $1,000. **Range**: the
   weighted quartiles of the implied values, never narrower than ``RANGE_FLOOR`` plus ``RANGE_PER_COMP`` /
   √n of the estimate on each side (few comparables, wide range), so it is honest about both spread and
   count. **Confidence**: ``high`` with five or more comparables and a range within ±22%, ``medium``
   within ±30%, else ``low``.

Without the subject's size the same steps apply to sale prices (``method="median_price"``).
The constants were chosen on King County sales of 2011-2013 and are measured on 2014-2016 sales by
``benchmarks/cma_accuracy.py``.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal

from ghl_real_estate_ai.conversation.cma import (
    NoComparablesError,
    PropertyType,
    Sale,
    Subject,
    Valuation,
    _key,
    haversine_miles,
    months_before,
    round_to_thousand,
)

MIN_COMPS = 3
TARGET_COMPS = 10
MAX_COMPS = 20
SIZE_ELASTICITY = 0.75
TREND_LIMIT = 0.03
"""The monthly price trend is clipped to ±3% a month (a thin area must not extrapolate wildly)."""
TREND_MIN_SALES = 30
RANGE_FLOOR = 0.14
RANGE_PER_COMP = 0.20
RANGE_IQR_SCALE = 1.5
ADJUSTMENT_SALES = 400
AREA_RADIUS_MILES = 5.0
MILES_PER_DEGREE = 69.05
GRADIENT_LIMIT = 0.3
"""The price gradient across the area is clipped to ±30% a mile."""
AREA_MONTHS = 24
DAYS_PER_MONTH = 30.4375


@dataclass(frozen=True)
class Step:
    """One step of the widening search (see the module docstring)."""

    radius_miles: float
    sqft_band: float | None
    age_band: int | None
    months: int
    area: Literal["zip", "city"]


STEPS: tuple[Step, ...] = (
    Step(0.5, 0.20, 15, 6, "zip"),
    Step(1.0, 0.25, 20, 12, "zip"),
    Step(2.0, 0.35, 30, 12, "zip"),
    Step(3.0, 0.50, None, 24, "city"),
    Step(AREA_RADIUS_MILES, None, None, AREA_MONTHS, "city"),
)


def months_between(earlier: date, later: date) -> float:
    return (later - earlier).days / DAYS_PER_MONTH


def _same_city(sale: Sale, subject: Subject) -> bool:
    if not subject.city or _key(sale.city) != _key(subject.city):
        return False
    return not subject.state or _key(sale.state) == _key(subject.state)


def in_area(sale: Sale, subject: Subject, radius_miles: float, *, zip_only: bool = False) -> bool:
    """Within ``radius_miles`` of the subject; without coordinates, in its zip (or, unless ``zip_only``,
    its city)."""
    if subject.lat is not None and subject.lon is not None:
        return haversine_miles(subject.lat, subject.lon, sale.lat, sale.lon) <= radius_miles
    if subject.zip and sale.zip == subject.zip:
        return True
    return not zip_only and _same_city(sale, subject)


def is_subject(sale: Sale, subject: Subject) -> bool:
    """The subject's own sale (same street address in the same zip or city)."""
    own = _key(subject.address)
    return bool(own) and _key(sale.address) == own and (sale.zip == subject.zip or _same_city(sale, subject))


FEATURES = ("months", "log_sqft", "year_built", "baths", "beds", "north", "east")


@dataclass(frozen=True)
class Adjustments:
    """Market-derived adjustments (log price per unit of each feature), fitted on the area's sales:
    ``months`` is the monthly price trend, ``log_sqft`` the size elasticity, the rest per year of age,
    bathroom and bedroom."""

    months: float = 0.0
    log_sqft: float = SIZE_ELASTICITY
    year_built: float = 0.0
    baths: float = 0.0
    beds: float = 0.0
    north: float = 0.0  # per mile north
    east: float = 0.0  # per mile east
    sales: int = 0


def _features(sale: Sale, as_of: date, east_scale: float) -> list[float]:
    # Position in miles: north from the equator, east at the area's own miles per degree of longitude
    # (one scale for the whole area, so "east" does not drift with latitude).
    return [
        -months_between(sale.sold_on, as_of), math.log(sale.sqft), float(sale.year_built or 0),
        sale.baths, float(sale.beds), sale.lat * MILES_PER_DEGREE, sale.lon * east_scale,
    ]


def _east_scale(lat: float) -> float:
    return MILES_PER_DEGREE * math.cos(math.radians(lat))


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; ``None`` when the system is singular."""
    size = len(vector)
    rows = [[*matrix[i], vector[i]] for i in range(size)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        if abs(rows[pivot][col]) < 1e-12:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(size):
            if r != col:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    return [rows[i][size] / rows[i][i] for i in range(size)]


def area_adjustments(sales: Sequence[Sale], as_of: date) -> Adjustments:
    """Least squares of log price on the month of sale, log living area, year built, baths, beds and
    position (miles north and east) over ``sales``, each zip's own mean taken out (so a pricier zip selling
    later does not pass for inflation, nor a zip of bigger homes for a size premium). A feature some sales
    lack, or that does not vary, keeps its default. Fewer than ``TREND_MIN_SALES`` sales, or a singular
    fit: no adjustment but the default size elasticity. Each coefficient is clipped to a plausible range
    (the trend to ±``TREND_LIMIT``, the elasticity to [0.3, 1])."""
    if len(sales) < TREND_MIN_SALES:
        return Adjustments()
    located = all((s.lat, s.lon) != (0.0, 0.0) for s in sales)
    east_scale = _east_scale(sum(s.lat for s in sales) / len(sales))
    features = [_features(s, as_of, east_scale) for s in sales]
    # A feature is fitted only when every sale has it and it varies (else its default stands).
    varies = [max(f[k] for f in features) - min(f[k] for f in features) > 1e-9 for k in range(len(FEATURES))]
    have = [True, True, all(s.year_built for s in sales), True, True, located, located]
    use = [h and v for h, v in zip(have, varies, strict=True)]
    if not any(use):
        return Adjustments()
    groups: dict[str, list[tuple[list[float], float]]] = defaultdict(list)
    for sale, feature in zip(sales, features, strict=True):
        row = [x for x, keep in zip(feature, use, strict=True) if keep]
        groups[sale.zip].append((row, math.log(sale.price)))
    width = sum(use)
    xtx = [[0.0] * width for _ in range(width)]
    xty = [0.0] * width
    for points in groups.values():
        if len(points) < 2:
            continue
        mean_x = [sum(p[0][k] for p in points) / len(points) for k in range(width)]
        mean_y = sum(p[1] for p in points) / len(points)
        for x, y in points:
            dx = [x[k] - mean_x[k] for k in range(width)]
            dy = y - mean_y
            for i in range(width):
                xty[i] += dx[i] * dy
                for j in range(width):
                    xtx[i][j] += dx[i] * dx[j]
    for i in range(width):  # a touch of ridge keeps a feature with no spread from blowing up
        xtx[i][i] += 1e-6 + 1e-3 * xtx[i][i]
    solved = _solve(xtx, xty)
    if solved is None:
        return Adjustments()
    coefs = iter(solved)
    defaults = Adjustments()
    values = {name: (next(coefs) if keep else getattr(defaults, name))
              for name, keep in zip(FEATURES, use, strict=True)}
    return Adjustments(
        months=max(-TREND_LIMIT, min(TREND_LIMIT, values["months"])),
        log_sqft=max(0.3, min(1.0, values["log_sqft"])),
        year_built=max(-0.02, min(0.02, values["year_built"])),
        baths=max(-0.15, min(0.15, values["baths"])),
        beds=max(-0.15, min(0.15, values["beds"])),
        north=max(-GRADIENT_LIMIT, min(GRADIENT_LIMIT, values["north"])),
        east=max(-GRADIENT_LIMIT, min(GRADIENT_LIMIT, values["east"])),
        sales=len(sales),
    )


def adjusted_value(sale: Sale, subject: Subject, adjustments: Adjustments, as_of: date) -> float:
    """What ``sale`` implies for the subject at ``as_of``: its price moved by the area's trend and by the
    adjustment for each difference the subject's known facts show."""
    log_change = adjustments.months * months_between(sale.sold_on, as_of)
    if subject.sqft:
        log_change += adjustments.log_sqft * math.log(subject.sqft / sale.sqft)
    if subject.year_built and sale.year_built:
        log_change += adjustments.year_built * (subject.year_built - sale.year_built)
    if subject.baths is not None and sale.baths:
        log_change += adjustments.baths * (subject.baths - sale.baths)
    if subject.beds is not None and sale.beds:
        log_change += adjustments.beds * (subject.beds - sale.beds)
    if subject.lat is not None and subject.lon is not None and (sale.lat, sale.lon) != (0.0, 0.0):
        log_change += adjustments.north * (subject.lat - sale.lat) * MILES_PER_DEGREE
        log_change += adjustments.east * (subject.lon - sale.lon) * _east_scale(subject.lat)
    return sale.price * math.exp(log_change)


def _weighted_quantile(pairs: Sequence[tuple[float, float]], q: float) -> float:
    """The ``q`` quantile of (value, weight) pairs: the value where the cumulative weight, taken at the
    middle of each value's share, reaches ``q`` (interpolated; equal weights give the plain median)."""
    ordered = sorted(pairs)
    total = sum(w for _, w in ordered)
    if len(ordered) == 1 or total <= 0:
        return ordered[len(ordered) // 2][0]
    cumulative = 0.0
    points: list[tuple[float, float]] = []
    for value, weight in ordered:
        points.append(((cumulative + weight / 2) / total, value))
        cumulative += weight
    if q <= points[0][0]:
        return points[0][1]
    for (p0, v0), (p1, v1) in itertools.pairwise(points):
        if q <= p1:
            return v0 + (v1 - v0) * (q - p0) / (p1 - p0) if p1 > p0 else v1
    return points[-1][1]


@dataclass(frozen=True)
class _Comp:
    sale: Sale
    value: float  # what this sale implies for the subject, at as_of
    weight: float


def _matches(sale: Sale, subject: Subject, step: Step, since: date, distance: float | None) -> bool:
    if sale.sold_on < since:
        return False
    if distance is not None:
        if distance > step.radius_miles:
            return False
    elif not in_area(sale, subject, step.radius_miles, zip_only=step.area == "zip"):
        return False
    if (step.sqft_band is not None and subject.sqft
            and abs(sale.sqft - subject.sqft) > step.sqft_band * subject.sqft):
        return False
    return not (
        step.age_band is not None and subject.year_built and sale.year_built
        and abs(sale.year_built - subject.year_built) > step.age_band
    )


def _weight(sale: Sale, subject: Subject, as_of: date, distance: float | None) -> float:
    weight = 1.0
    if distance is not None:
        weight /= 1.0 + (distance / 0.25) ** 2
    elif subject.zip and sale.zip != subject.zip:
        weight *= 0.5
    if subject.sqft:
        weight *= math.exp(-2.0 * abs(math.log(sale.sqft / subject.sqft)))
    if subject.year_built and sale.year_built:
        weight *= math.exp(-abs(sale.year_built - subject.year_built) / 10.0)
    if subject.beds is not None and sale.beds:
        weight /= 1.0 + 0.3 * abs(sale.beds - subject.beds)
    return weight * math.exp(-months_between(sale.sold_on, as_of) / 24.0)


def _iqr_filter(comps: list[_Comp]) -> list[_Comp]:
    if len(comps) < 5:
        return comps
    logs = sorted(math.log(c.value) for c in comps)
    n = len(logs)

    def quantile(q: float) -> float:
        position = q * (n - 1)
        low = math.floor(position)
        high = min(low + 1, n - 1)
        return logs[low] + (logs[high] - logs[low]) * (position - low)

    q1, q3 = quantile(0.25), quantile(0.75)
    spread = q3 - q1
    kept = [c for c in comps if q1 - 1.5 * spread <= math.log(c.value) <= q3 + 1.5 * spread]
    return kept if len(kept) >= MIN_COMPS else comps


def appraise(
    subject: Subject, sales: Iterable[Sale], *, as_of: date, steps: Sequence[Step] = STEPS
) -> Valuation:
    """Value ``subject`` from ``sales`` (typically an area's sales from a comps provider) as of ``as_of``.

    Raises ``NoComparablesError`` (a ``ValueError``) when fewer than ``MIN_COMPS`` comparable sales are
    found even at the widest step. See the module docstring for each stage.
    """
    widest = max(step.months for step in steps)
    since = months_before(as_of, widest)
    own = _key(subject.address)
    pool = [
        sale for sale in sales
        if sale.property_type == subject.property_type and since <= sale.sold_on < as_of
        and sale.sqft > 0 and sale.price > 0 and not (own and is_subject(sale, subject))
    ]
    distances: dict[int, float] = {}
    if subject.lat is not None and subject.lon is not None:
        distances = {id(s): haversine_miles(subject.lat, subject.lon, s.lat, s.lon) for s in pool}
        radius = max(step.radius_miles for step in steps)
        pool = [s for s in pool if distances[id(s)] <= radius]
    else:
        pool = [s for s in pool if in_area(s, subject, 0.0)]
    # The adjustments come from the nearest sales of the area (the most recent without coordinates): local
    # enough to describe this market, and a bounded cost however dense the area is.
    nearest = sorted(pool, key=lambda s: (distances.get(id(s), 0.0), -s.sold_on.toordinal()))
    adjustments = area_adjustments(nearest[:ADJUSTMENT_SALES], as_of)
    found: list[Sale] = []
    for step in steps:
        cutoff = months_before(as_of, step.months)
        found = [s for s in pool if _matches(s, subject, step, cutoff, distances.get(id(s)))]
        if len(found) >= TARGET_COMPS:
            break
    if len(found) < MIN_COMPS:
        where = subject.zip or subject.city or (
            f"{subject.lat:.4f},{subject.lon:.4f}" if subject.lat is not None and subject.lon is not None
            else "an unknown area"
        )
        raise NoComparablesError(
            f"{len(found)} comparable {subject.property_type.replace('_', ' ')} sales near"
            f" {subject.address or 'the property'} ({where}); at least {MIN_COMPS} are needed"
        )
    comps = []
    for sale in found:
        value = adjusted_value(sale, subject, adjustments, as_of)
        comps.append(_Comp(sale, value, _weight(sale, subject, as_of, distances.get(id(sale)))))
    comps.sort(key=lambda c: (-c.weight, c.sale.sold_on, c.sale.address))
    comps = _iqr_filter(comps[:MAX_COMPS])
    pairs = [(c.value, c.weight) for c in comps]
    raw = _weighted_quantile(pairs, 0.5)
    floor = raw * (RANGE_FLOOR + RANGE_PER_COMP / math.sqrt(len(comps)))
    q1, q3 = _weighted_quantile(pairs, 0.25), _weighted_quantile(pairs, 0.75)
    low = min(raw - RANGE_IQR_SCALE * (raw - q1), raw - floor)
    high = max(raw + RANGE_IQR_SCALE * (q3 - raw), raw + floor)
    value = round_to_thousand(raw)
    spread = (high - low) / 2 / raw
    confidence = (
        "high" if len(comps) >= 5 and spread <= 0.22 else "medium" if spread <= 0.30 else "low"
    )
    per_sqft = sorted(c.sale.price_per_sqft for c in comps)
    return Valuation(
        value=value,
        low=min(round_to_thousand(low), value),
        high=max(round_to_thousand(high), value),
        price_per_sqft_median=per_sqft[len(per_sqft) // 2] if len(per_sqft) % 2
        else (per_sqft[len(per_sqft) // 2 - 1] + per_sqft[len(per_sqft) // 2]) / 2,
        comps=[c.sale for c in sorted(comps, key=lambda c: -c.weight)],
        subject=subject,
        as_of=as_of,
        method="price_per_sqft" if subject.sqft else "median_price",
        confidence=confidence,
        trend_per_month=adjustments.months,
    )


class SalesIndex:
    """Sales in memory, indexed for area queries: a grid of cells about 3.5 miles tall, each cell's sales
    sorted by close date, plus zip and city lists. Holds any number of sales; the demo provider and the
    benchmark use it."""

    CELL_DEGREES = 0.05

    def __init__(self, sales: Iterable[Sale] = ()) -> None:
        self._cells: dict[tuple[PropertyType, int, int], list[tuple[date, int]]] = defaultdict(list)
        self._places: dict[tuple[PropertyType, str], list[tuple[date, int]]] = defaultdict(list)
        self._sales: list[Sale] = []
        for sale in sales:
            self.add(sale)

    def __len__(self) -> int:
        return len(self._sales)

    @property
    def sales(self) -> list[Sale]:
        return list(self._sales)

    def _cell(self, lat: float, lon: float) -> tuple[int, int]:
        return math.floor(lat / self.CELL_DEGREES), math.floor(lon / self.CELL_DEGREES)

    def add(self, sale: Sale) -> None:
        number = len(self._sales)
        self._sales.append(sale)
        item = (sale.sold_on, number)
        bisect.insort(self._cells[(sale.property_type, *self._cell(sale.lat, sale.lon))], item)
        bisect.insort(self._places[(sale.property_type, "zip:" + sale.zip)], item)
        bisect.insort(self._places[(sale.property_type, f"city:{_key(sale.city)}")], item)

    def area(
        self, subject: Subject, *, as_of: date, radius_miles: float = AREA_RADIUS_MILES,
        months: int = AREA_MONTHS,
    ) -> list[Sale]:
        """Sales of the subject's type closed in the ``months`` before ``as_of`` (not on it), within
        ``radius_miles`` of the subject, or in its zip and city when it has no coordinates."""
        since = months_before(as_of, months)
        lists: list[list[tuple[date, int]]] = []
        if subject.lat is not None and subject.lon is not None:
            lat_span = radius_miles / 69.0 + self.CELL_DEGREES
            lon_span = radius_miles / max(1.0, 69.0 * math.cos(math.radians(subject.lat))) + self.CELL_DEGREES
            i0, j0 = self._cell(subject.lat - lat_span, subject.lon - lon_span)
            i1, j1 = self._cell(subject.lat + lat_span, subject.lon + lon_span)
            for i in range(i0, i1 + 1):
                for j in range(j0, j1 + 1):
                    found = self._cells.get((subject.property_type, i, j))
                    if found:
                        lists.append(found)
        else:
            if subject.zip:
                lists.append(self._places.get((subject.property_type, "zip:" + subject.zip), []))
            if subject.city:
                lists.append(self._places.get((subject.property_type, f"city:{_key(subject.city)}"), []))
        chosen: dict[int, Sale] = {}
        for items in lists:
            start = bisect.bisect_left(items, (since, -1))
            end = bisect.bisect_left(items, (as_of, -1))
            for _, number in items[start:end]:
                sale = self._sales[number]
                if subject.lat is None or subject.lon is None or in_area(sale, subject, radius_miles):
                    chosen[number] = sale
        return [chosen[n] for n in sorted(chosen)]
