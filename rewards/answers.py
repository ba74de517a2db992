"""Answer checkers in TRL's reward-function form: ``fn(prompts, completions, answer, **kw)`` returns
one float per completion (completions are text or chat messages; ``answer`` is the gold column).
Used as SCoRe's reward, in best-of-n and in evaluation.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
import multiprocessing
from typing import Any

TIMEOUT_S = 5  # seconds math-verify may spend parsing one completion, and again comparing it to the gold


def _text(completion: Any) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def math_answer_reward(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any], timeout: float = TIMEOUT_S, **_: Any
) -> list[float]:
    """1.0 iff `math-verify <https://github.com/huggingface/Math-Verify>`_ finds the completion's
    final answer equal to the gold one (LaTeX or plain, ``\\boxed{}``, fractions vs decimals; a
    GSM8K gold ``"... #### 72"`` counts as ``72``); an unparseable completion scores 0.

    One model output can make sympy run for ever (``$9^{9^{9^{9}}}$``), so parsing and comparing
    each get ``timeout`` seconds (default 5) and a check that runs out scores 0: a completion costs
    at most about ``2 * timeout``. math-verify's timeouts use ``signal.alarm``, which works in the
    main thread only; called from another thread (a data loader, a server), each check runs in a
    worker process that is killed when it overruns.

    Example:
        >>> math_answer_reward(["q"] * 3, ["So it is \\\\boxed{\\\\frac{1}{2}}.", "It is 0.5", "It is 2"], ["#### 0.5"] * 3)
        [1.0, 1.0, 0.0]
    """
    if len(completions) != len(answer):
        raise ValueError(f"math_answer_reward: {len(completions)} completions but {len(answer)} answers")
    pairs = [(_text(c), str(g).rsplit("####", 1)[-1].strip()) for c, g in zip(completions, answer)]
    if threading.current_thread() is threading.main_thread():
        return [_check(text, gold, timeout) for text, gold in pairs]
    return [_check_in_worker(text, gold, timeout) for text, gold in pairs]


def _check(text: str, gold: str, timeout: float) -> float:
    """math-verify with its own (signal) timeouts; must run in a main thread."""
    from math_verify import parse, verify

    seconds = max(1, round(timeout))  # signal.alarm counts whole seconds
    target = parse(text, parsing_timeout=seconds)
    return float(bool(target) and verify(parse(gold, parsing_timeout=seconds), target, timeout_seconds=seconds))


_worker: Any = None  # a one-process multiprocessing pool, started on first use off the main thread
_worker_lock = threading.Lock()


def _check_in_worker(text: str, gold: str, timeout: float) -> float:
    """:func:`_check` in the main thread of a worker process; a worker stuck past its own timeouts
    (a C-level computation signals cannot interrupt) is terminated and the check scores 0."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = multiprocessing.get_context("spawn").Pool(1)
        try:
            return _worker.apply_async(_check, (text, gold, timeout)).get(timeout=3 * timeout + 30)  # + a spawn's start-up
        except multiprocessing.TimeoutError:
            _worker.terminate()
            _worker = None
            return 0.0
