"""``score-selfcorrection`` (Kumar et al. 2409.12917), checked on the testbed.

Three models from small-instruct, evaluated alike with greedy two-turn episodes (attempt, the
self-correction instruction, attempt) on ``n`` held-out problems (the testbed verifier decides
correctness):

* base: small-instruct itself;
* SFT on traces: the base model's own sampled episodes on the training problems, keeping the second
  attempts that are right (wrong→right and right→right), fine-tuned with TRL's ``SFTTrainer`` on
  ``x2 → y2`` for the same number of steps and sequences per step as SCoRe;
* SCoRe: ``align train score`` with ``RECIPE`` (the values of ``configs/score-testbed.yaml``).

Under the rules of :mod:`align.claims.protocol`. Premise: the base model leaves room to correct
(Acc@t1 < 1), does not already self-correct (the paper's base models have Δ <= 0), and its sampled
second attempts are sometimes right (otherwise neither REINFORCE nor the SFT baseline has anything
to learn from), at every seed. No hyperparameter is tuned: SCoRe's and the SFT baseline's recipe
is the shipped config's, so nothing is chosen on the evaluation problems. Seeds 0, 1, 2 set the
training data, the training order and the sampled episodes.

Rule: holds iff SCoRe's per-problem ``Δ_i = c2_i - c1_i`` minus the base's is above 0 over the
whole interval, and so are SCoRe's Δ itself and SCoRe's Δ minus the SFT baseline's (conditions).
All three models' Acc@t1, Acc@t2, Δ^{i→c}, Δ^{c→i} are reported per seed.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from align.testbed import Testbed

RECIPE = {"stage1_steps": 100, "stage2_steps": 100, "learning_rate": 2e-5, "per_device_train_batch_size": 8,
          "num_generations": 4, "max_new_tokens": 16, "n_train": 2000, "alpha": 10.0, "beta1": 0.01, "beta2": 0.1}
TINY = {**RECIPE, "stage1_steps": 2, "stage2_steps": 2, "num_generations": 2, "n_train": 32, "max_new_tokens": 8}


def score_selfcorrection(tb: "Testbed", n: int, seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    from align.metrics import self_correction_metrics

    from .protocol import check, judge, paired_difference, premise

    arms: dict[str, list] = {"SCoRe": [], "base": [], "SFT on traces": [], "zero": []}
    per_seed, base_t1, base_delta, traces = [], [], [], []
    for seed in seeds:
        outcomes, info = _one_seed(tb, n, seed)
        metrics = {name: {k: round(v, 4) for k, v in self_correction_metrics(*o).items()} for name, o in outcomes.items()}
        for name, (c1, c2) in outcomes.items():
            arms[name].append([int(b) - int(a) for a, b in zip(c1, c2)])
        arms["zero"].append([0] * len(outcomes["base"][0]))
        base_t1.append(metrics["base"]["acc_t1"])
        base_delta.append(metrics["base"]["delta"])
        traces.append(info["traces"])
        per_seed.append({"seed": seed, "models": metrics, "sft": info})
    score_vs = {k: paired_difference(arms["SCoRe"], arms[k], bounds=(-1, 1)) for k in ("zero", "SFT on traces")}
    return judge(
        claim="after Stage II, SCoRe's self-correction Δ(t1, t2) is positive and above the base model's and the SFT-on-traces baseline's",
        metric=f"per-problem Δ_i = c2_i - c1_i, greedy two-turn episodes on {len(arms['base'][0])} held-out problems (verifier)",
        bounds=(-1, 1),
        premise=premise(check("base Acc@t1 (max over seeds)", max(base_t1), "<", 1.0),
                        check("base Δ (max over seeds)", max(base_delta), "<=", 0.0),
                        check("right second attempts among the base's sampled traces (min over seeds)", min(traces), ">", 0)),
        arms=arms, treated="SCoRe", control="base",
        conditions=[check("SCoRe Δ, interval low", score_vs["zero"]["low"], ">", 0),
                    check("SCoRe - SFT on traces, interval low", score_vs["SFT on traces"]["low"], ">", 0)],
        selection={"split": None, "rule": "nothing chosen from results: the shipped config's recipe", "chosen": RECIPE},
        seeds=list(seeds), per_seed=per_seed, score_minus=score_vs,
    )


def _one_seed(tb: "Testbed", n: int, seed: int) -> tuple[dict[str, tuple[list[bool], list[bool]]], dict[str, Any]]:
    """Greedy episode outcomes ``(c1, c2)`` on the held-out problems for the base, the SFT baseline
    and SCoRe trained under ``seed``; and the SFT baseline's trace count."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    import torch

    from align.testbed.datasets import self_correction
    from align.trainers.score import ScoreArgs, ScoreTrainer, train_score, verifier_reward

    recipe = RECIPE if tb.manifest["profile"] == "full" else TINY
    data = self_correction(recipe["n_train"], n, seed=seed, conversational=True)
    eval_rows = [dict(r) for r in self_correction(8, n, seed=0, conversational=True)["eval"]]  # the same problems at every seed
    base_path = str(tb.path("small-instruct"))
    tok = tb.tokenizer()
    torch.manual_seed(seed)  # the base model's sampled traces
    common = {"report_to": [], "save_strategy": "no", "disable_tqdm": True, "logging_steps": 10**6, "seed": seed,
              "per_device_eval_batch_size": 256}

    def scorer(model: Any, out: str) -> ScoreTrainer:
        """A trainer around ``model`` only for its greedy episodes and rewards."""
        args = ScoreArgs(dataset="unused", output_dir=out, max_new_tokens=recipe["max_new_tokens"], **common)
        return ScoreTrainer(model=model, args=args, processing_class=tok, data_collator=lambda r: {"rows": r},
                            ref_model=None, reward_fn=verifier_reward)

    outcomes: dict[str, tuple[list[bool], list[bool]]] = {}
    with tempfile.TemporaryDirectory() as out:
        base = scorer(tb.model("small-instruct"), out)
        outcomes["base"] = base.greedy_outcomes(eval_rows)
        # SFT on the base model's own correction traces, the same budget as SCoRe
        rows = [dict(r) for r in data["train"]]
        steps = recipe["stage1_steps"] + recipe["stage2_steps"]
        per_step = recipe["per_device_train_batch_size"] * recipe["num_generations"]
        traces = []
        for start in range(0, len(rows), recipe["per_device_train_batch_size"]):
            batch = rows[start : start + recipe["per_device_train_batch_size"]]
            ep = base.episodes(batch, recipe["num_generations"])
            _, r2 = base.rewards(batch, ep, recipe["num_generations"])
            for i, ok in enumerate(r2.tolist()):
                if ok >= 0.5:
                    turns = ep["problems"][i] + [{"role": "assistant", "content": ep["texts"][0][i]},
                                                 {"role": "user", "content": base.args.instruction}]
                    traces.append({"prompt": turns, "completion": [{"role": "assistant", "content": ep["texts"][1][i]}]})
            if len(traces) >= steps * per_step:
                break
        sft_info = {"traces": len(traces)}
        if traces:
            from datasets import Dataset

            sft = SFTTrainer(model=tb.model("small-instruct"), processing_class=tb.tokenizer(),
                             train_dataset=Dataset.from_list(traces),
                             args=SFTConfig(output_dir=f"{out}/sft", max_steps=steps, per_device_train_batch_size=per_step,
                                            learning_rate=recipe["learning_rate"], use_cpu=True, bf16=False,
                                            gradient_checkpointing=False, report_to=[], save_strategy="no", seed=seed,
                                            disable_tqdm=True, logging_steps=10**6))
            sft.train()
            outcomes["SFT on traces"] = scorer(sft.model.eval(), out).greedy_outcomes(eval_rows)
        else:  # nothing right to imitate: the baseline is the base model
            outcomes["SFT on traces"] = outcomes["base"]
            sft_info["note"] = "no correct second attempt among the traces; SFT baseline = base"
        train_args = {k: v for k, v in common.items() if k != "per_device_eval_batch_size"}
        train_score(ScoreArgs(model=base_path, dataset="testbed:self_correction", output_dir=f"{out}/score",
                              **recipe, **train_args))
        trained = AutoModelForCausalLM.from_pretrained(f"{out}/score")
        outcomes["SCoRe"] = scorer(trained, out).greedy_outcomes(eval_rows)
    return outcomes, sft_info
