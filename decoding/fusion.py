"""Multi-model fusion served as one model: the spec and directory of an EFT or DLF *composite*.

vLLM serves one model, and its logits processors see that model's logits only, so EFT up-scaling
(arXiv:2310.12962) and dynamic logits fusion (arXiv:2406.15480, §D2) cannot run as
processors there. A composite is a model directory whose ``config.json`` names the member
checkpoints and the fusion rule; :mod:`decoding.vllm_fusion` builds every member with vLLM's own
model class (its own attention layers and KV cache), runs all of them on the same tokens and fuses
their log-probabilities with :func:`fuse_logprobs`, the same pure functions the transformers
processors call (:func:`decoding.eft_logprobs`, :func:`decoding.dlf_select`). vLLM's sampler,
continuous batching, prefix caching, ``SamplingParams`` and ``n`` then apply to the fused
distribution.

This module needs no vLLM: it writes and reads the directory (config + tokenizer + an empty weight
file; no weights are copied) and holds the fusion rule.

Example::

    >>> spec = FusionSpec("eft", large="/ckpt/large-base", tuned=["/ckpt/small-instruct"],
    ...                   reference="/ckpt/small-base")
    >>> list(spec.members())
    ['large', 'tuned_a', 'reference']
    >>> write_fusion(spec, "runs/eft-composite")                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .dlf import DEFAULT_GRID, dlf_select
from .eft import check_weights, eft_logprobs, top_p_mask

ARCHITECTURE = "AlignkitFusionForCausalLM"
CONFIG_KEY = "alignkit_fusion"


@dataclass
class FusionSpec:
    """What a composite fuses. ``eft``: ``large + Σ w_i (tuned_i - reference)`` (reference ``None``:
    the large model's own log-probs); ``dlf``: ``large`` with
    the per-step α from ``small_base`` and ``experts``. Paths are checkpoint directories;
    ``vocab_size`` is the shared tokenizer's length (logits beyond it are padding)."""

    method: Literal["eft", "dlf"]
    large: str
    tuned: list[str] = field(default_factory=list)
    reference: str | None = None
    weights: list[float] = field(default_factory=list)
    upscale_top_p: float | None = None
    small_base: str | None = None
    experts: list[str] = field(default_factory=list)
    grid: list[float] = field(default_factory=lambda: list(DEFAULT_GRID))
    vocab_size: int | None = None  # set by write_fusion

    def __post_init__(self) -> None:
        if self.method == "eft":
            if not self.tuned:
                raise ValueError("eft fusion needs at least one tuned model")
            self.weights = check_weights(self.weights or [1.0] * len(self.tuned), len(self.tuned))
            if self.upscale_top_p is not None and not 0.0 < self.upscale_top_p <= 1.0:
                raise ValueError(f"upscale_top_p must be in (0, 1], got {self.upscale_top_p}")
        elif self.method == "dlf":
            if not self.small_base or not self.experts:
                raise ValueError("dlf fusion needs small_base and at least one expert")
            if not self.grid or not all(math.isfinite(g) for g in self.grid):
                raise ValueError(f"grid must be non-empty and finite, got {self.grid}")
        else:
            raise ValueError(f"method must be 'eft' or 'dlf', got {self.method!r}")
        if len(self.tuned) > 26 or len(self.experts) > 26:
            raise ValueError("at most 26 tuned models or experts")

    def members(self) -> dict[str, str]:
        """Member name -> checkpoint, in a fixed order. Names hold no digits: vLLM reads a layer's
        index as the one integer in its parameter name."""
        names = {"large": self.large}
        letters = string.ascii_lowercase
        if self.method == "eft":
            names |= {f"tuned_{letters[i]}": p for i, p in enumerate(self.tuned)}
            if self.reference:
                names["reference"] = self.reference
        else:
            names["small_base"] = self.small_base
            names |= {f"expert_{letters[i]}": p for i, p in enumerate(self.experts)}
        return names

    @classmethod
    def from_config(cls, config: Any) -> "FusionSpec":
        """The spec in a composite's config (a ``PretrainedConfig`` or the ``config.json`` dict)."""
        raw = config.get(CONFIG_KEY) if isinstance(config, Mapping) else getattr(config, CONFIG_KEY, None)
        if raw is None:
            raise ValueError(f"not an alignkit fusion config: no {CONFIG_KEY!r} key")
        return cls(**raw)


def fuse_logprobs(spec: FusionSpec, logprobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The fused next-token log-probabilities ``[T, vocab_size]`` from each member's log-probs
    (``logprobs[name]``, over the shared vocabulary), by the rule the transformers processors use:
    :class:`~decoding.EFTLogitsProcessor` and :class:`~decoding.DLFLogitsProcessor`.

    Example:
        >>> spec = FusionSpec("eft", large="L", tuned=["T"], reference="R", vocab_size=3)
        >>> lp = {k: torch.log_softmax(torch.tensor([v]), -1) for k, v in
        ...       {"large": [0., 0., 0.], "tuned_a": [2., 0., 0.], "reference": [0., 0., 0.]}.items()}
        >>> fuse_logprobs(spec, lp).exp().round(decimals=3)
        tensor([[0.7870, 0.1070, 0.1070]])
    """
    large = logprobs["large"]
    if spec.method == "eft":
        tuned = [logprobs[f"tuned_{string.ascii_lowercase[i]}"] for i in range(len(spec.tuned))]
        reference = logprobs["reference"] if spec.reference else large
        mask = None if spec.upscale_top_p is None else top_p_mask(tuned[0], spec.upscale_top_p)
        return eft_logprobs(large, tuned, reference, spec.weights, mask)
    experts = [logprobs[f"expert_{string.ascii_lowercase[i]}"] for i in range(len(spec.experts))]
    grid = torch.tensor(spec.grid, device=large.device)
    return dlf_select(large, logprobs["small_base"], experts, grid)[0]


def fuse_logits(spec: FusionSpec, logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The fused log-probabilities ``[T, W]`` (fp32) straight from each member's raw logits
    ``[T, W]`` (any dtype, ``W >= vocab_size``; ids from ``vocab_size`` on are padding and come
    back ``-inf``): what :func:`fuse_logprobs` gives on the members' log-probs, in fewer passes.

    Plain EFT needs no member's normaliser: ``log_softmax(z_L + Σ w_i (z_i - z_R))`` equals
    ``log_softmax(log p_L + Σ w_i (log p_i - log p_R))`` because each ``logsumexp`` is a constant
    per row, so the sum is accumulated in place and normalised once (one ``log_softmax`` instead of
    four at 151,936 ids: the fusion's cost at batch 64 on CPU, see benchmarks/RESULTS.md). The
    output stays normalised: vLLM's repetition penalty reads a logit's sign. ``upscale_top_p`` and
    DLF need the members' own distributions and take the log-prob path.

    Example:
        >>> spec = FusionSpec("eft", large="L", tuned=["T"], reference="R", vocab_size=3)
        >>> z = {"large": torch.tensor([[1., 0., 0., 9.]]), "tuned_a": torch.tensor([[2., 0., 0., 9.]]),
        ...      "reference": torch.tensor([[0., 0., 0., 9.]])}
        >>> fuse_logits(spec, z).exp().round(decimals=3)
        tensor([[0.9090, 0.0450, 0.0450, 0.0000]])
    """
    n = spec.vocab_size
    large = logits["large"]
    out = torch.empty(large.shape, dtype=torch.float32, device=large.device)
    out[:, n:] = float("-inf")  # padding ids: exp(-inf) = 0 keeps them out of the normaliser too
    if spec.method == "eft" and spec.upscale_top_p is None:
        fused = out[:, :n]
        reference = logits["reference"][:, :n] if spec.reference else large[:, :n]
        fused.copy_(large[:, :n])
        for i, w in enumerate(spec.weights):  # in place, promoted to fp32 op by op
            tuned = logits[f"tuned_{string.ascii_lowercase[i]}"][:, :n]
            fused.add_(tuned, alpha=w).sub_(reference, alpha=w)
        return torch.log_softmax(out, dim=-1)
    out[:, :n] = fuse_logprobs(spec, {k: torch.log_softmax(v[:, :n], dim=-1, dtype=torch.float32) for k, v in logits.items()})
    return out


def write_fusion(spec: FusionSpec, out: str | Path) -> Path:
    """Write the composite's directory ``out``: the large member's ``config.json`` with the
    composite's architecture and ``spec``, the shared tokenizer, and an empty ``model.safetensors``
    (vLLM's loader wants a weight file; each member's weights load from its own directory).

    A :class:`ValueError` names the member when the members do not share a tokenizer or a member
    has no safetensors weights, before anything is written."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer

    from .auxiliary import check_same_vocab

    members = {name: str(Path(p).resolve()) for name, p in spec.members().items()}
    for name, path in members.items():
        if not any(Path(path).glob("*.safetensors")):
            raise ValueError(f"fusion member {name} ({path}): no *.safetensors weights (a composite loads each member's own files)")
    tokenizers = {f"{name} ({path})": AutoTokenizer.from_pretrained(path) for name, path in members.items()}
    vocab = check_same_vocab(tokenizers)
    resolved = FusionSpec(**{**asdict(spec), "vocab_size": vocab, "large": members["large"],
                             "tuned": [str(Path(p).resolve()) for p in spec.tuned],
                             "reference": members.get("reference"), "small_base": members.get("small_base"),
                             "experts": [str(Path(p).resolve()) for p in spec.experts]})
    config = AutoConfig.from_pretrained(members["large"]).to_dict()
    config.update(architectures=[ARCHITECTURE], **{CONFIG_KEY: asdict(resolved)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    next(iter(tokenizers.values())).save_pretrained(out)
    save_file({}, str(out / "model.safetensors"))
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / "config.json")  # last: a directory with a config is complete
    return out


def member_weights(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor in ``path``'s safetensors files."""
    from safetensors import safe_open

    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
