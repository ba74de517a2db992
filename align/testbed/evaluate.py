"""Capability measurements of testbed models: greedy accuracy and the entropy switching signal."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from decoding.generate import decode_completions

from align.metrics import auroc, entropy
from .arithmetic import Problem, gold_reward
from .tokenizer import chat_text

MAX_NEW_TOKENS = 8  # the longest answer is 4 digits and a sign, plus <eos>


def prompts_for(problems: list[Problem], chat: bool) -> list[str]:
    """Prompt strings in a model's own format (``<bos>`` included, so encode without specials)."""
    return [chat_text(p.prompt) if chat else f"<bos>{p.prompt}" for p in problems]


@torch.inference_mode()
def greedy_completions(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: list[str], batch_size: int = 500
) -> list[tuple[str, bool]]:
    """Greedy completions and whether each ended with ``<eos>`` (``False`` = truncated)."""
    out: list[tuple[str, bool]] = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], add_special_tokens=False, padding=True, return_tensors="pt")
        gen = model.generate(
            **enc, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tokenizer.pad_token_id
        )[:, enc["input_ids"].shape[1] :]
        out.extend(decode_completions(tokenizer, gen.tolist()))
    return out


def accuracy_by_op(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, problems: list[Problem], chat: bool
) -> dict[str, float]:
    """Greedy accuracy on ``problems`` (gold reward), overall and per operator.

    Returns ``{"accuracy": ..., "accuracy_add": ..., "accuracy_sub": ...}`` (operator keys only for
    operators present).
    """
    completions = greedy_completions(model, tokenizer, prompts_for(problems, chat))
    scores = [gold_reward(text, p.answer, done) for (text, done), p in zip(completions, problems)]
    out = {"accuracy": round(sum(scores) / len(scores), 4)}
    for op, key in (("+", "accuracy_add"), ("-", "accuracy_sub")):
        mine = [s for s, p in zip(scores, problems) if p.op == op]
        if mine:
            out[key] = round(sum(mine) / len(mine), 4)
    return out


@torch.inference_mode()
def answer_token_entropy_auroc(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, problems: list[Problem], chat: bool = True
) -> dict[str, float]:
    """How well next-token entropy predicts the model's own answer-token errors.

    Teacher-forced on the gold answer (digits and ``<eos>``): at each answer position the model's
    greedy token is an error if it differs from the gold token. Returns the AUROC of entropy for
    that error, the mean entropies of wrong and right positions, and the error rate.
    """
    texts = [chat_text(p.prompt, str(p.answer)) if chat else f"<bos>{p.prompt}{p.answer}<eos>" for p in problems]
    prefixes = prompts_for(problems, chat)
    tokenizer_right = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = tokenizer_right
    starts = torch.tensor([len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prefixes])
    lengths = enc["attention_mask"].sum(1)
    logits = model(**enc).logits[:, :-1, : len(tokenizer)]
    targets = enc["input_ids"][:, 1:]
    pos = torch.arange(targets.shape[1])
    # logits[:, t] predicts token t+1; answer tokens sit at [start, length)
    is_answer = (pos[None] >= starts[:, None] - 1) & (pos[None] < lengths[:, None] - 1)
    h = entropy(logits)[is_answer]
    wrong = (logits.argmax(-1) != targets)[is_answer]
    return {
        "auroc": auroc(h, wrong),
        "entropy_wrong": float(h[wrong].mean()),
        "entropy_right": float(h[~wrong].mean()),
        "token_error_rate": float(wrong.float().mean()),
    }
