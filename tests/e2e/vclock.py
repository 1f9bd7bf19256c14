"""The service's virtual time, measured from outside: a background poller of ``GET /healthz`` and the mapping
from a monotonic instant (a fake's ``RecordedRequest.at``) to the service's virtual time.

The service promises that virtual time is affine in wall time, ``virtual = V0 + (wall - W0) * scale``, and
that it keeps running while the service is down. Each poll gives one reading: the monotonic clock just before
the request left (``before``), just after the answer came back (``after``) and the virtual ``now`` in the
answer. The service read its clock somewhere between ``before`` and ``after``, so every reading bounds the
offset ``virtual - scale * monotonic`` to an interval of width ``scale * (after - before)``.

:meth:`VirtualClock.map` intersects the intervals of the readings near the instant asked about (within
``NEAR`` real seconds; across a downtime, the readings on both sides of it, which extrapolates with the
scale). The estimate is the middle of the intersection and its *uncertainty* is half its width. When the
readings contradict each other (the service re-anchored its clock, or the wall clock was slewed), the median
of the readings' midpoint offsets is used and the uncertainty covers their spread.

``resolution`` is the median half round trip of a poll, in virtual seconds: the typical time between a
process reading its clock and a request reaching the other side on this machine. The test's measurement
allowance (``eps``) is ``uncertainty + resolution``: a few virtual minutes at scale 86400.
"""

from __future__ import annotations

import bisect
import contextlib
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

NEAR = 0.5  # real seconds each side of an instant whose readings are intersected
MIN_READINGS = 4


@dataclass(frozen=True)
class Reading:
    before: float  # time.monotonic() just before the poll
    after: float  # time.monotonic() once the answer was read
    status: int | None  # HTTP status, None when the service could not be reached
    virtual: float | None  # the answer's ``now`` as POSIX seconds, None when there was none

    @property
    def mid(self) -> float:
        return (self.before + self.after) / 2


@dataclass(frozen=True)
class Mapped:
    """A virtual instant and how well it is known (seconds either side)."""

    when: datetime
    uncertainty: float
    eps: float  # the measurement allowance: uncertainty + the clock's resolution


def parse_iso(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class VirtualClock:
    """Polls ``{base_url}/healthz`` from a daemon thread (every ``interval`` s while the service answers 200,
    every ``fast_interval`` s otherwise, so a restart is seen within ~10 ms) and maps instants."""

    def __init__(self, base_url: str, scale: float, *, interval: float = 0.06,
                 fast_interval: float = 0.01) -> None:
        self.base_url = base_url.rstrip("/")
        self.scale = float(scale)
        self.interval = interval
        self.fast_interval = fast_interval
        self._readings: list[Reading] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.poll_errors = 0

    # -- polling -----------------------------------------------------------------------------------

    def start(self) -> VirtualClock:
        self._thread = threading.Thread(target=self._run, name=f"vclock-{self.base_url}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(1.0, connect=0.5)) as client:
            while not self._stop.is_set():
                reading = self._poll(client)
                with self._lock:
                    self._readings.append(reading)
                self._stop.wait(self.interval if reading.status == 200 else self.fast_interval)

    def _poll(self, client: httpx.Client) -> Reading:
        before = time.monotonic()
        try:
            response = client.get(self.base_url + "/healthz")
            after = time.monotonic()
            virtual: float | None = None
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                virtual = parse_iso(response.json()["now"]).timestamp()
            return Reading(before, after, response.status_code, virtual)
        except Exception:  # the poller survives anything: a down service, a reset, a bad body
            self.poll_errors += 1
            return Reading(before, time.monotonic(), None, None)

    def readings(self) -> list[Reading]:
        with self._lock:
            return list(self._readings)

    def _timed(self) -> list[Reading]:
        return [r for r in self.readings() if r.virtual is not None]

    # -- health ------------------------------------------------------------------------------------

    def healthy_after(self, mono: float) -> Reading | None:
        """The first 200 reading taken entirely after the monotonic instant ``mono``."""
        for reading in self.readings():
            if reading.before >= mono and reading.status == 200:
                return reading
        return None

    def wait_healthy_after(self, mono: float, timeout: float, stop: threading.Event | None = None) -> Reading:
        deadline = time.monotonic() + timeout
        while True:
            found = self.healthy_after(mono)
            if found is not None:
                return found
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                raise TimeoutError(f"the service did not answer /healthz 200 within {timeout:g}s")
            time.sleep(0.005)

    def wait_first_reading(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self._timed()) < MIN_READINGS:
            if time.monotonic() > deadline:
                raise TimeoutError("no /healthz reading with a virtual 'now'")
            time.sleep(0.01)

    # -- mapping -----------------------------------------------------------------------------------

    @property
    def resolution(self) -> float:
        """Median half round trip of the successful polls, in virtual seconds."""
        halves = [(r.after - r.before) / 2 for r in self._timed()]
        return self.scale * statistics.median(halves) if halves else 0.0

    def map(self, at: float) -> Mapped:
        """The virtual instant at the monotonic instant ``at``."""
        timed = self._timed()
        if not timed:
            raise RuntimeError("no clock reading yet")
        mids = [r.mid for r in timed]
        i = bisect.bisect_left(mids, at)
        lo_i = bisect.bisect_left(mids, at - NEAR)
        hi_i = bisect.bisect_right(mids, at + NEAR)
        near = timed[lo_i:hi_i]
        if len(near) < MIN_READINGS:  # across a downtime or past the ends: the closest on each side
            near = timed[max(0, i - 8):i + 8]
        s = self.scale
        low = max(r.virtual - s * r.after for r in near)  # type: ignore[operator]
        high = min(r.virtual - s * r.before for r in near)  # type: ignore[operator]
        if low <= high:
            offset, uncertainty = (low + high) / 2, (high - low) / 2
        else:
            offsets = [r.virtual - s * r.mid for r in near]  # type: ignore[operator]
            offset = statistics.median(offsets)
            spread = max(abs(o - offset) for o in offsets)
            uncertainty = spread + max(s * (r.after - r.before) / 2 for r in near)
        when = datetime.fromtimestamp(offset + s * at, UTC)
        return Mapped(when, uncertainty, uncertainty + self.resolution)

    def virtual(self, at: float) -> datetime:
        return self.map(at).when

    def now(self) -> datetime:
        return self.virtual(time.monotonic())

    def real_for(self, when: datetime) -> float:
        """The monotonic instant at which virtual time reaches ``when`` (from the latest readings)."""
        timed = self._timed()[-MIN_READINGS * 4:]
        offset = statistics.median(r.virtual - self.scale * r.mid for r in timed)  # type: ignore[operator]
        return (when.timestamp() - offset) / self.scale

    def sleep_until(self, when: datetime, stop: threading.Event | None = None) -> None:
        """Block until the virtual instant ``when`` (a scheduling wait, never part of an assertion)."""
        target = self.real_for(when)
        while True:
            remaining = target - time.monotonic()
            if remaining <= 0:
                return
            if stop is not None and stop.wait(min(remaining, 0.05)):
                raise InterruptedError("the run was stopped")
            if stop is None:
                time.sleep(min(remaining, 0.05))


def hours(delta: timedelta | float) -> float:
    seconds = delta.total_seconds() if isinstance(delta, timedelta) else delta
    return seconds / 3600
