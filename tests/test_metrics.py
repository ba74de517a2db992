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


from align.metrics import distinct_n, self_bleu  # noqa: E402


def test_distinct_n_by_hand():
    samples = [list("abab"), list("abc")]
    # unigrams: a b a b a b c -> 3 unique of 7; bigrams: ab ba ab ab bc -> 3 unique of 5
    assert distinct_n(samples, 1) == pytest.approx(3 / 7)
    assert distinct_n(samples, 2) == pytest.approx(3 / 5)
    assert distinct_n([list("ab")], 3) == 0.0


def test_self_bleu_is_the_mean_sentence_bleu_against_the_others():
    import sacrebleu

    texts = ["12+3=15", "98-7=91", "40+44=84", "12+3=16"]
    naive = [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1 :], tokenize="char").score for i, t in enumerate(texts)]
    assert self_bleu(texts, tokenize="char") == pytest.approx(sum(naive) / 400)
    assert self_bleu(["12+3=15"] * 4, tokenize="char") == pytest.approx(1.0)
    assert self_bleu(texts, tokenize="char") < self_bleu(["12+3=15", "12+3=16", "12+3=17", "12+3=15"], tokenize="char")
    with pytest.raises(ValueError, match="two samples"):
        self_bleu(texts[:1])


def test_tv_test_by_hand():
    from align.metrics import tv_test

    out = tv_test(torch.tensor([50.0, 30.0, 20.0]), torch.tensor([0.5, 0.3, 0.2]))
    assert out["tv"] == pytest.approx(0.0) and out["passed"]
    assert out["eps"] == pytest.approx(math.sqrt((3 * math.log(2) + math.log(1000)) / 200))
    off = tv_test(torch.tensor([90.0, 5.0, 5.0]), torch.tensor([0.5, 0.3, 0.2]))
    assert off["tv"] == pytest.approx(0.4) and not off["passed"]
