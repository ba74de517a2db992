import json

import pytest
from trl.data_utils import is_conversational

from align.testbed import parse_answer, split_of
from align.testbed.datasets import BUILDERS, REFUSALS, preference_pairs, refusal_sft, unpaired_feedback, write_samples

COLUMNS = {
    "preference": ({"prompt", "chosen", "rejected"}, {"prompt", "chosen", "rejected"}),
    "unpaired": ({"prompt", "completion", "label"}, {"prompt", "completion", "label"}),
    "refusal": ({"prompt", "completion", "label", "category"}, {"messages", "label", "category"}),
    "self_correction": ({"problem", "answer"}, {"prompt", "answer"}),
}


def prompt_of(row):
    for key in ("prompt", "problem", "messages"):
        if key in row:
            value = row[key]
            return value if isinstance(value, str) else value[0]["content"]


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("conversational", [False, True])
def test_schema_and_disjoint_splits(name, conversational):
    ds = BUILDERS[name](300, 60, seed=0, conversational=conversational)
    assert set(ds) == {"train", "eval"}
    assert (len(ds["train"]), len(ds["eval"])) == (300, 60)
    assert set(ds["train"].column_names) == COLUMNS[name][conversational]
    assert is_conversational(ds["train"][0]) == conversational
    train = [prompt_of(r) for r in ds["train"]]
    evaluation = [prompt_of(r) for r in ds["eval"]]
    assert len(set(train)) == 300 and len(set(evaluation)) == 60  # no duplicate prompts
    assert not set(train) & set(evaluation)
    assert {split_of(p) for p in train} == {"train"} and {split_of(p) for p in evaluation} == {"eval"}


def test_deterministic_by_seed():
    assert preference_pairs(50, 10, seed=3)["train"].to_list() == preference_pairs(50, 10, seed=3)["train"].to_list()
    assert preference_pairs(50, 10, seed=3)["train"].to_list() != preference_pairs(50, 10, seed=4)["train"].to_list()


def _gold(prompt):
    a, rest = (prompt[:-1].split("+") if "+" in prompt else prompt[:-1].rsplit("-", 1))
    return int(a) + int(rest) if "+" in prompt else int(a) - int(rest)


def test_preference_chosen_right_rejected_wrong():
    for row in preference_pairs(500, 10)["train"]:
        gold = _gold(row["prompt"])
        assert parse_answer(row["chosen"]) == gold
        assert parse_answer(row["rejected"]) not in (None, gold)


def test_unpaired_labels_match_correctness_and_balance():
    ds = unpaired_feedback(1000, 10, positive_fraction=0.25)["train"]
    for row in ds:
        assert (parse_answer(row["completion"]) == _gold(row["prompt"])) == row["label"]
    assert 0.2 < sum(ds["label"]) / len(ds) < 0.3
    with pytest.raises(ValueError, match="positive_fraction"):
        unpaired_feedback(10, 10, positive_fraction=1.5)


def test_refusal_categories_and_labels():
    ds = refusal_sft(1000, 100, conversational=False)["train"]
    cats = set(ds["category"])
    assert cats == {"respond", "contrast", "ill-posed", "beyond-horizon", "forbidden"}
    for row in ds:
        refuse = row["category"] in REFUSALS
        assert row["label"] == ("refuse" if refuse else "respond")
        assert (row["completion"] == REFUSALS.get(row["category"])) == refuse
        if row["category"] == "ill-posed":
            assert row["prompt"].endswith("/0=")
        if row["category"] == "beyond-horizon":
            assert len(row["prompt"].split("+")[0].split("-")[0]) >= 5


def test_write_samples_matches_committed_data(tmp_path):
    written = write_samples(tmp_path, n=16, seed=0)
    assert len(written) == 4 * 2 * 2
    for path in written:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows
        committed = f"data/{path.parent.name}/{path.name}"
        with open(committed) as f:  # data/ holds exactly what the builders produce
            assert [json.loads(line) for line in f] == rows, committed
