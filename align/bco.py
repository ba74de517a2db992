"""BCO's reward shift δ (METHODS §A3): the running mean of every training reward.

Jung et al., arXiv:2404.04656. δ is the cumulative, count-weighted mean of all rewards seen in
training (both labels), updated with the current batch before it is used, summed across processes,
starting at 0 and saved with checkpoints. It leans towards the majority label, so
``mode="balanced"`` offers ``½(mean₊ + mean₋)``. Evaluation must not call :meth:`update`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch


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
