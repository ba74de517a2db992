import math

import pytest
import torch

from decoding import RefusalTokenLogitsProcessor, strip_control_tokens
from decoding.refusal import KEEP, category_choice, single_token_choice


TOKENS = ["[refuse]", "[respond]", "[ill-posed]", "[beyond-horizon]", "[forbidden]"]


@pytest.fixture()
def tok(tiny_testbed):
    tok = tiny_testbed.tokenizer()
    tok.add_special_tokens({"additional_special_tokens": TOKENS})
    return tok


def ids(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def scores_with(tok, probs: dict[str, float]):
    """Logits whose softmax puts ``probs`` on the named tokens and the rest evenly elsewhere."""
    rest = (1 - sum(probs.values())) / (len(tok) - len(probs))
    p = torch.full((len(tok),), rest)
    for t, v in probs.items():
        p[tok.convert_tokens_to_ids(t)] = v
    return p.log()[None]


def decide(tok, probs, **kwargs):
    proc = RefusalTokenLogitsProcessor(tok, **kwargs)
    out = proc(torch.tensor([[1, 2, 3]]), scores_with(tok, probs))
    return out, proc.decisions


@pytest.mark.parametrize(
    "probs, threshold, expected",
    [
        ({"[refuse]": 0.30, "[respond]": 0.25}, None, "[refuse]"),  # more likely than respond
        ({"[refuse]": 0.20, "[respond]": 0.25}, None, "[respond]"),
        ({"[refuse]": 0.20, "[respond]": 0.70}, 0.15, "[refuse]"),  # above an explicit threshold
        ({"[refuse]": 0.20, "[respond]": 0.10}, 0.50, "[respond]"),
        ({"[refuse]": 0.50, "[respond]": 0.10}, 0.50, "[refuse]"),  # >= is inclusive
    ],
)
def test_single_token_threshold(tok, probs, threshold, expected):
    out, decisions = decide(tok, probs, threshold=threshold)
    target = tok.convert_tokens_to_ids(expected)
    assert decisions.tolist() == [target]
    assert out[0, target] == 0 and torch.isinf(out).sum() == len(tok) - 1


def test_categories_force_respond_or_keep(tok):
    cats = {"[ill-posed]": 0.3, "[beyond-horizon]": 0.5, "[forbidden]": None}  # forbidden outside S
    # k* = ill-posed (0.4 >= 0.3): forced
    _, d = decide(tok, {"[ill-posed]": 0.4, "[beyond-horizon]": 0.1, "[respond]": 0.3}, categories=cats)
    assert d.tolist() == ids(tok, "[ill-posed]")
    # k* = beyond-horizon but 0.4 < 0.5: respond
    _, d = decide(tok, {"[ill-posed]": 0.1, "[beyond-horizon]": 0.4, "[respond]": 0.3}, categories=cats)
    assert d.tolist() == ids(tok, "[respond]")
    # k* = forbidden, not controlled: the model keeps its own distribution
    scores = scores_with(tok, {"[forbidden]": 0.6, "[respond]": 0.3})
    proc = RefusalTokenLogitsProcessor(tok, categories=cats)
    out = proc(torch.tensor([[1, 2]]), scores)
    assert proc.decisions.tolist() == [KEEP] and torch.equal(out, scores)


def test_batch_rows_decide_independently():
    probs = torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3]])
    assert single_token_choice(probs, refuse_id=0, respond_id=1, threshold=None).tolist() == [0, 1]
    assert single_token_choice(probs, 0, 1, threshold=0.05).tolist() == [0, 0]
    assert category_choice(probs, [0, 2], [0.4, None], respond_id=1).tolist() == [0, KEEP]


def test_temperature_changes_the_decision(tok):
    probs = {"[refuse]": 0.30, "[respond]": 0.40}
    _, d = decide(tok, probs, threshold=0.2)
    assert d.tolist() == ids(tok, "[refuse]")
    # a high decision temperature flattens p[refuse] below 0.2
    _, d = decide(tok, probs, threshold=0.2, temperature=10.0)
    assert d.tolist() == ids(tok, "[respond]")


def test_bias_mode_adds_only_at_step_zero(tok):
    proc = RefusalTokenLogitsProcessor(tok, bias={"[refuse]": 2.5, "[respond]": -1.0})
    scores = torch.zeros(2, len(tok))
    out = proc(torch.tensor([[1, 2], [1, 3]]), scores)
    refuse, respond = ids(tok, "[refuse]", "[respond]")
    assert out[:, refuse].tolist() == [2.5, 2.5] and out[:, respond].tolist() == [-1.0, -1.0]
    assert (out.sum(-1) == 1.5).all()
    later = proc(torch.tensor([[1, 2, 9], [1, 3, 9]]), scores)
    assert torch.equal(later, scores)


def test_only_the_first_step_in_generate(tiny_testbed, tok):
    model = tiny_testbed.model("small-instruct")
    model.resize_token_embeddings(len(tok))
    enc = tok.apply_chat_template([[{"role": "user", "content": "7/0="}]], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    proc = RefusalTokenLogitsProcessor(tok, threshold=0.0)  # always refuse
    out = model.generate(**enc, logits_processor=[proc], do_sample=False, max_new_tokens=5, pad_token_id=tok.pad_token_id)
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    assert new[0] == tok.convert_tokens_to_ids("[refuse]")
    # the rest is the model's own greedy continuation after the forced token
    cont = model.generate(out[:, : enc["input_ids"].shape[1] + 1], do_sample=False, max_new_tokens=4, pad_token_id=tok.pad_token_id)
    assert cont[0].tolist()[: len(out[0])] == out[0].tolist()[: len(cont[0])]
    with pytest.raises(RuntimeError, match="build one per call"):
        model.generate(**enc, logits_processor=[proc], do_sample=False, max_new_tokens=2, pad_token_id=tok.pad_token_id)


def test_errors(tiny_testbed, tok):
    with pytest.raises(ValueError, match="is not one token of this tokenizer"):
        RefusalTokenLogitsProcessor(tiny_testbed.tokenizer())
    with pytest.raises(ValueError, match="threshold must be a probability"):
        RefusalTokenLogitsProcessor(tok, threshold=1.5)
    with pytest.raises(ValueError, match="categories\\['\\[ill-posed\\]'\\] must be a probability"):
        RefusalTokenLogitsProcessor(tok, categories={"[ill-posed]": math.nan})
    with pytest.raises(ValueError, match="do not combine"):
        RefusalTokenLogitsProcessor(tok, threshold=0.3, bias={"[refuse]": 1.0})
    with pytest.raises(ValueError, match="temperature"):
        RefusalTokenLogitsProcessor(tok, temperature=0.0)


def test_strip_control_tokens():
    assert strip_control_tokens(["[refuse] No.", "[respond]15", "plain"], ["[refuse]", "[respond]"]) == ["No.", "15", "plain"]


def test_first_token_probs_equal_one_prompt_at_a_time_in_the_order_given(tiny_testbed):
    """Batched by length (left-padded, only the last position through the head), the rows still
    come back in the caller's order and equal an unpadded forward of each prompt alone."""
    from decoding.auxiliary import encode_prompts
    from decoding.refusal import first_token_probs

    tok, model = tiny_testbed.tokenizer(), tiny_testbed.model("small-instruct").eval()
    texts = ["123456+654321=", "7/0=", "What is the password of alpha?", "1+1=", "88/8=", "Spell password backwards."]
    prompts = [[{"role": "user", "content": t}] for t in texts]
    batched = first_token_probs(model, tok, prompts, batch_size=4)
    assert batched.shape == (len(texts), model.config.vocab_size)
    for row, ids in zip(batched, encode_prompts(tok, prompts)):
        with torch.no_grad():
            alone = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
        torch.testing.assert_close(row, alone, atol=1e-5, rtol=1e-4)
