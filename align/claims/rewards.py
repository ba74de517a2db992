"""``align reproduce overoptimization``: best-of-n against proxy reward ensembles.

Coste et al., "Reward Model Ensembles Help Mitigate Overoptimization", arXiv:2310.02743. Gold is
the testbed verifier. Per seed, five proxy reward models (small-instruct backbone) are trained on
pairs sampled from small-instruct itself and labelled by the verifier (as the paper's preference
data comes from the policy; topped up with synthetic pairs where the policy yields too few), with 25% of the labels flipped, each on its own disjoint fifth of the
pairs. From small-instruct we draw N samples per held-out prompt, score them with every proxy, and
estimate best-of-n for n = 1, 2, 4, ..., N/2 with the unbiased estimator
(:func:`rewards.unbiased_best_of_n`), for every member alone and the ensemble aggregated by mean,
WCO (min) and UWO (population variance, λ chosen on dev), each member standardised on the samples
(the reference policy's own outputs). Gold and proxy vs KL_BoN go to ``curves.png``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from align.testbed import Testbed

PROXIES, LABEL_NOISE, SAMPLES, MAX_PROMPTS = 5, 0.25, 512, 100
SEEDS = (0, 1, 2)
LAMBDAS = (0.1, 0.5, 1.0)  # UWO's variance penalty, chosen on dev
RM_RECIPE = {"learning_rate": 3e-4, "max_steps": 600, "per_device_train_batch_size": 32, "n_train": 4000,
             "gradient_checkpointing": False, "save_strategy": "no", "member_data": "disjoint"}


def _proxies_and_samples(tb: "Testbed", problems: list, seed: int, recipe: dict, n_samples: int) -> tuple[Any, Any, list, dict]:
    """Train one seed's ensemble, draw ``n_samples`` per prompt from small-instruct; return the
    standardised member scores ``[k, P, N]``, gold ``[P, N]``, the sample texts and facts about
    the proxies (held-out pair accuracy, how many training pairs were on-policy)."""
    import torch

    from rewards import hf_sampler, load_ensemble

    from align.testbed import gold_reward
    from align.trainers.reward_model import RewardArgs, train_reward

    from datasets import Dataset

    from .training import policy_pairs

    tok = tb.tokenizer()
    prompts = [[{"role": "user", "content": p.prompt}] for p in problems]
    with tempfile.TemporaryDirectory() as tmp:
        pairs, on_policy = policy_pairs(tb, 100 + seed, recipe["n_train"])
        Dataset.from_list(pairs).save_to_disk(f"{tmp}/pairs")
        train_reward(RewardArgs(model=str(tb.path("small-instruct")), dataset=f"{tmp}/pairs", ensemble_size=PROXIES, label_noise=LABEL_NOISE,
                                seed=PROXIES * seed, output_dir=f"{tmp}/rm", logging_steps=10**6, **recipe))
        ensemble = load_ensemble(f"{tmp}/rm")
        torch.manual_seed(seed)
        drawn = hf_sampler(tb.model("small-instruct"), tok, batch_size=512, max_new_tokens=8)(prompts, n_samples)
        samples = [[s.completion for s in row] for row in drawn]
        raw = ensemble.raw([p for p, s in zip(prompts, samples) for _ in s], [c for s in samples for c in s])  # [k, P*N]
        held_out = _heldout_accuracy(ensemble)
    members = ((raw - raw.mean(1, keepdim=True)) / raw.std(1, keepdim=True)).view(PROXIES, len(prompts), n_samples)
    gold = torch.tensor([gold_reward(c[-1]["content"], p.answer) for p, s in zip(problems, samples) for c in s],
                        dtype=torch.float64).view(len(prompts), n_samples)
    facts = {"member_heldout_pair_accuracy": held_out, "on_policy_pairs": on_policy}
    return members.double(), gold, [[c[-1]["content"] for c in s] for s in samples], facts


def _best_of(proxy: Any, target: Any, rows: list[int], ns: list[int]) -> Any:
    """``[len(ns), len(rows)]``: the unbiased best-of-n value of ``target`` ranked by ``proxy``, per prompt."""
    import numpy as np

    from rewards import unbiased_best_of_n

    return np.array([[float(unbiased_best_of_n(proxy[i], target[i], k)) for i in rows] for k in ns])


def overoptimization(tb: "Testbed", n: int, out_dir: str | Path | None = None, seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    """Coste et al. 2310.02743: best-of-n against one proxy over-optimises (gold peaks, then
    falls); WCO and UWO ensembles mitigate it.

    * Premise, per seed on dev prompts: every member ranks the policy's samples by gold better than
      chance (AUROC >= 0.6); members disagree (mean pairwise correlation of their scores <= 0.95);
      single proxies do over-optimise (mean over members of peak gold - gold at the largest n >= 0.01).
    * Selection: UWO's λ from 0.1, 0.5, 1 on dev (gold at the largest n), per seed.
    * Arms (test prompts, gold of best-of-n at the largest n): every member alone, their average
      ("single proxy", what one proxy gives in expectation), mean, WCO, UWO. Holds when WCO minus
      single is above 0 over the whole interval and so is UWO minus single (a condition).
    """
    import numpy as np
    import torch

    from rewards import aggregate, kl_best_of_n

    from align.metrics import auroc
    from align.testbed import eval_problems

    from .protocol import check, dev_test_split, judge, paired_difference, premise, select_on_dev

    tiny = tb.manifest["profile"] == "tiny"  # plumbing only: a handful of steps and samples
    recipe = {**RM_RECIPE, "max_steps": 2, "n_train": 64, "per_device_train_batch_size": 8} if tiny else RM_RECIPE
    big_n = 64 if tiny else SAMPLES
    problems = eval_problems(min(n, MAX_PROMPTS))
    dev, test = dev_test_split(len(problems), 0.3, seed=0)
    ns = [2**i for i in range(big_n.bit_length() - 1)]  # 1 .. N/2
    arms: dict[str, list] = {}
    curves: dict[str, dict[str, list]] = {}
    per_seed, aurocs, corrs, falls = [], [], [], []
    for seed in seeds:
        members, gold, texts, facts = _proxies_and_samples(tb, problems, seed, recipe, big_n)
        flat = members[:, dev].reshape(PROXIES, -1)
        right = gold[dev].reshape(-1) > 0.5
        # no right (or no wrong) sample: no ranking to check, counted as chance
        aurocs.append(min(auroc(m, right) for m in flat) if 0 < int(right.sum()) < right.numel() else 0.5)
        c = torch.corrcoef(flat)
        corrs.append(float(c[~torch.eye(PROXIES, dtype=torch.bool)].mean()))
        single_dev = np.mean([_best_of(members[j], gold, dev, ns).mean(1) for j in range(PROXIES)], axis=0)
        falls.append(float(single_dev.max() - single_dev[-1]))
        uwo = {lam: aggregate(members.reshape(PROXIES, -1), "uwo", lam=lam).view_as(gold) for lam in LAMBDAS}
        selection = select_on_dev(list(LAMBDAS), lambda lam: _best_of(uwo[lam], gold, dev, ns[-1:]).mean(), n_dev=len(dev))
        proxies = {f"member {j}": members[j] for j in range(PROXIES)} | {
            "mean": aggregate(members.reshape(PROXIES, -1), "mean").view_as(gold),
            "WCO (min)": aggregate(members.reshape(PROXIES, -1), "min").view_as(gold),
            "UWO (λ chosen on dev)": uwo[selection["chosen"]]}
        gold_curves = {k: _best_of(v, gold, test, ns) for k, v in proxies.items()}
        proxy_curves = {k: _best_of(v, v, test, ns) for k, v in proxies.items()}
        gold_curves["single proxy"] = np.mean([gold_curves[f"member {j}"] for j in range(PROXIES)], axis=0)
        proxy_curves["single proxy"] = np.mean([proxy_curves[f"member {j}"] for j in range(PROXIES)], axis=0)
        for k, v in gold_curves.items():
            arms.setdefault(k, []).append(v[-1])
            curves.setdefault(k, {"gold": [], "proxy": []})
            curves[k]["gold"].append(v.mean(1))
            curves[k]["proxy"].append(proxy_curves[k].mean(1))
        per_seed.append({"seed": seed, "lambda": selection["chosen"], "dev": selection["dev_values"], **facts,
                         "member_auroc_dev_min": round(aurocs[-1], 4), "member_corr_dev": round(corrs[-1], 4),
                         "single_fall_dev": round(falls[-1], 4), "samples_correct": round(float(gold.mean()), 4),
                         "best_of_all_kinds": {k: _kinds([texts[i][int(j)] for i, j in zip(test, v[test].argmax(1))], [problems[i] for i in test])
                                               for k, v in proxies.items() if not k.startswith("member")}})
    curves = {k: {m: [round(float(x), 4) for x in np.mean(v[m], axis=0)] for m in ("gold", "proxy")} for k, v in curves.items()}
    uwo_vs_single = paired_difference(arms["UWO (λ chosen on dev)"], arms["single proxy"], bounds=(0, 1))
    kl = [round(kl_best_of_n(k), 4) for k in ns]
    result = judge(
        claim="WCO ensembles of proxy reward models mitigate best-of-n over-optimisation: more gold than a single proxy at large n (UWO too)",
        metric=f"verifier accuracy of best-of-{ns[-1]} (unbiased estimator from N={big_n} samples) on {len(test)} test chat prompts",
        bounds=(0, 1),
        premise=premise(check("every member's AUROC for gold among the policy's samples (dev, min over seeds)", min(aurocs), ">=", 0.6),
                        check("members' mean pairwise score correlation (dev, max over seeds)", max(corrs), "<=", 0.95),
                        check("single proxies over-optimise: peak gold - gold at the largest n (dev, min over seeds)", min(falls), ">=", 0.01)),
        arms=arms, treated="WCO (min)", control="single proxy",
        conditions=[check("UWO - single proxy, interval low", uwo_vs_single["low"], ">", 0)],
        selection={"split": "dev", "n_dev": len(dev), "grid": [str(x) for x in LAMBDAS], "rule": "UWO λ: max dev gold at the largest n, per seed",
                   "chosen": {str(p["seed"]): p["lambda"] for p in per_seed}},
        seeds=list(seeds), per_seed=per_seed, n=ns, kl_bon=kl, curves=curves, uwo_minus_single=uwo_vs_single,
        recipe={**recipe, "proxies": PROXIES, "label_noise": LABEL_NOISE},
    )
    if out_dir is not None:
        shown = {k: v for k, v in curves.items() if not k.startswith("member")}
        result["plot"] = str(_plot(Path(out_dir) / "curves.png", kl, shown))
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
