"""Offline evaluation: ``align eval`` runs systems (a model and a decoding method)
on prompt sets and scores every sample; every number carries a standard error and a bootstrap
interval, and two systems on the same prompts get a paired interval of their difference."""

from .judges import (LocalJudge, PairwiseJudge, RefusalJudge, alpaca_win_rate, bpc_verdict, length_controlled_interval,
                     length_controlled_minimal, parse_pair_scores, parse_refusal_verdict)
from .run import EvalArgs, run_eval
from .scorers import RewardScorer, exact_match, math_answer, opening_sentences, refusal_string_match, verifier
from .stats import Estimate, estimate, holm, mcnemar_exact, paired_difference, paired_test, verdicts

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
    "exact_match",
    "holm",
    "length_controlled_interval",
    "length_controlled_minimal",
    "math_answer",
    "mcnemar_exact",
    "opening_sentences",
    "paired_difference",
    "paired_test",
    "parse_pair_scores",
    "parse_refusal_verdict",
    "refusal_string_match",
    "run_eval",
    "verdicts",
    "verifier",
]
