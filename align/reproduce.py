"""Paper claims checked on the offline testbed: ``align reproduce NAME``.

Each claim writes ``runs/reproduce/NAME/result.json`` with ``claim``, ``metric``, ``value``,
``baseline`` and ``holds`` (plus the whole sweep). The numbers are whatever the testbed shows;
nothing is tuned to make a claim hold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .io import atomic_write_text
from .testbed import Testbed, eval_problems, gold_reward

Result = dict[str, Any]


def _chat(prompts: list[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": p}] for p in prompts]


def _accuracy(completions: list[tuple[str, bool]], answers: list[int]) -> float:
    return round(sum(gold_reward(t, a, done) for (t, done), a in zip(completions, answers)) / len(answers), 4)


def eft_upscaling(tb: Testbed, n: int) -> Result:
    """EFT 2310.12962: large base + small-instruct delta answers chat prompts better than small-instruct."""
    from decoding import AuxiliaryModel, EFTLogitsProcessor
    from decoding.generate import generate_with

    tok = tb.tokenizer()
    problems = eval_problems(n)
    prompts, answers = [p.prompt for p in problems], [p.answer for p in problems]
    chat = _chat(prompts)
    large, small, instruct = tb.model("large-base"), tb.model("small-base"), tb.model("small-instruct")
    greedy = {"do_sample": False, "max_new_tokens": 8}
    baseline = _accuracy(generate_with(instruct, tok, chat, **greedy), answers)
    large_alone = _accuracy(generate_with(large, tok, prompts, **greedy), answers)
    sweep = {}
    for beta in (0.25, 0.5, 1.0, 2.0):

        def processors(rows: slice, beta: float = beta) -> list:
            return [
                EFTLogitsProcessor(
                    tok,
                    tuned=[AuxiliaryModel(instruct, tok, chat[rows], "small-instruct")],
                    reference=AuxiliaryModel(small, tok, prompts[rows], "small-base"),
                    weights=[beta],
                )
            ]

        sweep[str(beta)] = _accuracy(generate_with(large, tok, prompts, processors, **greedy), answers)
    return {
        "claim": "up-scaling (large base + small instruct delta, beta=1) beats the small instruct model on the chat task",
        "metric": f"greedy accuracy on {n} held-out chat prompts",
        "value": sweep["1.0"],
        "baseline": baseline,
        "holds": sweep["1.0"] > baseline,
        "sweep": {"beta": sweep, "small-instruct": baseline, "large-base (pretraining format)": large_alone},
    }


def dlf_vs_fixed(tb: Testbed, n: int) -> Result:
    """DLF 2406.15480: per-step α (one active expert) beats fixed-α fusion of two task experts."""
    from decoding import AuxiliaryModel, DLFLogitsProcessor, EFTLogitsProcessor
    from decoding.generate import generate_with

    tok = tb.tokenizer()
    problems = eval_problems(n)  # a mixed + / - set: each expert knows one operator
    prompts, answers = [p.prompt for p in problems], [p.answer for p in problems]
    chat = _chat(prompts)
    large, small = tb.model("large-base"), tb.model("small-base")
    experts = {name: tb.model(name) for name in ("small-expert-add", "small-expert-sub")}
    greedy = {"do_sample": False, "max_new_tokens": 8}

    def expert_aux(rows: slice) -> list:
        return [AuxiliaryModel(m, tok, chat[rows], name) for name, m in experts.items()]

    def dynamic(rows: slice) -> list:
        return [DLFLogitsProcessor(tok, AuxiliaryModel(small, tok, prompts[rows], "small-base"), expert_aux(rows))]

    value = _accuracy(generate_with(large, tok, prompts, dynamic, **greedy), answers)
    fixed = {}
    for alpha in (0.5, 1.0, 1.5):

        def fixed_alpha(rows: slice, alpha: float = alpha) -> list:
            ref = AuxiliaryModel(small, tok, prompts[rows], "small-base")
            return [EFTLogitsProcessor(tok, tuned=expert_aux(rows), reference=ref, weights=[alpha, alpha])]

        fixed[str(alpha)] = _accuracy(generate_with(large, tok, prompts, fixed_alpha, **greedy), answers)
    best_fixed = max(fixed.values())
    return {
        "claim": "dynamic alpha (one active expert per step) beats every fixed alpha on a two-expert multi-task set",
        "metric": f"greedy accuracy on {n} held-out +/- problems (experts: small-expert-add, small-expert-sub)",
        "value": value,
        "baseline": best_fixed,
        "holds": value > best_fixed,
        "sweep": {"fixed_alpha": fixed, "dynamic": value},
    }


CLAIMS: dict[str, Callable[[Testbed, int], Result]] = {"eft-upscaling": eft_upscaling, "dlf-vs-fixed": dlf_vs_fixed}


def reproduce(name: str, tb: Testbed, n: int = 500, out_dir: str | Path = "runs/reproduce") -> tuple[Result, Path]:
    """Run claim ``name`` on testbed ``tb`` and write ``out_dir/name/result.json`` atomically."""
    if name not in CLAIMS:
        raise KeyError(f"unknown claim {name!r}; available: {', '.join(CLAIMS)}")
    start = time.perf_counter()
    result = CLAIMS[name](tb, n)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["testbed"] = {"profile": tb.manifest["profile"], "seed": tb.manifest["seed"]}
    path = atomic_write_text(Path(out_dir) / name / "result.json", json.dumps(result, indent=2))
    return result, path
