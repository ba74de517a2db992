"""``align report RUN_DIR [RUN_DIR ...] -o report.html``: one self-contained HTML page (inline CSS,
plots as inline PNG, a few lines of inline script, no network) and a Markdown summary.

Reads ``align eval`` runs (``summary.json`` + ``samples.jsonl``) and ``align reproduce`` results
(``result.json`` files, e.g. ``runs/reproduce``). Every model text is HTML-escaped and the script
only toggles rows' visibility and reads ``textContent``: an output holding ``<script>`` shows as text.
"""

from __future__ import annotations

import base64
import html
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


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    title = fig._suptitle.get_text() if fig._suptitle is not None else fig.axes[0].get_title() if fig.axes else "plot"
    alt = html.escape(title, quote=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img class="plot" alt="{alt}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


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


def _summary_section(runs: list[Run]) -> str:
    rows = summary_rows(runs)
    cells = [[html.escape(r["run"]), html.escape(r["system"]), html.escape(r["prompt_set"]), html.escape(r["metric"]),
              _interval(r), str(r["n"]), _num(r.get("unlabelled", 0))] for r in rows]
    diffs = []
    for run in runs:
        for d in run.summary.get("differences", []):
            mark = '<span class="sig">differs</span>' if d["significant"] else "interval holds 0"
            diffs.append([html.escape(run.name), html.escape(f"{d['system']} − {d['baseline']}"), html.escape(d["prompt_set"]),
                          html.escape(d["metric"]), _interval(d), mark])
    compute = [[html.escape(run.name), html.escape(e["system"]), html.escape(e["prompt_set"]), _num(e["compute"].get("seconds")),
                _num(e["compute"].get("generated_tokens")), _num(e["compute"].get("tokens_per_s"), 1),
                "<br>".join(f"{html.escape(m)}: {n}" for m, n in e["compute"].get("forward_tokens", {}).items()) or "–",
                _num(e["compute"].get("large_fraction"))]
               for run in runs for e in run.summary.get("table", [])]
    return (
        "<h2>Summary</h2><p>Mean ± standard error [95% bootstrap interval over prompts].</p>"
        + _table(["run", "system", "prompt set", "metric", "value", "n", "unlabelled"], cells, "summary")
        + "<h3>Differences (paired over shared prompts)</h3><p>A difference is called one only when its interval excludes 0.</p>"
        + _table(["run", "systems", "prompt set", "metric", "difference", "verdict"], diffs)
        + "<h3>Compute</h3><p>Forward tokens: positions each model computed (prompt once, then one per step and row, padding "
        "included). Large fraction: EAD's share of tokens the large model decided.</p>"
        + _table(["run", "system", "prompt set", "seconds", "generated tokens", "tokens/s", "forward tokens per model",
                  "large fraction"], compute)
        + _best_of_n_table(runs)
    )


def _best_of_n_table(runs: list[Run]) -> str:
    rows = [[html.escape(run.name), html.escape(e["system"]), html.escape(e["prompt_set"]), html.escape(c["proxy"]),
             html.escape(c["gold"]), "<br>".join(f"n={p['best_of']}: {_interval(p)}" for p in c["curve"])]
            for run in runs for e in run.summary.get("table", []) for c in e.get("best_of_n", [])]
    if not rows:
        return ""
    return ("<h3>Best-of-n</h3><p>Unbiased estimate from each prompt's samples (Coste et al.): the gold score of the "
            "proxy's pick among n.</p>" + _table(["run", "system", "prompt set", "proxy", "gold", "curve"], rows))


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


def _pairwise_section(runs: list[Run]) -> str:
    rows = [[html.escape(r["run"]), html.escape(r["source"]), html.escape(r["label"]),
             f"{r['win_rate']:.1f} ± {r['standard_error']:.1f}", f"{r['discrete_win_rate']:.1f}",
             f"{r['n_wins']} / {r['n_draws']} / {r['n_wins_base']}", _num(r.get("length_controlled_win_rate_minimal"), 1),
             _num(r.get("conflict_rate")), _num(r.get("bpde")), _num(r.get("no_verdict"))] for r in pairwise_rows(runs)]
    if not rows:
        return ""
    return ("<h2>Pairwise</h2><p>AlpacaEval's win rate (100 × mean preference − 1) ± standard error, discrete win rate, "
            "wins / draws / losses; the minimal length-controlled win rate fits the length difference only; conflict "
            "rate and BPDE from judging both orders (FairEval).</p>"
            + _table(["run", "source", "system", "win rate ± se", "discrete", "W / D / L", "length-controlled (minimal)",
                      "conflict rate", "BPDE", "no verdict"], rows))


def _refusal_section(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        for r in run.summary.get("refusal", []):
            c = r["confusion"]
            rows.append([html.escape(run.name), html.escape(r["system"]), html.escape(r["scorer"]),
                         "<br>".join(f"{html.escape(k)}: {_interval(v)}" for k, v in r["rate"].items()),
                         _num(r["over_refusal"]), _num(r["f1"]), f"TP {c['tp']} FN {c['fn']} FP {c['fp']} TN {c['tn']}",
                         str(r["unlabelled"])])
    if not rows:
        return ""
    return "<h2>Refusal</h2>" + _table(["run", "system", "scorer", "refusal rate per set", "over-refusal", "F1", "confusion", "unlabelled"], rows)


def _plots(runs: list[Run], claims: list[dict[str, Any]]) -> str:
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
            figures.append(f'<img class="plot" alt="{html.escape(png.name)}" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">')
    return "<h2>Plots</h2>" + "".join(figures) if figures else ""


def _band(ax: Any, xs: list[float], points: list[dict[str, Any]], label: str) -> None:
    """A line through the estimates with its 95% interval shaded."""
    ax.plot(xs, [p["value"] for p in points], marker="o", label=label)
    ax.fill_between(xs, [p["low"] for p in points], [p["high"] for p in points], alpha=0.2)


def _win_rate_plot(runs: list[Run]) -> list[str]:
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


def _transition_plots(runs: list[Run]) -> list[str]:
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


def _best_of_n_plots(runs: list[Run]) -> list[str]:
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


def _sweep_plots(runs: list[Run]) -> list[str]:
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


def _claims_section(claims: list[dict[str, Any]]) -> str:
    if not claims:
        return ""
    def interval(c: dict[str, Any]) -> str:
        v = c.get("interval")
        return f"[{v[0]:.3f}, {v[1]:.3f}]" if isinstance(v, list) and len(v) == 2 else _num(v)

    def status(c: dict[str, Any]) -> str:
        text = c.get("status") or ("holds" if c.get("holds") else "does not hold")
        return f'<span class="sig">{html.escape(text)}</span>' if text == "holds" else html.escape(text)

    rows = [[html.escape(c["name"]), html.escape(str(c.get("claim", ""))), html.escape(str(c.get("metric", ""))),
             html.escape(_num(c.get("value"))), html.escape(_num(c.get("baseline"))), html.escape(interval(c)), status(c)]
            for c in claims]
    return ("<h2>Claims</h2><p>Interval: 95% interval of the pre-registered difference (claims under the rules).</p>"
            + _table(["claim", "statement", "metric", "value", "baseline", "interval", "status"], rows))


def _correct(sample: dict[str, Any]) -> str:
    flags = [v for k, v in sample["scores"].items() if k.endswith(".correct") and isinstance(v, bool)]
    return "yes" if flags and all(flags) else "no" if flags else "n/a"


def _browser(runs: list[Run], limit: int) -> str:
    samples = [(run.name, s) for run in runs for s in run.samples]
    shown = samples[:limit]
    specs = {(run.name, spec["name"]): spec for run in runs for spec in run.summary.get("systems", [])}

    def attributes(run_name: str, s: dict[str, Any]) -> dict[str, str]:
        spec = specs.get((run_name, s["system"]), {})
        return {"system": f"{run_name}/{s['system']}", "model": str(spec.get("model", "")), "method": str(spec.get("method", "plain")),
                "prompt_set": s["prompt_set"], "correct": _correct(s), "category": str(s["row"].get("category", ""))}

    shown_attrs = [attributes(r, s) for r, s in shown]
    options = {key: sorted({a[key] for a in shown_attrs}) for key in ("system", "model", "method", "prompt_set", "correct", "category")}
    selects = "".join(
        f'<label>{key.replace("_", " ")} <select data-filter="{key}"><option value="">all</option>'
        + "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values) + "</select></label> "
        for key, values in options.items())
    rows = []
    for (run_name, s), attrs in zip(shown, shown_attrs):
        prompt = last_text(s["prompt"])
        scores = ", ".join(f"{k}={_num(v)}" for k, v in s["scores"].items())
        data = " ".join(f'data-{k}="{html.escape(v)}"' for k, v in attrs.items())
        rows.append(f'<tr class="sample" {data}><td>{html.escape(attrs["system"])}</td><td>{html.escape(s["prompt_set"])}</td>'
                    f'<td>{s["index"]}</td><td><pre>{html.escape(prompt)}</pre></td><td><pre>{html.escape(s["output"])}</pre></td>'
                    f"<td>{html.escape(scores)}</td></tr>")
    more = f"<p>{len(samples) - len(shown)} more samples not shown (max_samples).</p>" if len(samples) > len(shown) else ""
    return (
        '<h2>Samples</h2><div class="filters">' + selects
        + '<label>search <input type="search" id="search" placeholder="text in prompt or output"></label>'
        + ' <span id="count"></span></div>'
        + '<table id="samples"><thead><tr><th>system</th><th>prompt set</th><th>#</th><th>prompt</th><th>output</th><th>scores</th></tr></thead><tbody>'
        + "".join(rows) + "</tbody></table>" + more
    )


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


def _side_by_side_section(runs: list[Run], per_pair: int = 50) -> str:
    parts = []
    for block in side_by_side(runs):
        rows = []
        for gap, a, b in block["pairs"][:per_pair]:
            prompt = last_text(a["prompt"])
            rows.append([html.escape(a["prompt_set"]), f"<pre>{html.escape(prompt)}</pre>", f"<pre>{html.escape(a['output'])}</pre>",
                         f"<pre>{html.escape(b['output'])}</pre>", f"{gap:.3f}"])
        parts.append(f"<h3>{html.escape(block['run'])}: {html.escape(block['system'])} vs {html.escape(block['baseline'])}</h3>"
                     + _table(["prompt set", "prompt", html.escape(block["baseline"]), html.escape(block["system"]), "disagreement"], rows, "diff"))
    return "<h2>Side by side</h2><p>Per prompt, sorted by how much the scores disagree.</p>" + "".join(parts) if parts else ""


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


def render(args: ReportArgs) -> tuple[Path, Path]:
    """Write the HTML page and the Markdown summary; returns both paths."""
    runs, claims = load_runs(args.runs)
    started = time.perf_counter()
    body = (_claims_section(claims) + (_summary_section(runs) if runs else "") + _refusal_section(runs) + _pairwise_section(runs)
            + _plots(runs, claims)
            + _side_by_side_section(runs) + (_browser(runs, args.max_samples) if runs else ""))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(args.title)}</title>'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">'
            f"<style>{CSS}</style></head><body><h1>{html.escape(args.title)}</h1>"
            f"<p>Runs: {html.escape(', '.join(args.runs))}. Generated by alignkit in {time.perf_counter() - started:.1f} s.</p>"
            f"{body}<script>{SCRIPT if runs else ''}</script></body></html>")
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
