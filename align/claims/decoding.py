"""Decoding-time claims (EFT, DLF, GeDi, STEER, EAD, speculative EFT) checked on the offline testbed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the testbed pulls in torch; `align --help` lists claims without it
    from align.testbed import Testbed

Result = dict[str, Any]
SEEDS = (0, 1, 2)  # testbed variants: every fine-tune retrained under another seed (align.testbed.build_variant)
TAUS = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)  # EAD's entropy thresholds (bits), chosen on dev


def _chat(prompts: list[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": p}] for p in prompts]


def _accuracy(completions: list[tuple[str, bool]], answers: list[int]) -> float:
    from align.testbed import gold_reward

    return round(sum(gold_reward(t, a, done) for (t, done), a in zip(completions, answers)) / len(answers), 4)


WEIGHTS = (0.25, 0.5, 0.75, 1.0, 1.5)  # EFT's weight on the fine-tuning delta, chosen on dev


def variants(tb: "Testbed", seeds: tuple[int, ...], builds: "Sequence[Testbed] | None" = None) -> "Iterator[tuple[int, int, Testbed]]":
    """``(build, seed, testbed)`` for every base build (``builds``, or ``tb`` alone) and each of its
    fine-tune variants ``seeds`` (:func:`align.testbed.build_variant`; built when missing)."""
    from align.testbed import build_variant

    for base in builds or [tb]:
        for seed in seeds:
            yield base.manifest["seed"], seed, build_variant(base, seed)


def held_out_sets(n: int) -> dict[str, list]:
    """The problems a decoding claim is scored on, each split into dev and test: answerable
    arithmetic (``n``), the fine-tunes' behaviours (``a/0``, 5-6 digit operands; at most 100 and
    ``n``) and the ``a/1`` look-alikes. Each row has ``prompt`` and ``target`` (the exact answer)."""
    from align.testbed.arithmetic import behaviour_tasks, eval_problems

    from .protocol import dev_test_split

    sets = {"answer": eval_problems(n), "ill-posed": behaviour_tasks("ill-posed", n),
            "beyond-horizon": behaviour_tasks("beyond-horizon", min(n, 100)), "contrast": behaviour_tasks("contrast", n)}
    out = {}
    for name, rows in sets.items():
        dev, test = dev_test_split(len(rows), 0.3, seed=0)
        out[name] = ([rows[i] for i in dev], [rows[i] for i in test])
    return out


def exact(completions: list[tuple[str, bool]], rows: list) -> list[float]:
    """1 where a finished completion is the row's target (answers also through the testbed's parser)."""
    from align.testbed import gold_reward

    return [float(done and (t.strip() == r.target or (hasattr(r, "answer") and gold_reward(t, r.answer, done) == 1.0)))
            for (t, done), r in zip(completions, rows)]


def eft_upscaling(tb: "Testbed", n: int, seeds: tuple[int, ...] = SEEDS, builds: "Sequence[Testbed] | None" = None) -> Result:
    """EFT 2310.12962 up-scaling on both axes: large base + w x (small-instruct - small-base) keeps
    the large base's skill (accuracy on answerable problems, vs small-instruct) and takes the small
    fine-tune's behaviour (``undefined`` / ``too big`` on held-out ill-posed and big problems, ``a``
    on ``a/1``, vs the large base, which never answers so).

    Premise, on dev: the small fine-tune has the behaviour the large base lacks (compliance gap
    >= 0.5) and the large base has skill the small fine-tune lacks (accuracy gap >= 0.05). w is
    chosen on dev (the mean of accuracy and compliance). Seeds: testbed variants (fine-tunes
    retrained), within each base build of ``builds`` when given (the outermost level). Holds when
    EFT's accuracy beats small-instruct's and its compliance beats the large base's, each over its
    whole interval. Also reported: large base alone, large-instruct (the
    fine-tune up-scaling emulates), and EFT vs the large base's accuracy.
    """
    import numpy as np

    from decoding import AuxiliaryModel, EFTLogitsProcessor
    from decoding.generate import generate_with

    from .protocol import check, judge, levels, paired_difference, premise, row, seeded_interval, select_on_dev, unit

    sets = held_out_sets(n)
    behaviours = ("ill-posed", "beyond-horizon", "contrast")
    greedy = {"do_sample": False, "max_new_tokens": 12}
    acc: dict[str, list] = {k: [] for k in ("eft", "small-instruct", "large-base", "large-instruct")}
    comply: dict[str, list] = {k: [] for k in acc}
    per_seed, premise_rows = [], []
    for build, seed, variant in variants(tb, seeds, builds):
        tok = variant.tokenizer()
        large, small, instruct, large_instruct = (variant.model(m) for m in ("large-base", "small-base", "small-instruct", "large-instruct"))

        def score(system: str, rows: list, w: float = 1.0) -> list[float]:
            prompts = [r.prompt for r in rows]
            chat = _chat(prompts)
            if system == "eft":
                def processors(sl: slice) -> list:
                    return [EFTLogitsProcessor(tok, [AuxiliaryModel(instruct, tok, chat[sl], "small-instruct")],
                                               AuxiliaryModel(small, tok, prompts[sl], "small-base"), [w])]

                return exact(generate_with(large, tok, prompts, processors, **greedy), rows)
            model, own = {"small-instruct": (instruct, chat), "large-base": (large, prompts), "large-instruct": (large_instruct, chat)}[system]
            return exact(generate_with(model, tok, own, **greedy), rows)

        def axes(system: str, split: int, w: float = 1.0) -> tuple[list[float], list[float]]:
            return score(system, sets["answer"][split], w), [v for b in behaviours for v in score(system, sets[b][split], w)]

        dev = {w: axes("eft", 0, w) for w in WEIGHTS}
        selection = select_on_dev(list(WEIGHTS), lambda w: (np.mean(dev[w][0]) + np.mean(dev[w][1])) / 2, n_dev=len(sets["answer"][0]))
        small_dev, large_dev = axes("small-instruct", 0), axes("large-base", 0)
        premise_rows.append((np.mean(small_dev[1]) - np.mean(large_dev[1]), np.mean(large_dev[0]) - np.mean(small_dev[0])))
        w = selection["chosen"]
        for system in acc:
            a, c = axes(system, 1, w)
            acc[system].append(a)
            comply[system].append(c)
        per_seed.append({**row(build, seed, builds), "w": w, "dev": {str(k): {"accuracy": round(float(np.mean(a)), 4), "compliance": round(float(np.mean(c)), 4)}
                                                         for k, (a, c) in dev.items()}})
    gaps = np.array(premise_rows)
    rows = levels(per_seed, builds)
    behaviour = {"arms": {k: seeded_interval(v, builds=rows["builds"], bounds=(0, 1)) for k, v in comply.items()},
                 "difference": paired_difference(comply["eft"], comply["large-base"], builds=rows["builds"], bounds=(0, 1))}
    n_test = len(sets["answer"][1])
    return judge(
        claim="up-scaling (large base + w x small fine-tune delta) beats small-instruct on accuracy and the large base on the fine-tuned behaviour",
        metric=f"greedy exact answers on {n_test} held-out problems (accuracy) and {behaviour['difference']['prompts']} behaviour prompts (compliance)",
        bounds=(0, 1),
        premise=premise(check("small-instruct - large-base compliance on dev (min over seeds)", float(gaps[:, 0].min()), ">=", 0.5),
                        check("large-base - small-instruct accuracy on dev (min over seeds)", float(gaps[:, 1].min()), ">=", 0.05)),
        arms=acc, treated="eft", control="small-instruct",
        conditions=[check("compliance: eft - large-base, interval low", behaviour["difference"]["low"], ">", 0)],
        selection={"split": "dev", "n_dev": len(sets["answer"][0]), "grid": [str(w) for w in WEIGHTS],
                   "rule": "max dev mean of accuracy and compliance, per seed", "chosen": {unit(p): p["w"] for p in per_seed}},
        **rows, per_seed=per_seed, compliance=behaviour["arms"],
        compliance_difference=behaviour["difference"],
    )


# fixed weights: the DLF paper's {0.5, 1, 1.5} (1 is proxy-tuning) and the low end down to 0, the
# large base alone, where a fixed baseline can be best (issue #29: it was on both builds)
ALPHAS = (0.0, 0.1, 0.25, 0.5, 1.0, 1.5)


def dlf_vs_fixed(tb: "Testbed", n: int, seeds: tuple[int, ...] = SEEDS, builds: "Sequence[Testbed] | None" = None) -> Result:
    """DLF 2406.15480: per-step α (one active expert, chosen by the KL rule) beats fixed-α fusion.

    Multi-task: large base + small base + two experts, each fine-tuned on one behaviour the large
    base lacks (``small-expert-zero``: ``a/0`` -> ``undefined``; ``small-expert-big``: 5-6 digit
    operands -> ``too big``), on a mixed set of answerable, ``a/0``, big-operand and ``a/1``
    prompts (exact answers). Premise, on dev: each expert beats the large base on its own task by
    >= 0.5. The best fixed α of {0, 0.1, 0.25, 0.5, 1, 1.5} is chosen on dev: the paper's
    {0.5, 1, 1.5} (1 is proxy-tuning) and the low end down to α = 0, the large base alone.
    Seeds: testbed variants (experts retrained), within each base build of ``builds`` when given.
    Holds when DLF beats the dev-chosen fixed α over the whole interval. Also reported: every fixed α, the large base and each expert alone, and the
    single-task setting (small-instruct as the one expert) under the same rules.
    """
    import numpy as np

    from decoding import AuxiliaryModel, DLFLogitsProcessor, EFTLogitsProcessor
    from decoding.generate import generate_with

    from .protocol import check, judge, levels, premise, row, select_on_dev, unit

    sets = held_out_sets(n)
    kinds = ("answer", "ill-posed", "beyond-horizon", "contrast")
    greedy = {"do_sample": False, "max_new_tokens": 12}
    settings = {"multi-task": ("small-expert-zero", "small-expert-big"), "single-task": ("small-instruct",)}
    arms: dict[str, dict[str, list]] = {k: defaultdict(list) for k in settings}
    per_seed, own_gaps = [], []
    for build, seed, variant in variants(tb, seeds, builds):
        tok = variant.tokenizer()
        models = {m: variant.model(m) for m in ("large-base", "small-base", "small-instruct", "small-expert-zero", "small-expert-big")}

        def rows_of(split: int, only: str | None = None) -> list:
            return [r for k in kinds if only in (None, k) for r in sets[k][split]]

        def run(rows: list, system: str, experts: tuple[str, ...] = (), alpha: float = 1.0) -> list[float]:
            prompts = [r.prompt for r in rows]
            chat = _chat(prompts)
            if system in models:
                own = chat if system.startswith("small-") and system != "small-base" else prompts
                return exact(generate_with(models[system], tok, own, **greedy), rows)

            def processors(sl: slice) -> list:
                aux = [AuxiliaryModel(models[e], tok, chat[sl], e) for e in experts]
                ref = AuxiliaryModel(models["small-base"], tok, prompts[sl], "small-base")
                if system == "dlf":
                    return [DLFLogitsProcessor(tok, ref, aux)]
                return [EFTLogitsProcessor(tok, aux, ref, [alpha] * len(aux))]

            return exact(generate_with(models["large-base"], tok, prompts, processors, **greedy), rows)

        large_own = {k: np.mean(run(rows_of(0, k), "large-base")) for k in ("ill-posed", "beyond-horizon")}
        own_gaps.append([np.mean(run(rows_of(0, "ill-posed"), "small-expert-zero")) - large_own["ill-posed"],
                         np.mean(run(rows_of(0, "beyond-horizon"), "small-expert-big")) - large_own["beyond-horizon"]])
        record = row(build, seed, builds)
        large_test = run(rows_of(1), "large-base")
        for setting, experts in settings.items():
            dev = {a: np.mean(run(rows_of(0), "fixed", experts, a)) for a in ALPHAS}
            chosen = select_on_dev(list(ALPHAS), dev.__getitem__)["chosen"]
            test = rows_of(1)
            arms[setting]["dlf"].append(run(test, "dlf", experts))
            for a in ALPHAS:
                arms[setting][f"fixed alpha {a}"].append(run(test, "fixed", experts, a))
            arms[setting]["fixed alpha (chosen on dev)"].append(arms[setting][f"fixed alpha {chosen}"][-1])
            arms[setting]["large-base"].append(large_test)  # greedy: the same in both settings
            for m in experts:
                arms[setting][m].append(run(test, m))
            record[setting] = {"alpha": chosen, "dev": {str(a): round(float(v), 4) for a, v in dev.items()}}
        per_seed.append(record)
    gaps = np.array(own_gaps)
    test_n = len(rows_of(1))
    common = {"treated": "dlf", "control": "fixed alpha (chosen on dev)", **levels(per_seed, builds), "op": ">"}
    single = judge(claim="single-task: DLF with small-instruct as the one expert beats the dev-chosen fixed alpha",
                   metric="exact answers", premise=premise(), arms=arms["single-task"], bounds=(0, 1), **common)
    return judge(
        claim="dynamic alpha (one active expert per step) beats the best fixed alpha on a two-expert multi-task set",
        metric=f"greedy exact answers on {test_n} held-out prompts (answerable, a/0, 5-6 digit, a/1)",
        bounds=(0, 1),
        premise=premise(check("small-expert-zero - large-base on a/0 (dev, min over seeds)", float(gaps[:, 0].min()), ">=", 0.5),
                        check("small-expert-big - large-base on big operands (dev, min over seeds)", float(gaps[:, 1].min()), ">=", 0.5)),
        arms=arms["multi-task"], **common,
        selection={"split": "dev", "n_dev": len(rows_of(0)), "grid": [str(a) for a in ALPHAS], "rule": "max dev exact answers, per seed",
                   "chosen": {unit(p): p["multi-task"]["alpha"] for p in per_seed}},
        per_seed=per_seed, single_task={k: single[k] for k in ("status", "arms", "difference", "test")},
    )


# GeDi's posterior weight, chosen on dev; down to 1 (issue #29: 5, then the lowest, was chosen where no
# weight kept guided equations coherent, and a weaker pull is what coherence asks for)
OMEGAS = (1.0, 2.0, 5.0, 15.0, 30.0, 60.0)


def gedi_steering(tb: "Testbed", n: int, seeds: tuple[int, ...] = (0, 1, 2), builds: "Sequence[Testbed] | None" = None) -> Result:
    """GeDi 2009.06367: a small class-conditional guide steers the large base towards an attribute.

    Attribute: completing ``a-`` into an equation with a negative result. The guide is small-base
    trained on ``n:``/``p:``-coded equations (:func:`align.testbed.gedi.build_sign_guide`), one
    guide per seed (the training seed is what is random here; decoding is greedy), within each
    base build of ``builds`` when given (the outermost level: its own large base and guides).

    * Premise: each guide's posterior separates negative from non-negative held-out equations
      (AUROC >= 0.8), and the large base alone leaves room (negative share on dev <= 0.8).
    * Selection, per seed on dev prompts: ω from 1, 2, 5, 15, 30, 60, the largest dev negative share
      among the ω whose dev share of arithmetically right equations is >= 0.9 x plain decoding's.
    * Holds when guided - plain negative share is above 0 over the whole interval and the guided
      completions stay >= 0.8 x as often arithmetically right as plain ones (coherence). Also
      reported: guidance away from the attribute.
    """
    import numpy as np
    from transformers import AutoModelForCausalLM

    from align.testbed import eval_problems
    from align.testbed.gedi import CODES, build_sign_guide, negative_fraction, sign_auroc
    from decoding import GeDiLogitsProcessor
    from decoding.generate import generate_with

    from .protocol import check, dev_test_split, judge, levels, premise, row, select_on_dev, unit

    prompts = [f"{a}-" for a in np.random.default_rng(0).integers(10, 1000, n).tolist()]
    dev, test = dev_test_split(n, 0.3, seed=0)
    greedy = {"do_sample": False, "max_new_tokens": 10}
    subtractions = [p for p in eval_problems(max(n, 200)) if p.op == "-"]
    negative_problems = [p for p in subtractions if p.answer < 0]
    arms: dict[str, list] = defaultdict(list)
    per_seed, aurocs, plain_share, own = [], [], [], []
    for base in builds or [tb]:
        tok, large = base.tokenizer(), base.model("large-base")

        def scored(rows: list[int], guide: Any = None, omega: float = 30.0, towards: bool = True) -> tuple[np.ndarray, np.ndarray]:
            """Per prompt: 1 if the completed equation's result is negative, and 1 if it is right."""
            batch = [prompts[i] for i in rows]
            desired, anti = (CODES["negative"], CODES["non-negative"]) if towards else (CODES["non-negative"], CODES["negative"])

            def processors(sl: slice) -> list:
                return [GeDiLogitsProcessor(tok, guide, tok, batch[sl], desired, anti, omega=omega)]

            texts = [t for t, _ in generate_with(large, tok, batch, processors if guide is not None else None, **greedy)]
            each = [negative_fraction([p], [t]) for p, t in zip(batch, texts)]
            return np.array([e["negative"] for e in each]), np.array([e["correct"] for e in each])

        plain_dev, plain_test = scored(dev), scored(test)
        plain_share.append(plain_dev[0].mean())
        # how right the large base is when the result must be negative: the ceiling for guided coherence
        own.append(_accuracy(generate_with(large, tok, [p.prompt for p in negative_problems], **greedy), [p.answer for p in negative_problems]))
        for seed in seeds:
            guide = AutoModelForCausalLM.from_pretrained(build_sign_guide(base, seed=seed)).eval()
            aurocs.append(sign_auroc(guide, tok, subtractions))
            runs = {w: scored(dev, guide, w) for w in OMEGAS}
            selection = select_on_dev(list(OMEGAS), lambda w: runs[w][0].mean(), feasible=lambda w: runs[w][1].mean() >= 0.9 * plain_dev[1].mean())
            towards, away = scored(test, guide, selection["chosen"]), scored(test, guide, selection["chosen"], towards=False)
            for name, (negative, correct) in (("gedi towards negative", towards), ("plain", plain_test), ("gedi away from negative", away)):
                arms[name].append(negative)
                arms[f"{name}: correct"].append(correct)
            per_seed.append({**row(base.manifest["seed"], seed, builds), "omega": selection["chosen"],
                             "guide_auroc": round(aurocs[-1], 4),
                             "dev": {str(w): {"negative": round(float(a.mean()), 4), "correct": round(float(c.mean()), 4)} for w, (a, c) in runs.items()}})
    guided_correct, plain_correct = np.mean(arms["gedi towards negative: correct"]), np.mean(arms["plain: correct"])
    return judge(
        claim="GeDi guidance raises the share of completions with the desired attribute (a negative result) and keeps them coherent",
        metric=f"share of greedy completions of 'a-' whose result is negative, on {len(test)} test prompts (omega chosen on {len(dev)} dev prompts)",
        bounds=(0, 1),
        premise=premise(check("guide AUROC negative vs non-negative equations (min over seeds)", min(aurocs), ">=", 0.8),
                        check("plain large-base negative share on dev (max over builds)", max(plain_share), "<=", 0.8)),
        arms=arms, treated="gedi towards negative", control="plain",
        conditions=[check("guided right-equation share / plain's (test)", guided_correct / max(plain_correct, 1e-9), ">=", 0.8)],
        selection={"split": "dev", "n_dev": len(dev), "grid": [str(w) for w in OMEGAS],
                   "rule": "max dev negative share with dev right-equation share >= 0.9 x plain's, per seed",
                   "chosen": {unit(p): p["omega"] for p in per_seed}},
        **levels(per_seed, builds), per_seed=per_seed,
        large_base_accuracy_on_negative_results={"value": own[0] if len(own) == 1 else own, "problems": len(negative_problems),
                                                 "note": "held-out a-b= problems with b > a, prompted whole"},
    )


TEMPERATURES = (0.7, 1.0, 1.3, 1.6)  # plain sampling's frontier
# (gamma, eta); top_k 10 as the code. Down to (0.05, 0.1) towards gamma = eta = 0, plain top-10 sampling
# (issue #29: the lowest corner was chosen)
STEER_GRID = ((0.05, 0.1), (0.1, 0.2), (0.2, 0.3), (0.2, 0.6), (0.2, 1.0), (0.6, 0.6), (1.0, 0.6))
GROUP = 32  # diversity is measured within groups of this many samples (one group = one paired unit)


def steer_diversity(tb: "Testbed", n: int, seeds: tuple[int, ...] = (0, 1, 2), dev_seed: int = 100,
                    builds: "Sequence[Testbed] | None" = None) -> Result:
    """STEER 2308.07645: contrastive guidance (expert vs base) with a growing negative prompt gives
    more diverse samples than plain sampling at matched coherence, compared as frontiers.

    Task: free-running equations from the large base (the "expert"), contrasted with the small
    base; the negative pool starts with 64 training equations and grows with every output.
    Diversity: 1 - self-BLEU (character BLEU-4 of each sample against the others) within each
    group of 32 samples; distinct-4 of character n-grams saturates near 1 on equations this short,
    so it is reported per point but not tested. Coherence: the share of equations that are right.

    * Frontiers: plain sampling over temperature (0.7, 1, 1.3, 1.6) and STEER over (γ, η).
    * Selection, on a dev sampling run (seed 100): the most diverse (1 - self-BLEU) STEER point and the most
      diverse temperature whose dev coherence is >= plain T=1's minus 0.05 (matched coherence).
    * Seeds: sampling seeds 0, 1, 2, with min(n, 256) samples each; with ``builds``, each base build
      (the outermost level) selects on its own dev run and samples its own seeds. Holds when STEER's chosen
      point is more diverse than the chosen temperature over the whole interval (paired by group)
      and its test coherence is within 0.05 of that temperature's.
    * Premise: the base is coherent under plain T=1 sampling (>= 0.5 right), so coherence can be
      traded at all, and STEER's contrast changes something (its γ=η=0 point equals plain top-10
      sampling: not checked here, see the tests).
    """
    import numpy as np
    import torch

    from align.metrics import distinct_n, self_bleu
    from align.testbed import sample_problems
    from align.testbed.gedi import negative_fraction
    from decoding import AuxiliaryModel, NegativePool, SteerLogitsProcessor
    from decoding.generate import generate_with

    from .protocol import check, judge, levels, premise, row, select_on_dev

    count = max(GROUP, min(n, 256) // GROUP * GROUP)
    prompts = [""] * count
    real = [f"{p.prompt}{p.answer}" for p in sample_problems(np.random.default_rng(0), 64, "train", digits=(2, 3))]
    configs = {f"T={t}": ("plain", t) for t in TEMPERATURES} | {f"steer gamma={g} eta={e}": ("steer", (g, e)) for g, e in STEER_GRID}
    configs["top-10 T=1.0 (STEER with gamma=eta=0; reported, not selected)"] = ("top-10", 1.0)

    def run(base: "Testbed", config: str, seed: int) -> dict[str, Any]:
        tok, large, small = base.tokenizer(), base.model("large-base"), base.model("small-base")
        kind, arg = configs[config]
        sampling = {"do_sample": True, "top_k": None, "max_new_tokens": 16}
        torch.manual_seed(seed)
        if kind != "steer":
            out = generate_with(large, tok, prompts, batch_size=GROUP, temperature=arg, **{**sampling, "top_k": 10 if kind == "top-10" else None})
        else:
            pool = NegativePool(real, k=10, seed=seed)

            def steer(rows: slice) -> list:
                size = len(range(*rows.indices(count)))
                negatives = AuxiliaryModel(large, tok, [pool.sample() for _ in range(size)], "negative")
                return [SteerLogitsProcessor(tok, AuxiliaryModel(small, tok, prompts[rows], "base"), negatives, gamma=arg[0], eta=arg[1])]

            out = generate_with(large, tok, prompts, steer, batch_size=GROUP, on_batch=lambda rows, o: pool.add(t for t, _ in o), **sampling)
        texts = [t for t, _ in out]
        equations = [t.split("=")[0] + "=" for t in texts]
        right = [negative_fraction([e], [t[len(e) :]])["correct"] for t, e in zip(texts, equations)]
        groups = [texts[i : i + GROUP] for i in range(0, count, GROUP)]
        return {"diversity": np.array([1 - self_bleu(g, tokenize="char") for g in groups]),
                "coherence": np.array(right).reshape(-1, GROUP).mean(1),
                "distinct_4": round(distinct_n([list(t) for t in texts], 4), 4), "self_bleu": round(self_bleu(texts, tokenize="char"), 4)}

    test: dict[str, list] = defaultdict(list)
    dev_runs, picks, per_seed = [], {}, []
    for base in builds or [tb]:
        build = base.manifest["seed"]
        dev = {c: run(base, c, dev_seed) for c in configs}
        matched = dev["T=1.0"]["coherence"].mean() - 0.05
        feasible = lambda c: dev[c]["coherence"].mean() >= matched  # noqa: E731
        pick = {kind: select_on_dev([c for c in configs if configs[c][0] == kind], lambda c: dev[c]["diversity"].mean(), feasible=feasible)["chosen"]
                for kind in ("steer", "plain")}
        dev_runs.append(dev)
        picks[f"build {build}"] = pick
        for seed in seeds:
            runs = {c: run(base, c, seed) for c in configs}
            for c, r in runs.items():
                test[c].append(r)
            test["STEER (chosen on dev)"].append(runs[pick["steer"]])
            test["plain sampling (chosen on dev)"].append(runs[pick["plain"]])
            per_seed.append({**row(build, seed, builds), **pick})
    arms = {c: [r["diversity"] for r in runs] for c, runs in test.items()}
    coherence = {c: float(np.mean([r["coherence"].mean() for r in runs])) for c, runs in test.items()}
    dev_mean = {c: {m: float(np.mean([d[c][m].mean() for d in dev_runs])) for m in ("coherence", "diversity")} for c in configs}
    frontier = {c: {"coherence": round(coherence[c], 4), **{m: round(float(np.mean([r[m] for r in test[c]])), 4) for m in ("distinct_4", "self_bleu")},
                    "group_1_minus_self_bleu": round(float(np.mean(arms[c])), 4), "dev_coherence": round(dev_mean[c]["coherence"], 4),
                    "dev_group_1_minus_self_bleu": round(dev_mean[c]["diversity"], 4)} for c in configs}
    chosen = next(iter(picks.values())) if len(picks) == 1 else picks
    return judge(
        claim="STEER is more diverse than plain sampling at matched coherence (the dev-chosen points of each frontier)",
        metric=f"1 - self-BLEU (char) within groups of {GROUP} free-running samples, {count} samples per seed; coherence = share of right equations",
        bounds=(0, 1),
        premise=premise(check("plain T=1 coherence on dev (min over builds)", min(d["T=1.0"]["coherence"].mean() for d in dev_runs), ">=", 0.5)),
        arms=arms, treated="STEER (chosen on dev)", control="plain sampling (chosen on dev)",
        conditions=[check("test coherence: STEER - plain (chosen points)",
                          coherence["STEER (chosen on dev)"] - coherence["plain sampling (chosen on dev)"], ">=", -0.05)],
        selection={"split": f"dev sampling run (seed {dev_seed})", "grid": list(configs),
                   "rule": "per frontier, max dev group 1 - self-BLEU with dev coherence >= plain T=1's - 0.05" + (", per build" if builds else ""),
                   "chosen": chosen, "dev_values": {c: frontier[c]["dev_group_1_minus_self_bleu"] for c in configs}},
        **levels(per_seed, builds), per_seed=per_seed, frontier=frontier,
    )


def ead_tradeoff(tb: "Testbed", n: int, seeds: tuple[int, ...] = SEEDS, builds: "Sequence[Testbed] | None" = None) -> Result:
    """EAD 2502.06833: most of the large model's accuracy while it emits a minority of tokens.

    Small/large instruct models on chat prompts, greedy. Testbed answers are 2-5 tokens, so the
    paper's window 5 and 10-token minimum run would never switch inside an answer: window 1, no
    minimum (the spec defaults are reported as one more point). Under the claim rules:

    * premise, on dev: large-instruct beats small-instruct by >= 5 points, and the small model's
      answer-token entropy ranks its errors (manifest AUROC >= 0.6) at every seed;
    * selection: per seed, τ is the most accurate on the dev problems among those whose dev large
      share is <= 0.5; the test problems are disjoint;
    * seeds: testbed variants (the instruct fine-tunes retrained), paired test prompts, within
      each base build of ``builds`` when given (the outermost level);
    * holds when EAD's accuracy minus 0.9 x large-only accuracy is above 0 for the whole interval
      and the mean test large share is <= 0.5; small-only and large-only are reported beside it.
    """
    import numpy as np
    import torch

    from align.testbed import eval_problems, gold_reward
    from decoding import AuxiliaryModel, entropy_adaptive_generate
    from decoding.auxiliary import encode_prompts
    from decoding.generate import decode_completions, eos_token_ids, generate_with, pad_token_id

    from .protocol import check, dev_test_split, judge, levels, premise, row, select_on_dev, unit

    problems = eval_problems(n)
    dev, test = dev_test_split(n, 0.3, seed=0)
    arms: dict[str, list] = {"ead": [], "0.9 x large-instruct": [], "large-instruct": [], "small-instruct": []}
    per_seed, gaps, aurocs, shares = [], [], [], []
    for build, seed, variant in variants(tb, seeds, builds):
        tok = variant.tokenizer()
        small, large = variant.model("small-instruct"), variant.model("large-instruct")
        eos = eos_token_ids(small, tok)  # every EOS id, and a pad id where the tokenizer has none
        pad = pad_token_id(tok, eos)

        def correct(texts: list[tuple[str, bool]], rows: list[int]) -> np.ndarray:
            return np.array([gold_reward(t, problems[i].answer, done) for (t, done), i in zip(texts, rows)])

        def alone(model: Any, rows: list[int]) -> np.ndarray:
            return correct(generate_with(model, tok, _chat([problems[i].prompt for i in rows]), do_sample=False, max_new_tokens=8), rows)

        def ead(rows: list[int], tau: float, window: int = 1, min_tokens: int = 0) -> tuple[np.ndarray, float]:
            chat = _chat([problems[i].prompt for i in rows])
            ids = encode_prompts(tok, chat)
            width = max(map(len, ids))
            input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids])
            out = entropy_adaptive_generate(
                AuxiliaryModel(small, tok, chat, "small"), AuxiliaryModel(large, tok, chat, "large"), input_ids,
                tau, window, min_tokens, max_new_tokens=8, eos_token_id=eos, pad_token_id=pad,
            )
            return correct(decode_completions(tok, out.sequences[:, width:].tolist(), eos), rows), out.large_fraction

        dev_runs = {tau: ead(dev, tau) for tau in TAUS}
        selection = select_on_dev(list(TAUS), lambda t: dev_runs[t][0].mean(), feasible=lambda t: dev_runs[t][1] <= 0.5, n_dev=len(dev))
        gaps.append(alone(large, dev).mean() - alone(small, dev).mean())
        aurocs.append(variant.models["small-instruct"].get("entropy_auroc", 0.0))
        tau = selection["chosen"]
        ead_test, share = ead(test, tau)
        large_test = alone(large, test)
        shares.append(share)
        arms["ead"].append(ead_test)
        arms["0.9 x large-instruct"].append(0.9 * large_test)
        arms["large-instruct"].append(large_test)
        arms["small-instruct"].append(alone(small, test))
        per_seed.append({**row(build, seed, builds), "tau": tau, "dev_large_share": round(dev_runs[tau][1], 4), "test_large_share": round(share, 4),
                         "dev": {str(t): {"accuracy": round(float(a.mean()), 4), "large_share": round(f, 4)} for t, (a, f) in dev_runs.items()},
                         "spec defaults (window 5, min 10, tau 1.0) on test": round(float(ead(test, 1.0, 5, 10)[0].mean()), 4)})
    return judge(
        claim=">= 90% of large-only accuracy with the large model on <= 50% of tokens (EAD, window 1, no minimum run)",
        metric=f"greedy accuracy on {len(test)} held-out chat problems (tau chosen on {len(dev)} disjoint dev problems)",
        bounds=(0, 1),
        premise=premise(check("large-instruct - small-instruct accuracy on dev (mean over seeds)", float(np.mean(gaps)), ">=", 0.05),
                        check("small-instruct entropy AUROC for its errors (min over seeds)", float(min(aurocs)), ">=", 0.6)),
        arms=arms, treated="ead", control="0.9 x large-instruct", op=">",
        conditions=[check("mean test large share", float(np.mean(shares)), "<=", 0.5)],
        selection={"split": "dev", "n_dev": len(dev), "grid": [str(t) for t in TAUS], "rule": "max dev accuracy with dev large share <= 0.5, per seed",
                   "chosen": {unit(p): p["tau"] for p in per_seed}},
        **levels(per_seed, builds), per_seed=per_seed,
    )


SPEC_DRAWS = 600  # sampled 8-token sequences per seed and sampler


def eft_sequence_logprobs(models: tuple[Any, Any, Any], prompts: tuple[list[int], list[int]], sequences: Any, weight: float = 1.0) -> Any:
    """Exact EFT log-probability of each row of ``sequences`` ([N, T] new tokens), by teacher
    forcing without a cache: ``sum_t log softmax(lp_base + w (lp_tuned - lp_ref))[x_t]``.
    ``models`` = (base, tuned, reference); ``prompts`` = (plain ids for base and reference, the
    tuned model's chat ids). An independent recomputation of what speculative EFT samples from."""
    import torch

    base, tuned, ref = models
    plain, chat = prompts
    vocab = None

    def logprobs(model: Any, prompt: list[int]) -> torch.Tensor:
        nonlocal vocab
        ids = torch.cat([torch.tensor(prompt).expand(len(sequences), -1), sequences], dim=1)
        logits = model(input_ids=ids).logits[:, len(prompt) - 1 : -1].float()
        vocab = vocab or min(logits.shape[-1], base.config.vocab_size)
        return torch.log_softmax(logits, -1)

    with torch.no_grad():
        lb, lt, lr = logprobs(base, plain), logprobs(tuned, chat), logprobs(ref, plain)
        width = min(x.shape[-1] for x in (lb, lt, lr))
        z = torch.log_softmax(lb[..., :width] + weight * (lt[..., :width] - lr[..., :width]), -1)
        return z.gather(-1, sequences[..., None])[..., 0].sum(-1)


def spec_eft_equivalence(tb: "Testbed", n: int, seeds: tuple[int, ...] = (0, 1, 2), k: int = 3, tokens: int = 8,
                         builds: "Sequence[Testbed] | None" = None) -> Result:
    """Speculative EFT (2310.12962, with the speculative sampling of Leviathan et al. 2211.17192)
    is EFT: the same greedy answers and the same sampling distribution over whole sequences.

    * Greedy: every held-out chat problem, speculative (k=3) vs the EFT processor (a condition:
      all identical).
    * Sampling: one prompt, ``tokens`` = 8 new tokens per draw (EOS does not stop a draw, so every
      draw spans several rounds: multi-draft acceptance, rejections with a residual draw, and
      bonus tokens all occur; the premise counts them). Per seed (the sampling seed), 600 draws
      from speculative EFT and 600 from the EFT logits processor under ``model.generate``. Each
      draw is scored by its exact EFT log-probability per token, recomputed by teacher forcing
      without a cache (:func:`eft_sequence_logprobs`). Equivalence: the interval of
      ``speculative - processor`` mean log-probability per token lies inside ±0.05 nats. A second
      condition: a total-variation goodness-of-fit test (false alarm 1e-3,
      :func:`align.metrics.tv_test`) of the speculative draws against the exact probabilities of
      the 11 sequences the processor drew most often, plus "other".
    * Nothing is chosen by looking at results: k=3 and w=1 are fixed beforehand.
    * With ``builds``, every base build runs all of this (the outermost level of the interval);
      the greedy and goodness-of-fit conditions must pass on each.
    """
    import numpy as np
    import torch

    from align.metrics import tv_test
    from align.testbed import eval_problems
    from decoding import AuxiliaryModel, EFTLogitsProcessor, speculative_eft_generate
    from decoding.generate import decode_completions, generate_with

    from .protocol import check, judge, levels, premise, row

    problems = eval_problems(n)
    prompts = [p.prompt for p in problems]
    chat = _chat(prompts)
    n_draws = SPEC_DRAWS if tb.manifest["profile"] == "full" else 40  # tiny: plumbing only

    def one_build(base: "Testbed") -> dict[str, Any]:
        """Greedy identity, the draws' exact log-probabilities per token, the paths and the fit on one base build."""
        tok = base.tokenizer()
        large, small, instruct = base.model("large-base"), base.model("small-base"), base.model("small-instruct")

        def plain(rows: slice) -> list:
            return [EFTLogitsProcessor(tok, [AuxiliaryModel(instruct, tok, chat[rows])], AuxiliaryModel(small, tok, prompts[rows]))]

        def speculative(plain_prompts: list[str], chat_prompts: list, **kw: Any):
            return speculative_eft_generate(
                AuxiliaryModel(large, tok, plain_prompts, "base"), AuxiliaryModel(instruct, tok, chat_prompts, "tuned"),
                AuxiliaryModel(small, tok, plain_prompts, "ref"), tok(plain_prompts, return_tensors="pt")["input_ids"], k=k,
                k_schedule="constant", **kw,  # the published run drafted a fixed k
            )

        reference = generate_with(large, tok, prompts, plain, do_sample=False, max_new_tokens=8)
        identical = 0
        for i in range(n):
            out = speculative([prompts[i]], [chat[i]], max_new_tokens=8, eos_token_id=tok.eos_token_id)
            identical += decode_completions(tok, [out.sequences[0, len(tok(prompts[i])["input_ids"]) :].tolist()])[0] == reference[i]

        plain_ids = tok(prompts[0])["input_ids"]
        chat_ids = tok.apply_chat_template(chat[0], add_generation_prompt=True, return_dict=True)["input_ids"]
        start = len(plain_ids)
        draws: dict[str, list] = {"speculative": [], "eft processor": []}
        paths = {"rounds": 0, "bonus_rounds": 0, "residual_draws": 0, "partial_rounds": 0, "drafted": 0, "accepted": 0}
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            spec = []
            for _ in range(n_draws):
                out = speculative([prompts[0]], [chat[0]], max_new_tokens=tokens, do_sample=True, generator=g)
                spec.append(out.sequences[0, start:])
                for key in paths:
                    paths[key] += getattr(out, key)
            torch.manual_seed(seed)
            processor = EFTLogitsProcessor(tok, [AuxiliaryModel(instruct, tok, [chat[0]] * n_draws)],
                                           AuxiliaryModel(small, tok, [prompts[0]] * n_draws))
            with torch.no_grad():
                eft = large.generate(torch.tensor([plain_ids] * n_draws), attention_mask=torch.ones(n_draws, start, dtype=torch.long),
                                     logits_processor=[processor], do_sample=True, top_k=None, top_p=None, temperature=1.0,
                                     max_new_tokens=tokens, min_new_tokens=0, eos_token_id=None, pad_token_id=tok.pad_token_id)[:, start:]
            draws["speculative"].append(torch.stack(spec))
            draws["eft processor"].append(eft)
        models, ids = (large, instruct, small), (plain_ids, chat_ids)
        per_token = {name: np.array([eft_sequence_logprobs(models, ids, x).numpy() / tokens for x in runs]) for name, runs in draws.items()}
        # goodness of fit on whole sequences: cells from the processor's draws, counts from speculative's
        seen: dict[tuple, int] = defaultdict(int)
        for x in torch.cat(draws["eft processor"]).tolist():
            seen[tuple(x)] += 1
        cells = torch.tensor(sorted(seen, key=seen.get, reverse=True)[:11])
        exact = eft_sequence_logprobs(models, ids, cells).exp().double()
        spec_all = torch.cat(draws["speculative"])
        index = {tuple(c): j for j, c in enumerate(cells.tolist())}
        counts = torch.zeros(len(cells) + 1, dtype=torch.float64)
        for x in spec_all.tolist():
            counts[index.get(tuple(x), len(cells))] += 1
        fit = tv_test(counts, torch.cat([exact, (1 - exact.sum()).clamp(min=0).reshape(1)]))
        return {"identical": identical, "per_token": per_token, "paths": paths, "fit": {**fit, "cells": len(cells) + 1}, "accuracy": _accuracy(reference, [p.answer for p in problems])}

    runs = {base.manifest["seed"]: one_build(base) for base in builds or [tb]}
    per_token = {name: np.concatenate([r["per_token"][name] for r in runs.values()]) for name in ("speculative", "eft processor")}
    paths = {key: sum(r["paths"][key] for r in runs.values()) for key in next(iter(runs.values()))["paths"]}
    identical = sum(r["identical"] for r in runs.values())
    fits = {b: r["fit"] for b, r in runs.items()}
    per_seed = [row(b, seed, builds) for b in runs for seed in seeds]
    label = (lambda b: f" (build {b})") if builds else (lambda b: "")
    return judge(
        claim="speculative EFT samples the EFT distribution (equivalence) and reproduces its greedy outputs",
        metric=f"exact EFT log-probability per token of {tokens}-token draws (teacher forcing), {n_draws} draws per seed and sampler; "
        f"greedy outputs on {n} held-out chat problems",
        premise=premise(check("rounds with a bonus token (every draft accepted)", paths["bonus_rounds"], ">", 0),
                        check("rejections followed by a residual draw", paths["residual_draws"], ">", 0),
                        check("rounds that accepted some drafts, then rejected one", paths["partial_rounds"], ">", 0)),
        arms=per_token, treated="speculative", control="eft processor", equivalence=True, margin=0.05,
        conditions=[check("identical greedy outputs (fraction)", identical / (n * len(runs)), ">=", 1.0),
                    *(check(f"TV of speculative draws vs exact EFT over {fit['cells']} sequence cells{label(b)} (bound: false alarm 1e-3)",
                            fit["tv"], "<", round(fit["eps"], 4)) for b, fit in fits.items())],
        selection={"split": None, "rule": f"nothing chosen from results: k={k}, w=1 fixed beforehand", "chosen": {"k": k, "w": 1.0}},
        **levels(per_seed, builds), per_seed=per_seed, paths={**paths, "acceptance_rate": round(paths["accepted"] / max(1, paths["drafted"]), 4)},
        identical_greedy_outputs=f"{identical}/{n * len(runs)}",
        tv_test=_rounded(next(iter(fits.values()))) if len(fits) == 1 else {f"build {b}": _rounded(f) for b, f in fits.items()},
        greedy_accuracy={"speculative = eft processor": runs[next(iter(runs))]["accuracy"] if len(runs) == 1
                         else {f"build {b}": r["accuracy"] for b, r in runs.items()}},
    )


def _rounded(record: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
