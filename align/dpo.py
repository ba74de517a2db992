"""``align train dpo|rpo``: DPO, f-DPO and RPO (token-mean NLL) on TRL's ``DPOTrainer``.

TRL already computes these objectives exactly as :mod:`align.losses` does (an exact cross-check
lives in ``tests/test_losses_vs_trl.py``), so the trainer is configuration: our divergence names
and the paper's α map onto ``DPOConfig``; RPO is TRL's ``["sigmoid", "sft"]`` mix. The reference
model is always passed explicitly (or, with LoRA, is the policy with its adapter disabled): TRL
never reloads it from ``config._name_or_path``. RPO's ``sum`` and ``seq_mean`` reductions
(Liu et al.) need a custom loss and are not wired into training yet.

Example config (``configs/dpo-testbed.yaml``)::

    model: testbed:small-instruct
    dataset: testbed:preference
    beta: 0.1
    max_steps: 50
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .config import ConfigError

TRL_DIVERGENCE = {"reverse_kl": "reverse_kl", "forward_kl": "forward_kl", "js": "js_divergence", "alpha": "alpha_divergence"}


@dataclass
class DPOArgs:
    model: str = field(default="testbed:small-instruct", metadata={"help": "policy: testbed:NAME or a checkpoint dir"})
    ref_model: str | None = field(default=None, metadata={"help": "reference (default: a frozen copy of model)"})
    dataset: str = field(
        default="testbed:preference", metadata={"help": "testbed:preference, a .jsonl file or a save_to_disk dir"}
    )
    n_train: int = field(default=512, metadata={"help": "testbed:preference: training pairs"})
    loss: Literal["dpo", "rpo"] = field(default="dpo", metadata={"help": "dpo, or rpo (adds the chosen NLL)"})
    beta: float = field(default=0.1, metadata={"help": "β"})
    divergence: Literal["reverse_kl", "forward_kl", "js", "alpha"] = field(
        default="reverse_kl", metadata={"help": "f-DPO divergence"}
    )
    alpha: float = field(default=0.5, metadata={"help": "α-divergence coefficient"})
    alpha_convention: Literal["paper", "trl"] = field(default="paper", metadata={"help": "paper: α->0 is reverse KL"})
    rpo_eta: float = field(default=1.0, metadata={"help": "rpo: NLL coefficient η"})
    sft_reduction: Literal["token_mean"] = field(default="token_mean", metadata={"help": "rpo: NLL reduction"})
    output_dir: str = field(default="runs/train/dpo", metadata={"help": "checkpoints and the final model"})
    learning_rate: float = field(default=5e-4, metadata={"help": "AdamW learning rate"})
    max_steps: int = field(default=50, metadata={"help": "optimizer steps"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "pairs per device and step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per step"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (0: full fine-tuning)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory"})
    logging_steps: int = field(default=10, metadata={"help": "log every N steps"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: none)"})
    seed: int = field(default=0, metadata={"help": "seed of data order and initialisation"})
    metrics_file: str | None = field(default=None, metadata={"help": "also write the result JSON here (main process)"})
    profile: Literal["full", "tiny"] = field(default="full", metadata={"help": "testbed profile for testbed:NAME"})
    cache_dir: str | None = field(default=None, metadata={"help": "testbed cache directory"})

    def __post_init__(self) -> None:
        for key in ("beta", "alpha", "rpo_eta", "learning_rate"):
            if not math.isfinite(getattr(self, key)) or getattr(self, key) < 0:
                raise ConfigError(f"{key} must be a finite number >= 0, got {getattr(self, key)}")
        for key in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "n_train"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.divergence == "alpha":
            from .losses import paper_alpha

            try:
                paper_alpha(self.alpha, self.alpha_convention)
            except ValueError as err:
                raise ConfigError(f"alpha: {err}") from err


def dpo_config_kwargs(args: DPOArgs) -> dict[str, Any]:
    """The ``trl.DPOConfig`` fields that encode the objective."""
    from .losses import paper_alpha

    kwargs: dict[str, Any] = {"beta": args.beta, "f_divergence_type": TRL_DIVERGENCE[args.divergence]}
    if args.divergence == "alpha":
        kwargs["f_alpha_divergence_coef"] = 1.0 - paper_alpha(args.alpha, args.alpha_convention)
    if args.loss == "rpo":
        kwargs.update(loss_type=["sigmoid", "sft"], loss_weights=[1.0, args.rpo_eta])
    else:
        kwargs["loss_type"] = ["sigmoid"]
    return kwargs


def check_preference_rows(rows: Any) -> tuple[list[int], int]:
    """Validate ``prompt``/``chosen``/``rejected`` rows before any training.

    Returns the indices to keep and how many pairs had ``chosen == rejected`` (dropped: they carry
    no preference). Raises :class:`ConfigError` naming the first bad row and field.
    """
    keep, same = [], 0
    for i, row in enumerate(rows):
        for key in ("prompt", "chosen", "rejected"):
            value = row.get(key) if isinstance(row, dict) else None
            if value is None:
                raise ConfigError(f"row {i}: field {key!r} is missing")
            ok = (isinstance(value, str) and value.strip()) or (
                isinstance(value, list) and value and all(isinstance(m, dict) and m.get("content") for m in value)
            )
            if not ok:
                raise ConfigError(f"row {i}: field {key!r} must be non-empty text or chat messages, got {value!r}")
        if row["chosen"] == row["rejected"]:
            same += 1
        else:
            keep.append(i)
    return keep, same


def train_dpo(args: DPOArgs) -> dict[str, Any]:
    """Train and save to ``args.output_dir``; returns the last logged metrics and data counts."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    dataset = _load_dataset(args)
    keep, same = check_preference_rows(dataset)
    if same:
        print(f"dropped {same} pairs whose chosen equals rejected")
    if not keep:
        raise ConfigError("no usable preference pairs")
    dataset = dataset.select(keep) if isinstance(dataset, Dataset) else Dataset.from_list([dataset[i] for i in keep])
    path = _resolve(args, args.model)
    tok = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
    peft_config = None
    ref = None
    if args.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", task_type="CAUSAL_LM")
    else:
        ref = AutoModelForCausalLM.from_pretrained(_resolve(args, args.ref_model or args.model), trust_remote_code=False)
    config = DPOConfig(
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
        **dpo_config_kwargs(args),
    )
    trainer = DPOTrainer(
        model=policy, ref_model=ref, args=config, train_dataset=dataset, processing_class=tok, peft_config=peft_config
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    tok.save_pretrained(args.output_dir)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    result = {
        "pairs": len(keep),
        "dropped_identical": same,
        "world_size": trainer.accelerator.num_processes,
        "losses": [entry["loss"] for entry in logged],
        "last_log": logged[-1] if logged else {},
    }
    if args.metrics_file and trainer.is_world_process_zero():
        import json

        from .io import atomic_write_text

        atomic_write_text(args.metrics_file, json.dumps(result, indent=2))
    return result


def _resolve(args: DPOArgs, ref: str) -> str:
    if ref.startswith("testbed:"):
        from .testbed import load_testbed

        return str(load_testbed(args.profile, args.seed, args.cache_dir).path(ref.removeprefix("testbed:")))
    return ref


def _load_dataset(args: DPOArgs) -> Any:
    from datasets import load_from_disk

    from .io import read_jsonl
    from .testbed.datasets import preference_pairs

    if args.dataset == "testbed:preference":
        return preference_pairs(args.n_train, 8, seed=args.seed, conversational=True)["train"]
    if args.dataset.endswith(".jsonl"):
        return read_jsonl(args.dataset)
    loaded = load_from_disk(args.dataset)
    return loaded["train"] if hasattr(loaded, "keys") and "train" in loaded else loaded
