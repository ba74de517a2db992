"""Benchmark entry point: ``python -m benchmarks NAME [--profile full|tiny]``.

Every benchmark reports ratios measured in one run (same process, same load), never absolute
timings compared across runs: contenders race interleaved and each ratio is the median [IQR] of
its per-round ratios (:mod:`benchmarks`). Results go to ``benchmarks/results/NAME.json``
(``NAME-PART.json`` for ``--only PART``, ``training-small-real.json`` for that shape, ``-cuda``
on a GPU), every run also as a line of ``benchmarks/results/history.jsonl``, and
``benchmarks/RESULTS.md`` is regenerated from the results files (:mod:`benchmarks.report`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from . import judged, race, ratio, report, summarise
from .shapes import clock

NEW_TOKENS = 64


def _decode(model, enc, tok, processors=()):
    return lambda: model.generate(
        **enc,
        logits_processor=list(processors() if callable(processors) else processors),
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,  # fixed length: the same work for every contender
        pad_token_id=tok.pad_token_id,
    )


def testbed(args: argparse.Namespace) -> dict:
    """Per-token decoding cost of each testbed model relative to small-base (KV cache, greedy),
    raced interleaved: median [IQR] of per-round ratios on process CPU time."""
    from align.testbed import build_testbed

    tb = build_testbed(args.profile)
    tok = tb.tokenizer()
    out: dict[str, dict] = {}
    for batch in (1, 64):
        enc = tok(["12+34="] * batch, return_tensors="pt")
        result = race({name: _decode(tb.model(name), enc, tok) for name in tb.models}, rounds=args.rounds_decoding)
        out[f"b{batch}"] = {name: ratio(result, name, "small-base") for name in tb.models if name != "small-base"}
    out["flops"] = {name: info["cost_ratio"] for name, info in tb.models.items()}
    return out


# bars of the decoding suite: (op, goal); a ratio without one is reported only
DECODING_GOALS = {"eft_over_sum_b1": ("<=", 1.10), "eft_over_sum_b8": ("<=", 1.10), "dlf_over_eft": ("<=", 1.25)}


def decoding(args: argparse.Namespace) -> dict:
    """Multi-model decoding overhead: EFT vs its three models run alone, DLF vs EFT, naive vs EFT.
    Contenders race interleaved (``race``); each ratio is the median [IQR] of its per-round ratios
    on process CPU time, met only by its upper quartile."""
    profile = args.profile
    from align.testbed import build_testbed
    from decoding import AuxiliaryModel, DLFLogitsProcessor, EFTLogitsProcessor

    tb = build_testbed(profile)
    tok = tb.tokenizer()
    device, c = args.device, clock(args.device)
    large, small, instruct = (tb.model(name).to(device) for name in ("large-base", "small-base", "small-instruct"))
    out: dict[str, dict] = {}
    for batch in (1, 8):
        prompts = [f"{12 + i}+{345 - i}=" for i in range(batch)]
        chat = [[{"role": "user", "content": p}] for p in prompts]
        enc = tok(prompts, return_tensors="pt", padding=True).to(device)

        def eft(prompts=prompts, chat=chat):
            return [
                EFTLogitsProcessor(
                    tok,
                    [AuxiliaryModel(instruct, tok, chat, "small-instruct")],
                    AuxiliaryModel(small, tok, prompts, "small-base"),
                )
            ]

        def dlf(prompts=prompts, chat=chat):
            return [
                DLFLogitsProcessor(
                    tok, AuxiliaryModel(small, tok, prompts, "small-base"), [AuxiliaryModel(instruct, tok, chat, "small-instruct")]
                )
            ]

        chat_enc = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True,
                                           padding=True).to(device)
        contenders = {"large": _decode(large, enc, tok), "instruct": _decode(instruct, chat_enc, tok), "small": _decode(small, enc, tok),
                      "eft": _decode(large, enc, tok, eft)}
        if batch == 1:
            contenders["dlf"] = _decode(large, enc, tok, dlf)
            contenders["naive"] = lambda: _naive_eft(tok, large, instruct, small, prompts[0])
        result = race(contenders, rounds=args.rounds_decoding, device=device)
        out[f"eft_over_sum_b{batch}"] = ratio(result, "eft", ["large", "instruct", "small"], c)
        if batch == 1:
            out["dlf_over_eft"] = ratio(result, "dlf", "eft", c)
            out["naive_over_eft"] = ratio(result, "naive", "eft", c)
    for name, (op, goal) in DECODING_GOALS.items():
        out[name] = judged(out[name], op, goal)
    return out


@torch.no_grad()
def _naive_eft(tok, large, instruct, small, prompt: str) -> list[int]:
    """EFT without caches: every model re-reads its whole prompt plus the generated tokens each step."""
    own = {
        "large": tok(prompt)["input_ids"],
        "instruct": tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)["input_ids"],
        "small": tok(prompt)["input_ids"],
    }
    models = {"large": large, "instruct": instruct, "small": small}
    generated: list[int] = []
    for _ in range(NEW_TOKENS):
        lp = {
            k: torch.log_softmax(m(torch.tensor([own[k] + generated], device=m.device)).logits[0, -1, : len(tok)].float(), -1)
            for k, m in models.items()
        }
        generated.append(int((lp["large"] + lp["instruct"] - lp["small"]).argmax()))
    return generated


def switching(args: argparse.Namespace) -> dict:
    """Speculative EFT speed-up over plain EFT (batch 1 and 8; k by transformers' heuristic, and a
    fixed k = 3), EAD time vs its cost formula, and vLLM throughput ratios."""
    profile = args.profile
    from align.testbed import build_testbed, eval_problems
    from decoding import AuxiliaryModel, EFTLogitsProcessor, speculative_eft_generate
    from decoding.generate import generate_with

    tb = build_testbed(profile)
    tok = tb.tokenizer()
    device, c = args.device, clock(args.device)
    large, small, instruct = (tb.model(name).to(device) for name in ("large-base", "small-base", "small-instruct"))
    prompts = [p.prompt for p in eval_problems(32)]
    chat = [[{"role": "user", "content": p}] for p in prompts]
    out: dict[str, float | str | None] = {}

    def plain_eft(batch: int):
        for i in range(0, len(prompts), batch):
            rows = slice(i, i + batch)
            procs = [EFTLogitsProcessor(tok, [AuxiliaryModel(instruct, tok, chat[rows])], AuxiliaryModel(small, tok, prompts[rows]))]
            generate_with(large, tok, prompts[rows], lambda _r, p=procs: p, do_sample=False, max_new_tokens=8, batch_size=batch)

    paths: dict[str, dict[str, int]] = {}

    def spec_eft(batch: int, schedule: str):
        count = paths.setdefault(f"b{batch}_{schedule}", {"rows": 0, "drafted": 0, "accepted": 0, "rounds": 0})
        for i in range(0, len(prompts), batch):
            rows = slice(i, i + batch)
            out = speculative_eft_generate(
                AuxiliaryModel(large, tok, prompts[rows]), AuxiliaryModel(instruct, tok, chat[rows]),
                AuxiliaryModel(small, tok, prompts[rows]),
                tok(prompts[rows], return_tensors="pt", padding=True)["input_ids"].to(device),
                max_new_tokens=8, eos_token_id=tok.eos_token_id, k_schedule=schedule,  # k = 3 to start
            )
            if count["rows"] < len(prompts):  # greedy: every call draws the same, count one
                count["rows"] += out.sequences.shape[0]
                count.update(drafted=count["drafted"] + out.drafted, accepted=count["accepted"] + out.accepted,
                             rounds=count["rounds"] + out.rounds)

    # interleaved rounds; a speed-up is plain / speculative per round, met by its lower quartile
    contenders = {}
    for batch in (1, 8):
        contenders[f"plain_b{batch}"] = lambda b=batch: plain_eft(b)
        for schedule in ("heuristic", "constant"):
            contenders[f"spec_b{batch}_{schedule}"] = lambda b=batch, s=schedule: spec_eft(b, s)
    result = race(contenders, rounds=args.rounds_decoding, device=device)
    for batch, key, goal in ((1, "spec_eft_speedup", 1.5), (8, "spec_eft_speedup_b8", 1.0)):
        out[key] = judged(ratio(result, f"plain_b{batch}", f"spec_b{batch}_heuristic", c), ">=", goal)
        out[f"{key}_constant_k3"] = ratio(result, f"plain_b{batch}", f"spec_b{batch}_constant", c)
    out["spec_eft_paths"] = {key: {"acceptance": round(n["accepted"] / max(1, n["drafted"]), 3), "rounds": n["rounds"],
                                   "rows": n["rows"]} for key, n in paths.items()}
    out.update(_ead_over_formula(tb, tok, chat, device))
    if device == "cpu":  # vLLM's own GPU numbers: the vllm-fusion suite
        out.update(_vllm_ratios(tb, tok))
    return out


def _ead_over_formula(tb, tok, chat, device: str = "cpu", rounds: int = 5, new_tokens: int = 32) -> dict:
    """EAD time against its cost formula ``n_S c_S + n_L c_L`` at the claim's τ (batch 1, as in the paper).

    Per-token costs c_S, c_L come from the same loop with one model only, in the same round: the
    contenders race interleaved and every ratio is the median [IQR] of its per-round values on
    process CPU time. EOS is suppressed: every answer is ``new_tokens`` long (decode-dominated).
    Two switching rules at τ=0.02: the spec's (window 5, >= 10 tokens per model), and the one the
    ``ead-tradeoff`` claim uses on 2-5 token answers (window 1, no minimum run), which switches on
    ~40% of steps; every switch makes the incoming model read what it missed in a multi-token
    forward that C does not price.
    """
    from decoding import AuxiliaryModel, entropy_adaptive_generate
    from decoding.auxiliary import encode_prompts
    from transformers import LogitsProcessorList, SuppressTokensLogitsProcessor

    small, large = tb.model("small-instruct").to(device), tb.model("large-instruct").to(device)
    no_eos = LogitsProcessorList([SuppressTokensLogitsProcessor([tok.eos_token_id], device=device)])
    ids = [torch.tensor([encode_prompts(tok, chat[i : i + 1])[0]], device=device) for i in range(len(chat))]

    def run(first, second, tau, **rule) -> tuple[int, int, int]:
        n_s, n_l, switches = 0, 0, 0
        for i in range(len(chat)):
            r = entropy_adaptive_generate(
                AuxiliaryModel(first, tok, chat[i : i + 1]), AuxiliaryModel(second, tok, chat[i : i + 1]), ids[i],
                tau=tau, max_new_tokens=new_tokens, logits_processor=no_eos, eos_token_id=tok.eos_token_id, **rule,
            )
            n_s, n_l, switches = n_s + int(r.tokens_small.sum()), n_l + int(r.tokens_large.sum()), switches + int(r.switches.sum())
        return n_s, n_l, switches

    counts: dict[str, tuple[int, int, int]] = {}

    def counted(name: str, *a, **kw):
        def fn():
            counts[name] = run(*a, **kw)  # greedy: the same tokens every round
        return fn

    contenders = {
        "small": counted("small", small, large, 1e9),  # never switches: small only
        "large": counted("large", large, small, 1e9),  # the large model in the small seat
        "": counted("", small, large, 0.02),  # the spec's rule (window 5, min 10)
        "_window1": counted("_window1", small, large, 0.02, window=1, min_tokens=0),
    }
    result = race(contenders, rounds=rounds, device=device)
    times = result.cpu if clock(device) == "cpu" else result.wall
    per_token = {name: sum(counts[name][:2]) for name in counts}
    # per round: c_S, c_L from the one-model runs; C prices the switching run's tokens with them
    c_s = [t / per_token["small"] for t in times["small"]]
    c_l = [t / per_token["large"] for t in times["large"]]
    out = {"ead_measured_cost_small_over_large": {**summarise([s / l for s, l in zip(c_s, c_l)]), "clock": clock(device)}}
    for suffix in ("", "_window1"):
        n_s, n_l, switches = counts[suffix]
        formula = [n_s * s + n_l * l for s, l in zip(c_s, c_l)]
        out[f"ead_large_fraction{suffix}"] = round(n_l / (n_s + n_l), 3)
        out[f"ead_switches_per_token{suffix}"] = round(switches / (n_s + n_l), 3)
        out[f"ead_cost_ratio_C{suffix}"] = round(statistics.median(f / ((n_s + n_l) * l) for f, l in zip(formula, c_l)), 3)
        out[f"ead_time_over_formula{suffix}"] = judged({**summarise([t / f for t, f in zip(times[suffix], formula)]),
                                                        "clock": clock(device)}, "<=", 1.10)
    return out


def _vllm_ratios(tb, tok) -> dict:
    """vLLM tokens/s with the refusal processor / without, and vLLM / transformers at batch 64."""
    from .vllm_throughput import refusal_processor_ratios

    return refusal_processor_ratios(tb.model("large-base"), tb.tokenizer(), [f"{12 + i}+{345 - i}=" for i in range(64)])


def training(args: argparse.Namespace) -> dict:
    """Trainer step time vs TRL's DPOTrainer; LoRA-reference memory (see benchmarks/training.py)."""
    profile = args.profile
    from .training import training as run

    return run(profile, args.shape, args.device)


def rewards(args: argparse.Namespace) -> dict:
    """Scoring with a 5-member reward ensemble vs one member (see benchmarks/reward_scoring.py)."""
    profile = args.profile
    from .reward_scoring import reward_scoring

    return reward_scoring(profile)


def evaluation(args: argparse.Namespace) -> dict:
    from .eval_report import report_time, run

    return report_time() if args.only == "report" else run(args.profile)


def shapes(args: argparse.Namespace) -> dict:
    """Multi-model decoding at real shapes (random-init Qwen2.5-0.5B-like models; see benchmarks/shapes.py)."""
    from .shapes import shapes as run

    return run(args)


def refusal_tokens(args: argparse.Namespace) -> dict:
    """Held-out first-token accuracy and p[refuse] AUROC per training kind and control_init (see
    benchmarks/refusal_tokens.py); ``--profile smollm2`` for SmolLM2-135M-Instruct on CoCoNot."""
    from .refusal_tokens import refusal_tokens as run

    return run(args.profile)


def vllm_fusion(args: argparse.Namespace) -> dict:
    """EFT and DLF as one vLLM composite vs the transformers processor and vs its members served
    alone, at the testbed's and real shapes (see benchmarks/vllm_fusion.py; the vLLM venv)."""
    from .vllm_fusion import vllm_fusion as run

    return run(args)


BENCHMARKS = {"testbed": testbed, "decoding": decoding, "switching": switching, "training": training, "rewards": rewards,
              "eval": evaluation, "shapes": shapes, "refusal_tokens": refusal_tokens, "vllm-fusion": vllm_fusion}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("name", choices=sorted(BENCHMARKS) + ["results"], help="a suite, or results: regenerate RESULTS.md only")
    parser.add_argument("--profile", default="full", choices=["full", "tiny", "smollm2"],
                        help="testbed profile; smollm2 (refusal_tokens only): the real model")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (fixed for comparability)")
    parser.add_argument("--build", action="store_true", help="shapes: build the random-init checkpoints first (once)")
    parser.add_argument("--device", default="cpu", help="decoding, switching, training, shapes, vllm-fusion: cpu, or cuda (shapes: bf16)")
    parser.add_argument("--shape", default="testbed", choices=["testbed", "small-real"],
                        help="training: the testbed's small model, or random init at a real vocabulary and width")
    parser.add_argument("--only", default=None, help="shapes: one part (overhead, ead, speculative, check, vllm); vllm-fusion: testbed or real; "
                        "eval: report (the report's times only)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="shapes: leave glibc's malloc returning freed large blocks to the OS (see keep_freed_memory)")
    parser.add_argument("--batch", default="1,8", help="shapes: comma-separated batch sizes of the overhead part")
    parser.add_argument("--rounds", type=int, default=5, help="shapes, vllm-fusion: interleaved rounds (median [IQR] over them)")
    parser.add_argument("--shape-threads", default="1", help="shapes on CPU: comma-separated torch thread counts to run the parts at")
    parser.add_argument("--rounds-decoding", type=int, default=9,
                        help="decoding, switching (speculative EFT): interleaved rounds (median [IQR] over them)")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.profile == "smollm2" and args.name != "refusal_tokens":
        parser.error("--profile smollm2 is for refusal_tokens only")
    torch.set_num_threads(args.threads)
    if args.name == "results":
        print(f"written: {report.write()}")
        return
    started = time.perf_counter()
    result = {
        "benchmark": args.name,
        "command": command_line(args),
        "date": time.strftime("%Y-%m-%d"),
        "profile": args.profile,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        "results": BENCHMARKS[args.name](args),
    }
    result["seconds"] = round(time.perf_counter() - started)
    from rewards.io import atomic_write_text

    # a partial or reshaped run gets its own file instead of overwriting the full run's
    stem = args.name + (f"-{args.only}" if args.name in ("shapes", "vllm-fusion", "eval") and args.only else "")
    stem += f"-{args.shape}" if args.name == "training" and args.shape != "testbed" else ""
    stem += f"-{args.profile}" if args.name == "refusal_tokens" else ""
    stem += f"-b{args.batch.replace(',', '-')}" if args.name == "shapes" and args.batch != "1,8" else ""
    stem += f"-{args.device.split(':')[0]}" if args.device != "cpu" else ""
    path = atomic_write_text(report.RESULTS / f"{stem}.json", json.dumps(result, indent=2))
    with open(report.RESULTS / "history.jsonl", "a") as history:  # every run, in order, never rewritten
        history.write(json.dumps(result) + "\n")
    report.write()
    print(json.dumps(result["results"], indent=2))
    print("\n".join(report.summary_lines(result["results"])))
    print(f"written: {path}, a line in {report.RESULTS / 'history.jsonl'}; {report.RESULTS_MD} regenerated")


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (the options that differ from their defaults)."""
    python = ".venv-vllm/bin/python" if args.name == "vllm-fusion" else "python"
    command, parser = f"{python} -m benchmarks {args.name}", build_parser()
    for option in ("profile", "threads", "device", "shape", "only", "batch", "rounds", "shape_threads", "rounds_decoding"):
        value, default = getattr(args, option), parser.get_default(option)
        if value != default:
            command += f" --{option.replace('_', '-')} {value}"
    return command + (" --default-malloc" if args.default_malloc else "") + (" --build" if args.build else "")


if __name__ == "__main__":
    main()
