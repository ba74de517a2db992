"""Decoding-time claims (EFT, DLF, GeDi, STEER, EAD, speculative EFT) checked on the offline testbed."""

from __future__ import annotations

from collections import defaultdict
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


def eft_upscaling(tb: "Testbed", n: int, seeds: tuple[int, ...] = SEEDS) -> Result:
    """EFT 2310.12962 up-scaling on both axes: large base + w x (small-instruct - small-base) keeps
    the large base's skill (accuracy on answerable problems, vs small-instruct) and takes the small
    fine-tune's behaviour (``undefined`` / ``too big`` on held-out ill-posed and big problems, ``a``
    on ``a/1``, vs the large base, which never answers so).

    Premise, on dev: the small fine-tune has the behaviour the large base lacks (compliance gap
    >= 0.5) and the large base has skill the small fine-tune lacks (accuracy gap >= 0.05). w is
    chosen on dev (the mean of accuracy and compliance). Seeds: testbed variants (fine-tunes
    retrained). Holds when EFT's accuracy beats small-instruct's and its compliance beats the large
    base's, each over its whole interval. Also reported: large base alone, large-instruct (the
    fine-tune up-scaling emulates), and EFT vs the large base's accuracy.
    """
    import numpy as np

    from align.testbed import build_variant
    from decoding import AuxiliaryModel, EFTLogitsProcessor
    from decoding.generate import generate_with

    from .protocol import check, judge, premise, select_on_dev

    sets = held_out_sets(n)
    behaviours = ("ill-posed", "beyond-horizon", "contrast")
    greedy = {"do_sample": False, "max_new_tokens": 12}
    acc: dict[str, list] = {k: [] for k in ("eft", "small-instruct", "large-base", "large-instruct")}
    comply: dict[str, list] = {k: [] for k in acc}
    per_seed, premise_rows = [], []
    for seed in seeds:
        variant = build_variant(tb, seed)
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
        per_seed.append({"seed": seed, "w": w, "dev": {str(k): {"accuracy": round(float(np.mean(a)), 4), "compliance": round(float(np.mean(c)), 4)}
                                                         for k, (a, c) in dev.items()}})
    gaps = np.array(premise_rows)
    behaviour = judge(claim="", metric="", premise=premise(), arms={k: v for k, v in comply.items()}, treated="eft", control="large-base")
    n_test = len(sets["answer"][1])
    return judge(
        claim="up-scaling (large base + w x small fine-tune delta) beats small-instruct on accuracy and the large base on the fine-tuned behaviour",
        metric=f"greedy exact answers on {n_test} held-out problems (accuracy) and {behaviour['difference']['prompts']} behaviour prompts (compliance)",
        premise=premise(check("small-instruct - large-base compliance on dev (min over seeds)", float(gaps[:, 0].min()), ">=", 0.5),
                        check("large-base - small-instruct accuracy on dev (min over seeds)", float(gaps[:, 1].min()), ">=", 0.05)),
        arms=acc, treated="eft", control="small-instruct",
        conditions=[check("compliance: eft - large-base, interval low", behaviour["difference"]["low"], ">", 0)],
        selection={"split": "dev", "n_dev": len(sets["answer"][0]), "grid": [str(w) for w in WEIGHTS],
                   "rule": "max dev mean of accuracy and compliance, per seed", "chosen": {str(p["seed"]): p["w"] for p in per_seed}},
        seeds=list(seeds), per_seed=per_seed, compliance=behaviour["arms"],
        compliance_difference=behaviour["difference"],
    )


ALPHAS = (0.5, 1.0, 1.5)  # the DLF paper's fixed weights; 1.0 is proxy-tuning


def dlf_vs_fixed(tb: "Testbed", n: int, seeds: tuple[int, ...] = SEEDS) -> Result:
    """DLF 2406.15480: per-step α (one active expert, chosen by the KL rule) beats fixed-α fusion.

    Multi-task: large base + small base + two experts, each fine-tuned on one behaviour the large
    base lacks (``small-expert-zero``: ``a/0`` -> ``undefined``; ``small-expert-big``: 5-6 digit
    operands -> ``too big``), on a mixed set of answerable, ``a/0``, big-operand and ``a/1``
    prompts (exact answers). Premise, on dev: each expert beats the large base on its own task by
    >= 0.5. The best fixed α of the paper's {0.5, 1, 1.5} (1 is proxy-tuning) is chosen on dev.
    Seeds: testbed variants (experts retrained). Holds when DLF beats the dev-chosen fixed α over
    the whole interval. Also reported: every fixed α, the large base and each expert alone, and the
    single-task setting (small-instruct as the one expert) under the same rules.
    """
    import numpy as np

    from align.testbed import build_variant
    from decoding import AuxiliaryModel, DLFLogitsProcessor, EFTLogitsProcessor
    from decoding.generate import generate_with

    from .protocol import check, judge, premise, select_on_dev

    sets = held_out_sets(n)
    kinds = ("answer", "ill-posed", "beyond-horizon", "contrast")
    greedy = {"do_sample": False, "max_new_tokens": 12}
    settings = {"multi-task": ("small-expert-zero", "small-expert-big"), "single-task": ("small-instruct",)}
    arms: dict[str, dict[str, list]] = {k: defaultdict(list) for k in settings}
    per_seed, own_gaps = [], []
    for seed in seeds:
        variant = build_variant(tb, seed)
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
        record = {"seed": seed}
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
    common = {"treated": "dlf", "control": "fixed alpha (chosen on dev)", "seeds": list(seeds), "op": ">"}
    single = judge(claim="single-task: DLF with small-instruct as the one expert beats the dev-chosen fixed alpha",
                   metric="exact answers", premise=premise(), arms=arms["single-task"], **common)
    return judge(
        claim="dynamic alpha (one active expert per step) beats the best fixed alpha on a two-expert multi-task set",
        metric=f"greedy exact answers on {test_n} held-out prompts (answerable, a/0, 5-6 digit, a/1)",
        premise=premise(check("small-expert-zero - large-base on a/0 (dev, min over seeds)", float(gaps[:, 0].min()), ">=", 0.5),
                        check("small-expert-big - large-base on big operands (dev, min over seeds)", float(gaps[:, 1].min()), ">=", 0.5)),
        arms=arms["multi-task"], **common,
        selection={"split": "dev", "n_dev": len(rows_of(0)), "grid": [str(a) for a in ALPHAS], "rule": "max dev exact answers, per seed",
                   "chosen": {str(p["seed"]): p["multi-task"]["alpha"] for p in per_seed}},
        per_seed=per_seed, single_task={k: single[k] for k in ("status", "arms", "difference", "test")},
    )


def gedi_steering(tb: "Testbed", n: int) -> Result:
    """GeDi 2009.06367: a small class-conditional guide steers the large base towards an attribute.

    Attribute: completing ``a-`` into an equation with a negative result (the guide is trained by
    :func:`align.testbed.gedi.build_sign_guide`, cached beside the testbed).
    """
    import numpy as np
    from transformers import AutoModelForCausalLM

    from decoding import GeDiLogitsProcessor
    from decoding.generate import generate_with

    from align.testbed.gedi import CODES, build_sign_guide, negative_fraction

    tok = tb.tokenizer()
    guide = AutoModelForCausalLM.from_pretrained(build_sign_guide(tb)).eval()
    large = tb.model("large-base")
    prompts = [f"{a}-" for a in np.random.default_rng(0).integers(10, 1000, n).tolist()]
    greedy = {"do_sample": False, "max_new_tokens": 10}

    def guided(desired: str, anti: str) -> dict[str, float]:
        def processors(rows: slice) -> list:
            return [GeDiLogitsProcessor(tok, guide, tok, prompts[rows], desired, anti)]

        return negative_fraction(prompts, [t for t, _ in generate_with(large, tok, prompts, processors, **greedy)])

    plain = negative_fraction(prompts, [t for t, _ in generate_with(large, tok, prompts, **greedy)])
    towards = guided(CODES["negative"], CODES["non-negative"])
    away = guided(CODES["non-negative"], CODES["negative"])
    return {
        "claim": "GeDi guidance raises the share of completions with the desired attribute (a negative result)",
        "metric": f"fraction of {n} greedy completions of 'a-' whose result is negative (omega=30, filter_p=0.8, tau=0.8)",
        "value": towards["negative"],
        "baseline": plain["negative"],
        "holds": towards["negative"] > plain["negative"],
        "sweep": {"plain": plain, "towards negative": towards, "away from negative": away},
    }


def steer_diversity(tb: "Testbed", n: int) -> Result:
    """STEER 2308.07645: contrastive guidance + negative prompting is more diverse than sampling.

    Task: free-running generation of equations by the large base (the "expert"), contrasted with
    the small base; the negative pool starts with 64 training equations and grows with outputs.
    Coherence: the share of generated equations that are arithmetically right.
    """
    from decoding import AuxiliaryModel, NegativePool, SteerLogitsProcessor
    from decoding.generate import generate_with

    from align.metrics import distinct_n, self_bleu
    from align.testbed import sample_problems
    from align.testbed.gedi import negative_fraction

    import numpy as np

    tok = tb.tokenizer()
    large, small = tb.model("large-base"), tb.model("small-base")
    prompts = [""] * n
    real = [f"{p.prompt}{p.answer}" for p in sample_problems(np.random.default_rng(0), 64, "train", digits=(2, 3))]
    pool = NegativePool(real, k=10, seed=0)
    sampling = {"do_sample": True, "temperature": 1.0, "top_k": None, "max_new_tokens": 16}

    def steer(rows: slice) -> list:
        size = len(range(*rows.indices(n)))
        negatives = AuxiliaryModel(large, tok, [pool.sample() for _ in range(size)], "negative")
        return [SteerLogitsProcessor(tok, AuxiliaryModel(small, tok, prompts[rows], "base"), negatives)]

    def stats(outputs: list[tuple[str, bool]]) -> dict[str, float]:
        texts = [t for t, _ in outputs]
        chars = [list(t) for t in texts]
        equations = [t.split("=")[0] + "=" for t in texts]
        return {
            **{f"distinct_{k}": round(distinct_n(chars, k), 4) for k in (1, 2, 3, 4)},
            "self_bleu": round(self_bleu(texts, tokenize="char"), 4),
            "correct": round(negative_fraction(equations, [t[len(e) :] for t, e in zip(texts, equations)])["correct"], 4),
        }

    import torch

    torch.manual_seed(0)
    plain = stats(generate_with(large, tok, prompts, batch_size=16, **sampling))
    torch.manual_seed(0)
    grow = lambda rows, out: pool.add(t for t, _ in out)  # noqa: E731
    steered = stats(generate_with(large, tok, prompts, steer, batch_size=16, on_batch=grow, **sampling))
    coherent = steered["correct"] >= plain["correct"] - 0.05
    return {
        "claim": "STEER samples are more diverse (higher distinct-4, lower self-BLEU) than plain sampling at matched coherence",
        "metric": f"distinct-4 over {n} sampled equations (char n-grams); coherence = share arithmetically right",
        "value": steered["distinct_4"],
        "baseline": plain["distinct_4"],
        "holds": steered["distinct_4"] > plain["distinct_4"] and steered["self_bleu"] < plain["self_bleu"] and coherent,
        "sweep": {"plain sampling": plain, "steer (gamma=0.2, eta=0.6, top_k=10)": steered},
    }


def ead_tradeoff(tb: "Testbed", n: int, seeds: tuple[int, ...] = SEEDS) -> Result:
    """EAD 2502.06833: most of the large model's accuracy while it emits a minority of tokens.

    Small/large instruct models on chat prompts, greedy. Testbed answers are 2-5 tokens, so the
    paper's window 5 and 10-token minimum run would never switch inside an answer: window 1, no
    minimum (the spec defaults are reported as one more point). Under the claim rules:

    * premise, on dev: large-instruct beats small-instruct by >= 5 points, and the small model's
      answer-token entropy ranks its errors (manifest AUROC >= 0.6) at every seed;
    * selection: per seed, τ is the most accurate on the dev problems among those whose dev large
      share is <= 0.5; the test problems are disjoint;
    * seeds: testbed variants (the instruct fine-tunes retrained), paired test prompts;
    * holds when EAD's accuracy minus 0.9 x large-only accuracy is above 0 for the whole interval
      and the mean test large share is <= 0.5; small-only and large-only are reported beside it.
    """
    import numpy as np
    import torch

    from align.testbed import build_variant, eval_problems, gold_reward
    from decoding import AuxiliaryModel, entropy_adaptive_generate
    from decoding.auxiliary import encode_prompts
    from decoding.generate import decode_completions, eos_token_ids, generate_with, pad_token_id

    from .protocol import check, dev_test_split, judge, premise, select_on_dev

    problems = eval_problems(n)
    dev, test = dev_test_split(n, 0.3, seed=0)
    arms: dict[str, list] = {"ead": [], "0.9 x large-instruct": [], "large-instruct": [], "small-instruct": []}
    per_seed, gaps, aurocs, shares = [], [], [], []
    for seed in seeds:
        variant = build_variant(tb, seed)
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
        per_seed.append({"seed": seed, "tau": tau, "dev_large_share": round(dev_runs[tau][1], 4), "test_large_share": round(share, 4),
                         "dev": {str(t): {"accuracy": round(float(a.mean()), 4), "large_share": round(f, 4)} for t, (a, f) in dev_runs.items()},
                         "spec defaults (window 5, min 10, tau 1.0) on test": round(float(ead(test, 1.0, 5, 10)[0].mean()), 4)})
    return judge(
        claim=">= 90% of large-only accuracy with the large model on <= 50% of tokens (EAD, window 1, no minimum run)",
        metric=f"greedy accuracy on {len(test)} held-out chat problems (tau chosen on {len(dev)} disjoint dev problems)",
        premise=premise(check("large-instruct - small-instruct accuracy on dev (mean over seeds)", float(np.mean(gaps)), ">=", 0.05),
                        check("small-instruct entropy AUROC for its errors (min over seeds)", float(min(aurocs)), ">=", 0.6)),
        arms=arms, treated="ead", control="0.9 x large-instruct", op=">",
        conditions=[check("mean test large share", float(np.mean(shares)), "<=", 0.5)],
        selection={"split": "dev", "n_dev": len(dev), "grid": [str(t) for t in TAUS], "rule": "max dev accuracy with dev large share <= 0.5, per seed",
                   "chosen": {str(p["seed"]): p["tau"] for p in per_seed}},
        seeds=list(seeds), per_seed=per_seed,
    )


def spec_eft_equivalence(tb: "Testbed", n: int) -> Result:
    """Speculative EFT (2310.12962) is EFT: same greedy answers, same sampling distribution.

    Greedy: every held-out chat prompt, speculative (k=3) vs the EFT processor. Sampling: the
    first generated token of one prompt drawn 2000 times vs the exact EFT distribution, with a
    total-variation test whose false-alarm rate is 1e-3 (:func:`align.metrics.tv_test`).
    """
    from align.testbed import eval_problems
    import torch

    from decoding import AuxiliaryModel, EFTLogitsProcessor, speculative_eft_generate
    from decoding.generate import decode_completions, generate_with

    from align.metrics import tv_test

    tok = tb.tokenizer()
    problems = eval_problems(n)
    prompts, answers = [p.prompt for p in problems], [p.answer for p in problems]
    chat = _chat(prompts)
    large, small, instruct = tb.model("large-base"), tb.model("small-base"), tb.model("small-instruct")

    def plain(rows: slice) -> list:
        return [EFTLogitsProcessor(tok, [AuxiliaryModel(instruct, tok, chat[rows])], AuxiliaryModel(small, tok, prompts[rows]))]

    reference = generate_with(large, tok, prompts, plain, do_sample=False, max_new_tokens=8)

    def speculative(i: int, **kw) -> "torch.Tensor":
        return speculative_eft_generate(
            AuxiliaryModel(large, tok, [prompts[i]], "base"), AuxiliaryModel(instruct, tok, [chat[i]], "tuned"),
            AuxiliaryModel(small, tok, [prompts[i]], "ref"), tok([prompts[i]], return_tensors="pt")["input_ids"],
            eos_token_id=tok.eos_token_id, **kw,
        )

    texts, drafted, accepted = [], 0, 0
    for i in range(n):
        out = speculative(i, max_new_tokens=8)
        texts += decode_completions(tok, [out.sequences[0, len(tok(prompts[i])["input_ids"]) :].tolist()])
        drafted, accepted = drafted + out.drafted, accepted + out.accepted
    identical = sum(a == b for a, b in zip(texts, reference))
    # sampling: first token of one prompt
    plain_ids = tok([prompts[0]], return_tensors="pt")["input_ids"]
    chat_ids = tok.apply_chat_template(chat[:1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        def next_logprobs(model, **inputs) -> torch.Tensor:
            return torch.log_softmax(model(**inputs).logits[0, -1, : len(tok)].float(), -1)

        z = next_logprobs(large, input_ids=plain_ids) + next_logprobs(instruct, **chat_ids) - next_logprobs(small, input_ids=plain_ids)
    exact = torch.softmax(z, -1)
    top = exact.topk(11).indices
    cells = torch.cat([exact[top], (1 - exact[top].sum()).reshape(1)])
    counts = torch.zeros(12)
    index = {int(t): c for c, t in enumerate(top)}
    g = torch.Generator().manual_seed(0)
    start = len(tok(prompts[0])["input_ids"])
    for _ in range(2000):
        token = int(speculative(0, max_new_tokens=1, do_sample=True, generator=g).sequences[0, start])
        counts[index.get(token, 11)] += 1
    test = tv_test(counts, cells)
    accuracy = _accuracy(texts, answers)
    return {
        "claim": "speculative EFT reproduces EFT: identical greedy outputs and an indistinguishable sampling distribution",
        "metric": f"greedy accuracy on {n} held-out prompts (speculative k=3 vs EFT processor); TV test on 2000 first tokens",
        "value": accuracy,
        "baseline": _accuracy(reference, answers),
        "holds": identical == n and bool(test["passed"]),
        "sweep": {
            "identical_greedy_outputs": f"{identical}/{n}",
            "acceptance_rate": round(accepted / max(1, drafted), 4),
            "tv_test": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in test.items()},
        },
    }
