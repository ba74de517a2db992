"""Real-model plumbing: a hub-layout dataset directory and a BPE checkpoint (no pad token, ChatML,
two EOS ids) through `align train dpo`, `align data ches` and `align generate`, as a user would run them."""

import json

import pytest

from align.cli import main
from align.config import ConfigError
from align.data import load_split, preference_rows


@pytest.fixture(scope="module")
def hub_dataset(tmp_path_factory):
    """A directory laid out like HuggingFaceH4/ultrafeedback_binarized on the hub: parquet shards
    under data/, splits train_prefs/test_prefs, a text prompt beside conversational chosen/rejected
    that repeat it (the implicit-prompt layout), and extra columns."""
    from datasets import Dataset

    root = tmp_path_factory.mktemp("ultrafeedback-like")
    (root / "data").mkdir()
    for split, n in (("train_prefs", 12), ("test_prefs", 4)):
        rows = []
        for i in range(n):
            q = f"{i + 10}+{i}="
            user = {"role": "user", "content": q}
            rows.append({"prompt": q, "prompt_id": f"id{i}", "score_chosen": 8.0, "score_rejected": 2.0,
                         "chosen": [user, {"role": "assistant", "content": str(2 * i + 10)}],
                         "rejected": [user, {"role": "assistant", "content": str(2 * i + 11)}],
                         "messages": [user, {"role": "assistant", "content": str(2 * i + 10)}]})
        Dataset.from_list(rows).to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def test_hub_layout_directory_loads_like_a_hub_id(hub_dataset):
    train = load_split(str(hub_dataset), "train_prefs")
    assert len(train) == 12 and "score_chosen" in train.column_names
    rows = preference_rows(train)
    assert rows.column_names == ["prompt", "chosen", "rejected"]
    assert rows[0]["prompt"] == [{"role": "user", "content": "10+0="}]  # extracted as TRL does
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "10"}]
    with pytest.raises(ConfigError, match="has no split 'train'; its splits: .*train_prefs"):
        load_split(str(hub_dataset), "train")


def test_train_dpo_on_a_bpe_checkpoint_writes_tensorboard_events(testbed, hub_dataset, tmp_path):
    if "bpe" not in testbed.manifest["profile"]:
        pytest.skip("the BPE checkpoint is the point here")
    model = testbed.path("small-instruct")
    assert testbed.tokenizer().pad_token is None
    out = tmp_path / "dpo"
    code = main(["train", "dpo", "--model", str(model), "--dataset", str(hub_dataset),
                 "--dataset_train_split", "train_prefs", "--dataset_test_split", "test_prefs",
                 "--eval_strategy", "steps", "--eval_steps", "2", "--num_train_epochs", "1",
                 "--per_device_train_batch_size", "4", "--logging_steps", "1", "--learning_rate", "1e-4",
                 "--gradient_checkpointing", "false", "--report_to", "tensorboard", "--save_strategy", "no",
                 "--output_dir", str(out), "--metrics_file", str(tmp_path / "m.json")])
    assert code == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert len(result["losses"]) == 3  # 12 pairs, batch 4, one epoch
    assert any("eval_loss" in h for h in result["log_history"])
    events = list(out.rglob("events.out.tfevents*"))
    assert events and sum(e.stat().st_size for e in events) > 0
    assert (out / "model.safetensors").is_file()


def test_ches_and_generate_take_a_pad_less_chat_checkpoint(testbed, hub_dataset, tmp_path):
    model = str(testbed.path("small-instruct"))
    assert main(["data", "ches", "--model", model, "--dataset", str(hub_dataset), "--dataset_train_split",
                 "test_prefs", "--out", str(tmp_path / "c.jsonl")]) == 0
    scored = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(scored) == 4 and all(isinstance(r["ln_ches"], float) for r in scored)
    prompts = tmp_path / "p.txt"
    prompts.write_text("1+2=\n30+4=\n")
    assert main(["generate", "--model", model, "--prompts", str(prompts), "--max_new_tokens", "4",
                 "--output", str(tmp_path / "g.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["finished"], bool) for r in rows)


def test_command_contradicting_config_and_unknown_train_command(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loss: rpo\n")
    assert main(["train", "dpo", "--config", str(cfg)]) == 2
    assert "contradicts `align train dpo`" in capsys.readouterr().err
    assert main(["train", "dpp"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("align: error: unknown command 'train dpp'")  # not "not implemented yet"
