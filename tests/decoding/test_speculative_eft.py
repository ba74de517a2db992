import math

import pytest
import torch

from align.metrics import tv_test
from align.models import load_tokenizer
from decoding.generate import eos_token_ids
from decoding import AuxiliaryModel, EFTLogitsProcessor, speculative_eft_generate
from naive import chat, processor_greedy


PROMPTS = ["7+8=", "37+485=", "123-45="]


@pytest.fixture(scope="module")
def models(tiny_testbed):
    return {n: tiny_testbed.model(n) for n in ("small-base", "small-instruct", "large-base")}


def spec(tok, models, prompt, weight=1.0, **kw):
    prompts = prompt if isinstance(prompt, list) else [prompt]
    return speculative_eft_generate(
        AuxiliaryModel(models["large-base"], tok, prompts, "base"),
        AuxiliaryModel(models["small-instruct"], tok, chat(prompts), "tuned"),
        AuxiliaryModel(models["small-base"], tok, prompts, "ref"),
        tok(prompts, return_tensors="pt", padding=True)["input_ids"],
        weight=weight,
        **{"eos_token_id": eos_token_ids(models["large-base"], tok), **kw},
    )


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_identical_to_plain_eft(tiny_testbed, models, prompt, k):
    tok = load_tokenizer(tiny_testbed.path("small-base"))  # pad = EOS when it has none (TRL rule)
    proc = EFTLogitsProcessor(
        tok,
        tuned=[AuxiliaryModel(models["small-instruct"], tok, chat([prompt]), "tuned")],
        reference=AuxiliaryModel(models["small-base"], tok, [prompt], "ref"),
    )
    (expected, _), = processor_greedy(models["large-base"], tok, [prompt], proc, 12)
    out = spec(tok, models, prompt, k=k, max_new_tokens=12)
    n = len(tok(prompt)["input_ids"])
    assert out.sequences[0, n:].tolist() == expected
    assert out.drafted >= out.accepted >= 0 and out.rounds >= 1


def test_path_counts_add_up(tiny_testbed, models):
    """Batch 1: every round ends in a bonus token or in a rejection's replacement; a partial round
    accepted some drafts first. With the drafter as the target (tuned = reference = base) every
    draft is accepted: bonus rounds only."""
    tok = load_tokenizer(tiny_testbed.path("small-base"))
    g = torch.Generator().manual_seed(0)
    totals = {"rounds": 0, "bonus_rounds": 0, "residual_draws": 0, "partial_rounds": 0}
    for _ in range(20):
        out = spec(tok, models, "37+485=", k=3, max_new_tokens=8, do_sample=True, generator=g, eos_token_id=None)
        assert out.bonus_rounds + out.residual_draws == out.rounds and out.partial_rounds <= out.residual_draws
        for key in totals:
            totals[key] += getattr(out, key)
    assert totals["bonus_rounds"] > 0 and totals["residual_draws"] > 0 and totals["partial_rounds"] > 0
    same = {"large-base": models["small-base"], "small-instruct": models["small-base"], "small-base": models["small-base"]}
    out = spec(tok, same, "37+485=", k=3, max_new_tokens=8, do_sample=True, generator=g, eos_token_id=None)
    assert out.accepted == out.drafted and out.bonus_rounds == out.rounds == 2 and out.residual_draws == 0  # 3+1, 3+1


@pytest.mark.parametrize("prompt", PROMPTS)
def test_a_limit_that_cuts_before_eos_keeps_every_token(tiny_testbed, models, prompt):
    """max_new_tokens below the answer's length: the output is the first max_new_tokens tokens of
    the full answer, also when the round that reaches the limit drew EOS past it (a bonus token
    once made the row 'finished' and the trim cut it to one token)."""
    tok = load_tokenizer(tiny_testbed.path("small-base"))
    n = len(tok(prompt)["input_ids"])
    full = spec(tok, models, prompt, k=3, max_new_tokens=12).sequences[0, n:].tolist()
    for limit in range(1, len(full)):
        out = spec(tok, models, prompt, k=3, max_new_tokens=limit).sequences[0, n:].tolist()
        assert out == full[:limit], limit


@pytest.mark.parametrize("k_schedule", ["constant", "heuristic"])
@pytest.mark.parametrize("k", [1, 3])
def test_batched_greedy_identical_to_plain_eft(tiny_testbed, models, k, k_schedule):
    """Three left-padded rows, each keeping its own accepted drafts (the others' hidden in the
    caches), decode exactly what the EFT processor decodes for the same batch."""
    tok = load_tokenizer(tiny_testbed.path("small-base"))  # pad = EOS when it has none (TRL rule)
    proc = EFTLogitsProcessor(
        tok,
        tuned=[AuxiliaryModel(models["small-instruct"], tok, chat(PROMPTS), "tuned")],
        reference=AuxiliaryModel(models["small-base"], tok, PROMPTS, "ref"),
    )
    expected = [ids for ids, _ in processor_greedy(models["large-base"], tok, PROMPTS, proc, 12)]
    out = spec(tok, models, PROMPTS, k=k, max_new_tokens=12, k_schedule=k_schedule)
    width = tok(PROMPTS, return_tensors="pt", padding=True)["input_ids"].shape[1]
    for row, want in zip(out.sequences[:, width:].tolist(), expected):
        assert row[: len(want)] == want and set(row[len(want) :]) <= {tok.pad_token_id}


def test_rows_advance_independently(tiny_testbed, models):
    """A batch takes as many rounds as its slowest row alone, not one round per least-accepting
    row (the old batch-wide rollback took 1 + the fewest accepted drafts per round)."""
    tok = load_tokenizer(tiny_testbed.path("small-base"))
    solo = [spec(tok, models, p, k=3, max_new_tokens=12, eos_token_id=None, k_schedule="constant") for p in PROMPTS]
    out = spec(tok, models, PROMPTS, k=3, max_new_tokens=12, eos_token_id=None, k_schedule="constant")
    assert out.rounds == max(o.rounds for o in solo)
    width = tok(PROMPTS, return_tensors="pt", padding=True)["input_ids"].shape[1]
    for row, one, prompt in zip(out.sequences[:, width:].tolist(), solo, PROMPTS):
        assert row == one.sequences[0, len(tok(prompt)["input_ids"]) :].tolist()


def test_hidden_tokens_are_invisible(tiny_testbed, models):
    """After ``hide`` the next distribution equals a fresh model's that never read the hidden
    tokens (a naive no-cache recomputation), per row."""
    tok = load_tokenizer(tiny_testbed.path("small-base"))
    model, prompts = models["small-base"], ["7+8=", "37+485="]
    main = tok(prompts, return_tensors="pt", padding=True)["input_ids"]
    a, b, c = (torch.tensor([[t], [t]]) for t in (tok(d, add_special_tokens=False)["input_ids"][0] for d in "123"))
    aux = AuxiliaryModel(model, tok, prompts)
    aux.bind(main)
    aux(torch.cat([main, a], 1))
    aux(torch.cat([main, a, b, c], 1))
    aux.hide(torch.tensor([0, 2]), 2)  # row 0 hides b c, row 1 keeps both
    got = aux(torch.cat([main, a, b, c, c], 1))
    for row, (prompt, seen) in enumerate(zip(prompts, ([a, c], [a, b, c, c]))):
        ids = torch.tensor([tok(prompt)["input_ids"] + [int(t[row]) for t in seen]])
        with torch.no_grad():
            want = torch.log_softmax(model(input_ids=ids).logits[0, -1, : len(tok)].float(), -1)
        torch.testing.assert_close(got[row], want, atol=1e-4, rtol=1e-4)


def exact_two_token_distribution(tok, models, prompt, weight):
    """p(x1) p(x2|x1) of EFT, computed exactly for every first token (no sampling)."""
    V = len(tok)

    def lp(model, ids):
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=ids).logits[:, -1, :V].float(), -1)

    def eft(extra):
        rows = extra.shape[0]
        own = {
            "large-base": tok(prompt)["input_ids"],
            "small-base": tok(prompt)["input_ids"],
            "small-instruct": tok.apply_chat_template(chat([prompt])[0], add_generation_prompt=True)["input_ids"],
        }
        full = {n: torch.cat([torch.tensor([ids] * rows), extra], dim=1) for n, ids in own.items()}
        z = lp(models["large-base"], full["large-base"]) + weight * (
            lp(models["small-instruct"], full["small-instruct"]) - lp(models["small-base"], full["small-base"])
        )
        return torch.log_softmax(z, -1)

    first = eft(torch.zeros(1, 0, dtype=torch.long))[0].exp()  # [V]
    second = eft(torch.arange(V)[:, None]).exp()  # [V, V]: row x1
    joint = first[:, None] * second
    for eos in eos_token_ids(models["large-base"], tok):  # generation stops at EOS: (eos, anything) is one outcome
        joint[eos] = 0.0
        joint[eos, eos] = first[eos]
    return joint


@pytest.mark.parametrize("rows", [1, 2])
def test_sampling_matches_eft_distribution(tiny_testbed, models, rows):
    """Empirical two-token distribution vs the exact EFT one (with ``rows=2`` two copies of the
    prompt run as one batch, so each row is cut by the other's acceptance).

    Test: total variation over the 12 most likely token pairs plus an 'other' bucket (m = 13
    cells). By the Bretagnolle-Huber-Carol inequality P(TV > eps) <= 2^m exp(-2 N eps^2); with
    N = 2500 and a false-alarm rate of 1e-3, eps = sqrt((m ln 2 + ln 1000) / (2N)) = 0.054.
    """
    tok = load_tokenizer(tiny_testbed.path("small-base"))  # pad = EOS when it has none (TRL rule)
    prompt, weight, n_samples, m = "37+485=", 3.0, 2500, 13
    exact = exact_two_token_distribution(tok, models, prompt, weight)
    top = exact.flatten().topk(m - 1).indices
    cells = torch.cat([exact.flatten()[top], (1 - exact.flatten()[top].sum()).reshape(1)])
    eps = math.sqrt((m * math.log(2) + math.log(1000)) / (2 * n_samples))
    counts = torch.zeros(m)
    lookup = {int(i): c for c, i in enumerate(top)}
    g = torch.Generator().manual_seed(0)
    n_prompt = len(tok(prompt)["input_ids"])
    eos_ids = set(eos_token_ids(models["large-base"], tok))
    for _ in range(n_samples // rows):
        out = spec(tok, models, [prompt] * rows, weight=weight, k=2, max_new_tokens=2, do_sample=True, generator=g)
        for row in out.sequences[:, n_prompt:].tolist():
            x1, x2 = (row + [tok.eos_token_id] * 2)[:2]
            x2 = x1 if x1 in eos_ids else x2  # after EOS the row is padding
            counts[lookup.get(x1 * len(tok) + x2, m - 1)] += 1
    result = tv_test(counts, cells, false_alarm=1e-3)
    assert result["eps"] == pytest.approx(eps)
    assert result["passed"], result
    # the test has power: sampling the drafter alone would be far off
    drafter = torch.softmax(
        models["small-instruct"](**tok.apply_chat_template(chat([prompt]), add_generation_prompt=True, return_tensors="pt", return_dict=True)).logits[0, -1, : len(tok)].float(), -1
    )
    assert 0.5 * (drafter - exact.sum(1)).abs().sum().item() > 2 * eps


def test_errors(tiny_testbed, models):
    tok = load_tokenizer(tiny_testbed.path("small-base"))  # pad = EOS when it has none (TRL rule)
    with pytest.raises(ValueError, match="k >= 1"):
        spec(tok, models, "1+1=", k=0)
    with pytest.raises(ValueError, match="3 prompts were given"):  # one auxiliary prompt per row
        speculative_eft_generate(
            AuxiliaryModel(models["large-base"], tok, PROMPTS), AuxiliaryModel(models["small-instruct"], tok, PROMPTS),
            AuxiliaryModel(models["small-base"], tok, PROMPTS), tok(PROMPTS[:2], return_tensors="pt", padding=True)["input_ids"],
        )
