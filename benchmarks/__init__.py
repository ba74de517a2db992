"""Speed and memory benchmarks: ``python -m benchmarks NAME``; results go in ``benchmarks/RESULTS.md``.

On a shared 2-core machine one race of whole decodes moves by 10-30% between runs, so suites that
have moved to :func:`race` time their contenders interleaved (A, B, C, A, B, C, ...), read each
round by wall clock and by this process's CPU time (``time.process_time``: another tenant's load
does not count), and report every ratio as the median and interquartile range of its per-round
ratios (:func:`ratio`); a bar is met only by its unfavourable quartile (:func:`meets`).
"""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass
class Race:
    """Per-round seconds of each contender, by wall clock and by process CPU time."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)


def race(contenders: dict[str, Callable[[], object]], rounds: int = 7) -> Race:
    """One warm-up call each, then ``rounds`` rounds that run every contender once, in order."""
    for fn in contenders.values():
        fn()
    out = Race({k: [] for k in contenders}, {k: [] for k in contenders})
    for _ in range(rounds):
        for name, fn in contenders.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            out.cpu[name].append(time.process_time() - cpu)
            out.wall[name].append(time.perf_counter() - wall)
    return out


def ratio(result: Race, numerator: str | list[str], denominator: str | list[str], clock: str = "cpu") -> dict:
    """Median and interquartile range of the per-round ratio ``sum(numerator) / sum(denominator)``
    (names summed within a round), on ``clock`` (``cpu`` or ``wall``), with the other clock's
    median beside it.

    Example:
        >>> r = Race(wall={"a": [2.0, 2.2, 1.8], "b": [1.0, 1.0, 1.0]}, cpu={"a": [2.0, 2.0, 2.0], "b": [1.0, 1.0, 1.0]})
        >>> ratio(r, "a", "b")
        {'median': 2.0, 'iqr': [2.0, 2.0], 'n': 3, 'clock': 'cpu', 'wall_median': 2.0}
    """
    def per_round(times: dict[str, list[float]]) -> list[float]:
        num = [numerator] if isinstance(numerator, str) else numerator
        den = [denominator] if isinstance(denominator, str) else denominator
        rounds = len(times[num[0]])
        return [sum(times[k][i] for k in num) / sum(times[k][i] for k in den) for i in range(rounds)]

    main = per_round(result.cpu if clock == "cpu" else result.wall)
    other = per_round(result.wall if clock == "cpu" else result.cpu)
    q1, _, q3 = statistics.quantiles(main, n=4, method="inclusive") if len(main) > 1 else (main[0],) * 3
    return {"median": round(statistics.median(main), 3), "iqr": [round(q1, 3), round(q3, 3)], "n": len(main), "clock": clock,
            f"{'wall' if clock == 'cpu' else 'cpu'}_median": round(statistics.median(other), 3)}


def meets(stat: dict, goal: float, op: str) -> bool:
    """Met by the unfavourable quartile: ``<=`` needs the upper quartile at or below ``goal``,
    ``>=`` (a speed-up) the lower quartile at or above it.

    Example:
        >>> meets({"median": 1.0, "iqr": [0.9, 1.2]}, 1.1, "<="), meets({"median": 1.6, "iqr": [1.5, 1.7]}, 1.5, ">=")
        (False, True)
    """
    low, high = stat["iqr"]
    return high <= goal if op == "<=" else low >= goal
