import copy

import pytest
import torch

from align.data import tokenize_prompt_completion
from align.diagnostics.entanglement import entanglement_stats, probe_pairs, sequence_logp
from align.trainers.losses import dpo_loss


def test_first_order_prediction_matches_a_real_sgd_step(tiny_testbed):
    """One tiny SGD step on the DPO loss of a single pair moves logp_w and logp_l as predicted
    (in float64: the moves are ~1e-6, a few float32 ulps of a log-prob)."""
    tok = tiny_testbed.tokenizer()
    model = tiny_testbed.model("small-instruct").double()
    prompt = tok.apply_chat_template([{"role": "user", "content": "37+485="}], add_generation_prompt=True)["input_ids"]
    chosen, rejected = tok("522", add_special_tokens=False)["input_ids"], tok("512", add_special_tokens=False)["input_ids"]
    stats = entanglement_stats(model, [((prompt, chosen), (prompt, rejected))])
    beta, lr = 0.1, 1e-4
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref_w, ref_l = sequence_logp(ref, prompt, chosen), sequence_logp(ref, prompt, rejected)
    lw, ll = sequence_logp(model, prompt, chosen), sequence_logp(model, prompt, rejected)
    loss = dpo_loss(lw[None], ll[None], ref_w[None], ref_l[None], beta=beta)[0].sum()
    loss.backward()
    # at the reference point the margin is 0: -ℓ'(0) = σ(0) = 1/2, so c = β·lr/2
    c = beta * lr / 2
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
        new_w, new_l = sequence_logp(model, prompt, chosen), sequence_logp(model, prompt, rejected)
    predicted_w = c * (stats["ge/norm_w2"] - stats["ge/inner"])
    predicted_l = c * (stats["ge/inner"] - stats["ge/norm_l2"])
    assert (new_w - lw).item() == pytest.approx(predicted_w, rel=0.05)
    assert (new_l - ll).item() == pytest.approx(predicted_l, rel=0.05)


def test_stats_fields_and_parameter_subset(tiny_testbed):
    tok = tiny_testbed.tokenizer()
    model = tiny_testbed.model("small-instruct")
    prompt = tok("12+3=")["input_ids"]
    pairs = [((prompt, tok("15", add_special_tokens=False)["input_ids"]), (prompt, tok("16", add_special_tokens=False)["input_ids"]))] * 2
    full = entanglement_stats(model, pairs)
    head = entanglement_stats(model, pairs, params=[model.lm_head.weight])
    for stats in (full, head):
        assert stats["ge/cos"] == pytest.approx(stats["ge/inner"] / (stats["ge/norm_w2"] * stats["ge/norm_l2"]) ** 0.5)
        assert stats["ge/frac_chosen_down"] in (0.0, 1.0) and 0 < stats["ge/norm_w2"]
    assert head["ge/norm_w2"] < full["ge/norm_w2"]  # a subset of the gradient has a smaller norm
    with pytest.raises(ValueError, match="at least one pair"):
        entanglement_stats(model, [])


def test_probe_refuses_sharded_training():
    """Under FSDP / ZeRO-3 a probe on the main process alone would hang the other ranks: refuse."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from align.diagnostics.entanglement import sharded_training

    assert sharded_training(SimpleNamespace(distributed_type=DistributedType.FSDP)) == "FSDP"
    zero3 = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, deepspeed_plugin=SimpleNamespace(zero_stage=3))
    assert sharded_training(zero3) == "DeepSpeed ZeRO-3"
    zero2 = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, deepspeed_plugin=SimpleNamespace(zero_stage=2))
    assert sharded_training(zero2) is None
    assert sharded_training(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU)) is None


def test_probe_pairs_split_each_side_where_dpo_does(testbed):
    """BPE merges across the prompt/completion boundary differently per side ("37" + "5+1=376"
    re-tokenizes the prompt); the probe must score each side's own tokens, as DPO trains on them."""
    tok = testbed.tokenizer()
    rows = [{"prompt": "37", "chosen": "+1=38", "rejected": "5+1=376"}, {"prompt": "12+3", "chosen": "=15", "rejected": "4=16"}]
    for row, pair in zip(rows, probe_pairs(tok, rows)):
        for (prompt, completion), key in zip(pair, ("chosen", "rejected")):
            enc = tokenize_prompt_completion(tok, {"prompt": row["prompt"], "completion": row[key]})
            assert prompt + completion == enc["input_ids"] and len(prompt) == enc["completion_mask"].index(1)
