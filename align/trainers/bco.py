"""``align train bco``: Binary Classifier Optimization on unpaired thumbs-up/down data.

Jung et al., "Binary Classifier Optimization for Large Language Model Alignment", arXiv:2404.04656
. Rows are ``{prompt, completion, label}``; the loss is :func:`align.losses.bco_loss`
on summed completion log-probs, with

* δ (:class:`RewardShift`): the cumulative, count-weighted mean of all training rewards (both
  labels), updated with the current batch before it is used, summed across processes, starting at
  0, saved in every checkpoint (``bco_state.json``) and restored on resume. It leans towards the
  majority label, so ``delta_mode="balanced"`` offers ``½(mean₊ + mean₋)``. Evaluation never moves it.
* optional UDM weights for undesirable examples (:mod:`align.udm`), fitted once before training,
  saved as ``udm.safetensors`` in the output directory and loaded, not refitted, on resume.

TRL removed its ``BCOTrainer``, so this is a small ``transformers.Trainer``: the reference is an
explicit frozen model, or the policy with its LoRA adapter disabled. Rows whose prompt alone fills
``max_length`` are dropped (counted); longer completions are truncated.

Example config (``configs/bco-testbed.yaml``)::

    model: testbed:small-instruct
    dataset: testbed:unpaired
    delta_mode: mean
    udm: false
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..config import ConfigError
from ..data import check_unpaired_rows, tokenize_prompt_completion
from .common import AlignFields, disable_dropout, finish, last_checkpoint, load_models, load_splits, token_logps

STATE_FILE = "bco_state.json"
UDM_FILE = "udm.safetensors"


class RewardShift:
    """Running δ for BCO.

    Example:
        >>> shift = RewardShift()
        >>> shift.update(torch.tensor([1.0, 3.0]), torch.tensor([True, False]))
        2.0
        >>> shift.update(torch.tensor([5.0]), torch.tensor([True]))   # (1 + 3 + 5) / 3
        3.0
    """

    def __init__(self, mode: Literal["mean", "balanced"] = "mean") -> None:
        if mode not in ("mean", "balanced"):
            raise ValueError(f"delta_mode must be 'mean' or 'balanced', got {mode!r}")
        self.mode = mode
        # [sum of desirable rewards, their count, sum of undesirable rewards, their count]
        self.totals = torch.zeros(4, dtype=torch.float64)

    @property
    def value(self) -> float:
        pos_sum, pos_n, neg_sum, neg_n = self.totals.tolist()
        if self.mode == "mean":
            n = pos_n + neg_n
            return (pos_sum + neg_sum) / n if n else 0.0
        means = [s / n for s, n in ((pos_sum, pos_n), (neg_sum, neg_n)) if n]
        return sum(means) / len(means) if means else 0.0

    def update(
        self,
        rewards: torch.Tensor,
        labels: torch.Tensor,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> float:
        """Add a batch (``reduce`` sums the batch totals across processes, e.g.
        ``lambda t: accelerator.reduce(t, "sum")``) and return the new δ."""
        r, lab = rewards.detach().double().flatten().cpu(), labels.bool().flatten().cpu()
        batch = torch.stack([r[lab].sum(), lab.sum().double(), r[~lab].sum(), (~lab).sum().double()])
        if reduce is not None:
            batch = reduce(batch).double().cpu()
        self.totals += batch
        return self.value

    def state_dict(self) -> dict:
        return {"mode": self.mode, "totals": self.totals.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"checkpoint δ was kept in mode {state['mode']!r}, this run uses {self.mode!r}")
        self.totals = torch.tensor(state["totals"], dtype=torch.float64)


@dataclass
class BCOArgs(AlignFields, TrainingArguments):
    """``transformers.TrainingArguments`` (TRL-style defaults below) plus :class:`AlignFields` and BCO's options."""

    dataset: str = field(
        default="testbed:unpaired", metadata={"help": "{prompt, completion, label} rows: hub id, directory, file or testbed:unpaired"}
    )
    beta: float = field(default=0.1, metadata={"help": "β: reward scale r = β(logp - ref_logp)"})
    max_length: int = field(default=1024, metadata={"help": "tokens per sequence; rows whose prompt fills it are dropped"})
    n_train: int = field(default=512, metadata={"help": "testbed:unpaired: training rows"})
    positive_fraction: float = field(default=0.5, metadata={"help": "testbed:unpaired: share of thumbs-up rows"})
    delta_mode: Literal["mean", "balanced"] = field(
        default="mean", metadata={"help": "δ: count-weighted mean of all rewards, or ½(mean₊ + mean₋)"}
    )
    udm: bool = field(default=False, metadata={"help": "reweight thumbs-down rows by the prompt density ratio"})
    udm_max_prompts: int = field(default=1024, metadata={"help": "UDM: prompts per label to fit on"})
    udm_clip_min: float = field(default=0.5, metadata={"help": "UDM: smallest weight"})
    udm_clip_max: float = field(default=10.0, metadata={"help": "UDM: largest weight"})
    output_dir: str = field(default="runs/train/bco", metadata={"help": "checkpoints and the final model"})
    # TRL's preference-config defaults, where transformers' differ
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (TRL's preference default)"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps"})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "trade compute for memory"})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 autocast (unset: only on GPUs that support it)"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep label and weight columns"})
    label_names: list[str] | None = field(default_factory=lambda: ["label"], metadata={"help": "label columns"})

    def __post_init__(self) -> None:
        self.check_align_fields()
        if self.delta_mode not in ("mean", "balanced"):
            raise ConfigError(f"delta_mode must be 'mean' or 'balanced', got {self.delta_mode!r}")
        if not 0.0 <= self.positive_fraction <= 1.0:
            raise ConfigError(f"positive_fraction must be in [0, 1], got {self.positive_fraction}")
        if self.n_train < 1 or self.udm_max_prompts < 1 or self.max_length < 1:
            raise ConfigError("n_train, udm_max_prompts and max_length must be >= 1")
        if not 0 < self.udm_clip_min <= self.udm_clip_max:
            raise ConfigError(f"need 0 < udm_clip_min <= udm_clip_max, got {self.udm_clip_min}, {self.udm_clip_max}")
        super().__post_init__()


def completion_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed completion log-probs ``[B]`` (fp32 log-softmax at the labels)."""
    return (token_logps(model, batch["input_ids"], batch["attention_mask"]) * batch["completion_mask"][:, 1:]).sum(-1)


def collate(pad_token_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Right-pad ``input_ids`` and masks; keep ``label`` and the UDM ``weight``."""

    def fn(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        completion = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            attention[i, :n] = 1
            completion[i, :n] = torch.tensor(r["completion_mask"])
        return {
            "input_ids": ids,
            "attention_mask": attention,
            "completion_mask": completion,
            "label": torch.tensor([bool(r["label"]) for r in rows]),
            "weight": torch.tensor([float(r.get("weight", 1.0)) for r in rows]),
        }

    return fn


class BCOTrainer(Trainer):
    """``transformers.Trainer`` with the BCO loss; see the module docstring.

    Args:
        ref_model: the frozen reference, or ``None`` when ``model`` is a PEFT model (adapter disabled).
        beta: reward scale; delta_mode: see :class:`RewardShift`; udm_clip: the UDM weight bounds
            (weights at a bound count in ``udm/frac_clipped``).
    """

    def __init__(
        self,
        *args: Any,
        ref_model: Any = None,
        beta: float = 0.1,
        delta_mode: str = "mean",
        udm_clip: tuple[float, float] = (0.5, 10.0),
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        for m in (self.model, ref_model):
            if m is not None:
                disable_dropout(m)
        self.udm_clip = udm_clip
        self.model_accepts_loss_kwargs = False  # our loss is a per-micro-batch mean: let Trainer scale by 1/GA
        self.ref_model = None if ref_model is None else self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self.beta = beta
        self.shift = RewardShift(delta_mode)
        self._sums: dict[str, dict[str, Any]] = {"train": {}, "eval": {}}  # per logging interval
        self.add_callback(_SaveShift(self))

    def _reference_logps(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            if self.ref_model is not None:
                return completion_logps(self.ref_model, batch)
            with self.accelerator.unwrap_model(model).disable_adapter():
                return completion_logps(model, batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from .losses import bco_loss

        logps = completion_logps(model, inputs)
        ref = self._reference_logps(model, inputs)
        labels = inputs["label"]
        training = model.training
        if training:  # eval never moves δ
            rewards = self.beta * (logps.detach() - ref)
            delta = self.shift.update(rewards, labels, lambda t: self.accelerator.reduce(t.to(self.accelerator.device), "sum"))
        else:
            delta = self.shift.value
        weights = torch.where(labels, torch.ones_like(inputs["weight"]), inputs["weight"])
        losses, rewards = bco_loss(logps, ref, labels, self.beta, delta, weights)
        self._record("train" if training else "eval", rewards, logps.detach(), labels, inputs["weight"], delta)
        loss = losses.mean()
        return (loss, {"rewards": rewards}) if return_outputs else loss

    STATS = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "udm/weight_mean", "udm/frac_clipped")

    def _record(self, mode: str, rewards, logps, labels, weights, delta: float) -> None:
        """Add this batch's sums and counts to the logging interval's, on device (no sync per step;
        they are summed across processes when logged)."""
        pos, neg = labels.to(rewards.dtype), (~labels).to(rewards.dtype)
        udm_w = weights.to(rewards.dtype)
        clipped = ((udm_w <= self.udm_clip[0]) | (udm_w >= self.udm_clip[1])).to(rewards.dtype)
        row = torch.stack([
            (rewards * pos).sum(), pos.sum(), (rewards * neg).sum(), neg.sum(),
            (logps * pos).sum(), pos.sum(), (logps * neg).sum(), neg.sum(),
            (udm_w * neg).sum(), neg.sum(), (clipped * neg).sum(), neg.sum(),
        ]).detach().double()
        acc = self._sums[mode]
        acc["sums"] = row if "sums" not in acc else acc["sums"] + row
        acc.setdefault("delta", []).append(delta)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        acc = self._sums[mode]
        if "sums" in acc:
            totals = self.accelerator.reduce(acc["sums"].to(self.accelerator.device), "sum").view(-1, 2).tolist()
            for key, (total, count) in zip(self.STATS, totals):
                if count:
                    logs[prefix + key] = total / count
            logs[prefix + "delta"] = sum(acc["delta"]) / len(acc["delta"])
        acc.clear()
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        if resume_from_checkpoint is True:  # what Trainer would pick: the last checkpoint in output_dir
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir} has no checkpoint")
        if isinstance(resume_from_checkpoint, str):
            state = Path(resume_from_checkpoint) / STATE_FILE
            if not state.exists():
                raise FileNotFoundError(f"{resume_from_checkpoint} has no {STATE_FILE}: not a BCO checkpoint")
            self.shift.load_state_dict(json.loads(state.read_text()))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


class _SaveShift(TrainerCallback):
    """Writes δ into each checkpoint directory (after Trainer has written the checkpoint)."""

    def __init__(self, trainer: BCOTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from rewards.io import atomic_write_text

            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
            atomic_write_text(path, json.dumps(self.trainer.shift.state_dict()))


def udm_weights(
    rows: list[dict], args: BCOArgs, embedding_func: Callable | None = None, eval_rows: list[dict] | None = None
) -> tuple[list[float], list[float] | None, dict[str, Any]]:
    """UDM weights per training row and per eval row (1 for desirable rows): fitted once on the
    training rows and saved in ``output_dir``, loaded from there when present (a resumed run never
    refits). Fitting happens on the main process."""
    from accelerate import PartialState

    from ..diagnostics.udm import UDM, minilm_embedder, prompt_text

    path = Path(args.output_dir) / UDM_FILE
    embed = embedding_func or minilm_embedder()
    embeddings = embed([prompt_text(r["prompt"]) for r in rows])
    labels = torch.tensor([r["label"] for r in rows])
    state = PartialState()
    with state.main_process_first():
        if path.exists():
            udm, source = UDM.load(path), "loaded"
        else:
            udm = UDM.fit(embeddings[labels], embeddings[~labels], args.udm_max_prompts, args.seed,
                          (args.udm_clip_min, args.udm_clip_max))
            if state.is_main_process:
                udm.save(path)
            source = "fitted"

    def weigh(rows: list[dict], embeddings: torch.Tensor) -> list[float]:
        labels = torch.tensor([r["label"] for r in rows])
        return torch.where(labels, torch.ones(len(rows)), udm.weights(embeddings)).tolist()

    eval_weights = None
    if eval_rows is not None:
        eval_weights = weigh(eval_rows, embed([prompt_text(r["prompt"]) for r in eval_rows]))
    return weigh(rows, embeddings), eval_weights, {"udm": source, **(udm.info or {})}


def train_bco(
    args: BCOArgs, embedding_func: Callable | None = None, callbacks: list[TrainerCallback] | None = None
) -> dict[str, Any]:
    """Train and save to ``args.output_dir``; returns the last logged metrics and data counts.

    ``embedding_func`` (texts -> ``[N, D]`` tensor) replaces UDM's default MiniLM embedder;
    ``callbacks`` are added to the ``Trainer``.
    """
    train, test = load_splits(args, _testbed_datasets(args))
    rows = [dict(r) for r in train]
    check_unpaired_rows(rows)
    if not rows:
        raise ConfigError("the dataset has no rows")
    eval_rows = [dict(r) for r in test] if test is not None else None
    if eval_rows is not None:
        check_unpaired_rows(eval_rows)
    resume_from = last_checkpoint(args)
    info: dict[str, Any] = {}
    weights = eval_weights = None
    if args.udm:
        weights, eval_weights, info = udm_weights(rows, args, embedding_func, eval_rows)
    tok, policy, ref, peft_config = load_models(args)
    encoded, too_long = encode_unpaired(tok, rows, weights, args.max_length)
    if too_long:
        print(f"dropped {too_long} rows whose prompt fills max_length={args.max_length}")
    if not len(encoded):
        raise ConfigError("no usable rows")
    eval_encoded = encode_unpaired(tok, eval_rows, eval_weights, args.max_length)[0] if eval_rows is not None else None
    if peft_config is not None:
        from peft import get_peft_model

        policy = get_peft_model(policy, peft_config)
    trainer = BCOTrainer(
        model=policy, ref_model=ref, args=args, train_dataset=encoded, eval_dataset=eval_encoded,
        data_collator=collate(tok.pad_token_id), processing_class=tok, beta=args.beta, delta_mode=args.delta_mode,
        udm_clip=(args.udm_clip_min, args.udm_clip_max), callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume_from)
    extra = {"rows": len(encoded), "desirable": sum(encoded["label"]), "dropped_too_long": too_long,
             "delta": trainer.shift.value, **info}
    return finish(trainer, args, tok, extra)


def encode_unpaired(tok: Any, rows: list[dict], weights: list[float] | None, max_length: int) -> tuple[Any, int]:
    """Tokenized rows (``input_ids``, ``completion_mask``, ``label``, ``weight``) and how many were too long."""
    from datasets import Dataset

    encoded, too_long = [], 0
    for i, row in enumerate(rows):
        enc = tokenize_prompt_completion(tok, row, max_length)
        if enc is None:
            too_long += 1
        else:
            encoded.append({**enc, "label": row["label"], "weight": 1.0 if weights is None else weights[i]})
    return Dataset.from_list(encoded), too_long


def _testbed_datasets(args: BCOArgs) -> dict[str, Any]:
    from ..testbed.datasets import unpaired_feedback

    return {"testbed:unpaired": lambda: unpaired_feedback(args.n_train, 8, args.seed, True, args.positive_fraction)}
