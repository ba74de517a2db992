"""`align quickstart` on the tiny profile: trains, evaluates the four systems, writes the report;
a second run reuses the trained models and the finished samples."""

import json

from align.cli import main


def test_quickstart_end_to_end_and_rerun(tiny_testbed, tmp_path, capsys, monkeypatch):
    import align.quickstart as qs

    # the same stages, shorter: the recipes are the configs' and do not change what this checks
    monkeypatch.setattr(qs, "DPO", {**qs.DPO, "max_steps": 4, "n_train": 32})
    monkeypatch.setattr(qs, "REWARD", {**qs.REWARD, "ensemble_size": 2, "max_steps": 4, "n_train": 64})
    argv = ["quickstart", "--profile", "tiny", "--cache_dir", str(tiny_testbed.root.parents[1]), "--out", str(tmp_path / "qs"),
            "--n_eval", "16", "--workers", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "qs" / "eval" / "summary.json").read_text())
    assert [t["system"] for t in summary["table"]] == ["base", "dpo", "eft", "ead"]
    assert all({"verifier.correct", "ensemble.reward", "ensemble.reward_spread"} <= set(t["metrics"]) for t in summary["table"])
    assert "large_fraction" in summary["table"][3]["compute"]
    assert (tmp_path / "qs" / "report.html").stat().st_size > 10_000 and "report: " in out
    samples = (tmp_path / "qs" / "eval" / "samples.jsonl").read_text()
    assert main(argv) == 0  # nothing left to train or generate
    assert (tmp_path / "qs" / "eval" / "samples.jsonl").read_text() == samples
    assert "training dpo" not in capsys.readouterr().out
