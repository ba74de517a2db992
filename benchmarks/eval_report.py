"""``python -m benchmarks eval``: evaluation throughput with vLLM vs transformers generation (the
same prompts, greedy, fixed length; vLLM only where it is installed, e.g. the vLLM venv), the time
to summarise and render a report of 50,000 samples (goal <= 10 s) and to open it in headless
Chromium until the sample browser shows its count (goal <= 3 s; where Chromium is installed)."""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from . import race, ratio, seconds


def _synthetic_run(out: Path, n_prompts: int = 25_000) -> float:
    """Two systems x ``n_prompts`` prompts with scores, categories and some long outputs."""
    from align.eval.run import EvalArgs, append_samples, summarise

    rng = random.Random(0)
    args = EvalArgs(systems=[{"name": "base", "model": "m"}, {"name": "tuned", "model": "n"}],
                    prompt_sets=[{"name": "chat", "dataset": "d.jsonl", "expect_field": "label"}],
                    scorers=["verifier", "refusal_string", "length"], output_dir=str(out))
    samples = []
    for system, p in (("base", 0.55), ("tuned", 0.6)):
        for i in range(n_prompts):
            text = " ".join(rng.choice(["the", "answer", "is", "<b>", "42", "sorry"]) for _ in range(rng.randint(5, 80)))
            samples.append({"system": system, "prompt_set": "chat", "index": i, "prompt": f"question {i}?", "output": text,
                            "finished": True, "tokens": len(text) // 4, "seconds": 0.01,
                            "row": {"label": rng.choice(["refuse", "respond"]), "category": rng.choice("abcde")},
                            "scores": {"verifier.correct": rng.random() < p, "refusal_string.refused": rng.random() < 0.2,
                                       "length.chars": len(text)}})
    out.mkdir(parents=True)
    append_samples(out / "samples.jsonl", samples)
    started = time.perf_counter()
    summary = summarise(samples, args)
    (out / "summary.json").write_text(json.dumps(summary))
    return time.perf_counter() - started


def report_time() -> dict[str, Any]:
    from align.report import ReportArgs, render

    with tempfile.TemporaryDirectory() as tmp:
        summarise_s = _synthetic_run(Path(tmp) / "run")
        started = time.perf_counter()
        page, _ = render(ReportArgs(runs=[str(Path(tmp) / "run")], output=str(Path(tmp) / "report.html")))
        render_s = time.perf_counter() - started
        size = page.stat().st_size
        opened = open_in_chromium(page)
    return {"report_seconds_50k_samples": round(render_s, 2), "summary_seconds_50k_samples": round(summarise_s, 2),
            "report_mib": round(size / 2**20, 2), **opened}


def open_in_chromium(page: Path, repeats: int = 3) -> dict[str, Any]:
    """Seconds from navigation until the sample browser has drawn its count, in a fresh tab each
    time (median and range of ``repeats``)."""
    import shutil
    import statistics

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return {"chromium_open_seconds": "chromium not installed"}
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        for _ in range(repeats):
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            started = time.perf_counter()
            tab.goto(page.as_uri())
            tab.wait_for_function("document.getElementById('count').textContent.length > 0")
            times.append(time.perf_counter() - started)
            tab.close()
        browser.close()
    return {"chromium_open_seconds": round(statistics.median(times), 2), "chromium_open_range": [round(min(times), 2), round(max(times), 2)]}


def throughput(profile: str, n: int = 256, tokens: int = 32) -> dict[str, Any]:
    """Generated tokens per second through ``align.generate.generate_outputs`` on each backend."""
    from align.generate import GenerateArgs, ModelStore, generate_outputs
    from align.testbed import build_testbed
    from align.testbed.datasets import self_correction

    build_testbed(profile)
    prompts = [r["problem"] for r in self_correction(1, n, 0)["eval"]]
    out: dict[str, Any] = {}
    backends = ["transformers"]
    try:
        import vllm  # noqa: F401

        backends.append("vllm")
    except ImportError:
        out["vllm"] = "not installed here (run in the vLLM venv)"
    stores, counted = {}, {}
    for backend in backends:
        args = GenerateArgs(prompts="<bench>", model="testbed:large-instruct", profile=profile, backend=backend,
                            max_new_tokens=tokens, batch_size=64, dtype="float32")
        stores[backend] = (args, ModelStore(args))  # one model (or engine) for every round

    def generate(backend: str):
        def fn():
            args, store = stores[backend]
            counted[backend] = sum(r["tokens"] for r in generate_outputs(args, prompts, store))
        return fn

    # wall clock: a vLLM engine may run in its own process, which this process's CPU time misses
    result = race({backend: generate(backend) for backend in backends}, rounds=3)
    for backend in backends:
        out[f"tokens_per_s.{backend}"] = round(counted[backend] / seconds(result, backend, "wall")["median"], 1)
    if "vllm" in backends:
        out["vllm_over_transformers"] = ratio(result, "transformers", "vllm", clock="wall")
    return out


def run(profile: str) -> dict[str, Any]:
    return {**report_time(), **throughput(profile)}
