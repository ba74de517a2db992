"""``align train reward``: an ensemble of Bradley–Terry reward models on TRL's ``RewardTrainer``.

Members differ by seed: the new score head's initialisation and the data order (and, with
``label_noise``, which pairs get their labels flipped: Coste et al. 2310.02743 train proxies on
25%-noisy labels). With ``member_data: disjoint`` member ``i`` trains on its own slice of the
pairs (rows ``i, i+k, i+2k, ...``), so members also differ in what they saw. Each member is a ``num_labels=1`` sequence-classification model in
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

from trl import RewardConfig

from ..config import ConfigError
from .common import AlignFields, disable_dropout, load_splits, lora_config


@dataclass
class RewardArgs(AlignFields, RewardConfig):
    """``trl.RewardConfig`` (every TRL option, TRL's defaults) plus :class:`AlignFields` and the ensemble options."""

    dataset: str = field(
        default="testbed:preference", metadata={"help": "preference data: hub id, directory, file or testbed:preference"}
    )
    n_train: int = field(default=2000, metadata={"help": "testbed:preference: training pairs"})
    ensemble_size: int = field(default=1, metadata={"help": "members, seeds seed, seed+1, ..."})
    label_noise: float = field(default=0.0, metadata={"help": "per member, flip each pair's label with this probability"})
    member_data: str = field(default="shared", metadata={"help": "shared: every member trains on every pair; disjoint: member i on rows i::k"})
    output_dir: str = field(default="runs/train/reward", metadata={"help": "member-<i>/ directories and ensemble.json"})

    def __post_init__(self) -> None:
        self.check_align_fields()
        if self.ensemble_size < 1 or self.n_train < 1:
            raise ConfigError(f"ensemble_size and n_train must be >= 1, got {self.ensemble_size}, {self.n_train}")
        if not 0.0 <= self.label_noise < 0.5:
            raise ConfigError(f"label_noise must be in [0, 0.5), got {self.label_noise}")
        if self.member_data not in ("shared", "disjoint"):
            raise ConfigError(f"member_data must be shared or disjoint, got {self.member_data!r}")
        from ..models import torch_dtype

        # RewardTrainer builds the sequence classifier itself, from these
        self.model_init_kwargs = {"dtype": torch_dtype(self.dtype), **(self.model_init_kwargs or {})}
        super().__post_init__()


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
    from dataclasses import replace

    from datasets import Dataset
    from transformers.trainer_utils import get_last_checkpoint
    from trl import RewardTrainer

    from rewards.io import atomic_write_text

    from ..data import select_valid_preferences
    from ..models import load_tokenizer
    from ..testbed.datasets import preference_pairs

    train, test = load_splits(args, {"testbed:preference": lambda: preference_pairs(args.n_train, 8, args.seed, True)})
    train, same = select_valid_preferences(train)
    if test is not None:
        test, _ = select_valid_preferences(test)
    rows = [dict(r) for r in train]
    if args.member_data == "disjoint" and len(rows) < args.ensemble_size:
        raise ConfigError(f"member_data: disjoint leaves member {len(rows)} no pairs ({len(rows)} pairs, {args.ensemble_size} members)")
    path = args.resolve(args.model)
    tok = load_tokenizer(path, args.trust_remote_code)
    root = Path(args.output_dir)
    members = []
    for i in range(args.ensemble_size):
        seed, member_dir = args.seed + i, root / f"member-{i}"
        own = rows[i :: args.ensemble_size] if args.member_data == "disjoint" else rows
        data, flipped = flip_labels(own, args.label_noise, seed)
        info = {"dir": member_dir.name, "seed": seed, "label_noise": args.label_noise, "flipped": flipped, "pairs": len(own)}
        if args.resume and (member_dir / "member.json").is_file():  # written last, after the weights
            members.append({**info, **json.loads((member_dir / "member.json").read_text())})
            continue
        config = replace(args, output_dir=str(member_dir), seed=seed)
        trainer = RewardTrainer(model=path, args=config, train_dataset=Dataset.from_list(data), eval_dataset=test,
                                processing_class=tok, peft_config=lora_config(args, "SEQ_CLS"))
        if config.disable_dropout:  # TRL's switch misses attention dropout kept as a float (Llama, Qwen)
            disable_dropout(trainer.model)
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
