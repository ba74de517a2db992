"""alignkit's rewards: one reward-ensemble module shared by RL trainers, decoding and evaluation.

* :mod:`rewards.aggregation` — ``mean`` / ``min`` (WCO) / ``uwo`` / ``median`` / ``mean_minus_std``.
* :mod:`rewards.ensemble` — members (HF reward models, likelihood / DPO implicit rewards, plain functions),
  standardisation, scoring, pairwise accuracy.
* :mod:`rewards.transforms` — the log-sigmoid-centred transform and cached per-prompt references.
* :mod:`rewards.bon` — best-of-n reranking, the unbiased best-of-n estimator, KL_BoN.
* :mod:`rewards.trl_adapter` — an ensemble as a TRL reward function.

Reward models are trained with ``align train reward`` (TRL's ``RewardTrainer``, one member per seed).

Example:
    >>> import torch
    >>> from rewards import FunctionReward, RewardEnsemble
    >>> ens = RewardEnsemble([FunctionReward(lambda p, c: len(c), "length"),
    ...                       FunctionReward(lambda p, c: -len(c), "brevity")], aggregation="min")
    >>> ens.score(["q", "q"], ["a", "abc"]).aggregate.tolist()
    [-1.0, -3.0]
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AGGREGATIONS": "rewards.aggregation",
    "aggregate": "rewards.aggregation",
    "spread": "rewards.aggregation",
    "RewardEnsemble": "rewards.ensemble",
    "EnsembleScores": "rewards.ensemble",
    "HFRewardModel": "rewards.ensemble",
    "FunctionReward": "rewards.ensemble",
    "LikelihoodReward": "rewards.ensemble",
    "pairwise_accuracy": "rewards.ensemble",
    "load_ensemble": "rewards.ensemble",
    "lsc": "rewards.transforms",
    "combine": "rewards.transforms",
    "ReferenceRewards": "rewards.transforms",
    "best_of_n": "rewards.bon",
    "unbiased_best_of_n": "rewards.bon",
    "kl_best_of_n": "rewards.bon",
    "hf_sampler": "rewards.bon",
    "vllm_sampler": "rewards.bon",
    "Sample": "rewards.bon",
    "math_answer_reward": "rewards.answers",
    "Pick": "rewards.bon",
    "TRLRewardFunction": "rewards.trl_adapter",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rewards' has no attribute {name!r}")
