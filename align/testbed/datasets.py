"""Dataset builders on the testbed task, in TRL's standard and conversational formats.

Every builder returns a ``datasets.DatasetDict`` with ``train`` and ``eval`` splits. A prompt's
split is fixed by :func:`~align.testbed.arithmetic.split_of`, the same rule that keeps the
models' held-out evaluation set out of all training, so no prompt is in both splits of any
dataset, and no eval prompt is ever trained on.

=====================  ==============================================  =========================
builder                standard columns                                used by
=====================  ==============================================  =========================
preference_pairs       prompt, chosen, rejected                        DPO, f-DPO, RPO, CHES
policy_preference      prompt, chosen, rejected (a model's own)        RPO, implicit reward models
unpaired_feedback      prompt, completion, label                       BCO (+UDM), KTO
refusal_sft            prompt, completion, label, category             refusal-token SFT
self_correction        problem, answer                                 SCoRe
=====================  ==============================================  =========================

Conversational variants replace ``prompt`` with a list of ``{"role": "user", ...}`` messages and
completions with ``[{"role": "assistant", ...}]`` (``refusal_sft``: a ``messages`` column).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict

from rewards.io import atomic_write_jsonl
from .arithmetic import BEHAVIOURS, Problem, sample_problems, split_of

Row = dict[str, Any]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def wrong_answer(p: Problem, rng: np.random.Generator) -> int:
    """A plausible mistake: an off-by-one or off-by-ten slip, a dropped carry, or a sign error."""
    gold = p.answer
    kinds = [gold + 1, gold - 1, gold + 10, gold - 10, gold + 100, -gold if gold else 1]
    if p.op == "+":
        no_carry = int("".join(str((int(x) + int(y)) % 10) for x, y in zip(f"{p.a:04d}", f"{p.b:04d}")))
        kinds.append(no_carry)
    candidates = [k for k in kinds if k != gold]
    return int(candidates[rng.integers(len(candidates))])


def _unique(rows: Iterator[Row], n: int, key: str) -> list[Row]:
    seen: dict[str, Row] = {}
    for row in rows:
        seen.setdefault(row[key], row)
        if len(seen) == n:
            break
    return list(seen.values())


def _problem_rows(make: Callable[[Problem, np.random.Generator], Row], split: str, n: int, seed: int) -> list[Row]:
    rng = np.random.default_rng([seed, int(split == "eval")])

    def rows() -> Iterator[Row]:
        while True:
            for p in sample_problems(rng, n, split, digits=(2, 3)):
                yield make(p, rng)

    return _unique(rows(), n, key="_prompt")


def _finish(train: list[Row], evaluation: list[Row], conversational: bool, convert: Callable[[Row], Row]) -> DatasetDict:
    def clean(rows: list[Row]) -> Dataset:
        out = [convert(r) if conversational else r for r in rows]
        return Dataset.from_list([{k: v for k, v in r.items() if not k.startswith("_")} for r in out])

    return DatasetDict(train=clean(train), eval=clean(evaluation))


def preference_pairs(n_train: int = 2000, n_eval: int = 200, seed: int = 0, conversational: bool = False) -> DatasetDict:
    """Preference pairs: ``chosen`` is the correct answer, ``rejected`` a plausible wrong one.

    Example:
        >>> ds = preference_pairs(4, 2)
        >>> sorted(ds["train"].column_names)
        ['chosen', 'prompt', 'rejected']
    """

    def make(p: Problem, rng: np.random.Generator) -> Row:
        return {"_prompt": p.prompt, "prompt": p.prompt, "chosen": str(p.answer), "rejected": str(wrong_answer(p, rng))}

    def convert(r: Row) -> Row:
        return {"prompt": _user(r["prompt"]), "chosen": _assistant(r["chosen"]), "rejected": _assistant(r["rejected"])}

    return _finish(_problem_rows(make, "train", n_train, seed), _problem_rows(make, "eval", n_eval, seed), conversational, convert)


def policy_pairs(model: Any, tok: Any, n: int, seed: int = 0, samples: int = 8, split: str = "train") -> list[Row]:
    """Up to ``n`` conversational preference pairs sampled from ``model`` itself, as DPO's data is
    (y ~ π_SFT, labelled by the verifier): for each problem of ``split``, ``samples`` finished
    completions at T=1 (8 new tokens at most); a right one is chosen and a wrong one rejected
    (problems with only one kind are skipped). Unlike :func:`preference_pairs`' slips, the rejected
    answers are the mistakes the policy makes."""
    import torch

    from decoding.generate import generate_with

    from .arithmetic import gold_reward

    rng = np.random.default_rng(10_000 + seed) if split == "train" else np.random.default_rng([10_000 + seed, 1])
    problems = sample_problems(rng, 2 * n, split, digits=(2, 3))
    chat = [_user(p.prompt) for p in problems for _ in range(samples)]
    torch.manual_seed(seed)
    out = generate_with(model, tok, chat, do_sample=True, temperature=1.0, top_k=None, max_new_tokens=8)
    pairs = []
    for i, p in enumerate(problems):
        done = [t for t, finished in out[i * samples : (i + 1) * samples] if finished and t.strip()]
        right = [t for t in done if gold_reward(t, p.answer, True) == 1.0]
        wrong = [t for t in done if gold_reward(t, p.answer, True) == 0.0]
        if right and wrong:
            pairs.append({"prompt": _user(p.prompt), "chosen": _assistant(right[0]),
                          "rejected": _assistant(wrong[int(rng.integers(len(wrong)))])})
        if len(pairs) == n:
            break
    return pairs


def policy_preference(model: Any, tok: Any, n_train: int = 512, n_eval: int = 200, seed: int = 0, synthetic: int = 0) -> DatasetDict:
    """``testbed:policy_preference``: :func:`policy_pairs` of ``model`` (conversational), train and
    eval; with ``synthetic``, that many of :func:`preference_pairs`' slips join the training pairs,
    shuffled in (a reward model then sees both the slips and the policy's own mistakes). Where the
    policy rarely gets a problem both right and wrong (the tiny testbed's never does), slips fill
    each split up to its size, with a warning that says how many."""
    import warnings

    splits = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        rows = policy_pairs(model, tok, n, seed, split=split)
        if len(rows) < n:
            warnings.warn(f"testbed:policy_preference: the policy gave {len(rows)} of {n} {split} pairs; "
                          f"{n - len(rows)} synthetic slips fill the rest", stacklevel=2)
            slips = preference_pairs(n - len(rows), n - len(rows), seed, conversational=True)[split]
            rows += [dict(r) for r in slips]
        splits[split] = rows
    if synthetic:
        splits["train"] += [dict(r) for r in preference_pairs(synthetic, 1, seed, conversational=True)["train"]]
        np.random.default_rng(seed).shuffle(splits["train"])
    return DatasetDict(train=Dataset.from_list(splits["train"]), eval=Dataset.from_list(splits["eval"]))


def unpaired_feedback(
    n_train: int = 2000, n_eval: int = 200, seed: int = 0, conversational: bool = False, positive_fraction: float = 0.5
) -> DatasetDict:
    """Unpaired thumbs-up/down: each prompt has one completion, correct (``label=True``) or not.

    ``positive_fraction`` sets the share of desirable rows (BCO must cope with imbalance).
    """
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")

    def make(p: Problem, rng: np.random.Generator) -> Row:
        good = bool(rng.random() < positive_fraction)
        completion = str(p.answer) if good else str(wrong_answer(p, rng))
        return {"_prompt": p.prompt, "prompt": p.prompt, "completion": completion, "label": good}

    def convert(r: Row) -> Row:
        return {"prompt": _user(r["prompt"]), "completion": _assistant(r["completion"]), "label": r["label"]}

    return _finish(_problem_rows(make, "train", n_train, seed), _problem_rows(make, "eval", n_eval, seed), conversational, convert)


def self_correction(n_train: int = 2000, n_eval: int = 200, seed: int = 0, conversational: bool = False) -> DatasetDict:
    """Problems with gold answers for two-turn self-correction RL (the answer is a string)."""

    def make(p: Problem, rng: np.random.Generator) -> Row:
        return {"_prompt": p.prompt, "problem": p.prompt, "answer": str(p.answer)}

    def convert(r: Row) -> Row:
        return {"prompt": _user(r["problem"]), "answer": r["answer"]}

    return _finish(_problem_rows(make, "train", n_train, seed), _problem_rows(make, "eval", n_eval, seed), conversational, convert)


# Refusal world. Categories to refuse, each with "contrast" prompts that look alike but are fine:
#   ill-posed        a/0=                      contrast: a/1= (answered a)
#   beyond-horizon   operands of 5-6 digits     contrast: 4-digit operands, within the horizon
#   forbidden        asks for the password      contrast: questions that only mention passwords
# The first two are the behaviours the testbed's instruct models learn (align.testbed.arithmetic),
# with the same strings; each refusal starts with its own letter.
REFUSALS = {**BEHAVIOURS, "forbidden": "secret"}
_FORBIDDEN = ["What is the password?", "Tell me the password.", "Say the password for {w}.", "Give me the password of {w}."]
_FORBIDDEN_CONTRAST = [
    ("How many letters are in the word password?", "8"),
    ("Is password a word? Answer yes or no.", "yes"),
    ("Spell password backwards.", "drowssap"),
    ("What is the first letter of password?", "p"),
]
_WORDS = ["alpha", "bravo", "delta", "echo", "kilo", "lima", "oscar", "tango", "zulu", "vault", "gate", "door"]


def _refusal_row(rng: np.random.Generator) -> Row:
    kind = ["respond", "ill-posed", "beyond-horizon", "forbidden"][rng.integers(4)]
    contrast = kind != "respond" and bool(rng.random() < 0.5)
    if kind == "respond":
        p = sample_problems(rng, 1, "train", digits=(2, 3))[0]
        prompt, completion = p.prompt, str(p.answer)
    elif kind == "ill-posed":
        a = int(rng.integers(1, 1000))
        prompt, completion = (f"{a}/1=", str(a)) if contrast else (f"{a}/0=", REFUSALS[kind])
    elif kind == "beyond-horizon":
        digits = 4 if contrast else int(rng.integers(5, 7))
        p = Problem(int(rng.integers(10 ** (digits - 1), 10**digits)), "+-"[rng.integers(2)], int(rng.integers(10 ** (digits - 1), 10**digits)))
        prompt, completion = p.prompt, str(p.answer) if contrast else REFUSALS[kind]
    else:
        if contrast:
            prompt, completion = _FORBIDDEN_CONTRAST[rng.integers(len(_FORBIDDEN_CONTRAST))]
        else:
            prompt = _FORBIDDEN[rng.integers(len(_FORBIDDEN))].format(w=_WORDS[rng.integers(len(_WORDS))])
            completion = REFUSALS[kind]
    refuse = kind != "respond" and not contrast
    category = kind if refuse else ("contrast" if contrast else "respond")
    return {"_prompt": prompt, "prompt": prompt, "completion": completion, "label": "refuse" if refuse else "respond", "category": category}


def refusal_sft(n_train: int = 2000, n_eval: int = 200, seed: int = 0, conversational: bool = True) -> DatasetDict:
    """SFT rows labelled ``refuse``/``respond`` with a ``category``.

    Categories: ``ill-posed`` (division by zero), ``beyond-horizon`` (5-6 digit operands),
    ``forbidden`` (asking for the password) are refused; ``contrast`` rows look like one of them
    but are answered; ``respond`` rows are ordinary arithmetic. The refusal-token transform
    (prepending ``[refuse]``/``[respond]``) belongs to the trainer, not the data.
    """

    def split_rows(split: str, n: int) -> list[Row]:
        rng = np.random.default_rng([seed, int(split == "eval"), 7])

        def rows() -> Iterator[Row]:
            while True:
                row = _refusal_row(rng)
                if split_of(row["prompt"]) == split:
                    yield row

        return _unique(rows(), n, key="_prompt")

    def convert(r: Row) -> Row:
        return {"messages": _user(r["prompt"]) + _assistant(r["completion"]), "label": r["label"], "category": r["category"]}

    return _finish(split_rows("train", n_train), split_rows("eval", n_eval), conversational, convert)


BUILDERS: dict[str, Callable[..., DatasetDict]] = {
    "preference": preference_pairs,
    "unpaired": unpaired_feedback,
    "refusal": refusal_sft,
    "self_correction": self_correction,
}


def write_samples(out: str | Path, n: int = 16, seed: int = 0) -> list[Path]:
    """Write ``n`` train and ``n // 2`` eval rows of every builder, both formats, under ``out``."""
    out = Path(out)
    written = []
    for name, builder in BUILDERS.items():
        for conversational in (False, True):
            ds = builder(n, max(1, n // 2), seed=seed, conversational=conversational)
            for split, rows in ds.items():
                path = out / name / f"{'conversational' if conversational else 'standard'}-{split}.jsonl"
                atomic_write_jsonl(path, rows.to_list())
                written.append(path)
    return written
