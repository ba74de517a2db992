import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.testbed import build_testbed, capability_checks, eval_problems, load_testbed
from align.metrics import flops_per_token
from align.testbed.evaluate import answer_token_entropy_auroc, greedy_completions
from align.testbed.tokenizer import build_tokenizer
from align.testbed.train import encode_rows, lr_at

MODELS = ["small-base", "small-instruct", "small-expert-zero", "small-expert-big", "large-base", "large-instruct"]


def weights(root, name):
    return load_file(str(root / name / "model.safetensors"))


def test_every_artifact_is_a_hf_checkpoint(tiny_testbed):
    assert list(tiny_testbed.models) == MODELS
    for name in MODELS:
        path = tiny_testbed.path(name)
        assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        assert type(model).__name__ == "LlamaForCausalLM"
        assert model.config.head_dim == 64
        assert model.config.vocab_size >= len(tok) and model.config.vocab_size % 32 == 0
        out = model(**tok(["12+3="], return_tensors="pt"))
        assert out.logits.shape[-1] == model.config.vocab_size
    info = tiny_testbed.models
    assert info["large-base"]["flops_per_token"] > 2 * info["small-base"]["flops_per_token"]
    assert info["small-base"]["cost_ratio"] == 1.0
    assert info["small-instruct"]["parent"] == "small-base" and info["small-instruct"]["format"] == "chat"
    for entry in info.values():
        assert 0.0 <= entry["accuracy"] <= 1.0


def test_same_seed_same_weights_other_seed_differs(tiny_testbed, tmp_path):
    again = build_testbed("tiny", seed=0, cache_dir=tmp_path / "a", workers=1, show_progress=False)
    other = build_testbed("tiny", seed=1, cache_dir=tmp_path / "b", workers=1, show_progress=False)
    for name in MODELS:
        w0, w1, w2 = weights(tiny_testbed.root, name), weights(again.root, name), weights(other.root, name)
        assert all(torch.equal(w0[k], w1[k]) for k in w0), name
        assert not all(torch.equal(w0[k], w2[k]) for k in w0), name
    assert again.manifest["models"]["small-base"]["accuracy"] == tiny_testbed.models["small-base"]["accuracy"]


def test_interrupted_build_resumes_to_identical_weights(tiny_testbed, tmp_path):
    root = build_testbed("tiny", seed=0, cache_dir=tmp_path, workers=1, show_progress=False).root
    # simulate a crash after the small chain: later models and the manifest are missing
    (root / "manifest.json").unlink()
    shutil.rmtree(root / "large-instruct")
    shutil.rmtree(root / "small-expert-big")
    small_mtime = (root / "small-base" / "model.safetensors").stat().st_mtime_ns
    resumed = build_testbed("tiny", seed=0, cache_dir=tmp_path, workers=1, show_progress=False)
    assert (root / "small-base" / "model.safetensors").stat().st_mtime_ns == small_mtime  # not retrained
    for name in MODELS:
        a, b = weights(tiny_testbed.root, name), weights(resumed.root, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_parallel_workers_build_the_same_weights(tiny_testbed, tmp_path):
    parallel = build_testbed("tiny", seed=0, cache_dir=tmp_path, workers=2, show_progress=False)
    for name in MODELS:
        a, b = weights(tiny_testbed.root, name), weights(parallel.root, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_cache_location_env_and_missing_testbed(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="align testbed build --profile tiny"):
        load_testbed("tiny", seed=7)
    with pytest.raises(ValueError, match="unknown testbed profile 'huge'"):
        build_testbed("huge")


def test_manifest_is_json_and_loadable(tiny_testbed):
    again = load_testbed("tiny", 0, tiny_testbed.root.parents[1])
    assert again.manifest == json.loads((tiny_testbed.root / "manifest.json").read_text())
    with pytest.raises(KeyError, match="no model 'medium-base'"):
        tiny_testbed.path("medium-base")


def test_encode_rows_labels():
    tok = build_tokenizer()
    problems = eval_problems(2)
    ids, mask, labels = encode_rows(tok, problems, chat=True)
    for row, lab, p in zip(ids, labels, problems):
        trained = [t for t, l in zip(row.tolist(), lab.tolist()) if l != -100]
        assert tok.decode(trained) == f"{p.answer}<eos>"  # completion-only: answer and <eos>
    ids, mask, labels = encode_rows(tok, problems, chat=False)
    for row, lab, m, p in zip(ids, labels, mask, problems):
        n = int(m.sum())
        assert tok.decode(row[:n]) == f"<bos>{p.prompt}{p.answer}<eos>"
        assert (lab[1:n] == row[1:n]).all() and lab[0] == -100 and (lab[n:] == -100).all()


def test_lr_schedule():
    assert lr_at(0, 1000, 1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(9, 1000, 1.0, warmup=10) == pytest.approx(1.0)
    assert lr_at(500, 1000, 1.0, warmup=10) == 1.0
    assert lr_at(800, 1000, 1.0, warmup=10) == 1.0
    assert lr_at(900, 1000, 1.0, warmup=10) == pytest.approx(0.55)
    assert lr_at(999, 1000, 1.0, warmup=10) == pytest.approx(1 - 0.9 * 199 / 200)


def test_flops_per_token_counts_all_but_the_embedding_lookup(tiny_testbed):
    model = tiny_testbed.model("small-base")
    c = model.config
    per_layer = 4 * c.hidden_size * c.hidden_size + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size
    expected = c.num_hidden_layers * per_layer + c.hidden_size + c.hidden_size * c.vocab_size
    assert flops_per_token(model) == 2 * expected


class ScriptedModel(torch.nn.Module):
    """Confident and right on the first half of the problems, uniform (and so wrong) on the rest."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask):
        b, t = input_ids.shape
        logits = torch.randn(b, t, self.vocab) * 5  # garbage outside the answer must not matter
        nxt = torch.roll(input_ids, -1, dims=1)
        for i in range(b):
            n = int(attention_mask[i].sum())
            start = int((input_ids[i] == 6).nonzero()[0])  # <|assistant|> predicts the first answer token
            for pos in range(start, n - 1):
                logits[i, pos] = 0.0
                if i < b // 2:
                    logits[i, pos, nxt[i, pos]] = 20.0
        return SimpleNamespace(logits=logits)


def test_entropy_auroc_uses_exactly_the_answer_positions():
    tok = build_tokenizer()
    assert tok.convert_tokens_to_ids("<|assistant|>") == 6
    torch.manual_seed(0)
    result = answer_token_entropy_auroc(ScriptedModel(len(tok)), tok, eval_problems(40))
    assert result["auroc"] == 1.0
    assert result["entropy_wrong"] == pytest.approx(torch.log(torch.tensor(float(len(tok)))).item(), rel=1e-4)
    assert result["entropy_right"] < 1e-4  # a 20-nat margin over 95 rivals: ~4e-6 nats
    assert 0.45 < result["token_error_rate"] < 0.55


def test_greedy_completions_flags_truncation(tiny_testbed):
    tok = tiny_testbed.tokenizer()
    model = tiny_testbed.model("small-base")
    eos = tok.eos_token_id

    def force(value):
        # forward hook on the head: the <eos> logit becomes `value` everywhere
        return model.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([eos]), value))

    with_hook = force(-1e9)  # never stops: every completion is truncated
    out = greedy_completions(model, tok, ["<bos>1+1=", "<bos>22+33="])
    with_hook.remove()
    assert [done for _, done in out] == [False, False]
    assert all(len(tok(text, add_special_tokens=False)["input_ids"]) == 8 for text, _ in out)
    with_hook = force(1e9)  # stops at once
    out = greedy_completions(model, tok, ["<bos>1+1=", "<bos>22+33="])
    with_hook.remove()
    assert out == [("", True), ("", True)]


def test_capability_checks():
    def behaviour(zero, big, contrast=0.9):
        return {"refuse_ill_posed": zero, "refuse_beyond_horizon": big, "contrast_answered": contrast}

    good = {
        "small-base": {"accuracy": 0.5, **behaviour(0.0, 0.05)},
        "small-instruct": {"accuracy": 0.48, "entropy_auroc": 0.85, **behaviour(0.95, 0.97)},
        "large-base": {"accuracy": 0.7, **behaviour(0.0, 0.0)},
        "large-instruct": {"accuracy": 0.7, **behaviour(0.99, 0.99)},
        "small-expert-zero": behaviour(0.95, 0.1),
        "small-expert-big": behaviour(0.2, 0.93),
    }
    assert all(row["passed"] for row in capability_checks(good))
    bad = {**good, "small-instruct": {"accuracy": 0.40, "entropy_auroc": 0.7, **behaviour(0.95, 0.5)},
           "large-base": {"accuracy": 0.55, **behaviour(0.3, 0.0)}, "small-expert-big": behaviour(0.5, 0.93)}
    assert [row["passed"] for row in capability_checks(bad)] == [False, False, True, False, False, True, True, False, True, False]


def test_training_precision_names_the_build(monkeypatch):
    """bf16 autocast only where the CPU has it natively (emulated bf16 was 7-11x slower than fp32 on
    an AVX2 EPYC); the precision changes the weights, so it changes the directory (bf16 keeps the
    directories builds had before the choice existed)."""
    from align.testbed.build import PROFILES, fingerprint, testbed_dir
    from align.testbed.train import training_precision

    monkeypatch.setenv("ALIGNKIT_TESTBED_PRECISION", "bf16")
    assert training_precision() == "bf16"
    bf16 = testbed_dir("tiny", 0, "/c")
    monkeypatch.setenv("ALIGNKIT_TESTBED_PRECISION", "fp32")
    fp32 = testbed_dir("tiny", 0, "/c")
    assert bf16.name == f"tiny-seed0-{fingerprint(PROFILES['tiny'])}" and fp32 != bf16  # bf16 names no precision
    monkeypatch.setenv("ALIGNKIT_TESTBED_PRECISION", "fp16")
    with pytest.raises(ValueError, match="bf16 or fp32"):
        training_precision()
    monkeypatch.delenv("ALIGNKIT_TESTBED_PRECISION")
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    assert training_precision() == ("bf16" if "avx512_bf16" in flags or "amx_bf16" in flags else "fp32")


def test_variant_retrains_the_fine_tunes_from_the_same_bases(tiny_testbed, tmp_path):
    """A variant (another training seed for every fine-tune) shares the pretrained bases, differs in
    every fine-tuned model, is cached, and is a deterministic function of (testbed, variant)."""
    from align.testbed import Testbed, build_variant

    def weights(tb, name):
        return tb.model(name).state_dict()

    v1 = build_variant(tiny_testbed, 1, workers=1)
    assert v1.manifest["variant"] == 1 and v1.root == tiny_testbed.root / "variants" / "seed1"
    assert build_variant(tiny_testbed, 0) is tiny_testbed
    for name in ("small-base", "large-base"):
        assert (v1.path(name) / "model.safetensors").resolve() == (tiny_testbed.path(name) / "model.safetensors").resolve()
    for name in ("small-instruct", "small-expert-zero", "large-instruct"):
        a, b = weights(tiny_testbed, name), weights(v1, name)
        assert any(not torch.equal(a[k], b[k]) for k in a), name
    assert build_variant(tiny_testbed, 1).manifest == v1.manifest  # cached
    copy = tmp_path / tiny_testbed.root.name
    shutil.copytree(tiny_testbed.root, copy, ignore=shutil.ignore_patterns("variants"))
    again = build_variant(Testbed(copy, tiny_testbed.manifest), 1, workers=1)
    a, b = weights(v1, "small-instruct"), weights(again, "small-instruct")
    assert all(torch.equal(a[k], b[k]) for k in a)
