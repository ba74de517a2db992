"""``align train reward``: an ensemble of Bradley–Terry reward models on TRL's ``RewardTrainer``.

Members differ only by seed: the new score head's initialisation and the data order (and, with
``label_noise``, which pairs get their labels flipped: Coste et al. 2310.02743 train proxies on
25%-noisy labels). Each member is a ``num_labels=1`` sequence-classification model in
``output_dir/member-<i>``; ``output_dir/ensemble.json`` lists them, and
:func:`rewards.load_ensemble` loads the whole ensemble. With ``resume: true`` finished members are
kept and an interrupted one continues from its last checkpoint.

Example config (``configs/reward-testbed.yaml``)::

    model: testbed:small-instruct
    dataset: testbed:preference
    ensemble_size: 5
    label_noise: 0.25
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError
from .training import TrainArgs, check_preference_rows, load_rows, resolve_model, training_kwargs


@dataclass
class RewardArgs(TrainArgs):
    dataset: str = field(
        default="testbed:preference", metadata={"help": "testbed:preference, a .jsonl file or a save_to_disk dir"}
    )
    n_train: int = field(default=2000, metadata={"help": "testbed:preference: training pairs"})
    ensemble_size: int = field(default=1, metadata={"help": "members, seeds seed, seed+1, ..."})
    label_noise: float = field(default=0.0, metadata={"help": "per member, flip each pair's label with this probability"})
    output_dir: str = field(default="runs/train/reward", metadata={"help": "member-<i>/ directories and ensemble.json"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    max_steps: int = field(default=250, metadata={"help": "optimizer steps per member"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ensemble_size < 1 or self.n_train < 1:
            raise ConfigError(f"ensemble_size and n_train must be >= 1, got {self.ensemble_size}, {self.n_train}")
        if not 0.0 <= self.label_noise < 0.5:
            raise ConfigError(f"label_noise must be in [0, 0.5), got {self.label_noise}")


def flip_labels(rows: list[dict], noise: float, seed: int) -> tuple[list[dict], int]:
    """Swap chosen and rejected in a ``noise`` fraction of rows (each independently); returns the count."""
    rng = random.Random(seed)
    out, flipped = [], 0
    for row in rows:
        if rng.random() < noise:
            row = {**row, "chosen": row["rejected"], "rejected": row["chosen"]}
            flipped += 1
        out.append(row)
    return out, flipped


def train_reward(args: RewardArgs) -> dict[str, Any]:
    """Train every member, write ``ensemble.json`` atomically; returns the manifest."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint
    from trl import RewardConfig, RewardTrainer

    from .io import atomic_write_text
    from .testbed.datasets import preference_pairs

    rows = load_rows(args.dataset, {"testbed:preference": lambda: preference_pairs(args.n_train, 8, args.seed, True)["train"]})
    keep, same = check_preference_rows(rows)
    if not keep:
        raise ConfigError("no usable preference pairs")
    rows = [dict(rows[i]) for i in keep]
    path = resolve_model(args, args.model)
    tok = AutoTokenizer.from_pretrained(path)
    root = Path(args.output_dir)
    members = []
    for i in range(args.ensemble_size):
        seed, member_dir = args.seed + i, root / f"member-{i}"
        data, flipped = flip_labels(rows, args.label_noise, seed)
        info = {"dir": member_dir.name, "seed": seed, "label_noise": args.label_noise, "flipped": flipped}
        done = member_dir / "model.safetensors"
        if args.resume and done.is_file():
            members.append({**info, **json.loads((member_dir / "member.json").read_text())})
            continue
        peft_config = None
        if args.lora_r > 0:
            from peft import LoraConfig

            peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", task_type="SEQ_CLS")
        config = RewardConfig(**{**training_kwargs(args), "output_dir": str(member_dir), "seed": seed}, max_length=args.max_length)
        trainer = RewardTrainer(model=path, args=config, train_dataset=Dataset.from_list(data), processing_class=tok,
                                peft_config=peft_config)
        resume = get_last_checkpoint(str(member_dir)) if args.resume and member_dir.is_dir() else None
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(member_dir))
        if trainer.is_world_process_zero():
            tok.save_pretrained(str(member_dir))
        logged = [h for h in trainer.state.log_history if "loss" in h]
        summary = {"final_loss": logged[-1]["loss"] if logged else None,
                   "final_accuracy": logged[-1].get("accuracy") if logged else None}
        if trainer.is_world_process_zero():
            atomic_write_text(member_dir / "member.json", json.dumps(summary))
        members.append({**info, **summary})
    manifest = {"base_model": args.model, "dataset": args.dataset, "pairs": len(rows), "dropped_identical": same,
                "members": members}
    from accelerate import PartialState

    if PartialState().is_main_process:
        atomic_write_text(root / "ensemble.json", json.dumps(manifest, indent=2))
    return manifest
