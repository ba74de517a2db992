"""Is the refusal-token control token learned? Held-out first-token accuracy and AUROC of
p[refuse] per fixture, training kind (full / LoRA) and ``control_init`` (issue #25).

A quality table, not a timing: each row is one training run (seed 0) evaluated once on held-out
prompts with :func:`align.trainers.refusal.control_token_metrics`. Training seconds are reported
for sizing only.

* ``--profile full|tiny``: testbed small-instruct on ``testbed:refusal``; full profile with the
  recipe of ``configs/refusal-testbed.yaml`` (300 steps, batch 16, lr 5e-4), tiny with the CI
  test's (800 steps, 1000 rows, lr 3e-3); 500 held-out prompts.
* ``--profile smollm2``: SmolLM2-135M-Instruct on ``data/refusal/coconot`` with the real claims'
  recipe (16 steps, batch 8, lr 1e-4, max_length 128); the 269 test prompts.

LoRA: r 8 on every linear layer, embeddings and head trained in full, at 10x the rate (LoRA's
usual higher rate; at the full fine-tune's rate the adapters barely move in these step counts),
except on tiny, where 10x diverges: 1e-2 there.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

LORA = {"lora_r": 8}


def _runs(profile: str) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    if profile == "smollm2":
        from align.claims.refusal import REAL_RECIPE

        recipe = dict(REAL_RECIPE)
        inits = ["mean", "name", "probe"]
    else:
        from align.claims.refusal import RECIPE

        recipe = dict(RECIPE) if profile == "full" else {**RECIPE, "max_steps": 800, "n_train": 1000, "learning_rate": 3e-3}
        inits = ["mean", "probe"]
    # tiny: 10x (3e-2) diverges (held-out accuracy 0.0 / 0.16 measured), 1e-2 does not
    lora = {**LORA, "learning_rate": 1e-2 if profile == "tiny" else 10 * recipe["learning_rate"]}
    runs = [(f"full, {i}", {"control_init": i}) for i in inits]
    runs += [(f"LoRA r 8, {i}", {"control_init": i, **lora}) for i in ("mean", "probe")]
    return recipe, runs


def _held_out(profile: str) -> tuple[list, list[str], list[int], dict[str, str], str, str]:
    """Prompts, their categories, the rows to report, the refusal-token map, model and dataset."""
    from align.claims import refusal as claims

    if profile == "smollm2":
        from align.coconot import CATEGORIES

        prompts, cats, _rows, _dev, test = claims._real_rows()
        return prompts, cats, test, {c: "[refuse]" for c in CATEGORIES}, claims.REAL_MODEL, str(claims.REAL_DATA / "train.jsonl")
    from align.testbed import build_testbed

    prompts, cats = claims._eval_rows(500)
    model = str(build_testbed(profile).path("small-instruct"))
    return prompts, cats, list(range(len(prompts))), {c: "[refuse]" for c in claims.CATEGORIES}, model, "testbed:refusal"


def refusal_tokens(profile: str) -> dict[str, Any]:
    from align.models import load_causal_lm, load_tokenizer
    from align.trainers.refusal import RefusalArgs, control_token_metrics, train_refusal
    from decoding.refusal import first_token_probs

    recipe, runs = _runs(profile)
    prompts, cats, rows, tokens, model, dataset = _held_out(profile)
    out: dict[str, Any] = {"recipe": recipe, "held_out_rows": len(rows)}
    for name, options in runs:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = train_refusal(RefusalArgs(**{**recipe, **options}, model=model, dataset=dataset, output_dir=tmp, seed=0,
                                               report_to=[], disable_tqdm=True, save_strategy="no", use_cpu=True))
            seconds = time.perf_counter() - start
            tok, trained = load_tokenizer(tmp), load_causal_lm(tmp, "float32").eval()
            metrics = control_token_metrics(first_token_probs(trained, tok, prompts), tok, cats, rows, tokens)
        out[name] = {**metrics, "train_seconds": round(seconds, 1), "learning_rate": options.get("learning_rate", recipe["learning_rate"]),
                     "probe_in_sample": result["probe"].get("first_token_accuracy_after")}
        print(name, out[name], flush=True)
    return out
