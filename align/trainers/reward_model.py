"""``align train reward``: an ensemble of Bradley–Terry reward models, one member per seed.

Two kinds of member, both trained on preference pairs with the Bradley–Terry loss
``-log σ(r(x, y_w) - r(x, y_l))``:

* ``kind: classifier`` (default): a ``num_labels=1`` sequence-classification model whose new score
  head reads the last token, on TRL's ``RewardTrainer``: the usual reward model of a deep LLM.
* ``kind: implicit``: the policy itself, trained with DPO (TRL's ``DPOTrainer``) and read as
  ``r(x, y) = β · log π_θ(y|x) / π_ref(y|x)`` (Rafailov et al. 2023, arXiv:2305.18290, §5):
  :class:`rewards.LikelihoodReward`. The reward lives in the next-token predictions, where a
  shallow model keeps what it knows about an answer; a two-layer testbed model cannot check a sum
  at one position, so its classifier members stay near chance (docs/rewards.md has the numbers).

Members differ by seed: initialisation of the new head (classifier), the data order and, with
``label_noise``, which pairs get their labels flipped (Coste et al. 2310.02743 train proxies on
25%-noisy labels). With ``member_data: disjoint`` member ``i`` trains on its own slice of the pairs
(rows ``i, i+k, i+2k, ...``), so members also differ in what they saw. Each member lives in
``output_dir/member-<i>``; ``output_dir/ensemble.json`` lists them with their pairwise accuracy
on the pairs they trained on (their true labels) and on held-out pairs (``dataset_test_split``;
the testbed's ``eval``), measured after training whatever the logging settings, and
:func:`rewards.load_ensemble` loads the whole ensemble. With ``resume: true`` finished members are
kept and an interrupted one continues from its last checkpoint.

Example config (``configs/reward-testbed.yaml``)::

    model: testbed:large-instruct
    dataset: testbed:preference
    kind: implicit
    ensemble_size: 3
"""

from __future__ import annotations

import json
import random
from functools import cache
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trl import DPOConfig, RewardConfig
from trl.data_utils import is_conversational

from ..config import ConfigError
from .common import AlignFields, disable_dropout, load_splits, lora_config, policy_preference_data

ACCURACY_ROWS = 500  # training pairs a member's train accuracy is measured on (the first of its slice)


@dataclass
class RewardArgs(AlignFields, RewardConfig):
    """``trl.RewardConfig`` (every TRL option, TRL's defaults) plus :class:`AlignFields` and the ensemble options."""

    dataset: str = field(
        default="testbed:preference",
        metadata={"help": "preference data: hub id, directory, file, testbed:preference (slips) or testbed:policy_preference "
                          "(small-instruct's own answers, verifier-labelled)"},
    )
    n_train: int = field(default=2000, metadata={"help": "testbed datasets: training pairs"})
    n_eval: int = field(default=400, metadata={"help": "testbed datasets: held-out pairs (each member's held-out accuracy)"})
    n_synthetic: int = field(default=0, metadata={"help": "testbed:policy_preference: also this many slips among the training pairs"})
    kind: Literal["classifier", "implicit"] = field(
        default="classifier",
        metadata={"help": "classifier: sequence classifier, new score head (RewardTrainer); implicit: DPO-trained policy "
                          "scored by beta * log pi/pi_ref (DPOTrainer; for models that cannot judge at one position)"},
    )
    beta: float = field(default=0.1, metadata={"help": "kind implicit: DPO's beta, also the reward's scale"})
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
        if self.kind not in ("classifier", "implicit"):
            raise ConfigError(f"kind must be classifier or implicit, got {self.kind!r}")
        if self.kind == "implicit" and not self.beta > 0:
            raise ConfigError(f"beta must be > 0 for kind implicit (it scales the reward), got {self.beta}")
        if self.n_eval < 1 or self.n_synthetic < 0:
            raise ConfigError(f"n_eval must be >= 1 and n_synthetic >= 0, got {self.n_eval}, {self.n_synthetic}")
        if self.dataset.startswith("testbed:") and self.dataset_test_split is None:
            self.dataset_test_split = "eval"
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

    from rewards.io import atomic_write_text

    from ..data import load_split, select_valid_preferences
    from ..models import load_tokenizer
    from ..testbed.datasets import preference_pairs

    testbed = {"testbed:preference": lambda: preference_pairs(args.n_train, args.n_eval, args.seed, True),
               "testbed:policy_preference": lambda: policy_preference_data(args, args.n_train, args.n_eval, args.n_synthetic)}
    testbed = {name: cache(build) for name, build in testbed.items()}  # train and held-out splits: one sampling
    train, test = load_splits(args, testbed)
    train, same = select_valid_preferences(train)
    held_out = None
    if args.dataset_test_split:
        held_out, _ = select_valid_preferences(load_split(args.dataset, args.dataset_test_split, args.dataset_config, testbed))
        held_out = [dict(r) for r in held_out]
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
        info = {"dir": member_dir.name, "kind": args.kind, "seed": seed, "label_noise": args.label_noise, "flipped": flipped,
                "pairs": len(own)}
        if args.kind == "implicit":
            info.update(beta=args.beta, reference=path)
        if args.resume and (member_dir / "member.json").is_file():  # written last, after the weights
            members.append({**info, **json.loads((member_dir / "member.json").read_text())})
            continue
        config = replace(args, output_dir=str(member_dir), seed=seed)
        trainer = _member_trainer(args, config, Dataset.from_list(data), test, tok, path)
        if config.disable_dropout:  # TRL's switch misses attention dropout kept as a float (Llama, Qwen)
            disable_dropout(trainer.model)
        resume = get_last_checkpoint(str(member_dir)) if args.resume and member_dir.is_dir() else None
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(member_dir))
        if trainer.is_world_process_zero():
            tok.save_pretrained(str(member_dir))
        logged = [h for h in trainer.state.log_history if "loss" in h]
        scorer = _member_scorer(args, trainer, tok, path)
        mean_loss = next((h["train_loss"] for h in trainer.state.log_history if "train_loss" in h), None)  # logged whatever logging_steps
        summary = {"final_loss": logged[-1]["loss"] if logged else None, "mean_train_loss": mean_loss,
                   "train_accuracy": _accuracy(scorer, own[:ACCURACY_ROWS]),
                   "held_out_accuracy": _accuracy(scorer, held_out) if held_out else None,
                   "held_out_pairs": len(held_out or [])}
        if trainer.is_world_process_zero():
            atomic_write_text(member_dir / "member.json", json.dumps(summary))
        members.append({**info, **summary})
    # members trained on messages score plain text as one user and one assistant turn (rewards.load_ensemble)
    manifest = {"base_model": args.model, "dataset": args.dataset, "kind": args.kind, "conversational": is_conversational(rows[0]),
                "pairs": len(rows), "dropped_identical": same, "members": members}
    from accelerate import PartialState

    if PartialState().is_main_process:
        atomic_write_text(root / "ensemble.json", json.dumps(manifest, indent=2))
    return manifest


def _member_trainer(args: RewardArgs, config: RewardArgs, data: Any, test: Any, tok: Any, path: str) -> Any:
    """TRL's ``RewardTrainer`` (classifier) or ``DPOTrainer`` (implicit) for one member."""
    if args.kind == "classifier":
        from trl import RewardTrainer

        return RewardTrainer(model=path, args=config, train_dataset=data, eval_dataset=test, processing_class=tok,
                             peft_config=lora_config(args, "SEQ_CLS"))
    from trl import DPOTrainer

    from .common import load_models

    _, policy, ref, peft = load_models(args)
    return DPOTrainer(model=policy, ref_model=ref, args=dpo_config(config), train_dataset=data, eval_dataset=test,
                      processing_class=tok, peft_config=peft)


def dpo_config(config: RewardArgs) -> DPOConfig:
    """``config``'s training options as a ``DPOConfig`` (every field the two configs share), with its β."""
    from dataclasses import fields

    # the policy is loaded before the trainer, so TRL's model_init_kwargs have nothing to do
    shared = ({f.name for f in fields(DPOConfig) if f.init} & {f.name for f in fields(RewardConfig) if f.init}) - {"model_init_kwargs"}
    return DPOConfig(**{name: getattr(config, name) for name in shared}, beta=config.beta)


def _member_scorer(args: RewardArgs, trainer: Any, tok: Any, path: str) -> Any:
    from rewards import HFRewardModel, LikelihoodReward

    model = trainer.accelerator.unwrap_model(trainer.model)
    if args.kind == "classifier":
        return HFRewardModel(model, tok, "member")  # the pairs it is measured on are in its training format
    ref = trainer.ref_model
    if ref is None:  # LoRA: the reference is the base checkpoint
        from ..models import load_causal_lm

        ref = load_causal_lm(path, args.dtype, trust_remote_code=args.trust_remote_code, **args.init_kwargs())
    return LikelihoodReward(model, tok, ref.to(next(model.parameters()).device), args.beta, "member")


def _accuracy(scorer: Any, rows: list[dict]) -> float:
    from rewards import pairwise_accuracy

    return round(pairwise_accuracy(scorer, [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]), 4)
