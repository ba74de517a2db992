import pytest
import torch

from decoding import AuxiliaryModel, NegativePool, SteerLogitsProcessor, steer_logprobs
from naive import assert_same_decoding, naive_greedy, processor_greedy


PROMPTS = ["7+8=", "37+485=", "123-45="]
STEPS = 6


@pytest.fixture(scope="module")
def models(tiny_testbed):
    return {name: tiny_testbed.model(name) for name in ("small-base", "small-instruct")}


def naive_steer(lp, gamma, eta, k):
    s = (1 + gamma) * lp["main"] - gamma * lp["base"] - eta * lp["neg"]
    keep = torch.zeros_like(s, dtype=torch.bool)
    keep[s.argsort(descending=True)[:k]] = True
    s = torch.where(keep, s, torch.tensor(float("-inf")))
    return s - torch.logsumexp(s, -1)


@pytest.mark.parametrize("prompts", [PROMPTS[1:2], PROMPTS], ids=["batch1", "batch3"])
def test_steer_equals_naive_recomputation(tiny_testbed, models, prompts):
    tok = tiny_testbed.tokenizer()
    pool = NegativePool(["12+3=15", "7-2=5", "100+1=101", "40-50=-10"], k=3, seed=0)
    negatives = [pool.sample() for _ in prompts]
    gamma, eta, k = 0.2, 0.6, 10
    proc = SteerLogitsProcessor(
        tok,
        base=AuxiliaryModel(models["small-base"], tok, prompts, "base"),
        negative=AuxiliaryModel(models["small-instruct"], tok, negatives, "negative"),
        gamma=gamma,
        eta=eta,
        top_k=k,
    )
    got = processor_greedy(models["small-instruct"], tok, prompts, proc, STEPS)
    expected = naive_greedy(
        tok,
        {
            "main": (models["small-instruct"], prompts),
            "base": (models["small-base"], prompts),
            "neg": (models["small-instruct"], negatives),
        },
        lambda lp: naive_steer(lp, gamma, eta, k),
        STEPS,
    )
    assert_same_decoding(got, expected)


def test_zero_strengths_reproduce_the_fine_tuned_model(tiny_testbed, models):
    tok = tiny_testbed.tokenizer()
    proc = SteerLogitsProcessor(tok, base=None, negative=None, gamma=0.0, eta=0.0, top_k=None)
    got = processor_greedy(models["small-instruct"], tok, PROMPTS, proc, STEPS)
    expected = naive_greedy(tok, {"main": (models["small-instruct"], PROMPTS)}, lambda lp: lp["main"], STEPS)
    assert_same_decoding(got, expected)


def test_top_k_keeps_exactly_k_and_renormalises():
    lp = torch.log_softmax(torch.randn(2, 50, generator=torch.Generator().manual_seed(0)), -1)
    out = steer_logprobs(lp, None, None, 0.0, 0.0, top_k=10)
    assert (torch.isfinite(out).sum(-1) == 10).all()
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2))
    assert (out.argmax(-1) == lp.argmax(-1)).all()


def test_pool_grows_and_samples_without_replacement():
    pool = NegativePool(["a", "b", "c"], k=2, seed=1)
    assert len(pool) == 3
    pool.add(["d", ""])  # empty outputs are not examples
    assert len(pool) == 4
    for _ in range(20):
        parts = pool.sample().split(" ")
        assert len(parts) == 2 and len(set(parts)) == 2 and set(parts) <= {"a", "b", "c", "d"}
    assert NegativePool(["x"], k=5).sample() == "x"


def test_errors(tiny_testbed, models):
    tok = tiny_testbed.tokenizer()
    with pytest.raises(ValueError, match="negative pool is empty"):
        NegativePool([]).sample()
    with pytest.raises(ValueError, match="needs the base model"):
        SteerLogitsProcessor(tok, base=None, negative=None, gamma=0.2, eta=0.0)
    with pytest.raises(ValueError, match="needs the negative-context model"):
        SteerLogitsProcessor(tok, base=None, negative=None, gamma=0.0, eta=0.6)
    with pytest.raises(ValueError, match="finite"):
        SteerLogitsProcessor(tok, base=None, negative=None, gamma=float("inf"), eta=0.0)
