"""vLLM (CPU) and transformers agree on greedy decoding of testbed models.

Runs in the vLLM venv only (`pytest -m vllm`); see .ci/run.
"""

import os

import pytest
import torch

pytestmark = pytest.mark.vllm

PROMPTS = ["37+485=", "12-7=", "999+1=", "5-250="]


@pytest.fixture(scope="module")
def tiny_testbed(testbed):
    """This module's tests run on both testbed flavours (char and BPE)."""
    return testbed


@pytest.fixture(scope="module")
def engine(tiny_testbed):
    vllm = pytest.importorskip("vllm")
    # Keep the engine core in this process: no spawn re-importing the test module.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    llm = vllm.LLM(
        model=str(tiny_testbed.path("small-instruct")),
        dtype="float32",
        max_model_len=128,
        seed=0,
        # an explicit KV budget: the RAM-fraction default depends on what else this machine runs
        kv_cache_memory_bytes=256 * 2**20,
        trust_remote_code=False,
    )
    yield llm
    del llm


def _hf_greedy(model, tokenizer, ids, max_new_tokens):
    """transformers' greedy continuation, cut after the first of the model's EOS ids."""
    from decoding.generate import eos_token_ids, pad_token_id

    eos = eos_token_ids(model, tokenizer)
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id(tokenizer, eos),
    )
    new = out[0, len(ids) :].tolist()
    end = next((i for i, t in enumerate(new) if t in eos), None)
    return new if end is None else new[: end + 1]


@pytest.mark.parametrize("chat", [False, True])
def test_greedy_vllm_equals_transformers(engine, tiny_testbed, chat):
    from vllm import SamplingParams

    tokenizer = tiny_testbed.tokenizer()
    model = tiny_testbed.model("small-instruct")
    params = SamplingParams(temperature=0.0, max_tokens=8)
    if chat:
        conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
        outputs = engine.chat(conversations, params, use_tqdm=False)
        prompt_ids = [tokenizer.apply_chat_template(c, add_generation_prompt=True)["input_ids"] for c in conversations]
    else:
        outputs = engine.generate(PROMPTS, params, use_tqdm=False)
        prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    for out, ids in zip(outputs, prompt_ids):
        assert list(out.prompt_token_ids) == list(ids)  # same tokenisation, <bos> (if any) included
        expected = _hf_greedy(model, tokenizer, ids, 8)
        got = list(out.outputs[0].token_ids)
        assert got == expected, (tokenizer.decode(ids), tokenizer.decode(got), tokenizer.decode(expected))


def test_best_of_n_through_vllm_keeps_the_highest_reward(engine):
    from rewards import FunctionReward, RewardEnsemble, best_of_n, vllm_sampler

    sample = vllm_sampler(engine, max_tokens=6, seed=0)
    drawn = sample(PROMPTS[:2], 8)
    assert [len(s) for s in drawn] == [8, 8] and all(isinstance(c.completion, str) for s in drawn for c in s)
    cut = vllm_sampler(engine, max_tokens=1, seed=0)(PROMPTS[:1], 2)  # no answer fits in one token
    assert [c.finished for c in cut[0]] == [False, False]
    ens = RewardEnsemble([FunctionReward(lambda p, c: len(c), "length"), FunctionReward(lambda p, c: c.count("1"), "ones")])
    picked = best_of_n(PROMPTS[:2], lambda prompts, n: drawn, ens, n=8)
    for (text, score, _), candidates in zip(picked, drawn):
        eligible = [c.completion for c in candidates if c.finished] or [c.completion for c in candidates]
        assert score == max(len(c) + c.count("1") for c in eligible) / 2 and len(text) + text.count("1") == 2 * score


# Keep last: run_generate starts and shuts down its own engine, and vLLM's shutdown tears down the
# process-wide parallel state the shared `engine` fixture still uses.
def test_align_generate_vllm_backend_equals_transformers(tiny_testbed, tmp_path):
    import json

    from align.generate import GenerateArgs, run_generate

    prompts = tmp_path / "p.txt"
    prompts.write_text("37+485=\n12-7=\n999+1=\n")
    common = dict(prompts=str(prompts), model="testbed:small-instruct", profile=tiny_testbed.manifest["profile"],
                  cache_dir=str(tiny_testbed.root.parents[1]), max_new_tokens=6)
    hf = run_generate(GenerateArgs(**common, output=str(tmp_path / "hf.jsonl")))
    vl = run_generate(GenerateArgs(**common, output=str(tmp_path / "vllm.jsonl"), backend="vllm"))
    rows = [[json.loads(l)["output"] for l in p.read_text().splitlines()] for p in (hf, vl)]
    assert rows[0] == rows[1]


def test_align_generate_vllm_samples_each_prompt_with_its_own_seed(tiny_testbed, tmp_path):
    """One seed per request (args.seed + row): the same prompt four times gives different samples,
    and a second run the same ones."""
    import json

    from align.generate import GenerateArgs, run_generate

    prompts = tmp_path / "p.txt"
    prompts.write_text("37+485=\n" * 4)
    common = dict(prompts=str(prompts), model="testbed:small-instruct", profile=tiny_testbed.manifest["profile"],
                  cache_dir=str(tiny_testbed.root.parents[1]), max_new_tokens=6, do_sample=True, temperature=1.5, backend="vllm")
    rows = [[json.loads(l)["output"] for l in run_generate(GenerateArgs(**common, output=str(tmp_path / f"{k}.jsonl"))).read_text().splitlines()]
            for k in range(2)]
    assert rows[0] == rows[1] and len(set(rows[0])) > 1
