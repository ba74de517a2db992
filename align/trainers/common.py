"""What every ``align train`` command shares.

Each trainer's config is a TRL / ``transformers`` config (``DPOConfig``, ``RewardConfig``,
``TrainingArguments``) with :class:`AlignFields` mixed in, so every option users know from TRL
(``num_train_epochs``, ``warmup_ratio``, ``lr_scheduler_type``, ``weight_decay``,
``max_grad_norm``, ``eval_strategy``/``eval_steps``, ``report_to``, ``logging_dir``, ...) works
with TRL's defaults, which are sized for real models; ``configs/*-testbed.yaml`` set the testbed's.
On top: the model (hub id, directory or ``testbed:NAME``), its dtype, an explicit reference or LoRA
(reference = the adapter disabled), the dataset and its splits, and resuming.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import ConfigError
from ..data import load_split
from ..models import DTYPES, load_causal_lm, load_tokenizer, resolve_model


@dataclass
class AlignFields:
    """Our fields, mixed into each trainer's TRL config (see the module docstring)."""

    model: str = field(
        default="testbed:small-instruct", metadata={"help": "policy: a hub id, a checkpoint directory or testbed:NAME"}
    )
    ref_model: str | None = field(default=None, metadata={"help": "reference (default: a frozen copy of model)"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="float32",
        metadata={"help": "weights' dtype: float32 keeps fp32 master weights (bf16=true adds autocast); auto = the checkpoint's"},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "run code shipped with a hub checkpoint"})
    dataset: str = field(
        default="", metadata={"help": "hub id, directory, .json/.jsonl/.parquet/.csv file, save_to_disk dir or testbed:NAME"}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "the dataset's configuration name (hub datasets)"})
    dataset_train_split: str = field(default="train", metadata={"help": "split to train on"})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "split to evaluate on (with eval_strategy steps/epoch; testbed datasets: eval)"}
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (0: full fine-tuning; >0: reference = adapter disabled)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in output_dir"})
    metrics_file: str | None = field(default=None, metadata={"help": "also write the result JSON here (main process)"})
    profile: str = field(default="full", metadata={"help": "testbed profile for testbed:NAME (full, tiny, tiny-bpe)"})
    testbed_seed: int = field(default=0, metadata={"help": "seed of the testbed that testbed:NAME names"})
    cache_dir: str | None = field(default=None, metadata={"help": "testbed cache directory"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, data order and testbed data"})

    def check_align_fields(self) -> None:
        """Validate our fields and settle mixed precision; call before the TRL config's ``__post_init__``."""
        import torch

        for key in ("beta", "learning_rate"):
            value = getattr(self, key, 0.0)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{key} must be a finite number >= 0, got {value}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.lora_r < 0:
            raise ConfigError(f"lora_r must be >= 0, got {self.lora_r}")
        if not self.dataset:
            raise ConfigError("dataset is required (a hub id, a directory, a file or testbed:NAME)")
        if self.eval_strategy not in ("no", None) and not self.dataset_test_split:
            raise ConfigError(f"eval_strategy {self.eval_strategy!r} needs dataset_test_split (the split to evaluate on)")
        if self.max_steps == 0:
            raise ConfigError("max_steps must be >= 1, or -1 to train num_train_epochs")
        self.init_kwargs()  # a bad model_init_kwargs fails here, before any data or model loads
        # TRL's configs turn bf16 autocast on by default, on CPU too, where it is slow and lossy:
        # unset (None) means bf16 only on GPUs that support it.
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.fp16
        if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
            self.use_cpu = True  # without it, `accelerate launch` on CPUs runs every rank as world size 1

    def init_kwargs(self) -> dict[str, Any]:
        """TRL's ``model_init_kwargs`` (where the config has it) for every model this trainer loads;
        dtype and remote code have options of their own."""
        kwargs = getattr(self, "model_init_kwargs", None) or {}
        if isinstance(kwargs, str):
            try:
                kwargs = json.loads(kwargs)
            except json.JSONDecodeError as err:
                raise ConfigError(f"model_init_kwargs must be a JSON mapping, e.g. '{{\"attn_implementation\": \"sdpa\"}}': {err}") from err
        if not isinstance(kwargs, dict):
            raise ConfigError(f"model_init_kwargs must be a mapping of from_pretrained arguments, got {kwargs!r}")
        from ..models import torch_dtype

        own = {"dtype": (self.dtype, torch_dtype(self.dtype)), "torch_dtype": (self.dtype, torch_dtype(self.dtype)),
               "trust_remote_code": (self.trust_remote_code,)}
        clash = sorted(k for k in own if k in kwargs and kwargs[k] not in own[k])  # the same value (a config echoing ours) is fine
        if clash:
            raise ConfigError(f"model_init_kwargs: set {clash} with the options dtype / trust_remote_code instead")
        return {k: v for k, v in kwargs.items() if k not in own}

    def resolve(self, name: str) -> str:
        return resolve_model(name, self.profile, self.testbed_seed, self.cache_dir)


def load_splits(args: Any, testbed: dict[str, Any]) -> tuple[Any, Any]:
    """The train split and, when evaluation is on, the test split of ``args.dataset``."""
    train = load_split(args.dataset, args.dataset_train_split, args.dataset_config, testbed)
    test = None
    if args.dataset_test_split and args.eval_strategy != "no":
        test = load_split(args.dataset, args.dataset_test_split, args.dataset_config, testbed)
    return train, test


def policy_preference_data(args: AlignFields, n_train: int, n_eval: int, synthetic: int = 0) -> Any:
    """``testbed:policy_preference``: the testbed policy's (small-instruct's) own answers, labelled
    by the verifier (:func:`align.testbed.datasets.policy_preference`)."""
    from ..testbed import load_testbed
    from ..testbed.datasets import policy_preference

    tb = load_testbed(args.profile, args.testbed_seed, args.cache_dir)
    return policy_preference(tb.model("small-instruct"), tb.tokenizer(), n_train, n_eval, args.seed, synthetic)


def lora_config(args: AlignFields, task_type: str = "CAUSAL_LM") -> Any:
    """PEFT LoRA on every linear layer at rank ``lora_r`` (``None`` when ``lora_r`` is 0)."""
    if args.lora_r <= 0:
        return None
    from peft import LoraConfig

    return LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", task_type=task_type)


def load_models(args: Any) -> tuple[Any, Any, Any, Any]:
    """Tokenizer, policy, reference (``None`` with LoRA: the adapter is disabled instead) and the
    PEFT config. The reference is always loaded explicitly, never from ``config._name_or_path``."""
    path = args.resolve(args.model)
    tok = load_tokenizer(path, args.trust_remote_code)
    init = args.init_kwargs()
    policy = load_causal_lm(path, args.dtype, trust_remote_code=args.trust_remote_code, **init)
    if args.lora_r > 0:
        return tok, policy, None, lora_config(args)
    ref = load_causal_lm(args.resolve(args.ref_model or args.model), args.dtype, trust_remote_code=args.trust_remote_code, **init)
    ref.requires_grad_(False).eval()
    return tok, policy, ref, None


def token_logps(model: Any, input_ids: Any, attention_mask: Any, positions: Any = None) -> Any:
    """``log π(token t+1 | tokens <= t)`` at every position, ``[N, T-1]`` (fp32 log-softmax at the
    labels); mask it with the completion mask shifted by one.

    ``positions``: a sorted 1-D tensor of the positions ``t`` to score (e.g. every column some
    completion uses); the output head runs on those alone (transformers' ``logits_to_keep`` with
    indices) and the other columns read 0. At a 152k vocabulary the head over prompt positions
    costs more than the rest of the model.
    """
    if positions is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
        return logits.gather(-1, input_ids[:, 1:, None])[..., 0] - logits.logsumexp(-1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=positions).logits.float()
    scored = logits.gather(-1, input_ids[:, positions + 1, None])[..., 0] - logits.logsumexp(-1)
    out = scored.new_zeros(input_ids.shape[0], input_ids.shape[1] - 1)
    out[:, positions] = scored
    return out


@contextmanager
def first_forward_output(model: Any) -> Iterator[list[Any]]:
    """Collects the output of ``model``'s first forward call inside the block (the policy's, when a
    trainer runs the reference after it), so a metric or an extra loss term can reuse it instead of
    running another forward."""
    captured: list[Any] = []

    def keep_first(_module: Any, _args: Any, output: Any) -> None:
        if not captured:
            captured.append(output)

    hook = model.register_forward_hook(keep_first)
    try:
        yield captured
    finally:
        hook.remove()


class IntervalMeans:
    """Named means over a logging interval, per mode: sums and counts stay on the device each step
    and are summed across processes once, when the trainer logs (no sync per step)."""

    def __init__(self) -> None:
        self._acc: dict[str, dict[str, Any]] = {"train": {}, "eval": {}}

    def add(self, mode: str, name: str, total: Any, count: Any = 1) -> None:
        """Add ``total`` (a tensor, summed) over ``count`` items to ``name``'s running mean."""
        import torch

        total = torch.as_tensor(total).detach().double().sum()
        pair = torch.stack([total, torch.as_tensor(count, dtype=torch.float64, device=total.device).sum()])
        acc = self._acc[mode]
        acc[name] = pair if name not in acc else acc[name] + pair

    def pop(self, mode: str, accelerator: Any) -> dict[str, float]:
        """The interval's means (``eval_``-prefixed in eval mode), summed over processes; then reset."""
        acc, prefix = self._acc[mode], ("eval_" if mode == "eval" else "")
        out = {}
        for name, pair in acc.items():
            total, count = accelerator.reduce(pair.to(accelerator.device), "sum").tolist()
            if count:
                out[prefix + name] = total / count
        acc.clear()
        return out


def disable_dropout(model: Any) -> None:
    """Dropout off everywhere, including attention dropout that is a float on the attention module
    (Llama, Qwen) rather than an ``nn.Dropout``: log-ratio objectives compare policy and reference
    on the same tokens, and dropout noise would enter the rewards."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def last_checkpoint(args: Any) -> str | None:
    """The checkpoint to resume from: ``resume_from_checkpoint`` if set, the last one in
    ``output_dir`` when ``resume`` is set, else ``None`` (start fresh)."""
    if args.resume_from_checkpoint:
        return args.resume_from_checkpoint
    if not args.resume:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if found is None:
        print(f"resume: no checkpoint in {args.output_dir}, starting fresh")
    return found


def finish(trainer: Any, args: Any, tok: Any, extra: dict[str, Any]) -> dict[str, Any]:
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
        from rewards.io import atomic_write_text

        atomic_write_text(args.metrics_file, json.dumps(result, indent=2))
    return result
