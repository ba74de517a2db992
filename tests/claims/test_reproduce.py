import json

import pytest

from align.cli import main
from align.claims import CLAIMS, reproduce
from decoding.generate import generate_with


@pytest.mark.parametrize("name", list(CLAIMS))
def test_claim_writes_result_json(tiny_testbed, tmp_path, name):
    # the refusal claims only read first-token probabilities: 64 prompts give every category test rows
    result, path = reproduce(name, tiny_testbed, n=64 if name.startswith("refusal") else 8, out_dir=tmp_path)
    assert path == tmp_path / name / "result.json"
    saved = json.loads(path.read_text())
    assert saved == result
    if "status" in saved:  # a claim under the rules (align.claims.protocol)
        _check_rules(name, saved)
        return
    assert {"claim", "metric", "value", "baseline", "holds", "sweep"} <= set(saved)
    sweep = saved["sweep"]
    if name not in ("rpo-displacement", "ches-filter", "score-selfcorrection"):  # log-probs; Δ can be negative
        assert 0 <= saved["value"] <= 1 and 0 <= saved["baseline"] <= 1
    if name in ("dpo-gold", "bco-udm"):
        gain = sweep["gain"]
        assert gain["gain"] == pytest.approx(saved["value"] - saved["baseline"], abs=1e-3)
        assert saved["holds"] == (gain["gain"] > 2 * gain["se"])
    elif name == "bco-vs-dpo":
        assert saved["holds"] == (abs(saved["value"] - saved["baseline"]) <= 0.03)
    elif name == "rpo-displacement":
        drop = sweep["drop"]
        assert drop["dpo"] == pytest.approx(sweep["start"] - saved["baseline"], abs=1e-3)
        assert saved["holds"] == (drop["dpo"] > 0 and drop["rpo"] < 0.5 * drop["dpo"])
        assert len(sweep["train_logps/chosen"]["rpo"]) == 20  # a point every 10 of 200 steps
    elif name == "ches-filter":
        assert saved["value"] == sweep["ln_ches_lowest"]["drop"] and saved["baseline"] == sweep["random"]["drop"]
        assert saved["holds"] == (saved["value"] < saved["baseline"])
    elif name == "overoptimization":
        curves, ns = sweep["curves"], sweep["n"]
        assert ns[0] == 1 and set(curves) == {"single proxy", "mean", "WCO (min)", "UWO (λ=0.5)"}
        assert all(len(c["gold"]) == len(c["proxy"]) == len(ns) for c in curves.values())
        # n = 1 is one random sample whatever the reward: every aggregator starts at the sample accuracy
        assert all(c["gold"][0] == pytest.approx(sweep["samples_correct"], abs=1e-3) for c in curves.values())
        single = curves["single proxy"]["gold"]
        falls = max(single) - single[-1] >= 0.01 and single.index(max(single)) < len(ns) - 1
        assert saved["holds"] == (falls and saved["value"] > saved["baseline"])
        assert (tmp_path / name / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    elif name == "steer-diversity":  # also needs lower self-BLEU and matched coherence
        steered = saved["sweep"]["steer (gamma=0.2, eta=0.6, top_k=10)"]
        plain = saved["sweep"]["plain sampling"]
        assert saved["value"] == steered["distinct_4"] and saved["baseline"] == plain["distinct_4"]
        assert saved["holds"] == (
            steered["distinct_4"] > plain["distinct_4"]
            and steered["self_bleu"] < plain["self_bleu"]
            and steered["correct"] >= plain["correct"] - 0.05
        )
    elif name == "refusal-threshold":
        curve = sweep["curve (test)"]
        cats = ["ill-posed", "beyond-horizon", "forbidden"]
        rates = [[curve[t][c]["rate"] for t in curve] for c in cats if c in curve["0.5"] and curve["0.5"][c]["n"]]
        assert sweep["monotone"] == all(a >= b for r in rates for a, b in zip(r, r[1:]))
        assert sweep["monotone"]  # refuse iff p >= t: non-increasing in t by construction
        best = curve[str(sweep["threshold (chosen on dev)"])]
        over = best["contrast"]["rate"] if "contrast" in best and best["contrast"]["n"] else 0.0
        assert saved["value"] == (best["all refusal categories"]["rate"] or 0.0) and saved["baseline"] == over
        assert saved["holds"] == (saved["value"] >= 0.8 and over <= 0.2)
        if best["all refusal categories"]["n"]:
            low, high = best["all refusal categories"]["ci95"]
            assert low <= saved["value"] <= high
        assert set(sweep["seeds"]) == {"training", "data", "testbed"} and "auroc_dev" in sweep["premise"]
    elif name == "refusal-categories":
        others = sweep["other_moves"]
        assert saved["value"] == pytest.approx(sweep["after"]["ill-posed"]["rate"] - sweep["before"]["ill-posed"]["rate"], abs=1e-4)
        assert saved["value"] >= 0  # a lower threshold can only add refusals of that category
        assert saved["holds"] == (saved["value"] > 0 and max(others.values()) < saved["value"] / 3)
        assert "contrast" in others and "auroc_dev" in sweep["premise"]
    elif name == "score-selfcorrection":
        models = sweep["models"]
        assert set(models) == {"base", "SFT on traces", "SCoRe"}
        for m in models.values():  # E4: fractions of the whole eval set
            assert m["delta"] == pytest.approx(m["acc_t2"] - m["acc_t1"], abs=1e-3)
            assert m["delta"] == pytest.approx(m["delta_i_to_c"] - m["delta_c_to_i"], abs=1e-3)
        assert saved["value"] == models["SCoRe"]["delta"]
        vs = sweep["score_minus"]
        assert vs["base"]["diff"] == pytest.approx(models["SCoRe"]["delta"] - models["base"]["delta"], abs=1e-3)
        assert saved["holds"] == (saved["value"] > 0 and all(v["diff"] > 2 * v["se"] for v in vs.values()))
        assert all(v["ci95"][0] <= v["diff"] <= v["ci95"][1] for v in vs.values())
        assert sweep["premise"]["base_acc_t1"] == models["base"]["acc_t1"] and set(sweep["seeds"]) == {"training", "data", "testbed"}
    elif name == "spec-eft-equivalence":
        assert saved["holds"] == (
            saved["sweep"]["identical_greedy_outputs"] == "8/8" and saved["sweep"]["tv_test"]["passed"]
        )
    else:
        assert saved["holds"] == (saved["value"] > saved["baseline"])


def _check_rules(name, saved):
    """What every rule-following result carries, and its status follows from its own numbers."""
    assert {"claim", "metric", "status", "premise", "selection", "arms", "difference", "interval", "seeds", "conditions"} <= set(saved)
    d = saved["difference"]
    assert d["seeds"] == len(saved["seeds"]) >= 3 and len(d["per_seed"]) == d["seeds"]
    assert d["low"] <= d["mean"] <= d["high"] and saved["interval"] == [d["low"], d["high"]]
    expected = ("untestable" if not all(c["passed"] for c in saved["premise"]["checks"])
                else "holds" if d["low"] > 0 and all(c["passed"] for c in saved["conditions"]) else "does not hold")
    assert saved["status"] == expected and saved["holds"] == (expected == "holds")
    if name == "ead-tradeoff":
        arms = saved["arms"]
        assert arms["0.9 x large-instruct"]["mean"] == pytest.approx(0.9 * arms["large-instruct"]["mean"], abs=1e-3)
        assert d["mean"] == pytest.approx(arms["ead"]["mean"] - arms["0.9 x large-instruct"]["mean"], abs=1e-3)
        for point in saved["per_seed"]:  # tau chosen from dev numbers only: the best feasible dev point
            dev = point["dev"]
            feasible = [t for t, v in dev.items() if v["large_share"] <= 0.5] or list(dev)
            assert dev[str(point["tau"])]["accuracy"] == max(dev[t]["accuracy"] for t in feasible)
        shares = [p["test_large_share"] for p in saved["per_seed"]]
        assert saved["conditions"][0]["value"] == pytest.approx(sum(shares) / len(shares), abs=1e-3)
    elif name == "eft-upscaling":  # both axes: accuracy vs small-instruct, compliance vs the large base
        assert saved["conditions"][0]["value"] == pytest.approx(saved["compliance_difference"]["low"], abs=1e-4)
        assert set(saved["arms"]) == set(saved["compliance"]) == {"eft", "small-instruct", "large-base", "large-instruct"}
        for point in saved["per_seed"]:
            dev = point["dev"]
            assert (dev[str(point["w"])]["accuracy"] + dev[str(point["w"])]["compliance"]
                    == max(v["accuracy"] + v["compliance"] for v in dev.values()))
    elif name == "dlf-vs-fixed":  # the compared fixed alpha is, seed by seed, the dev choice
        arms = saved["arms"]
        for k, point in enumerate(saved["per_seed"]):
            chosen = point["multi-task"]["alpha"]
            assert point["multi-task"]["dev"][str(chosen)] == max(point["multi-task"]["dev"].values())
            assert arms["fixed alpha (chosen on dev)"]["per_seed"][k] == arms[f"fixed alpha {chosen}"]["per_seed"][k]
        assert saved["single_task"]["status"] in ("holds", "does not hold")


def test_cli_reproduce(tiny_testbed, tmp_path, capsys):
    cache = str(tiny_testbed.root.parents[1])
    code = main(["reproduce", "eft-upscaling", "--profile", "tiny", "--cache_dir", cache, "--n", "4", "--out", str(tmp_path)])
    assert code == 0 and (tmp_path / "eft-upscaling" / "result.json").is_file()
    assert main(["reproduce", "nope"]) == 2
    assert "unknown claim 'nope'" in capsys.readouterr().err
    assert main(["reproduce"]) == 2


def test_generate_with_matches_plain_generate_per_prompt(tiny_testbed):
    tok = tiny_testbed.tokenizer()
    model = tiny_testbed.model("small-base")
    prompts = ["7+8=", "37+485=", "123-45=", "1-2="]
    batched = generate_with(model, tok, prompts, batch_size=3, do_sample=False, max_new_tokens=6)
    for prompt, got in zip(prompts, batched):
        alone = generate_with(model, tok, [prompt], do_sample=False, max_new_tokens=6)[0]
        assert got == alone


def test_shipped_refusal_and_score_configs_are_the_claims_recipes():
    from align.claims import refusal, score
    from align.config import parse_config
    from align.trainers.refusal import RefusalArgs
    from align.trainers.score import ScoreArgs

    shipped = parse_config(RefusalArgs, ["--config", "configs/refusal-testbed.yaml"])
    assert {k: getattr(shipped, k) for k in refusal.RECIPE} == refusal.RECIPE
    assert shipped.categories == refusal.CATEGORIES
    shipped = parse_config(ScoreArgs, ["--config", "configs/score-testbed.yaml"])
    assert {k: getattr(shipped, k) for k in score.RECIPE} == score.RECIPE


def test_reproduce_all_reuses_finished_results_and_reports_one_table(tiny_testbed, tmp_path, monkeypatch):
    cache = str(tiny_testbed.root.parents[1])
    for name in CLAIMS:  # every claim but one already finished on this testbed (one on another: rerun)
        if name != "eft-upscaling":
            testbed = {"profile": "tiny", "seed": 0 if name != "dpo-gold" else 1}
            (tmp_path / name).mkdir()
            (tmp_path / name / "result.json").write_text(json.dumps({"claim": name, "metric": "m", "value": 0.5,
                                                                      "baseline": 0.4, "holds": True, "testbed": testbed}))
    ran = []
    import align.claims as claims

    monkeypatch.setattr(claims, "reproduce", lambda name, *a, **kw: ran.append(name) or reproduce(name, *a, **kw))
    assert main(["reproduce", "--all", "--profile", "tiny", "--cache_dir", cache, "--n", "4", "--out", str(tmp_path)]) == 0
    assert sorted(ran) == ["dpo-gold", "eft-upscaling"]
    table = json.loads((tmp_path / "claims.json").read_text())
    assert [r["name"] for r in table] == list(CLAIMS) and all(r["holds"] is not None for r in table)
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "claims.html")]) == 0
    page = (tmp_path / "claims.html").read_text()
    assert all(f"<td>{name}</td>" in page for name in CLAIMS)
