"""Fixtures of the service tests (helpers live in ``stack.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .stack import Stack, running_stack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """One service for a whole test module (tests use their own contacts, so they do not interfere)."""
    with running_stack() as shared:
        yield shared
