"""The rules every claim follows, as one mechanism (used by every module in :mod:`align.claims`).

1. **Premise first.** :func:`check` / :func:`premise` measure the precondition the paper assumes
   (e.g. EFT: the small fine-tune has a behaviour the large base lacks). A failed premise makes the
   claim ``untestable``, whatever the result would have been.
2. **Pre-registered selection.** :func:`dev_test_split` splits problems into disjoint dev and test
   sets; :func:`select_on_dev` picks a hyperparameter (τ, α, β, a threshold) from dev values only
   and records the grid, the dev values and the rule.
3. **Seeds and intervals.** Each arm is a ``[seeds, prompts]`` array of per-prompt scores, the same
   prompts in every arm (paired) and in every seed and base build (crossed). :func:`seeded_interval`
   gives the mean and a 95% interval that counts what a seed changes (training, sampling), what
   rebuilding the testbed changes (``builds``) and which prompts were asked, with prompts shared
   by every row: a t-interval from the crossed random-effects ANOVA with Satterthwaite's degrees
   of freedom (its coverage is simulated in the tests); rates at 0 or 1 get an exact interval.
   :func:`judge` calls the claim ``holds`` only when the whole interval of the pre-registered
   difference clears the bound; equivalence claims need the interval inside ``(-margin, margin)``.
4. **Every baseline reported**: :func:`judge` summarises every arm it is given, not only the two
   the inequality compares.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> control = rng.integers(0, 2, (3, 200)).astype(float)      # 3 seeds x 200 prompts, ~50% right
    >>> treated = np.maximum(control, rng.random((3, 200)) < 0.2)  # fixes ~20% of the wrong ones
    >>> r = judge(claim="treated beats control", metric="accuracy", premise=premise(check("control above 0", control.mean(), ">", 0)),
    ...           arms={"treated": treated, "control": control}, treated="treated", control="control")
    >>> r["status"], r["difference"]["low"] > 0
    ('holds', True)
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import t as t_dist

from ..eval.stats import exact_proportion

OPS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
STATUSES = ("holds", "does not hold", "untestable")
# what every interval in a result is (results published before it carry none: a nested bootstrap)
INTERVAL = "generalized CI over builds/seeds crossed with shared prompts; Clopper-Pearson at 0/n and n/n"


def check(name: str, value: float, op: str, bound: float) -> dict[str, Any]:
    """One premise condition, ``value op bound``, with its numbers."""
    if op not in OPS:
        raise ValueError(f"op must be one of {list(OPS)}, got {op!r}")
    value = float(value)
    return {"name": name, "value": round(value, 4), "op": op, "bound": bound, "passed": bool(OPS[op](value, bound))}


def premise(*checks: dict[str, Any]) -> dict[str, Any]:
    """The claim's precondition: it holds when every check passed."""
    return {"checks": list(checks), "holds": all(c["passed"] for c in checks)}


def dev_test_split(n: int, dev_fraction: float = 0.3, seed: int = 0) -> tuple[list[int], list[int]]:
    """Disjoint dev and test indices into ``n`` problems (a seeded permutation; each sorted)."""
    if not 0 < dev_fraction < 1 or n < 2:
        raise ValueError(f"need n >= 2 and 0 < dev_fraction < 1, got {n}, {dev_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, min(n - 1, round(n * dev_fraction)))
    return sorted(order[:cut].tolist()), sorted(order[cut:].tolist())


def select_on_dev(
    grid: Sequence[Any], dev_value: Callable[[Any], float], rule: str = "max", feasible: Callable[[Any], bool] | None = None,
    n_dev: int | None = None,
) -> dict[str, Any]:
    """Choose from ``grid`` by ``dev_value`` alone (``rule``: ``max`` or ``min``; candidates failing
    ``feasible`` are skipped unless none passes). Returns the record a result file keeps: the grid,
    every dev value, the rule and the choice."""
    if not grid or rule not in ("max", "min"):
        raise ValueError(f"need a non-empty grid and rule max|min, got {len(grid)} candidates, {rule!r}")
    values = {str(g): float(dev_value(g)) for g in grid}
    pool = [g for g in grid if feasible is None or feasible(g)] or list(grid)
    pick = (max if rule == "max" else min)(pool, key=lambda g: values[str(g)])
    return {"split": "dev", "n_dev": n_dev, "grid": [str(g) for g in grid], "dev_values": {k: round(v, 4) for k, v in values.items()},
            "rule": rule + (" over feasible candidates" if feasible is not None else ""), "chosen": pick}


def seeded_interval(
    values: Any, confidence: float = 0.95, builds: Sequence[Any] | None = None, bounds: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Mean of a ``[seeds, prompts]`` array with a 95% interval over everything that would change
    on a rerun: the prompts asked, the seeds (training, sampling) and, with ``builds`` (one base-build
    label per row, as many seeds per build), the base build of the testbed.

    Every row scores the same prompts, so prompts and rows are *crossed* random factors, not
    nested: a hard prompt is hard in every row. Resampling prompts independently within each row
    (a nested bootstrap) divides the prompt variance by the number of rows, and a bootstrap over
    3 builds cannot reach 95% (all three draws land on one build 1/27 of the time): simulated on
    the claims' designs it covered 0.73-0.86. Instead the seeds of a build are averaged into
    ``y[u, p]`` (``u`` units: the builds, or the seeds when there is one build) and the mean's
    variance comes from the two-way random-effects ANOVA without replication, as for subjects
    crossed with items (Cornfield & Tukey 1956; Clark 1973, "The language-as-fixed-effect fallacy")::

        Var(mean) = (E[MS_units] + E[MS_prompts] - E[MS_interaction]) / (u * p)

    The interval is Weerahandi's (1993) generalized confidence interval for it
    (:func:`crossed_interval`), chosen over a Satterthwaite t-interval because the unit mean square
    has only ``u - 1`` = 2 degrees of freedom, where Satterthwaite's plug-in degrees of freedom
    covered 0.92 in the same simulations and the generalized interval 0.95-0.98. With one unit it
    is the t-interval over prompts; when the builds dominate, close to the t-interval over the
    build means (2 df: wide, because 3 builds say little about a fourth). Coverage is checked by
    simulating the claims' designs (``tests/claims/test_coverage.py``).

    Values that are all 0 or all 1 (a rate at its floor or ceiling) have no spread to measure: they
    get the exact Clopper–Pearson interval of ``0/p`` or ``p/p``, never a zero-width one.

    ``bounds`` is the metric's range (``(0, 1)`` for a share): the interval is intersected with it.
    The mean lies in that range, so cutting off what lies outside cannot lower coverage; with 2
    degrees of freedom a share near its ceiling otherwise gets an interval past 1.

    Returns ``mean``, ``low``, ``high``, ``se`` (plug-in standard error), ``per_seed`` (each row's mean), ``seeds``,
    ``prompts`` and, with several builds, ``builds`` and ``per_build``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> hard = rng.normal(0, 0.3, 400)                               # one difficulty per prompt, shared by every seed
        >>> x = 0.5 + hard + rng.normal(0, 0.3, (3, 400))
        >>> r = seeded_interval(x)
        >>> r["low"] < 0.5 < r["high"], round(r["high"] - r["low"], 2)
        (True, 0.1)

    (The true variance would give 2 * 1.96 * sqrt(.3**2 / 400 + .3**2 / 1200) = 0.068; three seeds
    estimate the seed-to-seed part with 2 degrees of freedom, and the interval pays for that.)
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"values must be a finite [seeds, prompts] array, got shape {x.shape}")
    # an estimator's rounding (best-of-n's unbiased one gives 1 + 5e-13) is inside its range
    if bounds is not None and not bounds[0] - 1e-9 <= x.min() <= x.max() <= bounds[1] + 1e-9:
        raise ValueError(f"values in [{x.min()!r}, {x.max()!r}] lie outside bounds {bounds}")
    s, p = x.shape
    extra: dict[str, Any] = {}
    y = x
    if builds is not None and len(set(builds)) > 1:
        if len(builds) != s:
            raise ValueError(f"builds must label each of the {s} rows, got {len(builds)} labels")
        labels = list(dict.fromkeys(builds))
        rows = [[i for i, b in enumerate(builds) if b == label] for label in labels]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"every build needs as many seeds, got {[len(r) for r in rows]}")
        y = x[np.array(rows)].mean(axis=1)  # [builds, prompts]: a build's seeds averaged
        extra = {"builds": len(rows), "per_build": [round(float(v), 4) for v in y.mean(axis=1)]}
    mean = float(x.mean())
    if np.ptp(x) == 0 and mean in (0.0, 1.0):
        low, high = exact_proportion(int(mean * p), p, confidence)
        se = 0.0
    else:
        low, high, se = crossed_interval(y, confidence)
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": round(mean, 4), "low": round(low, 4), "high": round(high, 4), "se": round(se, 6),
            "per_seed": [round(float(v), 4) for v in x.mean(axis=1)], "seeds": s, "prompts": p, **extra}


def crossed_interval(y: np.ndarray, confidence: float = 0.95, draws: int = 20_000, seed: int = 0) -> tuple[float, float, float]:
    """Generalized confidence interval (Weerahandi 1993) for the mean of a ``[units, prompts]``
    table whose rows (builds, or seeds with one build) and columns (prompts shared by every unit)
    are both random samples. Returns ``(low, high, se)``, ``se`` the plug-in standard error.

    The mean's variance is ``(E[MS_units] + E[MS_prompts] - E[MS_interaction]) / (units * prompts)``
    (two-way random-effects ANOVA without replication). Each expected mean square gets its
    generalized pivotal quantity ``MS * df / chi2_df``, the prompt part is floored at 0, and the
    interval is the central ``confidence`` share of ``mean - Z * sqrt(variance)`` over ``draws``
    seeded draws. With one unit this is exactly the t-interval over prompts; when the units
    dominate it tends to the t-interval over the unit means (``units - 1`` df).
    """
    u, p = y.shape
    grand = float(y.mean())
    if u == 1:  # what the draws converge to, exactly
        se = float(y.std(ddof=1)) / math.sqrt(p) if p > 1 else 0.0
        half = float(t_dist.ppf((1 + confidence) / 2, p - 1)) * se if se > 0 else 0.0
        return grand - half, grand + half, se
    rows, cols = y.mean(axis=1), y.mean(axis=0)
    ms_u = p * float(((rows - grand) ** 2).sum()) / (u - 1) if u > 1 else 0.0
    ms_p = u * float(((cols - grand) ** 2).sum()) / (p - 1) if p > 1 else 0.0
    df_i = (u - 1) * (p - 1)
    ms_i = float(((y - rows[:, None] - cols[None] + grand) ** 2).sum()) / df_i if df_i else 0.0
    rng = np.random.default_rng(seed)

    def pivot(ms: float, df: int) -> np.ndarray | float:
        return ms * df / rng.chisquare(df, draws) if df and ms > 0 else 0.0

    variance = (pivot(ms_u, u - 1) + np.maximum(pivot(ms_p, p - 1) - pivot(ms_i, df_i), 0.0)) / (u * p)
    spread = rng.standard_normal(draws) * np.sqrt(variance)
    low, high = np.quantile(grand - spread, [(1 - confidence) / 2, (1 + confidence) / 2])
    se = math.sqrt((ms_u + max(ms_p - ms_i, 0.0)) / (u * p))
    return float(low), float(high), se


def paired_difference(
    treated: Any, control: Any, builds: Sequence[Any] | None = None, bounds: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """:func:`seeded_interval` of ``treated - control`` (two ``[seeds, prompts]`` arms on the same prompts);
    with the arms' ``bounds`` ``(lo, hi)``, the difference lies in ``(lo - hi, hi - lo)``.

    A difference with no spread at all (e.g. a rate at its ceiling against a fixed target, or two
    arms at one ceiling) would get a point; it gets the difference of the arms' own intervals
    instead: ``[low_t - high_c, high_t - low_c]``."""
    a, b = np.asarray(treated, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired arms need one shape, got {a.shape} and {b.shape}")
    spread = None if bounds is None else (bounds[0] - bounds[1], bounds[1] - bounds[0])
    d = seeded_interval(a - b, builds=builds, bounds=spread)
    if np.ptp(a - b) == 0:
        t, c = seeded_interval(a, builds=builds, bounds=bounds), seeded_interval(b, builds=builds, bounds=bounds)
        d.update(low=round(t["low"] - c["high"], 4), high=round(t["high"] - c["low"], 4))
    return d


def at_bound(values: Any) -> float | None:
    """0 or 1 when every value is that bound (a rate at its floor or ceiling), else ``None``."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.flat[0]) if x.size and np.ptp(x) == 0 and x.flat[0] in (0.0, 1.0) else None


def levels(per_seed: list[dict], builds: Sequence[Any] | None) -> dict[str, Any]:
    """:func:`judge`'s ``seeds`` and ``builds`` for per-row records carrying ``seed`` (and ``build``):
    with several base builds, every interval counts the build too."""
    return {"seeds": [p["seed"] for p in per_seed], "builds": [p["build"] for p in per_seed] if builds else None}


def row(build: Any, seed: int, several: Any) -> dict[str, Any]:
    """The start of a per-row record: its seed, and its base build when there are ``several``."""
    return {"build": build, "seed": seed} if several else {"seed": seed}


def unit(p: dict) -> str:
    """A per-row record's key in a selection's ``chosen``: its seed, and its build when there are several."""
    return f"build {p['build']} seed {p['seed']}" if "build" in p else str(p["seed"])


def judge(
    *,
    claim: str,
    metric: str,
    premise: dict[str, Any],
    arms: Mapping[str, Any],
    treated: str,
    control: str,
    op: str = ">",
    margin: float = 0.0,
    equivalence: bool = False,
    selection: dict[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    conditions: Sequence[dict[str, Any]] = (),
    builds: Sequence[Any] | None = None,
    bounds: tuple[float, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A claim's result under the rules: every arm's mean and interval, the paired difference
    ``treated - control`` with its interval, and the status: ``untestable`` when the premise
    failed; ``holds`` when the difference's interval lies above ``margin`` (``op`` ``>``), below
    ``-margin`` (``<``), or, with ``equivalence``, inside ``(-margin, margin)``, and every other
    pre-registered condition (:func:`check` rows, e.g. "large share <= 0.5") passed; else ``does not hold``.
    ``builds`` (one base-build label per seed row) puts the base build in every interval; ``bounds``
    (the metric's range, ``(0, 1)`` for a share) clips every interval to what the metric can take.

    Two compared arms at the same floor or ceiling (every value 0, or every value 1) leave the
    method no room to move: the premise gets a failed "room to move" check and the claim is
    ``untestable``, whatever the difference."""
    if op not in (">", "<"):
        raise ValueError(f"op must be > or <, got {op!r}")
    arrays = {k: np.atleast_2d(np.asarray(v, dtype=np.float64)) for k, v in arms.items()}
    for k in (treated, control):
        if k not in arrays:
            raise KeyError(f"arm {k!r} not among {list(arrays)}")
    bound_t, bound_c = at_bound(arrays[treated]), at_bound(arrays[control])
    if bound_t is not None and bound_t == bound_c:
        premise = {**premise, "checks": [*premise["checks"], check(f"room to move: {treated} and {control} are not both at {bound_t:g} "
                                                                  "in every row (1 = room)", 0.0, ">=", 1.0)], "holds": False}
    diff = paired_difference(arrays[treated], arrays[control], builds, bounds)
    if equivalence:
        passed = -margin < diff["low"] and diff["high"] < margin
        bound = f"difference inside (-{margin}, {margin})"
    else:
        passed = diff["low"] > margin if op == ">" else diff["high"] < -margin
        bound = f"difference {op} {'-' if op == '<' and margin else ''}{margin}"
    passed = passed and all(c["passed"] for c in conditions)
    status = "untestable" if not premise["holds"] else "holds" if passed else "does not hold"
    summary = {k: seeded_interval(v, builds=builds, bounds=bounds) for k, v in arrays.items()}
    return {
        "claim": claim,
        "metric": metric,
        "status": status,
        "holds": status == "holds",
        "value": summary[treated]["mean"],
        "baseline": summary[control]["mean"],
        "difference": diff,
        "interval": [diff["low"], diff["high"]],
        "test": {"treated": treated, "control": control, "op": op, "margin": margin, "equivalence": equivalence,
                 "rule": bound + " for the whole 95% interval", "interval": INTERVAL},
        "conditions": list(conditions),
        "premise": premise,
        "selection": selection,
        "seeds": list(seeds) if seeds is not None else list(range(diff["seeds"])),
        "arms": summary,
        **extra,
    }
