"""``python -m benchmarks training``: our trainers' step time against TRL's (DPO, RPO and BCO vs
``DPOTrainer``; refusal-token SFT vs ``SFTTrainer``; a SCoRe step with its rollouts vs a
``GRPOTrainer`` step generating as many tokens), and the memory a LoRA reference (adapter
disabled) saves over a separate reference model.

A step is ``trainer.training_step`` (forward, loss, backward: where the objectives differ; the
optimizer step is the same for all). The contenders take turns step by step (``benchmarks.race``:
one round = one step of each), so drift of this shared machine hits all alike; every ratio is the
median [IQR] of its per-step ratios on process CPU time, wall time beside it.
Same model (small-instruct), same pairs and batches, same sequences per step (BCO gets each pair
as two unpaired rows, twice the rows).
"""

from __future__ import annotations

import itertools
import multiprocessing
import tempfile
from typing import Any

from . import Race, judged, race, ratio, seconds
from .shapes import clock

WARMUP, TIMED, PAIRS_PER_STEP = 10, 200, 8
# ``--shape small-real``: random init at a real vocabulary and width (Qwen2.5's 151,936 logit rows,
# hidden 896, GQA 14/2) with 2 layers, so a step stays short while the vocabulary-sized logits and
# log-softmax that dominate preference losses at real scale are all there
SMALL_REAL = dict(vocab_size=151_936, hidden_size=896, num_hidden_layers=2, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, tie_word_embeddings=True)
SMALL_REAL_TOKENIZER = 151_665
SMALL_REAL_STEPS = (2, 6)  # warm-up, timed


def shape_loaders(profile: str, shape: str):
    """``(tokenizer(), model())`` factories: the testbed's small-instruct, or a random-init model of
    the ``small-real`` shape with the testbed's tokenization padded to the real vocabulary size."""
    if shape == "testbed":
        from align.testbed import build_testbed

        tb = build_testbed(profile)
        return tb.tokenizer, lambda: tb.model("small-instruct")
    if shape != "small-real":
        raise ValueError(f"unknown shape {shape!r}: testbed or small-real")
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from align.testbed.tokenizer import build_tokenizer

    tok = build_tokenizer(SMALL_REAL_TOKENIZER)
    torch.manual_seed(0)
    config = LlamaConfig(**SMALL_REAL, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    # saved once, loaded like any checkpoint (TRL's GRPOTrainer loads its reference by path)
    path = tempfile.mkdtemp(prefix="alignkit-small-real-")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return lambda: build_tokenizer(SMALL_REAL_TOKENIZER), lambda: AutoModelForCausalLM.from_pretrained(path).eval()


def training(profile: str, shape: str = "testbed", device: str = "cpu") -> dict[str, Any]:
    from datasets import Dataset
    from transformers import TrainingArguments
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import unpair_preference_dataset

    from align.data import tokenize_prompt_completion
    from align.testbed.datasets import preference_pairs
    from align.trainers.bco import BCOTrainer, collate
    from align.trainers.dpo import DPOArgs, rpo_trainer_class

    load_tokenizer, load_model = shape_loaders(profile, shape)
    tok = load_tokenizer()
    warmup, timed = (WARMUP, TIMED) if shape == "testbed" else SMALL_REAL_STEPS
    steps = warmup + timed
    pairs = preference_pairs(steps * PAIRS_PER_STEP, 8, seed=0, conversational=True)["train"]
    unpaired = unpair_preference_dataset(pairs)
    encoded = Dataset.from_list([
        {**tokenize_prompt_completion(tok, row), "label": row["label"], "weight": 1.0} for row in unpaired
    ])
    out = tempfile.mkdtemp(prefix="alignkit-bench-")
    # TRL defaults to bf16 and gradient checkpointing; the comparison runs both contenders without
    common = dict(output_dir=out, max_steps=steps, learning_rate=1e-5, report_to=[], use_cpu=device == "cpu", bf16=False,
                  gradient_checkpointing=False,
                  save_strategy="no", logging_steps=10**6, seed=0, disable_tqdm=True)
    # our config is a DPOConfig: the same common settings, our objective fields on top
    ours = DPOArgs(**common, dataset="testbed:preference", per_device_train_batch_size=PAIRS_PER_STEP)

    def models():
        return load_model(), load_model().requires_grad_(False)

    def trl(loss_type: list[str], weights: list[float] | None = None):
        def make():
            policy, ref = models()
            config = DPOConfig(**common, per_device_train_batch_size=PAIRS_PER_STEP, loss_type=loss_type,
                               loss_weights=weights, beta=0.1)
            return DPOTrainer(model=policy, ref_model=ref, args=config, train_dataset=pairs, processing_class=tok)
        return make

    def ours_dpo(rpo: bool):
        def make():
            policy, ref = models()
            cls, extra = (rpo_trainer_class(DPOTrainer), {"rpo_eta": 1.0, "sft_reduction": "token_mean"}) if rpo else (DPOTrainer, {})
            return cls(model=policy, ref_model=ref, args=ours, train_dataset=pairs, processing_class=tok, **extra)
        return make

    def ours_bco():
        policy, ref = models()
        config = TrainingArguments(**common, per_device_train_batch_size=2 * PAIRS_PER_STEP, remove_unused_columns=False,
                                   label_names=["label"])
        return BCOTrainer(model=policy, ref_model=ref, args=config, train_dataset=encoded, data_collator=collate(tok.pad_token_id))

    contenders = {"trl_sigmoid": trl(["sigmoid"]), "trl_sigmoid_sft": trl(["sigmoid", "sft"], [1.0, 1.0]),
                  "dpo": ours_dpo(False), "rpo": ours_dpo(True), "bco": ours_bco}
    trainers = {name: make() for name, make in contenders.items()}
    steps = _alternate(trainers, warmup, timed, device)
    c = clock(device)
    result = {
        "shape": shape,
        "dpo_over_trl": judged(ratio(steps, "dpo", "trl_sigmoid", c), "<=", 1.05),
        "rpo_over_trl": judged(ratio(steps, "rpo", "trl_sigmoid_sft", c), "<=", 1.05),
        "bco_over_trl": judged(ratio(steps, "bco", "trl_sigmoid", c), "<=", 1.05),
        "step_ms": {k: seconds(steps, k, c, scale=1e3) for k in trainers},
    }
    result["reward_over_trl"] = 1.0  # `align train reward` runs TRL's RewardTrainer itself: nothing of ours in its step
    result.update(_refusal_and_score(load_tokenizer, load_model, shape == "testbed", device))
    if shape == "testbed" and device == "cpu":  # peak RSS: host memory
        result.update(_lora_memory())
    return result


def _alternate(trainers: dict[str, Any], warmup: int, timed: int, device: str = "cpu") -> Race:
    """Per-step times of each trainer over ``timed`` rounds after ``warmup``, the trainers taking
    turns step by step so drift of this shared machine hits all alike."""
    def stepper(trainer):
        trainer.current_gradient_accumulation_steps = 1  # what train() sets before its first step
        batches, step = list(trainer.get_train_dataloader()), itertools.count()

        def run():
            trainer.training_step(trainer.model, batches[next(step) % len(batches)], None)
            trainer.model.zero_grad(set_to_none=True)
        return run

    return race({name: stepper(t) for name, t in trainers.items()}, rounds=timed, warmup=warmup, device=device)


def _refusal_and_score(load_tokenizer: Any, load_model: Any, full: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Refusal-token SFT vs TRL's SFTTrainer on the same tagged rows; one SCoRe step (two-turn
    rollouts, rewards, loss, backward) vs one TRL GRPOTrainer step. The headline compares equal
    sequential decode steps: GRPO generates the same episodes' worth of completions (P x G) of two
    turns' length in one turn, so both decode ``2 x tokens`` steps in sequence and generate as many
    tokens. Beside it, GRPO at equal generated tokens but half the sequential steps (twice the
    prompts, one turn of ``tokens``): SCoRe's turn 2 waits for turn 1, which that ratio charges
    it for. EOS held off so every completion is the full length; β > 0 so GRPO also runs its
    reference."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    from align.testbed.datasets import refusal_sft, self_correction
    from align.trainers.refusal import RefusalArgs, RefusalSFTTrainer, add_control_tokens, tag_rows
    from align.trainers.score import ScoreArgs, ScoreTrainer, verifier_reward

    out = tempfile.mkdtemp(prefix="alignkit-bench-")
    base = dict(output_dir=out, report_to=[], use_cpu=device == "cpu", bf16=False, gradient_checkpointing=False, save_strategy="no",
                logging_steps=10**6, seed=0, disable_tqdm=True, learning_rate=1e-5)
    rows = tag_rows(refusal_sft(512, 2, seed=0)["train"], RefusalArgs())
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    # at a 152k vocabulary a row's logits cost 0.6 MB per token: fewer, shorter rows keep the step in memory
    sft_size = dict(per_device_train_batch_size=16) if full else dict(per_device_train_batch_size=4, max_length=96)
    sft = {}
    for name, cls, config in (("trl_sft", SFTTrainer, SFTConfig(**base, **sft_size)),
                              ("refusal", RefusalSFTTrainer, RefusalArgs(**base, dataset="x", **sft_size))):
        tok, model = load_tokenizer(), load_model()
        add_control_tokens(tok, model, ["[refuse]", "[respond]"])
        sft[name] = cls(model=model, args=config, train_dataset=data, processing_class=tok)
    sft_times = _alternate(sft, 5, 30, device) if full else _alternate(sft, *SMALL_REAL_STEPS, device)
    c = clock(device)

    problems, g, tokens = (4, 4, 16) if full else (2, 2, 8)  # small-real: 8 two-turn episodes a step
    prompts = self_correction(64, 2, seed=0, conversational=True)["train"]
    fixed = {"min_new_tokens": tokens}  # every turn the full length
    tok = load_tokenizer()
    score = ScoreTrainer(
        model=load_model(), processing_class=tok, train_dataset=prompts, data_collator=lambda r: {"rows": r},
        ref_model=load_model(), reward_fn=verifier_reward,
        args=ScoreArgs(**base, dataset="x", per_device_train_batch_size=problems, num_generations=g, max_new_tokens=tokens,
                       generation_kwargs=fixed, stage1_steps=0, stage2_steps=100))
    def grpo(rows: int, length: int):
        return GRPOTrainer(
            model=load_model(), processing_class=load_tokenizer(), train_dataset=prompts, reward_funcs=verifier_reward,
            args=GRPOConfig(**base, per_device_train_batch_size=rows, num_generations=g, max_completion_length=length,
                            generation_kwargs={"min_new_tokens": length}, beta=0.04, temperature=1.0))

    rl = {"score": score, "trl_grpo_equal_steps": grpo(problems * g, 2 * tokens), "trl_grpo_equal_tokens": grpo(2 * problems * g, tokens)}
    rl_times = _alternate(rl, 2, 10, device) if full else _alternate(rl, 1, 4, device)
    return {
        "refusal_sft_over_trl_sft": judged(ratio(sft_times, "refusal", "trl_sft", c), "<=", 1.05),
        "score_step_over_trl_grpo_equal_steps": judged(ratio(rl_times, "score", "trl_grpo_equal_steps", c), "<=", 1.2),
        "score_step_over_trl_grpo_equal_tokens": ratio(rl_times, "score", "trl_grpo_equal_tokens", c),
        "rl_step_ms": {k: seconds(rl_times, k, c, scale=1e3) for k in rl},
        "rl_generated_tokens_per_step": 2 * problems * g * tokens,
        "rl_sequential_decode_steps": {"score": 2 * tokens, "trl_grpo_equal_steps": 2 * tokens, "trl_grpo_equal_tokens": tokens},
    }


# ---- memory: each configuration in a fresh process, peak RSS read there -------------------------

MEM_SIZE = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8)


def _peak_rss(lora_reference: bool, queue) -> None:
    import resource

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer
    from peft import LoraConfig

    from align.testbed.datasets import preference_pairs
    from align.testbed.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), **MEM_SIZE, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    ref = None if lora_reference else LlamaForCausalLM(config).requires_grad_(False)
    pairs = preference_pairs(64, 8, seed=0, conversational=True)["train"]
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, max_steps=4, per_device_train_batch_size=8, report_to=[], use_cpu=True, bf16=False,
                         gradient_checkpointing=False,
                         save_strategy="no", disable_tqdm=True)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
        DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=pairs, processing_class=tok, peft_config=lora).train()
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _lora_memory() -> dict[str, Any]:
    """Peak RSS of LoRA DPO with the reference = adapter disabled, over the same with a separate
    reference model (a random 20M-parameter Llama so the weights are visible above the runtime)."""
    ctx = multiprocessing.get_context("spawn")
    peaks = {}
    for name, lora_reference in (("adapter_disabled", True), ("separate_reference", False)):
        queue = ctx.Queue()
        proc = ctx.Process(target=_peak_rss, args=(lora_reference, queue))
        proc.start()
        peaks[name] = queue.get(timeout=600)
        proc.join()
    params = MEM_SIZE["num_hidden_layers"] * (4 * MEM_SIZE["hidden_size"] ** 2 + 3 * MEM_SIZE["hidden_size"] * MEM_SIZE["intermediate_size"])
    return {
        "lora_ref_mem_ratio": round(peaks["adapter_disabled"] / peaks["separate_reference"], 3),
        "peak_rss_mib": {k: round(v / 1024, 1) for k, v in peaks.items()},
        "mem_model_params_millions": round(params / 1e6, 1),
    }
