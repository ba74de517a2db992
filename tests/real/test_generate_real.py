"""Generation on the real checkpoint: its chat template (default system prompt), tied head, pad = EOS,
and a generation config of its own."""

import json

import pytest
import torch

from align.generate import GenerateArgs, run_generate
from tests.real.conftest import SMALL, SMOLLM2

pytestmark = pytest.mark.real

PROMPTS = ["What is 2+3?", "Name three colours.", "Write one sentence about rain."]
N = 24


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def generate(common, prompt_file, tmp_path, name="out", **kw):
    args = GenerateArgs(prompts=str(prompt_file), output=str(tmp_path / f"{name}.jsonl"), max_new_tokens=N, **{**common, **kw})
    return [json.loads(line) for line in run_generate(args).read_text().splitlines()]


def hf_greedy(path, prompts, **generate_kwargs):
    """``model.generate`` on the chat-templated prompt, one at a time (no padding), text up to EOS."""
    from align.models import load_causal_lm, load_tokenizer

    tok, model = load_tokenizer(path), load_causal_lm(path).eval()
    out = []
    for p in prompts:
        enc = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        with torch.no_grad():
            ids = model.generate(**enc, do_sample=False, max_new_tokens=N, **generate_kwargs)[0, enc["input_ids"].shape[1]:]
        out.append(tok.decode(ids, skip_special_tokens=True))
    return out


def test_the_fixture_has_a_real_checkpoints_traits(smollm2):
    from align.models import load_tokenizer

    manifest = smollm2.manifest
    assert manifest["source"]["licence"] == "Apache-2.0" and len(manifest["source"]["sha256"]) == 64
    assert manifest["models"]["smollm2-135m-instruct"]["tied_embeddings"]
    path = smollm2.path("smollm2-135m-instruct")
    tok = load_tokenizer(path)
    assert len(tok) == 49152 and tok.pad_token == tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert (path / "generation_config.json").is_file() and (path / "model.safetensors").is_file()
    model = smollm2.model("smollm2-135m-instruct-6l")
    assert model.config.num_hidden_layers == 6 and model.lm_head.weight is model.model.embed_tokens.weight


def test_greedy_equals_model_generate_on_the_templated_prompt(common, prompt_file, tmp_path, smollm2):
    rows = generate(common, prompt_file, tmp_path, model=SMOLLM2, batch_size=3)  # batched, left-padded with EOS
    assert [r["output"] for r in rows] == hf_greedy(smollm2.path("smollm2-135m-instruct"), PROMPTS)
    assert rows[0]["output"].strip().startswith("2 + 3 = 5") and rows[0]["finished"]
    assert rows[0]["generation"]["eos_token_ids"] == [2] and rows[0]["generation"]["model_defaults"] == {}


def test_a_checkpoint_repetition_penalty_does_not_change_greedy_unless_asked(common, prompt_file, tmp_path, penalised_copy):
    plain = generate(common, prompt_file, tmp_path, "plain", model=SMOLLM2)
    copy = generate(common, prompt_file, tmp_path, "copy", model=str(penalised_copy))
    assert [r["output"] for r in copy] == [r["output"] for r in plain]
    asked = generate(common, prompt_file, tmp_path, "asked", model=str(penalised_copy), use_model_defaults=True)
    assert asked[0]["generation"]["model_defaults"] == {"repetition_penalty": 1.3}
    assert [r["output"] for r in asked] != [r["output"] for r in plain]
    # asked for, it is what transformers does with that penalty
    assert [r["output"] for r in asked] == hf_greedy(penalised_copy, PROMPTS, repetition_penalty=1.3)


def test_sampling_ignores_the_checkpoint_top_k_unless_asked(common, prompt_file, tmp_path, smollm2):
    """Ancestral sampling at temperature: the same draws whether or not the checkpoint sets top_k."""
    path = tmp_path / "topk"
    import shutil

    shutil.copytree(smollm2.path("smollm2-135m-instruct"), path)
    config = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**config, "top_k": 1}))
    base = generate(common, prompt_file, tmp_path, "s0", model=SMOLLM2, do_sample=True, temperature=1.5)
    copy = generate(common, prompt_file, tmp_path, "s1", model=str(path), do_sample=True, temperature=1.5)
    assert [r["output"] for r in copy] == [r["output"] for r in base]
    top1 = generate(common, prompt_file, tmp_path, "s2", model=str(path), do_sample=True, temperature=1.5, use_model_defaults=True)
    assert [r["output"] for r in top1] == hf_greedy(path, PROMPTS)  # top_k 1 leaves only the argmax


NEGATIVE = "Reply in French, rudely."
GRID = [round(0.1 * i, 1) for i in range(21)]


def kl(p, q):
    """KL(p || q) of two log-probability vectors, written out."""
    return float((p.exp() * (p - q)).sum())


def renormalised(z):
    return z - torch.logsumexp(z, -1)


def dlf_step(lp):
    """One expert: every α on the grid, the fused distribution whose two KLs from the large model
    best match the expert's two KLs from the small base (squared error); the first minimum wins."""
    best = None
    for alpha in GRID:
        fused = renormalised(lp["main"] + alpha * (lp["expert"] - lp["small"]))
        objective = (kl(fused, lp["main"]) - kl(lp["expert"], lp["small"])) ** 2 + (kl(lp["main"], fused) - kl(lp["small"], lp["expert"])) ** 2
        if best is None or objective < best[0]:
            best = (objective, fused)
    return best[1]


def steer_step(lp, gamma=0.5, eta=0.6, k=10):
    s = (1 + gamma) * lp["main"] - gamma * lp["base"] - eta * lp["negative"]
    s = torch.where(s >= s.topk(k).values[-1], s, torch.tensor(float("-inf")))
    return renormalised(s)


# Each method where it changes what greedy decoding gives (checked against plain decoding of its main
# model), through `align generate`, against a naive loop: every model re-reads its own chat-templated
# prompt plus the tokens so far (no cache, no padding, one row at a time) and the formula is written
# out here. Dropping the processor, swapping two members or feeding a member the wrong prompt fails.
# name: (CLI options, naive members {name: (model, prompts)}, naive step)
CASES = {
    "eft": ({"model": SMALL, "tuned": [SMOLLM2], "reference": SMALL, "weights": [0.5]},
            {"main": SMALL, "tuned": SMOLLM2, "reference": SMALL},
            lambda lp: renormalised(lp["main"] + 0.5 * (lp["tuned"] - lp["reference"]))),
    "dlf": ({"model": SMALL, "small_base": SMALL, "experts": [SMOLLM2]},
            {"main": SMALL, "small": SMALL, "expert": SMOLLM2}, dlf_step),
    "steer": ({"model": SMOLLM2, "base": SMALL, "gamma": 0.5, "eta": 0.6, "top_k": 10},
              {"main": SMOLLM2, "base": SMALL, "negative": (SMOLLM2, NEGATIVE)}, steer_step),
    "negative": ({"model": SMOLLM2, "negative_prompt": NEGATIVE, "guidance_scale": 3.0},
                 {"main": SMOLLM2, "negative": (SMOLLM2, NEGATIVE)},
                 lambda lp: 3.0 * (lp["main"] - lp["negative"]) + lp["negative"]),
}


@pytest.mark.parametrize("method", list(CASES))
def test_every_method_changes_the_output_as_its_formula_says(common, prompt_file, tmp_path, smollm2, method):
    from tests.naive import naive_greedy

    from align.models import load_tokenizer

    options, members, step = CASES[method]
    if method == "steer":
        negatives = tmp_path / "negatives.txt"
        negatives.write_text(NEGATIVE + "\n")  # one example: every row's negative context is it
        options = {**options, "negative_examples": str(negatives)}
    rows = generate(common, prompt_file, tmp_path, method, method=method, **options)
    tok = load_tokenizer(smollm2.path("smollm2-135m-instruct"))
    load = {SMOLLM2: smollm2.model("smollm2-135m-instruct"), SMALL: smollm2.model("smollm2-135m-instruct-6l")}
    chat = [[{"role": "user", "content": p}] for p in PROMPTS]
    naive = naive_greedy(tok, {name: (load[m], chat) if isinstance(m, str) else (load[m[0]], [[{"role": "user", "content": m[1]}]] * 3)
                               for name, m in members.items()}, step, N)
    expected = [tok.decode(ids, skip_special_tokens=True) for ids, _ in naive]
    plain = generate(common, prompt_file, tmp_path, "plain", model=options["model"])
    assert expected != [r["output"] for r in plain]  # the method changes the output here, so dropping it fails
    assert [r["output"] for r in rows] == expected


def test_ead_switches_models_as_its_rule_says(common, prompt_file, tmp_path, smollm2):
    """EAD on the real family: the 6-layer cut decodes and hands over to the full model while the
    rolling entropy (bits, of the model that chose the token) is at least τ, and back below it; the
    rule written out here, every model re-reading its prompt (no cache)."""
    import math

    from tests.naive import full_logprobs

    from align.models import load_tokenizer
    from decoding.auxiliary import encode_prompts

    tau, window, min_tokens = 1.0, 2, 2
    rows = generate(common, prompt_file, tmp_path, "ead", method="ead", model=SMALL, large=SMOLLM2, tau=tau, window=window,
                    min_tokens=min_tokens)
    tok = load_tokenizer(smollm2.path("smollm2-135m-instruct"))
    small, large = smollm2.model("smollm2-135m-instruct-6l"), smollm2.model("smollm2-135m-instruct")
    expected, used = [], []
    for prompt in encode_prompts(tok, [[{"role": "user", "content": p}] for p in PROMPTS]):
        generated, on_large, run, history, large_tokens = [], False, 0, [], 0
        for _ in range(N):
            lp = full_logprobs(large if on_large else small, prompt + generated, len(tok))
            history = (history + [float(-(lp.exp() * lp).sum()) / math.log(2)])[-window:]
            generated.append(int(lp.argmax()))
            large_tokens += on_large
            run += 1
            mean = sum(history) / len(history)
            if run >= min_tokens and ((not on_large and mean >= tau) or (on_large and mean <= tau)):
                on_large, run = not on_large, 0
            if generated[-1] == tok.eos_token_id:
                break
        expected.append(tok.decode(generated, skip_special_tokens=True))
        used.append(large_tokens)
    plain = generate(common, prompt_file, tmp_path, "plain", model=SMALL)
    assert 0 < sum(used) < sum(len(tok(e)["input_ids"]) for e in expected) + 3  # it switched, and not for every token
    assert expected != [r["output"] for r in plain]
    assert [r["output"] for r in rows] == expected and [r["large_tokens"] for r in rows] == used


def test_eft_upscaling_on_the_real_family_equals_the_processor(common, prompt_file, tmp_path, smollm2):
    """A shift that does something: the 6-layer model steered by (full - 6-layer), through the CLI and by hand."""
    from align.models import load_tokenizer
    from decoding import AuxiliaryModel, EFTLogitsProcessor
    from decoding.generate import generate_with

    rows = generate(common, prompt_file, tmp_path, method="eft", model=SMALL, tuned=[SMOLLM2], reference=SMALL, weights=[0.5])
    tok = load_tokenizer(smollm2.path("smollm2-135m-instruct"))
    small, full = smollm2.model("smollm2-135m-instruct-6l"), smollm2.model("smollm2-135m-instruct")
    chat = [[{"role": "user", "content": p}] for p in PROMPTS]
    expected = generate_with(small, tok, chat, lambda r: [EFTLogitsProcessor(
        tok, [AuxiliaryModel(full, tok, chat[r])], AuxiliaryModel(small, tok, chat[r]), [0.5])], do_sample=False, max_new_tokens=N)
    assert [r["output"] for r in rows] == [text for text, _ in expected]
    plain_small = generate(common, prompt_file, tmp_path, "small", model=SMALL)
    assert [r["output"] for r in rows] != [r["output"] for r in plain_small]


def test_gedi_on_the_real_family_equals_the_processor(common, prompt_file, tmp_path, smollm2):
    """The guide (the 6-layer model) reads control code + plain text with its own cache, the main
    model its chat template: the CLI and a hand-built processor agree token for token."""
    from align.models import load_tokenizer
    from decoding import GeDiLogitsProcessor
    from decoding.generate import generate_with

    rows = generate(common, prompt_file, tmp_path, method="gedi", model=SMOLLM2, gedi_model=SMALL, desired_code="positive",
                    anti_code="negative", omega=5.0)
    tok = load_tokenizer(smollm2.path("smollm2-135m-instruct"))
    main, guide = smollm2.model("smollm2-135m-instruct"), smollm2.model("smollm2-135m-instruct-6l")
    chat = [[{"role": "user", "content": p}] for p in PROMPTS]
    expected = generate_with(main, tok, chat, lambda r: [GeDiLogitsProcessor(
        tok, guide, tok, PROMPTS[r], "positive", "negative", 5.0)], do_sample=False, max_new_tokens=N)
    assert [r["output"] for r in rows] == [text for text, _ in expected]


def test_a_gguf_file_is_a_model_path(common, prompt_file, tmp_path, smollm2):
    """--model FILE.gguf: de-quantised on load, the same weights and tokenizer as the converted fixture."""
    from align.testbed.real import gguf_source

    rows = generate(common, prompt_file, tmp_path, "gguf", model=str(gguf_source()))
    plain = generate(common, prompt_file, tmp_path, "plain", model=SMOLLM2)
    assert [r["output"] for r in rows] == [r["output"] for r in plain]


def test_speculative_eft_on_the_real_family_equals_plain_eft(smollm2):
    """Speculative EFT on the real checkpoint (tied head, ChatML with its default system prompt,
    pad = EOS, left-padded rows of different lengths): the 6-layer cut drafts for
    full + 0.5 (6-layer - full), every row keeping its own accepted drafts (the others hidden in the
    caches); greedy, it decodes exactly what the EFT processor decodes, row by row."""
    from align.models import load_tokenizer
    from decoding import AuxiliaryModel, EFTLogitsProcessor, speculative_eft_generate
    from decoding.auxiliary import encode_prompts
    from decoding.generate import eos_token_ids, generate_ids

    tok = load_tokenizer(smollm2.path("smollm2-135m-instruct"))
    full, small = smollm2.model("smollm2-135m-instruct"), smollm2.model("smollm2-135m-instruct-6l")
    chat = [[{"role": "user", "content": p}] for p in PROMPTS]
    ids = encode_prompts(tok, chat)
    eos = eos_token_ids(full, tok)
    expected = generate_ids(full, tok, ids, lambda r: [EFTLogitsProcessor(
        tok, [AuxiliaryModel(small, tok, chat[r])], AuxiliaryModel(full, tok, chat[r]), [0.5])],
        batch_size=len(ids), do_sample=False, max_new_tokens=N)
    width = max(map(len, ids))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in ids])
    out = speculative_eft_generate(AuxiliaryModel(full, tok, chat, "base"), AuxiliaryModel(small, tok, chat, "tuned"),
                                   AuxiliaryModel(full, tok, chat, "ref"), input_ids, weight=0.5, k=3, max_new_tokens=N,
                                   eos_token_id=eos)
    for row, want in zip(out.sequences[:, width:].tolist(), expected):
        assert row[: len(want)] == want and set(row[len(want):]) <= {tok.pad_token_id}
    assert out.accepted > 0 and out.rounds < N  # drafts were accepted: fewer rounds than tokens
