"""vLLM throughput with the refusal-token processor against without it (and against transformers).

Runs only where vLLM imports (the vLLM venv); elsewhere the ratios are recorded as null.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any


def refusal_processor_ratios(model: Any, tokenizer: Any, prompts: list[str], new_tokens: int = 32,
                             dtype: str = "float32", compare_hf: bool = True) -> dict[str, Any]:
    """``vllm_proc_throughput_ratio``: tokens/s with :class:`~decoding.vllm_refusal.RefusalTokenVLLMProcessor`
    configured on every request / without it, same prompts, greedy, EOS ignored; with
    ``compare_hf`` also ``vllm_over_hf``: vLLM tokens/s / transformers ``generate`` tokens/s."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"vllm_proc_throughput_ratio": None, "vllm_over_hf": None, "vllm": "not installed: run in the vLLM venv"}
    from vllm import LLM, SamplingParams

    from . import race, ratio

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engines in this process: its CPU clock counts them
    tokens = ["[refuse]", "[respond]"]
    path = tempfile.mkdtemp(prefix="alignkit-bench-")
    tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)

    def run(llm, extra):
        params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True, extra_args=extra)
        return lambda: llm.generate(prompts, params, use_tqdm=False)

    common = dict(model=path, dtype=dtype, max_model_len=256, seed=0, kv_cache_memory_bytes=512 * 2**20)
    contenders = {"plain": run(LLM(**common), None),
                  "proc": run(LLM(**common, logits_processors=["decoding.vllm_refusal:RefusalTokenVLLMProcessor"]),
                              {"refusal": {"threshold": 0.5}})}
    if compare_hf:
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        contenders["hf"] = lambda: model.generate(**enc, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                  pad_token_id=tokenizer.pad_token_id)
    result = race(contenders, rounds=5)
    # throughput ratios are time ratios upside down: with/without = t(plain) / t(proc)
    out: dict[str, Any] = {"vllm_proc_throughput_ratio": ratio(result, "plain", "proc"), "batch": len(prompts)}
    if compare_hf:
        out["vllm_over_hf"] = ratio(result, "hf", "plain")
    return out
