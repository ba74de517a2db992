"""EFT and DLF served by vLLM as one composite model (decoding/vllm_fusion.py) decode what the
transformers processors decode: greedy outputs equal on both testbed flavours, samples follow the
exact EFT distribution, and continuous batching, n > 1 and prefix caching change nothing.

Runs in the vLLM venv only (`pytest -m vllm`); see .ci/run. Every member reads the main model's
prompt here (a composite has one token stream per request), so the transformers side is told to
read the same (chat) prompts for every model too."""

import os

import pytest
import torch

from align.generate import GenerateArgs, ModelStore, generate_outputs

pytestmark = pytest.mark.vllm

PROMPTS = ["37+485=", "12-7=", "999+1=", "5-250=", "1+1=", "123-45=", "8+8=", "70-3=", "4321+1234="]
SETUPS = {
    "eft": {"model": "testbed:large-base", "tuned": ["testbed:small-instruct"], "reference": "testbed:small-base"},
    "dlf": {"model": "testbed:large-base", "small_base": "testbed:small-base",
            "experts": ["testbed:small-expert-zero", "testbed:small-expert-big"]},
}
FORMAT = "chat"  # every model reads the chat-templated prompt (tuned and reference then differ most)
STORES: dict = {}  # (backend, flavour, method) -> ModelStore: one engine per composite (starting one costs ~30-40 s)


@pytest.fixture(scope="module", autouse=True)
def in_process():
    pytest.importorskip("vllm")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _args(testbed, method, backend, **kw):
    setup = SETUPS[method]
    refs = [setup["model"], *setup.get("tuned", []), *setup.get("experts", []),
            *[setup[k] for k in ("reference", "small_base") if k in setup]]
    return GenerateArgs(prompts="<test>", method=method, backend=backend, profile=testbed.manifest["profile"],
                        cache_dir=str(testbed.root.parents[1]), dtype="float32", max_new_tokens=8,
                        prompt_format={r: FORMAT for r in refs}, **{**setup, **kw})


def _run(testbed, method, backend, prompts, **kw):
    args = _args(testbed, method, backend, **kw)
    store = STORES.setdefault((backend, testbed.manifest["profile"], method), ModelStore(args))
    return generate_outputs(args, prompts, store), store


def _engine(testbed, method):
    _run(testbed, method, "vllm", PROMPTS[:1])
    (engine,) = STORES[("vllm", testbed.manifest["profile"], method)].engines.values()
    return engine


@pytest.mark.parametrize("method", ["eft", "dlf"])
def test_greedy_composite_equals_the_transformers_processor(testbed, method):
    """Prompts of different lengths, transformers in batches of 1 and 4 (left padding), vLLM all at
    once: the same text and token count for every prompt."""
    vllm_rows, _ = _run(testbed, method, "vllm", PROMPTS)
    for batch_size in (1, 4):
        hf_rows, _ = _run(testbed, method, "transformers", PROMPTS, batch_size=batch_size)
        assert [(r["output"], r["tokens"]) for r in vllm_rows] == [(r["output"], r["tokens"]) for r in hf_rows]
    # the fusion changed something: the large model alone decodes otherwise on some prompt
    alone = GenerateArgs(**{**vars(_args(testbed, method, "transformers")), "method": "plain"})
    assert [r["output"] for r in generate_outputs(alone, PROMPTS)] != [r["output"] for r in vllm_rows]


def test_a_member_reading_another_format_is_warned_about(testbed, monkeypatch):
    """Under transformers the chat-tuned member reads its chat template; in a composite it reads the
    main model's plain prompt: said before any engine starts."""
    class Started(Exception):
        pass

    def engine(*a, **k):
        raise Started

    monkeypatch.setattr("vllm.LLM", engine)
    args = GenerateArgs(**{**vars(_args(testbed, "eft", "vllm")), "prompt_format": {}})
    with pytest.warns(UserWarning, match="testbed:small-instruct reads the main model's plain prompt"), pytest.raises(Started):
        generate_outputs(args, PROMPTS[:1], ModelStore(args))


def test_continuous_batching_and_n_give_what_each_request_gets_alone(testbed):
    """Requests join a running batch at different steps and finish at different lengths; each
    equals its own run alone. n = 3 copies sampled with top-k 1 are the greedy sequence three times."""
    from vllm import SamplingParams

    engine = _engine(testbed, "eft")
    tok = engine.get_tokenizer()
    lengths = [3, 9, 5, 12, 4]
    alone = [engine.generate([p], SamplingParams(temperature=0, max_tokens=m, ignore_eos=True), use_tqdm=False)[0].outputs[0].token_ids
             for p, m in zip(PROMPTS, lengths)]
    core = engine.llm_engine
    arrivals = {0: [0, 1], 2: [2], 3: [3], 6: [4]}  # step -> requests added before it
    done, step = {}, 0
    while len(done) < len(lengths):
        for i in arrivals.get(step, []):
            core.add_request(f"cb-{i}", {"prompt_token_ids": tok(PROMPTS[i])["input_ids"]},
                             SamplingParams(temperature=0, max_tokens=lengths[i], ignore_eos=True))
        for out in core.step():
            if out.finished:
                done[int(out.request_id.split("-")[1])] = out.outputs[0].token_ids
        step += 1
    assert [list(done[i]) for i in range(len(lengths))] == [list(a) for a in alone]
    assert [len(a) for a in alone] == lengths
    # n > 1 needs sampling; top-k 1 samples the argmax of the fused distribution, on every copy
    copies = engine.generate([PROMPTS[1]], SamplingParams(temperature=1.0, top_k=1, max_tokens=9, ignore_eos=True, n=3), use_tqdm=False)[0]
    assert [list(o.token_ids) for o in copies.outputs] == [list(alone[1])] * 3


def test_prefix_caching_on_and_off_decode_alike(testbed, tmp_path):
    """Prompts sharing a long prefix, generated twice (the second time from cached blocks): an engine
    with prefix caching on (vLLM's default) and one with it off give the same greedy tokens."""
    from vllm import LLM, SamplingParams

    cached = _engine(testbed, "eft")
    (composite,) = STORES[("vllm", testbed.manifest["profile"], "eft")].composites.values()
    # kept to the end of the session: shutting an engine down tears down state the others share
    uncached = STORES.setdefault(("uncached", composite), LLM(model=composite, dtype="float32", seed=0, enable_prefix_caching=False,
                                                               kv_cache_memory_bytes=2**27, enforce_eager=True))
    head = "12+34=46 " * 6
    prompts = [head + p for p in PROMPTS[:4]]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)

    def twice(llm):  # the second call finds the first call's blocks cached (when caching is on)
        return [[list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)] for _ in range(2)]

    on, off = twice(cached), twice(uncached)
    assert on[0] == on[1] == off[0] == off[1]
    assert cached.llm_engine.vllm_config.cache_config.enable_prefix_caching
    assert not uncached.llm_engine.vllm_config.cache_config.enable_prefix_caching


def test_samples_follow_the_exact_eft_distribution(testbed):
    """Whole 2-token sequences sampled at temperature 1 (n = 3,000 from one request) against their
    exact EFT probabilities by teacher forcing without a cache (the `spec-eft-equivalence`
    recomputation). Cells, fixed before sampling: the 15 most probable sequences under the exact
    EFT distribution (searched among the 40 likeliest first tokens), plus "other". A total-variation
    test at false-alarm 1e-3 passes for the EFT probabilities and rejects the large model's own
    (weight 0), so it can tell the two apart."""
    from vllm import SamplingParams

    from align.claims.decoding import eft_sequence_logprobs
    from align.metrics import tv_test

    engine = _engine(testbed, "eft")
    tok = testbed.tokenizer()
    # every member reads the chat-templated prompt, where the tuned member differs most from the reference
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True, return_dict=True)["input_ids"]
    models = (testbed.model("large-base"), testbed.model("small-instruct"), testbed.model("small-base"))

    def exact(sequences, weight=1.0):
        return torch.cat([eft_sequence_logprobs(models, (ids, ids), part, weight) for part in sequences.split(1024)]).exp().double()

    vocab = len(tok)
    firsts = exact(torch.arange(vocab)[:, None]).argsort(descending=True)[:40]
    candidates = torch.stack([firsts.repeat_interleave(vocab), torch.arange(vocab).repeat(len(firsts))], dim=1)
    cells = candidates[exact(candidates).argsort(descending=True)[:15]]

    out = engine.generate([{"prompt_token_ids": ids}], SamplingParams(temperature=1.0, max_tokens=2, ignore_eos=True, n=3000, seed=1),
                          use_tqdm=False)
    index = {tuple(c): j for j, c in enumerate(cells.tolist())}
    counts = torch.zeros(len(cells) + 1, dtype=torch.float64)
    for o in out[0].outputs:
        counts[index.get(tuple(o.token_ids), len(cells))] += 1

    def with_other(p):
        return torch.cat([p, (1 - p.sum()).clamp(min=0).reshape(1)])

    fit = tv_test(counts, with_other(exact(cells)))
    assert fit["passed"], fit
    alone = tv_test(counts, with_other(exact(cells, 0.0)))
    assert not alone["passed"], alone
