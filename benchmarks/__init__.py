"""Speed and memory benchmarks: ``python -m benchmarks NAME``; ``benchmarks/RESULTS.md`` is generated
from the results files they write (``benchmarks/report.py``).

On a shared 2-core machine one race of whole decodes moves by 10-30% between runs, so every suite
times its contenders with :func:`race`: interleaved (A, B, C, A, B, C, ...), read each
round by wall clock and by this process's CPU time (``time.process_time``: another tenant's load
does not count), and report every ratio as the median and interquartile range of its per-round
ratios (:func:`ratio`); a bar is met only by its unfavourable quartile (:func:`meets`).
"""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Race:
    """Per-round seconds of each contender, by wall clock and by process CPU time."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)


def race(contenders: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 1, device: str = "cpu") -> Race:
    """``warmup`` calls each, then ``rounds`` rounds that run every contender once, in order
    (on CUDA each call is bracketed by a synchronize, so wall time covers the kernels)."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    out = Race({k: [] for k in contenders}, {k: [] for k in contenders})
    for _ in range(rounds):
        for name, fn in contenders.items():
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            out.cpu[name].append(time.process_time() - cpu)
            out.wall[name].append(time.perf_counter() - wall)
    return out


Terms = str | list[str] | dict[str, float]  # one contender, several summed, or a weighted sum


def summarise(values: list[float], digits: int = 3) -> dict:
    """Median, interquartile range (inclusive quartiles) and count of per-round values.

    Example:
        >>> summarise([1.0, 2.0, 3.0, 4.0, 5.0])
        {'median': 3.0, 'iqr': [2.0, 4.0], 'n': 5}
    """
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {"median": round(statistics.median(values), digits), "iqr": [round(q1, digits), round(q3, digits)], "n": len(values)}


def weights(terms: Terms) -> dict[str, float]:
    return {terms: 1.0} if isinstance(terms, str) else dict(terms) if isinstance(terms, dict) else {k: 1.0 for k in terms}


def statistic(result: Race, fn: Callable[[dict[str, float]], float], clock: str = "cpu") -> dict:
    """Median [IQR] over rounds of ``fn(times of that round)`` on ``clock`` (``cpu`` or ``wall``),
    with the other clock's median beside it.

    Example:
        >>> r = Race(wall={"a": [2.0, 4.0], "b": [1.0, 2.0]}, cpu={"a": [2.0, 4.0], "b": [1.0, 1.0]})
        >>> statistic(r, lambda t: t["a"] - t["b"])
        {'median': 2.0, 'iqr': [1.5, 2.5], 'n': 2, 'clock': 'cpu', 'wall_median': 1.5}
    """
    def values(times: dict[str, list[float]]) -> list[float]:
        return [fn({k: v[i] for k, v in times.items()}) for i in range(len(next(iter(times.values()))))]

    main, other = (result.cpu, result.wall) if clock == "cpu" else (result.wall, result.cpu)
    return {**summarise(values(main)), "clock": clock,
            f"{'wall' if clock == 'cpu' else 'cpu'}_median": round(statistics.median(values(other)), 3)}


def ratio(result: Race, numerator: Terms, denominator: Terms, clock: str = "cpu") -> dict:
    """Median and interquartile range of the per-round ratio ``Σ w·t(numerator) / Σ w·t(denominator)``
    (names summed within a round, a dict gives weights), on ``clock`` (``cpu`` or ``wall``), with
    the other clock's median beside it.

    Example:
        >>> r = Race(wall={"a": [2.0, 2.2, 1.8], "b": [1.0, 1.0, 1.0]}, cpu={"a": [2.0, 2.0, 2.0], "b": [1.0, 1.0, 1.0]})
        >>> ratio(r, "a", "b")
        {'median': 2.0, 'iqr': [2.0, 2.0], 'n': 3, 'clock': 'cpu', 'wall_median': 2.0}
        >>> ratio(r, "a", {"b": 2.0})["median"]
        1.0
    """
    num, den = weights(numerator), weights(denominator)
    return statistic(result, lambda t: sum(w * t[k] for k, w in num.items()) / sum(w * t[k] for k, w in den.items()), clock)


def seconds(result: Race, name: str, clock: str = "cpu", scale: float = 1.0) -> dict:
    """Median [IQR] of one contender's per-round time (times ``scale``: 1e3 for ms)."""
    return {**summarise([scale * t for t in (result.cpu if clock == "cpu" else result.wall)[name]], 4), "clock": clock}


def meets(stat: dict, goal: float, op: str) -> bool:
    """Met by the unfavourable quartile: ``<=`` needs the upper quartile at or below ``goal``,
    ``>=`` (a speed-up) the lower quartile at or above it.

    Example:
        >>> meets({"median": 1.0, "iqr": [0.9, 1.2]}, 1.1, "<="), meets({"median": 1.6, "iqr": [1.5, 1.7]}, 1.5, ">=")
        (False, True)
    """
    low, high = stat["iqr"]
    return high <= goal if op == "<=" else low >= goal


def judged(stat: dict, op: str, goal: float) -> dict:
    """``stat`` with its bar (``goal``: "<= 1.1") and whether its unfavourable quartile meets it (``met``)."""
    return {**stat, "goal": f"{op} {goal}", "met": meets(stat, goal, op)}
