"""Where comparable sales come from: one interface (``CompsSource``), chosen by ``LEAD_BOT_COMPS``.

* ``demo`` (default): ``IndexedComps`` over the synthetic sales shipped with the package (four cities).
* ``store``: ``RedisCompsStore``, the sales ``lead-bot comps import`` loaded from an MLS export.
* ``reso``: ``ResoCompsProvider``, closed sales queried from the MLS's RESO Web API (cached a day in Redis).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol

from ghl_real_estate_ai.conversation.appraisal import AREA_MONTHS, AREA_RADIUS_MILES, SalesIndex
from ghl_real_estate_ai.conversation.cma import Sale, Subject, load_sales

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ghl_real_estate_ai.config import Settings


class CompsSource(Protocol):
    """An area's closed sales for a subject: its type, closed in the ``months`` before ``as_of`` (not on
    it), within ``radius_miles`` of it, or in its zip and city when it has no coordinates. Raises an
    ``IntegrationError`` when the source cannot be reached."""

    async def area_sales(
        self, subject: Subject, *, as_of: date, radius_miles: float = AREA_RADIUS_MILES,
        months: int = AREA_MONTHS,
    ) -> list[Sale]: ...


class IndexedComps:
    """Sales held in memory (``SalesIndex``): given ones, or the bundled synthetic set, read on first use."""

    def __init__(self, sales: Iterable[Sale] | None = None) -> None:
        self._given = None if sales is None else list(sales)
        self._index: SalesIndex | None = None
        self._lock = threading.Lock()

    @property
    def index(self) -> SalesIndex:
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index = SalesIndex(load_sales() if self._given is None else self._given)
        return self._index

    async def area_sales(
        self, subject: Subject, *, as_of: date, radius_miles: float = AREA_RADIUS_MILES,
        months: int = AREA_MONTHS,
    ) -> list[Sale]:
        return self.index.area(subject, as_of=as_of, radius_miles=radius_miles, months=months)


def comps_from_settings(settings: Settings, redis: Redis) -> Any:
    """The ``CompsSource`` ``LEAD_BOT_COMPS`` names (see the module docstring). A RESO provider holds an
    HTTP client: close it with ``await source.aclose()``."""
    if settings.comps == "store":
        from ghl_real_estate_ai.comps.store import RedisCompsStore

        return RedisCompsStore(redis)
    if settings.comps == "reso":
        from ghl_real_estate_ai.comps.reso import ResoClient, ResoCompsProvider

        assert settings.reso_url is not None  # Settings.from_env checked it
        client = ResoClient(
            settings.reso_url, token=settings.reso_token, client_id=settings.reso_client_id,
            client_secret=settings.reso_client_secret, token_url=settings.reso_token_url,
            scope=settings.reso_scope, page_size=settings.reso_page_size,
            requests_per_second=settings.reso_requests_per_second,
        )
        return ResoCompsProvider(client, redis)
    return IndexedComps()


__all__ = ["CompsSource", "IndexedComps", "comps_from_settings"]
