"""CHES and length-normalised CHES: which preference pairs will make DPO displace the chosen likelihood.

Razin et al., "Unintentional Unalignment: Likelihood Displacement in Direct Preference
Optimization", arXiv:2410.08847 (METHODS §A6). With ``h_k`` the last hidden state (the unembedding
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


def _prompt_and_response(row: Mapping[str, Any], key: str, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    prompt, response = row["prompt"], row[key]
    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt)["input_ids"]
        text = response
    else:  # conversational: the training template's prompt, the assistant content as the response
        prompt_ids = list(tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True)["input_ids"])
        text = response[-1]["content"] if not isinstance(response, str) else response
    return prompt_ids, tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def hidden_sum(model: PreTrainedModel, prompt_ids: list[int], response_ids: list[int]) -> torch.Tensor:
    """Σ of the last hidden states at the positions predicting each response token (fp32)."""
    if not response_ids:
        raise ValueError("empty response")
    ids = torch.tensor([prompt_ids + response_ids], device=next(model.parameters()).device)
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].float()
    first = len(prompt_ids) - 1  # the last prompt token predicts response token 1
    return hidden[first : first + len(response_ids)].sum(0)


def ches_scores(dataset: Dataset, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """``dataset`` with ``ches`` and ``ln_ches`` columns (rows with an empty response get ``nan``)."""
    ches, ln = [], []
    model.eval()
    for row in dataset:
        p_c, y_c = _prompt_and_response(row, "chosen", tokenizer)
        p_r, y_r = _prompt_and_response(row, "rejected", tokenizer)
        if not y_c or not y_r:
            ches.append(float("nan"))
            ln.append(float("nan"))
            continue
        c, n = ches_from_sums(hidden_sum(model, p_c, y_c), hidden_sum(model, p_r, y_r), len(y_c), len(y_r))
        ches.append(c)
        ln.append(n)
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
    model: str = field(default="testbed:small-instruct", metadata={"help": "the initial policy: testbed:NAME or a checkpoint dir"})
    dataset: str = field(default="testbed:preference", metadata={"help": "testbed:preference, a .jsonl file or a save_to_disk dir"})
    n_train: int = field(default=512, metadata={"help": "testbed:preference: pairs"})
    out: str = field(default="runs/data/ches.jsonl", metadata={"help": "scored pairs: a .jsonl file, or a directory (save_to_disk)"})
    keep_fraction: float | None = field(default=None, metadata={"help": "write only the lowest-scored fraction"})
    drop_top_fraction: float | None = field(default=None, metadata={"help": "write all but the highest-scored fraction"})
    normalized: bool = field(default=True, metadata={"help": "rank by LN-CHES (true) or CHES"})
    profile: Literal["full", "tiny"] = field(default="full", metadata={"help": "testbed profile for testbed:NAME"})
    seed: int = field(default=0, metadata={"help": "testbed seed (and testbed dataset seed)"})
    cache_dir: str | None = field(default=None, metadata={"help": "testbed cache directory"})

    def __post_init__(self) -> None:
        from .config import ConfigError

        if self.keep_fraction is not None and self.drop_top_fraction is not None:
            raise ConfigError("give at most one of keep_fraction and drop_top_fraction")
        for key in ("keep_fraction", "drop_top_fraction"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key} must be in [0, 1], got {value}")
        if self.n_train < 1:
            raise ConfigError(f"n_train must be >= 1, got {self.n_train}")


def run_ches(args: CHESArgs) -> tuple[Path, dict[str, Any]]:
    """``align data ches``: score (and optionally filter) a preference dataset, write it atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .config import ConfigError
    from .io import atomic_write_jsonl
    from .testbed.datasets import preference_pairs
    from .training import check_preference_rows, load_rows, resolve_model

    rows = load_rows(args.dataset, {"testbed:preference": lambda: preference_pairs(args.n_train, 8, args.seed, True)["train"]})
    keep, same = check_preference_rows(rows)
    if not keep:
        raise ConfigError("no usable preference pairs")
    dataset = Dataset.from_list([dict(rows[i]) for i in keep])
    path = resolve_model(args, args.model)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(path)
    if args.keep_fraction is None and args.drop_top_fraction is None:
        scored = ches_scores(dataset, model, tok)
    else:
        scored = filter_by_ches(dataset, model, tok, args.keep_fraction, args.drop_top_fraction, args.normalized)
    column = torch.tensor(scored["ln_ches" if args.normalized else "ches"], dtype=torch.float64)
    column = column[~column.isnan()]
    quantiles = torch.quantile(column, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)).tolist() if len(column) else []
    summary = {"pairs_in": len(rows), "dropped_identical": same, "pairs_out": len(scored),
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
