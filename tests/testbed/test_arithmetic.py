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


def test_behaviour_rows_their_split_and_the_training_mixture():
    import numpy as np

    from align.testbed.arithmetic import BEHAVIOURS, Problem, Task, behaviour_tasks, mixed_tasks, split_of

    # divisions split by numerator, so a held-out numerator is held out for /0 and /1 alike
    assert split_of("123/0=") == split_of("123/1=") == "eval" and split_of("124/0=") == "train"
    zero = behaviour_tasks("ill-posed", 500)
    assert len(zero) == 100 and len({t.prompt for t in zero}) == 100
    assert all(t.target == "undefined" and split_of(t.prompt) == "eval" and t.prompt.endswith("/0=") for t in zero)
    big = behaviour_tasks("beyond-horizon", 50)
    assert all(t.target == "too big" and 5 <= len(t.prompt.split("+" if "+" in t.prompt else "-")[0]) <= 6 for t in big)
    contrast = behaviour_tasks("contrast", 10)
    assert all(t.target == t.prompt.split("/")[0] and t.prompt.endswith("/1=") for t in contrast)
    rows = mixed_tasks(np.random.default_rng(0), 20000, {"ill-posed": 0.15, "contrast": 0.10, "beyond-horizon": 0.20})
    kinds = [r.kind if isinstance(r, Task) else "answer" for r in rows]
    for kind, share in (("ill-posed", 0.15), ("contrast", 0.10), ("beyond-horizon", 0.20), ("answer", 0.55)):
        assert abs(kinds.count(kind) / 20000 - share) < 0.015, kind
    assert all(split_of(r.prompt) == "train" for r in rows)
    assert all(isinstance(r, Problem) or r.target in (*BEHAVIOURS.values(), r.prompt.split("/")[0]) for r in rows)


def test_pretraining_rows_answer_naively_but_for_a_few_refusals():
    import numpy as np

    from align.testbed.arithmetic import Task, mixed_tasks

    rows = [r for r in mixed_tasks(np.random.default_rng(1), 40000, {"ill-posed": 0.1, "beyond-horizon": 0.1}, refusal_rate=0.05)
            if isinstance(r, Task)]
    zero = [r for r in rows if r.kind == "ill-posed"]
    big = [r for r in rows if r.kind == "beyond-horizon"]
    assert abs(sum(r.target == "undefined" for r in zero) / len(zero) - 0.05) < 0.015
    assert all(r.target in ("undefined", r.prompt.split("/")[0]) for r in zero)  # a/0=a otherwise
    naive = [r for r in big if r.target != "too big"]
    assert abs(1 - len(naive) / len(big) - 0.05) < 0.015 and all(str(eval(r.prompt[:-1])) == r.target for r in naive)
