"""Model sizes and the from-scratch training loop of the testbed.

The loop is deliberately plain (nanoGPT style) rather than a ``transformers.Trainer``: batches are
generated on the fly from a seeded RNG, every step is exactly reproducible, and at 5-20 ms per step
the per-step overhead of a general trainer would be a visible part of the build budget.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .arithmetic import Problem, Task, mixed_tasks, sample_problems
from .tokenizer import flavour_of

HEAD_DIM = 64  # vLLM's CPU attention backend needs head_dim 64 (16 fails)


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    intermediate: int

    @property
    def heads(self) -> int:
        return self.hidden // HEAD_DIM


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(hidden=64, layers=1, intermediate=128),
    "small": ModelSize(hidden=64, layers=2, intermediate=256),
    "large": ModelSize(hidden=128, layers=2, intermediate=512),
}


def make_model(size: ModelSize, tokenizer: PreTrainedTokenizerFast, seed: int, dropout: float = 0.0) -> LlamaForCausalLM:
    """A freshly initialised Llama of ``size`` whose vocabulary is ``len(tokenizer)`` rounded up to 32.

    The padded rows exercise the "slice logits to ``len(tokenizer)``" rule every multi-model decoder
    must follow. ``eos_token_id`` lists every id that ends a generation in the
    tokenizer's flavour (two for BPE); ``dropout`` is attention dropout (trainers must turn it off
    where the method says so).
    """
    eos = [tokenizer.convert_tokens_to_ids(t) for t in flavour_of(tokenizer).eos_tokens]
    config = LlamaConfig(
        vocab_size=32 * math.ceil(len(tokenizer) / 32),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos if len(eos) > 1 else eos[0],
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=dropout,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def encode_rows(
    tokenizer: PreTrainedTokenizerFast,
    problems: list[Problem | Task],
    chat: bool,
    code: Callable[[Problem], str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, labels)`` for one batch of solved problems (or
    behaviour rows: their ``target`` is the answer).

    Pretraining rows are ``<bos>37+485=522<eos>`` with loss on every token after ``<bos>``; chat
    rows put the loss on the answer and ``<eos>`` only (completion-only SFT). ``code(problem)``
    (pretraining format only) puts an unscored control code after ``<bos>``: the rows of a
    class-conditional LM such as GeDi's.
    """
    flavour = flavour_of(tokenizer)
    if chat:
        prefixes = [flavour.chat(p.prompt) for p in problems]
        texts = [flavour.chat(p.prompt, p.target) for p in problems]
    else:
        prefixes = [f"{flavour.prefix}{code(p) if code else ''}" for p in problems]
        texts = [f"{prefix}{p.prompt}{p.target}{flavour.end}" for prefix, p in zip(prefixes, problems)]
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    starts = [len(r) for r in tokenizer(prefixes, add_special_tokens=False)["input_ids"]]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id  # masked anyway
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (row, start) in enumerate(zip(rows, starts)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, start : len(row)] = ids[i, start : len(row)]
    return ids, mask, labels


def problem_batches(
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    batch_size: int,
    chat: bool,
    ops: str = "+-",
    code: Callable[[Problem], str] | None = None,
    mixture: dict[str, float] | None = None,
    refusal_rate: float = 1.0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """An endless, seeded stream of training batches (train split only); ``mixture`` mixes in
    behaviour rows (kind -> fraction of rows, refusing at ``refusal_rate``;
    :func:`~align.testbed.arithmetic.mixed_tasks`)."""
    rng = np.random.default_rng(seed)
    while True:
        rows = (mixed_tasks(rng, batch_size, mixture, ops=ops, refusal_rate=refusal_rate) if mixture
                else sample_problems(rng, batch_size, "train", ops=ops))
        yield encode_rows(tokenizer, rows, chat, code)


def lr_at(step: int, steps: int, lr: float, warmup: int, decay_fraction: float = 0.2) -> float:
    """Warmup, constant, then linear decay to 10% over the last ``decay_fraction`` of training.

    The late decay turns the noisy constant-LR plateau into a clean final model at no extra steps.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    decay_start = int(steps * (1 - decay_fraction))
    if step < decay_start:
        return lr
    return lr * (1 - 0.9 * (step - decay_start) / max(1, steps - decay_start))


def training_precision() -> str:
    """``"bf16"`` where the CPU computes bf16 in hardware (AVX512-BF16 or AMX flags), else ``"fp32"``;
    ``$ALIGNKIT_TESTBED_PRECISION`` (bf16 / fp32) overrides. bf16 autocast roughly halves step time
    on such CPUs (TESTBED-NOTES), but where bf16 is emulated (AVX2 only) it is 7-11x slower than
    fp32 (AMD EPYC: 0.74 vs 0.11 s/step for the small model, 2.6 vs 0.23 for the large). The
    weights depend on the precision, so the testbed's directory and manifest name it."""
    override = os.environ.get("ALIGNKIT_TESTBED_PRECISION")
    if override:
        if override not in ("bf16", "fp32"):
            raise ValueError(f"ALIGNKIT_TESTBED_PRECISION must be bf16 or fp32, got {override!r}")
        return override
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) else "fp32"


def train_steps(
    model: LlamaForCausalLM,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float,
    warmup: int = 100,
    bf16: bool | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` for ``steps`` AdamW steps; returns the per-step losses. ``bf16``: autocast
    with fp32 master weights (default: where :func:`training_precision` says so)."""
    if bf16 is None:
        bf16 = training_precision() == "bf16"
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    losses: list[float] = []
    for step in range(steps):
        ids, mask, labels = next(batches)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        with autocast:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress is not None:
            progress(step, losses[-1])
    model.eval()
    return losses
