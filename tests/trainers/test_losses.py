"""Loss formulas against values computed by hand with the math module."""

import math

import pytest
import torch

from align.trainers.losses import bco_loss, dpo_loss, f_score, paper_alpha, rpo_loss, sft_nll


def softplus(x):
    return math.log1p(math.exp(x))


def sig_loss(x):  # -log σ(x)
    return softplus(-x)


T = torch.tensor
PC, PR, RC, RR = T([-1.0, -4.0]), T([-3.0, -2.0]), T([-2.0, -3.0]), T([-2.0, -2.5])
# Δ_w = [1, -1], Δ_l = [-1, 0.5]


@pytest.mark.parametrize(
    "divergence, alpha, s",
    [
        ("reverse_kl", 0.5, lambda d: d),
        ("forward_kl", 0.5, lambda d: -math.exp(-d)),
        ("js", 0.5, lambda d: -softplus(-d)),
        ("alpha", 0.3, lambda d: -math.exp(-0.3 * d) / 0.3),
    ],
)
def test_dpo_losses_by_hand(divergence, alpha, s):
    beta = 0.1
    loss, rw, rl = dpo_loss(PC, PR, RC, RR, beta=beta, divergence=divergence, alpha=alpha)
    for i, (dw, dl) in enumerate([(1.0, -1.0), (-1.0, 0.5)]):
        assert loss[i].item() == pytest.approx(sig_loss(beta * (s(dw) - s(dl))), rel=1e-6)
    assert rw.tolist() == pytest.approx([0.1, -0.1]) and rl.tolist() == pytest.approx([-0.1, 0.05])


def test_alpha_conventions_and_limits():
    assert paper_alpha(0.3) == 0.3 and paper_alpha(0.3, "trl") == pytest.approx(0.7)
    with pytest.raises(ValueError, match="strictly between"):
        paper_alpha(1.0)
    with pytest.raises(ValueError, match="alpha_convention"):
        paper_alpha(0.5, "other")
    a = dpo_loss(PC, PR, RC, RR, divergence="alpha", alpha=0.3)[0]
    b = dpo_loss(PC, PR, RC, RR, divergence="alpha", alpha=0.7, alpha_convention="trl")[0]
    assert torch.equal(a, b)
    # α -> 0 approaches reverse KL, α -> 1 forward KL (scores differ by constants only)
    near_rev = dpo_loss(PC, PR, RC, RR, divergence="alpha", alpha=1e-4)[0]
    near_fwd = dpo_loss(PC, PR, RC, RR, divergence="alpha", alpha=1 - 1e-4)[0]
    torch.testing.assert_close(near_rev, dpo_loss(PC, PR, RC, RR)[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(near_fwd, dpo_loss(PC, PR, RC, RR, divergence="forward_kl")[0], atol=1e-4, rtol=0)


def test_exponent_clamp_keeps_losses_finite():
    huge = T([-500.0])
    assert f_score(huge, "forward_kl").item() == pytest.approx(-math.exp(80))
    assert f_score(huge.half(), "forward_kl").item() == pytest.approx(-math.exp(11), rel=1e-3)
    loss = dpo_loss(T([-500.0]), T([0.0]), T([0.0]), T([0.0]), divergence="forward_kl")[0]
    assert torch.isfinite(loss).all()
    with pytest.raises(ValueError, match="divergence"):
        f_score(huge, "tv")


def test_sft_nll_reductions_by_hand():
    logps = T([[-1.0, -2.0, -3.0], [-4.0, -5.0, 0.0]])
    mask = T([[1, 1, 1], [1, 1, 0]])
    assert sft_nll(logps, mask, "sum").item() == pytest.approx((6 + 9) / 2)
    assert sft_nll(logps, mask, "seq_mean").item() == pytest.approx((6 / 3 + 9 / 2) / 2)
    assert sft_nll(logps, mask, "token_mean").item() == pytest.approx(15 / 5)
    with pytest.raises(ValueError, match="sft_reduction"):
        sft_nll(logps, mask, "max")


def test_rpo_coefficients():
    dpo = T([0.5, 0.7])
    assert rpo_loss(dpo, T(7.5), eta=0.005, beta=0.01, reduction="sum").item() == pytest.approx(0.6 + 0.005 * 0.01 * 7.5)
    assert rpo_loss(dpo, T(3.25), eta=0.2, beta=0.5, reduction="seq_mean").item() == pytest.approx(0.6 + 0.2 * 3.25)
    assert rpo_loss(dpo, T(3.0), eta=1.0, beta=0.1, reduction="token_mean").item() == pytest.approx(0.6 + 3.0)


def test_bco_by_hand():
    policy, ref = T([-1.0, -2.0, -3.0]), T([-2.0, -2.0, -1.0])  # r = β·[1, 0, -2]
    labels = T([1, 0, 0])
    losses, rewards = bco_loss(policy, ref, labels, beta=0.5, delta=0.25, weights=T([1.0, 2.0, 0.5]))
    assert rewards.tolist() == pytest.approx([0.5, 0.0, -1.0])
    expected = [sig_loss(0.5 - 0.25), 2.0 * sig_loss(-(0.0 - 0.25)), 0.5 * sig_loss(-(-1.0 - 0.25))]
    assert losses.tolist() == pytest.approx(expected)
    # without weights every undesirable example counts once
    plain, _ = bco_loss(policy, ref, labels, beta=0.5, delta=0.25)
    assert plain[1].item() == pytest.approx(sig_loss(0.25))


def test_gradients_flow_to_policy_only():
    policy = T([-1.0, -2.0], requires_grad=True)
    delta = T(0.3, requires_grad=True)
    losses, _ = bco_loss(policy, T([-1.5, -1.5]), T([1, 0]), beta=0.1, delta=delta)
    losses.mean().backward()
    assert policy.grad is not None and delta.grad is None
