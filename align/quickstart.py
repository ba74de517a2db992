"""``align quickstart``: the whole loop on the offline testbed in one command.

Builds the testbed (cached), trains DPO (``configs/dpo-testbed.yaml``'s recipe) and a small reward
ensemble, evaluates base (small-instruct) / DPO / EFT up-scaling / EAD, and the large base EFT
starts from, on both axes the testbed is built for —
accuracy on held-out answerable arithmetic (the verifier, the ensemble) and compliance with the
fine-tuned behaviours (``a/0=`` -> ``undefined``, 5-6 digit operands -> ``too big``, and the
``a/1=`` look-alikes answered ``a``; exact match) — with compute, and writes the HTML report, whose
headline says where each method helps and where it does not. Everything goes under ``out`` and is reused when
present (a second run only re-renders what is missing).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

# configs/dpo-testbed.yaml's recipe; the reward members are configs/reward-testbed.yaml's, fewer and shorter
DPO = {"beta": 0.1, "learning_rate": 5e-5, "max_steps": 50, "per_device_train_batch_size": 8, "n_train": 512}
REWARD = {"ensemble_size": 3, "label_noise": 0.25, "learning_rate": 3e-4, "max_steps": 300, "per_device_train_batch_size": 32,
          "n_train": 4000}


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
        ("dpo", root / "dpo" / "model.safetensors",
         lambda: train_dpo(DPOArgs(model="testbed:small-instruct", dataset="testbed:preference", output_dir=str(root / "dpo"),
                                   **DPO, **quiet, **testbed))),
        ("reward", root / "reward" / "ensemble.json",
         lambda: train_reward(RewardArgs(model="testbed:small-instruct", dataset="testbed:preference",
                                         output_dir=str(root / "reward"), **REWARD, **quiet, **testbed))),
    )
    for name, done, train in stages:
        started = time.perf_counter()
        if not done.is_file():
            print(f"training {name} ...", flush=True)
            train()
        seconds[name] = time.perf_counter() - started
    chat = "testbed:small-instruct"
    args = EvalArgs(
        output_dir=str(root / "eval"), max_new_tokens=16, batch_size=64, **testbed,
        systems=[{"name": "base", "model": chat},
                 {"name": "dpo", "model": str(root / "dpo")},
                 # w = 0.5: what the eft-upscaling claim chose on dev at every seed (w = 1 gave dev accuracy 0.51)
                 {"name": "eft", "model": "testbed:large-base", "method": "eft", "tuned": [chat], "reference": "testbed:small-base",
                  "weights": [0.5]},
                 {"name": "ead", "model": chat, "method": "ead", "large": "testbed:large-instruct", "tau": 0.02, "window": 1,
                  "min_tokens": 0},
                 {"name": "large-base", "model": "testbed:large-base"}],  # skill without the behaviours: what EFT starts from
        prompt_sets=[{"name": "answerable", "dataset": "testbed:self_correction", "split": "eval", "prompt_field": "problem",
                      "limit": n_eval, "scorers": ["verifier", "ensemble", "length"]},
                     {"name": "behaviours", "dataset": str(write_behaviours(root / "behaviours.jsonl", n_eval)), "scorers": ["exact", "length"]}],
        scorers=["verifier", "exact", {"name": "ensemble", "path": str(root / "reward")}, "length"],
    )
    started = time.perf_counter()
    summary = run_eval(args)
    seconds["eval"] = time.perf_counter() - started
    page, md = render(ReportArgs(runs=[str(root / "eval")], output=str(root / "report.html"), title="alignkit quickstart"))
    return {"summary": summary, "report": page, "markdown": md, "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "table": json.loads(summary.read_text())["table"]}


def write_behaviours(path: Path, n: int) -> Path:
    """Held-out prompts of the fine-tuned behaviours, a third each (``a/0``: at most the 100
    held-out numerators): ``prompt``, ``answer`` (the behaviour's exact text) and ``category``."""
    from rewards.io import atomic_write_jsonl

    from .testbed.arithmetic import behaviour_tasks

    rows = [{"prompt": t.prompt, "answer": t.target, "category": kind}
            for kind in ("ill-posed", "beyond-horizon", "contrast") for t in behaviour_tasks(kind, max(1, n // 3))]
    atomic_write_jsonl(path, rows)
    return path
