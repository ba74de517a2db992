"""Offline evaluation (METHODS §E1-E4): ``align eval`` runs systems (a model and a decoding method)
on prompt sets and scores every sample; every number carries a standard error and a bootstrap
interval, and two systems on the same prompts get a paired interval of their difference."""

from .judges import LocalJudge, PairwiseJudge, RefusalJudge, alpaca_win_rate, bpc_verdict, parse_pair_scores, parse_refusal_verdict
from .run import EvalArgs, run_eval
from .scorers import RewardScorer, math_answer, refusal_string_match, verifier
from .stats import Estimate, estimate, paired_difference

__all__ = [
    "Estimate",
    "EvalArgs",
    "LocalJudge",
    "PairwiseJudge",
    "RefusalJudge",
    "RewardScorer",
    "alpaca_win_rate",
    "bpc_verdict",
    "estimate",
    "math_answer",
    "paired_difference",
    "parse_pair_scores",
    "parse_refusal_verdict",
    "refusal_string_match",
    "run_eval",
    "verifier",
]
