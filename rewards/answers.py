"""Answer checkers in TRL's reward-function form: ``fn(prompts, completions, answer, **kw)`` returns
one float per completion (completions are text or chat messages; ``answer`` is the gold column).
Used as SCoRe's reward, in best-of-n and in evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _text(completion: Any) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def math_answer_reward(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any], **_: Any) -> list[float]:
    """1.0 iff `math-verify <https://github.com/huggingface/Math-Verify>`_ finds the completion's
    final answer equal to the gold one (LaTeX or plain, ``\\boxed{}``, fractions vs decimals; a
    GSM8K gold ``"... #### 72"`` counts as ``72``); an unparseable completion scores 0.

    Example:
        >>> math_answer_reward(["q"] * 3, ["So it is \\\\boxed{\\\\frac{1}{2}}.", "It is 0.5", "It is 2"], ["#### 0.5"] * 3)
        [1.0, 1.0, 0.0]
    """
    from math_verify import parse, verify

    if len(completions) != len(answer):
        raise ValueError(f"math_answer_reward: {len(completions)} completions but {len(answer)} answers")
    out = []
    for completion, gold in zip(completions, answer):
        gold_text = str(gold).rsplit("####", 1)[-1].strip()
        target = parse(_text(completion), parsing_timeout=None)
        out.append(float(bool(target) and verify(parse(gold_text, parsing_timeout=None), target, timeout_seconds=None)))
    return out
