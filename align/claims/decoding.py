"""Decoding-time claims (EFT, DLF, GeDi, STEER, EAD, speculative EFT) checked on the offline testbed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the testbed pulls in torch; `align --help` lists claims without it
    from align.testbed import Testbed

Result = dict[str, Any]


def _chat(prompts: list[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": p}] for p in prompts]


def _accuracy(completions: list[tuple[str, bool]], answers: list[int]) -> float:
    from align.testbed import gold_reward

    return round(sum(gold_reward(t, a, done) for (t, done), a in zip(completions, answers)) / len(answers), 4)


def eft_upscaling(tb: "Testbed", n: int) -> Result:
    """EFT 2310.12962: large base + small-instruct delta answers chat prompts better than small-instruct."""
    from align.testbed import eval_problems
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


def dlf_vs_fixed(tb: "Testbed", n: int) -> Result:
    """DLF 2406.15480: per-step α (one active expert) beats fixed-α fusion of two task experts."""
    from align.testbed import eval_problems
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


def ead_tradeoff(tb: "Testbed", n: int) -> Result:
    """EAD 2502.06833: most of the large model's accuracy while it emits a minority of tokens.

    Small/large instruct models on chat prompts. Testbed answers are 2-5 tokens, so the paper's
    window 5 and 10-token minimum run would never switch inside an answer: the sweep uses window 1
    and no minimum (and reports the spec defaults as one more point).
    """
    from align.testbed import eval_problems
    from decoding import AuxiliaryModel, entropy_adaptive_generate
    from decoding.auxiliary import encode_prompts
    from decoding.generate import decode_completions

    import torch

    tok = tb.tokenizer()
    problems = eval_problems(n)
    chat = _chat([p.prompt for p in problems])
    answers = [p.answer for p in problems]
    small, large = tb.model("small-instruct"), tb.model("large-instruct")
    ids = encode_prompts(tok, chat)
    width = max(map(len, ids))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in ids])

    def run(tau: float, window: int = 1, min_tokens: int = 0) -> dict[str, float]:
        out = entropy_adaptive_generate(
            AuxiliaryModel(small, tok, chat, "small"), AuxiliaryModel(large, tok, chat, "large"), input_ids,
            tau, window, min_tokens, max_new_tokens=8, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
        texts = decode_completions(tok, out.sequences[:, width:].tolist())
        return {"accuracy": _accuracy(texts, answers), "large_fraction": round(out.large_fraction, 4),
                "cost_ratio": round(out.cost_ratio, 4), "catchup_tokens": out.catchup_tokens}

    curve = {str(tau): run(tau) for tau in (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)}
    large_only = run(-1e9)["accuracy"]  # switches after the first token: nearly large-only
    from decoding.generate import generate_with

    large_alone = _accuracy(generate_with(large, tok, chat, do_sample=False, max_new_tokens=8), answers)
    small_alone = _accuracy(generate_with(small, tok, chat, do_sample=False, max_new_tokens=8), answers)
    within_budget = [p for p in curve.values() if p["large_fraction"] <= 0.5] or list(curve.values())
    best = max(within_budget, key=lambda p: p["accuracy"])  # most accurate point using the large model <= 50%
    return {
        "claim": ">= 90% of large-only accuracy with the large model on <= 50% of tokens",
        "metric": f"greedy accuracy on {n} held-out chat prompts (window 1, no minimum run; entropy in bits)",
        "value": best["accuracy"],
        "baseline": large_alone,
        "holds": best["large_fraction"] <= 0.5 and best["accuracy"] >= 0.9 * large_alone,
        "sweep": {
            "tau": curve,
            "large-instruct alone": large_alone,
            "small-instruct alone": small_alone,
            "large after the first token (tau=-inf)": large_only,
            "spec defaults (window 5, min 10 tokens, tau 1.0)": run(1.0, 5, 10),
            "best point": best,
        },
    }


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
