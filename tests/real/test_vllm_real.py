"""The vLLM backend on the real checkpoint agrees with the transformers backend: greedy decoding, a
checkpoint's generation config (ignored unless asked for, then applied alike), refusal control on a
LoRA-trained refusal-token model (run in the vLLM venv: pytest -m vllm)."""

import json
import os

import pytest

from align.cli import main
from align.generate import GenerateArgs, ModelStore, generate_outputs
from tests.real.conftest import SMALL, SMOLLM2
from tests.real.test_train_real import REFUSE, RESPOND, refusal_rows

pytestmark = pytest.mark.vllm

PROMPTS = ["What is 2+3?", "Name three colours.", "Write one sentence about rain."]


@pytest.fixture(scope="module", autouse=True)
def in_process():
    pytest.importorskip("vllm")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


STORES: dict = {}  # (backend, model) -> ModelStore: one vLLM engine per model (starting one costs ~20-40 s)


def both(common, prompts, **kw):
    """Outputs of the transformers and the vLLM backend on the same options."""
    out = []
    for backend in ("transformers", "vllm"):
        args = GenerateArgs(**{"prompts": "<test>", "backend": backend, "max_new_tokens": 16, "dtype": "float32",
                               **common, **kw})
        store = STORES.setdefault((backend, args.model), ModelStore(args))
        out.append(generate_outputs(args, prompts, store))
    return out


def texts(rows):
    return [r["output"] for r in rows]


def test_greedy_and_generation_config_agree_across_backends(common, smollm2, penalised_copy):
    hf, vllm = both(common, PROMPTS, model=SMOLLM2)
    assert texts(vllm) == texts(hf)
    hf_copy, vllm_copy = both(common, PROMPTS, model=str(penalised_copy))
    assert texts(vllm_copy) == texts(hf_copy) == texts(hf)  # the checkpoint's penalty is not applied by either
    hf_asked, vllm_asked = both(common, PROMPTS, model=str(penalised_copy), use_model_defaults=True)
    assert texts(vllm_asked) == texts(hf_asked) != texts(hf)  # asked for, both apply it alike


def test_refusal_on_a_lora_trained_model_agrees_across_backends(capsys, tmp_path, common):
    out = tmp_path / "refusal"
    code = main(["train", "refusal", "--model", SMOLLM2, "--cache_dir", common["cache_dir"], "--output_dir", str(out),
                 "--dataset", str(refusal_rows(tmp_path / "r.jsonl")), "--lora_r", "8", "--learning_rate", "5e-3",
                 "--max_steps", "10", "--per_device_train_batch_size", "6", "--save_strategy", "no", "--report_to", "none"])
    assert code == 0, capsys.readouterr().err[-3000:]
    prompts = REFUSE + RESPOND
    for threshold in (None, 0.0, 1.0):
        hf, vllm = both({}, prompts, model=str(out), method="refusal", threshold=threshold, max_new_tokens=6)
        assert [r["control"] for r in vllm] == [r["control"] for r in hf]
        assert texts(vllm) == texts(hf)
        if threshold is not None:  # 0 refuses every prompt, 1 none
            assert {r["control"] for r in hf} == {"[refuse]" if threshold == 0.0 else "[respond]"}
    json.loads((out / "control_tokens.json").read_text())


@pytest.mark.parametrize("method, extra", [
    ("eft", {"model": SMALL, "tuned": [SMOLLM2], "reference": SMALL, "weights": [0.5]}),  # 6-layer large, 30-layer tuned
    ("dlf", {"model": SMOLLM2, "small_base": SMALL, "experts": [SMOLLM2]}),
])
def test_eft_and_dlf_composites_agree_with_the_transformers_processors(common, smollm2, method, extra):
    """The vLLM composite (members of different depths, a tied head, ChatML read by every member)
    greedily decodes what the transformers processor decodes (in batches of 3, left-padded). The
    composite's KV cache per token is its members' sum: 2 GiB holds one 8,192-token request."""
    prompts = PROMPTS + ["What is the capital of France?", "Count from one to five."]
    out = {}
    for backend in ("vllm", "transformers"):
        args = GenerateArgs(prompts="<test>", method=method, backend=backend, max_new_tokens=12, dtype="float32",
                            batch_size=3, vllm_kv_cache_gib=2.0, **common, **extra)
        store = STORES.setdefault((backend, method, args.model), ModelStore(args))
        out[backend] = [(r["output"], r["tokens"]) for r in generate_outputs(args, prompts, store)]
    assert out["vllm"] == out["transformers"]
    assert len(set(out["vllm"])) > 1
