"""SCoRe's math by hand: the shaped reward for all four (r1, r2) in both stages, k3 KL, RLOO, the
loss's gradient, and the self-correction metrics."""

import math

import pytest
import torch

from align.metrics import self_correction_metrics
from align.trainers.losses import k3_kl, leave_one_out, score_loss, score_turn_rewards

R1 = torch.tensor([0.0, 0.0, 1.0, 1.0])
R2 = torch.tensor([0.0, 1.0, 0.0, 1.0])


def test_shaped_rewards_for_all_four_outcomes():
    t1, t2 = score_turn_rewards(R1, R2, stage=2, alpha=10.0)
    assert t1.tolist() == [0.0, 0.0, 1.0, 1.0]
    # wrong->wrong 0; wrong->right 1 + 10; right->wrong 0 - 10; right->right 1 + 0
    assert t2.tolist() == [0.0, 11.0, -10.0, 1.0]
    t1, t2 = score_turn_rewards(R1, R2, stage=1)
    assert t1.tolist() == [0.0] * 4 and t2.tolist() == R2.tolist()
    with pytest.raises(ValueError, match="stage"):
        score_turn_rewards(R1, R2, stage=3)


def test_k3_kl_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.25), 0.0]])
    ref = torch.tensor([[math.log(0.25), math.log(0.25), -5.0]])
    mask = torch.tensor([[1, 1, 0]])
    # d = log(0.25/0.5) = -log 2: e^d - d - 1 = 0.5 + log 2 - 1; the equal token adds 0; the masked one nothing
    assert k3_kl(logp, ref, mask).item() == pytest.approx(0.5 + math.log(2) - 1.0, abs=1e-6)
    assert k3_kl(logp, logp, torch.ones(1, 3)).item() == 0.0


def test_leave_one_out_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    # first: 1 - (0 + 0 + 1)/3 = 2/3, 0 - (1 + 0 + 1)/3 = -2/3
    torch.testing.assert_close(leave_one_out(r), torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3], [0.0, 0.0, 0.0, 0.0]]))
    assert leave_one_out(torch.tensor([[2.0]])).tolist() == [[2.0]]


def test_loss_and_its_gradient_by_hand():
    logp1 = torch.tensor([-1.0, -2.0], requires_grad=True)
    logp2 = torch.tensor([-3.0, -4.0], requires_grad=True)
    kl1, kl2 = torch.tensor([0.5, 1.5]), torch.tensor([2.0, 4.0])
    adv1, adv2 = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5])
    loss = score_loss(logp1, logp2, kl1, kl2, adv1, adv2, stage=2, beta1=0.01)
    # mean of [-1*-1 - 2*-3 + 0.01*2.5, 1*-2 - 0.5*-4 + 0.01*5.5]
    assert loss.item() == pytest.approx(((1 + 6 + 0.025) + (-2 + 2 + 0.055)) / 2)
    loss.backward()
    assert logp1.grad.tolist() == [-0.5, 0.5] and logp2.grad.tolist() == [-1.0, -0.25]
    logp1.grad = logp2.grad = None
    stage1 = score_loss(logp1, logp2, kl1, kl2, adv1, adv2, stage=1, beta2=0.1)
    assert stage1.item() == pytest.approx(((6 + 0.05) + (2 + 0.15)) / 2)  # turn 1: no policy gradient, KL only
    stage1.backward()
    assert logp1.grad is None and logp2.grad.tolist() == [-1.0, -0.25]


def test_self_correction_metrics_by_hand():
    m = self_correction_metrics([1, 0, 0, 1, 1], [1, 1, 0, 0, 1])
    assert m == pytest.approx({"acc_t1": 0.6, "acc_t2": 0.6, "delta_i_to_c": 0.2, "delta_c_to_i": 0.2, "delta": 0.0})
    with pytest.raises(ValueError, match="one pair"):
        self_correction_metrics([1], [1, 0])
