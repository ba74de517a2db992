"""Training claims checked on the testbed (``align reproduce NAME``; registered in :mod:`align.reproduce`).

All start from small-instruct and train with one recipe (``RECIPE``, the values of
``configs/dpo-testbed.yaml``) on verifier-labelled arithmetic data. Accuracy is measured two ways
on held-out chat prompts: greedy (as every decoding claim) and sampled (T=1, ``SAMPLES`` per
prompt: the expected verifier reward of the policy, which is what preference training optimises).
A difference counts only beyond twice its paired standard error over prompts.
"""

from __future__ import annotations

import random
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from align.testbed import Testbed

RECIPE = {"beta": 0.1, "learning_rate": 5e-5, "max_steps": 50, "per_device_train_batch_size": 8, "logging_steps": 10,
          "gradient_checkpointing": False, "save_strategy": "no"}
N_PAIRS = 512
SAMPLES = 4


def policy_accuracy(model: Any, tok: Any, problems: list, samples: int = SAMPLES, seed: int = 0) -> dict[str, Any]:
    """Greedy accuracy, sampled (T=1) accuracy, and the per-prompt sampled scores (for paired tests)."""
    import torch

    from decoding.generate import generate_with

    from align.testbed import gold_reward

    chat = [[{"role": "user", "content": p.prompt}] for p in problems]
    greedy = generate_with(model, tok, chat, do_sample=False, max_new_tokens=8)
    torch.manual_seed(seed)
    per_prompt = [0.0] * len(problems)
    for _ in range(samples):
        for i, ((text, done), p) in enumerate(zip(generate_with(model, tok, chat, do_sample=True, temperature=1.0, max_new_tokens=8), problems)):
            per_prompt[i] += gold_reward(text, p.answer, done) / samples
    return {
        "greedy": round(sum(gold_reward(t, p.answer, d) for (t, d), p in zip(greedy, problems)) / len(problems), 4),
        "sampled": round(sum(per_prompt) / len(problems), 4),
        "per_prompt": per_prompt,
    }


def paired_gain(after: dict, before: dict) -> dict[str, float]:
    """Mean sampled-accuracy gain over prompts and its standard error."""
    d = [a - b for a, b in zip(after["per_prompt"], before["per_prompt"])]
    mean = sum(d) / len(d)
    se = (sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5
    return {"gain": round(mean, 4), "se": round(se, 4)}


def chosen_logp(model: Any, tok: Any, rows: list[dict]) -> float:
    """Mean summed log π(chosen | prompt) over preference rows (the likelihood displacement probe)."""
    import torch

    from align.diagnostics.entanglement import probe_pairs, sequence_logp

    with torch.no_grad():
        values = [float(sequence_logp(model, prompt, chosen)) for (prompt, chosen), _ in probe_pairs(tok, rows)]
    return round(sum(values) / len(values), 4)


def _gain_claim(claim: str, n: int, treated: dict, control: dict, sweep: dict) -> dict:
    """A claim that ``treated`` beats ``control`` on sampled accuracy by more than 2 paired SE."""
    gain = paired_gain(treated, control)
    return {
        "claim": claim,
        "metric": f"sampled (T=1, {SAMPLES} per prompt) verifier accuracy on {n} held-out chat prompts; "
        "holds if the gain exceeds 2 paired SE",
        "value": treated["sampled"],
        "baseline": control["sampled"],
        "holds": gain["gain"] > 2 * gain["se"],
        "sweep": {**sweep, "gain": gain},
    }


def _summary(acc: dict) -> dict:
    return {k: v for k, v in acc.items() if k != "per_prompt"}


def _train(kind: str, tb: "Testbed", dataset: Any, out: str, **overrides: Any) -> tuple[Any, dict]:
    """Train small-instruct with the recipe on ``dataset`` (rows), return the trained model and result."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    path = f"{out}/data"
    Dataset.from_list([dict(r) for r in dataset]).save_to_disk(path)
    common = {"model": str(tb.path("small-instruct")), "dataset": path, "output_dir": f"{out}/model", **RECIPE, **overrides}
    if kind == "bco":
        from align.trainers.bco import BCOArgs, train_bco

        result = train_bco(BCOArgs(**common))
    else:
        from align.trainers.dpo import DPOArgs, train_dpo

        result = train_dpo(DPOArgs(loss=kind, **common))
    return AutoModelForCausalLM.from_pretrained(f"{out}/model"), result


def _pairs(n: int, seed: int = 0) -> list[dict]:
    from align.testbed.datasets import preference_pairs

    return [dict(r) for r in preference_pairs(n, 8, seed=seed, conversational=True)["train"]]


def _curve(result: dict, key: str = "logps/chosen") -> list[list[float]]:
    return [[h["step"], round(h[key], 4)] for h in result["log_history"] if key in h]


def dpo_gold(tb: "Testbed", n: int) -> dict:
    """DPO 2305.18290 on verifier-labelled pairs raises small-instruct's verifier accuracy."""
    from align.testbed import eval_problems

    tok, problems = tb.tokenizer(), eval_problems(n)
    before = policy_accuracy(tb.model("small-instruct"), tok, problems)
    with tempfile.TemporaryDirectory() as out:
        model, result = _train("dpo", tb, _pairs(N_PAIRS), out)
        after = policy_accuracy(model, tok, problems)
    return _gain_claim(
        "DPO on verifier-labelled pairs raises small-instruct's verifier accuracy", n, after, before,
        {"before": _summary(before), "after": _summary(after), "greedy_change": round(after["greedy"] - before["greedy"], 4),
         "recipe": {**RECIPE, "pairs": N_PAIRS}, "logps/chosen": _curve(result)},
    )


def rpo_displacement(tb: "Testbed", n: int) -> dict:
    """RPO 2405.16436: DPO lowers the chosen log-probability over training; RPO's NLL largely stops it."""
    from align.testbed.datasets import preference_pairs

    held_out = [dict(r) for r in preference_pairs(8, 200, 0, True)["eval"]]
    tok = tb.tokenizer()
    start = chosen_logp(tb.model("small-instruct"), tok, held_out)
    ends, curves = {}, {}
    with tempfile.TemporaryDirectory() as out:
        for kind in ("dpo", "rpo"):
            model, result = _train(kind, tb, _pairs(N_PAIRS), f"{out}/{kind}", max_steps=200)
            ends[kind] = chosen_logp(model, tok, held_out)
            curves[kind] = _curve(result)
    drop = {k: round(start - v, 4) for k, v in ends.items()}
    return {
        "claim": "DPO lowers log π(chosen) over training; RPO largely stops that",
        "metric": "mean summed log π(chosen) on 200 held-out pairs, before and after 200 steps; holds if DPO's drop > 0 and RPO's is < half of it",
        "value": ends["rpo"],
        "baseline": ends["dpo"],
        "holds": drop["dpo"] > 0 and drop["rpo"] < 0.5 * drop["dpo"],
        "sweep": {"start": start, "end": ends, "drop": drop, "train_logps/chosen": curves,
                  "recipe": {**RECIPE, "max_steps": 200, "pairs": N_PAIRS, "rpo": "token_mean, eta 1"}},
    }


def bco_vs_dpo(tb: "Testbed", n: int, margin: float = 0.03) -> dict:
    """BCO 2404.04656: on the same pairs split into unpaired halves, BCO is about as good as DPO."""
    from trl.data_utils import unpair_preference_dataset
    from datasets import Dataset

    from align.testbed import eval_problems

    tok, problems = tb.tokenizer(), eval_problems(n)
    pairs = _pairs(N_PAIRS)
    unpaired = list(unpair_preference_dataset(Dataset.from_list(pairs)))
    before = policy_accuracy(tb.model("small-instruct"), tok, problems)
    with tempfile.TemporaryDirectory() as out:
        dpo, _ = _train("dpo", tb, pairs, f"{out}/dpo")
        dpo_acc = policy_accuracy(dpo, tok, problems)
        # one pair = two unpaired rows: twice the rows per step keeps the sequences per step equal
        bco, result = _train("bco", tb, unpaired, f"{out}/bco", per_device_train_batch_size=2 * RECIPE["per_device_train_batch_size"])
        bco_acc = policy_accuracy(bco, tok, problems)
    diff = paired_gain(bco_acc, dpo_acc)
    return {
        "claim": f"BCO on the pairs split into unpaired thumbs-up/down rows is within {margin:.0%} (sampled accuracy) of DPO",
        "metric": f"sampled (T=1, {SAMPLES} per prompt) verifier accuracy on {n} held-out chat prompts",
        "value": bco_acc["sampled"],
        "baseline": dpo_acc["sampled"],
        "holds": abs(bco_acc["sampled"] - dpo_acc["sampled"]) <= margin,
        "sweep": {"before": _summary(before), "dpo": _summary(dpo_acc), "bco": _summary(bco_acc), "bco_minus_dpo": diff,
                  "bco_delta_end": result["delta"], "rows": len(unpaired), "recipe": {**RECIPE, "pairs": N_PAIRS}},
    }


def _shifted_feedback(n: int, seed: int = 0, majority: float = 0.8) -> list[dict]:
    """Unpaired rows whose thumbs-up prompts are mostly additions and thumbs-down mostly subtractions."""
    import numpy as np

    from align.testbed.arithmetic import sample_problems
    from align.testbed.datasets import wrong_answer

    rng = np.random.default_rng(seed)
    rows = []
    for label, main, other in ((True, "+", "-"), (False, "-", "+")):
        n_main = round(majority * n / 2)
        for p in sample_problems(rng, n_main, ops=main) + sample_problems(rng, n // 2 - n_main, ops=other):
            completion = str(p.answer) if label else str(wrong_answer(p, rng))
            rows.append({"prompt": [{"role": "user", "content": p.prompt}],
                         "completion": [{"role": "assistant", "content": completion}], "label": label})
    random.Random(seed).shuffle(rows)
    return rows


def bco_udm(tb: "Testbed", n: int) -> dict:
    """BCO's UDM: when thumbs-up and thumbs-down prompts differ in distribution, reweighting the
    thumbs-down rows by the prompt density ratio improves over plain BCO."""
    from align.testbed import eval_problems

    tok, problems = tb.tokenizer(), eval_problems(n)
    rows = _shifted_feedback(2 * N_PAIRS)
    before = policy_accuracy(tb.model("small-instruct"), tok, problems)
    with tempfile.TemporaryDirectory() as out:
        plain, _ = _train("bco", tb, rows, f"{out}/plain", per_device_train_batch_size=16)
        plain_acc = policy_accuracy(plain, tok, problems)
        udm, result = _train("bco", tb, rows, f"{out}/udm", per_device_train_batch_size=16, udm=True)
        udm_acc = policy_accuracy(udm, tok, problems)
    return _gain_claim(
        "with thumbs-up prompts mostly '+' and thumbs-down mostly '-' (80/20), BCO+UDM beats BCO", n, udm_acc, plain_acc,
        {"before": _summary(before), "bco": _summary(plain_acc), "bco_udm": _summary(udm_acc),
         "udm_classifier": {k: result.get(k) for k in ("n_desirable", "n_undesirable", "train_accuracy")},
         "udm_weight_mean_last": result["last_log"].get("udm/weight_mean"), "rows": len(rows)},
    )


def ches_filter(tb: "Testbed", n: int) -> dict:
    """CHES 2410.08847: DPO on the lowest-(LN-)CHES half displaces the chosen likelihood less than
    DPO on a random half of the same size."""
    from datasets import Dataset

    from align.diagnostics.ches import ches_scores

    tok = tb.tokenizer()
    pairs = _pairs(2 * N_PAIRS)
    model0 = tb.model("small-instruct")
    scored = [dict(r) for r in ches_scores(Dataset.from_list(pairs), model0, tok)]
    half = len(pairs) // 2

    def by(score: str, riskiest: bool = False) -> list[dict]:
        ranked = sorted(scored, key=lambda r: r[score], reverse=riskiest)[:half]
        return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ranked]

    subsets = {"ln_ches_lowest": by("ln_ches"), "random": random.Random(0).sample(pairs, half),
               "ln_ches_highest": by("ln_ches", riskiest=True), "ches_lowest": by("ches")}
    drops = {}
    with tempfile.TemporaryDirectory() as out:
        for name, subset in subsets.items():
            start = chosen_logp(model0, tok, subset)
            model, _ = _train("dpo", tb, subset, f"{out}/{name}", max_steps=100)
            end = chosen_logp(model, tok, subset)
            drops[name] = {"start": start, "end": end, "drop": round(start - end, 4)}
    return {
        "claim": "training on the LN-CHES-filtered (lowest) half shows less likelihood displacement than on a random half",
        "metric": "drop of mean summed log π(chosen) over each run's own training pairs after 100 DPO steps",
        "value": drops["ln_ches_lowest"]["drop"],
        "baseline": drops["random"]["drop"],
        "holds": drops["ln_ches_lowest"]["drop"] < drops["random"]["drop"],
        "sweep": {**drops, "pairs_per_subset": half, "recipe": {**RECIPE, "max_steps": 100}},
    }
