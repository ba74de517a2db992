import pytest
import torch

from align.trainers.bco import RewardShift

T = torch.tensor


def test_count_weighted_mean_over_batches():
    shift = RewardShift()
    assert shift.value == 0.0  # starts at 0
    shift.update(T([1.0, 2.0, 3.0]), T([1, 0, 1]))
    shift.update(T([10.0]), T([0]))  # a batch without desirable examples
    assert shift.value == pytest.approx((1 + 2 + 3 + 10) / 4)


def test_balanced_mode():
    shift = RewardShift("balanced")
    shift.update(T([1.0, 3.0, 10.0]), T([1, 1, 0]))
    assert shift.value == pytest.approx(0.5 * (2.0 + 10.0))
    only_pos = RewardShift("balanced")
    only_pos.update(T([4.0]), T([1]))
    assert only_pos.value == 4.0
    with pytest.raises(ValueError, match="delta_mode"):
        RewardShift("ema")


def test_reduce_across_processes_equals_one_process():
    a, b = (T([1.0, 2.0]), T([1, 0])), (T([5.0, -1.0, 0.5]), T([0, 0, 1]))
    single = RewardShift()
    single.update(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
    # two "processes": each reduces by adding the other's batch totals
    other = RewardShift()
    other.update(*b)
    two = RewardShift()
    two.update(*a, reduce=lambda t: t + other.totals)
    assert two.value == pytest.approx(single.value)


def test_state_round_trip():
    shift = RewardShift("balanced")
    shift.update(T([0.3, -0.7]), T([1, 0]))
    again = RewardShift("balanced")
    again.load_state_dict(shift.state_dict())
    assert again.value == shift.value and torch.equal(again.totals, shift.totals)
    with pytest.raises(ValueError, match="mode"):
        RewardShift("mean").load_state_dict(shift.state_dict())
