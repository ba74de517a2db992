"""``python -m benchmarks vllm-fusion`` (in the vLLM venv): EFT and DLF served by vLLM as one
composite model (:mod:`decoding.vllm_fusion`) against the transformers EFT processor and against
each member served alone.

Two shapes: the testbed's (``--profile``; large-base + small-instruct + small-base, fp32) and the
real shapes of ``benchmarks shapes`` (a Qwen2.5-0.5B-shaped large and two 2-layer smalls, 151,936
logit rows, bf16; random weights: time only). Batch 1 and 64, ``NEW_TOKENS`` greedy tokens per
request, EOS ignored, every model reading the same token ids (a composite has one token stream).

Contenders (raced interleaved, :func:`benchmarks.race`; every ratio the median [IQR] of its per-round
values on process CPU time, wall time on CUDA):

- ``eft`` / ``dlf``: the composites (DLF with one expert: the same three members as EFT, so DLF/EFT
  prices the per-step α search alone);
- ``large`` / ``tuned`` / ``reference``: each member in its own engine;
- ``hf_eft``: ``model.generate`` on the large model with :class:`decoding.EFTLogitsProcessor`.

Ratios: ``fused_over_hf_throughput`` (tokens/s, whole requests), ``fused_step_over_member_steps``
(decode step time of the composite / the sum of the members' own, each step time
``(t(N) - t(1)) / (N - 1)`` so prefill and request set-up cancel), ``fused_over_members`` (whole
requests), ``dlf_over_eft``. ``profile_b64``: the top operators of one composite request at
batch 64 (torch profiler, self CPU time share) -- where the time goes when a goal is missed.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from decoding import AuxiliaryModel, EFTLogitsProcessor
from decoding.fusion import FusionSpec, write_fusion

from . import race, ratio, shapes, statistic
from .shapes import clock

NEW_TOKENS = 32
BATCHES = (1, 64)
KV_CACHE_BYTES = 512 * 2**20  # per engine: 64 x 128 tokens of the 0.5B shape's composite take ~110 MiB


def vllm_fusion(args) -> dict[str, Any]:
    """Both shapes (``--only testbed|real``: one); the real ones are built first when absent."""
    if importlib.util.find_spec("vllm") is None:
        return {"vllm": "not installed: .venv-vllm/bin/python -m benchmarks vllm-fusion"}
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engines in this process: one clock
    from align.testbed import build_testbed

    out = {}
    if args.only in (None, "testbed"):
        tb = build_testbed(args.profile)
        testbed = {"large": tb.root / "large-base", "tuned": tb.root / "small-instruct", "reference": tb.root / "small-base"}
        out["testbed"] = measure(testbed, "float32", args.rounds, arithmetic_prompts, args.device)
    if args.only in (None, "real"):
        root = shapes.build()
        real = {"large": root / "large", "tuned": root / "small-tuned", "reference": root / "small-ref"}
        out["real"] = measure(real, "bfloat16", args.rounds, shapes.random_prompts, args.device)
    return out


def arithmetic_prompts(batch: int) -> list[str]:
    """The testbed's kind of prompt, of a few lengths."""
    return [f"{12 + i}+{345 - i}={'9' * (i % 5)}" for i in range(batch)]


def measure(members: dict[str, Path], dtype: str, rounds: int, prompts: Callable[[int], list[str]],
            device: str = "cpu") -> dict[str, Any]:
    """All contenders of one shape; engines stay alive for the whole shape (one process, so a
    second engine never waits on another's start-up)."""
    from vllm import LLM, SamplingParams  # the vLLM venv only

    work = Path(tempfile.mkdtemp(prefix="alignkit-bench-fusion-"))
    large, tuned, reference = (str(members[k]) for k in ("large", "tuned", "reference"))
    composites = {
        "eft": write_fusion(FusionSpec("eft", large=large, tuned=[tuned], reference=reference), work / "eft"),
        "dlf": write_fusion(FusionSpec("dlf", large=large, small_base=reference, experts=[tuned]), work / "dlf"),
    }
    engine = dict(dtype=dtype, max_model_len=128, seed=0, kv_cache_memory_bytes=KV_CACHE_BYTES, generation_config="vllm")
    if device.startswith("cuda"):  # five engines share the GPU: each checks its share is free at start
        engine["gpu_memory_utilization"] = 0.12
    engines = {name: LLM(model=str(path), **engine) for name, path in composites.items()}
    engines |= {name: LLM(model=str(members[name]), **engine) for name in ("large", "tuned", "reference")}
    tok = AutoTokenizer.from_pretrained(large)
    torch_dtype = getattr(torch, dtype)
    hf = {name: AutoModelForCausalLM.from_pretrained(members[name], dtype=torch_dtype).to(device).eval()
          for name in members}
    out: dict[str, Any] = {"dtype": dtype, "new_tokens": NEW_TOKENS, "threads": torch.get_num_threads()}

    def vllm(name: str, ids: list[list[int]], n: int = NEW_TOKENS):
        params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False)
        return lambda: engines[name].generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)

    for batch in BATCHES:
        ids = tok(prompts(batch))["input_ids"]
        enc = tok.pad({"input_ids": ids}, return_tensors="pt").to(device)

        def hf_eft():
            processor = EFTLogitsProcessor(tok, [AuxiliaryModel(hf["tuned"], tok, ids, "tuned")],
                                           AuxiliaryModel(hf["reference"], tok, ids, "reference"))
            return hf["large"].generate(**enc, logits_processor=[processor], do_sample=False, max_new_tokens=NEW_TOKENS,
                                        min_new_tokens=NEW_TOKENS, pad_token_id=tok.eos_token_id if tok.pad_token_id is None else tok.pad_token_id)

        names = list(engines)
        contenders = {name: vllm(name, ids) for name in names} | {f"{name}@1": vllm(name, ids, 1) for name in names}
        result = race(contenders | {"hf_eft": hf_eft}, rounds, device=device)
        c = clock(device)

        def step(t: dict[str, float], name: str) -> float:
            return (t[name] - t[f"{name}@1"]) / (NEW_TOKENS - 1)

        alone = ("large", "tuned", "reference")
        out[f"b{batch}"] = {
            "fused_over_hf_throughput": ratio(result, "hf_eft", "eft", c),
            "fused_step_over_member_steps": statistic(result, lambda t: step(t, "eft") / sum(step(t, n) for n in alone), c),
            "fused_over_members": ratio(result, "eft", list(alone), c),
            "dlf_over_eft": ratio(result, "dlf", "eft", c),
            "dlf_step_over_eft_step": statistic(result, lambda t: step(t, "dlf") / step(t, "eft"), c),
            "ms_per_step": {name: statistic(result, lambda t, n=name: 1000 * step(t, n), c) for name in names},
            "tokens_per_s": {name: statistic(result, lambda t, n=name: batch * NEW_TOKENS / t[n], "wall")
                             for name in ("eft", "hf_eft")},
        }
        print(f"{Path(large).name} b{batch}: {out[f'b{batch}']}", flush=True)
    if not device.startswith("cuda"):
        out[f"profile_b{BATCHES[-1]}"] = top_operators(vllm("eft", ids))  # the last (largest) batch
    return out


def top_operators(fn, top: int = 8) -> dict[str, float]:
    """Share of self CPU time per operator over one call of ``fn`` (the largest ``top``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {e.key: round(e.self_cpu_time_total / total, 3) for e in events[:top]}
