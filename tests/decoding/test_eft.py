import pytest
import torch

from decoding import AuxiliaryModel, EFTLogitsProcessor, eft_logprobs, top_p_mask
from naive import assert_same_decoding, chat, naive_greedy, processor_greedy


PROMPTS = ["7+8=", "37+485=", "123-45="]  # different lengths: left padding in the batch
STEPS = 6


@pytest.fixture(scope="module")
def models(tiny_testbed):
    return {name: tiny_testbed.model(name) for name in ("small-base", "small-instruct", "large-base", "large-instruct")}


def upscaling(tok, models, prompts, weights=(1.0,), top_p=None):
    proc = EFTLogitsProcessor(
        tok,
        tuned=[AuxiliaryModel(models["small-instruct"], tok, chat(prompts), "small-instruct")],
        reference=AuxiliaryModel(models["small-base"], tok, prompts, "small-base"),
        weights=weights,
        upscale_top_p=top_p,
    )
    return processor_greedy(models["large-base"], tok, prompts, proc, STEPS)


@pytest.mark.parametrize("prompts", [PROMPTS[1:2], PROMPTS], ids=["batch1", "batch3"])
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_upscaling_equals_naive_recomputation(tiny_testbed, models, prompts, beta):
    tok = tiny_testbed.tokenizer()

    def formula(lp):  # the paper's formula, written out independently of decoding.eft
        z = lp["main"] + beta * (lp["tuned"] - lp["ref"])
        return z - torch.logsumexp(z, -1)

    expected = naive_greedy(
        tok,
        {
            "main": (models["large-base"], prompts),
            "tuned": (models["small-instruct"], chat(prompts)),
            "ref": (models["small-base"], prompts),
        },
        formula,
        STEPS,
    )
    assert_same_decoding(upscaling(tok, models, prompts, weights=[beta]), expected)


def test_two_tuned_models_and_top_p(tiny_testbed, models):
    tok = tiny_testbed.tokenizer()
    lam, p = 0.3, 0.8
    proc = EFTLogitsProcessor(
        tok,
        tuned=[
            AuxiliaryModel(models["small-instruct"], tok, chat(PROMPTS), "a"),
            AuxiliaryModel(models["large-instruct"], tok, chat(PROMPTS), "b"),
        ],
        reference=AuxiliaryModel(models["small-base"], tok, PROMPTS, "ref"),
        weights=[lam, 1 - lam],
        upscale_top_p=p,
    )
    got = processor_greedy(models["large-base"], tok, PROMPTS, proc, STEPS)

    def formula(lp):
        order = lp["a"].argsort(descending=True)
        mass, keep = 0.0, torch.zeros_like(lp["a"], dtype=torch.bool)
        for v in order.tolist():  # the top-p set, one token at a time
            keep[v] = True
            mass += lp["a"][v].exp().item()
            if mass >= p:
                break
        delta = lam * (lp["a"] - lp["ref"]) + (1 - lam) * (lp["b"] - lp["ref"])
        z = lp["main"] + torch.where(keep, delta, torch.zeros_like(delta))
        return z - torch.logsumexp(z, -1)

    expected = naive_greedy(
        tok,
        {
            "main": (models["large-base"], PROMPTS),
            "a": (models["small-instruct"], chat(PROMPTS)),
            "b": (models["large-instruct"], chat(PROMPTS)),
            "ref": (models["small-base"], PROMPTS),
        },
        formula,
        STEPS,
    )
    assert_same_decoding(got, expected)


def test_zero_weight_or_tuned_equal_reference_reproduces_base(tiny_testbed, models):
    tok = tiny_testbed.tokenizer()
    plain = processor_greedy(models["large-base"], tok, PROMPTS, _identity(), STEPS)
    zero = upscaling(tok, models, PROMPTS, weights=[0.0])
    same = EFTLogitsProcessor(
        tok,
        tuned=[AuxiliaryModel(models["small-base"], tok, PROMPTS, "tuned")],
        reference=AuxiliaryModel(models["small-base"], tok, PROMPTS, "ref"),
    )
    same_out = processor_greedy(models["large-base"], tok, PROMPTS, same, STEPS)
    assert_same_decoding(zero, plain, atol=1e-5)
    assert_same_decoding(same_out, plain, atol=1e-5)


def _identity():
    from transformers import LogitsProcessor

    class LogSoftmax(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return torch.log_softmax(scores.float(), -1)

    return LogSoftmax()


def test_reference_none_reuses_main_scores(tiny_testbed, models):
    # ordinary fine-tuning emulated at the same scale: base = reference = small-base
    tok = tiny_testbed.tokenizer()
    proc = EFTLogitsProcessor(tok, tuned=[AuxiliaryModel(models["small-instruct"], tok, chat(PROMPTS), "t")], reference=None)
    got = processor_greedy(models["small-base"], tok, PROMPTS, proc, STEPS)
    expected = naive_greedy(
        tok,
        {"main": (models["small-base"], PROMPTS), "t": (models["small-instruct"], chat(PROMPTS))},
        lambda lp: lp["t"],  # base + (tuned - base) = tuned
        STEPS,
    )
    assert_same_decoding(got, expected)


def test_processor_cannot_serve_two_generate_calls(tiny_testbed, models):
    tok = tiny_testbed.tokenizer()
    proc = EFTLogitsProcessor(tok, tuned=[AuxiliaryModel(models["small-instruct"], tok, chat(PROMPTS), "t")], reference=None)
    processor_greedy(models["small-base"], tok, PROMPTS, proc, 2)
    with pytest.raises(RuntimeError, match="build a new processor for every call"):
        processor_greedy(models["small-base"], tok, PROMPTS, proc, 2)


def test_bad_weights_and_batch_mismatch(tiny_testbed, models):
    tok = tiny_testbed.tokenizer()
    aux = AuxiliaryModel(models["small-instruct"], tok, chat(PROMPTS[:2]), "t")
    for weights in ([float("nan")], [float("inf")], [1.0, 1.0]):
        with pytest.raises(ValueError, match="weights"):
            EFTLogitsProcessor(tok, tuned=[aux], reference=None, weights=weights)
    with pytest.raises(ValueError, match="upscale_top_p"):
        EFTLogitsProcessor(tok, tuned=[aux], reference=None, upscale_top_p=0.0)
    proc = EFTLogitsProcessor(tok, tuned=[aux], reference=None)
    with pytest.raises(ValueError, match="3 sequences but 2 prompts"):
        processor_greedy(models["small-base"], tok, PROMPTS, proc, 2)


def test_vocabulary_mismatch_names_both_models(tiny_testbed, models):
    tok = tiny_testbed.tokenizer()
    other = tiny_testbed.tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="'main' and 'other'"):
        EFTLogitsProcessor(tok, tuned=[AuxiliaryModel(models["small-instruct"], other, ["1+1="], "other")], reference=None)


def test_pure_function_and_top_p_mask():
    base = torch.log_softmax(torch.tensor([[1.0, 2.0, 3.0]]), -1)
    tuned = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0]]), -1)
    ref = torch.log_softmax(torch.tensor([[0.0, 0.0, 0.0]]), -1)
    out = eft_logprobs(base, [tuned], ref, [1.0])
    # base + tuned - ref: logits [1+3, 2+2, 3+1] = all equal -> uniform
    torch.testing.assert_close(out, torch.full((1, 3), -torch.log(torch.tensor(3.0))))
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert top_p_mask(probs, 0.45).tolist() == [[True, False, False, False]]
    assert top_p_mask(probs, 0.55).tolist() == [[True, True, False, False]]
    assert top_p_mask(probs, 0.99).tolist() == [[True, True, True, True]]


def test_padded_logit_rows_and_bf16_auxiliary(tiny_testbed, models):
    """An auxiliary with 32 extra (random) logit rows and bf16 weights: its rows beyond the
    tokenizer are dropped and its log-probs are computed in fp32."""
    tok = tiny_testbed.tokenizer()
    padded = tiny_testbed.model("small-instruct")
    padded.resize_token_embeddings(len(tok) + 32, mean_resizing=False)
    torch.manual_seed(0)
    with torch.no_grad():
        padded.lm_head.weight[len(tok) :] = torch.randn(32, padded.config.hidden_size) * 10  # loud garbage
    half = tiny_testbed.model("small-base").to(torch.bfloat16)
    proc = EFTLogitsProcessor(
        tok, tuned=[AuxiliaryModel(padded, tok, chat(PROMPTS), "padded")], reference=AuxiliaryModel(half, tok, PROMPTS, "bf16")
    )
    got = processor_greedy(models["large-base"], tok, PROMPTS, proc, STEPS)
    assert all(s.dtype == torch.float32 for _, scores in got for s in scores)

    def formula(lp):
        z = lp["main"] + lp["tuned"] - lp["ref"]
        return z - torch.logsumexp(z, -1)

    expected = naive_greedy(
        tok,
        {"main": (models["large-base"], PROMPTS), "tuned": (padded, chat(PROMPTS)), "ref": (half, PROMPTS)},
        formula,
        STEPS,
    )
    # bf16 has 8 significant bits: the cached (one token a step) and uncached bf16 forwards round
    # differently, by up to ~2^-8 of logits of size ~10 (0.026 measured on a CPU with bf16 kernels).
    # The garbage rows would move every score by O(10), and the greedy ids must match exactly.
    assert_same_decoding(got, expected, atol=0.05)
