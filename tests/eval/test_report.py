"""`align report`: one self-contained page from eval runs and claim results, checked in a real
headless Chromium (no console errors, tables, plots, a working sample filter, a screenshot, and
model text with script/markup shown as text, never run), plus the Markdown summary and bad input."""

import json
import shutil
from pathlib import Path

import pytest

from align.cli import main
from align.config import ConfigError
from align.eval.run import EvalArgs, append_samples, summarise
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
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert (tmp_path / "report.png").stat().st_size > 10_000
