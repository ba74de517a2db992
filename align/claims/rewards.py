"""``align reproduce overoptimization``: best-of-n against proxy reward ensembles (METHODS §R4).

Coste et al., "Reward Model Ensembles Help Mitigate Overoptimization", arXiv:2310.02743. Gold is
the testbed verifier; five proxy reward models (small-instruct backbone, seeds 0-4) are trained on
verifier-labelled pairs with 25% of the labels flipped. From small-instruct we draw N samples per
held-out prompt once, score them with every proxy, and estimate best-of-n for n = 1, 2, 4, ..., N/2
with the unbiased estimator (:func:`rewards.unbiased_best_of_n`), for a single proxy and the
ensemble aggregated by mean, WCO (min) and UWO (λ=0.5, population variance), each member
standardised on the samples (the reference policy's own outputs). Gold and proxy vs KL_BoN go to
``curves.png`` next to ``result.json``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from align.testbed import Testbed

PROXIES, LABEL_NOISE, SAMPLES, MAX_PROMPTS = 5, 0.25, 512, 100
RM_RECIPE = {"learning_rate": 3e-4, "max_steps": 600, "per_device_train_batch_size": 32, "n_train": 4000,
             "gradient_checkpointing": False, "save_strategy": "no"}
AGGREGATORS = {"single proxy": None, "mean": "mean", "WCO (min)": "min", "UWO (λ=0.5)": "uwo"}


def overoptimization(tb: "Testbed", n: int, out_dir: str | Path | None = None) -> dict[str, Any]:
    import torch

    from rewards import aggregate, hf_sampler, kl_best_of_n, load_ensemble, unbiased_best_of_n

    from align.trainers.reward_model import RewardArgs, train_reward
    from align.testbed import eval_problems, gold_reward

    tiny = tb.manifest["profile"] == "tiny"  # plumbing only: a handful of steps and samples
    recipe = {**RM_RECIPE, "max_steps": 20, "n_train": 256} if tiny else RM_RECIPE
    big_n = 64 if tiny else SAMPLES
    tok = tb.tokenizer()
    problems = eval_problems(min(n, MAX_PROMPTS))
    prompts = [[{"role": "user", "content": p.prompt}] for p in problems]
    with tempfile.TemporaryDirectory() as tmp:
        train_reward(RewardArgs(model=str(tb.path("small-instruct")), ensemble_size=PROXIES, label_noise=LABEL_NOISE,
                                output_dir=tmp, logging_steps=10**6, **recipe))
        ensemble = load_ensemble(tmp)
        torch.manual_seed(0)
        drawn = hf_sampler(tb.model("small-instruct"), tok, batch_size=512, max_new_tokens=8)(prompts, big_n)
        samples = [[s.completion for s in row] for row in drawn]
        flat_p = [p for p, s in zip(prompts, samples) for _ in s]
        flat_c = [c for s in samples for c in s]
        raw = ensemble.raw(flat_p, flat_c)  # [k, P*N]
    members = ((raw - raw.mean(1, keepdim=True)) / raw.std(1, keepdim=True)).view(PROXIES, len(prompts), big_n)
    gold = torch.tensor([gold_reward(c[-1]["content"], p.answer) for p, s in zip(problems, samples) for c in s],
                        dtype=torch.float64).view(len(prompts), big_n)
    ns = [2**i for i in range(big_n.bit_length() - 1)]  # 1 .. N/2
    curves: dict[str, dict[str, list[float]]] = {}
    top_picks: dict[str, dict[str, float]] = {}
    texts = [[c[-1]["content"] for c in s] for s in samples]
    for label, how in AGGREGATORS.items():
        if how is None:
            proxy = members[0]
        else:
            proxy = aggregate(members.reshape(PROXIES, -1), how, lam=0.5).view(len(prompts), big_n)
        top_picks[label] = _kinds([texts[i][int(j)] for i, j in enumerate(proxy.argmax(1))], problems)
        curves[label] = {
            "gold": [round(sum(unbiased_best_of_n(proxy[i], gold[i], k) for i in range(len(prompts))) / len(prompts), 4) for k in ns],
            "proxy": [round(sum(unbiased_best_of_n(proxy[i], proxy[i], k) for i in range(len(prompts))) / len(prompts), 4) for k in ns],
        }
    kl = [round(kl_best_of_n(k), 4) for k in ns]
    single = curves["single proxy"]["gold"]
    peak = max(range(len(ns)), key=lambda i: single[i])
    falls = peak < len(ns) - 1 and single[peak] - single[-1] >= 0.01
    robust = {k: curves[k]["gold"][-1] for k in ("WCO (min)", "UWO (λ=0.5)")}
    result = {
        "claim": "a single proxy's gold score peaks and falls with n while WCO/UWO hold up better",
        "metric": f"verifier accuracy of best-of-n (unbiased estimator from N={big_n} samples) on {len(prompts)} held-out chat prompts",
        "value": round(min(robust.values()), 4),
        "baseline": single[-1],
        "holds": falls and all(v > single[-1] for v in robust.values()),
        "sweep": {"n": ns, "kl_bon": kl, "curves": curves, "single_peak_n": ns[peak],
                  "proxy_heldout_pair_accuracy": _heldout_accuracy(ensemble), "samples_correct": round(float(gold.mean()), 4),
                  "samples_finished": round(sum(s.finished for row in drawn for s in row) / gold.numel(), 4),
                  "samples_kinds": _kinds([t for row in texts for t in row], [p for p in problems for _ in range(big_n)]),
                  "best_of_all_kinds": top_picks,
                  "recipe": {**recipe, "proxies": PROXIES, "label_noise": LABEL_NOISE}},
    }
    if out_dir is not None:
        result["plot"] = str(_plot(Path(out_dir) / "curves.png", kl, curves))
    return result


def _kinds(texts: list[str], problems: list) -> dict[str, float]:
    """Fractions of completions that are correct, a wrong number, a wrong sign only, or unparseable."""
    from align.testbed.arithmetic import parse_answer

    counts = {"correct": 0, "wrong_number": 0, "sign_flipped": 0, "malformed": 0}
    for text, p in zip(texts, problems):
        value = parse_answer(text)
        kind = ("malformed" if value is None else "correct" if value == p.answer
                else "sign_flipped" if value == -p.answer else "wrong_number")
        counts[kind] += 1
    return {k: round(v / max(1, len(texts)), 4) for k, v in counts.items()}


def _heldout_accuracy(ensemble: Any, n_pairs: int = 300) -> list[float]:
    """Each proxy's accuracy on clean held-out verifier-labelled pairs."""
    from align.testbed.datasets import preference_pairs

    pairs = preference_pairs(8, n_pairs, 0, True)["eval"]
    prompts = [r["prompt"] for r in pairs]
    chosen = ensemble.raw(prompts, [r["chosen"] for r in pairs])
    rejected = ensemble.raw(prompts, [r["rejected"] for r in pairs])
    return [round(float(a), 4) for a in (chosen > rejected).double().mean(1)]


def _plot(path: Path, kl: list[float], curves: dict[str, dict[str, list[float]]]) -> Path:
    """Gold and proxy score vs KL_BoN, one line per aggregator (PNG, written atomically)."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gold_ax, proxy_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for label, curve in curves.items():
        gold_ax.plot(kl, curve["gold"], marker="o", label=label)
        proxy_ax.plot(kl, curve["proxy"], marker="o", label=label)
    gold_ax.set(xlabel="KL_BoN = log n - (n-1)/n", ylabel="gold (verifier accuracy)", title="gold score of best-of-n")
    proxy_ax.set(xlabel="KL_BoN", ylabel="proxy score (standardised)", title="proxy score of best-of-n")
    gold_ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
