"""The rules every claim follows, as one mechanism (used by every module in :mod:`align.claims`).

1. **Premise first.** :func:`check` / :func:`premise` measure the precondition the paper assumes
   (e.g. EFT: the small fine-tune has a behaviour the large base lacks). A failed premise makes the
   claim ``untestable``, whatever the result would have been.
2. **Pre-registered selection.** :func:`dev_test_split` splits problems into disjoint dev and test
   sets; :func:`select_on_dev` picks a hyperparameter (τ, α, β, a threshold) from dev values only
   and records the grid, the dev values and the rule.
3. **Seeds and intervals.** Each arm is a ``[seeds, prompts]`` array of per-prompt scores, the same
   prompts in every arm (paired). :func:`seeded_interval` gives the mean and a 95% two-stage
   bootstrap interval: resample seeds, then prompts within each drawn seed, so both what the seed
   changes (training, sampling) and which prompts were asked count; with several base builds
   of the testbed (``builds``), builds are resampled first, then seeds within each, then prompts.
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

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

OPS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
STATUSES = ("holds", "does not hold", "untestable")


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


def seeded_interval(values: Any, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95,
                    builds: Sequence[Any] | None = None) -> dict[str, Any]:
    """Mean of a ``[seeds, prompts]`` array and its percentile bootstrap interval: seeds with
    replacement, then prompts with replacement within each drawn seed; ``per_seed`` holds each
    seed's mean. One seed reduces to the prompt bootstrap.

    ``builds`` labels each row with the base build it came from (rows of one build: its seeds,
    as many for every build). The build is then the outermost level: builds with replacement,
    then seeds within each drawn build, then prompts, so what rebuilding the testbed changes
    counts too; ``per_build`` holds each build's mean."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"values must be a finite [seeds, prompts] array, got shape {x.shape}")
    s, p = x.shape
    rng = np.random.default_rng(seed)
    extra: dict[str, Any] = {}
    if builds is None or len(set(builds)) == 1:
        seeds = rng.integers(0, s, (n_resamples, s))
        prompts = rng.integers(0, p, (n_resamples, s, p))
        means = x[seeds[..., None], prompts].mean(axis=(1, 2))
    else:
        if len(builds) != s:
            raise ValueError(f"builds must label each of the {s} rows, got {len(builds)} labels")
        labels = list(dict.fromkeys(builds))
        rows = [[i for i, b in enumerate(builds) if b == label] for label in labels]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"every build needs as many seeds, got {[len(r) for r in rows]}")
        nested = x[np.array(rows)]  # [builds, seeds, prompts]
        b, k = nested.shape[:2]
        drawn = rng.integers(0, b, (n_resamples, b))
        seeds = rng.integers(0, k, (n_resamples, b, k))
        prompts = rng.integers(0, p, (n_resamples, b, k, p))
        means = nested[drawn[..., None, None], seeds[..., None], prompts].mean(axis=(1, 2, 3))
        extra = {"builds": b, "per_build": [round(float(v), 4) for v in nested.mean(axis=(1, 2))]}
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return {"mean": round(float(x.mean()), 4), "low": round(float(low), 4), "high": round(float(high), 4),
            "per_seed": [round(float(v), 4) for v in x.mean(axis=1)], "seeds": s, "prompts": p, **extra}


def paired_difference(treated: Any, control: Any, n_resamples: int = 2000, builds: Sequence[Any] | None = None) -> dict[str, Any]:
    """:func:`seeded_interval` of ``treated - control`` (two ``[seeds, prompts]`` arms on the same prompts)."""
    a, b = np.asarray(treated, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired arms need one shape, got {a.shape} and {b.shape}")
    return seeded_interval(a - b, n_resamples, builds=builds)


def levels(per_seed: list[dict], builds: Sequence[Any] | None) -> dict[str, Any]:
    """:func:`judge`'s ``seeds`` and ``builds`` for per-row records carrying ``seed`` (and ``build``):
    with several base builds, the build is the bootstrap's outermost level."""
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
    n_resamples: int = 2000,
    builds: Sequence[Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A claim's result under the rules: every arm's mean and interval, the paired difference
    ``treated - control`` with its interval, and the status: ``untestable`` when the premise
    failed; ``holds`` when the difference's interval lies above ``margin`` (``op`` ``>``), below
    ``-margin`` (``<``), or, with ``equivalence``, inside ``(-margin, margin)``, and every other
    pre-registered condition (:func:`check` rows, e.g. "large share <= 0.5") passed; else ``does not hold``.
    ``builds`` (one base-build label per seed row) makes the build the outermost bootstrap level."""
    if op not in (">", "<"):
        raise ValueError(f"op must be > or <, got {op!r}")
    arrays = {k: np.atleast_2d(np.asarray(v, dtype=np.float64)) for k, v in arms.items()}
    for k in (treated, control):
        if k not in arrays:
            raise KeyError(f"arm {k!r} not among {list(arrays)}")
    diff = paired_difference(arrays[treated], arrays[control], n_resamples, builds)
    if equivalence:
        passed = -margin < diff["low"] and diff["high"] < margin
        bound = f"difference inside (-{margin}, {margin})"
    else:
        passed = diff["low"] > margin if op == ">" else diff["high"] < -margin
        bound = f"difference {op} {'-' if op == '<' and margin else ''}{margin}"
    passed = passed and all(c["passed"] for c in conditions)
    status = "untestable" if not premise["holds"] else "holds" if passed else "does not hold"
    summary = {k: seeded_interval(v, n_resamples, builds=builds) for k, v in arrays.items()}
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
                 "rule": bound + " for the whole 95% interval"},
        "conditions": list(conditions),
        "premise": premise,
        "selection": selection,
        "seeds": list(seeds) if seeds is not None else list(range(diff["seeds"])),
        "arms": summary,
        **extra,
    }
