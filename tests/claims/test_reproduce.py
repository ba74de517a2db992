import json

import pytest

from align.cli import main
from align.claims import CLAIMS, GROUPS, ONE_BUILD, reproduce, takes_builds
from decoding.generate import generate_with


@pytest.mark.parametrize("name", GROUPS["testbed"])  # the real group: `align reproduce --all --group real`
def test_claim_writes_result_json(tiny_testbed, tmp_path, name):
    # the refusal claims only read first-token probabilities: 64 prompts give every category test rows
    result, path = reproduce(name, tiny_testbed, n=64 if name.startswith("refusal") else 8, out_dir=tmp_path)
    if name == "overoptimization":
        assert (tmp_path / name / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path == tmp_path / name / "result.json"
    saved = json.loads(path.read_text())
    assert saved == result
    _check_rules(name, saved)  # every claim follows the rules (align.claims.protocol)
    assert saved["builds"]["seeds"] == [0] and saved["builds"]["in_interval"] is False and saved["builds"]["why"]


@pytest.fixture(scope="module")
def second_build(cache_dir):
    """The tiny profile's base build under seed 1: every base model retrained."""
    from align.testbed import build_testbed

    return build_testbed("tiny", seed=1, cache_dir=cache_dir, workers=1, show_progress=False)


# one claim per shape of build loop: over variants (dlf-vs-fixed, ead-tradeoff alike), an outer
# loop over builds (steer-diversity alike: 80 s on tiny), one call per build, and a training claim
# over (build, seed) units (dpo-gold, rpo-displacement, ches-filter alike)
@pytest.mark.parametrize("name", ["eft-upscaling", "gedi-steering", "spec-eft-equivalence", "rpo-gold"])
def test_claim_over_two_base_builds(tiny_testbed, second_build, tmp_path, name):
    """With two base builds the claim runs every seed on each, every interval counts the build,
    and the result says which builds it spans."""
    result, _ = reproduce(name, tiny_testbed, n=8, out_dir=tmp_path, builds=[tiny_testbed, second_build])
    _check_rules(name, result)
    assert result["builds"] == {"seeds": [0, 1], "in_interval": True, "level": "builds crossed with the shared prompts, seeds within a build"}
    d = result["difference"]
    assert d["builds"] == 2 and len(d["per_build"]) == 2 and d["seeds"] == 6 == len(result["seeds"])
    assert [p["build"] for p in result["per_seed"]] == [0, 0, 0, 1, 1, 1]
    # each build's share of the difference is the mean of its own rows
    assert sum(d["per_build"]) / 2 == pytest.approx(d["mean"], abs=2e-4)
    assert d["per_build"][0] == pytest.approx(sum(d["per_seed"][:3]) / 3, abs=2e-4)


def test_claims_without_the_build_level_say_why(tiny_testbed, second_build, tmp_path, monkeypatch):
    assert {n for n in CLAIMS if takes_builds(n)} == {"eft-upscaling", "dlf-vs-fixed", "ead-tradeoff", "gedi-steering", "steer-diversity",
                                                      "spec-eft-equivalence", "rpo-displacement", "ches-filter", "dpo-gold", "rpo-gold"}
    assert set(ONE_BUILD) == set(CLAIMS) - {n for n in CLAIMS if takes_builds(n)}
    from align.claims.protocol import judge, premise

    seen = []

    def one_build_claim(tb, n):  # no `builds` argument: it runs on the first build only
        seen.append(tb.manifest["seed"])
        return judge(claim="c", metric="m", premise=premise(), arms={"a": [[1.0] * n] * 3, "b": [[0.0] * n] * 3}, treated="a", control="b")

    def build_claim(tb, n, builds=None):  # takes builds, but is given one
        seen.append(builds)
        return one_build_claim(tb, n)

    monkeypatch.setitem(CLAIMS, "bco-udm", one_build_claim)
    monkeypatch.setitem(CLAIMS, "eft-upscaling", build_claim)
    result, _ = reproduce("bco-udm", tiny_testbed, n=4, out_dir=tmp_path, builds=[tiny_testbed, second_build])
    assert seen == [0] and result["builds"] == {"seeds": [0], "in_interval": False, "why": ONE_BUILD["bco-udm"]}
    assert "builds" not in result["difference"] and result["seeds"] == [0, 1, 2]
    result, _ = reproduce("eft-upscaling", tiny_testbed, n=4, out_dir=tmp_path, builds=[tiny_testbed])
    assert seen == [0, None, 0] and result["builds"]["in_interval"] is False and "--testbed-seeds 0,1,2" in result["builds"]["why"]


def test_cli_testbed_seeds(tiny_testbed, second_build, tmp_path, capsys):
    cache = str(tiny_testbed.root.parents[1])
    common = ["--profile", "tiny", "--cache_dir", cache, "--n", "4", "--out", str(tmp_path)]
    assert main(["reproduce", "eft-upscaling", *common, "--testbed-seeds", "0,1"]) == 0
    saved = json.loads((tmp_path / "eft-upscaling" / "result.json").read_text())
    assert saved["builds"]["seeds"] == [0, 1] and saved["difference"]["builds"] == 2
    assert main(["reproduce", "ead-tradeoff", *common, "--testbed_seeds", "0,x"]) == 2
    assert "testbed_seeds must be distinct seeds" in capsys.readouterr().err
    assert main(["reproduce", "ead-tradeoff", *common, "--testbed_seeds", "0,7"]) == 2  # seed 7 was never built
    assert "align testbed build --profile tiny --seed 7" in capsys.readouterr().err


def _check_rules(name, saved):
    """What every rule-following result carries, and its status follows from its own numbers."""
    assert {"claim", "metric", "status", "premise", "selection", "arms", "difference", "interval", "seeds", "conditions"} <= set(saved)
    d, test = saved["difference"], saved["test"]
    assert d["seeds"] == len(saved["seeds"]) >= 3 and len(d["per_seed"]) == d["seeds"]
    assert d["low"] <= d["mean"] <= d["high"] and saved["interval"] == [d["low"], d["high"]]
    arms = saved["arms"]
    assert d["mean"] == pytest.approx(arms[test["treated"]]["mean"] - arms[test["control"]]["mean"], abs=1e-3)
    if test["equivalence"]:
        inside = -test["margin"] < d["low"] and d["high"] < test["margin"]
    else:
        inside = d["low"] > test["margin"] if test["op"] == ">" else d["high"] < -test["margin"]
    expected = ("untestable" if not all(c["passed"] for c in saved["premise"]["checks"])
                else "holds" if inside and all(c["passed"] for c in saved["conditions"]) else "does not hold")
    assert saved["status"] == expected and saved["holds"] == (expected == "holds")
    # a "room to move" check is added exactly when both compared arms sit at one bound (0 or 1 everywhere)
    a, b = arms[test["treated"]], arms[test["control"]]
    room = [c for c in saved["premise"]["checks"] if c["name"].startswith("room to move")]
    assert len(room) == (a["mean"] == b["mean"] and a["mean"] in (0.0, 1.0)) and all(not c["passed"] for c in room)
    assert "interval" in test
    selection = saved["selection"]
    if name == "ead-tradeoff":
        assert arms["0.9 x large-instruct"]["mean"] == pytest.approx(0.9 * arms["large-instruct"]["mean"], abs=1e-3)
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
        for k, point in enumerate(saved["per_seed"]):
            chosen = point["multi-task"]["alpha"]
            assert point["multi-task"]["dev"][str(chosen)] == max(point["multi-task"]["dev"].values())
            assert arms["fixed alpha (chosen on dev)"]["per_seed"][k] == arms[f"fixed alpha {chosen}"]["per_seed"][k]
        single, compared = saved["single_task"], saved["single_task"]["test"]
        a, b = (single["arms"][compared[k]]["mean"] for k in ("treated", "control"))
        assert (single["status"] == "untestable") == (a == b and a in (0.0, 1.0))  # untestable only with both at one bound
    elif name == "spec-eft-equivalence":  # an equivalence test; every sampling path counted
        builds = d.get("builds", 1)  # every build's greedy outputs and its own goodness-of-fit test
        assert test["equivalence"] and saved["identical_greedy_outputs"] == f"{8 * builds}/{8 * builds}"
        tv = [saved["tv_test"]["tv"]] if builds == 1 else [v["tv"] for v in saved["tv_test"].values()]
        assert saved["conditions"][0]["value"] == 1.0 and [c["value"] for c in saved["conditions"][1:]] == tv
        paths = saved["paths"]
        assert paths["accepted"] <= paths["drafted"] and paths["bonus_rounds"] + paths["residual_draws"] >= paths["rounds"]
        assert all(-10 < arms[k]["mean"] < 0 for k in arms)  # log-probability per token
    elif name == "gedi-steering":  # omega: the best dev point among the coherent ones
        for point in saved["per_seed"]:
            dev = point["dev"]
            assert str(point["omega"]) in dev and dev[str(point["omega"])]["negative"] <= max(v["negative"] for v in dev.values())
        assert saved["large_base_accuracy_on_negative_results"]["problems"] > 0
    elif name == "steer-diversity" and d.get("builds"):  # each build's chosen points are that build's rows of the chosen arms
        for k, point in enumerate(saved["per_seed"]):
            assert point == {"build": point["build"], "seed": point["seed"], **selection["chosen"][f"build {point['build']}"]}
            assert arms["STEER (chosen on dev)"]["per_seed"][k] == arms[point["steer"]]["per_seed"][k]
            assert arms["plain sampling (chosen on dev)"]["per_seed"][k] == arms[point["plain"]]["per_seed"][k]
    elif name == "steer-diversity":  # each frontier's point chosen from dev numbers only
        frontier, chosen = saved["frontier"], selection["chosen"]
        for kind, prefix in (("steer", "steer"), ("plain", "T=")):
            points = [c for c in frontier if c.startswith(prefix)]
            matched = frontier["T=1.0"]["dev_coherence"] - 0.05
            feasible = [c for c in points if frontier[c]["dev_coherence"] >= matched] or points
            key = "dev_group_1_minus_self_bleu"
            assert frontier[chosen[kind]][key] == max(frontier[c][key] for c in feasible)
        assert arms["STEER (chosen on dev)"] == arms[chosen["steer"]]
    elif name in ("dpo-gold", "rpo-gold", "bco-vs-dpo", "bco-udm"):  # learning rate and steps (and RPO's eta): the dev argmax
        for point in saved["per_seed"]:
            dev = {"dpo": point["dev"]} if name == "dpo-gold" else {k: v for k, v in point["dev"].items() if k != "untrained"}
            chosen = {"dpo": point["point"]} if name == "dpo-gold" else point
            assert all(values[chosen[method]] == max(values.values()) for method, values in dev.items())
        if name == "rpo-gold":  # the same pairs for both; RPO over eta as well; the condition is RPO - DPO's interval
            assert all("eta=" in p and "eta=" not in point["dpo"] for point in saved["per_seed"] for p in [point["rpo"]])
            assert saved["conditions"][0]["value"] == saved["rpo_minus_dpo"]["low"]
            assert saved["rpo_minus_dpo"]["mean"] == pytest.approx(arms["rpo"]["mean"] - arms["dpo"]["mean"], abs=1e-3)
        if name == "bco-vs-dpo":
            assert test["equivalence"] and test["margin"] == 0.03
            assert [c["name"].split(" ")[0] for c in saved["premise"]["checks"][1:3]] == ["dpo", "bco"]
    elif name in ("rpo-displacement", "ches-filter"):  # every arm on the same held-out pairs
        assert len({a["prompts"] for a in arms.values()}) == 1
        if name == "rpo-displacement":
            value, dpo, rpo = saved["conditions"][0]["value"], arms["dpo"]["mean"], arms["rpo"]["mean"]
            if value == float("inf"):  # DPO did not lower log π(chosen): no ratio, and the condition fails
                assert dpo >= -1e-4 and not saved["conditions"][0]["passed"]
            else:  # RPO's drop over DPO's; the arms' means are rounded to 1e-4, the ratio is not
                assert dpo < 1e-4 and value * -dpo == pytest.approx(-rpo, abs=1e-4 * (1 + abs(value)))
    elif name == "refusal-threshold":  # per seed, the best dev threshold among those over-refusing <= 20% on dev
        for point in saved["per_seed"]:
            dev, over = point["dev"], point["dev_over_refusal"]
            feasible = [t for t in dev if over[t] <= 0.2] or list(dev)
            assert dev[str(point["threshold"])] == max(dev[t] for t in feasible)
        assert saved["arms"]["target 0.8"]["mean"] == pytest.approx(0.8)
        assert saved["conditions"][0]["value"] == saved["over_refusal"]["high"]
    elif name == "refusal-categories":  # a lower threshold can only add refusals of that category
        assert d["low"] >= 0 and all(v >= 0 for v in saved["other_moves"].values())
        assert saved["conditions"][0]["bound"] == pytest.approx(d["mean"] / 3, abs=1e-3)
    elif name == "score-selfcorrection":  # E4 metrics per seed: fractions of the whole eval set
        for point in saved["per_seed"]:
            assert set(point["models"]) == {"base", "SFT on traces", "SCoRe"}
            for m in point["models"].values():
                assert m["delta"] == pytest.approx(m["acc_t2"] - m["acc_t1"], abs=1e-3)
                assert m["delta"] == pytest.approx(m["delta_i_to_c"] - m["delta_c_to_i"], abs=1e-3)
        deltas = [p["models"]["SCoRe"]["delta"] for p in saved["per_seed"]]
        assert arms["SCoRe"]["mean"] == pytest.approx(sum(deltas) / len(deltas), abs=1e-3) and arms["zero"]["mean"] == 0
    elif name == "overoptimization":  # "single proxy" = every member alone, averaged
        members = [arms[f"member {j}"]["mean"] for j in range(5)]
        assert arms["single proxy"]["mean"] == pytest.approx(sum(members) / 5, abs=1e-3)
        assert set(saved["curves"]) >= {"single proxy", "mean", "WCO (min)", "UWO (λ chosen on dev)"}
        assert all(len(c["gold"]) == len(saved["n"]) for c in saved["curves"].values())


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
    for name in GROUPS["testbed"]:  # every claim but one already finished on this testbed (one on another: rerun)
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
    assert [r["name"] for r in table] == GROUPS["testbed"] and all(r["holds"] is not None for r in table)
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "claims.html")]) == 0
    page = (tmp_path / "claims.html").read_text()
    # the two claims that ran have a pre-registered difference (a forest row each); the old-style stubs have none
    assert all(f"<td><b>{name}</b>" in page for name in GROUPS["testbed"]) and page.count("<svg class=\"forest\"") == 2


def test_category_premise_scores_the_lowered_category_against_every_other_prompt():
    """p[ill-posed] must separate ill-posed prompts from the rest, not every refusal category
    (a model that keeps p[ill-posed] low on beyond-horizon prompts is doing its job)."""
    import torch

    from align.claims.refusal import _auroc

    probs = torch.zeros(4, 2)
    probs[:, 0] = torch.tensor([0.9, 0.1, 0.2, 0.05])
    cats = ["ill-posed", "beyond-horizon", "contrast", "forbidden"]
    assert _auroc(probs, 0, cats, [0, 1, 2, 3], ["ill-posed"]) == 1.0
    assert _auroc(probs, 0, cats, [0, 1, 2, 3]) == pytest.approx(1 / 3)  # any refusal category vs the contrast prompt
