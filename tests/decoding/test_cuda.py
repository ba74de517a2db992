"""CUDA equals CPU for the multi-model decoders: every piece of state stays on the input's device.
Marked ``cuda``; skipped where no GPU is present (run them on a GPU machine whenever one is lent)."""

import pytest
import torch
from naive import chat

from decoding import (
    AuxiliaryModel,
    DLFLogitsProcessor,
    EFTLogitsProcessor,
    RefusalTokenLogitsProcessor,
    entropy_adaptive_generate,
    gedi_filter,
    speculative_eft_generate,
)
from decoding.generate import eos_token_ids, generate_with

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PROMPTS = ["37+485=", "7-9=", "123+4="]


def _models(tb, device):
    return {n: tb.model(n).to(device) for n in ("small-base", "small-instruct", "large-base", "large-instruct")}


def _run(tb, device):
    from align.models import load_tokenizer

    tok = load_tokenizer(tb.path("small-base"))
    m = _models(tb, device)
    out = {}
    out["eft"] = generate_with(m["large-base"], tok, PROMPTS, lambda rows: [EFTLogitsProcessor(
        tok, [AuxiliaryModel(m["small-instruct"], tok, chat(PROMPTS)[rows])], AuxiliaryModel(m["small-base"], tok, PROMPTS[rows]))],
        do_sample=False, max_new_tokens=6)
    out["dlf"] = generate_with(m["large-base"], tok, PROMPTS, lambda rows: [DLFLogitsProcessor(
        tok, AuxiliaryModel(m["small-base"], tok, PROMPTS[rows]), [AuxiliaryModel(m["small-instruct"], tok, chat(PROMPTS)[rows])])],
        do_sample=False, max_new_tokens=6)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    width = max(map(len, ids))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in ids], device=device)
    eos = eos_token_ids(m["large-base"], tok)
    g = torch.Generator(device=device).manual_seed(0)
    spec = speculative_eft_generate(
        AuxiliaryModel(m["large-base"], tok, PROMPTS, "base"), AuxiliaryModel(m["small-instruct"], tok, chat(PROMPTS), "tuned"),
        AuxiliaryModel(m["small-base"], tok, PROMPTS, "ref"), input_ids, k=3, max_new_tokens=6, eos_token_id=eos, generator=g)
    out["spec"] = spec.sequences.cpu().tolist()
    ead = entropy_adaptive_generate(
        AuxiliaryModel(m["small-instruct"], tok, chat(PROMPTS), "small"), AuxiliaryModel(m["large-instruct"], tok, chat(PROMPTS), "large"),
        input_ids, tau=1.0, window=1, min_tokens=0, max_new_tokens=6, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    out["ead"] = ead.sequences.cpu().tolist()
    gen = torch.Generator().manual_seed(0)  # GeDi's filter: its fixed-shape radix select runs on the GPU
    log_post = torch.nn.functional.logsigmoid(3 * torch.randn(4, 5000, generator=gen))
    score = torch.log_softmax(2 * torch.randn(4, 5000, generator=gen), -1) + 30 * log_post
    score[1] = 0.01 * torch.randn(5000, generator=gen)  # a flat row: the top candidates cannot decide it
    out["gedi"] = torch.isfinite(gedi_filter(score.to(device), log_post.to(device), 0.8, 0.9)).cpu()
    tok.add_special_tokens({"additional_special_tokens": ["[refuse]", "[respond]"]})
    proc = RefusalTokenLogitsProcessor(tok, threshold=0.3)
    out["refusal"] = proc(torch.zeros(2, 1, dtype=torch.long, device=device), torch.zeros(2, len(tok), device=device)).cpu()
    return out


def test_cuda_equals_cpu(testbed):
    cpu, gpu = _run(testbed, "cpu"), _run(testbed, "cuda")
    for key in ("eft", "dlf", "spec", "ead"):
        assert cpu[key] == gpu[key], key  # greedy decoding: the same tokens on both devices
    torch.testing.assert_close(cpu["refusal"], gpu["refusal"])
    assert torch.equal(cpu["gedi"], gpu["gedi"]) and 0 < int(cpu["gedi"][1].sum()) < 5000


def test_refusal_probe_and_first_token_probs_on_cuda_equal_cpu(testbed, devices=("cpu", "cuda")):
    """The probe captures features on the model's device, fits on CPU copies and writes the rows
    back on the head's device; first_token_probs builds its batches there and returns CPU rows."""
    from align.testbed.datasets import refusal_sft
    from align.trainers.refusal import RefusalArgs, add_control_tokens, probe_control_rows, tag_rows
    from decoding.refusal import first_token_probs

    rows = tag_rows(refusal_sft(32, 2, seed=0)["train"], RefusalArgs())
    out = []
    for device in devices:
        tok, model = testbed.tokenizer(), testbed.model("small-instruct").to(device)
        ids = add_control_tokens(tok, model, ["[refuse]", "[respond]"], init="mean")
        report = probe_control_rows(model, tok, rows)
        probs = first_token_probs(model, tok, [r["prompt"] for r in rows[:8]])
        out.append((report, model.get_output_embeddings().weight[ids].detach().cpu(), probs))
    (cpu_report, cpu_rows, cpu_probs), (gpu_report, gpu_rows, gpu_probs) = out
    assert gpu_probs.device.type == "cpu"
    assert gpu_report["first_token_accuracy_after"] == pytest.approx(cpu_report["first_token_accuracy_after"], abs=1 / len(rows) + 1e-9)
    torch.testing.assert_close(gpu_rows, cpu_rows, atol=1e-3, rtol=1e-2)
    torch.testing.assert_close(gpu_probs, cpu_probs, atol=1e-4, rtol=1e-3)
