"""CHES and length-normalised CHES: which preference pairs will make DPO displace the chosen likelihood.

Razin et al., "Unintentional Unalignment: Likelihood Displacement in Direct Preference
Optimization", arXiv:2410.08847. With ``h_k`` the last hidden state (the unembedding
input) at the position that predicts response token ``k`` — the last prompt token through the
penultimate response token, the EOS position dropped::

    S± = Σ_k h(x, y±_<k)
    CHES    = ⟨S+, S-⟩ - ‖S+‖²
    LN-CHES = ⟨S+, S-⟩ / (|y+| |y-|) - ‖S+‖² / |y+|²

Higher scores are riskier. Scores use the initial policy, no gradients, fp32 sums.
``align data ches --config ...`` (:class:`CHESArgs`) writes a scored, optionally filtered dataset.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def ches_from_sums(s_chosen: torch.Tensor, s_rejected: torch.Tensor, n_chosen: int, n_rejected: int) -> tuple[float, float]:
    """``(CHES, LN-CHES)`` from the summed hidden states and response lengths."""
    inner = float(s_chosen @ s_rejected)
    norm2 = float(s_chosen @ s_chosen)
    return inner - norm2, inner / (n_chosen * n_rejected) - norm2 / n_chosen**2


@torch.no_grad()
def hidden_sum(model: PreTrainedModel, prompt_ids: list[int], response_ids: list[int]) -> torch.Tensor:
    """Σ of the last hidden states at the positions predicting each response token (fp32); one
    sequence, no padding: the reference :func:`hidden_sums` is tested against."""
    if not response_ids:
        raise ValueError("empty response")
    ids = torch.tensor([prompt_ids + response_ids], device=next(model.parameters()).device)
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].float()
    first = len(prompt_ids) - 1  # the last prompt token predicts response token 1
    return hidden[first : first + len(response_ids)].sum(0)


@torch.no_grad()
def hidden_sums(model: PreTrainedModel, sequences: list[tuple[list[int], list[int]]], batch_size: int = 16) -> torch.Tensor:
    """:func:`hidden_sum` for many ``(prompt_ids, response_ids)`` at once, ``batch_size`` sequences
    per right-padded forward (padding after a sequence cannot change its causal hidden states)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        width = max(len(p) + len(r) for p, r in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros_like(ids)
        scored = torch.zeros(len(batch), width)  # 1 at the positions predicting response tokens
        for i, (p, r) in enumerate(batch):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            attention[i, : len(p) + len(r)] = 1
            scored[i, len(p) - 1 : len(p) - 1 + len(r)] = 1
        hidden = model(input_ids=ids.to(device), attention_mask=attention.to(device), output_hidden_states=True)
        out.append(torch.einsum("bt,bth->bh", scored.to(device), hidden.hidden_states[-1].float()).cpu())
    return torch.cat(out)


def ches_scores(dataset: Dataset, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 16) -> Dataset:
    """``dataset`` with ``ches`` and ``ln_ches`` columns, scored on exactly the tokens DPO trains on
    (TRL's tokenization: chat template, EOS, the prompt/response split where the tokens diverge).
    Rows with an empty response get ``nan``."""
    from align.data import tokenize_prompt_completion

    model.eval()
    sides = []  # per row: ((prompt, chosen response), (prompt, rejected response)), each split as TRL splits it
    for row in dataset:
        pair = []
        for key in ("chosen", "rejected"):
            enc = tokenize_prompt_completion(tokenizer, {"prompt": row["prompt"], "completion": row[key]})
            start = enc["completion_mask"].index(1) if 1 in enc["completion_mask"] else len(enc["input_ids"])
            pair.append((enc["input_ids"][:start], enc["input_ids"][start:]))
        sides.append(pair)
    valid = [i for i, (c, r) in enumerate(sides) if c[1] and r[1]]
    sums = hidden_sums(model, [side for i in valid for side in sides[i]], batch_size)
    ches, ln = [float("nan")] * len(sides), [float("nan")] * len(sides)
    for j, i in enumerate(valid):
        ches[i], ln[i] = ches_from_sums(sums[2 * j], sums[2 * j + 1], len(sides[i][0][1]), len(sides[i][1][1]))
    return dataset.add_column("ches", ches).add_column("ln_ches", ln)


def filter_by_ches(
    dataset: Dataset,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    keep_fraction: float | None = None,
    drop_top_fraction: float | None = None,
    normalized: bool = True,
) -> Dataset:
    """Keep the pairs with the lowest (LN-)CHES: ``keep_fraction`` of them, or all but the top
    ``drop_top_fraction``. Rows keep their order and gain ``ches``/``ln_ches`` columns; rows with
    an empty response are dropped.

    Example::

        >>> safer = filter_by_ches(pairs, tb.model("small-instruct"), tok, keep_fraction=0.5)  # doctest: +SKIP
    """
    if (keep_fraction is None) == (drop_top_fraction is None):
        raise ValueError("give exactly one of keep_fraction and drop_top_fraction")
    fraction = keep_fraction if keep_fraction is not None else 1.0 - drop_top_fraction
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the kept fraction must be in [0, 1], got {fraction}")
    scored = ches_scores(dataset, model, tokenizer)
    column = scored["ln_ches" if normalized else "ches"]
    valid = [i for i, s in enumerate(column) if s == s]
    keep = sorted(sorted(valid, key=lambda i: column[i])[: round(fraction * len(valid))])
    return scored.select(keep)


@dataclass
class CHESArgs:
    model: str = field(
        default="testbed:small-instruct", metadata={"help": "the initial policy: hub id, checkpoint directory or testbed:NAME"}
    )
    dataset: str = field(
        default="testbed:preference", metadata={"help": "preference data: hub id, directory, file or testbed:preference"}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "the dataset's configuration name"})
    dataset_train_split: str = field(default="train", metadata={"help": "split to score"})
    n_train: int = field(default=512, metadata={"help": "testbed:preference: pairs"})
    out: str = field(default="runs/data/ches.jsonl", metadata={"help": "scored pairs: a .jsonl file, or a directory (save_to_disk)"})
    keep_fraction: float | None = field(default=None, metadata={"help": "write only the lowest-scored fraction"})
    drop_top_fraction: float | None = field(default=None, metadata={"help": "write all but the highest-scored fraction"})
    normalized: bool = field(default=True, metadata={"help": "rank by LN-CHES (true) or CHES"})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={"help": "model dtype"})
    device: str | None = field(default=None, metadata={"help": "cuda, cpu, ... (default: cuda when available)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run code shipped with a hub checkpoint"})
    profile: str = field(default="full", metadata={"help": "testbed profile for testbed:NAME"})
    seed: int = field(default=0, metadata={"help": "testbed seed (and testbed dataset seed)"})
    cache_dir: str | None = field(default=None, metadata={"help": "testbed cache directory"})

    def __post_init__(self) -> None:
        from align.config import ConfigError

        if self.keep_fraction is not None and self.drop_top_fraction is not None:
            raise ConfigError("give at most one of keep_fraction and drop_top_fraction")
        for key in ("keep_fraction", "drop_top_fraction"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key} must be in [0, 1], got {value}")
        if self.n_train < 1 or self.batch_size < 1:
            raise ConfigError(f"n_train and batch_size must be >= 1, got {self.n_train}, {self.batch_size}")


def run_ches(args: CHESArgs) -> tuple[Path, dict[str, Any]]:
    """``align data ches``: score (and optionally filter) a preference dataset, write it atomically."""
    from align.data import load_split, select_valid_preferences
    from align.models import default_device, load_causal_lm, load_tokenizer, resolve_model
    from align.testbed.datasets import preference_pairs
    from rewards.io import atomic_write_jsonl

    testbed = {"testbed:preference": lambda: preference_pairs(args.n_train, 8, args.seed, True)}
    loaded = load_split(args.dataset, args.dataset_train_split, args.dataset_config, testbed)
    dataset, same = select_valid_preferences(loaded)
    path = resolve_model(args.model, args.profile, args.seed, args.cache_dir)
    tok = load_tokenizer(path, args.trust_remote_code)
    model = load_causal_lm(path, args.dtype, args.device or default_device(), trust_remote_code=args.trust_remote_code)
    if args.keep_fraction is None and args.drop_top_fraction is None:
        scored = ches_scores(dataset, model, tok, args.batch_size)
    else:
        scored = filter_by_ches(dataset, model, tok, args.keep_fraction, args.drop_top_fraction, args.normalized)
    column = torch.tensor(scored["ln_ches" if args.normalized else "ches"], dtype=torch.float64)
    column = column[~column.isnan()]
    quantiles = torch.quantile(column, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)).tolist() if len(column) else []
    summary = {"pairs_in": len(loaded), "dropped_identical": same, "pairs_out": len(scored),
               "score": "ln_ches" if args.normalized else "ches", "quantiles_0_25_50_75_100": quantiles}
    out = Path(args.out)
    if out.suffix == ".jsonl":
        atomic_write_jsonl(out, scored.to_list())
    else:
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        scored.save_to_disk(str(tmp))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out, summary
