"""``align report RUN_DIR [RUN_DIR ...] -o report.html``: one self-contained HTML page (inline CSS,
plots as inline PNG, a few lines of inline script, no network) and a Markdown summary.

Reads ``align eval`` runs (``summary.json`` + ``samples.jsonl``) and ``align reproduce`` results
(``result.json`` files, e.g. ``runs/reproduce``). The sections here build data (tables of cells,
plots); the page is the Jinja2 template ``align/templates/report.html`` with autoescape on, so
every model text, index and label is escaped by the template engine. Its Content-Security-Policy
allows exactly the page's own script and style (by their SHA-256 hashes) and images from data URIs:
an output holding ``<script>`` shows as text, and an injected inline script would not run either.
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


@dataclass
class ReportArgs:
    runs: list[str] = field(default_factory=list, metadata={"help": "eval run directories and/or reproduce result directories"})
    output: str = field(default="report.html", metadata={"help": "the HTML page (a .md summary is written beside it)"})
    title: str = field(default="alignkit report", metadata={"help": "page title"})
    max_samples: int = field(default=20000, metadata={"help": "samples shown in the browser (the rest are counted)"})

    def __post_init__(self) -> None:
        if not self.runs:
            raise ConfigError("runs: give at least one run directory (align eval's output_dir or runs/reproduce)")


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
        for result in sorted(path.glob("*/result.json")) + ([path / "result.json"] if (path / "result.json").is_file() else []):
            claims.append({"name": result.parent.name, **json.loads(result.read_text()), "_dir": str(result.parent)})
            found = True
        if not found:
            raise ConfigError(f"run directory {path} holds no summary.json (align eval) and no result.json (align reproduce)")
    return runs, claims


# ---- formatting -----------------------------------------------------------------------------

def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _interval(m: dict[str, Any]) -> str:
    se = f" ± {m['se']:.3f}" if m.get("se") is not None else ""
    return f"{m['value']:.3f}{se} [{m['low']:.3f}, {m['high']:.3f}]"


Cell = Any  # text (escaped by the template), or {"pre": text}, {"lines": [text, ...]}, {"sig": text}


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    cls: str = ""
    title: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Section:
    title: str
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[dict[str, str]] = field(default_factory=list)
    level: int = 2


def _png(fig: Any) -> dict[str, str]:
    import matplotlib.pyplot as plt

    title = fig._suptitle.get_text() if fig._suptitle is not None else fig.axes[0].get_title() if fig.axes else "plot"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return _image(title, buf.getvalue())


def _image(alt: str, png: bytes) -> dict[str, str]:
    return {"alt": alt, "src": "data:image/png;base64," + base64.b64encode(png).decode()}


# ---- sections -------------------------------------------------------------------------------

def summary_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per run, system, prompt set and metric."""
    out = []
    for run in runs:
        for entry in run.summary.get("table", []):
            for metric, m in entry["metrics"].items():
                out.append({"run": run.name, "system": entry["system"], "prompt_set": entry["prompt_set"], "metric": metric, **m,
                            "tokens_per_s": entry["compute"].get("tokens_per_s")})
    return out


def _summary_section(runs: list[Run]) -> Section:
    cells = [[r["run"], r["system"], r["prompt_set"], r["metric"], _interval(r), r["n"], _num(r.get("unlabelled", 0))]
             for r in summary_rows(runs)]
    diffs = [[run.name, f"{d['system']} − {d['baseline']}", d["prompt_set"], d["metric"], _interval(d),
              {"sig": "differs"} if d["significant"] else "interval holds 0"]
             for run in runs for d in run.summary.get("differences", [])]
    compute = [[run.name, e["system"], e["prompt_set"], _num(e["compute"].get("seconds")), _num(e["compute"].get("generated_tokens")),
                _num(e["compute"].get("tokens_per_s"), 1),
                {"lines": [f"{m}: {n}" for m, n in e["compute"].get("forward_tokens", {}).items()]},
                _num(e["compute"].get("large_fraction"))]
               for run in runs for e in run.summary.get("table", [])]
    tables = [
        Table(["run", "system", "prompt set", "metric", "value", "n", "unlabelled"], cells, "summary"),
        Table(["run", "systems", "prompt set", "metric", "difference", "verdict"], diffs, title="Differences (paired over shared prompts)",
              notes=["A difference is called one only when its interval excludes 0."]),
        Table(["run", "system", "prompt set", "seconds", "generated tokens", "tokens/s", "forward tokens per model", "large fraction"],
              compute, title="Compute", notes=["Forward tokens: positions each model computed (prompt once, then one per step and "
                                                "row, padding included). Large fraction: EAD's share of tokens the large model decided."]),
    ]
    best = [[run.name, e["system"], e["prompt_set"], c["proxy"], c["gold"], {"lines": [f"n={p['best_of']}: {_interval(p)}" for p in c["curve"]]}]
            for run in runs for e in run.summary.get("table", []) for c in e.get("best_of_n", [])]
    if best:
        tables.append(Table(["run", "system", "prompt set", "proxy", "gold", "curve"], best, title="Best-of-n",
                            notes=["Unbiased estimate from each prompt's samples (Coste et al.): the gold score of the proxy's pick among n."]))
    return Section("Summary", ["Mean ± standard error [95% bootstrap interval over prompts]."], tables)


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


def _pairwise_section(runs: list[Run]) -> list[Section]:
    rows = [[r["run"], r["source"], r["label"],
             f"{r['win_rate']:.1f} ± {r['standard_error']:.1f}", f"{r['discrete_win_rate']:.1f}",
             f"{r['n_wins']} / {r['n_draws']} / {r['n_wins_base']}", _num(r.get("length_controlled_win_rate_minimal"), 1),
             _num(r.get("conflict_rate")), _num(r.get("bpde")), _num(r.get("no_verdict"))] for r in pairwise_rows(runs)]
    if not rows:
        return []
    return [Section("Pairwise", ["AlpacaEval's win rate (100 × mean preference − 1) ± standard error, discrete win rate, wins / "
                                 "draws / losses; the minimal length-controlled win rate fits the length difference only; conflict "
                                 "rate and BPDE from judging both orders (FairEval)."],
                    [Table(["run", "source", "system", "win rate ± se", "discrete", "W / D / L", "length-controlled (minimal)",
                            "conflict rate", "BPDE", "no verdict"], rows)])]


def _refusal_section(runs: list[Run]) -> list[Section]:
    rows = []
    for run in runs:
        for r in run.summary.get("refusal", []):
            c = r["confusion"]
            rows.append([run.name, r["system"], r["scorer"], {"lines": [f"{k}: {_interval(v)}" for k, v in r["rate"].items()]},
                         _num(r["over_refusal"]), _num(r["f1"]), f"TP {c['tp']} FN {c['fn']} FP {c['fp']} TN {c['tn']}",
                         r["unlabelled"]])
    if not rows:
        return []
    return [Section("Refusal", tables=[Table(["run", "system", "scorer", "refusal rate per set", "over-refusal", "F1", "confusion",
                                              "unlabelled"], rows)])]


def _plots(runs: list[Run], claims: list[dict[str, Any]]) -> list[Section]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary_rows(runs)
    figures = []
    by_metric: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["metric"] not in ("finished",):
            by_metric[r["metric"]].append(r)
    bars = []
    for metric, items in sorted(by_metric.items()):  # horizontal: system names stay readable
        fig, ax = plt.subplots(figsize=(5, 0.32 * len(items) + 1.1))
        errs = [[r["value"] - r["low"] for r in items], [r["high"] - r["value"] for r in items]]
        ax.barh(range(len(items)), [r["value"] for r in items], xerr=errs, capsize=3, color="#4c72b0")
        ax.set_yticks(range(len(items)), [f"{r['system']} · {r['prompt_set']}" for r in items], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{metric} (95% interval)")
        bars.append(_png(fig))
    accuracy = [r for r in rows if r["metric"].endswith(".correct") and r.get("tokens_per_s")]
    if accuracy:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for r in accuracy:
            ax.errorbar(r["tokens_per_s"], r["value"], yerr=[[r["value"] - r["low"]], [r["high"] - r["value"]]], fmt="o", capsize=3)
            ax.annotate(r["system"], (r["tokens_per_s"], r["value"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("generated tokens / s")
        ax.set_ylabel("accuracy")
        ax.set_title("accuracy vs compute")
        figures.append(_png(fig))
    figures = _sweep_plots(runs) + _win_rate_plot(runs) + _transition_plots(runs) + _best_of_n_plots(runs) + figures + bars
    for claim in claims:  # claims that saved a plot beside result.json (e.g. best-of-n curves)
        for png in sorted(Path(claim["_dir"]).glob("*.png")):
            figures.append(_image(png.name, png.read_bytes()))
    return [Section("Plots", plots=figures)] if figures else []


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
    """Self-correction: how first attempts fare on the second (METHODS §E4), one stacked bar each."""
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


def _claims_section(claims: list[dict[str, Any]]) -> list[Section]:
    if not claims:
        return []
    def interval(c: dict[str, Any]) -> str:
        v = c.get("interval")
        return f"[{v[0]:.3f}, {v[1]:.3f}]" if isinstance(v, list) and len(v) == 2 else _num(v)

    def status(c: dict[str, Any]) -> Cell:
        text = c.get("status") or ("holds" if c.get("holds") else "does not hold")
        return {"sig": text} if text == "holds" else text

    rows = [[c["name"], str(c.get("claim", "")), str(c.get("metric", "")), _num(c.get("value")), _num(c.get("baseline")),
             interval(c), status(c)] for c in claims]
    return [Section("Claims", ["Interval: 95% interval of the pre-registered difference (claims under the rules)."],
                    [Table(["claim", "statement", "metric", "value", "baseline", "interval", "status"], rows)])]


def _correct(sample: dict[str, Any]) -> str:
    flags = [v for k, v in sample["scores"].items() if k.endswith(".correct") and isinstance(v, bool)]
    return "yes" if flags and all(flags) else "no" if flags else "n/a"


def _browser(runs: list[Run], limit: int) -> dict[str, Any] | None:
    """The sample browser's data: filter options, rows (their ``data-*`` filter attributes, cells)."""
    if not runs:
        return None
    samples = [(run.name, s) for run in runs for s in run.samples]
    shown = samples[:limit]
    specs = {(run.name, spec["name"]): spec for run in runs for spec in run.summary.get("systems", [])}

    def attributes(run_name: str, s: dict[str, Any]) -> dict[str, str]:
        spec = specs.get((run_name, s["system"]), {})
        return {"system": f"{run_name}/{s['system']}", "model": str(spec.get("model", "")), "method": str(spec.get("method", "plain")),
                "prompt_set": s["prompt_set"], "correct": _correct(s), "category": str(s["row"].get("category", ""))}

    rows = [{"attrs": attributes(r, s), "prompt_set": s["prompt_set"], "index": s["index"], "prompt": last_text(s["prompt"]),
             "output": s["output"], "scores": ", ".join(f"{k}={_num(v)}" for k, v in s["scores"].items())} for r, s in shown]
    keys = ("system", "model", "method", "prompt_set", "correct", "category")
    return {"options": [(key, sorted({r["attrs"][key] for r in rows})) for key in keys], "rows": rows,
            "more": len(samples) - len(shown)}


def side_by_side(runs: list[Run]) -> list[dict[str, Any]]:
    """For each run, each system against the first on the same prompts: prompts sorted by how much
    their scores disagree (largest first)."""
    out = []
    for run in runs:
        systems = [s["name"] for s in run.summary.get("systems", [])]
        if len(systems) < 2:
            continue
        index = {(s["system"], s["prompt_set"], s["index"]): s for s in run.samples if s.get("sample", 0) == 0}
        for other in systems[1:]:
            pairs = []
            for (system, set_name, i), a in index.items():
                b = index.get((other, set_name, i))
                if system != systems[0] or b is None:
                    continue
                keys = [k for k in a["scores"] if isinstance(a["scores"][k], (int, float)) and isinstance(b["scores"].get(k), (int, float))]
                gap = sum(abs(float(a["scores"][k]) - float(b["scores"][k])) for k in keys) + (a["output"] != b["output"]) * 1e-6
                pairs.append((gap, a, b))
            pairs.sort(key=lambda p: -p[0])
            out.append({"run": run.name, "baseline": systems[0], "system": other, "pairs": pairs})
    return out


def _side_by_side_section(runs: list[Run], per_pair: int = 50) -> list[Section]:
    tables = [Table(["prompt set", "prompt", block["baseline"], block["system"], "disagreement"],
                    [[a["prompt_set"], {"pre": last_text(a["prompt"])}, {"pre": a["output"]}, {"pre": b["output"]}, f"{gap:.3f}"]
                     for gap, a, b in block["pairs"][:per_pair]],
                    "diff", title=f"{block['run']}: {block['system']} vs {block['baseline']}")
              for block in side_by_side(runs)]
    return [Section("Side by side", ["Per prompt, sorted by how much the scores disagree."], tables)] if tables else []


CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left}th{background:#f3f3f3}
pre{margin:0;white-space:pre-wrap;max-width:40em}.sig{color:#b00;font-weight:bold}img.plot{margin:4px;border:1px solid #eee}
.filters label{margin-right:1em}"""

SCRIPT = """(function(){
  var rows = Array.prototype.slice.call(document.querySelectorAll('tr.sample'));
  var selects = Array.prototype.slice.call(document.querySelectorAll('select[data-filter]'));
  var search = document.getElementById('search'), count = document.getElementById('count');
  function apply(){
    var q = (search.value || '').toLowerCase(), shown = 0;
    rows.forEach(function(r){
      var ok = selects.every(function(s){ return !s.value || r.getAttribute('data-' + s.getAttribute('data-filter')) === s.value; });
      if (ok && q) { ok = r.textContent.toLowerCase().indexOf(q) >= 0; }
      r.style.display = ok ? '' : 'none'; if (ok) shown++;
    });
    count.textContent = shown + ' of ' + rows.length + ' samples';
  }
  selects.forEach(function(s){ s.addEventListener('change', apply); });
  search.addEventListener('input', apply);
  apply();
})();"""


def _csp_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def render(args: ReportArgs) -> tuple[Path, Path]:
    """Write the HTML page and the Markdown summary; returns both paths."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    runs, claims = load_runs(args.runs)
    started = time.perf_counter()
    sections = (_claims_section(claims) + ([_summary_section(runs)] if runs else []) + _refusal_section(runs)
                + _pairwise_section(runs) + _plots(runs, claims) + _side_by_side_section(runs))
    env = Environment(loader=PackageLoader("align", "templates"), autoescape=True, undefined=StrictUndefined)
    page = env.get_template("report.html").render(
        title=args.title, runs=args.runs, seconds=time.perf_counter() - started, sections=sections,
        browser=_browser(runs, args.max_samples), css=CSS, script=SCRIPT, style_hash=_csp_hash(CSS), script_hash=_csp_hash(SCRIPT))
    out = atomic_write_text(args.output, page)
    md = atomic_write_text(Path(args.output).with_suffix(".md"), markdown(runs, claims))
    return out, md


def markdown(runs: list[Run], claims: list[dict[str, Any]]) -> str:
    """The summary for terminals and pull requests."""
    lines = []
    if claims:
        lines += ["| claim | value | baseline | holds |", "|---|---|---|---|"]
        lines += [f"| {c['name']} | {_num(c.get('value'))} | {_num(c.get('baseline'))} | {c.get('status') or _num(bool(c.get('holds')))} |"
                  for c in claims]
        lines.append("")
    rows = summary_rows(runs)
    if rows:
        lines += ["| run | system | prompt set | metric | value ± se [95% interval] | n |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {r['system']} | {r['prompt_set']} | {r['metric']} | {_interval(r)} | {r['n']} |" for r in rows]
    for run in runs:
        sig = [d for d in run.summary.get("differences", []) if d["significant"]]
        if sig:
            lines += ["", f"Differences in {run.name} whose interval excludes 0:"]
            lines += [f"- {d['system']} − {d['baseline']}, {d['prompt_set']} {d['metric']}: {_interval(d)}" for d in sig]
    pairwise = pairwise_rows(runs)
    if pairwise:
        lines += ["", "| run | head-to-head | win rate ± se | discrete | W / D / L |", "|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {r['label']} | {r['win_rate']:.1f} ± {r['standard_error']:.1f} | {r['discrete_win_rate']:.1f} "
                  f"| {r['n_wins']} / {r['n_draws']} / {r['n_wins_base']} |" for r in pairwise]
    return "\n".join(lines) + "\n"
