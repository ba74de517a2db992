"""Small pure metrics shared by the testbed, eval reports and diagnostics."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from decoding.ead import entropy, flops_per_token  # noqa: F401  (EAD, one package lower, needs them too)


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for predicting ``labels`` (1 = positive).

    Computed as the Mann-Whitney U statistic with average ranks for ties, so it equals the
    probability that a random positive outscores a random negative (ties count one half).

    Example:
        >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
    """
    scores = scores.double().flatten()
    labels = labels.bool().flatten()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auroc needs both classes, got {n_pos} positives and {n_neg} negatives")
    order = scores.argsort()
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.double)
    # average the ranks inside each group of tied scores
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    group_sum = torch.zeros(len(counts), dtype=torch.double).index_add_(0, inverse, ranks[order])
    ranks[order] = (group_sum / counts)[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[Sequence[str]], n: int) -> float:
    """Unique / total n-grams over a set of tokenised samples; 0 when there are none.

    Example:
        >>> distinct_n([["a", "b", "a", "b"]], 2)   # ab, ba, ab -> 2 unique of 3
        0.6666666666666666
    """
    grams = [g for s in samples for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str], tokenize: str = "13a") -> float:
    """Mean sentence BLEU-4 of each text against all the others, in [0, 1] (lower = more diverse), by ``sacrebleu`` (effective n-gram order, its default smoothing). ``tokenize``:
    sacrebleu's tokenizer, ``"13a"`` for words, ``"char"`` for characters (arithmetic strings).

    Example:
        >>> self_bleu(["the cat sat", "the cat sat"])
        1.0
    """
    from sacrebleu.metrics import BLEU

    if len(texts) < 2:
        raise ValueError("self-BLEU needs at least two samples")
    metric = BLEU(tokenize=tokenize, effective_order=True)
    scores = [metric.sentence_score(t, list(texts[:i]) + list(texts[i + 1 :])).score for i, t in enumerate(texts)]
    return round(sum(scores) / len(scores) / 100, 12)


def tv_test(counts: torch.Tensor, probs: torch.Tensor, false_alarm: float = 1e-3) -> dict[str, float | bool]:
    """Does a sample (``counts`` over m cells) come from ``probs``? A total-variation test.

    By the Bretagnolle-Huber-Carol inequality ``P(TV > eps) <= 2^m exp(-2 N eps^2)`` for the
    empirical distribution of N draws, so with ``eps = sqrt((m ln 2 - ln false_alarm) / (2N))`` a
    correct sampler fails with probability at most ``false_alarm``.
    """
    n, m = float(counts.sum()), counts.numel()
    tv = 0.5 * float((counts / n - probs).abs().sum())
    eps = math.sqrt((m * math.log(2) - math.log(false_alarm)) / (2 * n))
    return {"tv": tv, "eps": eps, "passed": tv < eps}


def self_correction_metrics(correct_t1: Sequence[bool], correct_t2: Sequence[bool]) -> dict[str, float]:
    """Self-correction metrics (Kumar et al. 2409.12917), as fractions of the whole eval set (never of the wrong first attempts):
    ``acc_t1``, ``acc_t2``, ``delta = acc_t2 - acc_t1``, ``delta_i_to_c`` (wrong then right) and
    ``delta_c_to_i`` (right then wrong); ``delta == delta_i_to_c - delta_c_to_i`` is checked.

    Example:
        >>> self_correction_metrics([True, False, False, True], [True, True, False, False])["delta_i_to_c"]
        0.25
    """
    if len(correct_t1) != len(correct_t2) or not correct_t1:
        raise ValueError(f"need one pair of outcomes per problem, got {len(correct_t1)} and {len(correct_t2)}")
    n = len(correct_t1)
    pairs = list(zip(map(bool, correct_t1), map(bool, correct_t2)))
    out = {
        "acc_t1": sum(a for a, _ in pairs) / n,
        "acc_t2": sum(b for _, b in pairs) / n,
        "delta_i_to_c": sum(not a and b for a, b in pairs) / n,
        "delta_c_to_i": sum(a and not b for a, b in pairs) / n,
    }
    out["delta"] = out["acc_t2"] - out["acc_t1"]
    assert abs(out["delta"] - (out["delta_i_to_c"] - out["delta_c_to_i"])) < 1e-12
    return out
