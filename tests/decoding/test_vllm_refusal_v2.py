"""The refusal processor under vLLM's Model Runner V2 interface (the GPU default in vLLM 0.32),
driven on CPU through V2's own loader, its admission-time validator and its ``apply(logits, ctx)``.
The CPU engine runs V1 (no Triton); tests/decoding/test_vllm_refusal.py runs the whole processor there."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.vllm

PATH = "decoding.vllm_refusal:RefusalTokenVLLMProcessor"
TOKENS = ["[refuse]", "[respond]"]


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_testbed, tmp_path_factory):
    tok = tiny_testbed.tokenizer()
    tok.add_special_tokens({"additional_special_tokens": TOKENS})
    path = tmp_path_factory.mktemp("refusal-tokenizer")
    tok.save_pretrained(path)
    return path, tok


def req_states(prompt_lens: dict[int, int], vocab: int, max_num_reqs: int = 8):
    prompt_len = np.zeros(max_num_reqs, dtype=np.int32)
    for slot, n in prompt_lens.items():
        prompt_len[slot] = n
    return SimpleNamespace(device=torch.device("cpu"), max_num_reqs=max_num_reqs, vocab_size=vocab, all_token_ids=None,
                           prompt_len=SimpleNamespace(np=prompt_len), prefill_len=None, total_len=None)


def test_v2_loader_builds_it_and_it_decides_only_at_a_first_step(tokenizer_dir):
    pytest.importorskip("vllm")
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext

    from decoding import RefusalTokenLogitsProcessor

    path, tok = tokenizer_dir
    vocab = len(tok)
    # slots: 5 samples its first token (it sees exactly its prompt), 2 is in a prefill chunk, 7 is
    # past its first token, 1 asked for no control
    prompts = {5: 9, 2: 40, 7: 6, 1: 9}
    states = req_states(prompts, vocab)
    config = SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(path)))
    (proc,) = build_custom_logits_processors(config, states, False, [PATH])
    options = {"threshold": 0.3}
    for slot in (5, 2, 7):
        assert proc.add_request(slot, SamplingParams(extra_args={"refusal": options})) is True
    assert proc.add_request(1, SamplingParams()) is False

    torch.manual_seed(0)
    logits = torch.randn(4, vocab)
    refuse = tok.convert_tokens_to_ids("[refuse]")
    logits[0, refuse] = 12.0  # slot 5: p[refuse] high -> forced [refuse]
    slots = np.array([5, 2, 7, 1])
    seen = np.array([9, 16, 8, 9])  # tokens visible to each row's sampled token
    ctx = LogitsContext(expanded_idx_mapping=torch.tensor(slots), idx_mapping=torch.tensor(slots), idx_mapping_np=slots,
                        expanded_local_pos=torch.zeros(4, dtype=torch.long), input_ids=torch.zeros(4, dtype=torch.long),
                        pos=torch.tensor(seen - 1), seq_lens_upper_bound_np=seen)
    out = proc.apply(logits.clone(), ctx)

    expected, forced = RefusalTokenLogitsProcessor(tok, **options).decide(logits[:1])
    assert int(forced[0]) == refuse
    assert torch.equal(out[0], expected[0])
    assert int(out[0].argmax()) == refuse and torch.isinf(out[0]).sum() == vocab - 1
    assert torch.equal(out[1:], logits[1:])  # prefill chunk, later step, no options: untouched

    # a slot's next occupant without options is untouched even at its first step
    assert proc.add_request(5, SamplingParams()) is False
    assert torch.equal(proc.apply(logits.clone(), ctx), logits)


def test_v2_admission_validates_the_options(tokenizer_dir):
    pytest.importorskip("vllm")
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator

    validate = build_custom_logits_processors_params_validator([PATH])
    validate(SamplingParams(extra_args={"refusal": {"threshold": 0.3}}))
    validate(SamplingParams())
    for bad, words in (({"threshold": 1.5}, "threshold must be a probability"), ({"treshold": 0.3}, "unknown refusal options"),
                       ({"threshold": 0.3, "bias": {"[refuse]": 1.0}}, "bias mode"), ("0.3", "must be a mapping")):
        with pytest.raises(VLLMValidationError, match=words):
            validate(SamplingParams(extra_args={"refusal": bad}))


def test_a_v1_only_processor_is_what_v2_rejects():
    """The failure users of GPUs saw: V2's loader refuses a class that is only a V1 processor."""
    pytest.importorskip("vllm")
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator

    class OnlyV1(V1):
        def __init__(self, *a):
            pass

        def apply(self, logits):
            return logits

        def is_argmax_invariant(self):
            return True

        def update_state(self, batch_update):
            pass

    with pytest.raises(ValueError, match="not a subclass"):
        build_custom_logits_processors_params_validator([OnlyV1])
