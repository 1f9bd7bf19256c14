"""``LEAD_BOT_COMPS`` and the RESO settings: validated once, and the source each value names."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from ghl_real_estate_ai.comps import IndexedComps, comps_from_settings
from ghl_real_estate_ai.comps.reso import ResoCompsProvider
from ghl_real_estate_ai.comps.store import RedisCompsStore
from ghl_real_estate_ai.config import Settings
from ghl_real_estate_ai.errors import ConfigurationError


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(env, dotenv=tmp_path / "none.env")


async def test_each_value_names_its_source(tmp_path: Path) -> None:
    client = aioredis.Redis()  # never connected: choosing a source does no I/O
    assert isinstance(comps_from_settings(_settings(tmp_path), client), IndexedComps)
    store = _settings(tmp_path, LEAD_BOT_COMPS="store")
    assert isinstance(comps_from_settings(store, client), RedisCompsStore)
    reso = _settings(tmp_path, LEAD_BOT_COMPS="RESO", LEAD_BOT_RESO_URL="https://api.example.com/odata/",
                     LEAD_BOT_RESO_CLIENT_ID="id", LEAD_BOT_RESO_CLIENT_SECRET="secret",
                     LEAD_BOT_RESO_TOKEN_URL="https://api.example.com/token", LEAD_BOT_RESO_PAGE_SIZE="1000")
    assert (reso.comps, reso.reso_url, reso.reso_page_size, reso.reso_scope) == (
        "reso", "https://api.example.com/odata", 1000, "api")
    source = comps_from_settings(reso, client)
    assert isinstance(source, ResoCompsProvider) and source.client.page_size == 1000
    await source.aclose()
    await client.aclose()


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"LEAD_BOT_COMPS": "mls"}, "LEAD_BOT_COMPS: expected demo, store or reso"),
        ({"LEAD_BOT_COMPS": "reso"}, "LEAD_BOT_RESO_URL: is not set"),
        ({"LEAD_BOT_COMPS": "reso", "LEAD_BOT_RESO_URL": "https://x/odata"},
         "LEAD_BOT_RESO_TOKEN: is not set"),
        ({"LEAD_BOT_COMPS": "reso", "LEAD_BOT_RESO_URL": "https://x/odata", "LEAD_BOT_RESO_CLIENT_ID": "a"},
         "LEAD_BOT_RESO_TOKEN: is not set"),
        ({"LEAD_BOT_RESO_REQUESTS_PER_SECOND": "fast"},
         "LEAD_BOT_RESO_REQUESTS_PER_SECOND: expected a number"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(
    tmp_path: Path, env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        _settings(tmp_path, **env)
