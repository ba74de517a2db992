"""``python -m benchmarks shapes [--build] [--device cuda]``: multi-model decoding at real shapes.

The testbed's models are so small that a forward pass is overhead-bound and its 96-id vocabulary
hides every per-vocabulary cost. Here randomly initialised ``LlamaForCausalLM`` checkpoints have
real shapes: a "large" shaped like Qwen2.5-0.5B (hidden 896, 24 layers, GQA 14/2 heads,
intermediate 4864) and "small" ones of the same width and 2 layers, all sharing a 151,665-token
tokenizer with 151,936 logit rows (Qwen2.5's sizes, so the padded-logit path runs too).
**Weights are random: only time and memory mean anything here.** They are built once and cached
like the testbed (``$ALIGNKIT_CACHE/shapes``).

Every ratio comes from one run: the contenders of a setting race interleaved (``benchmarks.race``)
and each ratio is the median [IQR] of its per-round ratios, on process CPU time (wall time on
CUDA), so drift of the machine and other tenants hit them alike. A contender is one end-to-end
greedy decode of ``NEW_TOKENS`` tokens (EOS suppressed by ``min_new_tokens``). The math timed in
parts (``diagnosis_parts``) and the speculative cost model are diagnoses, not headlines.
"""

from __future__ import annotations

import ctypes
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import judged, race, ratio, seconds

NEW_TOKENS = 32
PROMPT_WORDS = 24
TOKENIZER_SIZE = 151_665  # len(tokenizer) of Qwen2.5
LOGIT_ROWS = 151_936  # its embedding rows (padded to a multiple of 128)
WIDTH = dict(hidden_size=896, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864)
MODELS = {  # name: (layers, init seed)
    "large": (24, 0),
    "small-tuned": (2, 1),
    "small-ref": (2, 2),
    "small-tuned-2": (2, 3),
}
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def shapes_dir(cache_dir: str | Path | None = None) -> Path:
    from align.testbed.build import cache_root

    return cache_root(cache_dir) / "shapes" / "qwen2.5-0.5b-like-v1"


def build_tokenizer():
    """A word-level tokenizer of ``TOKENIZER_SIZE`` ids (specials, then ``w0 w1 ...``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    vocab.update({f"w{i}": len(SPECIALS) + i for i in range(TOKENIZER_SIZE - len(SPECIALS))})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>"], padding_side="left", chat_template=CHAT_TEMPLATE,
    )


def build(cache_dir: str | Path | None = None) -> Path:
    """Build (once) the tokenizer and the random-init checkpoints; return their directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from align.testbed.build import save_checkpoint

    root = shapes_dir(cache_dir)
    if (root / "manifest.json").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    assert len(tok) == TOKENIZER_SIZE, len(tok)
    manifest = {"tokenizer_size": TOKENIZER_SIZE, "logit_rows": LOGIT_ROWS, "models": {}}
    for name, (layers, seed) in MODELS.items():
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=LOGIT_ROWS, num_hidden_layers=layers, max_position_embeddings=4096, rope_theta=1e6,
            tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, **WIDTH,
        )
        model = LlamaForCausalLM(config)
        save_checkpoint(model, tok, root / name)
        manifest["models"][name] = {"layers": layers, "parameters": sum(p.numel() for p in model.parameters())}
        print(f"built {name}: {manifest['models'][name]['parameters'] / 1e6:.0f}M parameters", flush=True)
        del model
    from rewards.io import atomic_write_text

    atomic_write_text(root / "manifest.json", json.dumps(manifest, indent=2))
    return root


def random_prompts(batch: int, seed: int = 0) -> list[str]:
    """``batch`` prompts of ``PROMPT_WORDS`` random words (one token each)."""
    gen = torch.Generator().manual_seed(seed)
    words = torch.randint(0, TOKENIZER_SIZE - len(SPECIALS), (batch, PROMPT_WORDS), generator=gen)
    return [" ".join(f"w{int(i)}" for i in row) for row in words]


class Shapes:
    """The built checkpoints, loaded in ``dtype`` on ``device``, and the prompts of a batch."""

    def __init__(self, root: Path, device: str, dtype: torch.dtype) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(root / "large")
        self.models = {
            name: AutoModelForCausalLM.from_pretrained(root / name, dtype=dtype).to(device).eval() for name in MODELS
        }
        self.device = device

    def prompts(self, batch: int, seed: int = 0) -> list[str]:
        return random_prompts(batch, seed)

    def chat(self, prompts: list[str]) -> list[list[dict[str, str]]]:
        return [[{"role": "user", "content": p}] for p in prompts]

    def encode(self, prompts) -> dict[str, torch.Tensor]:
        if isinstance(prompts[0], str):
            enc = self.tok(prompts, return_tensors="pt", padding=True)
        else:
            enc = self.tok.apply_chat_template(prompts, add_generation_prompt=True, return_tensors="pt", return_dict=True,
                                               padding=True)
        return {k: v.to(self.device) for k, v in enc.items()}

    def aux(self, name: str, prompts, label: str | None = None, **kw):
        from decoding import AuxiliaryModel

        return AuxiliaryModel(self.models[name], self.tok, prompts, label or name, **kw)

    def decode(self, name: str, prompts, processors: Callable[[], list] | None = None, new_tokens: int = NEW_TOKENS):
        """A thunk: greedy ``generate`` of ``new_tokens`` (or the ``n`` it is called with) on ``name``
        (processors built fresh per call)."""
        enc = self.encode(prompts)
        model = self.models[name]

        def run(n: int = new_tokens):
            return model.generate(
                **enc, logits_processor=list(processors()) if processors else None, do_sample=False,
                max_new_tokens=n, min_new_tokens=n, pad_token_id=self.tok.pad_token_id,
            )

        return run


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clock(device: str) -> str:
    """Process CPU time on CPU (another tenant's load does not count); wall time on CUDA."""
    return "wall" if device.startswith("cuda") else "cpu"


def warm(contenders: dict[str, Callable[..., Any]], tokens: int = 4) -> None:
    """One short call each (a few tokens warm up every kernel a long decode runs)."""
    for fn in contenders.values():
        fn(tokens)


def peak_memory(fn: Callable[[], Any], device: str) -> int:
    """Peak bytes above what was resident before ``fn`` ran (CUDA allocator, or the process's RSS
    high-water mark on Linux, reset through ``/proc/self/clear_refs``)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before

    Path("/proc/self/clear_refs").write_text("5")  # high-water mark := current RSS
    before = _proc_status("VmRSS")
    fn()
    return _proc_status("VmHWM") - before


def _proc_status(key: str) -> int:
    """A memory figure of this process from ``/proc/self/status``, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def resident_bytes(device: str) -> int:
    return torch.cuda.memory_allocated() if device.startswith("cuda") else _proc_status("VmRSS")


def overhead(s: Shapes, batch: int, rounds: int) -> dict[str, float]:
    """EFT, DLF (1 and 2 experts), STEER, CFG and GeDi per-token time over the sum of their
    models' own cached decode, and DLF over EFT; DLF's peak extra memory over EFT."""
    from decoding import (
        DLFLogitsProcessor, EFTLogitsProcessor, GeDiLogitsProcessor, NegativePromptLogitsProcessor,
        SteerLogitsProcessor,
    )

    plain = s.prompts(batch)
    chat = s.chat(plain)
    negative = s.chat(s.prompts(batch, seed=1))
    tok = s.tok

    def eft(n_tuned: int = 1):
        tuned = [s.aux(name, chat) for name in ("small-tuned", "small-tuned-2")[:n_tuned]]
        return [EFTLogitsProcessor(tok, tuned, s.aux("small-ref", plain))]

    def dlf(n_experts: int):
        experts = [s.aux(name, chat) for name in ("small-tuned", "small-tuned-2")[:n_experts]]
        return [DLFLogitsProcessor(tok, s.aux("small-ref", plain), experts)]

    def steer():
        return [SteerLogitsProcessor(tok, base=s.aux("small-ref", chat), negative=s.aux("small-tuned", negative, "negative"))]

    def cfg():
        return [NegativePromptLogitsProcessor(tok, s.aux("small-tuned", negative, "negative"), guidance_scale=1.5)]

    def gedi():
        return [GeDiLogitsProcessor(tok, s.models["small-ref"], tok, plain, desired_code="w1", anti_code="w2")]

    guide_prompts = [f"w{c} {p}" for c in (1, 2) for p in plain]  # GeDi's 2 x batch guide forward
    # the small models share one shape: small-tuned's own decode stands for every small model
    # reading a prompt of about the same length (tuned-2, the reference on the chat prompt, the negative)
    contenders = {
        "large": s.decode("large", plain),
        "small-tuned": s.decode("small-tuned", chat),
        "small-ref": s.decode("small-ref", plain),
        "small-ref-guide": s.decode("small-ref", guide_prompts),
        "eft": s.decode("large", plain, eft),
        "eft2": s.decode("large", plain, lambda: eft(2)),
        "dlf": s.decode("large", plain, lambda: dlf(1)),
        "dlf2": s.decode("large", plain, lambda: dlf(2)),
        "steer": s.decode("small-tuned", chat, steer),
        "cfg": s.decode("small-tuned", chat, cfg),
        "gedi": s.decode("large", plain, gedi),
    }
    warm(contenders)
    result = race(contenders, rounds, warmup=0, device=s.device)
    c = clock(s.device)
    out: dict[str, Any] = {
        "eft_over_sum": judged(ratio(result, "eft", ["large", "small-tuned", "small-ref"], c), "<=", 1.05),
        "eft2_over_sum": judged(ratio(result, "eft2", {"large": 1, "small-tuned": 2, "small-ref": 1}, c), "<=", 1.05),
        "dlf_over_eft": judged(ratio(result, "dlf", "eft", c), "<=", 1.10),
        "dlf2_over_eft2": judged(ratio(result, "dlf2", "eft2", c), "<=", 1.10),
        "steer_over_sum": judged(ratio(result, "steer", {"small-tuned": 3}, c), "<=", 1.10),
        "cfg_over_sum": judged(ratio(result, "cfg", {"small-tuned": 2}, c), "<=", 1.10),
        "gedi_over_sum": judged(ratio(result, "gedi", ["large", "small-ref-guide"], c), "<=", 1.10),
        "large_over_small": ratio(result, "large", "small-ref", c),
        "ms_per_token_large": seconds(result, "large", c, scale=1e3 / NEW_TOKENS),
    }
    # memory: weights + caches + activations resident during EFT (two tuned) vs the same with DLF (two experts)
    resident = resident_bytes(s.device)
    eft_peak = peak_memory(lambda: contenders["eft2"](16), s.device)
    dlf_peak = peak_memory(lambda: contenders["dlf2"](16), s.device)
    out["dlf2_extra_peak_mb"] = round((dlf_peak - eft_peak) / 2**20, 3)
    out["dlf2_extra_peak_over_eft2_total"] = round((dlf_peak - eft_peak) / (resident + eft_peak), 4)
    step_s = {name: seconds(result, name, c)["median"] / NEW_TOKENS for name in contenders}
    out["diagnosis_parts"] = fusion_parts(batch, step_s, s.device)
    return out


def fusion_parts(batch: int, step_s: dict[str, float], device: str, repeats: int = 15) -> dict[str, float]:
    """Diagnosis, not a headline: the decoders' per-step math alone, timed on ``[batch, V]``
    log-probs, and the ratios it implies (a model of the overhead, not what a decode takes).

    DLF and EFT run the same forwards and differ only in the fusion math, so
    ``dlf_over_eft ≈ 1 + (t_dlf_select - t_eft_logprobs) / t_eft_step``; GeDi adds its posterior and
    filter to the large and guide forwards. Each piece is timed best-of-``repeats``, interleaved, a
    few milliseconds apiece; each is the median of its interleaved rounds. GeDi's filter depends on the distribution: near-uniform
    rows (random weights) need the radix-select fallback, peaked ones decide among the top 256.
    """
    from decoding import dlf_select, eft_logprobs, gedi_filter, gedi_posterior
    from decoding.dlf import DEFAULT_GRID

    gen = torch.Generator(device).manual_seed(0)

    def lp(scale: float) -> torch.Tensor:
        return torch.log_softmax(scale * torch.randn(batch, TOKENIZER_SIZE, generator=gen, device=device), -1)

    large, small, tuned, tuned2 = lp(3.0), lp(3.0), lp(3.0), lp(3.0)
    grid = torch.tensor(DEFAULT_GRID)
    sums, length = torch.full((2, batch), -40.0, device=device), torch.full((batch,), 12.0, device=device)

    def gedi(scale: float) -> Callable[[], Any]:
        logits, lp_d, lp_a = (scale * torch.randn(batch, TOKENIZER_SIZE, generator=gen, device=device) for _ in range(3))
        lp_d, lp_a = lp_d.log_softmax(-1), lp_a.log_softmax(-1)

        def run():
            post = gedi_posterior(lp_d, lp_a, sums[0], sums[1], length)
            return gedi_filter(torch.log_softmax(logits, -1) + 30.0 * post, post, 0.8, 0.8)

        return run

    pieces = {
        "eft": lambda: eft_logprobs(large, [tuned], small, [1.0]),
        "eft2": lambda: eft_logprobs(large, [tuned, tuned2], small, [1.0, 1.0]),
        "dlf": lambda: dlf_select(large, small, [tuned], grid),
        "dlf2": lambda: dlf_select(large, small, [tuned, tuned2], grid),
        "gedi_flat": gedi(0.02),  # random-init logits are about this flat
        "gedi_peaked": gedi(3.0),
    }
    result = race(pieces, repeats, device=device)
    t = {name: seconds(result, name, clock(device))["median"] for name in pieces}
    guided = step_s["large"] + step_s["small-ref-guide"]
    out = {f"ms.{name}": round(1000 * value, 3) for name, value in t.items()}
    out["dlf_over_eft_parts"] = 1 + (t["dlf"] - t["eft"]) / step_s["eft"]
    out["dlf2_over_eft2_parts"] = 1 + (t["dlf2"] - t["eft2"]) / step_s["eft2"]
    out["gedi_over_sum_parts_flat"] = 1 + t["gedi_flat"] / guided
    out["gedi_over_sum_parts_peaked"] = 1 + t["gedi_peaked"] / guided
    return {k: round(v, 3) for k, v in out.items()}


def ead_forced(s: Shapes, batch: int, rounds: int, fractions=(0.25, 0.5, 0.75), period: int = 16) -> dict[str, float]:
    """EAD wall time per token over its cost formula ``f c_L + (1 - f) c_S`` at forced large
    fractions ``f`` (random models' entropies mean nothing, so a fixed schedule: in every
    ``period`` tokens the small model emits the first ``(1 - f) period``, the large the rest);
    ``c_S``, ``c_L`` come from the same loop forced onto one model."""
    from decoding import entropy_adaptive_generate

    chat = s.chat(s.prompts(batch))
    ids = s.encode(chat)["input_ids"]

    def run(fraction: float):
        schedule = [(i % period) >= round((1 - fraction) * period) for i in range(NEW_TOKENS)]
        return lambda: entropy_adaptive_generate(
            s.aux("small-tuned", chat, "small"), s.aux("large", chat), ids, tau=0.0, max_new_tokens=NEW_TOKENS,
            schedule=schedule, eos_token_id=None, pad_token_id=s.tok.pad_token_id,
        )

    result = race({str(f): run(f) for f in (0.0, 1.0, *fractions)}, rounds, device=s.device)
    c = clock(s.device)
    out = {"small_over_large": ratio(result, "0.0", "1.0", c)}
    for f in fractions:
        out[f"time_over_formula_f{f}"] = judged(ratio(result, str(f), {"1.0": f, "0.0": 1 - f}, c), "<=", 1.10)
    return out


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens per speculative round when each of ``k`` drafts is accepted independently with
    probability ``a`` (Leviathan et al. 2023, eq. 1): ``(1 - a^(k+1)) / (1 - a)``."""
    return k + 1.0 if acceptance >= 1.0 else (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


def speculative_costs(base, tuned, ref, tok, plain, chat, device: str, rounds: int, ks=range(1, 7)) -> dict[str, Any]:
    """Diagnosis (a cost model, not a headline): speculative EFT's round cost from its parts, at batch 1: ``k`` one-token drafter forwards,
    one ``k + 1``-position forward each of base and reference (through the same
    :class:`~decoding.AuxiliaryModel` calls the generator makes, log-softmax included) and the
    target's log-softmax over ``k`` positions; plain EFT and the base alone per token, raced with
    them. Speed-up at acceptance ``a``: ``E(a, k) t_EFT / T_round(k)``."""
    from decoding import AuxiliaryModel, EFTLogitsProcessor

    def aux(model, prompts, name):
        return AuxiliaryModel(model, tok, prompts, name)

    enc = tok(plain, return_tensors="pt").to(device)
    context = torch.cat([enc["input_ids"], torch.randint(10, len(tok), (1, 16), device=device)], dim=1)
    models = {"base": aux(base, plain, "base"), "tuned": aux(tuned, chat, "tuned"), "ref": aux(ref, plain, "ref")}
    for a in models.values():
        a.bind(enc["input_ids"])
        a(context)  # prefill: prompt + 16 generated tokens

    def forward(name: str, width: int, keep: int = 1):
        extra = torch.randint(10, len(tok), (1, width), device=device)
        ids = torch.cat([context, extra], dim=1)

        def run():
            out = models[name](ids, keep=keep)
            models[name].rollback(width)
            return out

        return run

    v = len(tok)

    def target_math(k: int):
        a, b, c = (torch.randn(1, k, v, device=device).log_softmax(-1) for _ in range(3))
        return lambda: torch.log_softmax(a + 1.0 * (b - c), dim=-1).argmax(-1)

    def eft_decode(model_or_none):
        def processors():
            return [EFTLogitsProcessor(tok, [aux(tuned, chat, "tuned")], aux(ref, plain, "ref"))]

        return lambda: base.generate(
            **enc, logits_processor=processors() if model_or_none else None, do_sample=False,
            max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=tok.pad_token_id,
        )

    contenders = {"draft": forward("tuned", 1), "eft": eft_decode(True), "base_alone": eft_decode(None)}
    for k in ks:
        contenders[f"verify_base{k}"] = forward("base", k + 1, keep=k + 1)
        contenders[f"verify_ref{k}"] = forward("ref", k + 1, keep=k + 1)
        contenders[f"math{k}"] = target_math(k)
    result = race(contenders, rounds, device=device)
    t = {name: seconds(result, name, clock(device))["median"] for name in contenders}
    t_eft, t_base = t["eft"] / NEW_TOKENS, t["base_alone"] / NEW_TOKENS
    round_time = {k: k * t["draft"] + t[f"verify_base{k}"] + t[f"verify_ref{k}"] + t[f"math{k}"] for k in ks}
    table = {
        f"a{a}": {f"k{k}": round(expected_tokens(a, k) * t_eft / round_time[k], 3) for k in ks}
        for a in (0.5, 0.6, 0.7, 0.8, 0.9)
    }
    best_k = max(ks, key=lambda k: expected_tokens(0.8, k) / round_time[k])

    def break_even(k: int, per_token: float) -> float:
        """Acceptance at which speculative EFT runs as fast as ``per_token`` (bisection)."""
        lo, hi = 0.0, 1.0
        if expected_tokens(1.0, k) * per_token < round_time[k]:
            return float("nan")  # slower even when every draft passes
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if expected_tokens(mid, k) * per_token < round_time[k] else (lo, mid)
        return hi

    return {
        "ms_per_token_eft": round(1000 * t_eft, 2),
        "ms_per_token_base": round(1000 * t_base, 2),
        "ms_draft_token": round(1000 * t["draft"], 2),
        "ms_round": {f"k{k}": round(1000 * round_time[k], 2) for k in ks},
        "speedup_over_eft": table,
        "best_k_at_0.8": best_k,
        "speedup_over_eft_at_0.8": table["a0.8"][f"k{best_k}"],
        "speedup_over_base_at_0.8": round(expected_tokens(0.8, best_k) * t_base / round_time[best_k], 3),
        "acceptance_matching_base": {f"k{k}": round(break_even(k, t_base), 3) for k in ks},
        "acceptance_matching_eft": {f"k{k}": round(break_even(k, t_eft), 3) for k in ks},
    }


def speculative_testbed_check(rounds: int, k: int = 3, n_prompts: int = 16, new_tokens: int = 16) -> dict[str, float]:
    """The cost model where acceptance is real: the full testbed's large-base / small-instruct /
    small-base at batch 1, ``n_prompts`` held-out prompts, ``new_tokens`` each (EOS does not stop
    either contender). Predicted speed-up: from the parts' costs and the measured tokens per round
    (and from the measured acceptance through ``E(a, k)``), against the measured one."""
    from align.testbed import eval_problems, load_testbed
    from decoding import AuxiliaryModel, EFTLogitsProcessor, speculative_eft_generate

    tb = load_testbed("full")
    tok = tb.tokenizer()
    base, tuned, ref = tb.model("large-base"), tb.model("small-instruct"), tb.model("small-base")
    prompts = [p.prompt for p in eval_problems(n_prompts)]
    chats = [[{"role": "user", "content": p}] for p in prompts]
    stats = {"drafted": 0, "accepted": 0, "rounds": 0, "tokens": 0}

    def spec():
        for prompt, chat in zip(prompts, chats):
            out = speculative_eft_generate(
                AuxiliaryModel(base, tok, [prompt]), AuxiliaryModel(tuned, tok, [chat]), AuxiliaryModel(ref, tok, [prompt]),
                tok([prompt], return_tensors="pt")["input_ids"], k=k, max_new_tokens=new_tokens, eos_token_id=None,
                k_schedule="constant",  # the cost model prices a fixed k
            )
            stats.update(drafted=stats["drafted"] + out.drafted, accepted=stats["accepted"] + out.accepted,
                         rounds=stats["rounds"] + out.rounds, tokens=stats["tokens"] + new_tokens)

    def plain():
        for prompt, chat in zip(prompts, chats):
            proc = EFTLogitsProcessor(tok, [AuxiliaryModel(tuned, tok, [chat])], AuxiliaryModel(ref, tok, [prompt]))
            base.generate(**tok([prompt], return_tensors="pt"), logits_processor=[proc], do_sample=False,
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)

    result = race({"spec": spec, "plain": plain}, rounds)
    costs = speculative_costs(base, tuned, ref, tok, prompts[:1], chats[:1], "cpu", rounds, ks=[k])
    acceptance = stats["accepted"] / stats["drafted"]
    per_round = stats["tokens"] / stats["rounds"]
    round_ms, eft_ms = costs["ms_round"][f"k{k}"], costs["ms_per_token_eft"]
    return {
        "k": k,
        "acceptance": round(acceptance, 3),
        "tokens_per_round": round(per_round, 3),
        "measured_speedup": ratio(result, "plain", "spec"),
        "predicted_from_tokens_per_round": round(per_round * eft_ms / round_ms, 3),
        "predicted_from_acceptance": round(expected_tokens(acceptance, k) * eft_ms / round_ms, 3),
    }


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MiB instead of returning them to the OS.

    A ``[8, 152k]`` fp32 tensor is 4.8 MB, above glibc's mmap threshold, so by default every such
    temporary is a fresh ``mmap`` whose pages fault in one by one: GeDi's posterior (five
    temporaries) took 10.9 ms per step at batch 8 against 2.9 ms with freed blocks reused. The
    PyTorch CPU tuning guide's remedy is a caching allocator (jemalloc, tcmalloc, via ``LD_PRELOAD``);
    this is the same for glibc, the equivalent of ``MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=1073741824``. CUDA's caching allocator does this on GPUs. False where
    it cannot be set (not glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


PARTS = ("overhead", "ead", "speculative", "check", "vllm")


def shapes(args) -> dict[str, Any]:
    """The suite: overheads at batch 1 and 8, EAD against its formula, speculative EFT's cost
    model (and its testbed check) in bf16 at ``--shape-threads`` threads (CPU; default 1) or once (CUDA), and the
    vLLM refusal processor at batch 64 (only where vLLM imports). ``--only PART`` runs one part."""
    device = args.device
    root = build() if args.build else shapes_dir()
    if not (root / "manifest.json").is_file():
        raise FileNotFoundError(f"no shape checkpoints under {root}: run `python -m benchmarks shapes --build` first")
    parts = [args.only] if args.only else list(PARTS)
    dtype = torch.bfloat16  # on CPU too: AMX/AVX512-bf16 halve the bytes a bandwidth-bound decode reads
    started = time.perf_counter()
    out: dict[str, Any] = {"weights": "random init: timings and memory only", "dtype": str(dtype), "device": device}
    if not device.startswith("cuda") and not args.default_malloc:
        out["malloc"] = "freed blocks <= 32 MiB kept" if keep_freed_memory() else "default (mallopt unavailable)"
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    if {"overhead", "ead", "speculative"} & set(parts):
        s = Shapes(root, device, dtype)
        for threads in ([torch.get_num_threads()] if device.startswith("cuda") else [int(t) for t in args.shape_threads.split(",")]):
            torch.set_num_threads(threads)
            key = f"threads{threads}"
            out[key] = {}
            if "overhead" in parts:
                for batch in (int(b) for b in args.batch.split(",")):
                    out[key][f"b{batch}"] = overhead(s, batch, args.rounds)
                    print(f"{key} b{batch}: {out[key][f'b{batch}']} ({time.perf_counter() - started:.0f} s)", flush=True)
            if "ead" in parts:
                out[key]["ead_b1"] = ead_forced(s, 1, args.rounds)
                print(f"{key} ead: {out[key]['ead_b1']} ({time.perf_counter() - started:.0f} s)", flush=True)
            if "speculative" in parts:
                m = s.models
                out[key]["speculative"] = speculative_costs(
                    m["large"], m["small-tuned"], m["small-ref"], s.tok, s.prompts(1), s.chat(s.prompts(1)), device,
                    args.rounds,
                )
                print(f"{key} speculative: {out[key]['speculative']} ({time.perf_counter() - started:.0f} s)", flush=True)
        del s
        gc.collect()
    torch.set_num_threads(1)
    if "check" in parts and not device.startswith("cuda"):
        out["speculative_testbed_check"] = speculative_testbed_check(args.rounds)
    if "vllm" in parts:
        out["vllm_refusal_b64"] = vllm_refusal(root)
    out["seconds"] = round(time.perf_counter() - started)
    return out


def vllm_refusal(root: Path, batch: int = 64) -> dict[str, Any]:
    """The vLLM refusal processor's throughput ratio with the real-size vocabulary, batch ``batch``."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .vllm_throughput import refusal_processor_ratios

    if importlib.util.find_spec("vllm") is None:
        return {"vllm_proc_throughput_ratio": None, "vllm": "not installed: .venv-vllm/bin/python -m benchmarks shapes --only vllm"}
    tok = AutoTokenizer.from_pretrained(root / "large")
    model = AutoModelForCausalLM.from_pretrained(root / "large", dtype=torch.bfloat16)
    return refusal_processor_ratios(model, tok, random_prompts(batch), dtype="bfloat16", compare_hf=False)
