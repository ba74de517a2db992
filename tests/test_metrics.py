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


from align.metrics import bleu, distinct_n, self_bleu  # noqa: E402


def test_distinct_n_by_hand():
    samples = [list("abab"), list("abc")]
    # unigrams: a b a b a b c -> 3 unique of 7; bigrams: ab ba ab ab bc -> 3 unique of 5
    assert distinct_n(samples, 1) == pytest.approx(3 / 7)
    assert distinct_n(samples, 2) == pytest.approx(3 / 5)
    assert distinct_n([list("ab")], 3) == 0.0


def test_bleu_by_hand():
    assert bleu(list("abcde"), [list("abcde")]) == pytest.approx(1.0)
    # candidate 'abcx' vs 'abcd': p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> smoothed 0.1/1; same length
    expected = math.exp((math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2) + math.log(0.1)) / 4)
    assert bleu(list("abcx"), [list("abcd")]) == pytest.approx(expected)
    # brevity penalty: 'abc' against 'abcdef' -> exp(1 - 6/3), p4 smoothed (no 4-gram at all -> 0)
    assert bleu(list("abc"), [list("abcdef")]) == 0.0
    assert bleu(list("abcd"), [list("abcdefgh")]) == pytest.approx(math.exp(1 - 8 / 4))


def test_self_bleu_orders_diversity():
    same = [list("12+3=15")] * 4
    varied = [list("12+3=15"), list("98-7=91"), list("40+44=84"), list("5-60=-55")]
    assert self_bleu(same) == pytest.approx(1.0)
    assert self_bleu(varied) < 0.3
    with pytest.raises(ValueError, match="two samples"):
        self_bleu(same[:1])


def test_tv_test_by_hand():
    from align.metrics import tv_test

    out = tv_test(torch.tensor([50.0, 30.0, 20.0]), torch.tensor([0.5, 0.3, 0.2]))
    assert out["tv"] == pytest.approx(0.0) and out["passed"]
    assert out["eps"] == pytest.approx(math.sqrt((3 * math.log(2) + math.log(1000)) / 200))
    off = tv_test(torch.tensor([90.0, 5.0, 5.0]), torch.tensor([0.5, 0.3, 0.2]))
    assert off["tv"] == pytest.approx(0.4) and not off["passed"]
