"""``align train dpo|rpo``: DPO, f-DPO and RPO on TRL's ``DPOTrainer``.

TRL already computes the f-DPO objectives exactly as :mod:`align.trainers.losses` does (an exact cross-check
lives in ``tests/trainers/test_losses_vs_trl.py``), so for DPO the trainer is configuration: our divergence
names and the paper's α map onto ``DPOConfig``. RPO adds :func:`align.trainers.losses.sft_nll` of the chosen
completions with any of its three reductions (``sum`` with η·β, ``seq_mean``, ``token_mean``; TRL
has only the last), read from the policy forward TRL runs anyway, so it costs no extra pass. The
reference is always passed explicitly (or, with LoRA, is the policy with its adapter disabled): TRL
never reloads it from ``config._name_or_path``. Rows whose prompt alone fills ``max_length`` are
dropped by TRL (``truncation_mode="keep_start"``); longer completions are truncated.

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

from trl import DPOConfig

from ..config import ConfigError
from .common import (
    AlignFields,
    IntervalMeans,
    disable_dropout,
    finish,
    first_forward_output,
    last_checkpoint,
    load_models,
    load_splits,
    policy_preference_data,
)

TRL_DIVERGENCE = {"reverse_kl": "reverse_kl", "forward_kl": "forward_kl", "js": "js_divergence", "alpha": "alpha_divergence"}


@dataclass
class DPOArgs(AlignFields, DPOConfig):
    """``trl.DPOConfig`` (every TRL option, TRL's defaults) plus :class:`AlignFields` and the
    f-DPO / RPO options below; our divergence names and the paper's α set TRL's fields."""

    dataset: str = field(
        default="testbed:preference",
        metadata={"help": "preference data: hub id, directory, file, testbed:preference (slips) or testbed:policy_preference "
                          "(small-instruct's own answers, verifier-labelled)"},
    )
    n_train: int = field(default=512, metadata={"help": "testbed datasets: training pairs"})
    loss: Literal["dpo", "rpo"] = field(default="dpo", metadata={"help": "dpo, or rpo (adds the chosen NLL)"})
    divergence: Literal["reverse_kl", "forward_kl", "js", "alpha"] = field(
        default="reverse_kl", metadata={"help": "f-DPO divergence"}
    )
    alpha: float = field(default=0.5, metadata={"help": "α-divergence coefficient"})
    alpha_convention: Literal["paper", "trl"] = field(default="paper", metadata={"help": "paper: α->0 is reverse KL"})
    rpo_eta: float = field(default=1.0, metadata={"help": "rpo: NLL coefficient η (times β for sft_reduction=sum)"})
    sft_reduction: Literal["sum", "seq_mean", "token_mean"] = field(
        default="token_mean", metadata={"help": "rpo: sum (Liu, η·β), seq_mean (Liu App. F) or token_mean (TRL)"}
    )
    ge_probe_every: int = field(default=0, metadata={"help": "log ge/* gradient entanglement every N steps (0: off)"})
    ge_probe_size: int = field(default=8, metadata={"help": "pairs in the fixed ge/* probe batch (the first rows)"})
    ge_params: Literal["trainable", "last_block"] = field(
        default="trainable", metadata={"help": "ge/* gradients over every trainable parameter or the last block"}
    )
    output_dir: str = field(default="runs/train/dpo", metadata={"help": "checkpoints and the final model"})

    def __post_init__(self) -> None:
        self.check_align_fields()
        if self.ge_probe_every < 0 or self.ge_probe_size < 1:
            raise ConfigError("ge_probe_every must be >= 0 and ge_probe_size >= 1")
        if not (math.isfinite(self.alpha) and math.isfinite(self.rpo_eta) and self.rpo_eta >= 0):
            raise ConfigError(f"alpha and rpo_eta must be finite numbers (rpo_eta >= 0), got {self.alpha}, {self.rpo_eta}")
        if self.n_train < 1:
            raise ConfigError(f"n_train must be >= 1, got {self.n_train}")
        if self.sft_reduction not in ("sum", "seq_mean", "token_mean"):
            raise ConfigError(f"sft_reduction must be sum, seq_mean or token_mean, got {self.sft_reduction!r}")
        if self.loss not in ("dpo", "rpo"):
            raise ConfigError(f"loss must be dpo or rpo, got {self.loss!r}")
        if self.divergence not in TRL_DIVERGENCE:
            raise ConfigError(f"divergence must be one of {', '.join(TRL_DIVERGENCE)}, got {self.divergence!r}")
        for key, value in dpo_config_kwargs(self).items():
            setattr(self, key, value)
        super().__post_init__()


def dpo_config_kwargs(args: DPOArgs) -> dict[str, Any]:
    """The ``trl.DPOConfig`` fields that encode the objective (RPO's NLL is added by the trainer)."""
    from .losses import paper_alpha

    kwargs: dict[str, Any] = {"beta": args.beta, "f_divergence_type": TRL_DIVERGENCE[args.divergence]}
    if args.divergence == "forward_kl":
        # TRL's forward KL takes exp(-Δ) unclamped (inf, then nan gradients, once Δ < -88 in fp32); its
        # α-divergence at coefficient 0 is the same f'(t) = 1 - 1/t with the exponent clamped (METHODS A1).
        kwargs.update(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.0)
    if args.divergence == "alpha":
        try:
            kwargs["f_alpha_divergence_coef"] = 1.0 - paper_alpha(args.alpha, args.alpha_convention)
        except ValueError as err:
            raise ConfigError(f"alpha: {err}") from err
    kwargs["loss_type"] = ["sigmoid"]
    return kwargs


def train_dpo(args: DPOArgs) -> dict[str, Any]:
    """Train and save to ``args.output_dir``; returns the last logged metrics and data counts."""
    from trl import DPOTrainer

    from ..data import select_valid_preferences

    train, test = load_splits(args, _testbed_datasets(args))
    train, same = select_valid_preferences(train)
    if test is not None:
        test, _ = select_valid_preferences(test)
    tok, policy, ref, peft_config = load_models(args)
    if args.disable_dropout:  # TRL's switch misses attention dropout kept as a float (Llama, Qwen)
        for m in (policy, ref):
            if m is not None:
                disable_dropout(m)
    if args.loss == "rpo":
        trainer_cls, extra = rpo_trainer_class(DPOTrainer), {"rpo_eta": args.rpo_eta, "sft_reduction": args.sft_reduction}
    else:
        trainer_cls, extra = DPOTrainer, {}
    callbacks = []
    if args.ge_probe_every:
        from ..diagnostics.entanglement import EntanglementCallback, probe_pairs

        probe = probe_pairs(tok, [train[i] for i in range(min(args.ge_probe_size, len(train)))])
        callbacks.append(EntanglementCallback(probe, args.ge_probe_every, args.ge_params))
    trainer = trainer_cls(
        model=policy, ref_model=ref, args=args, train_dataset=train, eval_dataset=test, processing_class=tok,
        peft_config=peft_config, callbacks=callbacks, **extra,
    )
    trainer.train(resume_from_checkpoint=last_checkpoint(args))
    return finish(trainer, args, tok, {"pairs": len(train), "dropped_identical": same})


def rpo_trainer_class(base: type) -> type:
    """``base`` (TRL's ``DPOTrainer``) plus RPO's NLL on the chosen completions.

    The policy's per-token log-probs come from the forward TRL runs anyway: a forward hook on the
    unwrapped model keeps the first call's (the policy's; the reference runs after it). Then
    ``loss = DPO + coefficient · sft_nll(chosen, reduction)`` (:func:`align.losses.rpo_loss`), and
    ``nll_loss`` (unweighted) is logged.
    """
    from .losses import rpo_loss, sft_nll

    class RPOTrainer(base):
        def __init__(self, *a: Any, rpo_eta: float, sft_reduction: str, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.rpo_eta, self.sft_reduction = rpo_eta, sft_reduction
            self._nll = IntervalMeans()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with first_forward_output(self.accelerator.unwrap_model(model)) as captured:
                result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            dpo = result[0] if return_outputs else result
            mask = inputs["completion_mask"][:, 1:]  # position t predicts token t+1
            chosen_logps, _ = captured[0].log_probs[:, -mask.shape[1] :].chunk(2, dim=0)  # the batch is [chosen; rejected]
            chosen_mask, _ = mask.chunk(2, dim=0)
            nll = sft_nll(chosen_logps, chosen_mask, self.sft_reduction)
            loss = rpo_loss(dpo, nll, self.rpo_eta, self.beta, self.sft_reduction)
            self._nll.add("train" if self.model.training else "eval", "nll_loss", nll)
            return (loss, result[1]) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            logs.update(self._nll.pop("train" if self.model.training else "eval", self.accelerator))
            super().log(logs, start_time)

    return RPOTrainer


def _testbed_datasets(args: DPOArgs) -> dict[str, Any]:
    from ..testbed.datasets import preference_pairs

    return {"testbed:preference": lambda: preference_pairs(args.n_train, 8, seed=args.seed, conversational=True),
            "testbed:policy_preference": lambda: policy_preference_data(args, args.n_train, 8)}
