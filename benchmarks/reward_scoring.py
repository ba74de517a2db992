"""``python -m benchmarks rewards``: the cost of scoring with a 5-member ensemble vs one member.

Members are small-instruct sequence-classification models (seeded score heads); a batch of 256
chat conversations. Single and ensemble calls race interleaved (``benchmarks.race``): the ratio
is the median [IQR] of per-round ratios on process CPU time.
"""

from __future__ import annotations

from typing import Any

from . import judged, race, ratio, seconds

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
    result = race({"single": lambda: single.score(prompts, completions),
                   "ensemble": lambda: ensemble.score(prompts, completions)}, rounds=ROUNDS)
    return {"ensemble5_over_single": judged(ratio(result, "ensemble", "single"), "<=", 5.25),  # 5 members: 5x, 5% for the rest
            "ms": {k: seconds(result, k, scale=1e3) for k in ("single", "ensemble")}, "batch": BATCH}
