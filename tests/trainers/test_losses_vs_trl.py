"""Our losses equal TRL DPOTrainer's on the same batch and models (DPO, f-DPO, RPO token_mean)."""

import pytest
import torch
from trl import DPOConfig, DPOTrainer

from align.trainers.losses import dpo_loss, rpo_loss, sft_nll
from align.testbed.datasets import preference_pairs


def completion_logps(model, batch):
    """Per-token log-probs of the completion tokens [2B, T-1] and their mask, from the same
    transformers fused-LM-head log-probs TRL uses, so the comparison isolates the loss math."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True)
    mask = batch["completion_mask"][:, 1:]
    return out.log_probs * mask, mask


@pytest.fixture(scope="module")
def setup(tiny_testbed, tmp_path_factory):
    tok = tiny_testbed.tokenizer()
    data = preference_pairs(8, 2, conversational=True)["train"]
    return tok, data, tiny_testbed.model("small-instruct"), tiny_testbed.model("small-base"), tmp_path_factory.mktemp("trl")


def trl_loss_and_batch(setup, **config):
    tok, data, policy, ref, out = setup
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=4, report_to=[], use_cpu=True, beta=0.1, **config)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    return float(loss), batch


@pytest.mark.parametrize(
    "trl_config, ours",
    [
        ({}, {}),
        ({"f_divergence_type": "forward_kl"}, {"divergence": "forward_kl"}),
        ({"f_divergence_type": "js_divergence"}, {"divergence": "js"}),
        ({"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3}, {"divergence": "alpha", "alpha": 0.3, "alpha_convention": "trl"}),
    ],
    ids=["sigmoid", "forward_kl", "js", "alpha"],
)
def test_dpo_equals_trl(setup, trl_config, ours):
    _, _, policy, ref, _ = setup
    trl, batch = trl_loss_and_batch(setup, loss_type=["sigmoid"], **trl_config)
    pol, _ = completion_logps(policy, batch)
    rf, _ = completion_logps(ref, batch)
    pc, pr = pol.sum(1).chunk(2)
    rc, rr = rf.sum(1).chunk(2)
    assert dpo_loss(pc, pr, rc, rr, beta=0.1, **ours)[0].mean().item() == pytest.approx(trl, abs=1e-6)


def test_rpo_token_mean_equals_trl_sigmoid_plus_sft(setup):
    _, _, policy, ref, _ = setup
    eta = 0.7
    trl, batch = trl_loss_and_batch(setup, loss_type=["sigmoid", "sft"], loss_weights=[1.0, eta])
    pol, mask = completion_logps(policy, batch)
    rf, _ = completion_logps(ref, batch)
    pc, pr = pol.sum(1).chunk(2)
    rc, rr = rf.sum(1).chunk(2)
    chosen_tokens, chosen_mask = pol.chunk(2)[0], mask.chunk(2)[0]
    ours = rpo_loss(dpo_loss(pc, pr, rc, rr, beta=0.1)[0], sft_nll(chosen_tokens, chosen_mask, "token_mean"), eta, 0.1, "token_mean")
    assert ours.item() == pytest.approx(trl, abs=1e-6)


@pytest.mark.parametrize("divergence", ["forward_kl", "alpha"])
def test_training_loss_is_finite_when_the_policy_falls_far_below_its_reference(setup, divergence):
    """Δ = -100 on the chosen side: exp(-Δ) overflows fp32 unless the exponent is clamped (METHODS A1).
    Runs the loss TRL trains with, configured by our DPOArgs, and compares with our clamped formula."""
    from align.trainers.dpo import DPOArgs

    tok, data, policy, ref, out = setup
    args = DPOArgs(dataset="unused", divergence=divergence, alpha=0.9, output_dir=str(out), per_device_train_batch_size=4,
                   report_to=[], precompute_ref_log_probs=True)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    pol, _ = completion_logps(policy, batch)
    pc, pr = pol.sum(1).chunk(2)
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = pc + 100.0, pr  # Δ_w = -100, Δ_l = 0
    trainer.model.train()
    policy.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    assert torch.isfinite(loss) and torch.isfinite(grads).all()
    ours = dpo_loss(pc, pr, pc + 100.0, pr, beta=0.1, divergence=divergence, alpha=0.9)[0].mean()
    assert loss.item() == pytest.approx(ours.item(), rel=1e-5)
    policy.zero_grad()
