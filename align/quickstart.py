"""``align quickstart``: the whole loop on the offline testbed in one command.

Builds the testbed (cached), trains a policy with the recipe the training claims chose on dev and
the reward ensemble of ``configs/reward-testbed.yaml``, and evaluates in two runs:

* **greedy decoding**: base (small-instruct), EFT up-scaling, EAD and the large base EFT starts
  from, on both axes the testbed is built for — accuracy on held-out answerable arithmetic (the
  verifier, the ensemble) and compliance with the fine-tuned behaviours (``a/0=`` -> ``undefined``,
  5-6 digit operands -> ``too big``, and the ``a/1=`` look-alikes answered ``a``; exact match);
* **sampling at T = 1**, where the training and best-of-n claims are measured: base, the RPO
  policy, and best-of-8 of base's samples picked by the ensemble, all drawing on the same seeds.

Each run reports whether the ensemble separates the verifier's right answers from its wrong ones
on the run's own samples. The HTML report's headline says where each method helps and where it
does not. Everything goes under ``out`` and is reused when present (a second run only re-renders
what is missing).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

# RPO on small-instruct's own verifier-labelled answers: the point the rpo-gold claim chose on dev
# most often (lr 2e-4, 200 steps, eta 4 at 4 of its 9 build x seed selections)
RPO = {"loss": "rpo", "rpo_eta": 4.0, "beta": 0.1, "learning_rate": 2e-4, "max_steps": 200, "per_device_train_batch_size": 8,
       "n_train": 512, "dataset": "testbed:policy_preference"}
# configs/reward-testbed.yaml: implicit members from large-instruct (docs/rewards.md)
REWARD = {"model": "testbed:large-instruct", "dataset": "testbed:policy_preference", "kind": "implicit", "beta": 0.1,
          "ensemble_size": 3, "n_train": 2000, "n_synthetic": 4000, "n_eval": 400, "learning_rate": 3e-4, "max_steps": 300,
          "per_device_train_batch_size": 32}
BEST_OF = 8
SAMPLES = 2  # T = 1 samples per prompt in the sampled run (best-of-8 draws 8 for each)


def quickstart(profile: str = "full", seed: int = 0, cache_dir: str | None = None, out: str = "runs/quickstart",
               n_eval: int = 500, workers: int = 2) -> dict[str, Any]:
    """Run the loop; returns the paths written and the seconds each stage took."""
    from .eval.run import EvalArgs, run_eval
    from .report import ReportArgs, render
    from .testbed import build_testbed
    from .trainers.dpo import DPOArgs, train_dpo
    from .trainers.reward_model import RewardArgs, train_reward

    root, seconds = Path(out), {}
    testbed = {"profile": profile, "seed": seed, "cache_dir": cache_dir}
    started = time.perf_counter()
    build_testbed(profile, seed, cache_dir, workers=workers)
    seconds["testbed"] = time.perf_counter() - started
    quiet = {"report_to": [], "save_strategy": "no", "disable_tqdm": True, "logging_steps": 10**6, "gradient_checkpointing": False}
    stages = (
        ("rpo", root / "rpo" / "model.safetensors",
         lambda: train_dpo(DPOArgs(model="testbed:small-instruct", output_dir=str(root / "rpo"), **RPO, **quiet, **testbed))),
        ("reward", root / "reward" / "ensemble.json",
         lambda: train_reward(RewardArgs(output_dir=str(root / "reward"), **REWARD, **quiet, **testbed))),
    )
    for name, done, train in stages:
        started = time.perf_counter()
        if not done.is_file():
            print(f"training {name} ...", flush=True)
            train()
        seconds[name] = time.perf_counter() - started
    chat, reward = "testbed:small-instruct", str(root / "reward")
    answerable = {"name": "answerable", "dataset": "testbed:self_correction", "split": "eval", "prompt_field": "problem",
                  "limit": n_eval, "scorers": ["verifier", "ensemble", "length"]}
    scorers = ["verifier", "exact", {"name": "ensemble", "path": reward}, "length"]
    greedy = EvalArgs(
        output_dir=str(root / "greedy"), max_new_tokens=16, batch_size=64, **testbed, scorers=scorers,
        systems=[{"name": "base", "model": chat},
                 # w = 0.5: what the eft-upscaling claim chose on dev at every seed (w = 1 gave dev accuracy 0.51)
                 {"name": "eft", "model": "testbed:large-base", "method": "eft", "tuned": [chat], "reference": "testbed:small-base",
                  "weights": [0.5]},
                 {"name": "ead", "model": chat, "method": "ead", "large": "testbed:large-instruct", "tau": 0.02, "window": 1,
                  "min_tokens": 0},
                 {"name": "large-base", "model": "testbed:large-base"}],  # skill without the behaviours: what EFT starts from
        prompt_sets=[answerable,
                     {"name": "behaviours", "dataset": str(write_behaviours(root / "behaviours.jsonl", n_eval)), "scorers": ["exact", "length"]}],
    )
    sampled = EvalArgs(
        output_dir=str(root / "sampled"), max_new_tokens=16, batch_size=64, **testbed, scorers=scorers, do_sample=True,
        samples_per_prompt=SAMPLES, prompt_sets=[answerable],
        systems=[{"name": "base (T=1)", "model": chat},
                 {"name": "rpo (T=1)", "model": str(root / "rpo")},
                 {"name": f"best-of-{BEST_OF}", "model": chat, "best_of_n": BEST_OF, "reward": reward}],
    )
    summaries = []
    for args in (greedy, sampled):
        started = time.perf_counter()
        summaries.append(run_eval(args))
        seconds[Path(args.output_dir).name] = time.perf_counter() - started
    page, md = render(ReportArgs(runs=[str(root / "greedy"), str(root / "sampled")], output=str(root / "report.html"),
                                 title="alignkit quickstart"))
    tables = [json.loads(p.read_text()) for p in summaries]
    return {"summary": summaries[0], "summaries": summaries, "report": page, "markdown": md,
            "seconds": {k: round(v, 1) for k, v in seconds.items()}, "table": tables[0]["table"],
            "reward_checks": [c for t in tables for c in t.get("reward_checks", [])]}


def write_behaviours(path: Path, n: int) -> Path:
    """Held-out prompts of the fine-tuned behaviours, a third each (``a/0``: at most the 100
    held-out numerators): ``prompt``, ``answer`` (the behaviour's exact text) and ``category``."""
    from rewards.io import atomic_write_jsonl

    from .testbed.arithmetic import behaviour_tasks

    rows = [{"prompt": t.prompt, "answer": t.target, "category": kind}
            for kind in ("ill-posed", "beyond-horizon", "contrast") for t in behaviour_tasks(kind, max(1, n // 3))]
    atomic_write_jsonl(path, rows)
    return path
