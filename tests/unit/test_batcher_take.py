"""The Batcher's record of taken offsets: its fast path answers as the full check does."""

from __future__ import annotations

import random

from streams.worker.batcher import _take


def reference_take(runs: list[list[int]], offset: int) -> bool:
    """The full check (what `_take` did before its fast path)."""
    if any(first <= offset <= last for first, last in runs):
        return False
    for run in runs:
        if offset == run[1] + 1:
            run[1] = offset
            return True
    runs.append([offset, offset])
    return True


def test_an_offset_is_taken_once_whatever_order_offsets_come_in():
    rng = random.Random(3)
    for _ in range(2_000):
        fast: list[list[int]] = []
        full: list[list[int]] = []
        for _ in range(30):
            offset = rng.randrange(40)
            assert _take(fast, offset) == reference_take(full, offset)
            assert fast == full


def test_the_next_offsets_extend_one_run():
    runs: list[list[int]] = []
    assert all(_take(runs, o) for o in range(5, 1_000))
    assert runs == [[5, 999]] and not _take(runs, 7) and _take(runs, 2)
    assert runs == [[5, 999], [2, 2]]
