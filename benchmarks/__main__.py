"""Benchmark entry point: ``python -m benchmarks NAME [--profile full|tiny]``.

Every benchmark reports ratios measured in one run (same process, same load), never absolute
timings compared across runs.
"""

from __future__ import annotations

import argparse
import time

import torch


def _decode_seconds(model, tokenizer, batch: int, new_tokens: int, repeats: int) -> float:
    prompts = tokenizer(["<bos>12+34="] * batch, add_special_tokens=False, return_tensors="pt")
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(
            **prompts,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # fixed length: same work for every model
            pad_token_id=tokenizer.pad_token_id,
        )
        best = min(best, time.perf_counter() - start)
    return best


def testbed(profile: str) -> None:
    """Per-token decoding cost of each testbed model relative to small-base (KV cache, greedy)."""
    from align.testbed import build_testbed

    torch.set_num_threads(1)
    tb = build_testbed(profile)
    tok = tb.tokenizer()
    rows = []
    for name, info in tb.models.items():
        model = tb.model(name)
        rows.append((name, info["flops_per_token"], *(_decode_seconds(model, tok, b, 32, 5) for b in (1, 64))))
    base = rows[0]
    print(f"| model | FLOPs/token ratio | batch-1 time ratio | batch-64 time ratio |\n|---|---|---|---|")
    for name, flops, t1, t64 in rows:
        print(f"| {name} | {flops / base[1]:.2f} | {t1 / base[2]:.2f} | {t64 / base[3]:.2f} |")


BENCHMARKS = {"testbed": testbed}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    parser.add_argument("--profile", default="full", choices=["full", "tiny"])
    args = parser.parse_args()
    BENCHMARKS[args.name](args.profile)


if __name__ == "__main__":
    main()
