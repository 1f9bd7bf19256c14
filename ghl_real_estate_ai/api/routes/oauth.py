"""``GET /oauth/callback?code=…``: the Marketplace app's OAuth redirect (under ``LEAD_BOT_PUBLIC_URL``).

It exchanges the code and stores the tokens (a sub-account install: that location's; an agency or bulk
install: the agency's, then one minted per installed location) and answers JSON
``{"status": "installed", "locations": [...]}``. 404 outside Marketplace mode, 400 without a code or when
GHL refuses it, 503 when GHL cannot be reached (the user can reload the page).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from ghl_real_estate_ai.api.deps import ApiError, ServiceDep
from ghl_real_estate_ai.errors import IntegrationError, InvalidEventError, TransientIntegrationError

router = APIRouter(tags=["oauth"])


@router.get("/oauth/callback")
async def oauth_callback(service: ServiceDep,
                         code: Annotated[str | None, Query(max_length=512)] = None) -> JSONResponse:
    if not service.settings.marketplace or service.installations is None:
        raise ApiError(404, "not in Marketplace mode (set GHL_OAUTH_CLIENT_ID and GHL_OAUTH_CLIENT_SECRET)")
    if not code:
        raise ApiError(400, "the redirect carries no code")
    try:
        locations = await service.installations.exchange(code)
    except TransientIntegrationError as exc:
        raise ApiError(503, f"GHL could not be reached to finish the install ({exc.detail}); reload "
                       "this page",
                       headers={"Retry-After": "5"}) from None
    except (IntegrationError, InvalidEventError) as exc:
        raise ApiError(400, f"the install could not be completed: {exc}") from None
    return JSONResponse({"status": "installed", "locations": locations})
