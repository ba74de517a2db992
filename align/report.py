"""``align report RUN_DIR [RUN_DIR ...] -o report.html``: one self-contained HTML page (inline CSS,
plots as inline PNG or SVG, the page's own script, no network) and a Markdown summary.

Reads ``align eval`` runs (``summary.json`` + ``samples.jsonl``) and claim results (``align
reproduce``'s ``runs/reproduce/*/result.json``, or ``data/claims/*.json``). The page reads top
down: the headline (a scoreboard of each system's primary metrics with the best per column and the
cells that differ from the baseline marked, and a few sentences generated from the paired
intervals), the comparisons (paired bootstrap intervals, exact McNemar or Wilcoxon p-values, Holm's
correction across the page), the claims (status, pre-registered difference as a forest plot,
premise checks, selection), head-to-head win rates, refusal, plots, compute, then two browsers:
side by side (which of two systems is right, filtered by outcome) and every sample (paginated, a
permalink per sample, keyboard navigation).

Model text never enters the HTML as markup: the templates (``align/templates``) escape by default
(Jinja2 autoescape), and the browsers' data travel as JSON in a non-executed ``<script
type="application/json">`` block with ``<``, ``>`` and ``&`` escaped, which the page's script
renders with ``textContent``. The Content-Security-Policy allows exactly the page's own script and
style (by SHA-256) and images from data URIs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewards.io import atomic_write_text

from .config import ConfigError
from .data import last_text
from .eval.stats import ABSTAIN_WARN, verdicts as holm_verdicts

TEMPLATES = Path(__file__).resolve().parent / "templates"
PRIMARY = (".correct", ".refused", ".reward")  # the metrics a scoreboard shows, when a set has them
ALPHA = 0.05  # family-wise error rate of the page's verdicts (Holm across its comparisons)
CHANCE_BAND = 0.1  # a reward check within this of 0.5 reads as chance


@dataclass
class ReportArgs:
    runs: list[str] = field(default_factory=list, metadata={"help": "eval run directories and/or claim directories "
                                                                      "(runs/reproduce, data/claims)"})
    output: str = field(default="report.html", metadata={"help": "the HTML page (a .md summary is written beside it)"})
    title: str = field(default="alignkit report", metadata={"help": "page title"})
    max_samples: int = field(default=200_000, metadata={"help": "samples carried into the page, in run order: the browser and "
                                                                    "side by side show these (the rest are counted, not shown)"})

    def __post_init__(self) -> None:
        if not self.runs:
            raise ConfigError("runs: give at least one run directory (align eval's output_dir, runs/reproduce or data/claims)")
        if self.max_samples < 0:
            raise ConfigError(f"max_samples must be >= 0, got {self.max_samples}")


@dataclass
class Run:
    name: str
    summary: dict[str, Any]
    samples: list[dict[str, Any]]


def load_runs(paths: list[str]) -> tuple[list[Run], list[dict[str, Any]]]:
    """Eval runs and claim results under ``paths``; a directory with neither is an error naming it."""
    from .eval.run import read_samples

    runs, claims = [], []
    for spec in paths:
        path = Path(spec)
        if not path.is_dir():
            raise ConfigError(f"run directory {path} does not exist")
        found = False
        if (path / "summary.json").is_file():
            runs.append(Run(path.name, json.loads((path / "summary.json").read_text()), read_samples(path / "samples.jsonl")))
            found = True
        results = sorted(path.glob("*/result.json")) + ([path / "result.json"] if (path / "result.json").is_file() else [])
        for result in results:
            claims.append({"name": result.parent.name, **json.loads(result.read_text()), "_dir": str(result.parent)})
            found = True
        for file in sorted(path.glob("*.json")) if not results else []:  # data/claims: NAME.json per claim
            try:
                data = json.loads(file.read_text())
            except json.JSONDecodeError as e:
                raise ConfigError(f"{file}: not JSON ({e})") from e
            if isinstance(data, dict) and "claim" in data:
                claims.append({"name": file.stem, **data, "_dir": str(path)})
                found = True
        if not found:
            raise ConfigError(f"run directory {path} holds no summary.json (align eval) and no claim result "
                              "(result.json from align reproduce, or NAME.json as in data/claims)")
    return runs, claims


# ---- numbers ---------------------------------------------------------------------------------

def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _signed(v: float) -> str:
    return f"{v:+.3f}".replace("-", "−")


def _interval(m: dict[str, Any]) -> str:
    se = f" ± {m['se']:.3f}" if m.get("se") is not None else ""
    return f"{m['value']:.3f}{se} [{m['low']:.3f}, {m['high']:.3f}]"


def _diff_text(d: dict[str, Any]) -> str:
    return f"{_signed(d['value'])} [{_signed(d['low'])}, {_signed(d['high'])}]"


def _p(p: float | None) -> str:
    return "–" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def primary_metrics(metrics: dict[str, Any]) -> list[str]:
    """The metrics a scoreboard shows: correctness, refusal and reward scores; every other
    metric (but ``finished``) when a prompt set has none of those."""
    names = sorted((m for m in metrics if m.endswith(PRIMARY)), key=lambda m: (next(i for i, e in enumerate(PRIMARY) if m.endswith(e)), m))
    return names or [m for m in metrics if m != "finished"]


def direction(metric: str, expect: str | None) -> int:
    """+1 when higher is better, -1 when lower is, 0 when the page cannot tell (a refusal rate on a
    set that mixes prompts to refuse and to answer, or a metric of unknown sense)."""
    if metric.endswith((".correct", ".reward")):
        return 1
    if metric.endswith(".refused"):
        return {"refuse": 1, "respond": -1}.get(expect or "", 0)
    return 0


def _label(run: Run, system: str, runs: list[Run]) -> str:
    return system if len(runs) == 1 else f"{run.name}/{system}"


# ---- headline: scoreboard, comparisons, sentences --------------------------------------------

def comparisons(runs: list[Run]) -> list[dict[str, Any]]:
    """Every system's paired difference from its run's baseline on each primary metric, with its
    p-value and Holm's adjustment across all of them (the comparisons the page shows)."""
    out = []
    for run in runs:
        expects = {s["name"]: s.get("expect") for s in run.summary.get("prompt_sets", [])}
        primary = {(e["system"], e["prompt_set"]): set(primary_metrics(e["metrics"])) for e in run.summary.get("table", [])}
        for d in run.summary.get("differences", []):
            if d["metric"] in primary.get((d["system"], d["prompt_set"]), ()):
                out.append({**d, "run": run.name, "label": _label(run, d["system"], runs),
                            "baseline_label": _label(run, d["baseline"], runs), "direction": direction(d["metric"], expects.get(d["prompt_set"]))})
    return holm_verdicts(out, ALPHA)


def scoreboard(run: Run, runs: list[Run], diffs: list[dict[str, Any]]) -> dict[str, Any]:
    """Systems as rows, each prompt set's primary metrics as columns: mean and 95% interval per
    cell, the best per column (by the metric's direction) and the cells that differ from the
    baseline by the page's verdict rule (:func:`~align.eval.stats.verdicts`) marked; generated tokens per second last."""
    expects = {s["name"]: s.get("expect") for s in run.summary.get("prompt_sets", [])}
    entries = {(e["system"], e["prompt_set"]): e for e in run.summary.get("table", [])}
    systems = list(dict.fromkeys(e["system"] for e in run.summary.get("table", [])))
    sets = list(dict.fromkeys(e["prompt_set"] for e in run.summary.get("table", [])))
    scored = {k: {**e.get("abstentions", {}), **e["metrics"]} for k, e in entries.items()}  # a score nobody got a verdict on too
    columns = [(s, m) for s in sets for m in dict.fromkeys(m for sys in systems for m in primary_metrics(scored.get((sys, s), {})))]
    by_key = {(d["system"], d["prompt_set"], d["metric"]): d for d in diffs if d["run"] == run.name}
    rows = []
    for system in systems:
        cells = []
        for set_name, metric in columns:
            m = entries.get((system, set_name), {}).get("metrics", {}).get(metric)
            a = entries.get((system, set_name), {}).get("abstentions", {}).get(metric)
            d = by_key.get((system, set_name, metric))
            moved = d is not None and d["significant"]
            quality = d["direction"] * d["value"] if moved else 0
            abstained = a and {**a, "warn": a["no_verdict"] / a["samples"] > ABSTAIN_WARN,
                               "text": f"no verdict on {a['no_verdict']} of {a['samples']}; rate over {a['samples'] - a['no_verdict']}"}
            cells.append(None if m is None and a is None else {"value": None, **(m or {}), "diff": d, "abstained": abstained,
                                                               "mark": ("up" if d["value"] > 0 else "down") if moved else "",
                                                               "quality": "better" if quality > 0 else "worse" if quality < 0 else "", "best": False})
        seconds = sum(entries.get((system, s), {}).get("compute", {}).get("seconds") or 0 for s in sets)
        tokens = sum(entries.get((system, s), {}).get("compute", {}).get("generated_tokens") or 0 for s in sets)
        rows.append({"system": _label(run, system, runs), "cells": cells, "tokens_per_s": tokens / seconds if seconds and tokens else None})
    header = []
    for k, (set_name, metric) in enumerate(columns):
        sense = direction(metric, expects.get(set_name))
        values = [r["cells"][k]["value"] for r in rows if r["cells"][k] is not None and r["cells"][k]["value"] is not None]
        if sense and len(set(values)) > 1:  # a column where every system ties has no best
            best = max(values) if sense > 0 else min(values)
            for r in rows:
                if r["cells"][k] is not None and r["cells"][k]["value"] == best:
                    r["cells"][k]["best"] = True
        header.append({"prompt_set": set_name, "metric": metric, "sense": {1: "higher is better", -1: "lower is better"}.get(sense, "")})
    return {"run": run.name, "baseline": _label(run, systems[0], runs) if systems else "", "columns": header, "rows": rows,
            "reward_checks": run.summary.get("reward_checks", [])}


def headline(board: dict[str, Any], diffs: list[dict[str, Any]], limit: int = 4) -> list[str]:
    """Two or three sentences from the page's verdicts (:func:`~align.eval.stats.verdicts`: Holm across its
    comparisons): which systems are better than the baseline and where, which are worse, what is
    not shown to differ (each difference with its interval and Holm-adjusted p; a system's throughput ratio once, where it moved by over 10%).
    Nothing here is hand-written."""
    mine = [d for d in diffs if d["run"] == board["run"]]
    speed = {r["system"]: r["tokens_per_s"] for r in board["rows"]}
    base = board["baseline"]

    def system_items(items: list[dict[str, Any]], detail: bool = True) -> str:
        by_system: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for d in sorted(items, key=lambda d: -abs(d["value"])):
            by_system[d["label"]].append(d)
        parts = []
        for label, ds in list(by_system.items())[:limit]:
            ratio = speed.get(label) / speed[base] if speed.get(base) and speed.get(label) else None
            pace = f", at {ratio:.2g}× {base}'s tokens/s" if detail and ratio and abs(ratio - 1) > 0.1 else ""
            metrics = ", ".join(f"{d['prompt_set']} {d['metric']} {_diff_text(d)}"
                                + (f" (Holm p {_p(d['p_holm'])})" if detail and d.get("p_holm") is not None else "") for d in ds)
            parts.append(f"{label} on {metrics}{pace}")
        more = len(by_system) - limit
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")

    better = [d for d in mine if d["significant"] and d["direction"] * d["value"] > 0]
    worse = [d for d in mine if d["significant"] and d["direction"] * d["value"] < 0]
    moved = [d for d in mine if d["significant"] and d["direction"] == 0]
    same = [d for d in mine if not d["significant"]]
    out = []
    if better:
        out.append(f"Better than {base} (Holm-adjusted p <= {ALPHA:g}, in the good direction): {system_items(better)}.")
    if worse:
        out.append(f"Worse than {base}: {system_items(worse)}.")
    if moved:
        out.append(f"Different from {base}, direction not judged on a mixed set: {system_items(moved)}.")
    if same:
        out.append(f"Not shown to differ from {base} (Holm-adjusted p > {ALPHA:g}): {system_items(same, detail=False)}.")
    if not mine:
        out.append("One system only: nothing to compare.")
    out += [reward_sentence(c) for c in board.get("reward_checks", []) if c["pairwise_accuracy"] is not None]
    warned = [f"{r['system']} on {c['prompt_set']} {c['metric']}: {cell['abstained']['text']}"
              for r in board["rows"] for c, cell in zip(board["columns"], r["cells"]) if cell and cell["abstained"] and cell["abstained"]["warn"]]
    if warned:
        out.append(f"Warning: a scorer gave no verdict on over {ABSTAIN_WARN:.0%} of the samples, and those rates are over the judged "
                   f"rest: {'; '.join(warned)}.")
    return out


def reward_sentence(check: dict[str, Any], chance_band: float = CHANCE_BAND) -> str:
    """One sentence on whether a reward score separates right from wrong on the run's own samples
    (:func:`align.eval.run.reward_checks`); within ``chance_band`` of 0.5 it says the column is
    near chance.

    Example:
        >>> reward_sentence({"prompt_set": "answerable", "reward": "ensemble.reward", "gold": "verifier.correct", "pairs": 1426,
        ...                  "pairwise_accuracy": 0.5, "spread_auroc_wrong": None})
        'Warning: ensemble.reward ranks the right answer above the wrong one in 0.500 of 1426 answerable pairs (one prompt, one right and one wrong sample, any systems; 0.5 is chance): near chance, so its column says little about quality.'
    """
    text = (f"{check['reward']} ranks the right answer above the wrong one in {check['pairwise_accuracy']:.3f} of {check['pairs']} "
            f"{check['prompt_set']} pairs (one prompt, one right and one wrong sample, any systems; 0.5 is chance)")
    if abs(check["pairwise_accuracy"] - 0.5) < chance_band:
        return f"Warning: {text}: near chance, so its column says little about quality."
    spread = check.get("spread_auroc_wrong")
    tail = f"; its members' spread flags wrong answers at AUROC {spread:.3f}" if spread is not None else ""
    return f"Reward check ({check['gold']} as truth): {text}{tail}."


def forest(value: float, low: float, high: float, marks: tuple[float, ...] = (0.0,), colour: str = "#4c72b0",
           width: int = 140, height: int = 18) -> dict[str, Any]:
    """An inline SVG forest-plot row (numbers only, drawn by the template): the estimate, its
    interval, and reference lines (0, a pre-registered margin)."""
    lo, hi = min(low, value, *marks), max(high, value, *marks)
    pad = (hi - lo) * 0.08 or 0.5
    lo, hi = lo - pad, hi + pad

    def x(v: float) -> float:
        return round(4 + (width - 8) * (v - lo) / (hi - lo), 1)

    return {"w": width, "h": height, "x": x(value), "x1": x(low), "x2": x(high), "marks": [x(m) for m in marks], "colour": colour,
            "title": f"{value:+.3f} [{low:+.3f}, {high:+.3f}]; lines at {', '.join(f'{m:g}' for m in marks)}"}


# ---- claims ----------------------------------------------------------------------------------

STATUS_COLOURS = {"holds": "#2a7a3b", "does not hold": "#b03030", "untestable": "#777777"}


def claim_rows(claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per claim: status, statement, the pre-registered difference with its interval (and a forest
    row with 0 and the rule's margin), the rule, premise checks and the selection."""
    rows = []
    for c in claims:
        status = c.get("status") or ("holds" if c.get("holds") in (True, "True") else "does not hold")
        diff, test = c.get("difference"), c.get("test") or {}
        row = {"name": c["name"], "status": status, "claim": str(c.get("claim", "")), "metric": str(c.get("metric", "")),
               "rule": str(test.get("rule", "")) if isinstance(test, dict) else "", "difference": None, "forest": None,
               "premise": [], "selection": ""}
        if isinstance(diff, dict) and {"mean", "low", "high"} <= set(diff):
            margin = float(test.get("margin") or 0) if isinstance(test, dict) else 0.0
            marks = (0.0, -margin, margin) if isinstance(test, dict) and test.get("equivalence") else (0.0, margin) if margin else (0.0,)
            row["difference"] = f"{_signed(diff['mean'])} [{_signed(diff['low'])}, {_signed(diff['high'])}]"
            row["forest"] = forest(diff["mean"], diff["low"], diff["high"], marks, STATUS_COLOURS.get(status, "#4c72b0"))
        elif c.get("value") is not None:  # an older result: value against a baseline
            row["difference"] = f"{_num(c.get('value'))} vs {_num(c.get('baseline'))}"
        premise = c.get("premise") or {}
        for check in premise.get("checks", []) if isinstance(premise, dict) else []:
            row["premise"].append({"passed": bool(check.get("passed")),
                                   "text": f"{check.get('name')}: {_num(check.get('value'))} {check.get('op', '')} {_num(check.get('bound'))}"})
        selection = c.get("selection") or {}
        if isinstance(selection, dict) and selection:
            chosen = selection.get("chosen")
            if isinstance(chosen, dict) and all(str(k).isdigit() for k in chosen):  # per seed: said once when all chose the same
                values = {json.dumps(v, sort_keys=True) if not isinstance(v, str) else v for v in chosen.values()}
                chosen = f"at every seed {values.pop()}" if len(values) == 1 else "; ".join(f"seed {k}: {v}" for k, v in chosen.items())
            else:
                chosen = _num(chosen)
            row["selection"] = f"{selection.get('rule', '')} (on {selection.get('split', '?')}); chosen {chosen}"
        rows.append(row)
    return rows


# ---- sections of tables (pairwise, refusal, compute) -------------------------------------------

Cell = Any  # text (escaped by the template), or {"lines": [text, ...]}


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    title: str = ""
    notes: list[str] = field(default_factory=list)


def pairwise_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Head-to-head results: the local judge's (per system, baseline and prompt set) and each
    AlpacaEval-style annotation file's (per generator)."""
    out = []
    for run in runs:
        for r in run.summary.get("pairwise", []):
            out.append({"run": run.name, "source": "judge", "label": f"{r['system']} vs {r['baseline']} ({r['prompt_set']})", **r})
        for path, by_generator in run.summary.get("annotations", {}).items():
            for generator, r in by_generator.items():
                out.append({"run": run.name, "source": Path(path).name, "label": f"{generator} ({Path(path).name})", **r})
    return [r for r in out if r.get("n_total")]


def _lc(r: dict[str, Any]) -> str:
    lc, ci = r.get("length_controlled_win_rate_minimal"), r.get("length_controlled_interval")
    return "–" if lc is None else f"{lc:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def _tables(runs: list[Run]) -> list[Table]:
    pairwise = [[r["run"], r["source"], r["label"], f"{r['win_rate']:.1f} ± {r['standard_error']:.1f}", f"{r['discrete_win_rate']:.1f}",
                 f"{r['n_wins']} / {r['n_draws']} / {r['n_wins_base']}", _lc(r), _num(r.get("conflict_rate")), _num(r.get("bpde")),
                 _num(r.get("no_verdict"))] for r in pairwise_rows(runs)]
    refusal = [[run.name, r["system"], r["scorer"], {"lines": [f"{k}: {_interval(v)}" for k, v in r["rate"].items()]},
                _num(r["over_refusal"]), _num(r["f1"]),
                f"TP {r['confusion']['tp']} FN {r['confusion']['fn']} FP {r['confusion']['fp']} TN {r['confusion']['tn']}", r["unlabelled"]]
               for run in runs for r in run.summary.get("refusal", [])]
    compute = [[run.name, e["system"], e["prompt_set"], _num(e["compute"].get("seconds")), _num(e["compute"].get("generated_tokens")),
                _num(e["compute"].get("tokens_per_s"), 1), {"lines": [f"{m}: {n}" for m, n in e["compute"].get("forward_tokens", {}).items()]},
                _num(e["compute"].get("large_fraction"))] for run in runs for e in run.summary.get("table", [])]
    every = [[run.name, e["system"], e["prompt_set"], metric, _interval(m), m["n"], _num(m.get("unlabelled", 0))]
             for run in runs for e in run.summary.get("table", []) for metric, m in e["metrics"].items()]
    best = [[run.name, e["system"], e["prompt_set"], c["proxy"], c["gold"], {"lines": [f"n={p['best_of']}: {_interval(p)}" for p in c["curve"]]}]
            for run in runs for e in run.summary.get("table", []) for c in e.get("best_of_n", [])]
    tables = [
        Table(["run", "source", "system", "win rate ± se", "discrete", "W / D / L", "length-controlled (minimal) [95%]", "conflict rate",
               "BPDE", "no verdict"], pairwise, "Head to head",
              ["AlpacaEval's win rate (100 × mean preference − 1) ± standard error, discrete win rate, wins / draws / losses. The "
               "minimal length-controlled win rate fits the length difference only, with a bootstrap interval over verdicts; "
               "conflict rate and BPDE from judging both orders (FairEval)."]),
        Table(["run", "system", "scorer", "refusal rate per set", "over-refusal", "F1", "confusion", "unlabelled"], refusal, "Refusal"),
        Table(["run", "system", "prompt set", "proxy", "gold", "curve"], best, "Best-of-n",
              ["Unbiased estimate from each prompt's samples (Coste et al.): the gold score of the proxy's pick among n."]),
        Table(["run", "system", "prompt set", "seconds", "generated tokens", "tokens/s", "forward tokens per model", "large fraction"],
              compute, "Compute", ["Forward tokens: positions each model computed (prompt once, then one per step and row, padding "
                                   "included). Large fraction: EAD's share of tokens the large model decided."]),
        Table(["run", "system", "prompt set", "metric", "mean ± se [95% interval]", "n", "unlabelled"], every, "Every metric"),
    ]
    return [t for t in tables if t.rows]


# ---- plots -----------------------------------------------------------------------------------

def _png(fig: Any) -> dict[str, str]:
    import matplotlib.pyplot as plt

    title = fig._suptitle.get_text() if fig._suptitle is not None else fig.axes[0].get_title() if fig.axes else "plot"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return _image(title, buf.getvalue())


def _image(alt: str, png: bytes) -> dict[str, str]:
    return {"alt": alt, "src": "data:image/png;base64," + base64.b64encode(png).decode()}


def _plots(runs: list[Run], claims: list[dict[str, Any]]) -> list[dict[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    figures = _sweep_plots(runs) + _win_rate_plot(runs) + _transition_plots(runs) + _best_of_n_plots(runs) + _tradeoff_plot(runs)
    for claim in claims:  # claims that saved a plot beside result.json (e.g. best-of-n curves)
        if Path(claim["_dir"]).name == claim["name"]:
            figures += [_image(png.name, png.read_bytes()) for png in sorted(Path(claim["_dir"]).glob("*.png"))]
    return figures


def _tradeoff_plot(runs: list[Run]) -> list[dict[str, str]]:
    """Accuracy against generated tokens per second, one panel per prompt set, one point per system."""
    import matplotlib.pyplot as plt

    by_set: dict[str, list[tuple[str, float, dict[str, Any]]]] = defaultdict(list)
    for run in runs:
        for e in run.summary.get("table", []):
            for k, m in e["metrics"].items():
                if k.endswith(".correct") and not k.startswith("t2.") and e["compute"].get("tokens_per_s"):
                    by_set[f"{e['prompt_set']} ({k})"].append((_label(run, e["system"], runs), e["compute"]["tokens_per_s"], m))
    if not by_set:
        return []
    from matplotlib.ticker import NullFormatter

    colours = {system: f"C{i % 10}" for i, system in enumerate(dict.fromkeys(p[0] for ps in by_set.values() for p in ps))}
    fig, axes = plt.subplots(1, len(by_set), figsize=(4.2 * len(by_set), 3.2), squeeze=False)
    for ax, (name, points) in zip(axes.flat, by_set.items()):
        for system, speed, m in points:  # a system keeps its colour across panels
            ax.errorbar(speed, m["value"], yerr=[[m["value"] - m["low"]], [m["high"] - m["value"]]], fmt="o", capsize=3,
                        color=colours[system])
            ax.annotate(system, (speed, m["value"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("generated tokens / s (log)")
        ax.set_title(name, fontsize=9)
    axes.flat[0].set_ylabel("accuracy (95% interval)")
    fig.suptitle("accuracy vs compute")
    fig.tight_layout()
    return [_png(fig)]


def _band(ax: Any, xs: list[float], points: list[dict[str, Any]], label: str) -> None:
    """A line through the estimates with its 95% interval shaded."""
    ax.plot(xs, [p["value"] for p in points], marker="o", label=label)
    ax.fill_between(xs, [p["low"] for p in points], [p["high"] for p in points], alpha=0.2)


def _win_rate_plot(runs: list[Run]) -> list[dict[str, str]]:
    import matplotlib.pyplot as plt

    rows = pairwise_rows(runs)
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(rows) + 1.2))
    y = range(len(rows))
    ax.barh(y, [r["win_rate"] for r in rows], xerr=[1.96 * (r["standard_error"] or 0) for r in rows], capsize=4, color="#55a868")
    ax.axvline(50, color="#888", lw=1, ls="--")
    ax.set_yticks(list(y), [r["label"] for r in rows], fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("win rate (%), ± 1.96 se")
    ax.set_title("head-to-head win rate")
    return [_png(fig)]


def _transition_plots(runs: list[Run]) -> list[dict[str, str]]:
    """Self-correction: how first attempts fare on the second, one stacked bar each."""
    import matplotlib.pyplot as plt

    bars = []
    for run in runs:
        for e in run.summary.get("table", []):
            for key in [k for k in e["metrics"] if k.endswith(".acc_t1")]:
                name = key.removesuffix(".acc_t1")
                t1, i2c, c2i = (e["metrics"][f"{name}.{k}"]["value"] for k in ("acc_t1", "delta_i_to_c", "delta_c_to_i"))
                bars.append((f"{e['system']}\n{e['prompt_set']} ({name})", [t1 - c2i, c2i, i2c, 1 - t1 - i2c]))
    if not bars:
        return []
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(bars) + 2), 3.2))
    bottom = [0.0] * len(bars)
    for k, (label, color) in enumerate((("right → right", "#55a868"), ("right → wrong", "#c44e52"),
                                        ("wrong → right", "#4c72b0"), ("wrong → wrong", "#bbbbbb"))):
        heights = [b[1][k] for b in bars]
        ax.bar(range(len(bars)), heights, bottom=bottom, color=color, label=label)
        bottom = [a + h for a, h in zip(bottom, heights)]
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("share of prompts")
    ax.set_title("self-correction transitions (attempt 1 → 2)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    return [_png(fig)]


def _best_of_n_plots(runs: list[Run]) -> list[dict[str, str]]:
    import matplotlib.pyplot as plt

    curves = [(e, c) for run in runs for e in run.summary.get("table", []) for c in e.get("best_of_n", [])]
    if not curves:
        return []
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    for e, c in curves:
        _band(ax, [p["best_of"] for p in c["curve"]], c["curve"], f"{e['system']} / {e['prompt_set']}: {c['proxy']}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n (samples reranked)")
    ax.set_ylabel(", ".join(sorted({c["gold"] for _, c in curves})))
    ax.set_title("best-of-n (95% interval)")
    ax.legend(fontsize=7)
    return [_png(fig)]


def _sweep_plots(runs: list[Run]) -> list[dict[str, str]]:
    """Each metric against the swept option of every one-option sweep (e.g. refusal rate vs
    threshold, one line per prompt set)."""
    import matplotlib.pyplot as plt

    figures = []
    for run in runs:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for system in run.summary.get("systems", []):
            if len(system.get("point") or {}) == 1 and isinstance(next(iter(system["point"].values())), (int, float)):
                groups[system["group"]].append(system)
        entries = {(e["system"], e["prompt_set"]): e for e in run.summary.get("table", [])}
        for group, systems in groups.items():
            option = next(iter(systems[0]["point"]))
            systems = sorted(systems, key=lambda s: s["point"][option])
            sets = sorted({p for (_, p) in entries})
            metrics = sorted({m for s in systems for p in sets for m in entries.get((s["name"], p), {}).get("metrics", {})} - {"finished"})
            cols = min(3, len(metrics))
            fig, axes = plt.subplots(-(-len(metrics) // cols), cols, figsize=(4 * cols, 2.8 * -(-len(metrics) // cols)), squeeze=False)
            for ax, metric in zip(axes.flat, metrics):
                for p in sets:
                    points = [(s["point"][option], entries[s["name"], p]["metrics"][metric]) for s in systems
                              if metric in entries.get((s["name"], p), {}).get("metrics", {})]
                    if points:
                        _band(ax, [x for x, _ in points], [m for _, m in points], p)
                ax.set_xlabel(option, fontsize=8)
                ax.set_title(metric, fontsize=9)
                ax.legend(fontsize=7)
            for ax in list(axes.flat)[len(metrics):]:
                ax.axis("off")
            fig.suptitle(f"{group}: each metric vs {option} (95% interval)")
            fig.tight_layout()
            figures.append(_png(fig))
    return figures


# ---- the browsers' data (JSON, rendered by report.js with textContent) -------------------------

def verdicts(scores: dict[str, Any]) -> dict[str, Any]:
    """A sample's verdicts: ``correct`` (all first-attempt ``*.correct`` scores true), ``refused``
    (any ``*.refused`` true), ``reward`` (the first ``*.reward``); ``None`` where not scored."""
    correct = [v for k, v in scores.items() if k.endswith(".correct") and not k.startswith("t2.") and isinstance(v, bool)]
    refused = [v for k, v in scores.items() if k.endswith(".refused") and isinstance(v, bool)]
    reward = next((v for k, v in scores.items() if k.endswith(".reward") and isinstance(v, (int, float))), None)
    return {"correct": all(correct) if correct else None, "refused": any(refused) if refused else None,
            "reward": None if reward is None else round(float(reward), 4)}


def _gold(row: dict[str, Any], expect: str | None) -> str:
    if row.get("answer") not in (None, ""):
        return str(row["answer"])
    if expect in ("refuse", "respond"):
        return f"should {expect}"
    if expect and expect.startswith("field:") and row.get(expect[6:]):
        return f"should {row[expect[6:]]}"
    return ""


OUTCOMES = {  # side-by-side filters: (label, test on the two sides' verdicts)
    "a_right_b_wrong": ("A right, B wrong", lambda a, b: a["correct"] is True and b["correct"] is False),
    "a_wrong_b_right": ("A wrong, B right", lambda a, b: a["correct"] is False and b["correct"] is True),
    "both_wrong": ("both wrong", lambda a, b: a["correct"] is False and b["correct"] is False),
    "both_right": ("both right", lambda a, b: a["correct"] is True and b["correct"] is True),
    "a_refused_b_answered": ("A refused, B answered", lambda a, b: a["refused"] is True and b["refused"] is False),
    "a_answered_b_refused": ("A answered, B refused", lambda a, b: a["refused"] is False and b["refused"] is True),
    "verdicts_differ": ("verdicts differ", lambda a, b: a["correct"] != b["correct"] or a["refused"] != b["refused"]),
    "outputs_differ": ("outputs differ", lambda a, b: a["output"] != b["output"]),
}


def browser_data(runs: list[Run], limit: int) -> dict[str, Any]:
    """The browsers' data: prompts (stored once), samples (short keys; ``v`` the verdicts) and, per
    system against its run's baseline, side-by-side pairs of the first samples on the prompts both
    answered, as ``[sample A, sample B, outcome bits]``, sorted by how much the verdicts disagree,
    then by reward gap, then whether the outputs differ."""
    prompts: list[str] = []
    prompt_id: dict[tuple[str, str, Any], int] = {}
    samples: list[dict[str, Any]] = []
    blocks = []
    specs = {(run.name, spec["name"]): spec for run in runs for spec in run.summary.get("systems", [])}
    bits = {k: 1 << n for n, k in enumerate(OUTCOMES)}
    total = 0
    for run in runs:
        expects = {s["name"]: s.get("expect") or (s.get("expect_field") and f"field:{s['expect_field']}")
                   for s in run.summary.get("prompt_sets", [])}
        first: dict[tuple[str, str, Any], int] = {}  # (system, set, index) -> its first sample's place in samples
        for s in run.samples:
            total += 1
            if len(samples) >= limit:
                continue
            key = (run.name, s["prompt_set"], s["index"])
            if key not in prompt_id:
                prompt_id[key] = len(prompts)
                prompts.append(last_text(s["prompt"]))
            v, spec = verdicts(s["scores"]), specs.get((run.name, s["system"]), {})
            if s.get("sample", 0) == 0:
                first[s["system"], s["prompt_set"], s["index"]] = len(samples)
            samples.append({"id": f"{run.name}/{s['system']}/{s['prompt_set']}/{s['index']}/{s.get('sample', 0)}",
                            "system": _label(run, s["system"], runs), "model": str(spec.get("model", "")),
                            "method": str(spec.get("method", "plain")), "set": s["prompt_set"], "i": s["index"],
                            "p": prompt_id[key], "out": s["output"], "gold": _gold(s["row"], expects.get(s["prompt_set"])),
                            "correct": "n/a" if v["correct"] is None else _num(v["correct"]),
                            "refused": "n/a" if v["refused"] is None else _num(v["refused"]),
                            "category": str(s["row"].get("category", "")), "v": v,
                            "scores": ", ".join(f"{k}={_num(x)}" for k, x in s["scores"].items())})
        systems = list(dict.fromkeys(s["name"] for s in run.summary.get("systems", [])))
        for other in systems[1:]:
            ranked = []
            for (system, set_name, i), ka in first.items():
                kb = first.get((other, set_name, i))
                if system != systems[0] or kb is None:
                    continue
                a, b = ({**samples[k]["v"], "output": samples[k]["out"]} for k in (ka, kb))
                disagree = (a["correct"] != b["correct"]) + (a["refused"] != b["refused"])
                gap = abs((a["reward"] or 0) - (b["reward"] or 0))
                mask = sum(bit for k, bit in bits.items() if OUTCOMES[k][1](a, b))
                ranked.append((-disagree, -gap, a["output"] == b["output"], ka, kb, mask))
            ranked.sort()
            pairs = [[ka, kb, mask] for *_, ka, kb, mask in ranked]
            outcomes = [[k, label, bits[k], sum(1 for p in pairs if p[2] & bits[k])] for k, (label, _) in OUTCOMES.items()]
            blocks.append({"name": f"{_label(run, other, runs)} vs {_label(run, systems[0], runs)}", "a": _label(run, systems[0], runs),
                           "b": _label(run, other, runs), "pairs": pairs, "outcomes": [o for o in outcomes if o[3]]})
    keys = ("system", "model", "method", "set", "correct", "refused", "category")
    options = [[k, sorted({s[k] for s in samples})] for k in keys]
    return {"prompts": prompts, "samples": samples, "total": total, "options": [o for o in options if len(o[1]) > 1 or o[0] == "system"],
            "blocks": blocks}


def _json_for_html(data: Any) -> str:
    """JSON that cannot end its ``<script>`` block or open markup: ``<``, ``>``, ``&`` escaped."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _csp_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def render(args: ReportArgs) -> tuple[Path, Path]:
    """Write the HTML page and the Markdown summary; returns both paths."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    started = time.perf_counter()
    runs, claims = load_runs(args.runs)
    diffs = comparisons(runs)
    boards = [scoreboard(run, runs, diffs) for run in runs if run.summary.get("table")]
    for board in boards:
        board["sentences"] = headline(board, diffs)
    for d in diffs:
        d["text"], d["p_text"], d["holm_text"] = _diff_text(d), _p(d.get("p_value")), _p(d.get("p_holm"))
        sense = d["direction"] * d["value"] if d["significant"] else 0
        d["forest"] = forest(d["value"], d["low"], d["high"], colour="#2a7a3b" if sense > 0 else "#b03030" if sense < 0 else
                             "#4c72b0" if d["significant"] else "#999999")
    css, script = (TEMPLATES / "report.css").read_text(), (TEMPLATES / "report.js").read_text()
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined)
    data = browser_data(runs, args.max_samples) if runs else None
    page = env.get_template("report.html").render(
        title=args.title, runs=args.runs, boards=boards, comparisons=diffs, claims=claim_rows(claims), tables=_tables(runs),
        plots=_plots(runs, claims), data=_json_for_html(data) if data else None, n_samples=data["total"] if data else 0,
        seconds=time.perf_counter() - started, css=css, script=script, style_hash=_csp_hash(css), script_hash=_csp_hash(script))
    out = atomic_write_text(args.output, page)
    md = atomic_write_text(Path(args.output).with_suffix(".md"), markdown(runs, claims, boards, diffs))
    return out, md


def markdown(runs: list[Run], claims: list[dict[str, Any]], boards: list[dict[str, Any]] | None = None,
             diffs: list[dict[str, Any]] | None = None) -> str:
    """The summary for terminals and pull requests: claims, each scoreboard with its sentences,
    the comparisons, head-to-head win rates."""
    diffs = comparisons(runs) if diffs is None else diffs
    boards = [scoreboard(run, runs, diffs) for run in runs if run.summary.get("table")] if boards is None else boards
    lines = []
    if claims:
        lines += ["| claim | status | difference [95% interval] |", "|---|---|---|"]
        lines += [f"| {c['name']} | {c['status']} | {c['difference'] or '–'} |" for c in claim_rows(claims)]
        lines.append("")
    for board in boards:
        heads = [f"{c['prompt_set']} {c['metric']}" for c in board["columns"]]
        lines += [f"**{board['run']}** (baseline {board['baseline']})", "", "| system | " + " | ".join(heads) + " | tokens/s |",
                  "|---" * (len(heads) + 2) + "|"]
        for r in board["rows"]:
            cells = ["–" if c is None else ("–" if c["value"] is None else f"{c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]")
                     + ("*" if c["mark"] else "") + (f" ({c['abstained']['text']})" if c["abstained"] else "") for c in r["cells"]]
            lines.append(f"| {r['system']} | " + " | ".join(cells) + f" | {_num(r['tokens_per_s'], 1)} |")
        lines += ["", f"\\* differs from the baseline: Holm-adjusted p <= {ALPHA:g} across the {len(diffs)} comparisons "
                  "(the interval alone decides nothing).", ""]
        lines += [f"- {s}" for s in board.get("sentences") or headline(board, diffs)]
        lines.append("")
    if diffs:
        lines += ["| comparison | prompt set | metric | difference [95%] | test | p | Holm p |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {d['label']} − {d['baseline_label']} | {d['prompt_set']} | {d['metric']} | {_diff_text(d)} | {d.get('test', '–')} "
                  f"| {_p(d.get('p_value'))} | {_p(d.get('p_holm'))} |" for d in diffs]
    pairwise = pairwise_rows(runs)
    if pairwise:
        lines += ["", "| run | head-to-head | win rate ± se | discrete | W / D / L | LC (minimal) [95%] |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {r['label']} | {r['win_rate']:.1f} ± {r['standard_error']:.1f} | {r['discrete_win_rate']:.1f} "
                  f"| {r['n_wins']} / {r['n_draws']} / {r['n_wins_base']} | {_lc(r)} |" for r in pairwise]
    return "\n".join(lines) + "\n"
