"""Timing shared by the in-process benchmark scripts."""

from __future__ import annotations

import time


def best_of(fn, repeats: int, warmup: int = 2) -> float:
    """The least wall time of ``repeats`` calls of ``fn()`` after ``warmup`` untimed calls, in
    seconds (on a shared machine the minimum is the least disturbed run)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
