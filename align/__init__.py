"""alignkit's training-time half: preference trainers, data diagnostics, the ``align`` CLI and the
offline testbed every method is checked on.

Heavy imports (torch, transformers) are deferred so ``align --help`` answers instantly.

Example:
    >>> from align import build_testbed                                   # doctest: +SKIP
    >>> tb = build_testbed("tiny")                                       # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "align.config",
    "parse_config": "align.config",
    "auroc": "align.metrics",
    "entropy": "align.metrics",
    "dpo_loss": "align.trainers.losses",
    "rpo_loss": "align.trainers.losses",
    "sft_nll": "align.trainers.losses",
    "bco_loss": "align.trainers.losses",
    "RewardShift": "align.trainers.bco",
    "BCOArgs": "align.trainers.bco",
    "BCOTrainer": "align.trainers.bco",
    "train_bco": "align.trainers.bco",
    "DPOArgs": "align.trainers.dpo",
    "train_dpo": "align.trainers.dpo",
    "ScoreArgs": "align.trainers.score",
    "train_score": "align.trainers.score",
    "RefusalArgs": "align.trainers.refusal",
    "train_refusal": "align.trainers.refusal",
    "RefusalSFTTrainer": "align.trainers.refusal",
    "add_control_tokens": "align.trainers.refusal",
    "fit_control_rows": "align.trainers.refusal",
    "probe_control_rows": "align.trainers.refusal",
    "control_token_metrics": "align.trainers.refusal",
    "UDM": "align.diagnostics.udm",
    "minilm_embedder": "align.diagnostics.udm",
    "ches_scores": "align.diagnostics.ches",
    "filter_by_ches": "align.diagnostics.ches",
    "entanglement_stats": "align.diagnostics.entanglement",
    "Testbed": "align.testbed",
    "build_testbed": "align.testbed",
    "load_testbed": "align.testbed",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'align' has no attribute {name!r}")
