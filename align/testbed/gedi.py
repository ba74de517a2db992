"""The testbed's GeDi guide: a class-conditional LM for the attribute "the result is negative".

Free-running equations like ``37-485=-448`` either have a negative result or not, decided by the
operands the model writes. The guide is small-base fine-tuned on ``<bos>n:37-485=-448<eos>`` /
``<bos>p:37-5=32<eos>`` (code unscored), so GeDi (``decoding.GeDiLogitsProcessor``) can steer the
large base, completing prompts such as ``37-``, towards (``n:``) or away from negative results.
The attribute is programmatic: :func:`negative_fraction` measures it on any completions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from .arithmetic import Problem, parse_answer
from .build import Testbed, save_checkpoint
from .train import problem_batches, train_steps

CODES = {"negative": "n:", "non-negative": "p:"}
GUIDE = "gedi-sign"


def sign_code(p: Problem) -> str:
    return CODES["negative"] if p.answer < 0 else CODES["non-negative"]


def build_sign_guide(tb: Testbed, steps: int | None = None, seed: int = 0) -> Path:
    """Train (once, cached beside the testbed's models) the sign-conditional guide; return its path.

    Args:
        steps: training steps (default 600 on the full profile, 20 on tiny).
        seed: the training seed (data order and dropout); each seed is cached on its own.
    """
    dest = tb.root / (GUIDE if seed == 0 else f"{GUIDE}-seed{seed}")
    if (dest / "model.safetensors").is_file():
        return dest
    steps = steps if steps is not None else (600 if tb.manifest["profile"] == "full" else 20)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # same weights whatever the caller's thread count
    try:
        # dropout draws from torch's global generator: seed it here, or the cached guide would
        # depend on whatever ran before the build (the BPE flavour has attention dropout)
        with torch.random.fork_rng():
            torch.manual_seed(seed * 1000 + 98)
            tokenizer = tb.tokenizer()
            model = AutoModelForCausalLM.from_pretrained(tb.path("small-base"))
            batches = problem_batches(tokenizer, seed * 1000 + 99, 128, chat=False, code=sign_code)
            train_steps(model, batches, steps, lr=1e-3, warmup=min(50, steps // 10 + 1))
            save_checkpoint(model, tokenizer, dest)
    finally:
        torch.set_num_threads(previous)
    return dest


def sign_auroc(guide: "torch.nn.Module", tokenizer, problems: list[Problem]) -> float:
    """How well the guide's class posterior separates negative from non-negative results: the
    AUROC of ``log p(eq | n:) - log p(eq | p:)`` over the written equations ``a-b=c`` (true ``c``)."""
    from align.metrics import auroc

    def logp(code: str) -> torch.Tensor:
        ids = tokenizer([code + p.prompt + str(p.answer) for p in problems], return_tensors="pt", padding=True)
        prefix = len(tokenizer(code)["input_ids"])
        with torch.no_grad():
            lp = torch.log_softmax(guide(**ids).logits[:, :-1].float(), -1).gather(-1, ids["input_ids"][:, 1:, None])[..., 0]
        mask = ids["attention_mask"][:, 1:].clone()
        mask[:, : prefix - 1] = 0  # the equation's tokens only, not the code's
        return (lp * mask).sum(-1)

    labels = torch.tensor([p.answer < 0 for p in problems])
    return auroc(logp(CODES["negative"]) - logp(CODES["non-negative"]), labels)


def negative_fraction(prompts: list[str], completions: list[str]) -> dict[str, float]:
    """Share of completed equations ``prompt + completion`` whose written result is negative, and
    whose result is also arithmetically right."""
    negative = correct = 0
    for prompt, completion in zip(prompts, completions):
        text = prompt + completion
        left, _, right = text.partition("=")
        value = parse_answer(right)
        if value is None:
            continue
        negative += value < 0
        try:
            a, op, b = _split(left)
        except ValueError:
            continue
        correct += (a + b if op == "+" else a - b) == value
    n = max(1, len(prompts))
    return {"negative": negative / n, "correct": correct / n}


def _split(expr: str) -> tuple[int, str, int]:
    for i, ch in enumerate(expr[1:], 1):
        if ch in "+-":
            return int(expr[:i]), ch, int(expr[i + 1 :])
    raise ValueError(expr)
