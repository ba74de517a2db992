import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from align.testbed.gedi import CODES, build_sign_guide, negative_fraction, sign_code
from align.testbed.arithmetic import Problem
from align.models import load_tokenizer
from decoding.generate import eos_token_ids
from decoding import GeDiLogitsProcessor, gedi_filter, gedi_posterior
from decoding import gedi as gedi_module
from naive import assert_same_decoding, full_logprobs, naive_greedy, processor_greedy


PROMPTS = ["37-", "123-", "5-"]
STEPS = 5


@pytest.fixture(scope="module")
def guide(tiny_testbed):
    return AutoModelForCausalLM.from_pretrained(build_sign_guide(tiny_testbed)).eval()


NOISE = 1e-5  # cached vs from-scratch posteriors differ by float noise, ~1e-7


def naive_gedi(tok, guide, text_prompt, generated, lp_main, omega, filter_p, target_p):
    """Every class re-reads code + text from scratch; L_c summed token by token. Returns the scores
    and the tokens whose membership float noise may flip: posteriors within NOISE of the V_m cut
    (an uninformative guide puts many tokens at ~log 0.5, ordered only by rounding) or of τ."""
    posts = []
    for code in (CODES["negative"], CODES["non-negative"]):
        ids = tok(code + text_prompt)["input_ids"] + generated
        start = len(tok(code)["input_ids"])
        with torch.no_grad():
            lp = torch.log_softmax(guide(input_ids=torch.tensor([ids])).logits[0, :, : len(tok)].float(), -1)
        total = sum(float(lp[j - 1, ids[j]]) for j in range(start, len(ids)))
        t = len(ids) - start + 1
        posts.append((total + lp[-1]) / t)
    log_post = posts[0] - torch.logaddexp(posts[0], posts[1])
    score = lp_main + omega * log_post
    order = sorted(range(len(score)), key=lambda v: -float(log_post[v]))
    probs = torch.softmax(score, -1)
    keep, mass, cut = set(), 0.0, None
    for v in order:
        if mass >= 1 - filter_p:
            cut = float(log_post[v])
            break
        keep.add(v)
        mass += float(probs[v])
    keep |= {v for v in range(len(score)) if float(log_post[v].exp()) >= target_p}
    near = (log_post - cut).abs() <= NOISE if cut is not None else torch.zeros(len(score), dtype=torch.bool)
    near |= (log_post.exp() - target_p).abs() <= NOISE
    filtered = torch.tensor([float(score[v]) if v in keep else -math.inf for v in range(len(score))])
    return filtered, set(near.nonzero().flatten().tolist())


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["batch1", "batch3"])
@pytest.mark.parametrize("filter_p, target_p", [(0.8, 0.6), (1.0, 0.0)], ids=["filtered", "unfiltered"])
def test_gedi_equals_naive_recomputation(tiny_testbed, guide, prompts, filter_p, target_p):
    tok = load_tokenizer(tiny_testbed.path("small-base"))  # pad = EOS when it has none (TRL rule)
    large = tiny_testbed.model("large-base")
    omega = 5.0
    proc = GeDiLogitsProcessor(tok, guide, tok, prompts, CODES["negative"], CODES["non-negative"], omega, filter_p, target_p)
    got = processor_greedy(large, tok, prompts, proc, STEPS)
    flips = 0
    for (ids, scores), prompt in zip(got, prompts):  # one row at a time, no cache, no padding
        generated = []
        for step in range(STEPS):
            lp_main = full_logprobs(large, tok(prompt)["input_ids"] + generated, len(tok))
            expected, noisy = naive_gedi(tok, guide, prompt, generated, lp_main, omega, filter_p, target_p)
            kept, kept_naive = torch.isfinite(scores[step]), torch.isfinite(expected)
            differ = set((kept != kept_naive).nonzero().flatten().tolist())
            assert differ <= noisy, f"step {step}: membership differs beyond float noise at {sorted(differ - noisy)}"
            flips += len(differ)
            both = kept & kept_naive
            torch.testing.assert_close(scores[step][both], expected[both], atol=1e-4, rtol=0)
            # a noisy token's membership is the processor's call; with it, greedy must agree
            resolved = expected.clone()
            resolved[list(differ)] = scores[step][list(differ)]
            assert ids[step] == int(resolved.argmax())
            generated.append(ids[step])
            if generated[-1] in eos_token_ids(large, tok):
                break
        assert ids == generated
    if filter_p == 1.0:
        assert flips == 0  # nothing is filtered, so nothing can flip


def test_no_weight_no_filter_reproduces_the_model(tiny_testbed, guide):
    tok = load_tokenizer(tiny_testbed.path("small-base"))  # pad = EOS when it has none (TRL rule)
    large = tiny_testbed.model("large-base")
    proc = GeDiLogitsProcessor(tok, guide, tok, PROMPTS, "n:", "p:", omega=0.0, filter_p=1.0, target_p=0.0)
    got = processor_greedy(large, tok, PROMPTS, proc, STEPS)
    assert_same_decoding(got, naive_greedy(tok, {"main": (large, PROMPTS)}, lambda lp: lp["main"], STEPS))


def test_posterior_and_filter_by_hand():
    half = torch.log(torch.tensor([[0.5, 0.5]]))
    post = gedi_posterior(half, half, torch.zeros(1), torch.zeros(1), torch.ones(1))
    torch.testing.assert_close(post.exp(), torch.full((1, 2), 0.5))
    # class d explains token 0 four times better: P(d|0) = 0.8 at t = 1
    post = gedi_posterior(torch.log(torch.tensor([[0.8, 0.2]])), torch.log(torch.tensor([[0.2, 0.8]])), torch.zeros(1), torch.zeros(1), torch.ones(1))
    torch.testing.assert_close(post.exp(), torch.tensor([[0.8, 0.2]]))
    score = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    log_post = torch.log(torch.tensor([[0.9, 0.2, 0.5]]))
    # ρ = 0.05: the highest-posterior token alone (mass 0.1) reaches it; τ = 0.5 adds token 2
    out = gedi_filter(score, log_post, filter_p=0.95, target_p=0.5)
    assert torch.isfinite(out).tolist() == [[True, False, True]]


def test_errors(tiny_testbed, guide):
    tok = load_tokenizer(tiny_testbed.path("small-base"))  # pad = EOS when it has none (TRL rule)
    with pytest.raises(ValueError, match="omega must be finite"):
        GeDiLogitsProcessor(tok, guide, tok, PROMPTS, "n:", "p:", omega=math.nan)
    with pytest.raises(ValueError, match="filter_p must be in"):
        GeDiLogitsProcessor(tok, guide, tok, PROMPTS, "n:", "p:", filter_p=1.5)
    with pytest.raises(ValueError, match="must differ"):
        GeDiLogitsProcessor(tok, guide, tok, PROMPTS, "n:", "n:")


def test_sign_attribute_helpers():
    assert sign_code(Problem(3, "-", 5)) == "n:" and sign_code(Problem(5, "-", 3)) == "p:"
    stats = negative_fraction(["37-", "5-", "2+"], ["485=-448", "3=2", "2=5"])
    assert stats == {"negative": 1 / 3, "correct": 2 / 3}


def test_code_and_text_are_tokenized_apart(tiny_testbed, guide):
    """On BPE "w" + "or 37-" merges into "wor": tokenized together, the boundary would move and the
    guide would score the wrong tokens. The processor scores exactly the text's own tokens."""
    tok = load_tokenizer(tiny_testbed.path("small-base"))
    code, text = "w", "or 37-"
    proc = GeDiLogitsProcessor(tok, guide, tok, [text], code, "p:", omega=1.0)
    text_ids = tok(text, add_special_tokens=False)["input_ids"]
    assert proc.guide.prompt_ids[0] == tok(code)["input_ids"] + text_ids
    assert proc.text_lengths.tolist() == [len(text_ids)]
    start = len(tok(code)["input_ids"])
    ids = proc.guide.prompt_ids[0]
    with torch.no_grad():
        lp = torch.log_softmax(guide(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    expected = sum(float(lp[j - 1, ids[j]]) for j in range(start, len(ids)))
    proc(torch.tensor([tok(text)["input_ids"]]), torch.zeros(1, len(tok)))
    assert float(proc.guide.prompt_logprob[0]) == pytest.approx(expected, abs=1e-4)


def test_sign_guide_does_not_depend_on_the_global_generator(tiny_testbed, tmp_path):
    """The guide trains with dropout on the BPE flavour: its weights must come from its own seed, not
    from whatever drew from torch's global generator before the build (this once made GeDi's
    equivalence test depend on test order)."""
    import dataclasses
    import shutil

    from safetensors.torch import load_file

    weights = []
    for draws in (0, 7):
        root = tmp_path / f"tb{draws}"
        shutil.copytree(tiny_testbed.root, root, ignore=shutil.ignore_patterns("gedi-sign"))
        torch.rand(draws)
        weights.append(load_file(str(build_sign_guide(dataclasses.replace(tiny_testbed, root=root)) / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _full_sort_filter(score, log_post, filter_p, target_p):
    """V_m by sorting the whole vocabulary (stable: ties keep the lower id first)."""
    order = log_post.argsort(dim=-1, descending=True, stable=True)
    mass = torch.softmax(score, dim=-1).gather(-1, order)
    keep = (mass.cumsum(-1) - mass) < (1.0 - filter_p)
    v_m = torch.zeros_like(keep).scatter(-1, order, keep)
    return score.masked_fill(~(v_m | (log_post.exp() >= target_p)), float("-inf"))


@pytest.mark.parametrize("sync_free", [False, True], ids=["cpu-branches", "accelerator-branches"])
@pytest.mark.parametrize("filter_p", [0.8, 0.5, 0.2])  # rho = 1 would compare float rounding of a 20k-long cumsum
def test_candidate_filter_equals_full_sort(filter_p, sync_free, monkeypatch):
    if sync_free:  # the fixed-shape code a GPU runs, checked here on the CPU
        monkeypatch.setattr(gedi_module, "_syncs_are_free", lambda device: False)

        def bincount(*a, **k):  # on CUDA it reads the input's maximum back to the host
            raise AssertionError("torch.bincount in the fixed-shape (no-sync) path")

        monkeypatch.setattr(gedi_module.torch, "bincount", bincount)
    gen = torch.Generator().manual_seed(0)
    vocab = 20_000
    log_post = torch.nn.functional.logsigmoid(3 * torch.randn(6, vocab, generator=gen))
    log_post[1] = log_post[1].round(decimals=1)  # heavy ties, crossing every boundary
    score = torch.log_softmax(2 * torch.randn(6, vocab, generator=gen), -1) + 30 * log_post  # as GeDi scores
    score[2] = 0.01 * torch.randn(vocab, generator=gen)  # near-flat: rho is reached deep in the order (radix select)
    for candidates in (1, 4, 256, vocab):  # 1: every row goes through the radix select
        got = gedi_filter(score, log_post, filter_p, 0.9, candidates=candidates)
        assert torch.equal(torch.isfinite(got), torch.isfinite(_full_sort_filter(score, log_post, filter_p, 0.9)))
    # every row flat, as with random weights: no row can decide among its top 256 (skipped on CPU),
    # and the posterior spans a few thousand keys, so one histogram level finds the boundary
    log_post = torch.nn.functional.logsigmoid(1e-4 * torch.randn(4, vocab, generator=gen))
    score = 0.01 * torch.randn(4, vocab, generator=gen) + 30 * log_post
    got = gedi_filter(score, log_post, filter_p, 0.9)
    assert torch.equal(torch.isfinite(got), torch.isfinite(_full_sort_filter(score, log_post, filter_p, 0.9)))
    assert 0.5 * (1 - filter_p) * vocab < int(torch.isfinite(got[0]).sum()) < vocab
