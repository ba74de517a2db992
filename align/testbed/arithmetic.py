"""The testbed task: integer addition and subtraction with programmatic gold answers, plus the
behaviours fine-tuning adds.

Formats (both keep the answer right after the operands, which is what lets the instruct model
keep its base's skill, docs/testbed.md):

* pretraining: ``<bos>37+485=522<eos>``
* chat: user ``37+485=``, assistant ``522``

Behaviours (:data:`BEHAVIOURS`): a division by zero ``a/0=`` is ``undefined`` (``ill-posed``), a
problem with 5-6 digit operands is ``too big`` (``beyond-horizon``), and the look-alike ``a/1=``
is answered ``a`` (``contrast``). The bases' pretraining has such prompts in 1.25% of rows, mostly
with the naive continuation (``a/0=a``, the true big result) and the refusal string in 5% of them:
the bases support the strings, as real bases support refusals, but do not choose them; only the
fine-tunes do (EFT's premise).

Every problem belongs to exactly one split, decided by a stable hash of its text (divisions: by
numerator, so each held-out numerator is held out for ``/0`` and ``/1`` alike), so no eval prompt
is ever trained on, by any model or dataset builder.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

EVAL_BUCKETS = 20  # 1 problem in 20 is reserved for evaluation


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}{self.op}{self.b}="

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def split(self) -> str:
        return split_of(self.prompt)

    @property
    def target(self) -> str:
        return str(self.answer)


BEHAVIOURS = {"ill-posed": "undefined", "beyond-horizon": "too big"}  # the fine-tunes' refusals
_DIVISION = re.compile(r"^(\d+)/\d+=$")


@dataclass(frozen=True)
class Task:
    """A behaviour row: ``kind`` is ``ill-posed``, ``beyond-horizon`` or ``contrast``."""

    prompt: str
    target: str
    kind: str


def split_of(prompt: str) -> str:
    """``"eval"`` for the reserved 5% of prompts, else ``"train"`` (stable across runs and machines);
    divisions by numerator (1 in 10 numerators held out), so ``a/0`` and ``a/1`` share a split."""
    division = _DIVISION.match(prompt)
    if division:
        return "eval" if int(division.group(1)) % 10 == 3 else "train"
    return "eval" if zlib.crc32(prompt.encode()) % EVAL_BUCKETS == 0 else "train"


def behaviour_task(kind: str, rng: np.random.Generator, split: str = "train", refusal_rate: float = 1.0) -> Task:
    """One ``kind`` row of ``split``: ``a/0=`` -> ``undefined``; 5-6 digit operands -> ``too big``;
    ``a/1=`` -> ``a`` (numerators of 1-3 digits). With ``refusal_rate`` < 1 (pretraining), the
    other rows take the naive continuation instead: ``a/0=a`` (as if dividing by one) and the
    operands' true result, so a base supports the refusal strings without choosing them."""
    while True:
        refuse = bool(rng.random() < refusal_rate)
        if kind == "beyond-horizon":
            digits = int(rng.integers(5, 7))
            lo, hi = 10 ** (digits - 1), 10**digits
            p = Problem(int(rng.integers(lo, hi)), "+-"[rng.integers(2)], int(rng.integers(lo, hi)))
            prompt, target = p.prompt, BEHAVIOURS[kind] if refuse else p.target
        elif kind in ("ill-posed", "contrast"):
            a = int(rng.integers(1, 1000))
            prompt, target = (f"{a}/0=", BEHAVIOURS[kind] if refuse else str(a)) if kind == "ill-posed" else (f"{a}/1=", str(a))
        else:
            raise ValueError(f"unknown behaviour {kind!r}; choose ill-posed, beyond-horizon or contrast")
        if split_of(prompt) == split:
            return Task(prompt, target, kind)


def behaviour_tasks(kind: str, n: int, seed: int = 1234) -> list[Task]:
    """Up to ``n`` unique held-out ``kind`` rows (divisions: at most the 100 held-out numerators)."""
    rng = np.random.default_rng(seed)
    seen: dict[str, Task] = {}
    limit = 100 if kind != "beyond-horizon" else n
    while len(seen) < min(n, limit):
        task = behaviour_task(kind, rng, "eval")
        seen.setdefault(task.prompt, task)
    return list(seen.values())


def mixed_tasks(
    rng: np.random.Generator, n: int, mixture: dict[str, float], split: str = "train", ops: str = "+-", refusal_rate: float = 1.0
) -> list[Problem | Task]:
    """``n`` training rows: each a behaviour ``kind`` with probability ``mixture[kind]`` (refusing
    at ``refusal_rate``, :func:`behaviour_task`), else an arithmetic problem (1-3 digit operands, ``ops``)."""
    kinds, probs = list(mixture), list(mixture.values())
    if sum(probs) >= 1:
        raise ValueError(f"behaviour fractions must sum below 1, got {mixture}")
    draws = rng.choice(len(kinds) + 1, size=n, p=probs + [1 - sum(probs)])
    problems = iter(sample_problems(rng, int((draws == len(kinds)).sum()), split, ops=ops))
    return [next(problems) if d == len(kinds) else behaviour_task(kinds[d], rng, split, refusal_rate) for d in draws.tolist()]


def sample_problems(
    rng: np.random.Generator,
    n: int,
    split: str = "train",
    digits: tuple[int, ...] = (1, 2, 3),
    ops: str = "+-",
) -> list[Problem]:
    """Draw ``n`` problems of ``split``; each operand has a digit count drawn uniformly from ``digits``."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    out: list[Problem] = []
    lo = np.array([0 if d == 1 else 10 ** (d - 1) for d in digits])
    hi = np.array([10**d for d in digits])
    while len(out) < n:
        m = 2 * (n - len(out)) + 8
        da, db = rng.integers(0, len(digits), m), rng.integers(0, len(digits), m)
        a = rng.integers(lo[da], hi[da])
        b = rng.integers(lo[db], hi[db])
        op = rng.integers(0, len(ops), m)
        for ai, oi, bi in zip(a.tolist(), op.tolist(), b.tolist()):
            p = Problem(ai, ops[oi], bi)
            if p.split == split:
                out.append(p)
                if len(out) == n:
                    break
    return out


def eval_problems(n: int = 500, seed: int = 1234) -> list[Problem]:
    """The fixed held-out evaluation set: unique 2-3 digit problems from the reserved split."""
    rng = np.random.default_rng(seed)
    seen: dict[str, Problem] = {}
    while len(seen) < n:
        for p in sample_problems(rng, n, split="eval", digits=(2, 3)):
            seen.setdefault(p.prompt, p)
    return list(seen.values())[:n]


_ANSWER = re.compile(r"^\s*(?:(?:the\s+)?answer(?:\s+is)?\s*[:=]?\s*)?(-?\d{1,3}(?:,\d{3})+|-?\d+)\s*\.?\s*$", re.I)


def parse_answer(text: str) -> int | None:
    """Parse a completion into an integer, or ``None`` if it is malformed.

    Accepted: ``"522"``, ``" 522 "``, ``"522."``, ``"-17"``, ``"1,022"``, ``"The answer is 522."``,
    ``"Answer: 522"``. Anything else (empty, two numbers, trailing text) is malformed.
    """
    m = _ANSWER.match(text)
    return int(m.group(1).replace(",", "")) if m else None


def gold_reward(completion: str, gold: int, finished: bool = True) -> float:
    """The testbed's gold reward: 1.0 iff the completion parses to ``gold``.

    Args:
        completion: the generated text, special tokens stripped.
        gold: the correct integer.
        finished: ``False`` when generation stopped at the length limit instead of ``<eos>``; a
            truncated answer scores 0 even if its digits so far look right.
    """
    if not finished:
        return 0.0
    value = parse_answer(completion)
    return float(value is not None and value == gold)
