"""Helpers shared by the scheduling tests: a recording fake CRM, the in-process bot bundle, polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from ghl_real_estate_ai.services.lead_sequence_scheduler import LeadSequenceScheduler
from ghl_real_estate_ai.services.lead_sequence_state_service import LeadSequenceStateService
from ghl_real_estate_ai.services.locks import RedisLeadLock
from ghl_real_estate_ai.services.runner import LeadBotRunner
from ghl_real_estate_ai.services.timebase import Timebase
from ghl_real_estate_ai.testing.fakes import FakeCrm

# Monday 15:00 UTC = 09:00 in Austin: every step of a lead enrolled now falls inside its send window.
START = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)


class TimedCrm(FakeCrm):
    """FakeCrm that records the virtual time of every call attempt (failed ones included)."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.attempts: list[tuple[str, str, datetime]] = []  # (method, contact id, virtual time)

    def _call(self, name: str, *args: Any) -> None:
        self.attempts.append((name, str(args[0]) if args else "", self.clock.now()))
        super()._call(name, *args)


@dataclass
class Bot:
    """One in-process Lead Bot: what a ``lead-bot serve`` process holds, minus the web layer."""

    redis: aioredis.Redis
    timebase: Timebase
    crm: TimedCrm
    runner: LeadBotRunner
    scheduler: LeadSequenceScheduler
    index: LeadSequenceStateService
    lock: RedisLeadLock


async def wait_for(
    predicate: Callable[[], Awaitable[bool] | bool],
    *,
    within: float = 10.0,
    interval: float = 0.01,
    message: str = "condition",
) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``within`` real seconds (no bare sleeps)."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {message}")
        await asyncio.sleep(interval)
