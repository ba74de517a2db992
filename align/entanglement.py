"""Gradient-entanglement diagnostics: will a preference step push the chosen log-prob down?

Yuan et al., "A Common Pitfall of Margin-based Language Model Alignment: Gradient Entanglement",
arXiv:2410.13828 (METHODS §A7). With ``g = ∇θ logp`` (summed log-probs) and ``c = -ℓ'(m)·β·lr > 0``,
one SGD step on a margin loss changes::

    Δlogp_w ≈ c (‖g_w‖² - ⟨g_w, g_l⟩)   → the chosen falls iff ⟨g_w, g_l⟩ > ‖g_w‖²
    Δlogp_l ≈ c (⟨g_w, g_l⟩ - ‖g_l‖²)   → the rejected rises iff ⟨g_w, g_l⟩ > ‖g_l‖²

:func:`entanglement_stats` computes these per pair on a probe batch (per-example gradients in fp32,
optionally on a parameter subset such as the last block or LoRA weights) and returns the ``ge/*``
metrics a trainer callback logs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from transformers import PreTrainedModel


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
    pairs: Iterable[tuple[Sequence[int], Sequence[int], Sequence[int]]],
    params: Iterable[torch.Tensor] | None = None,
) -> dict[str, float]:
    """``ge/*`` metrics over ``(prompt_ids, chosen_ids, rejected_ids)`` pairs.

    ``params`` defaults to every trainable parameter. Returns batch means of ``inner``,
    ``norm_w2``, ``norm_l2``, ``cos``, ``ratio_w = ⟨g_w,g_l⟩/‖g_w‖²``, ``ratio_l = ⟨g_w,g_l⟩/‖g_l‖²``
    and the fractions of pairs predicted to push the chosen down / the rejected up.
    """
    chosen_params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    rows = []
    for prompt, chosen, rejected in pairs:
        g_w = _grad(sequence_logp(model, prompt, chosen), chosen_params)
        g_l = _grad(sequence_logp(model, prompt, rejected), chosen_params)
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
