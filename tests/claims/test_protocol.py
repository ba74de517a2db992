"""The claim rules as a mechanism: a rigged claim whose interval straddles the bound is not held,
a failed premise is untestable, seed-to-seed variation widens the interval, selection reads dev only."""

import numpy as np
import pytest

from align.claims.protocol import check, dev_test_split, judge, premise, seeded_interval, select_on_dev

OK = premise(check("base answers something", 0.5, ">", 0.1))


def _arms(shift: float, noise: float, seeds: int = 3, prompts: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    control = rng.normal(0.5, noise, (seeds, prompts))
    e = rng.normal(0, noise, (seeds, prompts))
    return {"treated": control + shift + e - e.mean(), "control": control}  # the mean difference is exactly `shift`


def test_point_above_but_interval_straddling_the_bound_is_not_held():
    arms = _arms(shift=0.02, noise=0.5)
    r = judge(claim="rigged", metric="m", premise=OK, arms=arms, treated="treated", control="control")
    assert r["value"] > r["baseline"]  # the point estimate favours the claim ...
    assert r["difference"]["low"] < 0 < r["difference"]["high"]  # ... the interval does not
    assert r["status"] == "does not hold" and r["holds"] is False


def test_a_clear_effect_holds_and_a_failed_premise_is_untestable_whatever_the_effect():
    arms = _arms(shift=0.3, noise=0.1)
    r = judge(claim="clear", metric="m", premise=OK, arms=arms, treated="treated", control="control")
    assert r["status"] == "holds" and r["difference"]["low"] > 0.25
    failed = premise(check("expert beats the large base on its task", 0.41, ">", 0.52), check("members disagree", 0.3, ">", 0.1))
    r = judge(claim="clear", metric="m", premise=failed, arms=arms, treated="treated", control="control")
    assert r["status"] == "untestable" and not r["holds"]
    assert [c["passed"] for c in r["premise"]["checks"]] == [False, True]
    # "less than" claims and margins
    r = judge(claim="lower", metric="m", premise=OK, arms=arms, treated="control", control="treated", op="<", margin=0.2)
    assert r["status"] == "holds"
    r = judge(claim="lower", metric="m", premise=OK, arms=arms, treated="control", control="treated", op="<", margin=0.35)
    assert r["status"] == "does not hold"
    # a further pre-registered condition that fails (e.g. the large model's share of tokens) sinks it
    r = judge(claim="clear", metric="m", premise=OK, arms=arms, treated="treated", control="control",
              conditions=[check("large share", 0.55, "<=", 0.5)])
    assert r["status"] == "does not hold" and r["conditions"][0]["passed"] is False


def test_equivalence_needs_the_whole_interval_inside_the_margin():
    same = _arms(shift=0.0, noise=0.05)
    assert judge(claim="eq", metric="m", premise=OK, arms=same, treated="treated", control="control",
                 equivalence=True, margin=0.03)["status"] == "holds"
    apart = _arms(shift=0.05, noise=0.05)
    assert judge(claim="eq", metric="m", premise=OK, arms=apart, treated="treated", control="control",
                 equivalence=True, margin=0.03)["status"] == "does not hold"


def test_seed_to_seed_variation_widens_the_interval():
    """Three seeds whose means are 0, 0.5 and 1 with no spread within a seed: the two-stage
    bootstrap's interval spans most of that range; pooling the prompts would make it a point."""
    x = np.repeat(np.array([[0.0], [0.5], [1.0]]), 100, axis=1)
    r = seeded_interval(x)
    assert r["mean"] == 0.5 and r["per_seed"] == [0.0, 0.5, 1.0]
    assert r["low"] <= 0.17 and r["high"] >= 0.83
    pooled = seeded_interval(x.reshape(1, -1))
    assert pooled["high"] - pooled["low"] < 0.2
    one = seeded_interval(np.array([[1.0] * 30 + [0.0] * 70]))  # one seed: the prompt bootstrap of a 30% rate
    assert one["low"] == pytest.approx(0.3 - 1.96 * (0.21 / 100) ** 0.5, abs=0.03)


def test_base_builds_are_the_outermost_level_of_the_interval():
    """Three builds whose means are 0, 0.5 and 1, three seeds each, no spread within a build: with
    the build level the interval spans most of that range; read as nine seeds it is narrower
    (each build's seeds are then treated as independent draws); one build reduces exactly to
    the two-stage bootstrap."""
    x = np.repeat(np.repeat(np.array([[0.0], [0.5], [1.0]]), 3, axis=0), 100, axis=1)
    builds = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    nested = seeded_interval(x, builds=builds)
    assert nested["builds"] == 3 and nested["per_build"] == [0.0, 0.5, 1.0] and nested["seeds"] == 9
    assert nested["low"] <= 0.17 and nested["high"] >= 0.83
    flat = seeded_interval(x)
    assert flat["high"] - flat["low"] < nested["high"] - nested["low"] - 0.2
    rng = np.random.default_rng(3)
    y = rng.random((3, 50))
    assert seeded_interval(y, builds=[7, 7, 7]) == seeded_interval(y)
    with pytest.raises(ValueError, match="as many seeds"):
        seeded_interval(rng.random((5, 10)), builds=[0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="label each"):
        seeded_interval(rng.random((4, 10)), builds=[0, 1])
    # judge carries the level into every arm and the difference
    arms = {"treated": x + 0.1, "control": x}
    r = judge(claim="c", metric="m", premise=OK, arms=arms, treated="treated", control="control", builds=builds,
              seeds=[0, 1, 2] * 3)
    assert r["difference"]["builds"] == 3 and r["arms"]["control"]["per_build"] == [0.0, 0.5, 1.0]


def test_a_share_near_its_ceiling_keeps_its_interval_inside_the_range():
    """Three builds at 0.99, 0.99 and 0.7 on a 0/1 metric: the interval over the build means (2 df)
    runs past 1; with the metric's bounds it stops at 1 and its lower end is unchanged, and the
    difference of two shares stays inside [-1, 1]."""
    rng = np.random.default_rng(0)
    share = np.repeat((rng.random((3, 300)) < np.array([[0.99], [0.99], [0.7]])).astype(float), 3, axis=0)
    builds = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    free, bounded = seeded_interval(share, builds=builds), seeded_interval(share, builds=builds, bounds=(0, 1))
    assert free["high"] > 1.1 and bounded["high"] == 1.0 and bounded["low"] == free["low"] and bounded["mean"] == free["mean"]
    r = judge(claim="c", metric="m", premise=OK, arms={"treated": share, "control": 1 - share}, treated="treated",
              control="control", builds=builds, bounds=(0, 1))
    assert r["arms"]["treated"]["high"] == 1.0 and r["arms"]["control"]["low"] == 0.0
    assert -1 <= r["difference"]["low"] and r["difference"]["high"] == 1.0
    with pytest.raises(ValueError, match="outside bounds"):
        seeded_interval(share + 0.5, bounds=(0, 1))
    assert seeded_interval(share * (1 + 5e-13), bounds=(0, 1))["high"] <= 1  # best-of-n's unbiased estimator rounds past 1


def test_grid_edges_name_the_coordinates_at_the_end_of_their_range():
    from align.claims.table import grid_edges

    two_d = {"grid": [f"lr={lr:g} steps={s}" for lr in (5e-5, 2e-4, 1e-3) for s in (50, 200)],
             "chosen": {"0": "lr=5e-05 steps=50", "1": "lr=0.0002 steps=50", "2": "lr=0.0002 steps=200"}}
    assert grid_edges(two_d) == ["lr=5e-05 steps=50 (lowest lr, lowest steps)", "lr=0.0002 steps=50 (lowest steps)",
                                 "lr=0.0002 steps=200 (highest steps)"]
    assert grid_edges({"grid": ["0.0", "0.1", "0.25", "0.5"], "chosen": {"0": 0.25, "1": 0.1}}) == []
    assert grid_edges({"grid": ["0.1", "0.5", "1.0"], "chosen": {"0": 0.5, "1": 1.0}}) == ["1.0 (highest)"]
    # points are compared with their own kind: a temperature with temperatures, STEER with STEER
    mixed = {"grid": ["T=0.7", "T=1.0", "T=1.3", "steer gamma=0.2 eta=0.3", "steer gamma=0.6 eta=0.6", "top-10 (gamma=eta=0)"],
             "chosen": {"steer": "steer gamma=0.6 eta=0.6", "plain": "T=1.0"}}
    assert grid_edges(mixed) == ["steer gamma=0.6 eta=0.6 (highest gamma, highest eta)"]
    # per method and per build
    nested = {"grid": ["lr=1e-05", "lr=5e-05", "lr=0.001"], "chosen": {"build 0 seed 0": {"dpo": "lr=5e-05", "rpo": "lr=0.001"}}}
    assert grid_edges(nested) == ["lr=0.001 (highest lr)"]
    assert grid_edges({"split": None, "chosen": {"k": 3}}) == [] and grid_edges(None) == []


def test_selection_reads_dev_values_only_and_splits_are_disjoint():
    dev, test = dev_test_split(100, 0.3, seed=1)
    assert len(dev) == 30 and len(test) == 70 and not set(dev) & set(test) and sorted(dev + test) == list(range(100))
    dev_scores = {0.1: 0.6, 0.5: 0.8, 1.0: 0.7}
    test_scores = {0.1: 0.9, 0.5: 0.5, 1.0: 0.6}  # would pick 0.1 if it leaked
    s = select_on_dev([0.1, 0.5, 1.0], dev_scores.__getitem__, n_dev=30)
    assert s["chosen"] == 0.5 and s["dev_values"] == {"0.1": 0.6, "0.5": 0.8, "1.0": 0.7} and s["n_dev"] == 30
    assert test_scores[s["chosen"]] == 0.5
    s = select_on_dev([0.1, 0.5, 1.0], dev_scores.__getitem__, feasible=lambda g: g != 0.5)
    assert s["chosen"] == 1.0


def test_readme_table_is_generated_from_the_result_files(tmp_path):
    """The README's block equals what data/claims renders to; publishing copies only results that
    follow the rules, and the table carries status, interval, premise, selection and the note."""
    import json
    from pathlib import Path

    from align.claims.table import END, START, details_block, publish, readme_block, update_readme

    root = Path(__file__).resolve().parents[2]
    assert readme_block(root / "data" / "claims") in (root / "README.md").read_text()
    assert details_block(root / "data" / "claims") in (root / "docs" / "claims.md").read_text()
    runs = tmp_path / "runs"
    arms = _arms(shift=0.3, noise=0.1)
    result = judge(claim="a | b", metric="m", premise=OK, arms=arms, treated="treated", control="control",
                   selection=select_on_dev([1, 2], {1: 0.1, 2: 0.2}.__getitem__))
    for name, r in (("new", result), ("old", {"claim": "x", "holds": True})):
        (runs / name).mkdir(parents=True)
        (runs / name / "result.json").write_text(json.dumps(r))
    assert publish(runs, tmp_path / "claims") == ["new"]
    (tmp_path / "claims" / "notes.yaml").write_text("new: the note\n")
    readme, details = tmp_path / "README.md", tmp_path / "claims.md"
    readme.write_text(f"intro\n{START}\nstale\n{END}\nrest\n")
    details.write_text(f"# claims\n{START}\nstale\n{END}\n")
    text = update_readme(readme, tmp_path / "claims", details).read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "stale" not in text
    d = result["difference"]
    line = next(line for line in text.splitlines() if line.startswith("| `new`"))
    assert line == (f"| `new`: a \\| b | **{result['status']}** | treated − control: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] "
                    "| 1 (not recorded) | 2 points; chose an edge: 2 (highest) | – |")
    # published again with another result: it records what it replaced; a result from before the
    # crossed interval says it was not re-run
    again = judge(claim="a | b", metric="m", premise=OK, arms=_arms(shift=0.01, noise=0.5), treated="treated", control="control")
    (runs / "new" / "result.json").write_text(json.dumps(again))
    old_style = {**result, "test": {k: v for k, v in result["test"].items() if k != "interval"}}
    (runs / "legacy").mkdir()
    (runs / "legacy" / "result.json").write_text(json.dumps(old_style))
    assert publish(runs, tmp_path / "claims") == ["legacy", "new"]
    text = update_readme(readme, tmp_path / "claims").read_text()
    line = next(line for line in text.splitlines() if line.startswith("| `new`"))
    assert line.endswith(f"| holds, {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] by {result['test']['interval']} "
                         f"(status changed) |") and again["status"] == "does not hold"
    assert next(line for line in text.splitlines() if line.startswith("| `legacy`")).endswith(
        "| not re-run: its interval is the old nested bootstrap, which under-covers |")
    text = details.read_text()
    assert text.startswith("# claims\n") and "stale" not in text
    row = next(line for line in text.splitlines() if line.startswith("| `new`"))
    assert f"treated − control: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] (3 seeds × 200 prompts" in row
    assert "**holds**" in row and "a \\| b" in row and "2 from 1, 2 (max)" in row and "the note" in row
    assert "base answers something: 0.5 > 0.1 ✓" in row
