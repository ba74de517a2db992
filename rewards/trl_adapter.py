"""An ensemble as a TRL reward function (the GRPO / RLOO calling convention).

TRL calls ``reward_func(prompts=..., completions=..., completion_ids=..., **dataset_columns,
trainer_state=..., log_extra=..., log_metric=...)`` and expects one float per completion;
``__name__`` names the reward in TRL's logs. Prompts and completions are text or chat messages.

Example::

    >>> GRPOTrainer(model, reward_funcs=[TRLRewardFunction(ensemble, "uwo")], ...)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .aggregation import Aggregation


class TRLRewardFunction:
    """Scores with ``ensemble`` (any object with ``score(prompts, completions, aggregation)``) and
    reports ``ens/{mean,std,min}`` through TRL's ``log_metric`` when TRL passes it."""

    def __init__(self, ensemble: Any, aggregation: Aggregation | None = None, name: str = "ensemble") -> None:
        self.ensemble, self.aggregation, self.__name__ = ensemble, aggregation, name

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        scores = self.ensemble.score(list(prompts), list(completions), self.aggregation)
        if log_metric is not None:
            log_metric(f"{self.__name__}/mean", float(scores.members.mean()))
            log_metric(f"{self.__name__}/std", float(scores.spread.mean()))
            log_metric(f"{self.__name__}/min", float(scores.members.min(0).values.mean()))
        return scores.aggregate.tolist()
