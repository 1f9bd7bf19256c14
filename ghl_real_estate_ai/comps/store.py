"""The comps store: closed sales imported from an MLS export, kept in Redis and indexed by area so any
process (``serve``, ``lead-bot cma``) can query them.

Keys (all under one hash tag, so a Redis Cluster keeps them in one slot and an import stays one
transaction): ``<prefix>:sale:<id>`` the sale as JSON; ``<prefix>:geo:<type>`` a GEO set of the sales with
coordinates; ``<prefix>:zip:<type>:<zip>`` and ``<prefix>:city:<type>:<state>:<city>`` sets of ids. A sale's
id is its listing key (``ListingKey``, ``MLS #``...) or a digest of its address, place, date and price,
so re-importing a file writes the same keys with the same values: nothing changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

from redis.asyncio import Redis

from ghl_real_estate_ai.conversation.appraisal import AREA_MONTHS, AREA_RADIUS_MILES, in_area
from ghl_real_estate_ai.conversation.cma import Sale, Subject, _key, months_before

DEFAULT_PREFIX = "lead-bot:{comps}"


@dataclass(frozen=True)
class ImportResult:
    loaded: int  # sales in the file
    new: int  # of which the store did not hold before
    changed: int  # of which the store held with other values


class RedisCompsStore:
    """Imported closed sales in Redis. ``area_sales`` is the comps-provider interface."""

    def __init__(self, redis: Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.redis = redis
        self.prefix = prefix

    def _sale_key(self, sale_id: str) -> str:
        return f"{self.prefix}:sale:{sale_id}"

    def _place_keys(self, kind: str, zip_code: str, state: str, city: str) -> list[str]:
        keys = []
        if zip_code:
            keys.append(f"{self.prefix}:zip:{kind}:{zip_code}")
        if city:
            keys.append(f"{self.prefix}:city:{kind}:{_key(state)}:{_key(city)}")
        return keys

    async def import_sales(self, sales: list[Sale]) -> ImportResult:
        """Write ``sales`` (each with a ``key``) in one MULTI/EXEC transaction: all of them or none."""
        if any(not sale.key for sale in sales):
            raise ValueError("every imported sale needs a key")
        existing = await self.redis.mget([self._sale_key(s.key) for s in sales]) if sales else []
        new = changed = 0
        async with self.redis.pipeline(transaction=True) as pipe:
            for sale, before in zip(sales, existing, strict=True):
                payload = json.dumps(sale.to_state(), sort_keys=True)
                if before is None:
                    new += 1
                elif (before.decode() if isinstance(before, bytes) else before) != payload:
                    changed += 1
                pipe.set(self._sale_key(sale.key), payload)
                if (sale.lat, sale.lon) != (0.0, 0.0):
                    pipe.geoadd(f"{self.prefix}:geo:{sale.property_type}", (sale.lon, sale.lat, sale.key))
                for key in self._place_keys(sale.property_type, sale.zip, sale.state, sale.city):
                    pipe.sadd(key, sale.key)
            await pipe.execute()
        return ImportResult(loaded=len(sales), new=new, changed=changed)

    async def count(self) -> int:
        total = 0
        async for _ in self.redis.scan_iter(match=f"{self.prefix}:sale:*", count=1000):
            total += 1
        return total

    async def area_sales(
        self, subject: Subject, *, as_of: date, radius_miles: float = AREA_RADIUS_MILES,
        months: int = AREA_MONTHS,
    ) -> list[Sale]:
        """Sales of the subject's type closed in the ``months`` before ``as_of``, within ``radius_miles``
        (GEOSEARCH), or in its zip and city when it has no coordinates."""
        kind = subject.property_type
        ids: set[Any]
        if subject.lat is not None and subject.lon is not None:
            found = await self.redis.geosearch(
                f"{self.prefix}:geo:{kind}", longitude=subject.lon, latitude=subject.lat, radius=radius_miles,
                unit="mi",
            )
            ids = set(found)
        else:
            keys = self._place_keys(kind, subject.zip, subject.state, subject.city)
            ids = set(await self.redis.sunion(keys)) if keys else set()
        if not ids:
            return []
        ordered = sorted(i.decode() if isinstance(i, bytes) else str(i) for i in ids)
        since = months_before(as_of, months)
        sales = []
        for raw in await self.redis.mget([self._sale_key(i) for i in ordered]):
            if raw is None:
                continue
            sale = Sale.from_state(json.loads(raw))
            if not since <= sale.sold_on < as_of:
                continue
            if subject.lat is None or subject.lon is None or in_area(sale, subject, radius_miles):
                sales.append(sale)
        return sales
