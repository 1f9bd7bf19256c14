"""``heap.settle``: what start-up built is frozen out of the collector's reach, and the thresholds a
long-running service uses are set."""

from __future__ import annotations

import gc

from ghl_real_estate_ai import heap


def test_settle_freezes_the_start_up_heap_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    built = [{"n": i} for i in range(1000)]  # alive, as a compiled graph would be
    try:
        heap.settle()
        assert gc.get_freeze_count() >= len(built)
        assert gc.get_threshold() == heap.THRESHOLDS
        assert heap.THRESHOLDS[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
