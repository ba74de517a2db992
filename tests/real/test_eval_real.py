"""``align eval`` and ``align report`` on real eval rows (GSM8K, CoCoNot) with the real checkpoint."""

import json

import pytest
import yaml
from browser import CHROMIUM, chromium_page, fits, shot

from align.cli import main
from tests.real.conftest import SMALL, SMOLLM2

pytestmark = pytest.mark.real


def config(tmp_path, common, max_new_tokens):
    return {
        "output_dir": str(tmp_path / "run"),
        "cache_dir": common["cache_dir"],
        "max_new_tokens": max_new_tokens,
        "systems": [{"name": "smollm2", "model": SMOLLM2}, {"name": "small", "model": SMALL}],
        "prompt_sets": [
            {"name": "gsm8k", "dataset": "data/eval/gsm8k/test.jsonl", "prompt_field": "question", "limit": 3,
             "scorers": ["math", "length"], "self_correction": True},
            {"name": "coconot", "dataset": "data/eval/coconot/coconot_eval.jsonl", "limit": 3, "expect": "refuse",
             "scorers": ["refusal_string", "length"]},
        ],
        "scorers": ["math", "refusal_string", "length"],
    }


def run(capsys, tmp_path, cfg):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["eval", "--config", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return out


def test_eval_report_and_resume_after_a_config_change(capsys, tmp_path, common, smollm2):
    run(capsys, tmp_path, config(tmp_path, common, 24))
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 6
    gsm = [s for s in samples if s["prompt_set"] == "gsm8k"]
    # the second attempt reads the problem, its first answer and the instruction (the chat template keeps them)
    assert all("second" in s and "t2.math.correct" in s["scores"] for s in gsm)
    assert all(s["tokens"] <= 24 for s in samples)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {(t["system"], t["prompt_set"]) for t in summary["table"]} == {(a, b) for a in ("smollm2", "small")
                                                                          for b in ("gsm8k", "coconot")}

    # unchanged: nothing is regenerated
    again = run(capsys, tmp_path, config(tmp_path, common, 24))
    assert "regenerating" not in again
    assert (tmp_path / "run" / "samples.jsonl").read_text().count("\n") == 12

    # a system's max_new_tokens changes: its samples are generated afresh, the other system's kept
    cfg = config(tmp_path, common, 24)
    cfg["systems"][1]["max_new_tokens"] = 4
    changed = run(capsys, tmp_path, cfg)
    assert "small on gsm8k" in changed and "smollm2 on" not in changed
    samples2 = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples2) == 12
    assert all(s["tokens"] <= 4 for s in samples2 if s["system"] == "small")
    assert [s for s in samples2 if s["system"] == "smollm2"] == [s for s in samples if s["system"] == "smollm2"]

    code = main(["report", str(tmp_path / "run"), "-o", str(tmp_path / "report.html")])
    capsys.readouterr()
    assert code == 0
    html = (tmp_path / "report.html").read_text()
    assert "smollm2" in html and "coconot" in html
    # the page carries every sample's real text, as JSON with markup characters escaped
    from align.report import _json_for_html

    for sample in samples2:
        assert _json_for_html(sample["output"])[1:-1] in html


def test_two_system_coconot_report_in_chromium(capsys, tmp_path, common, smollm2):
    """SmolLM2 and its 6-layer cut on 12 CoCoNot prompts to refuse and 12 contrast ones: the page a
    refusal eval gives, checked at 1280 px (no overflow, no console errors) and kept as a screenshot."""
    cfg = {"output_dir": str(tmp_path / "run"), "cache_dir": common["cache_dir"], "max_new_tokens": 32,
           "systems": [{"name": "smollm2", "model": SMOLLM2}, {"name": "small", "model": SMALL}],
           "prompt_sets": [{"name": "coconot", "dataset": "data/eval/coconot/coconot_eval.jsonl", "limit": 12, "expect": "refuse"},
                           {"name": "contrast", "dataset": "data/eval/coconot/coconot_contrast_eval.jsonl", "limit": 12,
                            "expect": "respond"}],
           "scorers": ["refusal_string", "length"]}
    run(capsys, tmp_path, cfg)
    assert main(["report", str(tmp_path / "run"), "data/claims", "-o", str(tmp_path / "coconot.html")]) == 0
    capsys.readouterr()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {r["system"] for r in summary["refusal"]} == {"smollm2", "small"}
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    with chromium_page() as (page, errors):
        page.goto((tmp_path / "coconot.html").as_uri())
        assert page.locator("table.scoreboard tbody tr").count() == 2
        assert page.locator("#sbs-count").text_content() == "24 of 24 pairs"
        assert page.locator("#count").text_content() == "48 of 48 samples"
        fits(page)
        shot(page, tmp_path / "coconot-real-report.png")
    assert not errors, errors
