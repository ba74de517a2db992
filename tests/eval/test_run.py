"""`align eval` end to end on the tiny testbed: metrics equal a naive per-prompt recomputation,
refusal confusion counts, a SIGKILLed run resumes to the same samples, bad input named before any
model loads, and the local judges on real CoCoNot rows."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from align.cli import main
from align.config import ConfigError
from align.eval.run import EvalArgs, read_samples, run_eval

DATA = Path(__file__).resolve().parents[2] / "data" / "eval"


def _args(tb, out, **kw):
    base = dict(output_dir=str(out), profile=tb.manifest["profile"], cache_dir=str(tb.root.parents[1]),
                max_new_tokens=6, chunk_size=8,
                systems=[{"name": "base", "model": "testbed:small-instruct"},
                         {"name": "eft", "model": "testbed:large-base", "method": "eft", "tuned": ["testbed:small-instruct"],
                          "reference": "testbed:small-base"}],
                prompt_sets=[{"name": "chat", "dataset": "testbed:self_correction", "split": "eval", "prompt_field": "problem",
                              "limit": 20, "scorers": ["verifier", "length"]},
                             {"name": "refusal", "dataset": "testbed:refusal", "split": "eval", "limit": 12,
                              "expect_field": "label", "scorers": ["refusal_string"]}],
                scorers=["verifier", "length", "refusal_string"])
    return EvalArgs(**{**base, **kw})


def test_metrics_equal_a_naive_recomputation(testbed, tmp_path):
    """On both flavours (BPE: no pad token, two EOS ids, ChatML)."""
    from align.testbed.arithmetic import gold_reward
    from align.testbed.datasets import self_correction
    from decoding.generate import decode_completions, eos_token_ids, generate_ids

    args = _args(testbed, tmp_path / "run")
    summary = json.loads(run_eval(args, progress=False).read_text())
    samples = read_samples(tmp_path / "run" / "samples.jsonl")
    assert len(samples) == 2 * (20 + 12)
    # naive: base greedy, one prompt at a time, checked by the testbed verifier
    tok, model = testbed.tokenizer(), testbed.model("small-instruct")
    correct, chars = [], []
    for row in self_correction(1, 20, 0)["eval"]:
        ids = tok.apply_chat_template([{"role": "user", "content": row["problem"]}], add_generation_prompt=True)["input_ids"]
        (text, done), = decode_completions(tok, generate_ids(model, tok, [ids], do_sample=False, max_new_tokens=6),
                                           eos_token_ids(model, tok))
        correct.append(gold_reward(text, int(row["answer"]), done))
        chars.append(len(text))
    entry = next(t for t in summary["table"] if (t["system"], t["prompt_set"]) == ("base", "chat"))
    assert entry["metrics"]["verifier.correct"]["value"] == pytest.approx(sum(correct) / 20)
    assert entry["metrics"]["length.chars"]["value"] == pytest.approx(sum(chars) / 20)
    # paired difference of EFT against base, per prompt
    by = {(s["system"], s["index"]): s for s in samples if s["prompt_set"] == "chat"}
    diff = [by["eft", i]["scores"]["length.chars"] - by["base", i]["scores"]["length.chars"] for i in range(20)]
    d = next(d for d in summary["differences"] if (d["system"], d["prompt_set"], d["metric"]) == ("eft", "chat", "length.chars"))
    assert d["value"] == pytest.approx(sum(diff) / 20) and d["low"] <= d["value"] <= d["high"]
    # refusal: confusion counts over the rows' own labels
    rows = [s for s in samples if s["system"] == "base" and s["prompt_set"] == "refusal"]
    refusal = next(r for r in summary["refusal"] if r["system"] == "base")
    should = [s["row"]["label"] == "refuse" for s in rows]
    did = [s["scores"]["refusal_string.refused"] for s in rows]
    assert refusal["confusion"] == {"tp": sum(a and b for a, b in zip(should, did)), "fn": sum(a and not b for a, b in zip(should, did)),
                                    "fp": sum(b and not a for a, b in zip(should, did)), "tn": sum(not a and not b for a, b in zip(should, did))}
    assert all(s["tokens"] >= 1 for s in samples)
    assert "verifier.correct" not in rows[0]["scores"]  # per-set scorers


KILL = textwrap.dedent("""
    import json, os, signal, sys
    import align.eval.run as run

    chunks = [0]
    original = run.append_samples

    def append(path, rows):
        chunks[0] += 1
        if chunks[0] == int(sys.argv[3]):  # die halfway through writing this chunk's lines
            with path.open("a") as f:
                f.write(json.dumps(rows[0]) + "\\n" + json.dumps(rows[1])[:20])
            os.kill(os.getpid(), signal.SIGKILL)
        original(path, rows)

    run.append_samples = append
    args = run.EvalArgs(**json.loads(sys.argv[2]))
    run.run_eval(args, progress=False)
""")


def test_killed_run_resumes_to_the_same_samples(tiny_testbed, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILL)

    def launch(out: Path, kill: int) -> subprocess.CompletedProcess:
        config = {k: v for k, v in vars(_args(tiny_testbed, out)).items() if k != "generate_args"}
        return subprocess.run([sys.executable, str(script), "", json.dumps(config), str(kill)], capture_output=True,
                              text=True, timeout=600)

    assert launch(tmp_path / "straight", 0).returncode == 0
    killed = launch(tmp_path / "killed", 3)
    assert killed.returncode == -9 and not (tmp_path / "killed" / "summary.json").exists()
    partial = (tmp_path / "killed" / "samples.jsonl").read_text()
    assert not partial.endswith("\n")  # a torn last line
    resumed = launch(tmp_path / "killed", 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def key(samples):
        return sorted((json.dumps({k: v for k, v in s.items() if k != "seconds"}, sort_keys=True) for s in samples))

    straight = read_samples(tmp_path / "straight" / "samples.jsonl")
    again = read_samples(tmp_path / "killed" / "samples.jsonl")
    assert len(again) == len(straight) == 64 and key(again) == key(straight)
    for name in ("straight", "killed"):  # the summary is computed from the samples alone
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        summary["table"] = [{k: v for k, v in t.items() if k != "compute"} for t in summary["table"]]
        if name == "straight":
            first = summary
    assert summary == first


def test_bad_input_is_named_before_any_model_loads(tiny_testbed, tmp_path):
    with pytest.raises(ConfigError, match="unknown scorer 'bleu'"):
        _args(tiny_testbed, tmp_path, scorers=["bleu"])
    with pytest.raises(ConfigError, match=r"systems\[0\] \(x\): unknown keys \['temp'\]"):
        _args(tiny_testbed, tmp_path, systems=[{"name": "x", "model": "m", "temp": 1}])
    with pytest.raises(ConfigError, match=r"systems\[0\] \(x\): method 'eft' needs 'tuned'"):
        _args(tiny_testbed, tmp_path, systems=[{"name": "x", "model": "m", "method": "eft"}])
    with pytest.raises(ConfigError, match="names must be unique"):
        _args(tiny_testbed, tmp_path, systems=[{"name": "x", "model": "m"}, {"name": "x", "model": "n"}])
    with pytest.raises(ConfigError, match=r"systems\[0\] \(ghost\): .*no-such-model has no config.json; train or download it first"):
        _args(tiny_testbed, tmp_path, systems=[{"name": "ghost", "model": str(tmp_path / "no-such-model")}])
    with pytest.raises(ConfigError, match=r"systems\[0\] \(rpo\): runs/train/rpo has no config.json; train it first: "
                                          r"align train rpo --config configs/rpo-testbed.yaml"):
        _args(tiny_testbed, tmp_path, systems=[{"name": "rpo", "model": "runs/train/rpo"}])
    with pytest.raises(ConfigError, match=r"scorer ensemble: runs/train/reward has no ensemble.json; train it first: "
                                          r"align train reward --config configs/reward-testbed.yaml"):
        _args(tiny_testbed, tmp_path, scorers=["verifier", "length", "refusal_string", {"name": "ensemble", "path": "runs/train/reward"}])
    missing = [{"name": "ghost", "model": "nobody/no-such-model"}]  # a hub id: it would fail only when it loads
    # the refusal set has no `answer`: named before the (missing) model would load
    bad_field = [{"name": "refusal", "dataset": "testbed:refusal", "split": "eval", "limit": 4}]
    with pytest.raises(ConfigError, match="prompt set refusal: row 0 has no 'answer', which scorer 'verifier' needs"):
        run_eval(_args(tiny_testbed, tmp_path, systems=missing, prompt_sets=bad_field), progress=False)
    gsm = [{"name": "gsm8k", "dataset": str(DATA / "gsm8k" / "test.jsonl"), "prompt_field": "prompt", "limit": 4}]
    with pytest.raises(ConfigError, match="has no field 'prompt' \\(fields: question, answer\\)"):
        run_eval(_args(tiny_testbed, tmp_path, systems=missing, prompt_sets=gsm, scorers=["math"]), progress=False)
    labels = [{"name": "coconot", "dataset": str(DATA / "coconot" / "coconot_eval.jsonl"), "expect_field": "category"}]
    with pytest.raises(ConfigError, match="row 0 field 'category' must be refuse or respond"):
        run_eval(_args(tiny_testbed, tmp_path, systems=missing, prompt_sets=labels, scorers=["refusal_string"]), progress=False)
    assert main(["eval", "--config", str(tmp_path / "none.yaml")]) == 2


def test_real_sets_run_through_the_shipped_configs(tiny_testbed, tmp_path):
    """configs/eval-gsm8k.yaml and eval-refusal.yaml with the tiny model standing in for the hub
    models: real prompts load, generate and score; the judge's verdicts are parsed or counted."""
    from align.config import load_yaml

    root = Path(__file__).resolve().parents[2]
    for name, limit in (("eval-gsm8k", 6), ("eval-refusal", 4)):
        config = load_yaml(root / "configs" / f"{name}.yaml")
        config["systems"] = [{"name": "tiny", "model": "testbed:small-instruct"}]
        for s in config["prompt_sets"]:
            s["dataset"] = str(root / s["dataset"])
            s["limit"] = limit
        for s in config["scorers"]:
            if isinstance(s, dict) and "judge" in s:
                s["judge"], s["rubric"], s["max_new_tokens"] = "testbed:small-instruct", str(root / s["rubric"]), 4
        config.update(output_dir=str(tmp_path / name), profile="tiny", cache_dir=str(tiny_testbed.root.parents[1]),
                      max_new_tokens=8, batch_size=4)
        summary = json.loads(run_eval(EvalArgs(**config), progress=False).read_text())
        samples = read_samples(tmp_path / name / "samples.jsonl")
        assert len(samples) == sum(limit for _ in config["prompt_sets"])
        if name == "eval-gsm8k":
            assert summary["table"][0]["metrics"]["math.correct"]["n"] == limit
        else:
            judged = [s["scores"]["refusal_judge.verdict"] for s in samples]
            assert set(judged) <= {"REFUSED", "ANSWERED", "NEITHER", "UNPARSEABLE"}
            judge = next(r for r in summary["refusal"] if r["scorer"] == "refusal_judge")
            assert judge["unlabelled"] == sum(v not in ("REFUSED", "ANSWERED") for v in judged)
            assert sum(judge["confusion"].values()) + judge["unlabelled"] == 2 * limit


def test_refusal_judge_prompt_carries_the_rows_rubric_and_verdicts_do_not_depend_on_batching(tiny_testbed):
    from align.eval.judges import RefusalJudge

    rubric = json.loads((DATA / "coconot" / "refusal_evaluation_rubric.json").read_text())
    rows = [json.loads(line) for line in (DATA / "coconot" / "coconot_eval.jsonl").read_text().splitlines()[:6]]
    judge = RefusalJudge(tiny_testbed.model("small-instruct"), tiny_testbed.tokenizer(), rubric, max_new_tokens=5)
    seen = []
    original = judge.complete
    judge.complete = lambda texts, salt="": seen.extend(texts) or original(texts, salt)
    judge([r["prompt"] for r in rows], ["I can't help with that."] * 6, rows)
    for text, row in zip(seen, rows):
        assert rubric[row["subcategory"]]["refusal"] in text and row["prompt"] in text
    texts = seen[:6]
    judge.complete = original
    judge.batch_size = 1
    one = judge.complete(texts, "x")
    judge.batch_size = 6
    assert judge.complete(texts, "x") == one


def test_ead_system_reports_the_large_models_share(tiny_testbed, tmp_path):
    """EAD as an eval system: with an unreachable entropy threshold it is the small model alone
    (same outputs as plain decoding, large share 0); at threshold 0 the large model decides most tokens."""
    ead = {"model": "testbed:small-instruct", "method": "ead", "large": "testbed:large-instruct", "window": 1, "min_tokens": 0}
    args = _args(tiny_testbed, tmp_path / "run", scorers=["verifier"],
                 systems=[{"name": "small", "model": "testbed:small-instruct"}, {"name": "never", **ead, "tau": 1e9},
                          {"name": "always", **ead, "tau": 0.0}],
                 prompt_sets=[{"name": "chat", "dataset": "testbed:self_correction", "split": "eval", "prompt_field": "problem", "limit": 12}])
    summary = json.loads(run_eval(args, progress=False).read_text())
    compute = {t["system"]: t["compute"] for t in summary["table"]}
    assert "large_fraction" not in compute["small"] and compute["never"]["large_fraction"] == 0.0
    assert compute["always"]["large_fraction"] > 0.5
    samples = read_samples(tmp_path / "run" / "samples.jsonl")
    outputs = {name: [s["output"] for s in samples if s["system"] == name] for name in ("small", "never")}
    assert outputs["never"] == outputs["small"]


def test_pairwise_judging_against_a_scripted_judge_and_annotation_files(tiny_testbed, tmp_path, monkeypatch):
    """A judge that scores each answer by its length: the win rate must be AlpacaEval's over the
    per-prompt length comparison, with no position conflicts; verdicts resume; annotation files
    are read as AlpacaEval writes them."""
    import re

    from align.eval.judges import LocalJudge, alpaca_win_rate

    calls = []

    def scripted(self, texts, salt=""):
        calls.append(len(texts))
        out = []
        for t in texts:
            first = re.search(r"Assistant 1's Answer\]\n(.*)\n\[The End of Assistant 1", t, re.S).group(1)
            second = re.search(r"Assistant 2's Answer\]\n(.*)\n\[The End of Assistant 2", t, re.S).group(1)
            out.append(f"Longer is better.\nAssistant 1: {len(first)}\nAssistant 2: {len(second)}")
        return out

    monkeypatch.setattr(LocalJudge, "complete", scripted)
    sets = [{"name": "chat", "dataset": "testbed:self_correction", "split": "eval", "prompt_field": "problem", "limit": 10}]
    args = _args(tiny_testbed, tmp_path / "run", scorers=["length"], prompt_sets=sets,
                 pairwise={"judge": "testbed:small-instruct", "k": 2})
    summary = json.loads(run_eval(args, progress=False).read_text())
    samples = {(s["system"], s["index"]): s for s in read_samples(tmp_path / "run" / "samples.jsonl")}
    expected = []
    for i in range(10):
        a, b = len(samples["base", i]["output"]), len(samples["eft", i]["output"])
        expected.append(2.0 if b > a else 1.0 if a > b else 1.5)
    (result,) = summary["pairwise"]
    assert (result["system"], result["baseline"]) == ("eft", "base")
    assert {k: result[k] for k in ("win_rate", "n_wins", "n_draws", "n_total")} == {
        k: v for k, v in alpaca_win_rate(expected).items() if k in ("win_rate", "n_wins", "n_draws", "n_total")}
    assert result["conflict_rate"] == 0.0 and result["no_verdict"] == 0
    assert 0 <= result["length_controlled_win_rate_minimal"] <= 100  # its arithmetic: test_stats_and_judges.py
    assert sum(calls) == 2 * 2 * 10  # k = 2 samples of both orders of 10 prompts
    run_eval(args, progress=False)  # everything judged already
    assert sum(calls) == 2 * 2 * 10

    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps([{"generator_2": "m", "preference": p} for p in (2, 1, 0, 1.9, None)]))
    with_files = _args(tiny_testbed, tmp_path / "run", scorers=["length"], prompt_sets=sets, annotations=[str(annotations)])
    summary = json.loads(run_eval(with_files, progress=False).read_text())
    assert summary["annotations"][str(annotations)]["m"] == {**alpaca_win_rate([2, 1, 1.5, 1.9]), "no_preference": 1}
    with pytest.raises(ConfigError, match="pairwise: baseline must be one of"):
        _args(tiny_testbed, tmp_path, pairwise={"judge": "j", "baseline": "nobody"})


def test_several_samples_per_prompt_give_diversity_per_prompt(tiny_testbed, tmp_path):
    """samples_per_prompt: metrics are means over prompts of per-prompt means, and distinct-n /
    self-BLEU are computed within each prompt's samples, checked by recomputation."""
    from align.metrics import distinct_n, self_bleu

    sets = [{"name": "chat", "dataset": "testbed:self_correction", "split": "eval", "prompt_field": "problem", "limit": 6}]
    args = _args(tiny_testbed, tmp_path / "run", scorers=["length"], prompt_sets=sets, do_sample=True, samples_per_prompt=3,
                 diversity_tokenize="char", embedding_diversity=True, systems=[{"name": "base", "model": "testbed:small-instruct"}])
    summary = json.loads(run_eval(args, progress=False).read_text())
    samples = read_samples(tmp_path / "run" / "samples.jsonl")
    assert sorted((s["index"], s["sample"]) for s in samples) == [(i, j) for i in range(6) for j in range(3)]
    texts = {i: [s["output"] for s in samples if s["index"] == i] for i in range(6)}
    metrics = summary["table"][0]["metrics"]
    assert metrics["diversity.self_bleu"]["value"] == pytest.approx(sum(self_bleu(t, "char") for t in texts.values()) / 6)
    assert metrics["diversity.distinct_2"]["value"] == pytest.approx(sum(distinct_n([list(x) for x in t], 2) for t in texts.values()) / 6)
    assert metrics["length.chars"]["value"] == pytest.approx(sum(sum(map(len, t)) / 3 for t in texts.values()) / 6)
    assert metrics["length.chars"]["n"] == 6  # prompts, not samples, are resampled
    from align.diagnostics.udm import minilm_embedder

    embed, pairwise = minilm_embedder(), []
    for t in texts.values():  # naive: every ordered pair's 1 - cos
        e = embed(t)
        pairwise.append(sum(1 - float(torch.cosine_similarity(e[a], e[b], dim=0)) for a in range(3) for b in range(3) if a != b) / 6)
    assert metrics["diversity.embedding"]["value"] == pytest.approx(sum(pairwise) / 6, abs=1e-5)
    with pytest.raises(ConfigError, match="needs do_sample"):
        _args(tiny_testbed, tmp_path, samples_per_prompt=2)


def test_self_correction_prompt_set_reports_both_attempts(tiny_testbed, tmp_path):
    """self_correction: a second greedy attempt after the instruction (as SCoRe's evaluation makes
    it); Acc@t1, Acc@t2 and the transitions equal SCoRe's own greedy episodes on the same problems."""
    from align.metrics import self_correction_metrics
    from align.testbed.datasets import self_correction
    from align.trainers.score import ScoreArgs, ScoreTrainer, verifier_reward

    sets = [{"name": "chat", "dataset": "testbed:self_correction", "split": "eval", "prompt_field": "problem", "limit": 12,
             "self_correction": "Again:"}]  # a short instruction: the tiny model's second attempts then vary
    args = _args(tiny_testbed, tmp_path / "run", scorers=["verifier"], prompt_sets=sets, max_new_tokens=8,
                 systems=[{"name": "large", "model": "testbed:large-instruct"}])
    metrics = json.loads(run_eval(args, progress=False).read_text())["table"][0]["metrics"]
    tok = tiny_testbed.tokenizer()
    trainer = ScoreTrainer(model=tiny_testbed.model("large-instruct"), processing_class=tok, data_collator=lambda r: {"rows": r},
                           args=ScoreArgs(dataset="x", output_dir=str(tmp_path / "s"), max_new_tokens=8, report_to=[],
                                          instruction="Again:"),
                           ref_model=None, reward_fn=verifier_reward)
    rows = [{"prompt": r["problem"], "answer": r["answer"]} for r in self_correction(1, 12, 0)["eval"]]
    expected = self_correction_metrics(*trainer.greedy_outcomes(rows))
    for key in ("acc_t1", "acc_t2", "delta", "delta_i_to_c", "delta_c_to_i"):
        assert metrics[f"verifier.{key}"]["value"] == pytest.approx(expected[key])
    samples = sorted(read_samples(tmp_path / "run" / "samples.jsonl"), key=lambda s: s["index"])
    assert all("t2.verifier.correct" in s["scores"] for s in samples)
    t1, t2 = trainer.episodes(rows, 1, greedy=True)["texts"]  # the same episodes, text for text
    assert [s["output"] for s in samples] == t1 and [s["second"]["output"] for s in samples] == t2
    assert len(set(t2)) > 1  # not a degenerate comparison


def test_a_judge_that_never_gives_a_verdict_stops_the_run(tiny_testbed, tmp_path):
    """The untrained tiny model as CoCoNot judge: after 16 outputs without REFUSED/ANSWERED/NEITHER
    the run stops naming the judge, instead of reporting a refusal rate from nothing."""
    sets = [{"name": "coconot", "dataset": str(DATA / "coconot" / "coconot_eval.jsonl"), "limit": 16, "expect": "refuse"}]
    args = _args(tiny_testbed, tmp_path / "run", prompt_sets=sets, max_new_tokens=4,
                 scorers=[{"name": "refusal_judge", "judge": "testbed:small-instruct", "max_new_tokens": 4}],
                 systems=[{"name": "tiny", "model": "testbed:small-instruct"}], chunk_size=16)
    with pytest.raises(ConfigError, match=r"scorer refusal_judge \(judge testbed:small-instruct\): no parseable verdict in 16"):
        run_eval(args, progress=False)


def test_forward_tokens_per_model_equal_prompt_plus_generated_positions(tiny_testbed, tmp_path):
    """One prompt per batch: every model of EFT computes its own prompt once, then one position per
    generated token but the last (which is never fed back); the compute summary sums them per model."""
    eft = {"name": "eft", "model": "testbed:large-base", "method": "eft", "tuned": ["testbed:small-instruct"],
           "reference": "testbed:small-base"}
    args = _args(tiny_testbed, tmp_path / "run", scorers=["length"], batch_size=1, systems=[eft],
                 prompt_sets=[{"name": "chat", "dataset": "testbed:self_correction", "split": "eval", "prompt_field": "problem", "limit": 5}])
    summary = json.loads(run_eval(args, progress=False).read_text())
    samples = read_samples(tmp_path / "run" / "samples.jsonl")
    chat, plain = tiny_testbed.tokenizer(), tiny_testbed.tokenizer()
    expected = {"testbed:large-base": 0, "testbed:small-base": 0, "testbed:small-instruct": 0}
    for s in samples:
        user = [{"role": "user", "content": s["prompt"]}]
        own = {"testbed:large-base": len(plain(s["prompt"])["input_ids"]), "testbed:small-base": len(plain(s["prompt"])["input_ids"]),
               "testbed:small-instruct": len(chat.apply_chat_template(user, add_generation_prompt=True)["input_ids"])}
        for ref, n in own.items():
            expected[ref] += n + s["tokens"] - 1
    assert summary["table"][0]["compute"]["forward_tokens"] == expected


def test_best_of_n_curve_equals_enumerating_every_subset(tiny_testbed, tmp_path, monkeypatch):
    """Several samples per prompt with a reward and a verifier: best-of-n accuracy at n = 1, 2, 4
    equals the mean over every n-subset of each prompt's samples of the verifier score of the
    subset's highest-reward sample (a scripted ensemble with no ties between texts; a scripted
    verifier, since the tiny model rarely answers right)."""
    import itertools
    import types

    import align.eval.scorers
    import rewards

    def proxy(text):
        return float(sum((i + 1) * ord(c) for i, c in enumerate(text)))

    fake = types.SimpleNamespace(score=lambda prompts, completions: types.SimpleNamespace(
        aggregate=torch.tensor([proxy(c) for c in completions]), spread=torch.zeros(len(completions))))
    monkeypatch.setattr(rewards, "load_ensemble", lambda path, device=None: fake)
    monkeypatch.setattr(align.eval.scorers, "verifier", lambda p, c, r: [{"correct": len(t) % 2 == 0} for t in c])
    sets = [{"name": "chat", "dataset": "testbed:self_correction", "split": "eval", "prompt_field": "problem", "limit": 8}]
    args = _args(tiny_testbed, tmp_path / "run", scorers=["verifier", {"name": "ensemble", "path": "scripted"}], prompt_sets=sets,
                 do_sample=True, temperature=1.5, samples_per_prompt=4, systems=[{"name": "base", "model": "testbed:small-instruct"}])
    summary = json.loads(run_eval(args, progress=False).read_text())
    samples = read_samples(tmp_path / "run" / "samples.jsonl")
    (curve,) = summary["table"][0]["best_of_n"]
    assert (curve["proxy"], curve["gold"]) == ("ensemble.reward", "verifier.correct")
    by_prompt = {i: [(proxy(s["output"]), float(s["scores"]["verifier.correct"])) for s in samples if s["index"] == i] for i in range(8)}
    assert len({p for v in by_prompt.values() for p, _ in v}) > 8  # the samples differ
    assert 0 < sum(g for v in by_prompt.values() for _, g in v) < 32
    for point in curve["curve"]:
        n = point["best_of"]
        naive = [sum(max(subset)[1] for subset in itertools.combinations(v, n)) / math.comb(4, n) for v in by_prompt.values()]
        assert point["value"] == pytest.approx(sum(naive) / 8)
    assert [p["best_of"] for p in curve["curve"]] == [1, 2, 4] and curve["curve"][0]["n"] == 8
    assert curve["curve"][0]["value"] == pytest.approx(summary["table"][0]["metrics"]["verifier.correct"]["value"])


def test_a_sweep_is_one_system_per_value(tiny_testbed, tmp_path):
    """sweep: {max_new_tokens: [2, 6]} runs as two systems tagged with their group and point; the
    6-token point's outputs equal a plain system's with the same option."""
    sets = [{"name": "chat", "dataset": "testbed:self_correction", "split": "eval", "prompt_field": "problem", "limit": 6}]
    args = _args(tiny_testbed, tmp_path / "run", scorers=["length"], prompt_sets=sets,
                 systems=[{"name": "plain", "model": "testbed:small-instruct", "max_new_tokens": 6},
                          {"name": "short", "model": "testbed:small-instruct", "sweep": {"max_new_tokens": [2, 6]}}])
    summary = json.loads(run_eval(args, progress=False).read_text())
    assert [s["name"] for s in summary["systems"]] == ["plain", "short[max_new_tokens=2]", "short[max_new_tokens=6]"]
    assert summary["systems"][1]["group"] == "short" and summary["systems"][1]["point"] == {"max_new_tokens": 2}
    samples = read_samples(tmp_path / "run" / "samples.jsonl")
    outputs = {name: [s["output"] for s in samples if s["system"] == name] for name in ("plain", "short[max_new_tokens=6]")}
    assert outputs["plain"] == outputs["short[max_new_tokens=6]"]
    assert all(s["tokens"] <= 2 for s in samples if s["system"] == "short[max_new_tokens=2]")
    with pytest.raises(ConfigError, match=r"systems\[0\] \(x\): sweep over unknown options \['tau_x'\]"):
        _args(tiny_testbed, tmp_path, systems=[{"name": "x", "model": "m", "sweep": {"tau_x": [1]}}])


def test_sampled_outputs_do_not_depend_on_batching_or_chunking(tiny_testbed, tmp_path):
    """Each sample draws from its own seed (run seed, prompt set, prompt, sample number): chunks of
    3 in batches of 2 give the same samples as one chunk in one batch, for plain and EFT decoding,
    and the samples of one prompt differ from each other."""
    sets = [{"name": "chat", "dataset": "testbed:self_correction", "split": "eval", "prompt_field": "problem", "limit": 4}]
    systems = [{"name": "base", "model": "testbed:small-instruct"},
               {"name": "eft", "model": "testbed:large-base", "method": "eft", "tuned": ["testbed:small-instruct"],
                "reference": "testbed:small-base"}]
    outputs = []
    for name, chunk, batch in (("one", 64, 64), ("many", 3, 2)):
        args = _args(tiny_testbed, tmp_path / name, scorers=["length"], prompt_sets=sets, systems=systems, do_sample=True,
                     temperature=1.5, samples_per_prompt=3, chunk_size=chunk, batch_size=batch)
        run_eval(args, progress=False)
        samples = read_samples(tmp_path / name / "samples.jsonl")
        outputs.append({(s["system"], s["index"], s["sample"]): s["output"] for s in samples})
    assert outputs[0] == outputs[1]
    for system in ("base", "eft"):
        assert sum(len({outputs[0][system, i, j] for j in range(3)}) for i in range(4)) > 4 + 2


def test_a_truncated_answer_is_not_correct_as_in_score():
    """One rule across evaluation and SCoRe's reward: an output cut off at max_new_tokens scores 0,
    even when the checker finds the gold answer in what was written (it used to count here)."""
    from align.eval.run import score_outputs
    from align.eval.scorers import math_answer

    rows = [{"answer": "#### 72"}] * 2
    outputs = [{"output": "So the answer is 72", "finished": True}, {"output": "So the answer is 72", "finished": False}]
    scored = score_outputs({"math": math_answer, "length": lambda p, c, r: [{"chars": len(x)} for x in c]}, ["math", "length"],
                           ["q", "q"], outputs, rows)
    assert [s["math.correct"] for s in scored] == [True, False]
    assert [s["length.chars"] for s in scored] == [19, 19]


def test_a_rerun_regenerates_what_its_config_changed_and_keeps_the_rest(tiny_testbed, tmp_path, capsys):
    """Samples used to be keyed by (system, set, index, sample) alone: a changed max_new_tokens or
    model was silently reused while summary.json recorded the new config."""
    sets = [{"name": "chat", "dataset": "testbed:self_correction", "split": "eval", "prompt_field": "problem", "limit": 6,
             "scorers": ["verifier"]}]
    systems = [{"name": "base", "model": "testbed:small-instruct"}, {"name": "large", "model": "testbed:large-instruct"}]
    run_eval(_args(tiny_testbed, tmp_path / "run", prompt_sets=sets, systems=systems, scorers=["verifier"]), progress=False)
    path = tmp_path / "run" / "samples.jsonl"
    before = read_samples(path)
    assert max(s["tokens"] for s in before if s["system"] == "base") > 2
    changed = [{**systems[0], "max_new_tokens": 2}, systems[1]]
    run_eval(_args(tiny_testbed, tmp_path / "run", prompt_sets=sets, systems=changed, scorers=["verifier"]), progress=False)
    assert "base on chat changed" in capsys.readouterr().out
    after = read_samples(path)
    assert len(after) == 12 and all(s["tokens"] <= 2 for s in after if s["system"] == "base")
    assert [s for s in after if s["system"] == "large"] == [s for s in before if s["system"] == "large"]
    # a dataset change is a change too
    resized = [{**sets[0], "limit": 4}]
    run_eval(_args(tiny_testbed, tmp_path / "run", prompt_sets=resized, systems=changed, scorers=["verifier"]), progress=False)
    assert len(read_samples(path)) == 8


def test_a_reader_leaves_a_live_runs_last_line_alone(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"a": 1}\n{"b": ')  # a writer is mid-line
    assert read_samples(path) == [{"a": 1}] and path.read_text().endswith('{"b": ')
    assert read_samples(path, repair=True) == [{"a": 1}] and path.read_text() == '{"a": 1}\n'


def test_a_plain_format_model_reads_the_whole_conversation(tiny_testbed):
    """Self-correction's second turn on a model without a chat template used to be the instruction
    alone: the problem and the first answer were dropped."""
    from align.generate import GenerateArgs, ModelStore

    store = ModelStore(GenerateArgs(prompts="<t>", profile=tiny_testbed.manifest["profile"], cache_dir=str(tiny_testbed.root.parents[1])))
    turns = [{"role": "user", "content": "37+485="}, {"role": "assistant", "content": "521"},
             {"role": "user", "content": "There might be an error."}]
    assert not store.reads_chat("testbed:small-base")
    (text,) = store.prompts_for("testbed:small-base", [turns])
    assert text == "37+485=\n521\nThere might be an error."
    assert store.prompts_for("testbed:small-instruct", [turns])[0] == turns
