"""``python -m benchmarks rewards``: the cost of scoring with a 5-member ensemble vs one member.

Members are small-instruct sequence-classification models (seeded score heads); a batch of 256
chat conversations. Single and ensemble calls alternate over rounds, best round each.
"""

from __future__ import annotations

import time
from typing import Any

ROUNDS, BATCH = 7, 256


def reward_scoring(profile: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification

    from align.testbed import build_testbed, eval_problems
    from rewards import HFRewardModel, RewardEnsemble

    tb = build_testbed(profile)
    tok = tb.tokenizer()
    members = []
    for seed in range(5):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(tb.path("small-instruct"), num_labels=1)
        members.append(HFRewardModel(model, tok, f"member-{seed}", batch_size=BATCH))
    single, ensemble = RewardEnsemble(members[:1]), RewardEnsemble(members, aggregation="uwo")
    problems = eval_problems(BATCH)
    prompts = [[{"role": "user", "content": p.prompt}] for p in problems]
    completions = [[{"role": "assistant", "content": str(p.answer)}] for p in problems]
    best = {"single": float("inf"), "ensemble": float("inf")}
    for _ in range(ROUNDS):
        for name, ens in (("single", single), ("ensemble", ensemble)):
            start = time.perf_counter()
            ens.score(prompts, completions)
            best[name] = min(best[name], time.perf_counter() - start)
    return {"ensemble5_over_single": round(best["ensemble"] / best["single"], 3),
            "ms": {k: round(v * 1e3, 2) for k, v in best.items()}, "batch": BATCH}
