import itertools
import math

import pytest
import torch

from align.metrics import auroc, entropy


def naive_auroc(scores, labels):
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_hand_values():
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([0, 1])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 0])) == 0.0
    assert auroc(torch.tensor([3.0, 3.0, 3.0]), torch.tensor([1, 0, 0])) == 0.5  # all tied


def test_auroc_matches_pairwise_count_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (300,), generator=g).float()  # many ties
    labels = torch.rand(300, generator=g) < 0.3
    assert auroc(scores, labels) == pytest.approx(naive_auroc(scores.tolist(), labels.tolist()), abs=1e-12)


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))


def test_entropy():
    assert entropy(torch.zeros(7)).item() == pytest.approx(math.log(7))
    assert entropy(torch.tensor([0.0, -1e4])).item() == pytest.approx(0.0, abs=1e-6)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert entropy(p.log()).item() == pytest.approx(-(p * p.log()).sum().item())
