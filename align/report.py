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

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


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
                _num(e["compute"].get("generated_tokens")), _num(e["compute"].get("tokens_per_s"), 1)]
               for run in runs for e in run.summary.get("table", [])]
    return (
        "<h2>Summary</h2><p>Mean ± standard error [95% bootstrap interval over prompts].</p>"
        + _table(["run", "system", "prompt set", "metric", "value", "n", "unlabelled"], cells, "summary")
        + "<h3>Differences (paired over shared prompts)</h3><p>A difference is called one only when its interval excludes 0.</p>"
        + _table(["run", "systems", "prompt set", "metric", "difference", "verdict"], diffs)
        + "<h3>Compute</h3>" + _table(["run", "system", "prompt set", "seconds", "generated tokens", "tokens/s"], compute)
    )


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
    for metric, items in sorted(by_metric.items()):
        fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(items) + 2), 3))
        labels = [f"{r['system']}\n{r['prompt_set']}" for r in items]
        values = [r["value"] for r in items]
        errs = [[r["value"] - r["low"] for r in items], [r["high"] - r["value"] for r in items]]
        ax.bar(range(len(items)), values, yerr=errs, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(items)), labels, fontsize=8)
        ax.set_title(f"{metric} (95% interval)")
        figures.append(_png(fig))
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
    for claim in claims:  # claims that saved a plot beside result.json (e.g. best-of-n curves)
        for png in sorted(Path(claim["_dir"]).glob("*.png")):
            figures.append(f'<img class="plot" alt="{html.escape(png.name)}" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">')
    return "<h2>Plots</h2>" + "".join(figures) if figures else ""


def _claims_section(claims: list[dict[str, Any]]) -> str:
    if not claims:
        return ""
    rows = [[html.escape(c["name"]), html.escape(str(c.get("claim", ""))), html.escape(str(c.get("metric", ""))),
             html.escape(_num(c.get("value"))), html.escape(_num(c.get("baseline"))), html.escape(_num(c.get("interval"))),
             '<span class="sig">holds</span>' if c.get("holds") else "does not hold"] for c in claims]
    return "<h2>Claims</h2>" + _table(["claim", "statement", "metric", "value", "baseline", "interval", "holds"], rows)


def _correct(sample: dict[str, Any]) -> str:
    flags = [v for k, v in sample["scores"].items() if k.endswith(".correct") and isinstance(v, bool)]
    return "yes" if flags and all(flags) else "no" if flags else "n/a"


def _browser(runs: list[Run], limit: int) -> str:
    samples = [(run.name, s) for run in runs for s in run.samples]
    shown = samples[:limit]
    options = {key: sorted({str(v) for v in values}) for key, values in (
        ("system", [f"{r}/{s['system']}" for r, s in shown]), ("prompt_set", [s["prompt_set"] for _, s in shown]),
        ("correct", [_correct(s) for _, s in shown]), ("category", [s["row"].get("category", "") for _, s in shown]))}
    selects = "".join(
        f'<label>{key.replace("_", " ")} <select data-filter="{key}"><option value="">all</option>'
        + "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values) + "</select></label> "
        for key, values in options.items())
    rows = []
    for run_name, s in shown:
        prompt = last_text(s["prompt"])
        scores = ", ".join(f"{k}={_num(v)}" for k, v in s["scores"].items())
        attrs = {"system": f"{run_name}/{s['system']}", "prompt_set": s["prompt_set"], "correct": _correct(s),
                 "category": str(s["row"].get("category", ""))}
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
    body = (_claims_section(claims) + (_summary_section(runs) if runs else "") + _refusal_section(runs) + _plots(runs, claims)
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
        lines += [f"| {c['name']} | {_num(c.get('value'))} | {_num(c.get('baseline'))} | {_num(bool(c.get('holds')))} |" for c in claims]
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
    return "\n".join(lines) + "\n"
