"""Marketplace installs: the code exchange, INSTALL and UNINSTALL events, and each location's install state.

Every path ends in the same state whatever order GHL's events arrive in (the code exchange and the INSTALL
webhook race, GHL issue #294):

* a sub-account install's code exchange stores the Location token and marks the location ``installed``;
* an agency (Company) or bulk install's exchange stores the Company token, lists the installed locations
  (``GET /oauth/installedLocations``) and mints a Location token for each one that has none
  (``POST /oauth/locationToken``), every agency call through the company's rate-limit bucket;
* a location INSTALL seen before the exchange marks the location ``pending`` (the exchange completes it);
  seen after, it is a no-op, or mints the location's token when an agency token is stored;
* an agency INSTALL mints tokens for the agency's installed locations when its token is stored;
* UNINSTALL of a location (or of an agency: each of its locations) deletes the location's tokens, marks it
  ``uninstalled`` and cancels its leads through ``on_uninstall`` (jobs removed, status ``cancelled`` with
  reason "app uninstalled", state kept). A reinstall marks it ``installed`` again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ghl_real_estate_ai.errors import InvalidEventError
from ghl_real_estate_ai.integrations.oauth import (
    INSTALLED,
    UNINSTALLED,
    MarketplaceApp,
    RedisRefreshLock,
    TokenRecord,
    TokenVault,
    company_token,
)

log = logging.getLogger(__name__)

PENDING = "pending"
UNINSTALL_REASON = "app uninstalled"


class Installations:
    """Applies installs and uninstalls to the :class:`TokenVault` (see the module docstring)."""

    def __init__(self, vault: TokenVault, app: MarketplaceApp, lock: RedisRefreshLock, *,
                 company_limiter: Any, redirect_uri: str | None,
                 on_uninstall: Callable[[str], Awaitable[int]],
                 on_installed: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.vault = vault
        self.app = app
        self._lock = lock
        self._limiter = company_limiter
        self._redirect_uri = redirect_uri
        self._on_uninstall = on_uninstall
        self._on_installed = on_installed

    async def exchange(self, code: str) -> list[str]:
        """``GET /oauth/callback?code=``: exchange the code and store the tokens; the installed locations."""
        record, body = await self.app.exchange_code(code, self._redirect_uri)
        if record.user_type == "Company":
            if not record.company_id:
                raise InvalidEventError("the agency token names no companyId")
            await self.vault.save("company", record.company_id, record)
            log.info("agency %s installed the app (bulk: %s)", record.company_id,
                     bool(body.get("isBulkInstallation")))
            return await self.sync_company(record.company_id)
        if not record.location_id:
            raise InvalidEventError("the location token names no locationId")
        await self._store_location(record)
        return [record.location_id]

    async def _store_location(self, record: TokenRecord) -> None:
        assert record.location_id is not None
        await self.vault.save("location", record.location_id, record)
        await self.vault.set_state(record.location_id, INSTALLED, company_id=record.company_id)
        log.info("location %s installed", record.location_id)
        if self._on_installed is not None:
            await self._on_installed(record.location_id)

    async def _mint(self, company: TokenRecord, location_id: str) -> None:
        assert company.company_id is not None
        async with self._limiter.slot(f"company:{company.company_id}"):
            record = await self.app.location_token(company, location_id)
        await self._store_location(record)

    async def sync_company(self, company_id: str) -> list[str]:
        """Mint a Location token for every installed location of the agency that has none (or is not
        ``installed``); returns every installed location of the agency."""
        company = await company_token(self.vault, self.app, self._lock, company_id)
        if company is None:
            return []
        async with self._limiter.slot(f"company:{company_id}"):
            locations = await self.app.installed_locations(company)
        for location_id in locations:
            state = (await self.vault.state(location_id) or {}).get("state")
            if state == INSTALLED and await self.vault.load("location", location_id) is not None:
                continue
            await self._mint(company, location_id)
        return locations

    def _check_app(self, payload: dict[str, Any]) -> None:
        app_id = payload.get("appId")
        if app_id != self.app.app_id:
            raise InvalidEventError(f"appId {str(app_id)[:40]!r} is not this app's")

    async def on_install(self, payload: dict[str, Any]) -> str:
        """An INSTALL event (signature already verified); what became of it."""
        self._check_app(payload)
        location_id, company_id = payload.get("locationId"), payload.get("companyId")
        if isinstance(location_id, str) and location_id:
            state = (await self.vault.state(location_id) or {}).get("state")
            if state == INSTALLED and await self.vault.load("location", location_id) is not None:
                return "already installed"
            if isinstance(company_id, str) and company_id:
                company = await company_token(self.vault, self.app, self._lock, company_id)
                if company is not None:
                    await self._mint(company, location_id)
                    return "installed from the agency token"
            await self.vault.set_state(location_id, PENDING,
                                       company_id=company_id if isinstance(company_id, str) else None)
            return "pending the code exchange"
        if isinstance(company_id, str) and company_id:
            installed = await self.sync_company(company_id)
            return f"agency install: {len(installed)} location(s)" if installed else \
                "agency install pending the code exchange"
        raise InvalidEventError("INSTALL names neither locationId nor companyId")

    async def on_uninstall(self, payload: dict[str, Any]) -> str:
        """An UNINSTALL event: one location, or every location of an agency."""
        self._check_app(payload)
        location_id, company_id = payload.get("locationId"), payload.get("companyId")
        if isinstance(location_id, str) and location_id:
            cancelled = await self.uninstall_location(location_id)
            return f"location uninstalled, {cancelled} lead(s) cancelled"
        if isinstance(company_id, str) and company_id:
            total = 0
            locations = await self.vault.company_locations(company_id)
            for loc in locations:
                total += await self.uninstall_location(loc)
            await self.vault.delete("company", company_id)
            return f"agency uninstalled: {len(locations)} location(s), {total} lead(s) cancelled"
        raise InvalidEventError("UNINSTALL names neither locationId nor companyId")

    async def uninstall_location(self, location_id: str) -> int:
        await self.vault.delete("location", location_id)
        await self.vault.set_state(location_id, UNINSTALLED, reason=UNINSTALL_REASON)
        cancelled = await self._on_uninstall(location_id)
        log.info("location %s uninstalled: %d lead(s) cancelled", location_id, cancelled)
        return cancelled
