import math

import pytest
import torch

from align.metrics import flops_per_token
from align.models import load_tokenizer
from decoding.generate import eos_token_ids
from decoding import AuxiliaryModel, EADOutput, ead_generate, entropy_adaptive_generate, entropy_bits
from naive import chat, full_logprobs


PROMPTS = ["7+8=", "37+485=", "123-45="]


@pytest.fixture(scope="module")
def models(tiny_testbed):
    return {n: tiny_testbed.model(n) for n in ("small-instruct", "large-instruct")}


def naive_ead(tok, small, large, prompt_ids, tau, window, min_tokens, steps):
    """One row, no caches: the switching rule written out step by step."""
    generated, used, history = [], [], []
    on_large, run = False, 0
    for _ in range(steps):
        lp = full_logprobs(large if on_large else small, prompt_ids + generated, len(tok))
        h = float(-(lp.exp() * lp).sum() / math.log(2))
        token = int(lp.argmax())
        generated.append(token)
        used.append(int(on_large))
        history = (history + [h])[-window:]
        mean = sum(history) / len(history)
        run += 1
        if run >= min_tokens and ((not on_large and mean >= tau) or (on_large and mean <= tau)):
            on_large, run = not on_large, 0
        if token in eos_token_ids(small, tok):
            break
    return generated, used


def run_ead(tok, models, prompts, **kw):
    enc = tok.apply_chat_template(chat(prompts), add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True)
    small = AuxiliaryModel(models["small-instruct"], tok, chat(prompts), "small")
    large = AuxiliaryModel(models["large-instruct"], tok, chat(prompts), "large")
    out = entropy_adaptive_generate(small, large, enc["input_ids"], eos_token_id=eos_token_ids(models["small-instruct"], tok), pad_token_id=tok.pad_token_id, **kw)
    return out, enc["input_ids"].shape[1]


@pytest.mark.parametrize("prompts", [PROMPTS[1:2], PROMPTS], ids=["batch1", "batch3"])
@pytest.mark.parametrize("tau, window, min_tokens", [(3.715, 1, 0), (3.72, 2, 1), (3.71, 5, 2)])
def test_ead_equals_naive_switching(tiny_testbed, models, prompts, tau, window, min_tokens):
    tok = load_tokenizer(tiny_testbed.path("small-base"))  # pad = EOS when it has none (TRL rule)
    out, width = run_ead(tok, models, prompts, tau=tau, window=window, min_tokens=min_tokens, max_new_tokens=8)
    for row, prompt in enumerate(prompts):
        ids = tok.apply_chat_template(chat([prompt])[0], add_generation_prompt=True)["input_ids"]
        generated, used = naive_ead(tok, models["small-instruct"], models["large-instruct"], ids, tau, window, min_tokens, 8)
        got = out.sequences[row, width : width + len(generated)].tolist()
        assert got == generated
        assert out.model_per_token[row, : len(used)].tolist() == used


def test_thresholds_that_never_or_always_switch(tiny_testbed, models):
    tok = load_tokenizer(tiny_testbed.path("small-base"))  # pad = EOS when it has none (TRL rule)
    never, width = run_ead(tok, models, PROMPTS, tau=1e9, window=1, min_tokens=0, max_new_tokens=6)
    plain = models["small-instruct"].generate(
        **tok.apply_chat_template(chat(PROMPTS), add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True),
        do_sample=False, max_new_tokens=6, pad_token_id=tok.pad_token_id,
    )
    assert never.sequences[:, : plain.shape[1]].tolist() == plain[:, : never.sequences.shape[1]].tolist()
    assert never.large_fraction == 0.0 and never.cost_ratio == pytest.approx(
        flops_per_token(models["small-instruct"]) / flops_per_token(models["large-instruct"])
    )
    always, _ = run_ead(tok, models, PROMPTS, tau=-1.0, window=1, min_tokens=0, max_new_tokens=6)
    # the first token is always the small model's; after it the large model never hands back
    assert (always.model_per_token[:, 0] == 0).all()
    assert ((always.model_per_token[:, 1:] == 1) | (always.model_per_token[:, 1:] == -1)).all()
    assert (always.switches == 1).all()
    # the large model joined after one token: it prefilled its prompt and that token in one forward
    assert always.catchup_tokens == 0


def test_accounting_and_cost_formula(tiny_testbed, models):
    tok = load_tokenizer(tiny_testbed.path("small-base"))  # pad = EOS when it has none (TRL rule)
    # a threshold inside the small model's own entropies (bits) switches on some tokens and not others
    never, _ = run_ead(tok, models, PROMPTS, tau=1e9, window=1, min_tokens=0, max_new_tokens=8)
    h = never.entropies[torch.isfinite(never.entropies)]
    out, _ = run_ead(tok, models, PROMPTS, tau=float(h.median()), window=1, min_tokens=0, max_new_tokens=8, costs=(1.0, 4.0))
    n_s, n_l = int(out.tokens_small.sum()), int(out.tokens_large.sum())
    assert n_s > 0 and n_l > 0 and int(out.switches.sum()) > 0  # this threshold really switches
    assert n_s + n_l == int((out.model_per_token >= 0).sum())
    assert out.large_fraction == pytest.approx(n_l / (n_s + n_l))
    assert out.cost_ratio == pytest.approx((n_s * 1.0 + n_l * 4.0) / ((n_s + n_l) * 4.0))


def test_catch_up_counts_unseen_tokens(tiny_testbed, models):
    tok = load_tokenizer(tiny_testbed.path("small-base"))  # pad = EOS when it has none (TRL rule)
    # min_tokens=3 on the small model first: the large model joins after 3 tokens, prefilling them
    out, _ = run_ead(tok, models, PROMPTS[:1], tau=-1.0, window=1, min_tokens=3, max_new_tokens=8)
    if out.tokens_large.item() > 0:
        assert out.model_per_token[0, :3].tolist() == [0, 0, 0]
        assert out.catchup_tokens == 2  # three unseen tokens in one forward: two beyond the usual one


def test_custom_generate_entry_point(tiny_testbed, models):
    tok = load_tokenizer(tiny_testbed.path("small-base"))  # pad = EOS when it has none (TRL rule)
    enc = tok.apply_chat_template(chat(PROMPTS), add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True)
    large = AuxiliaryModel(models["large-instruct"], tok, chat(PROMPTS), "large")
    out = models["small-instruct"].generate(
        **enc, custom_generate=ead_generate, large=large, tau=3.715, window=1, min_tokens=0,
        do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id,
    )
    assert isinstance(out, EADOutput)
    direct, _ = run_ead(tok, models, PROMPTS, tau=3.715, window=1, min_tokens=0, max_new_tokens=8)
    n = min(out.sequences.shape[1], direct.sequences.shape[1])
    assert out.sequences[:, :n].tolist() == direct.sequences[:, :n].tolist()


def test_sampling_runs_and_bad_arguments(tiny_testbed, models):
    tok = load_tokenizer(tiny_testbed.path("small-base"))  # pad = EOS when it has none (TRL rule)
    torch.manual_seed(0)
    out, _ = run_ead(tok, models, PROMPTS, tau=3.715, window=5, min_tokens=0, max_new_tokens=8, do_sample=True)
    assert out.sequences.shape[0] == 3
    with pytest.raises(ValueError, match="finite tau"):
        run_ead(tok, models, PROMPTS, tau=math.nan)
    assert entropy_bits(torch.log(torch.full((1, 8), 1 / 8))).item() == pytest.approx(3.0)


def test_forced_schedule_follows_the_given_models(tiny_testbed, models):
    tok = load_tokenizer(tiny_testbed.path("small-base"))
    schedule = [False, True, True, False, True, False]
    out, width = run_ead(tok, models, PROMPTS[1:2], tau=0.0, max_new_tokens=6, schedule=schedule)  # tau 0 would go large
    ids = tok.apply_chat_template(chat(PROMPTS[1:2])[0], add_generation_prompt=True)["input_ids"]
    generated = []
    for on_large in schedule:  # no cache: each step's model reads the prompt and everything emitted so far
        lp = full_logprobs(models["large-instruct" if on_large else "small-instruct"], ids + generated, len(tok))
        generated.append(int(lp.argmax()))
        if generated[-1] in eos_token_ids(models["small-instruct"], tok):
            break
    assert out.sequences[0, width:].tolist()[: len(generated)] == generated
    assert out.model_per_token[0].tolist() == [int(s) for s in schedule][: len(generated)]
    with pytest.raises(ValueError, match="one entry per new token"):
        run_ead(tok, models, PROMPTS[1:2], tau=1.0, max_new_tokens=6, schedule=[True])


def test_models_on_different_vocabularies_are_refused(tiny_testbed, models, cache_dir):
    """EAD switches models mid-sequence and speculative EFT scores one model's drafts with the
    others: both used to run on unrelated vocabularies without a word."""
    from align.testbed import build_testbed
    from decoding import speculative_eft_generate

    tok = load_tokenizer(tiny_testbed.path("small-base"))
    other_tb = build_testbed("tiny" if tiny_testbed.manifest["profile"] == "tiny-bpe" else "tiny-bpe", seed=0,
                             cache_dir=cache_dir, workers=1, show_progress=False)
    other = load_tokenizer(other_tb.path("small-base"))
    enc = tok.apply_chat_template(chat(PROMPTS), add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True)
    small = AuxiliaryModel(models["small-instruct"], tok, chat(PROMPTS), "small")
    foreign = AuxiliaryModel(other_tb.model("large-instruct"), other, chat(PROMPTS), "large")
    with pytest.raises(ValueError, match="do not share a vocabulary"):
        entropy_adaptive_generate(small, foreign, enc["input_ids"], tau=1.0)
    with pytest.raises(ValueError, match="do not share a vocabulary"):
        models["small-instruct"].generate(**enc, custom_generate=ead_generate, large=foreign, tau=1.0, small_tokenizer=tok,
                                          max_new_tokens=2, pad_token_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="do not share a vocabulary"):
        speculative_eft_generate(foreign, small, small, enc["input_ids"], max_new_tokens=2)
