"""Speed and memory benchmarks: ``python -m benchmarks NAME``; results go in ``benchmarks/RESULTS.md``."""

import time
from collections.abc import Callable

REPEATS = 3


def best_seconds(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """Minimum wall time over ``repeats`` runs after one warm-up (the least-disturbed run)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
