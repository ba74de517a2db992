"""BCO trainer: the logged loss against an independent recomputation, δ and UDM through checkpoints
(a SIGKILLed run resumed ends where an uninterrupted one does), LoRA reference, bad input."""

import json
import math
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from align.trainers.bco import BCOArgs, BCOTrainer, collate, train_bco
from align.data import tokenize_prompt_completion
from align.config import ConfigError
from align.diagnostics.entanglement import sequence_logp
from align.testbed.datasets import unpaired_feedback
from resume import kill_then_resume


def _args(tiny_testbed, tmp_path, **kw):
    base = dict(profile="tiny", cache_dir=str(tiny_testbed.root.parents[1]), n_train=8, max_steps=1,
                per_device_train_batch_size=8, logging_steps=1, output_dir=str(tmp_path / "out"), learning_rate=1e-3)
    return BCOArgs(**{**base, **kw})


def test_first_step_loss_equals_a_naive_recomputation(testbed, tmp_path):
    """Policy small-instruct vs reference small-base, so rewards and δ are non-zero at step 1. On
    both flavours; the BPE models have attention dropout 0.1, which BCO must switch off (the naive
    recomputation runs in eval mode)."""
    args = _args(testbed, tmp_path, ref_model="testbed:small-base", beta=0.5, profile=testbed.manifest["profile"])
    log = train_bco(args)["last_log"]
    tok = testbed.tokenizer()
    policy, ref = testbed.model("small-instruct"), testbed.model("small-base")
    assert policy.config.attention_dropout == (0.1 if "bpe" in testbed.manifest["profile"] else 0.0)
    rows = unpaired_feedback(8, 8, 0, True, 0.5)["train"]
    rewards, labels = [], []
    with torch.no_grad():
        for row in rows:
            enc = tokenize_prompt_completion(tok, row, 1024)
            start = enc["completion_mask"].index(1)
            prompt, completion = enc["input_ids"][:start], enc["input_ids"][start:]
            rewards.append(0.5 * float(sequence_logp(policy, prompt, completion) - sequence_logp(ref, prompt, completion)))
            labels.append(row["label"])
    delta = sum(rewards) / len(rewards)  # δ is updated with the batch before it is used
    losses = [-math.log(1 / (1 + math.exp(-(r - delta)))) if y else -math.log(1 / (1 + math.exp(r - delta)))
              for r, y in zip(rewards, labels)]
    assert 0 < sum(labels) < len(labels) and abs(delta) > 1e-3
    assert log["loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-5)
    assert log["delta"] == pytest.approx(delta, abs=1e-6)
    pos = [r for r, y in zip(rewards, labels) if y]
    assert log["rewards/chosen"] == pytest.approx(sum(pos) / len(pos), abs=1e-5)
    assert log["udm/weight_mean"] == pytest.approx(1.0)


def test_lora_reference_is_the_policy_with_its_adapter_disabled(tiny_testbed, tmp_path):
    result = train_bco(_args(tiny_testbed, tmp_path, lora_r=4, max_steps=3, n_train=24, learning_rate=1e-2))
    # LoRA B starts at zero: policy == reference at step 1, so every reward is 0 and ℓ = log 2
    assert result["losses"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(result["last_log"]["rewards/chosen"]) > 1e-3  # then the adapter moves the policy off it


def test_eval_never_moves_delta(tiny_testbed, tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments

    tok = tiny_testbed.tokenizer()
    rows = unpaired_feedback(16, 16, 0, True, 0.5)
    encode = lambda split: Dataset.from_list(  # noqa: E731
        [{**tokenize_prompt_completion(tok, r, 1024), "label": r["label"], "weight": 1.0} for r in rows[split]])
    def make():
        return BCOTrainer(
            model=tiny_testbed.model("small-instruct"), ref_model=tiny_testbed.model("small-base"),
            args=TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, report_to=[],
                                   remove_unused_columns=False, label_names=["label"], use_cpu=True, save_steps=2),
            train_dataset=encode("train"), eval_dataset=encode("eval"), data_collator=collate(tok.pad_token_id),
        )

    trainer = make()
    trainer.train()
    before = trainer.shift.state_dict()
    metrics = trainer.evaluate()
    assert trainer.shift.state_dict() == before and before["totals"][1] + before["totals"][3] == 16
    assert metrics["eval_delta"] == pytest.approx(trainer.shift.value)
    again = make()
    again.train(resume_from_checkpoint=True)  # finds checkpoint-2 like Trainer does, and brings δ back
    assert again.shift.state_dict() == before


def test_bad_rows_are_named_before_training(tmp_path):
    good = {"prompt": "1+1=", "completion": "2", "label": True}
    for bad, message in [({"prompt": "1+1=", "label": True}, "row 1: field 'completion' is missing"),
                         ({**good, "label": "yes"}, "row 1: field 'label' is str"),
                         ({**good, "prompt": " "}, "row 1: field 'prompt' must be non-empty")]:
        path = tmp_path / "rows.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in (good, bad)) + "\n")
        with pytest.raises(ConfigError, match=message):
            train_bco(BCOArgs(dataset=str(path), model="/nonexistent"))  # fails on the rows, not the model


def test_over_long_prompts_are_dropped_and_counted(tiny_testbed, tmp_path):
    tok = tiny_testbed.tokenizer()
    rows = unpaired_feedback(8, 8, 0, True, 0.5)["train"]
    lengths = sorted(len(tokenize_prompt_completion(tok, r, 1024)["completion_mask"]) - sum(tokenize_prompt_completion(tok, r, 1024)["completion_mask"]) for r in rows)
    cut = lengths[len(lengths) // 2]  # prompts of exactly `cut` tokens or more fill max_length
    result = train_bco(_args(tiny_testbed, tmp_path, max_length=cut))
    assert result["dropped_too_long"] == sum(n >= cut for n in lengths) and result["rows"] == 8 - result["dropped_too_long"]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from align.trainers.bco import BCOArgs, train_bco

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)

    args = BCOArgs(profile="tiny", cache_dir=sys.argv[1], output_dir=sys.argv[2], n_train=48, max_steps=8,
                   per_device_train_batch_size=4, logging_steps=1, save_steps=2, learning_rate=1e-3, udm=True,
                   resume=True, metrics_file=sys.argv[2] + ".json")
    train_bco(args, callbacks=[Kill()])
""")


def test_sigkill_mid_training_then_resume_ends_like_an_uninterrupted_run(tiny_testbed, tmp_path):
    """Killed at step 5 (last checkpoint: 4), resumed: the losses of all 8 steps, δ and the final
    weights equal the uninterrupted run's (tolerance 1e-6: the same CPU kernels run the same batches).
    The UDM classifier (default MiniLM embedder) is fitted once and loaded, not refitted, on resume."""
    udm: list[bytes] = []
    a, b = kill_then_resume(KILL_SCRIPT, tmp_path, str(tiny_testbed.root.parents[1]), 5, ["checkpoint-2", "checkpoint-4"],
                            before_resume=lambda out: udm.append((out / "udm.safetensors").read_bytes()))
    assert a["udm"] == "fitted" and b["udm"] == "loaded"
    assert (tmp_path / "killed" / "udm.safetensors").read_bytes() == udm[0]
    assert len(a["losses"]) == len(b["losses"]) == 8
    assert b["losses"] == pytest.approx(a["losses"], abs=1e-6)
    assert b["delta"] == pytest.approx(a["delta"], abs=1e-9) and a["delta"] != 0
    assert a["last_log"]["udm/weight_mean"] != pytest.approx(1.0)  # the weights were applied
    wa, wb = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("straight", "killed"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    state = json.loads((tmp_path / "killed" / "checkpoint-4" / "bco_state.json").read_text())
    assert state["totals"][1] + state["totals"][3] == 16  # 4 steps x 4 rows went into δ
