"""What every ``align train`` command shares: the common config fields, model loading (explicit
reference or LoRA with the adapter disabled), the ``transformers.TrainingArguments`` they imply,
resuming, and the result file. Objective-specific trainers (:mod:`align.dpo`, :mod:`align.bco`)
add their fields and their loss.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import ConfigError


@dataclass
class TrainArgs:
    model: str = field(default="testbed:small-instruct", metadata={"help": "policy: testbed:NAME or a checkpoint dir"})
    ref_model: str | None = field(default=None, metadata={"help": "reference (default: a frozen copy of model)"})
    beta: float = field(default=0.1, metadata={"help": "β: reward scale r = β(logp - ref_logp)"})
    output_dir: str = field(default="runs/train", metadata={"help": "checkpoints and the final model"})
    learning_rate: float = field(default=5e-4, metadata={"help": "AdamW learning rate"})
    max_steps: int = field(default=50, metadata={"help": "optimizer steps"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "examples (pairs for DPO) per device and step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per step"})
    max_length: int = field(default=1024, metadata={"help": "tokens per sequence; rows whose prompt fills it are dropped"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (0: full fine-tuning; >0: reference = adapter disabled)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory"})
    mixed_precision: Literal["auto", "no", "bf16"] = field(
        default="auto", metadata={"help": "auto: bf16 autocast on GPUs that support it, fp32 otherwise (and on CPU)"}
    )
    logging_steps: int = field(default=10, metadata={"help": "log every N steps"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: none)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in output_dir"})
    seed: int = field(default=0, metadata={"help": "seed of data order and initialisation"})
    metrics_file: str | None = field(default=None, metadata={"help": "also write the result JSON here (main process)"})
    profile: Literal["full", "tiny"] = field(default="full", metadata={"help": "testbed profile for testbed:NAME"})
    cache_dir: str | None = field(default=None, metadata={"help": "testbed cache directory"})

    def __post_init__(self) -> None:
        for key in ("beta", "learning_rate"):
            if not math.isfinite(getattr(self, key)) or getattr(self, key) < 0:
                raise ConfigError(f"{key} must be a finite number >= 0, got {getattr(self, key)}")
        for key in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise ConfigError(f"mixed_precision must be auto, no or bf16, got {self.mixed_precision!r}")
        if self.lora_r < 0 or self.save_steps < 0:
            raise ConfigError("lora_r and save_steps must be >= 0")


def resolve_model(args: TrainArgs, name: str) -> str:
    """``testbed:NAME`` -> that testbed model's directory; anything else is a path."""
    if name.startswith("testbed:"):
        from .testbed import load_testbed

        return str(load_testbed(args.profile, args.seed, args.cache_dir).path(name.removeprefix("testbed:")))
    return name


def load_rows(spec: str, testbed: dict[str, Any]) -> Any:
    """Rows named by ``spec``: a testbed builder's key (``testbed:preference`` -> ``testbed[...]()``), a
    ``.jsonl`` file, or a ``save_to_disk`` directory (its ``train`` split if it has splits)."""
    from datasets import load_from_disk

    from .io import read_jsonl

    if spec.startswith("testbed:"):
        if spec not in testbed:
            raise ConfigError(f"dataset {spec!r} is not a testbed dataset here; use one of {', '.join(testbed)}")
        return testbed[spec]()
    if spec.endswith(".jsonl"):
        return read_jsonl(spec)
    if not Path(spec).is_dir():
        raise ConfigError(f"dataset {spec!r}: not a testbed name, a .jsonl file or a saved dataset directory")
    loaded = load_from_disk(spec)
    return loaded["train"] if hasattr(loaded, "keys") and "train" in loaded else loaded


def check_preference_rows(rows: Any) -> tuple[list[int], int]:
    """Validate ``prompt``/``chosen``/``rejected`` rows before any training.

    Returns the indices to keep and how many pairs had ``chosen == rejected`` (dropped: they carry
    no preference). Raises :class:`ConfigError` naming the first bad row and field.
    """
    keep, same = [], 0
    for i, row in enumerate(rows):
        for key in ("prompt", "chosen", "rejected"):
            check_text_field(row, i, key)
        if row["chosen"] == row["rejected"]:
            same += 1
        else:
            keep.append(i)
    return keep, same


def check_text_field(row: Any, index: int, key: str) -> None:
    """``row[key]`` must be non-empty text or non-empty chat messages; the error names row and field."""
    value = row.get(key) if isinstance(row, dict) else None
    if value is None:
        raise ConfigError(f"row {index}: field {key!r} is missing")
    ok = (isinstance(value, str) and value.strip()) or (
        isinstance(value, list) and value and all(isinstance(m, dict) and m.get("content") for m in value)
    )
    if not ok:
        raise ConfigError(f"row {index}: field {key!r} must be non-empty text or chat messages, got {value!r}")


def tokenize_prompt_completion(tokenizer: Any, row: dict, max_length: int = 1024) -> dict[str, list[int]] | None:
    """Prompt + completion ids and the completion mask, as TRL tokenizes preference data: chat
    messages through the template, plain text with EOS appended; the completion starts where the
    prompt and prompt+completion encodings diverge. ``None`` when the prompt fills ``max_length``."""
    from trl.data_utils import common_prefix_length, is_conversational

    if is_conversational(row):
        prompt = list(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True)["input_ids"])
        full = list(tokenizer.apply_chat_template(row["prompt"] + row["completion"])["input_ids"])
    else:
        completion = row["completion"]
        if not completion.endswith(tokenizer.eos_token):
            completion += tokenizer.eos_token
        prompt = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + completion)["input_ids"]
    start = common_prefix_length(prompt, full)
    if start >= max_length:
        return None
    full = full[:max_length]
    return {"input_ids": full, "completion_mask": [0] * start + [1] * (len(full) - start)}


def load_models(args: TrainArgs) -> tuple[Any, Any, Any, Any]:
    """Tokenizer, policy, reference (``None`` with LoRA: the adapter is disabled instead) and the
    PEFT config. The reference is always loaded explicitly, never from ``config._name_or_path``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(args, args.model)
    tok = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
    if args.lora_r > 0:
        from peft import LoraConfig

        lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", task_type="CAUSAL_LM")
        return tok, policy, None, lora
    ref = AutoModelForCausalLM.from_pretrained(resolve_model(args, args.ref_model or args.model), trust_remote_code=False)
    ref.requires_grad_(False).eval()
    return tok, policy, ref, None


def training_kwargs(args: TrainArgs) -> dict[str, Any]:
    """The ``TrainingArguments`` fields our config fixes (TRL configs accept them too)."""
    import torch

    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return dict(
        output_dir=args.output_dir,
        learning_rate=args.learning_rate,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        gradient_checkpointing=args.gradient_checkpointing,
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        seed=args.seed,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        # TRL's configs default to bf16, which on CPU autocasts to slow, lossy bf16: decide explicitly
        bf16=args.mixed_precision == "bf16" or (args.mixed_precision == "auto" and gpu_bf16),
    )


def last_checkpoint(args: TrainArgs) -> str | None:
    """The checkpoint to resume from when ``resume`` is set (``None``: start fresh)."""
    if not args.resume:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if found is None:
        print(f"resume: no checkpoint in {args.output_dir}, starting fresh")
    return found


def finish(trainer: Any, args: TrainArgs, tok: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """Save the model, collect the logged losses, write ``metrics_file`` atomically (main process)."""
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():  # every rank reaches here; one writes
        tok.save_pretrained(args.output_dir)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    result = {
        **extra,
        "world_size": trainer.accelerator.num_processes,
        "losses": [entry["loss"] for entry in logged],
        "last_log": logged[-1] if logged else {},
        "log_history": trainer.state.log_history,
    }
    if args.metrics_file and trainer.is_world_process_zero():
        from .io import atomic_write_text

        atomic_write_text(args.metrics_file, json.dumps(result, indent=2))
    return result
