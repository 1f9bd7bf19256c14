"""Fixtures for the integration-client tests: the fake GHL and Retell servers and a virtual clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ghl_real_estate_ai.testing.fake_http import VirtualTime
from ghl_real_estate_ai.testing.ghl_server import FakeGHLServer
from ghl_real_estate_ai.testing.retell_server import FakeRetellServer


@pytest.fixture
def vtime() -> VirtualTime:
    return VirtualTime()


@pytest.fixture
def ghl() -> Iterator[FakeGHLServer]:
    with FakeGHLServer() as server:
        yield server


@pytest.fixture
def retell() -> Iterator[FakeRetellServer]:
    with FakeRetellServer() as server:
        yield server
