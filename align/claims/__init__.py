"""Paper claims checked on the offline testbed: ``align reproduce NAME``.

Each claim writes ``runs/reproduce/NAME/result.json`` with ``claim``, ``metric``, ``value``,
``baseline`` and ``holds``. Claims under the rules (:mod:`align.claims.protocol`: premise, dev
selection, seeds, intervals) add ``status``, ``premise``, ``selection``, ``arms``, ``difference``,
``interval`` and ``per_seed``; the others keep their ``sweep``. The numbers are whatever the
testbed shows; nothing is tuned to make a claim hold. Decoding claims live in :mod:`align.claims.decoding`,
training claims in :mod:`align.claims.training`, reward claims in :mod:`align.claims.rewards`,
refusal-token claims in :mod:`align.claims.refusal`, SCoRe's in :mod:`align.claims.score`.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rewards.io import atomic_write_text

from .decoding import dlf_vs_fixed, ead_tradeoff, eft_upscaling, gedi_steering, spec_eft_equivalence, steer_diversity
from .refusal import refusal_categories, refusal_categories_real, refusal_threshold, refusal_threshold_real
from .rewards import overoptimization
from .score import score_selfcorrection
from .training import bco_udm, bco_vs_dpo, ches_filter, dpo_gold, rpo_displacement, rpo_gold

if TYPE_CHECKING:  # the testbed pulls in torch; `align --help` lists claims without it
    from align.testbed import Testbed

Result = dict[str, Any]

CLAIMS: dict[str, Callable[["Testbed", int], Result]] = {
    "spec-eft-equivalence": spec_eft_equivalence,
    "ead-tradeoff": ead_tradeoff,
    "eft-upscaling": eft_upscaling,
    "dlf-vs-fixed": dlf_vs_fixed,
    "gedi-steering": gedi_steering,
    "steer-diversity": steer_diversity,
    "dpo-gold": dpo_gold,
    "rpo-gold": rpo_gold,
    "rpo-displacement": rpo_displacement,
    "bco-vs-dpo": bco_vs_dpo,
    "bco-udm": bco_udm,
    "ches-filter": ches_filter,
    "overoptimization": overoptimization,
    "refusal-threshold": refusal_threshold,
    "refusal-categories": refusal_categories,
    "score-selfcorrection": score_selfcorrection,
    "refusal-threshold-real": refusal_threshold_real,
    "refusal-categories-real": refusal_categories_real,
}
# `--all` runs one group: the testbed's claims (<= 60 min here), or those on the real model
# (SmolLM2-135M-Instruct, the `smollm2` profile; about 30 min here)
GROUPS = {"real": ["refusal-threshold-real", "refusal-categories-real"]}
GROUPS["testbed"] = [name for name in CLAIMS if name not in GROUPS["real"]]
# Claims that take the base build as the outermost level of their interval (a `builds` argument):
# the decoding claims and the cheapest training claims (up to ~5 min per build) once the builds
# exist; with `--testbed-seeds 0,1,2` they take about 90 min here, `rpo-gold` 26 of them (measured one at a time).
# The others say why not: minutes per build here, measured on build 0.
ONE_BUILD = {
    **{name: "one real checkpoint: SmolLM2-135M-Instruct is not rebuilt" for name in GROUPS["real"]},
    "bco-vs-dpo": "budget: 36 models per build (17 min here); two more builds would add 34 min to the build-level run's ~40",
    "bco-udm": "budget: 36 models per build (7 min here); two more builds would add 14 min to the build-level run's ~40",
    "overoptimization": "budget: 15 reward models per build (4 min here); two more builds would add 8 min to the build-level run's ~40",
    "score-selfcorrection": "budget: SCoRe and its SFT baseline at 3 seeds per build (3.5 min here); two more builds would add 7 min "
                            "to the build-level run's ~40",
    "refusal-threshold": "budget: a refusal-token model and its baselines per seed (6.6 min per build here); two more builds would add "
                         "13 min to the build-level run's ~40",
    "refusal-categories": "budget: a refusal-token model per seed (3.5 min per build here); two more builds would add 7 min to the "
                          "build-level run's ~40",
}


def profile_of(name: str, profile: str) -> str:
    """The testbed profile claim ``name`` runs on: the real group's always on ``smollm2``."""
    return "smollm2" if name in GROUPS["real"] else profile


def takes_builds(name: str) -> bool:
    """Whether claim ``name`` can put the base build in its interval (it has a ``builds`` argument)."""
    return "builds" in inspect.signature(CLAIMS[name]).parameters


def reproduce(name: str, tb: "Testbed", n: int = 500, out_dir: str | Path = "runs/reproduce",
              builds: Sequence["Testbed"] = ()) -> tuple[Result, Path]:
    """Run claim ``name`` on testbed ``tb`` and write ``out_dir/name/result.json`` atomically.

    ``builds``: base builds of ``tb``'s profile (``tb`` first, e.g. seeds 0, 1, 2). A claim that
    takes them (:func:`takes_builds`) counts the base build in its intervals; the others run on
    ``tb``. Every result records under ``builds`` which base builds its interval spans and,
    when only one, why."""
    if name not in CLAIMS:
        raise KeyError(f"unknown claim {name!r}; available: {', '.join(CLAIMS)}")
    start = time.perf_counter()
    claim = CLAIMS[name]
    params = inspect.signature(claim).parameters
    # claims that write files beside result.json (plots) take the directory
    extra: dict[str, Any] = {"out_dir": Path(out_dir) / name} if "out_dir" in params else {}
    several = len(builds) > 1 and takes_builds(name)
    if several:
        extra["builds"] = list(builds)
    result = claim(tb, n, **extra)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["testbed"] = {"profile": tb.manifest["profile"], "seed": tb.manifest["seed"]}
    result["builds"] = _builds_record(name, tb, builds if several else [tb])
    path = atomic_write_text(Path(out_dir) / name / "result.json", json.dumps(result, indent=2))
    return result, path


def _builds_record(name: str, tb: "Testbed", used: Sequence["Testbed"]) -> dict[str, Any]:
    seeds = [b.manifest["seed"] for b in used]
    if len(seeds) > 1:
        return {"seeds": seeds, "in_interval": True, "level": "builds crossed with the shared prompts, seeds within a build"}
    why = ONE_BUILD.get(name) or (f"one base build was given: `align reproduce {name} --testbed-seeds 0,1,2` adds the build level"
                                  if takes_builds(name) else "not given the build level")
    return {"seeds": seeds, "in_interval": False, "why": why}


def reproduce_all(tb: "Testbed", n: int = 500, out_dir: str | Path = "runs/reproduce", skip_done: bool = True,
                  group: str = "testbed", builds: Sequence["Testbed"] = ()) -> tuple[list[Result], Path]:
    """Every claim of ``group`` (a finished ``result.json`` for this testbed and these builds is
    reused when ``skip_done``), then one table, ``out_dir/claims.json`` (``claims-real.json`` for
    the real group): claim, metric, value, baseline, holds, seconds."""
    rows = []
    for name in GROUPS[group]:
        path = Path(out_dir) / name / "result.json"
        done = json.loads(path.read_text()) if skip_done and path.is_file() else None
        seeds = [b.manifest["seed"] for b in builds] if len(builds) > 1 and takes_builds(name) else [tb.manifest["seed"]]
        same = (done is not None and done.get("testbed") == {"profile": tb.manifest["profile"], "seed": tb.manifest["seed"]}
                and done.get("builds", {}).get("seeds", [tb.manifest["seed"]]) == seeds)
        result = done if same else reproduce(name, tb, n, out_dir, builds)[0]
        rows.append({"name": name, **{k: result.get(k) for k in ("claim", "metric", "value", "baseline", "interval", "status", "holds", "seconds")}})
    table = "claims.json" if group == "testbed" else f"claims-{group}.json"
    return rows, atomic_write_text(Path(out_dir) / table, json.dumps(rows, indent=2))
