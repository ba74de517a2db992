"""EFT and dynamic logits fusion inside vLLM: a composite model of several checkpoints.

Mitchell et al., arXiv:2310.12962 (EFT up-scaling) and Fan et al., arXiv:2406.15480 (DLF), §I.2. A vLLM logits processor sees one model's logits, under either model
runner, so fusion lives in a *model*: :class:`FusionForCausalLM` builds each member of a composite
directory (:func:`decoding.fusion.write_fusion`) with vLLM's own class for that checkpoint, under
its own digit-free prefix, so each member has its own attention layers and KV cache and tensor
parallelism shards it as usual. ``forward`` runs every member on the same token ids and positions
and returns their hidden states side by side; ``compute_logits`` splits them, computes each member's
logits and fuses them over the shared vocabulary with :func:`decoding.fusion.fuse_logits` (the
rule of :func:`decoding.fusion.fuse_logprobs`). The fused log-probabilities are the logits vLLM samples from,
so temperature, top-k/p, seeds, ``n``, continuous batching and prefix caching apply to the fused
distribution. Model Runner V1 and V2 call a model the same way, so nothing depends on the runner.

Registration: the ``vllm.general_plugins`` entry point ``alignkit_fusion`` calls :func:`register` in
every vLLM process, so ``LLM(model=composite_dir)`` (or ``vllm serve composite_dir``) just works::

    >>> from vllm import LLM, SamplingParams                              # doctest: +SKIP
    >>> llm = LLM(model="runs/eft-composite", kv_cache_memory_bytes=2**30)  # doctest: +SKIP
    >>> llm.generate(["37+485="], SamplingParams(temperature=0, max_tokens=8))  # doctest: +SKIP

Limits: members read one token stream (one prompt per request, not a prompt per model); fusion
weights are fixed per composite (``compute_logits`` sees no per-request data); members share the
tokenizer and vLLM's block size; the KV cache per token is the members' sum.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import AutoConfig

from .fusion import ARCHITECTURE, FusionSpec, fuse_logits, member_weights


def register() -> None:
    """Make the composite's architecture known to vLLM (the ``vllm.general_plugins`` entry point;
    safe to call again)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "decoding.vllm_fusion:FusionForCausalLM")


class FusionForCausalLM(nn.Module):
    """vLLM model class of a composite directory: members built by vLLM, log-probs fused per step."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.models import ModelRegistry
        from vllm.model_executor.models.utils import maybe_prefix

        super().__init__()
        self.spec = FusionSpec.from_config(vllm_config.model_config.hf_config)
        self.members = nn.ModuleDict()
        self.paths: dict[str, str] = {}
        self.hidden_sizes: list[int] = []
        trust = vllm_config.model_config.trust_remote_code
        for name, path in self.spec.members().items():
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
            # each member builds under its own config (its layers read their shapes from the
            # current config) and compiles under its own cache key
            member_config = vllm_config.with_hf_config(config)
            with set_current_vllm_config(member_config):
                cls, _ = ModelRegistry.resolve_model_cls(config.architectures, member_config.model_config)
                self.members[name] = cls(vllm_config=member_config, prefix=maybe_prefix(prefix, f"members.{name}"))
            self.paths[name] = path
            self.hidden_sizes.append(config.get_text_config().hidden_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("a fusion composite reads token ids, not embeddings: each member embeds them itself")

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        # the runner picks logit rows out of one [tokens, features] tensor: members side by side
        return torch.cat([member(input_ids, positions) for member in self.members.values()], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        parts = hidden_states.split(self.hidden_sizes, dim=-1)
        logits = {name: member.compute_logits(h) for (name, member), h in zip(self.members.items(), parts)}
        if any(v is None for v in logits.values()):  # not the tensor-parallel rank that samples
            return None
        return fuse_logits(self.spec, logits)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Each member loads its own checkpoint (the composite's weight file is empty); returns
        every loaded parameter under its prefixed name, as vLLM's strict check expects."""
        for name, _ in weights:
            raise ValueError(f"a fusion composite holds no weights of its own, got {name!r}")
        loaded: set[str] = set()
        for name, member in self.members.items():
            loaded |= {f"members.{name}.{p}" for p in member.load_weights(member_weights(self.paths[name]))}
        return loaded
