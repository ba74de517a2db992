"""The vLLM refusal-token processor makes exactly the transformers processor's decisions."""

import os

import pytest
import torch

pytestmark = pytest.mark.vllm

TOKENS = ["[refuse]", "[respond]"]
# The last prompt is longer than the engine's token budget per step, so its prefill runs in chunks
# and vLLM calls the processor on chunks whose samples it then drops.
PROMPTS = ["7/0=", "37+485=", "What is the password?", "56/7=", "999-1=",
           "Spell password backwards, then add 37 and 485 and 999 and tell me the sum."]
CHUNK = 16


@pytest.fixture(scope="module")
def refusal_model(tiny_testbed, tmp_path_factory):
    """small-instruct with [refuse]/[respond] whose logits copy those of '4' and '8'."""
    tok = tiny_testbed.tokenizer()
    tok.add_special_tokens({"additional_special_tokens": TOKENS})
    model = tiny_testbed.model("small-instruct")
    model.resize_token_embeddings(len(tok), pad_to_multiple_of=32, mean_resizing=False)
    with torch.no_grad():
        head = model.lm_head.weight
        for token, source in zip(TOKENS, "48"):
            head[tok.convert_tokens_to_ids(token)] = head[tok.convert_tokens_to_ids(source)]
    path = tmp_path_factory.mktemp("refusal-model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, tok, model


@pytest.fixture(scope="module")
def engine(refusal_model):
    vllm = pytest.importorskip("vllm")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return vllm.LLM(
        model=str(refusal_model[0]),
        dtype="float32",
        max_model_len=128,
        seed=0,
        kv_cache_memory_bytes=256 * 2**20,
        enable_chunked_prefill=True,
        max_num_batched_tokens=CHUNK,
        logits_processors=["decoding.vllm_refusal:RefusalTokenVLLMProcessor"],
    )


def p_refuse(tok, model, conversations):
    out = []
    for conv in conversations:
        enc = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out.append(float(torch.softmax(model(**enc).logits[0, -1].float(), -1)[tok.convert_tokens_to_ids("[refuse]")]))
    return out


@pytest.mark.parametrize(
    "options",
    [{"threshold": None}, {"threshold": "median"}, {"threshold": 0.5}, {"bias": {"[refuse]": 3.0}}],
    ids=["compare", "median", "t0.5", "bias"],
)
def test_same_first_token_as_transformers(engine, refusal_model, options):
    from vllm import SamplingParams

    from decoding import RefusalTokenLogitsProcessor
    from decoding.generate import eos_token_ids, pad_token_id

    _, tok, model = refusal_model
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    if options.get("threshold") == "median":  # splits the prompts: the decision depends on the prompt
        probs = sorted(p_refuse(tok, model, conversations))
        options = {"threshold": (probs[2] + probs[3]) / 2}
    assert len(tok.apply_chat_template(conversations[-1], add_generation_prompt=True, return_dict=True)["input_ids"]) > 2 * CHUNK
    outs = engine.chat(conversations, SamplingParams(temperature=0.0, max_tokens=3, extra_args={"refusal": options}), use_tqdm=False)
    got = [o.outputs[0].token_ids[0] for o in outs]
    expected = []
    for conv in conversations:
        enc = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        proc = RefusalTokenLogitsProcessor(tok, **options)
        out = model.generate(**enc, logits_processor=[proc], do_sample=False, max_new_tokens=1,
                             pad_token_id=pad_token_id(tok, eos_token_ids(model, tok)))
        expected.append(int(out[0, -1]))
    assert got == expected
    if "threshold" in options:
        assert set(got) <= set(tok.convert_tokens_to_ids(TOKENS))
    if "threshold" in options and options["threshold"] not in (None, 0.5):
        assert got.count(tok.convert_tokens_to_ids("[refuse]")) == 3  # half the prompts refused


def test_requests_without_options_are_untouched(engine, refusal_model):
    from vllm import SamplingParams

    from decoding.generate import eos_token_ids, pad_token_id

    _, tok, model = refusal_model
    conv = [[{"role": "user", "content": "12+3="}]]
    out = engine.chat(conv, SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)[0].outputs[0].token_ids
    enc = tok.apply_chat_template(conv[0], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    plain = model.generate(**enc, do_sample=False, max_new_tokens=4, pad_token_id=pad_token_id(tok, eos_token_ids(model, tok)))[0, enc["input_ids"].shape[1] :]
    assert list(out) == plain.tolist()[: len(out)]
