import numpy as np
import pytest

from align.testbed.arithmetic import EVAL_BUCKETS, Problem, eval_problems, gold_reward, parse_answer, sample_problems, split_of


@pytest.mark.parametrize(
    "text, value",
    [
        ("522", 522),
        (" 522 ", 522),
        ("522.", 522),
        ("-17", -17),
        ("1,022", 1022),
        ("The answer is 522.", 522),
        ("answer: 522", 522),
        ("Answer = -3", -3),
        ("0", 0),
    ],
)
def test_parse_well_formed(text, value):
    assert parse_answer(text) == value


@pytest.mark.parametrize("text", ["", " ", "5 22", "522abc", "52-2", "522 523", "12,34", "answer", "five", "--3", "5.2"])
def test_parse_malformed(text):
    assert parse_answer(text) is None


def test_gold_reward():
    assert gold_reward("522", 522) == 1.0
    assert gold_reward("The answer is 522.", 522) == 1.0
    assert gold_reward("523", 522) == 0.0
    assert gold_reward("52", 522, finished=False) == 0.0  # truncated
    assert gold_reward("522", 522, finished=False) == 0.0  # truncated even when the digits match
    assert gold_reward("5x2", 522) == 0.0  # malformed


def test_problem_answers():
    assert Problem(37, "+", 485).answer == 522
    assert Problem(5, "-", 250).answer == -245
    assert Problem(37, "+", 485).prompt == "37+485="


def test_split_is_stable_and_about_one_in_twenty():
    # crc32 is fixed by the zlib spec, so these stay put across machines and Python versions
    prompts = [Problem(a, "+", b).prompt for a in range(100) for b in range(100)]
    share = sum(split_of(p) == "eval" for p in prompts) / len(prompts)
    assert abs(share - 1 / EVAL_BUCKETS) < 0.01
    assert [split_of(p) for p in prompts[:50]] == [split_of(p) for p in prompts[:50]]


def test_sampling_respects_splits_and_digit_ranges():
    rng = np.random.default_rng(0)
    train = sample_problems(rng, 3000, "train", digits=(2, 3))
    assert all(p.split == "train" for p in train)
    assert all(10 <= p.a <= 999 and 10 <= p.b <= 999 for p in train)
    assert {p.op for p in train} == {"+", "-"}
    held = eval_problems(500)
    assert len({p.prompt for p in held}) == 500
    assert all(p.split == "eval" for p in held)
    assert not {p.prompt for p in held} & {p.prompt for p in train}
    assert held == eval_problems(500)  # fixed set
    with pytest.raises(ValueError, match="split"):
        sample_problems(rng, 1, "test")
