"""Training claims checked on the testbed (``align reproduce NAME``), under the rules of
:mod:`align.claims.protocol`.

All start from small-instruct and train on verifier-labelled arithmetic data (``RECIPE``, the values
of ``configs/dpo-testbed.yaml``; the learning rate and step count are chosen per method and seed
from ``GRID`` on dev problems). Accuracy is sampled (T=1, ``SAMPLES`` per prompt: the expected
verifier reward of the policy, which is what preference training optimises) on held-out chat
problems split into dev (selection) and test (the reported numbers); greedy accuracy is reported
beside it. Seeds (``SEEDS``) set the training data, the training order and the sampling.
"""

from __future__ import annotations

import random
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from align.testbed import Testbed

RECIPE = {"beta": 0.1, "learning_rate": 5e-5, "max_steps": 50, "per_device_train_batch_size": 8, "logging_steps": 10,
          "gradient_checkpointing": False, "save_strategy": "no"}
N_PAIRS = 512
SAMPLES = 4
SEEDS = (0, 1, 2)
GRID = tuple({"learning_rate": lr, "max_steps": steps} for lr in (5e-5, 2e-4, 1e-3) for steps in (50, 200))
# dpo-gold and rpo-gold: down to lr 1e-5, towards the untrained policy (lr -> 0), where DPO's dev
# accuracy was best on GRID (issue #29: the lowest corner at every seed)
GOLD_GRID = tuple({"learning_rate": lr, "max_steps": steps} for lr in (1e-5, 2e-5, 5e-5, 2e-4, 1e-3) for steps in (50, 200))
ETAS = (0.25, 1.0, 4.0)  # RPO's NLL weight (token_mean), chosen on dev with lr and steps
TINY_GRID = ({"learning_rate": 5e-5, "max_steps": 2}, {"learning_rate": 1e-3, "max_steps": 2})  # plumbing only
NAMES = {"learning_rate": "lr", "max_steps": "steps", "rpo_eta": "eta"}


def _grid(tb: "Testbed", full: tuple[dict, ...] = GRID) -> tuple[dict, ...]:
    return full if tb.manifest["profile"] == "full" else TINY_GRID


def _steps(tb: "Testbed", steps: int) -> int:
    return steps if tb.manifest["profile"] == "full" else 2


def _n_pairs(tb: "Testbed") -> int:
    return N_PAIRS if tb.manifest["profile"] == "full" else 32


def policy_accuracy(model: Any, tok: Any, problems: list, samples: int = SAMPLES, seed: int = 0) -> dict[str, Any]:
    """Greedy accuracy, sampled (T=1) accuracy, and the per-prompt sampled scores (for paired tests)."""
    import torch

    from decoding.generate import generate_with

    from align.testbed import gold_reward

    chat = [[{"role": "user", "content": p.prompt}] for p in problems]
    greedy = generate_with(model, tok, chat, do_sample=False, max_new_tokens=8)
    torch.manual_seed(seed)
    per_prompt = [0.0] * len(problems)
    for _ in range(samples):
        for i, ((text, done), p) in enumerate(zip(generate_with(model, tok, chat, do_sample=True, temperature=1.0, max_new_tokens=8), problems)):
            per_prompt[i] += gold_reward(text, p.answer, done) / samples
    return {
        "greedy": round(sum(gold_reward(t, p.answer, d) for (t, d), p in zip(greedy, problems)) / len(problems), 4),
        "sampled": round(sum(per_prompt) / len(problems), 4),
        "per_prompt": per_prompt,
    }


def chosen_logps(model: Any, tok: Any, rows: list[dict]) -> list[float]:
    """Summed log π(chosen | prompt) of each preference row (the likelihood displacement probe)."""
    import torch

    from align.diagnostics.entanglement import probe_pairs, sequence_logp

    with torch.no_grad():
        return [float(sequence_logp(model, prompt, chosen)) for (prompt, chosen), _ in probe_pairs(tok, rows)]


def chosen_logp(model: Any, tok: Any, rows: list[dict]) -> float:
    """Mean summed log π(chosen | prompt) over preference rows."""
    values = chosen_logps(model, tok, rows)
    return round(sum(values) / len(values), 4)


def _train(kind: str, tb: "Testbed", dataset: Any, out: str, **overrides: Any) -> tuple[Any, dict]:
    """Train small-instruct with the recipe on ``dataset`` (rows), return the trained model and result."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    path = f"{out}/data"
    Dataset.from_list([dict(r) for r in dataset]).save_to_disk(path)
    common = {"model": str(tb.path("small-instruct")), "dataset": path, "output_dir": f"{out}/model", **RECIPE, **overrides}
    if kind == "bco":
        from align.trainers.bco import BCOArgs, train_bco

        result = train_bco(BCOArgs(**common))
    else:
        from align.trainers.dpo import DPOArgs, train_dpo

        result = train_dpo(DPOArgs(loss=kind, **common))
    return AutoModelForCausalLM.from_pretrained(f"{out}/model"), result


def _pairs(n: int, seed: int = 0) -> list[dict]:
    from align.testbed.datasets import preference_pairs

    return [dict(r) for r in preference_pairs(n, 8, seed=seed, conversational=True)["train"]]


def on_policy_pairs(model: Any, tok: Any, n: int, seed: int = 0, samples: int = 8) -> list[dict]:
    """:func:`align.testbed.datasets.policy_pairs`: the verifier-labelled pairs of ``model``'s own samples."""
    from align.testbed.datasets import policy_pairs as sampled

    return sampled(model, tok, n, seed, samples)


def policy_pairs(tb: "Testbed", seed: int, n: int | None = None) -> tuple[list[dict], int]:
    """``n`` (default ``N_PAIRS``) pairs from small-instruct: on-policy ones, topped up with synthetic
    pairs when the policy rarely gets both a right and a wrong answer (the tiny testbed's does); the
    count of on-policy pairs is returned so the premise can report it."""
    n = _n_pairs(tb) if n is None else n
    pairs = on_policy_pairs(tb.model("small-instruct"), tb.tokenizer(), n, seed)
    return pairs + (_pairs(n - len(pairs), seed) if len(pairs) < n else []), len(pairs)


def _curve(result: dict, key: str = "logps/chosen") -> list[list[float]]:
    return [[h["step"], round(h[key], 4)] for h in result["log_history"] if key in h]


def _point(p: dict) -> str:
    return " ".join(f"{NAMES[k]}={v:g}" for k, v in p.items())


def _problems(n: int) -> tuple[list, list]:
    from align.testbed import eval_problems

    from .protocol import dev_test_split

    problems = eval_problems(n)
    dev, test = dev_test_split(len(problems), 0.3, seed=0)
    return [problems[i] for i in dev], [problems[i] for i in test]


def _grid_runs(kind: str, tb: "Testbed", rows: list[dict], seed: int, dev: list, test: list, grid: tuple[dict, ...] | None = None,
               **overrides: Any) -> dict[str, Any]:
    """Train ``kind`` at every point of ``grid`` (default ``GRID``; training seed ``seed``), score
    dev and test, and keep the point chosen on dev alone. Returns the selection record and the
    chosen point's scores."""
    from .protocol import select_on_dev

    tok, runs = tb.tokenizer(), {}
    with tempfile.TemporaryDirectory() as out:
        for i, point in enumerate(grid or _grid(tb)):
            model, result = _train(kind, tb, rows, f"{out}/{i}", seed=seed, data_seed=seed, **point, **overrides)
            runs[_point(point)] = (policy_accuracy(model, tok, dev, seed=seed), policy_accuracy(model, tok, test, seed=seed), result)
    selection = select_on_dev(list(runs), lambda p: runs[p][0]["sampled"], n_dev=len(dev))
    chosen = runs[selection["chosen"]]
    return {"selection": selection, "dev": chosen[0], "test": chosen[1], "result": chosen[2]}


def _untrained(tb: "Testbed", dev: list, test: list, seed: int) -> tuple[dict, dict]:
    model = tb.model("small-instruct")
    return policy_accuracy(model, tb.tokenizer(), dev, seed=seed), policy_accuracy(model, tb.tokenizer(), test, seed=seed)


def _selection(grid: tuple[dict, ...], per_seed: list[dict], key: str, n_dev: int) -> dict[str, Any]:
    from .protocol import unit

    return {"split": "dev", "n_dev": n_dev, "grid": [_point(p) for p in grid], "rule": "max dev sampled accuracy, per seed and method",
            "chosen": {unit(r): r[key] for r in per_seed}}


def _units(tb: "Testbed", seeds: tuple[int, ...], builds: "Sequence[Testbed] | None") -> list[tuple["Testbed", int, dict]]:
    """``(base build, seed, record)`` for every seed of every base build (``builds``, or ``tb``
    alone); ``record`` starts the row's ``per_seed`` entry (its build only when there are several)."""
    from .protocol import row

    return [(b, s, row(b.manifest["seed"], s, builds)) for b in builds or [tb] for s in seeds]


def _found(tb: "Testbed", counts: list[int]) -> dict:
    from .protocol import check

    n = _n_pairs(tb)
    return check(f"on-policy pairs found, of {n} (min over seeds; synthetic ones fill the rest)", min(counts), ">=", n // 2)


def _room(before_dev: list[float]) -> dict:
    from .protocol import check

    return check("untrained sampled accuracy on dev (mean over seeds) leaves room: <= 0.9", sum(before_dev) / len(before_dev), "<=", 0.9)


def dpo_gold(tb: "Testbed", n: int, seeds: tuple[int, ...] = SEEDS, builds: "Sequence[Testbed] | None" = None) -> dict:
    """DPO 2305.18290 on verifier-labelled pairs raises small-instruct's verifier accuracy.

    The data is DPO's: pairs sampled from the policy being trained (y ~ π_SFT) and labelled by
    the gold reward (:func:`on_policy_pairs`). Also reported: DPO on the testbed's synthetic
    pairs (gold answer vs a plausible slip the policy may never make), which the paper does not
    assume. Premise: the untrained policy leaves room (dev sampled accuracy <= 0.9) and its own
    log-probs do not already rank the pairs (chosen above rejected on <= 0.95 of the training
    pairs). Selection: learning rate and steps from ``GOLD_GRID`` on dev, per seed and data (down to
    lr 1e-5: towards the untrained policy). Holds when DPO's test sampled accuracy minus the
    untrained policy's is above 0 over the whole interval. With ``builds``, all of it runs on
    every base build (the outermost level of the interval)."""
    import numpy as np

    from .protocol import check, judge, levels, premise

    dev, test = _problems(n)
    arms: dict[str, list] = {"dpo": [], "small-instruct (untrained)": [], "dpo on synthetic pairs": []}
    per_seed, before_dev, ranked, found = [], [], [], []
    grid = _grid(tb, GOLD_GRID)
    for base, seed, record in _units(tb, seeds, builds):
        model0, tok = base.model("small-instruct"), base.tokenizer()
        pairs, on_policy = policy_pairs(base, seed)
        found.append(on_policy)
        b_dev, b_test = _untrained(base, dev, test, seed)
        before_dev.append(b_dev["sampled"])
        margin = np.array(chosen_logps(model0, tok, pairs)) - np.array(chosen_logps(model0, tok, [{**r, "chosen": r["rejected"]} for r in pairs]))
        ranked.append(float((margin > 0).mean()))
        run, synthetic = _grid_runs("dpo", base, pairs, seed, dev, test, grid), _grid_runs("dpo", base, _pairs(_n_pairs(tb), seed), seed, dev, test, grid)
        arms["dpo"].append(run["test"]["per_prompt"])
        arms["small-instruct (untrained)"].append(b_test["per_prompt"])
        arms["dpo on synthetic pairs"].append(synthetic["test"]["per_prompt"])
        per_seed.append({**record, "on_policy_pairs": on_policy, "point": run["selection"]["chosen"], "dev": run["selection"]["dev_values"],
                         "synthetic": {"point": synthetic["selection"]["chosen"], "dev": synthetic["selection"]["dev_values"]},
                         "greedy": {"dpo": run["test"]["greedy"], "untrained": b_test["greedy"], "dpo on synthetic pairs": synthetic["test"]["greedy"]}})
    return judge(
        claim="DPO on verifier-labelled pairs sampled from the policy raises small-instruct's verifier accuracy",
        metric=f"sampled (T=1, {SAMPLES} per prompt) verifier accuracy on {len(test)} test chat problems",
        bounds=(0, 1),
        premise=premise(_room(before_dev), _found(tb, found), check("untrained policy ranks chosen above rejected (on-policy training pairs, max over seeds)", max(ranked), "<=", 0.95)),
        arms=arms, treated="dpo", control="small-instruct (untrained)",
        selection=_selection(grid, per_seed, "point", len(dev)), **levels(per_seed, builds), per_seed=per_seed,
        recipe={**RECIPE, "pairs": _n_pairs(tb), "data": "on-policy: 8 samples per training problem, T=1"},
    )


def rpo_gold(tb: "Testbed", n: int, seeds: tuple[int, ...] = SEEDS, builds: "Sequence[Testbed] | None" = None) -> dict:
    """RPO 2405.16436 on ``dpo-gold``'s data: DPO plus η x the chosen responses' NLL
    (token mean) raises small-instruct's verifier accuracy, and by more than DPO alone.

    The paper's premise is that DPO over-optimises the preference and lowers the likelihood of
    the chosen (right) answers (``rpo-displacement`` measures it here) and that the NLL term
    mitigates it; iterative RPO on GSM8K reports DPO alone failing where DPO + NLL improves. Data:
    the on-policy verifier-labelled pairs of :func:`on_policy_pairs` (the same pairs for DPO and
    RPO at a seed). Selection, per seed on dev sampled accuracy: DPO's lr and steps from
    ``GOLD_GRID``, RPO's from ``GOLD_GRID`` x η in ``ETAS``. Pre-registered: RPO - untrained above 0
    over the whole interval (the test) and RPO - DPO above 0 over the whole interval (a
    condition), on test sampled accuracy. Premise as ``dpo-gold``'s. With ``builds``, all of it
    runs on every base build (the outermost level of the interval)."""
    from .protocol import check, judge, levels, paired_difference, premise, unit

    dev, test = _problems(n)
    arms: dict[str, list] = {"rpo": [], "dpo": [], "small-instruct (untrained)": []}
    per_seed, before_dev, found = [], [], []
    grid = _grid(tb, GOLD_GRID)
    rpo_grid = tuple({**p, "rpo_eta": eta} for p in grid for eta in (ETAS if tb.manifest["profile"] == "full" else (1.0,)))
    for base, seed, record in _units(tb, seeds, builds):
        pairs, on_policy = policy_pairs(base, seed)
        found.append(on_policy)
        b_dev, b_test = _untrained(base, dev, test, seed)
        before_dev.append(b_dev["sampled"])
        dpo, rpo = _grid_runs("dpo", base, pairs, seed, dev, test, grid), _grid_runs("rpo", base, pairs, seed, dev, test, rpo_grid)
        for name, scores in (("rpo", rpo["test"]), ("dpo", dpo["test"]), ("small-instruct (untrained)", b_test)):
            arms[name].append(scores["per_prompt"])
        per_seed.append({**record, "on_policy_pairs": on_policy, "dpo": dpo["selection"]["chosen"], "rpo": rpo["selection"]["chosen"],
                         "dev": {"untrained": b_dev["sampled"], "dpo": dpo["selection"]["dev_values"], "rpo": rpo["selection"]["dev_values"]},
                         "greedy": {"rpo": rpo["test"]["greedy"], "dpo": dpo["test"]["greedy"], "untrained": b_test["greedy"]},
                         "rpo_train_nll_end": _last(rpo["result"], "nll_loss"), "rpo_train_logps_chosen": _curve(rpo["result"])})
    rows = levels(per_seed, builds)
    rpo_vs_dpo = paired_difference(arms["rpo"], arms["dpo"], builds=rows["builds"], bounds=(0, 1))
    return judge(
        claim="RPO (DPO + NLL on the chosen) on verifier-labelled on-policy pairs raises small-instruct's verifier accuracy, and more than DPO",
        metric=f"sampled (T=1, {SAMPLES} per prompt) verifier accuracy on {len(test)} test chat problems",
        bounds=(0, 1),
        premise=premise(_room(before_dev), _found(tb, found)),
        arms=arms, treated="rpo", control="small-instruct (untrained)",
        conditions=[check("rpo - dpo, interval low", rpo_vs_dpo["low"], ">", 0)],
        selection={"split": "dev", "n_dev": len(dev), "grid": [_point(p) for p in grid + rpo_grid],
                   "rule": "max dev sampled accuracy, per seed and method (RPO also over eta)",
                   "chosen": {unit(r): {"dpo": r["dpo"], "rpo": r["rpo"]} for r in per_seed}},
        **rows, per_seed=per_seed, rpo_minus_dpo=rpo_vs_dpo,
        recipe={**RECIPE, "pairs": _n_pairs(tb), "sft_reduction": "token_mean", "data": "on-policy: 8 samples per training problem, T=1"},
    )


def _last(result: dict, key: str) -> float | None:
    values = [h[key] for h in result["log_history"] if key in h]
    return round(values[-1], 4) if values else None


def rpo_displacement(tb: "Testbed", n: int, seeds: tuple[int, ...] = SEEDS, steps: int = 200,
                     builds: "Sequence[Testbed] | None" = None) -> dict:
    """RPO 2405.16436: DPO lowers the chosen log-probability over training (likelihood
    displacement); RPO's NLL term largely stops it.

    The recipe is fixed beforehand (β 0.1, lr 5e-5, 200 steps, η 1, token_mean): nothing is
    chosen from results. Premise, on dev held-out pairs: DPO does displace (its mean drop of log
    π(chosen) > 0 at every seed). Arms: per held-out test pair, the change of log π(chosen) after
    training. Holds when RPO's change minus DPO's is above 0 over the whole interval and RPO's
    mean drop is below half of DPO's. With ``builds``, every base build's small-instruct is trained
    at every seed (the build is the outermost level of the interval)."""
    import numpy as np

    from align.testbed.datasets import preference_pairs

    from .protocol import check, dev_test_split, judge, levels, premise, row

    steps = _steps(tb, steps)
    held_out = [dict(r) for r in preference_pairs(8, 200, 0, True)["eval"]]
    dev_i, test_i = dev_test_split(len(held_out), 0.3, seed=0)
    arms: dict[str, list] = {"rpo": [], "dpo": []}
    per_seed, dev_drops, curves, starts = [], [], {}, []
    with tempfile.TemporaryDirectory() as out:
        for base in builds or [tb]:
            tok = base.tokenizer()
            start = np.array(chosen_logps(base.model("small-instruct"), tok, held_out))
            starts.append(start[test_i].mean())
            for seed in seeds:
                record = row(base.manifest["seed"], seed, builds)
                name = f"build {base.manifest['seed']} seed {seed}" if builds else f"seed {seed}"
                for kind in ("dpo", "rpo"):
                    model, result = _train(kind, base, _pairs(_n_pairs(tb), seed), f"{out}/{kind}{seed}", max_steps=steps, seed=seed, data_seed=seed)
                    change = np.array(chosen_logps(model, tok, held_out)) - start
                    arms[kind].append(change[test_i])
                    record[kind] = {"dev_change": round(float(change[dev_i].mean()), 4), "test_change": round(float(change[test_i].mean()), 4)}
                    curves[f"{kind} {name}"] = _curve(result)
                dev_drops.append(-record["dpo"]["dev_change"])
                per_seed.append(record)
    drop = {k: -float(np.mean(v)) for k, v in arms.items()}
    return judge(
        claim="DPO lowers log π(chosen) over training; RPO largely stops that",
        metric=f"change of summed log π(chosen) on {len(test_i)} held-out test pairs after {steps} steps (higher = less displacement)",
        premise=premise(check("DPO's mean drop of log π(chosen) on dev pairs (min over seeds)", min(dev_drops), ">", 0)),
        arms=arms, treated="rpo", control="dpo",
        conditions=[check("RPO's mean drop / DPO's (test)", drop["rpo"] / drop["dpo"] if drop["dpo"] > 0 else float("inf"), "<", 0.5)],
        selection={"split": None, "rule": "nothing chosen from results: the recipe is fixed beforehand",
                   "chosen": {**RECIPE, "max_steps": steps, "rpo": "token_mean, eta 1"}},
        **levels(per_seed, builds), per_seed=per_seed, start=round(float(np.mean(starts)), 4), train_logps_chosen=curves,
    )


def bco_vs_dpo(tb: "Testbed", n: int, seeds: tuple[int, ...] = SEEDS, margin: float = 0.03) -> dict:
    """BCO 2404.04656: on the same pairs split into unpaired thumbs-up/down rows, BCO is as good as
    DPO: an equivalence test (the interval of BCO - DPO sampled accuracy inside ±0.03). The pairs
    are sampled from the policy and labelled by the verifier, as in ``dpo-gold``.

    Premise: both beat the untrained policy first (each gain's interval above 0), or agreeing
    with a DPO run that learned nothing would prove nothing. Each method's learning rate and steps
    are chosen on dev from the same ``GRID``, per seed; a pair is two unpaired rows, so BCO takes
    twice the rows per step (equal sequences per step)."""
    from datasets import Dataset
    from trl.data_utils import unpair_preference_dataset

    from .protocol import check, judge, paired_difference, premise

    dev, test = _problems(n)
    arms: dict[str, list] = {"bco": [], "dpo": [], "small-instruct (untrained)": []}
    per_seed, found = [], []
    for seed in seeds:
        pairs, on_policy = policy_pairs(tb, seed)
        found.append(on_policy)
        unpaired = list(unpair_preference_dataset(Dataset.from_list(pairs)))
        b_test = _untrained(tb, dev, test, seed)[1]
        dpo = _grid_runs("dpo", tb, pairs, seed, dev, test)
        bco = _grid_runs("bco", tb, unpaired, seed, dev, test, per_device_train_batch_size=2 * RECIPE["per_device_train_batch_size"])
        for name, scores in (("bco", bco["test"]), ("dpo", dpo["test"]), ("small-instruct (untrained)", b_test)):
            arms[name].append(scores["per_prompt"])
        per_seed.append({"seed": seed, "on_policy_pairs": on_policy, "dpo": dpo["selection"]["chosen"], "bco": bco["selection"]["chosen"],
                         "dev": {"dpo": dpo["selection"]["dev_values"], "bco": bco["selection"]["dev_values"]},
                         "bco_delta_end": bco["result"]["delta"]})
    gains = {k: paired_difference(arms[k], arms["small-instruct (untrained)"], bounds=(0, 1)) for k in ("dpo", "bco")}
    return judge(
        claim=f"BCO on the pairs split into unpaired thumbs-up/down rows is equivalent to DPO (within ±{margin})",
        metric=f"sampled (T=1, {SAMPLES} per prompt) verifier accuracy on {len(test)} test chat problems",
        bounds=(0, 1),
        premise=premise(_found(tb, found), *(check(f"{k} - untrained, interval low", g["low"], ">", 0) for k, g in gains.items())),
        arms=arms, treated="bco", control="dpo", equivalence=True, margin=margin,
        selection={"split": "dev", "n_dev": len(dev), "grid": [_point(p) for p in _grid(tb)], "rule": "max dev sampled accuracy, per seed and method",
                   "chosen": {str(r["seed"]): {"dpo": r["dpo"], "bco": r["bco"]} for r in per_seed}},
        seeds=list(seeds), per_seed=per_seed, gains_over_untrained=gains, recipe={**RECIPE, "pairs": _n_pairs(tb)},
    )


def _shifted_feedback(n: int, seed: int = 0, majority: float = 0.8) -> list[dict]:
    """Unpaired rows whose thumbs-up prompts are mostly additions and thumbs-down mostly subtractions."""
    import numpy as np

    from align.testbed.arithmetic import sample_problems
    from align.testbed.datasets import wrong_answer

    rng = np.random.default_rng(seed)
    rows = []
    for label, main, other in ((True, "+", "-"), (False, "-", "+")):
        n_main = round(majority * n / 2)
        for p in sample_problems(rng, n_main, ops=main) + sample_problems(rng, n // 2 - n_main, ops=other):
            completion = str(p.answer) if label else str(wrong_answer(p, rng))
            rows.append({"prompt": [{"role": "user", "content": p.prompt}],
                         "completion": [{"role": "assistant", "content": completion}], "label": label})
    random.Random(seed).shuffle(rows)
    return rows


def bco_udm(tb: "Testbed", n: int, seeds: tuple[int, ...] = SEEDS) -> dict:
    """BCO's UDM (2404.04656): when thumbs-up and thumbs-down prompts differ in distribution
    (thumbs-up mostly ``+``, thumbs-down mostly ``-``, 80/20), reweighting the thumbs-down rows by
    the prompt density ratio improves over plain BCO.

    Premise: the shift is visible to the density-ratio classifier (train accuracy >= 0.6 at every
    seed). Each arm's learning rate and steps are chosen on dev from ``GRID``, per seed. Holds when
    UDM's test sampled accuracy minus plain BCO's is above 0 over the whole interval."""
    from .protocol import check, judge, premise

    dev, test = _problems(n)
    arms: dict[str, list] = {"bco+udm": [], "bco": [], "small-instruct (untrained)": []}
    per_seed, accuracy = [], []
    for seed in seeds:
        rows = _shifted_feedback(2 * _n_pairs(tb), seed)
        b_test = _untrained(tb, dev, test, seed)[1]
        plain = _grid_runs("bco", tb, rows, seed, dev, test, per_device_train_batch_size=16)
        udm = _grid_runs("bco", tb, rows, seed, dev, test, per_device_train_batch_size=16, udm=True)
        for name, scores in (("bco+udm", udm["test"]), ("bco", plain["test"]), ("small-instruct (untrained)", b_test)):
            arms[name].append(scores["per_prompt"])
        accuracy.append(udm["result"].get("train_accuracy", 0.0))
        per_seed.append({"seed": seed, "bco": plain["selection"]["chosen"], "bco+udm": udm["selection"]["chosen"],
                         "dev": {"bco": plain["selection"]["dev_values"], "bco+udm": udm["selection"]["dev_values"]},
                         "udm_classifier": {k: udm["result"].get(k) for k in ("n_desirable", "n_undesirable", "train_accuracy")},
                         "udm_weight_mean_last": udm["result"]["last_log"].get("udm/weight_mean")})
    return judge(
        claim="with thumbs-up prompts mostly '+' and thumbs-down mostly '-' (80/20), BCO+UDM beats BCO",
        metric=f"sampled (T=1, {SAMPLES} per prompt) verifier accuracy on {len(test)} test chat problems",
        bounds=(0, 1),
        premise=premise(check("UDM classifier train accuracy (min over seeds)", min(accuracy), ">=", 0.6)),
        arms=arms, treated="bco+udm", control="bco",
        selection={"split": "dev", "n_dev": len(dev), "grid": [_point(p) for p in _grid(tb)], "rule": "max dev sampled accuracy, per seed and method",
                   "chosen": {str(r["seed"]): {"bco": r["bco"], "bco+udm": r["bco+udm"]} for r in per_seed}},
        seeds=list(seeds), per_seed=per_seed, rows=2 * _n_pairs(tb),
    )


def ches_filter(tb: "Testbed", n: int, seeds: tuple[int, ...] = SEEDS, steps: int = 100, builds: "Sequence[Testbed] | None" = None) -> dict:
    """CHES 2410.08847: DPO on the lowest-(LN-)CHES half of the pairs displaces the chosen
    likelihood less than DPO on a random half of the same size.

    Every arm is measured on the same pairs: the change of log π(chosen) on held-out test pairs
    (each arm's drop on its own training pairs is reported too). Seeds: the pairs, the random
    half and the training order. The recipe is fixed beforehand (100 steps). Premise: DPO on a
    random half displaces on dev held-out pairs (mean drop > 0 at every seed). Holds when the
    lowest-LN-CHES arm's change minus the random arm's is above 0 over the whole interval. With
    ``builds``, every base build's small-instruct is scored and trained at every seed (the build is
    the outermost level of the interval)."""
    import numpy as np
    from datasets import Dataset

    from align.diagnostics.ches import ches_scores
    from align.testbed.datasets import preference_pairs

    from .protocol import check, dev_test_split, judge, levels, premise

    steps = _steps(tb, steps)
    held_out = [dict(r) for r in preference_pairs(8, 200, 0, True)["eval"]]
    dev_i, test_i = dev_test_split(len(held_out), 0.3, seed=0)
    arms: dict[str, list] = defaultdict(list)
    per_seed, dev_drops = [], []
    with tempfile.TemporaryDirectory() as out:
        for base, seed, record in _units(tb, seeds, builds):
            tok, model0 = base.tokenizer(), base.model("small-instruct")
            start = np.array(chosen_logps(model0, tok, held_out))
            pairs = _pairs(2 * _n_pairs(tb), seed)
            scored = [dict(r) for r in ches_scores(Dataset.from_list(pairs), model0, tok)]
            half = len(pairs) // 2

            def by(score: str, riskiest: bool = False) -> list[dict]:
                ranked = sorted(scored, key=lambda r: r[score], reverse=riskiest)[:half]
                return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ranked]

            subsets = {"ln_ches_lowest": by("ln_ches"), "random": random.Random(seed).sample(pairs, half),
                       "ln_ches_highest": by("ln_ches", riskiest=True), "ches_lowest": by("ches")}
            for name, subset in subsets.items():
                own_start = chosen_logp(model0, tok, subset)
                model, _ = _train("dpo", base, subset, f"{out}/{name}{seed}", max_steps=steps, seed=seed, data_seed=seed)
                change = np.array(chosen_logps(model, tok, held_out)) - start
                arms[name].append(change[test_i])
                record[name] = {"held_out_dev_change": round(float(change[dev_i].mean()), 4),
                                "own_pairs_drop": round(own_start - chosen_logp(model, tok, subset), 4)}
            dev_drops.append(-record["random"]["held_out_dev_change"])
            per_seed.append(record)
    return judge(
        claim="training on the LN-CHES-filtered (lowest) half shows less likelihood displacement than on a random half",
        metric=f"change of summed log π(chosen) on {len(test_i)} held-out test pairs, the same for every arm, after {steps} DPO steps",
        premise=premise(check("random-half DPO's mean drop on dev held-out pairs (min over seeds)", min(dev_drops), ">", 0)),
        arms=arms, treated="ln_ches_lowest", control="random",
        selection={"split": None, "rule": "nothing chosen from results: the recipe and the half size are fixed beforehand",
                   "chosen": {**RECIPE, "max_steps": steps, "pairs_per_subset": _n_pairs(tb)}},
        **levels(per_seed, builds), per_seed=per_seed,
    )
