"""Uncertainty for every reported number: a mean with its standard error and a 95% bootstrap
interval over prompts, and the paired version for two systems that answered the same prompts.

A difference is called one only by the multiplicity-adjusted test (:func:`verdicts`: Holm across
every comparison shown together); the interval gives its size. Bootstrap
intervals are percentile intervals from ``scipy.stats.bootstrap`` (resampling prompts, seeded);
percentile rather than BCa because per-prompt scores are often 0/1 with few distinct values,
where BCa's acceleration estimate is unstable or undefined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

ABSTAIN_WARN = 0.1  # share of samples a scorer gave no verdict on (a judge's NEITHER), above which a run warns


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` prompts: ``value``, its standard error ``se`` (sample std / sqrt(n)) and
    the bootstrap interval ``[low, high]``."""

    value: float
    se: float
    low: float
    high: float
    n: int

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0. For a difference this is its size, not the verdict: a
        comparison shown beside others differs only by the adjusted test (:func:`verdicts`)."""
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready (an undefined standard error, from one prompt, is ``None``)."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}

    def __str__(self) -> str:
        return f"{self.value:.3f} ± {self.se:.3f} [{self.low:.3f}, {self.high:.3f}]"


def estimate(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Estimate:
    """Mean of ``values`` (one number per prompt) with its standard error and a bootstrap interval.

    Example:
        >>> e = estimate([1, 0, 1, 1, 0, 1, 1, 1])
        >>> round(e.value, 3), round(e.se, 3), e.low <= e.value <= e.high
        (0.75, 0.164, True)
    """
    x = _array(values, "values")
    return _estimate(x, (x,), lambda a, axis: a.mean(axis=axis), confidence, n_resamples, seed, paired=False)


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> Estimate:
    """Mean of ``a_i - b_i`` over prompts both systems answered, with its paired standard error and
    a paired bootstrap interval (prompts resampled together, so shared difficulty cancels).

    Example:
        >>> d = paired_difference([1, 1, 1, 0, 1, 1], [0, 1, 0, 0, 1, 0])
        >>> round(d.value, 3), d.n
        (0.5, 6)
    """
    x, y = _array(a, "a"), _array(b, "b")
    if len(x) != len(y):
        raise ValueError(f"paired_difference needs one value per prompt from each system, got {len(x)} and {len(y)}")
    return _estimate(x - y, (x, y), lambda p, q, axis: (p - q).mean(axis=axis), confidence, n_resamples, seed, paired=True)


def _array(values: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty list of numbers, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds a non-finite value at index {int(np.flatnonzero(~np.isfinite(x))[0])}")
    return x


def _estimate(per_prompt, data, statistic, confidence, n_resamples, seed, paired) -> Estimate:
    from scipy.stats import bootstrap

    n, value = len(per_prompt), float(per_prompt.mean())
    se = float(per_prompt.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    if np.ptp(per_prompt) == 0 and all(np.isin(d, (0, 1)).all() for d in data):
        # every prompt at 0 or at 1 (for a pair: no discordant prompt): nothing to resample, and no
        # certainty either: the exact interval of 0/n or n/n (a pair's difference: ± that of 0/n discordant)
        if paired:
            u = exact_proportion(0, n, confidence)[1]
            return Estimate(value, se, max(-1.0, value - u), min(1.0, value + u), n)
        return Estimate(value, se, *exact_proportion(round(value * n), n, confidence), n)
    if n < 2 or np.ptp(per_prompt) == 0:  # nothing to resample: every replicate is the mean
        return Estimate(value, se if n > 1 else math.nan, value, value, n)
    ci = bootstrap(data, statistic, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                   paired=paired, vectorized=True, rng=np.random.default_rng(seed)).confidence_interval
    return Estimate(value, se, float(ci.low), float(ci.high), n)


def exact_proportion(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Clopper–Pearson interval of ``k`` successes in ``n`` trials: exact, never zero-width.

    Example:
        >>> [round(v, 4) for v in exact_proportion(0, 130)]        # 0/130: the upper end is not 0
        [0.0, 0.028]
    """
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar test for paired binary outcomes (e.g. correct per prompt under two
    systems): only the discordant prompts count, ``n01`` (a wrong, b right) and ``n10``; under the
    null each is Binomial(n01 + n10, 1/2). Returns the p-value (1 when no prompt is discordant).

    Example:
        >>> round(mcnemar_exact([1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]), 4)   # 6 vs 0: 2 * 0.5**6
        0.0312
    """
    from scipy.stats import binomtest

    x, y = _array(a, "a"), _array(b, "b")
    n10, n01 = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    return 1.0 if n10 + n01 == 0 else float(binomtest(n10, n10 + n01, 0.5).pvalue)


def paired_test(a: Sequence[float], b: Sequence[float]) -> tuple[str, float]:
    """The test for a paired comparison and its two-sided p-value: exact McNemar when every value
    is 0 or 1, else the Wilcoxon signed-rank test (zero differences dropped; p = 1 when all are 0).

    Example:
        >>> paired_test([1, 0, 1], [0, 0, 1])
        ('mcnemar-exact', 1.0)
    """
    from scipy.stats import wilcoxon

    x, y = _array(a, "a"), _array(b, "b")
    if np.isin(x, (0, 1)).all() and np.isin(y, (0, 1)).all():
        return "mcnemar-exact", mcnemar_exact(x, y)
    if not (x - y).any():
        return "wilcoxon", 1.0
    return "wilcoxon", float(wilcoxon(x, y, zero_method="wilcox").pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment for ``m`` comparisons: sort ascending, ``p_(k) * (m - k + 1)``
    (k = 1..m), made non-decreasing by a running maximum and capped at 1; a comparison is
    significant at level alpha iff its adjusted p <= alpha. Returned in the input order.

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, p_values[i] * (len(p_values) - k)))
        adjusted[i] = running
    return adjusted


def verdicts(diffs: list[dict], alpha: float = 0.05) -> list[dict]:
    """One verdict rule for comparisons shown together: Holm's adjustment (:func:`holm`) across
    every comparison's ``p_value`` (``p_holm``), and ``significant`` iff ``p_holm <= alpha``. The
    unadjusted paired interval stays beside it as ``interval_excludes_0`` but decides nothing: a p
    of 0.02 among ten comparisons is not shown to differ. A comparison without a test never differs.
    Updates and returns ``diffs``.

    Example:
        >>> ds = [{"p_value": 0.02, "low": 0.01, "high": 0.2}, {"p_value": 0.03, "low": -0.1, "high": 0.1},
        ...       {"p_value": 0.5, "low": -0.1, "high": 0.1}]
        >>> [(d["p_holm"], d["significant"], d["interval_excludes_0"]) for d in verdicts(ds)]
        [(0.06, False, True), (0.06, False, False), (0.5, False, False)]
    """
    tested = [d for d in diffs if d.get("p_value") is not None]
    for d, p in zip(tested, holm([d["p_value"] for d in tested])):
        d["p_holm"] = p
    for d in diffs:
        d["interval_excludes_0"] = d["low"] > 0 or d["high"] < 0
        d["significant"] = d.get("p_holm") is not None and d["p_holm"] <= alpha
    return diffs
