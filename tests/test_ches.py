import math

import pytest
import torch

from align.ches import ches_from_sums, ches_scores, filter_by_ches, hidden_sum
from align.testbed.datasets import preference_pairs


def test_formula_by_hand():
    s_plus, s_minus = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    # <S+,S-> = 1, ||S+||^2 = 5
    ches, ln = ches_from_sums(s_plus, s_minus, 2, 4)
    assert ches == pytest.approx(1 - 5)
    assert ln == pytest.approx(1 / 8 - 5 / 4)


def test_hidden_sum_uses_the_predicting_positions(tiny_testbed):
    model = tiny_testbed.model("small-instruct")
    prompt, response = [1, 20, 18, 21, 22], [13, 9]
    with torch.no_grad():
        h = model.model(input_ids=torch.tensor([prompt + response])).last_hidden_state[0]
    # positions 4 (last prompt token) and 5 (first response token) predict the two response tokens
    torch.testing.assert_close(hidden_sum(model, prompt, response), h[4] + h[5])
    with pytest.raises(ValueError, match="empty response"):
        hidden_sum(model, prompt, [])


@pytest.mark.parametrize("conversational", [False, True])
def test_scores_and_filter(tiny_testbed, conversational):
    tok, model = tiny_testbed.tokenizer(), tiny_testbed.model("small-instruct")
    pairs = preference_pairs(12, 2, conversational=conversational)["train"]
    scored = ches_scores(pairs, model, tok)
    row = pairs[0]
    if conversational:
        prompt = list(tok.apply_chat_template(row["prompt"], add_generation_prompt=True)["input_ids"])
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
    else:
        prompt, chosen, rejected = tok(row["prompt"])["input_ids"], row["chosen"], row["rejected"]
    yc, yr = tok(chosen, add_special_tokens=False)["input_ids"], tok(rejected, add_special_tokens=False)["input_ids"]
    expected = ches_from_sums(hidden_sum(model, prompt, yc), hidden_sum(model, prompt, yr), len(yc), len(yr))
    assert (scored[0]["ches"], scored[0]["ln_ches"]) == pytest.approx(expected)
    kept = filter_by_ches(pairs, model, tok, keep_fraction=0.25)
    assert len(kept) == 3
    assert max(kept["ln_ches"]) <= sorted(scored["ln_ches"])[2] + 1e-9
    assert len(filter_by_ches(pairs, model, tok, drop_top_fraction=0.5, normalized=False)) == 6
    with pytest.raises(ValueError, match="exactly one"):
        filter_by_ches(pairs, model, tok)
    assert all(math.isfinite(s) for s in scored["ches"])
