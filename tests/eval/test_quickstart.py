"""`align quickstart` on the tiny profile: trains, evaluates the greedy systems on both axes and the sampled
ones (RPO, best-of-n) on accuracy, checks the reward against the verifier, writes the report; a second run
reuses the trained models and the finished samples."""

import json

from browser import CHROMIUM, chromium_page, fits, shot

from align.cli import main


def test_quickstart_end_to_end_and_rerun(tiny_testbed, tmp_path, capsys, monkeypatch):
    import align.quickstart as qs

    # the same stages, shorter: the recipes are the configs' and do not change what this checks
    monkeypatch.setattr(qs, "RPO", {**qs.RPO, "max_steps": 4, "n_train": 32})
    monkeypatch.setattr(qs, "REWARD", {**qs.REWARD, "ensemble_size": 2, "max_steps": 4, "n_train": 32, "n_synthetic": 32, "n_eval": 8})
    monkeypatch.setattr(qs, "BEST_OF", 2)
    monkeypatch.setattr(qs, "SAMPLES", 2)
    argv = ["quickstart", "--profile", "tiny", "--cache_dir", str(tiny_testbed.root.parents[1]), "--out", str(tmp_path / "qs"),
            "--n_eval", "16", "--workers", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "qs" / "greedy" / "summary.json").read_text())
    systems = ["base", "eft", "ead", "large-base"]
    assert [(t["system"], t["prompt_set"]) for t in summary["table"]] == [(s, p) for s in systems for p in ("answerable", "behaviours")]
    sampled = json.loads((tmp_path / "qs" / "sampled" / "summary.json").read_text())
    assert [(t["system"], t["n"]) for t in sampled["table"]] == [("base (T=1)", 32), ("rpo (T=1)", 32), ("best-of-2", 32)]
    picks = [json.loads(line) for line in (tmp_path / "qs" / "sampled" / "samples.jsonl").read_text().splitlines()]
    assert {r["best_of"] for r in picks if r["system"] == "best-of-2"} == {2}
    checks = {(c["prompt_set"], c["reward"], c["gold"]) for s in (summary, sampled) for c in s["reward_checks"]}
    assert checks == {("answerable", "ensemble.reward", "verifier.correct")}
    answerable, behaviours = summary["table"][0::2], summary["table"][1::2]
    assert all({"verifier.correct", "ensemble.reward", "ensemble.reward_spread"} <= set(t["metrics"]) for t in answerable)
    assert all("exact.correct" in t["metrics"] and "verifier.correct" not in t["metrics"] for t in behaviours)
    rows = [json.loads(line) for line in (tmp_path / "qs" / "behaviours.jsonl").read_text().splitlines()]
    assert {r["category"] for r in rows} == {"ill-posed", "beyond-horizon", "contrast"} and len(rows) == 15  # 3 x 16 // 3
    assert all(r["answer"] in ("undefined", "too big") or r["answer"] == r["prompt"].split("/")[0] for r in rows)
    assert "large_fraction" in summary["table"][4]["compute"]
    # the page and the terminal lead with the scoreboard (both axes) and sentences generated from the intervals
    assert "| system | answerable verifier.correct | answerable ensemble.reward | behaviours exact.correct | tokens/s |" in out
    assert "from greedy/base (Holm-adjusted p > 0.05)" in out or "than greedy/base" in out
    assert "from sampled/base (T=1) (Holm-adjusted p > 0.05)" in out or "than sampled/base (T=1)" in out
    page = (tmp_path / "qs" / "report.html").read_text()
    assert page.count('class="sentence"') >= 1 and "behaviours" in page
    if CHROMIUM is not None:  # the page as people see it: 1280 px, no console errors; the screenshot is kept
        with chromium_page() as (tab, errors):
            tab.goto((tmp_path / "qs" / "report.html").as_uri())
            assert tab.locator("table.scoreboard tbody tr").count() == 7 and tab.locator("#sbs-block option").count() == 5
            fits(tab)
            shot(tab, tmp_path / "quickstart-report.png")
        assert not errors, errors
    assert (tmp_path / "qs" / "report.html").stat().st_size > 10_000 and "report: " in out
    samples = (tmp_path / "qs" / "greedy" / "samples.jsonl").read_text()
    assert main(argv) == 0  # nothing left to train or generate
    assert (tmp_path / "qs" / "greedy" / "samples.jsonl").read_text() == samples
    assert "training rpo" not in (rerun := capsys.readouterr().out) and "training reward" not in rerun
