import math

import pytest
import torch

from align.diagnostics.ches import ches_from_sums, ches_scores, filter_by_ches, hidden_sum
from align.testbed.datasets import preference_pairs


@pytest.fixture(scope="module")
def tiny_testbed(testbed):
    """This module's tests run on both testbed flavours (char and BPE)."""
    return testbed


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
    # exactly what DPO trains on: the rendered conversation (or text + EOS) after the prompt's tokens
    if conversational:
        prompt = list(tok.apply_chat_template(row["prompt"], add_generation_prompt=True)["input_ids"])
        full = [list(tok.apply_chat_template(row["prompt"] + row[k])["input_ids"]) for k in ("chosen", "rejected")]
    else:
        prompt = tok(row["prompt"])["input_ids"]
        full = [tok(row["prompt"] + row[k] + tok.eos_token)["input_ids"] for k in ("chosen", "rejected")]
    # a BPE merge across the boundary ("=" + "-448" -> "=-") moves it: the response starts where
    # the prompt's and the full sequence's tokens first differ (TRL's rule)
    def split(f):
        n = next((i for i, (a, b) in enumerate(zip(prompt, f)) if a != b), min(len(prompt), len(f)))
        return f[:n], f[n:]

    (pc, yc), (pr, yr) = split(full[0]), split(full[1])
    assert tok.eos_token_id in yc  # the EOS DPO trains on is scored too (ChatML: "<|im_end|>\n")
    s_plus, s_minus = hidden_sum(model, pc, yc), hidden_sum(model, pr, yr)
    expected = ches_from_sums(s_plus, s_minus, len(yc), len(yr))
    # ches_scores runs padded batches, this one unpadded sequence: fp32 sums that agree to ~1e-7
    # relative, and CHES is a difference of two terms of size |S|^2, so the error scales with those
    inner, norm2 = float((s_plus @ s_minus).abs()), float(s_plus @ s_plus)
    assert scored[0]["ches"] == pytest.approx(expected[0], rel=1e-6, abs=1e-6 * (inner + norm2))
    ln_scale = inner / (len(yc) * len(yr)) + norm2 / len(yc) ** 2
    assert scored[0]["ln_ches"] == pytest.approx(expected[1], rel=1e-6, abs=1e-6 * ln_scale)
    kept = filter_by_ches(pairs, model, tok, keep_fraction=0.25)
    assert len(kept) == 3
    assert max(kept["ln_ches"]) <= sorted(scored["ln_ches"])[2] + 1e-9
    assert len(filter_by_ches(pairs, model, tok, drop_top_fraction=0.5, normalized=False)) == 6
    with pytest.raises(ValueError, match="exactly one"):
        filter_by_ches(pairs, model, tok)
    assert all(math.isfinite(s) for s in scored["ches"])


@pytest.mark.parametrize("suffix", [".jsonl", ""])
def test_data_ches_command_writes_the_safest_pairs(tiny_testbed, tmp_path, suffix):
    from datasets import load_from_disk

    from align.cli import main
    from rewards.io import read_jsonl

    out = tmp_path / f"scored{suffix}"
    common = ["--profile", "tiny", "--cache_dir", str(tiny_testbed.root.parents[1]), "--n_train", "12", "--out", str(out)]
    assert main(["data", "ches", *common]) == 0
    all_rows = read_jsonl(out) if suffix else list(load_from_disk(str(out)))
    assert main(["data", "ches", *common, "--keep_fraction", "0.25"]) == 0
    kept = read_jsonl(out) if suffix else list(load_from_disk(str(out)))
    assert len(all_rows) == 12 and len(kept) == 3
    scores = sorted(r["ln_ches"] for r in all_rows)
    assert sorted(r["ln_ches"] for r in kept) == pytest.approx(scores[:3])
    assert not list(tmp_path.glob(".*"))  # no temporary left behind
    assert main(["data", "ches", *common, "--keep_fraction", "0.5", "--drop_top_fraction", "0.1"]) == 2
