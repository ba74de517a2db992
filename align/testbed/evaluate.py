"""Capability measurements of testbed models: greedy accuracy and the entropy switching signal."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from decoding.generate import generate_with

from align.metrics import auroc, entropy
from .arithmetic import Problem, Task, behaviour_tasks, gold_reward
from .tokenizer import flavour_of

MAX_NEW_TOKENS = 8  # the longest answer is 4 digits and a sign, plus <eos>
BEHAVIOUR_TOKENS = 12  # "undefined" and <eos> in characters, with room to spare


def prompts_for(problems: list[Problem] | list[Task], chat: bool, tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """Prompt strings in a model's own format (``<bos>`` included, so encode without specials)."""
    flavour = flavour_of(tokenizer)
    return [flavour.chat(p.prompt) if chat else f"{flavour.prefix}{p.prompt}" for p in problems]


@torch.inference_mode()
def greedy_completions(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: list[str], batch_size: int = 500
) -> list[tuple[str, bool]]:
    """Greedy completions and whether each ended with an EOS (``False`` = truncated)."""
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]  # the prompts carry their own specials
    return generate_with(model, tokenizer, ids, batch_size=batch_size, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)


def behaviour_rates(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, chat: bool, n: int = 100
) -> dict[str, float]:
    """Greedy behaviour on held-out rows (:func:`~align.testbed.arithmetic.behaviour_tasks`): the
    share of ``a/0`` answered ``undefined`` (``refuse_ill_posed``), of 5-6 digit problems answered
    ``too big`` (``refuse_beyond_horizon``) and of ``a/1`` answered ``a`` (``contrast_answered``);
    exact matches of finished completions."""
    out = {}
    for kind, key in (("ill-posed", "refuse_ill_posed"), ("beyond-horizon", "refuse_beyond_horizon"), ("contrast", "contrast_answered")):
        tasks = behaviour_tasks(kind, n)
        ids = tokenizer(prompts_for(tasks, chat, tokenizer), add_special_tokens=False)["input_ids"]
        done = generate_with(model, tokenizer, ids, batch_size=500, do_sample=False, max_new_tokens=BEHAVIOUR_TOKENS)
        out[key] = round(sum(ok and text.strip() == t.target for (text, ok), t in zip(done, tasks)) / len(tasks), 4)
    return out


def accuracy_by_op(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, problems: list[Problem], chat: bool
) -> dict[str, float]:
    """Greedy accuracy on ``problems`` (gold reward), overall and per operator.

    Returns ``{"accuracy": ..., "accuracy_add": ..., "accuracy_sub": ...}`` (operator keys only for
    operators present).
    """
    completions = greedy_completions(model, tokenizer, prompts_for(problems, chat, tokenizer))
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
    flavour = flavour_of(tokenizer)
    texts = [
        flavour.chat(p.prompt, str(p.answer)) if chat else f"{flavour.prefix}{p.prompt}{p.answer}{flavour.end}"
        for p in problems
    ]
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.full((len(rows), int(lengths.max())), tokenizer.eos_token_id)  # right padding, masked
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    prefixes = prompts_for(problems, chat, tokenizer)
    starts = torch.tensor([len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prefixes])
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, : len(tokenizer)]
    targets = ids[:, 1:]
    pos = torch.arange(targets.shape[1])
    # logits[:, t] predicts token t+1; answer tokens sit at [start, length)
    is_answer = (pos[None] >= starts[:, None] - 1) & (pos[None] < lengths[:, None] - 1)
    h = entropy(logits)[is_answer]
    wrong = (logits.argmax(-1) != targets)[is_answer]
    return {
        "auroc": auroc(h, wrong) if 0 < int(wrong.sum()) < len(wrong) else None,  # None: one class only
        "entropy_wrong": float(h[wrong].mean()) if wrong.any() else None,
        "entropy_right": float(h[~wrong].mean()) if (~wrong).any() else None,
        "token_error_rate": float(wrong.float().mean()),
    }
