"""The service judged outside-in: every touch of the 3-7-30 sequence reaches the fake GHL or Retell exactly
once, never before it is due, within 12 virtual hours of when it could first go, and never in quiet hours;
under SIGKILLs of the service and of Redis, and under GHL errors and hangs. See ``judge`` for the rules and
allowances, ``vclock`` for the measurement of virtual time, ``harness`` for the runs."""

from __future__ import annotations

import pytest

from .conftest import RunPool
from .scenarios import COLLECTED_SEQUENCE_RUNS, LATENCY_RUNS

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("run_id", [spec.id for spec in COLLECTED_SEQUENCE_RUNS])
def test_every_touch_reaches_the_fakes_once_on_time_and_in_window(run_id: str, e2e_runs: RunPool) -> None:
    result = e2e_runs.result(run_id)
    print(result.report())
    assert result.verdict is not None and not result.failures, result.report()
    assert result.verdict.judged >= 4 * result.leads, result.report()  # day_3 .. day_30 of every lead


@pytest.mark.parametrize("run_id", [spec.id for spec in LATENCY_RUNS])
def test_overdue_steps_fire_promptly_after_a_sigkill_and_restart(run_id: str, e2e_runs: RunPool) -> None:
    result = e2e_runs.result(run_id)
    print(result.report())
    assert result.verdict is not None and not result.failures, result.report()
