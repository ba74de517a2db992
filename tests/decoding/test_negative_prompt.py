import pytest
import torch
from transformers.generation.logits_process import UnbatchedClassifierFreeGuidanceLogitsProcessor

from decoding import AuxiliaryModel, NegativePromptLogitsProcessor
from naive import assert_same_decoding, chat, naive_greedy, processor_greedy


PROMPTS = ["7+8=", "37+485=", "123-45="]
NEGATIVES = ["1-1=", "99+99=", "5="]
STEPS = 6


@pytest.fixture(scope="module")
def models(tiny_testbed):
    return {name: tiny_testbed.model(name) for name in ("small-base", "small-instruct", "large-base")}


@pytest.mark.parametrize("gamma", [1.5, 3.0, 0.5])
def test_identical_to_transformers_cfg_in_its_setting(tiny_testbed, models, gamma):
    tok = tiny_testbed.tokenizer()
    model = models["small-instruct"]
    prompt = tok.apply_chat_template(chat(["37+485="])[0], add_generation_prompt=True)["input_ids"]
    negative = tok("12-3=")["input_ids"]
    theirs = UnbatchedClassifierFreeGuidanceLogitsProcessor(gamma, model, unconditional_ids=torch.tensor([negative]))
    ours = NegativePromptLogitsProcessor(tok, AuxiliaryModel(model, tok, [negative], "negative"), gamma)
    theirs_out = processor_greedy(model, tok, [prompt], theirs, STEPS)
    assert_same_decoding(processor_greedy(model, tok, [prompt], ours, STEPS), theirs_out, atol=1e-5)


@pytest.mark.parametrize("prompts", [PROMPTS[1:2], PROMPTS], ids=["batch1", "batch3"])
def test_batched_other_model_equals_naive(tiny_testbed, models, prompts):
    tok = tiny_testbed.tokenizer()
    gamma = 2.0
    negatives = NEGATIVES[: len(prompts)]
    proc = NegativePromptLogitsProcessor(tok, AuxiliaryModel(models["small-base"], tok, negatives, "neg"), gamma)
    got = processor_greedy(models["large-base"], tok, prompts, proc, STEPS)
    expected = naive_greedy(
        tok,
        {"main": (models["large-base"], prompts), "neg": (models["small-base"], negatives)},
        lambda lp: gamma * (lp["main"] - lp["neg"]) + lp["neg"],
        STEPS,
    )
    assert_same_decoding(got, expected)


def test_scale_one_is_a_no_op(tiny_testbed, models):
    tok = tiny_testbed.tokenizer()
    proc = NegativePromptLogitsProcessor(tok, AuxiliaryModel(models["small-base"], tok, NEGATIVES, "neg"), 1.0)
    got = processor_greedy(models["large-base"], tok, PROMPTS, proc, STEPS)
    expected = naive_greedy(tok, {"main": (models["large-base"], PROMPTS)}, lambda lp: lp["main"], STEPS)
    assert_same_decoding(got, expected)
    assert proc.negative.state()["generated_tokens"] == 0  # the negative model never ran


def test_bad_scale(tiny_testbed, models):
    tok = tiny_testbed.tokenizer()
    with pytest.raises(ValueError, match="guidance_scale must be finite"):
        NegativePromptLogitsProcessor(tok, AuxiliaryModel(models["small-base"], tok, NEGATIVES, "neg"), float("nan"))
