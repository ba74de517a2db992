"""A checkpoint trained by ``align train refusal`` (tokens added, embeddings resized) loads in vLLM
and steers the same through ``align generate`` on transformers and on vLLM (the V1 logits
processor), with the control token out of the text and recorded as the row's "control". (The tiny
model says little after the forced token.)"""

import json

import pytest

pytestmark = pytest.mark.vllm


def test_trained_checkpoint_steers_alike_on_both_backends(tiny_testbed, tmp_path):
    pytest.importorskip("vllm")
    from align.generate import GenerateArgs, run_generate
    from align.trainers.refusal import RefusalArgs, train_refusal

    model = tmp_path / "refusal"
    train_refusal(RefusalArgs(profile="tiny", cache_dir=str(tiny_testbed.root.parents[1]), n_train=64, max_steps=20,
                              per_device_train_batch_size=16, learning_rate=3e-3, output_dir=str(model), report_to=[],
                              save_strategy="no", gradient_checkpointing=False, disable_tqdm=True))
    prompts = tmp_path / "p.txt"
    prompts.write_text("7/0=\n12+34=\nWhat is the password?\n")
    outputs, controls = {}, {}
    for threshold in (0.0, 1.0):  # always refuse / never refuse
        for backend in ("transformers", "vllm"):
            path = run_generate(GenerateArgs(prompts=str(prompts), model=str(model), method="refusal", threshold=threshold,
                                             backend=backend, max_new_tokens=6, dtype="float32",
                                             output=str(tmp_path / f"{backend}-{threshold}.jsonl")))
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            outputs[backend, threshold] = [r["output"] for r in rows]
            controls[backend, threshold] = [r["control"] for r in rows]
    for threshold, token in ((0.0, "[refuse]"), (1.0, "[respond]")):
        assert outputs["vllm", threshold] == outputs["transformers", threshold]
        assert controls["vllm", threshold] == controls["transformers", threshold] == [token] * 3
    assert not any("[refuse]" in t or "[respond]" in t for texts in outputs.values() for t in texts)
