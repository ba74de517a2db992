"""The math of the preference objectives, as pure functions on per-sequence log-probabilities.

Trainers are plumbing around these (the original DPO reference implementation's shape). Inputs are
summed completion log-probs ``logp(y|x)`` unless stated; rewards are ``β·Δ`` with
``Δ = logp - ref_logp`` for every divergence.

* :func:`dpo_loss` — DPO and f-DPO (Wang et al., "Beyond Reverse KL: Generalizing Direct Preference
  Optimization with Diverse Divergence Constraints", arXiv:2309.16240).
* :func:`sft_nll` and :func:`rpo_loss` — RPO (Liu et al., "Provably Mitigating Overoptimization in
  RLHF: Your SFT Loss is Implicitly an Adversarial Regularizer", arXiv:2405.16436).
* :func:`bco_loss` — BCO (Jung et al., "Binary Classifier Optimization for Large Language Model
  Alignment", arXiv:2404.04656).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Divergence = Literal["reverse_kl", "forward_kl", "js", "alpha"]
NLLReduction = Literal["sum", "seq_mean", "token_mean"]
EXP_CLAMP = {torch.float16: 11.0}  # exponents are clamped: 80 in fp32/bf16, 11 in fp16
DEFAULT_CLAMP = 80.0


def paper_alpha(alpha: float, convention: Literal["paper", "trl"] = "paper") -> float:
    """α in the paper's convention (α→0 reverse KL, α→1 forward KL); TRL's is ``1 - α_paper``."""
    if convention not in ("paper", "trl"):
        raise ValueError(f"alpha_convention must be 'paper' or 'trl', got {convention!r}")
    a = alpha if convention == "paper" else 1.0 - alpha
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1 in the paper's convention, got {a}")
    return a


def f_score(delta: torch.Tensor, divergence: Divergence = "reverse_kl", alpha: float = 0.5) -> torch.Tensor:
    """The per-sequence score ``s(Δ)`` whose difference f-DPO puts in the sigmoid.

    ``reverse_kl``: Δ; ``forward_kl``: -e^(-Δ); ``js``: log σ(Δ); ``alpha`` (paper α): -e^(-αΔ)/α.
    These are f'(e^Δ) with constants dropped; exponents are clamped (80, or 11 in fp16).
    """
    clamp = EXP_CLAMP.get(delta.dtype, DEFAULT_CLAMP)
    if divergence == "reverse_kl":
        return delta
    if divergence == "forward_kl":
        return -torch.exp((-delta).clamp(max=clamp))
    if divergence == "js":
        return F.logsigmoid(delta)
    if divergence == "alpha":
        return -torch.exp((-alpha * delta).clamp(max=clamp)) / alpha
    raise ValueError(f"divergence must be reverse_kl, forward_kl, js or alpha, got {divergence!r}")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    divergence: Divergence = "reverse_kl",
    alpha: float = 0.5,
    alpha_convention: Literal["paper", "trl"] = "paper",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair f-DPO losses and the implicit rewards ``β·Δ`` of chosen and rejected.

    ``L = -log σ(β [s(Δ_w) - s(Δ_l)])``, ``Δ = logp - ref_logp`` (summed log-probs, shape ``[B]``).

    Example:
        >>> loss, rw, rl = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
        >>> round(loss.item(), 6)   # -log σ(0.1 · (1 - (-1)))
        0.598139
    """
    a = paper_alpha(alpha, alpha_convention) if divergence == "alpha" else alpha
    delta_w = policy_chosen - ref_chosen
    delta_l = policy_rejected - ref_rejected
    logits = beta * (f_score(delta_w, divergence, a) - f_score(delta_l, divergence, a))
    return -F.logsigmoid(logits), beta * delta_w.detach(), beta * delta_l.detach()


def sft_nll(token_logps: torch.Tensor, mask: torch.Tensor, reduction: NLLReduction) -> torch.Tensor:
    """Negative log-likelihood of the chosen completions ``[B, T]`` (``mask`` marks completion tokens).

    ``sum``: per-sequence -Σ log π, batch mean. ``seq_mean``: per-sequence token mean, batch mean.
    ``token_mean``: over all chosen tokens of the micro-batch (depends on micro-batching).
    """
    mask = mask.to(token_logps.dtype)
    nll = -(token_logps * mask)
    if reduction == "sum":
        return nll.sum(-1).mean()
    if reduction == "seq_mean":
        return (nll.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if reduction == "token_mean":
        return nll.sum() / mask.sum().clamp(min=1)
    raise ValueError(f"sft_reduction must be sum, seq_mean or token_mean, got {reduction!r}")


def rpo_loss(dpo: torch.Tensor, nll: torch.Tensor, eta: float, beta: float, reduction: NLLReduction) -> torch.Tensor:
    """RPO: ``mean(DPO) + coefficient · NLL``, the coefficient ``η·β`` for ``sum`` (Liu's main
    text) and ``η`` for ``seq_mean`` / ``token_mean`` (Liu App. F, OpenRLHF, TRL)."""
    coefficient = eta * beta if reduction == "sum" else eta
    return dpo.mean() + coefficient * nll


def bco_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    delta: float | torch.Tensor,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BCO losses per example (``nan``-free) and rewards ``r = β(logp - ref_logp)``.

    ``ℓ = -log σ(r - δ)`` for desirable examples and ``-w·log σ(-(r - δ))`` for undesirable ones
    (``w`` from UDM, 1 without it); the batch loss is the mean over examples. δ is detached.
    """
    rewards = beta * (policy_logps - ref_logps)
    shifted = rewards - torch.as_tensor(delta, dtype=rewards.dtype, device=rewards.device).detach()
    w = torch.ones_like(rewards) if weights is None else weights.to(rewards.dtype)
    labels = labels.bool()
    losses = torch.where(labels, -F.logsigmoid(shifted), -w * F.logsigmoid(-shifted))
    return losses, rewards.detach()


# ---- SCoRe (Kumar et al., "Training Language Models to Self-Correct via Reinforcement Learning",
# arXiv:2409.12917). Inputs are per-episode tensors [N]; turn log-probs are summed
# over that turn's generated tokens.

ScoreStage = Literal[1, 2]


def score_turn_rewards(r1: torch.Tensor, r2: torch.Tensor, stage: ScoreStage, alpha: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The rewards SCoRe reinforces each turn with.

    Stage I: ``(0, r2)`` (turn 1 is held by the KL term alone). Stage II: ``(r1, r2 + α(r2 - r1))``:
    the bonus rewards fixing a wrong first attempt and penalises breaking a right one.

    Example:
        >>> t1, t2 = score_turn_rewards(torch.tensor([0., 0., 1., 1.]), torch.tensor([0., 1., 0., 1.]), stage=2)
        >>> t1.tolist(), t2.tolist()
        ([0.0, 0.0, 1.0, 1.0], [0.0, 11.0, -10.0, 1.0])
    """
    if stage == 1:
        return torch.zeros_like(r1), r2
    if stage == 2:
        return r1, r2 + alpha * (r2 - r1)
    raise ValueError(f"stage must be 1 or 2, got {stage!r}")


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence k3 estimate of KL(π‖π_ref): ``Σ_t (e^d - d - 1)`` over ``mask``ed tokens, with
    ``d = ref_logp - logp`` per token (``[N, T]`` in, ``[N]`` out; non-negative, 0 iff equal)."""
    d = (ref_logps - logps).clamp(-20.0, 20.0)  # a token the policy finds far likelier than the reference
    return ((torch.exp(d) - d - 1.0) * mask.to(logps.dtype)).sum(-1)


def leave_one_out(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO advantages for ``[P, G]`` rewards (G samples per problem): each minus the mean of the
    other G - 1 (G = 1: the reward itself)."""
    g = rewards.shape[-1]
    if g == 1:
        return rewards
    return rewards - (rewards.sum(-1, keepdim=True) - rewards) / (g - 1)


def score_loss(
    logp1: torch.Tensor,
    logp2: torch.Tensor,
    kl1: torch.Tensor,
    kl2: torch.Tensor,
    adv1: torch.Tensor,
    adv2: torch.Tensor,
    stage: ScoreStage,
    beta1: float = 0.01,
    beta2: float = 0.1,
    stage1_turn2_kl: bool = False,
) -> torch.Tensor:
    """REINFORCE with per-turn KL penalties, mean over episodes.

    Stage I: ``-A2·logπ(y2|x2) + β2·KL1`` (``+ β1·KL2`` with ``stage1_turn2_kl``).
    Stage II: ``-A1·logπ(y1|x1) - A2·logπ(y2|x2) + β1·(KL1 + KL2)``. Advantages are constants.
    """
    adv1, adv2 = adv1.detach(), adv2.detach()
    if stage == 1:
        loss = -adv2 * logp2 + beta2 * kl1 + (beta1 * kl2 if stage1_turn2_kl else 0.0)
    elif stage == 2:
        loss = -adv1 * logp1 - adv2 * logp2 + beta1 * (kl1 + kl2)
    else:
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    return loss.mean()
