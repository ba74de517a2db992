"""SCoRe with ``rollout_backend: vllm`` (vLLM venv only): after an optimizer step the engine holds
the updated weights, so its greedy rollouts equal transformers' greedy rollouts of the updated
policy — on both testbed flavours."""

import pytest

pytestmark = pytest.mark.vllm


def parity(prompts, completions, answer, **_):
    return [float(len(c[-1]["content"]) % 2) for c in completions]


def test_vllm_rollouts_follow_the_updated_policy(testbed, tmp_path):
    pytest.importorskip("vllm")
    from align.testbed.datasets import self_correction
    from align.trainers.score import ScoreArgs, ScoreTrainer, vllm_engine

    # a large rate, so one Adam step surely changes the greedy rollouts (3e-2 left the tiny BPE model's unchanged)
    args = ScoreArgs(dataset="unused", stage1_steps=1, stage2_steps=0, per_device_train_batch_size=2, num_generations=2,
                     max_new_tokens=8, learning_rate=0.3, output_dir=str(tmp_path), report_to=[], save_strategy="no",
                     disable_tqdm=True, rollout_backend="vllm", vllm_kv_cache_gib=0.25)
    data = self_correction(8, 8, seed=0, conversational=True)
    path = str(testbed.path("small-instruct"))
    trainer = ScoreTrainer(model=testbed.model("small-instruct"), args=args, train_dataset=data["train"],
                           processing_class=testbed.tokenizer(), data_collator=lambda rows: {"rows": rows},
                           ref_model=testbed.model("small-base"), reward_fn=parity, vllm=vllm_engine(args, path))
    rows = [dict(r) for r in data["eval"]]
    before = trainer.episodes(rows, 1, greedy=True)  # the engine's weights are the checkpoint's
    trainer.train()
    assert trainer.state.global_step == 1
    with_vllm = trainer.episodes(rows, 1, greedy=True)  # loads the updated weights first
    engine, trainer.vllm = trainer.vllm, None
    with_hf = trainer.episodes(rows, 1, greedy=True)
    assert with_vllm["y1"] == with_hf["y1"] and with_vllm["y2"] == with_hf["y2"]
    assert with_vllm["finished"] == with_hf["finished"]
    assert before["y1"] != with_hf["y1"] or before["y2"] != with_hf["y2"]  # the step changed the policy
    trainer.vllm = engine
