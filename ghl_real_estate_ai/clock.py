"""Clocks: the only source of "now" for business logic, so tests and the demo can run a month in a second."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current (virtual) time, timezone-aware UTC."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that only moves when told to. Thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            if when < self._now:
                raise ValueError(f"FakeClock cannot go back from {self._now} to {when}")
            self._now = when

    def advance(self, delta: timedelta | float) -> datetime:
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        with self._lock:
            self._now += step
            return self._now


class ScaledClock:
    """Virtual time that runs ``scale`` virtual seconds per real second from an anchor.

    ``anchor_virtual`` is the virtual time at real monotonic instant ``anchor_real``. The service persists
    the last virtual time it saw so virtual time never jumps back across restarts (see ``services``).
    """

    def __init__(self, scale: float, anchor_virtual: datetime | None = None) -> None:
        if scale <= 0:
            raise ValueError("time scale must be positive")
        self.scale = scale
        self._anchor_virtual = anchor_virtual or datetime.now(UTC)
        self._anchor_real = time.monotonic()

    def now(self) -> datetime:
        elapsed = time.monotonic() - self._anchor_real
        return self._anchor_virtual + timedelta(seconds=elapsed * self.scale)

    def real_delay(self, until: datetime) -> float:
        """Real seconds from now until the virtual instant ``until`` (0 if it has passed)."""
        return max(0.0, (until - self.now()).total_seconds() / self.scale)
