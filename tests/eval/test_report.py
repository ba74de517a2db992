"""`align report`: one self-contained page from eval runs and claim results, checked in a real
headless Chromium (no console errors, tables, plots, a working sample filter, a screenshot, and
model text with script/markup shown as text, never run), plus the Markdown summary and bad input."""

import json
import shutil
from pathlib import Path

import pytest

from align.cli import main
from align.config import ConfigError
from align.eval.run import EvalArgs, append_samples, pairwise_summary, summarise
from align.report import ReportArgs, render

HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    '<a href="javascript:window.__pwned = 3" id="evil">click</a>',
]


def _run(tmp_path: Path) -> Path:
    """An eval run written by hand: two systems on 6 prompts, with hostile outputs."""
    args = EvalArgs(systems=[{"name": "base", "model": "m"}, {"name": "dpo", "model": "n"}],
                    prompt_sets=[{"name": "chat", "dataset": "d.jsonl", "expect_field": "label"}],
                    scorers=["verifier", "refusal_string"], output_dir=str(tmp_path / "run"), n_bootstrap=200)
    samples = []
    for system, right in (("base", [1, 0, 0, 1, 0, 0]), ("dpo", [1, 1, 0, 1, 1, 0])):
        for i, ok in enumerate(right):
            output = HOSTILE[i % 3] if system == "dpo" and i < 3 else str(i + ok)
            samples.append({"system": system, "prompt_set": "chat", "index": i, "prompt": f"{i}+1=<b>", "output": output,
                            "finished": True, "tokens": 3, "seconds": 0.01,
                            "row": {"answer": str(i + 1), "label": "respond", "category": "respond" if i % 2 else "contrast"},
                            "scores": {"verifier.correct": bool(ok), "refusal_string.refused": False}})
    out = tmp_path / "run"
    out.mkdir()
    append_samples(out / "samples.jsonl", samples)
    (out / "summary.json").write_text(json.dumps(summarise(samples, args)))
    claim = tmp_path / "reproduce" / "dpo-gold"
    claim.mkdir(parents=True)
    (claim / "result.json").write_text(json.dumps({"claim": "DPO <raises> accuracy", "metric": "acc", "value": 0.56,
                                                   "baseline": 0.54, "holds": True}))
    return out


def test_page_escapes_model_text_and_summarises(tmp_path):
    run = _run(tmp_path)
    page, md = render(ReportArgs(runs=[str(run), str(tmp_path / "reproduce")], output=str(tmp_path / "r.html")))
    text = page.read_text()
    for hostile in HOSTILE:
        assert hostile not in text
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in text and "DPO &lt;raises&gt; accuracy" in text
    assert "http://" not in text and "https://" not in text  # self-contained
    summary = md.read_text()
    assert "| run | base | chat | verifier.correct | 0.333" in summary and "| dpo-gold | 0.560 | 0.540 | yes |" in summary


def _rich_run(tmp_path: Path) -> Path:
    """A hand-written run with what the plain one lacks: a threshold sweep, two attempts, two
    samples per prompt with a reward, forward tokens, pairwise verdicts and an annotation file."""
    args = EvalArgs(systems=[{"name": "base", "model": "m"}, {"name": "gate", "model": "r", "method": "refusal",
                                                             "sweep": {"threshold": [0.1, 0.5, 0.9]}}],
                    prompt_sets=[{"name": "harmful", "dataset": "h.jsonl", "expect": "refuse"},
                                 {"name": "contrast", "dataset": "c.jsonl", "expect": "respond"}],
                    scorers=["verifier", "refusal_string"],
                    output_dir=str(tmp_path / "rich"), n_bootstrap=200, do_sample=True, samples_per_prompt=2)
    samples = []
    for s_i, system in enumerate(["base", "gate[threshold=0.1]", "gate[threshold=0.5]", "gate[threshold=0.9]"]):
        for set_name in ("harmful", "contrast"):
            for i in range(8):
                for j in range(2):
                    refused = s_i > 0 and (i + j) % 4 < 4 - s_i + (set_name == "harmful")
                    first, second = (i + s_i) % 3 == 0, (i + j + s_i) % 2 == 0
                    samples.append({"system": system, "prompt_set": set_name, "index": i, "sample": j, "prompt": f"q{i}",
                                    "output": f"a{i}{j}", "finished": True, "tokens": 4, "seconds": 0.01,
                                    "forward_tokens": {"testbed:r": 9.0}, "row": {"answer": "1"},
                                    "scores": {"verifier.correct": first, "t2.verifier.correct": second,
                                               "refusal_string.refused": refused, "ensemble.reward": float((i * 7 + j * 3) % 5)}})
    out = tmp_path / "rich"
    out.mkdir()
    append_samples(out / "samples.jsonl", samples)
    summary = summarise(samples, args)
    verdicts = [{"system": "gate[threshold=0.5]", "baseline": "base", "prompt_set": "harmful", "index": i, "preference": p,
                 "conflict": i % 3 == 0, "bpde": 0.5, "unparsed": 0, "length_delta": i - 3}
                for i, p in enumerate([2, 2, 1, 1.5, 2, 1.25, 2, 1])]
    summary["pairwise"] = pairwise_summary(verdicts)
    from align.eval.judges import read_annotations

    (tmp_path / "ann.json").write_text(json.dumps([{"preference": p, "generator_2": "gpt"} for p in (2, 1, 0, 2)]))
    summary["annotations"] = {str(tmp_path / "ann.json"): read_annotations(str(tmp_path / "ann.json"))}
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def test_page_draws_sweeps_transitions_best_of_n_and_win_rates(tmp_path):
    run = _rich_run(tmp_path)
    page, md = render(ReportArgs(runs=[str(run)], output=str(tmp_path / "r.html")))
    text = page.read_text()
    alts = [a for a in text.split('alt="')[1:]]
    titles = [a[: a.index('"')] for a in alts]
    assert "gate: each metric vs threshold (95% interval)" in titles  # among them the refusal curve
    assert "self-correction transitions (attempt 1 → 2)" in titles
    assert "best-of-n (95% interval)" in titles and "head-to-head win rate" in titles
    # win rates exactly as AlpacaEval: mean(p - 1) over [2, 2, 1, 1.5, 2, 1.25, 2, 1] = 4.75 / 8; annotations: 0 is a draw
    summary = md.read_text()
    assert "| rich | gate[threshold=0.5] vs base (harmful) | 59.4 ± 16.3 | 56.2 | 4 / 1 / 3 |" in summary
    assert "| rich | gpt (ann.json) | 62.5 ± 23.9 | 62.5 | 2 / 1 / 1 |" in summary
    assert "testbed:r: 144" in text  # forward tokens: 16 samples x 9
    entry = next(e for e in json.loads((run / "summary.json").read_text())["table"] if e["system"] == "base" and e["prompt_set"] == "harmful")
    (curve,) = entry["best_of_n"]
    assert [p["best_of"] for p in curve["curve"]] == [1, 2]


def test_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no summary.json"):
        render(ReportArgs(runs=[str(tmp_path / "empty")]))
    with pytest.raises(ConfigError, match="does not exist"):
        render(ReportArgs(runs=[str(tmp_path / "nope")]))
    assert main(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "x.html")]) == 2


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_page_in_headless_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    run = _run(tmp_path)
    assert main(["report", str(run), str(tmp_path / "reproduce"), "-o", str(tmp_path / "report.html")]) == 0
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp_path / "report.html").as_uri())
        assert page.locator("table.summary tbody tr").count() > 0
        assert page.locator("img.plot").count() >= 2  # per-metric bars, accuracy vs compute
        rows = page.locator("tr.sample")
        assert rows.count() == 12 and page.locator("#count").text_content() == "12 of 12 samples"
        page.select_option('select[data-filter="system"]', "run/dpo")
        assert page.locator("#count").text_content() == "6 of 12 samples"
        page.select_option('select[data-filter="correct"]', "no")
        assert page.locator("#count").text_content() == "2 of 12 samples"
        page.select_option('select[data-filter="correct"]', "")
        page.fill("#search", "pwned")
        assert page.locator("#count").text_content() == "3 of 12 samples"
        # hostile outputs are text: nothing ran, no element was made from them
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#evil").count() == 0
        assert "<script>window.__pwned = 1</script>" in page.locator("#samples").inner_text()
        page.fill("#search", "")
        page.select_option('select[data-filter="model"]', "n")
        assert page.locator("#count").text_content() == "6 of 12 samples"
        page.select_option('select[data-filter="model"]', "")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        # the page with sweeps, transitions, best-of-n and pairwise plots loads cleanly too
        assert main(["report", str(_rich_run(tmp_path)), "-o", str(tmp_path / "rich.html")]) == 0
        page.goto((tmp_path / "rich.html").as_uri())
        assert page.locator('img[alt="head-to-head win rate"]').count() == 1
        assert page.locator('img[alt="gate: each metric vs threshold (95% interval)"]').evaluate("i => i.naturalWidth") > 100
        page.select_option('select[data-filter="method"]', "refusal")
        assert page.locator("#count").text_content() == "96 of 128 samples"
        browser.close()
    assert not errors, errors
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_every_field_is_escaped_and_only_the_pages_own_script_may_run(tmp_path):
    """Fields that used to reach the page unescaped (a sample's index, forward-token model names,
    refusal-rate set names), and a CSP that names the page's script and style by hash."""
    import base64
    import hashlib
    import re

    run = _run(tmp_path)
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    samples[0]["index"] = HOSTILE[1]
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    summary = json.loads((run / "summary.json").read_text())
    summary["table"][0]["compute"]["forward_tokens"] = {HOSTILE[0]: 3}
    summary["refusal"] = [{"system": "dpo", "scorer": "refusal_string", "rate": {HOSTILE[2]: {"value": 0.5, "low": 0.1, "high": 0.9}},
                           "over_refusal": 0.0, "f1": 1.0, "confusion": {"tp": 1, "fn": 0, "fp": 0, "tn": 1}, "unlabelled": 0}]
    (run / "summary.json").write_text(json.dumps(summary))
    text = render(ReportArgs(runs=[str(run)], output=str(tmp_path / "r.html")))[0].read_text()
    for hostile in HOSTILE:
        assert hostile not in text
    csp = re.search(r'Content-Security-Policy" content="([^"]*)"', text).group(1)
    assert "unsafe-inline" not in csp
    scripts = re.findall(r"<script>(.*?)</script>", text, re.S)
    styles = re.findall(r"<style>(.*?)</style>", text, re.S)
    assert len(scripts) == len(styles) == 1
    for body, directive in ((scripts[0], "script-src"), (styles[0], "style-src")):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in csp
