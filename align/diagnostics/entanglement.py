"""Gradient-entanglement diagnostics: will a preference step push the chosen log-prob down?

Yuan et al., "A Common Pitfall of Margin-based Language Model Alignment: Gradient Entanglement",
arXiv:2410.13828. With ``g = ∇θ logp`` (summed log-probs) and ``c = -ℓ'(m)·β·lr > 0``,
one SGD step on a margin loss changes::

    Δlogp_w ≈ c (‖g_w‖² - ⟨g_w, g_l⟩)   → the chosen falls iff ⟨g_w, g_l⟩ > ‖g_w‖²
    Δlogp_l ≈ c (⟨g_w, g_l⟩ - ‖g_l‖²)   → the rejected rises iff ⟨g_w, g_l⟩ > ‖g_l‖²

:func:`entanglement_stats` computes these per pair on a probe batch (per-example gradients in fp32,
optionally on a parameter subset such as the last block or LoRA weights) and returns the ``ge/*``
metrics; :class:`EntanglementCallback` logs them during training (``ge_probe_every`` in
``align train dpo|rpo``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, TrainerCallback


Side = tuple[Sequence[int], Sequence[int]]  # (prompt_ids, completion_ids)
ProbePair = tuple[Side, Side]  # chosen, rejected


def sequence_logp(model: PreTrainedModel, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> torch.Tensor:
    """Summed log-probability of ``response_ids`` after ``prompt_ids`` (differentiable)."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(response_ids)], device=device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt_ids) :, None]).sum()


def _grad(output: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(output, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).float().flatten() for g, p in zip(grads, params)])


def entanglement_stats(
    model: PreTrainedModel,
    pairs: Iterable[ProbePair],
    params: Iterable[torch.Tensor] | None = None,
) -> dict[str, float]:
    """``ge/*`` metrics over ``((prompt_ids, chosen_ids), (prompt_ids, rejected_ids))`` pairs.

    ``params`` defaults to every trainable parameter. Returns batch means of ``inner``,
    ``norm_w2``, ``norm_l2``, ``cos``, ``ratio_w = ⟨g_w,g_l⟩/‖g_w‖²``, ``ratio_l = ⟨g_w,g_l⟩/‖g_l‖²``
    and the fractions of pairs predicted to push the chosen down / the rejected up.
    """
    chosen_params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    rows = []
    for (prompt_w, chosen), (prompt_l, rejected) in pairs:
        g_w = _grad(sequence_logp(model, prompt_w, chosen), chosen_params)
        g_l = _grad(sequence_logp(model, prompt_l, rejected), chosen_params)
        inner, w2, l2 = float(g_w @ g_l), float(g_w @ g_w), float(g_l @ g_l)
        rows.append((inner, w2, l2, inner / max(1e-30, (w2 * l2) ** 0.5), inner / max(w2, 1e-30), inner / max(l2, 1e-30)))
    if not rows:
        raise ValueError("entanglement_stats needs at least one pair")
    t = torch.tensor(rows, dtype=torch.float64)
    inner, w2, l2 = t[:, 0], t[:, 1], t[:, 2]
    return {
        "ge/inner": float(inner.mean()),
        "ge/norm_w2": float(w2.mean()),
        "ge/norm_l2": float(l2.mean()),
        "ge/cos": float(t[:, 3].mean()),
        "ge/ratio_w": float(t[:, 4].mean()),
        "ge/ratio_l": float(t[:, 5].mean()),
        "ge/frac_chosen_down": float((inner > w2).double().mean()),
        "ge/frac_rejected_up": float((inner > l2).double().mean()),
    }


def probe_pairs(tokenizer: Any, rows: Iterable[Mapping[str, Any]]) -> list[ProbePair]:
    """``((prompt_ids, chosen_ids), (prompt_ids, rejected_ids))`` of preference rows, each side
    tokenized and split as DPO trains on it (with BPE the split can differ between the sides)."""
    from align.data import tokenize_prompt_completion

    def side(row: Mapping[str, Any], key: str) -> tuple[list[int], list[int]]:
        enc = tokenize_prompt_completion(tokenizer, {"prompt": row["prompt"], "completion": row[key]})
        start = enc["completion_mask"].index(1)
        return enc["input_ids"][:start], enc["input_ids"][start:]

    return [(side(row, "chosen"), side(row, "rejected")) for row in rows]


def sharded_training(state: Any = None) -> str | None:
    """``"FSDP"`` / ``"DeepSpeed ZeRO-3"`` when parameters are sharded across processes, else ``None``."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if state is None:
        if not PartialState._shared_state:
            return None
        state = AcceleratorState()
    kind = getattr(state, "distributed_type", None)
    if kind == DistributedType.FSDP:
        return "FSDP"
    plugin = getattr(state, "deepspeed_plugin", None)
    if kind == DistributedType.DEEPSPEED and getattr(plugin, "zero_stage", 0) == 3:
        return "DeepSpeed ZeRO-3"
    return None


class EntanglementCallback(TrainerCallback):
    """Logs ``ge/*`` (:func:`entanglement_stats`) on a fixed probe batch every ``probe_every`` steps.

    Runs on the main process on the unwrapped model, in eval mode, with ``torch.autograd.grad`` (no
    ``.grad`` is touched and nothing is synchronised across processes). ``params="last_block"``
    restricts the gradients to the last decoder layer; the default uses every trainable parameter
    (only the adapter under LoRA). Entries go to ``trainer.state.log_history`` with their step.

    Example::

        >>> trainer.add_callback(EntanglementCallback(probe_pairs(tok, train_rows[:8]), probe_every=10))  # doctest: +SKIP
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]],
        probe_every: int = 10,
        params: Literal["trainable", "last_block"] = "trainable",
    ) -> None:
        if probe_every < 1 or not pairs:
            raise ValueError("EntanglementCallback needs probe_every >= 1 and at least one probe pair")
        self.pairs, self.every, self.params = list(pairs), probe_every, params

    def _params(self, model: PreTrainedModel) -> list[torch.Tensor]:
        if self.params == "last_block":
            layers = [m for name, m in model.named_modules() if name.endswith("layers")]
            if not layers:
                raise ValueError("params='last_block' needs a model with a `layers` module list")
            return [p for p in layers[-1][-1].parameters() if p.requires_grad]
        return [p for p in model.parameters() if p.requires_grad]

    def on_train_begin(self, args, state, control, **kwargs):
        reason = sharded_training()
        if reason:  # the probe runs on the main process alone: with sharded weights it would hang
            raise ValueError(f"ge_probe_every: the gradient-entanglement probe cannot run under {reason}; "
                             "turn it off (ge_probe_every: 0) or train with DDP")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every or not state.is_world_process_zero:
            return
        was_training = model.training
        model.eval()
        try:
            stats = entanglement_stats(model, self.pairs, self._params(model))
        finally:
            model.train(was_training)
        state.log_history.append({"step": state.global_step, **stats})
