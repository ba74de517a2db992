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
    "dpo_loss": "align.losses",
    "rpo_loss": "align.losses",
    "sft_nll": "align.losses",
    "bco_loss": "align.losses",
    "RewardShift": "align.bco",
    "BCOArgs": "align.bco",
    "BCOTrainer": "align.bco",
    "train_bco": "align.bco",
    "DPOArgs": "align.dpo",
    "train_dpo": "align.dpo",
    "UDM": "align.udm",
    "minilm_embedder": "align.udm",
    "ches_scores": "align.ches",
    "filter_by_ches": "align.ches",
    "entanglement_stats": "align.entanglement",
    "Testbed": "align.testbed",
    "build_testbed": "align.testbed",
    "load_testbed": "align.testbed",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'align' has no attribute {name!r}")
