"""A reward ensemble: members behind one interface, per-member standardisation, one aggregation.

Members are anything that maps ``(prompts, completions)`` to one score per row: a Hugging Face
sequence-classification reward model (:class:`HFRewardModel`, one forward per batch), or a plain
function (:class:`FunctionReward`: the testbed verifier, a rule, a length penalty). Standardisation
``z_i = (r_i - μ_i) / σ_i`` is fitted on a calibration set and frozen, so members on different
scales mix fairly. Scoring returns the aggregate, the per-member scores and their
spread.

Example::

    >>> ens = load_ensemble("runs/train/reward")                        # doctest: +SKIP
    >>> ens.fit_standardization(calib_prompts, calib_completions)       # doctest: +SKIP
    >>> ens.score(prompts, completions, aggregation="uwo").aggregate    # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .aggregation import Aggregation, aggregate, check_scores, spread

Text = str | list[dict[str, str]]  # plain text, or chat messages
MANIFEST = "ensemble.json"


class RewardMember(Protocol):
    name: str

    def __call__(self, prompts: Sequence[Text], completions: Sequence[Text]) -> torch.Tensor: ...


def conversation(prompt: Text, completion: Text) -> Text:
    """prompt + completion as TRL's reward trainer joins them (messages, or text)."""
    if isinstance(prompt, str) != isinstance(completion, str):
        raise ValueError("prompt and completion must both be text or both be chat messages")
    return prompt + completion


def as_chat(prompt: Text, completion: Text) -> tuple[Text, Text]:
    """Text as one user turn and one assistant turn (messages pass through): how a member trained
    on conversational pairs must see a plain prompt, or it scores a format it never saw.

    Example:
        >>> as_chat("2+3=", "5")
        ([{'role': 'user', 'content': '2+3='}], [{'role': 'assistant', 'content': '5'}])
    """
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    return prompt, completion


class HFRewardModel:
    """A sequence-classification reward model (``num_labels=1``), scoring what TRL's
    ``RewardTrainer`` trains on: the chat-templated conversation, or text + EOS; right padding.
    With ``chat`` (a member trained on conversational pairs), text becomes a user and an assistant turn."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "reward", batch_size: int = 64, chat: bool = False) -> None:
        if getattr(model.config, "num_labels", None) != 1:
            raise ValueError(f"{name}: a reward model needs num_labels=1, got {model.config.num_labels}")
        self.model, self.tokenizer, self.name, self.batch_size, self.chat = model.eval(), tokenizer, name, batch_size, chat
        self.device = next(model.parameters()).device

    def encode(self, prompt: Text, completion: Text) -> list[int]:
        joined = conversation(*as_chat(prompt, completion)) if self.chat else conversation(prompt, completion)
        if isinstance(joined, str):
            eos = self.tokenizer.eos_token
            return self.tokenizer(joined if joined.endswith(eos) else joined + eos)["input_ids"]
        return list(self.tokenizer.apply_chat_template(joined)["input_ids"])

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Text], completions: Sequence[Text]) -> torch.Tensor:
        ids = [self.encode(p, c) for p, c in zip(prompts, completions)]
        pad = self.tokenizer.pad_token_id
        out = []
        for start in range(0, len(ids), self.batch_size):
            batch = ids[start : start + self.batch_size]
            width = max(map(len, batch))
            input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in batch], device=self.device)
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch], device=self.device)
            out.append(self.model(input_ids=input_ids, attention_mask=mask).logits[:, 0].double().cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


class LikelihoodReward:
    """A causal LM read as a reward, from its log-likelihood of the completion's tokens::

        r(x, y) = β · Σ_t [log π(y_t | x, y_<t) - log π_ref(y_t | x, y_<t)]

    With ``reference``, the implicit reward of a DPO-trained policy (Rafailov et al. 2023,
    arXiv:2305.18290 §5; how RewardBench scores DPO models): ``align train reward`` with
    ``kind: implicit`` trains such members. Without it, ``β · log π(y | x)``: the model's own
    likelihood as a verifier. A shallow backbone can hold what it knows about an answer in its
    next-token predictions and nowhere else; this member reads it there, where a classifier head
    on the last position cannot.

    The completion's tokens are those TRL's ``DPOTrainer`` trains on: the chat-templated
    conversation after the templated prompt (with its generation prompt), or ``prompt + completion``
    (+ EOS) after the tokenised prompt; the completion starts where the two first differ. With
    ``chat`` (a member trained on conversational pairs), text becomes a user and an assistant turn.

    Example::

        >>> member = LikelihoodReward(policy, tok, reference=sft, beta=0.1, name="dpo")      # doctest: +SKIP
        >>> member([[{"role": "user", "content": "2+3="}]], [[{"role": "assistant", "content": "5"}]])  # doctest: +SKIP
        tensor([0.4173], dtype=torch.float64)
    """

    def __init__(self, model: Any, tokenizer: Any, reference: Any = None, beta: float = 1.0, name: str = "likelihood",
                 batch_size: int = 64, chat: bool = False) -> None:
        if not beta > 0:
            raise ValueError(f"{name}: beta must be > 0, got {beta}")
        self.model, self.reference = model.eval(), (reference.eval() if reference is not None else None)
        self.tokenizer, self.beta, self.name, self.batch_size, self.chat = tokenizer, beta, name, batch_size, chat
        self.device = next(model.parameters()).device

    def encode(self, prompt: Text, completion: Text) -> tuple[list[int], int]:
        """The conversation's ids and where the completion starts."""
        tok = self.tokenizer
        if self.chat:
            prompt, completion = as_chat(prompt, completion)
        joined = conversation(prompt, completion)
        if isinstance(joined, str):
            eos = tok.eos_token
            prompt_ids = tok(prompt)["input_ids"]
            ids = tok(joined if joined.endswith(eos) else joined + eos)["input_ids"]
        else:
            prompt_ids = list(tok.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"])
            ids = list(tok.apply_chat_template(joined)["input_ids"])
        start = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids)) if a != b), min(len(prompt_ids), len(ids)))
        if start >= len(ids):
            raise ValueError(f"{self.name}: a completion adds no tokens to its prompt: {completion!r}")
        return ids, start

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Text], completions: Sequence[Text]) -> torch.Tensor:
        rows = [self.encode(p, c) for p, c in zip(prompts, completions)]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = []
        for begin in range(0, len(rows), self.batch_size):
            batch = rows[begin : begin + self.batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=self.device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=self.device)
            # scored[i, t]: token t + 1 is the completion's
            scored = torch.tensor([[start - 1 <= t < len(ids) - 1 for t in range(width - 1)] for ids, start in batch],
                                  device=self.device)
            total = _sequence_logprob(self.model, input_ids, mask, scored)
            if self.reference is not None:
                total = total - _sequence_logprob(self.reference, input_ids, mask, scored)
            out.append(self.beta * total.cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _sequence_logprob(model: Any, input_ids: torch.Tensor, mask: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """``Σ log π(token t+1 | tokens <= t)`` over the ``scored`` positions, per row (fp64)."""
    logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, :-1].double()
    token = logits.gather(-1, input_ids[:, 1:, None])[..., 0] - logits.logsumexp(-1)
    return (token * scored).sum(1)


def pairwise_accuracy(reward: Callable[[Sequence[Text], Sequence[Text]], torch.Tensor], prompts: Sequence[Text],
                      chosen: Sequence[Text], rejected: Sequence[Text]) -> float:
    """The share of pairs whose chosen completion ``reward`` scores above the rejected one (a tie
    counts half): 0.5 is chance.

    Example:
        >>> length = FunctionReward(lambda p, c: len(c), "length")
        >>> pairwise_accuracy(length, ["q", "q", "q"], ["aa", "a", "b"], ["a", "aa", "c"])
        0.5
    """
    if not (len(prompts) == len(chosen) == len(rejected)) or not prompts:
        raise ValueError(f"pairwise_accuracy needs as many chosen and rejected as prompts (>= 1), got "
                         f"{len(prompts)}, {len(chosen)}, {len(rejected)}")
    both = reward(list(prompts) * 2, list(chosen) + list(rejected)).double()
    a, b = both[: len(prompts)], both[len(prompts) :]
    return float(((a > b).double() + 0.5 * (a == b).double()).mean())


@dataclass
class FunctionReward:
    """A plain function ``(prompt, completion) -> float`` as a member (applied row by row)."""

    fn: Callable[[Text, Text], float]
    name: str = "function"

    def __call__(self, prompts: Sequence[Text], completions: Sequence[Text]) -> torch.Tensor:
        return torch.tensor([float(self.fn(p, c)) for p, c in zip(prompts, completions)], dtype=torch.float64)


@dataclass
class EnsembleScores:
    aggregate: torch.Tensor  # [B]
    members: torch.Tensor  # [k, B], standardised when the ensemble is
    spread: torch.Tensor  # [B], std across members (ddof of the ensemble)


class RewardEnsemble:
    """Members, optional frozen standardisation, and a default aggregation (see :mod:`rewards.aggregation`).

    Args:
        members: reward members (at least one); names must be unique.
        aggregation, lam, ddof, k_s: the default aggregation and its parameters.
    """

    def __init__(
        self,
        members: Sequence[RewardMember],
        aggregation: Aggregation = "mean",
        lam: float = 0.5,
        ddof: int = 0,
        k_s: float = 1.0,
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        self.members, self.aggregation, self.lam, self.ddof, self.k_s = list(members), aggregation, lam, ddof, k_s
        self.mu: torch.Tensor | None = None  # [k]
        self.sigma: torch.Tensor | None = None
        aggregate(torch.zeros(len(members), 1), aggregation, lam, ddof, k_s)  # reject bad settings now

    def raw(self, prompts: Sequence[Text], completions: Sequence[Text]) -> torch.Tensor:
        """Unstandardised member scores ``[k, B]`` (one batched pass per member)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        rows = []
        for member in self.members:
            scores = member(prompts, completions)
            if scores.shape != (len(prompts),):
                raise ValueError(f"member {member.name!r} returned shape {tuple(scores.shape)} for {len(prompts)} rows")
            rows.append(scores.double())
        return check_scores(torch.stack(rows)) if prompts else torch.zeros(len(self.members), 0, dtype=torch.float64)

    def fit_standardization(self, prompts: Sequence[Text], completions: Sequence[Text]) -> None:
        """Freeze each member's mean and std on a calibration set (e.g. reference-policy samples)."""
        scores = self.raw(prompts, completions)
        if scores.shape[1] < 2:
            raise ValueError("standardisation needs at least 2 calibration rows")
        self.mu, self.sigma = scores.mean(1), scores.std(1).clamp(min=1e-8)

    def score(
        self,
        prompts: Sequence[Text],
        completions: Sequence[Text],
        aggregation: Aggregation | None = None,
    ) -> EnsembleScores:
        members = self.raw(prompts, completions)
        if self.mu is not None:
            members = (members - self.mu[:, None]) / self.sigma[:, None]
        agg = aggregate(members, aggregation or self.aggregation, self.lam, self.ddof, self.k_s)
        return EnsembleScores(agg, members, spread(members, self.ddof))

    def __call__(self, prompts: Sequence[Text], completions: Sequence[Text]) -> torch.Tensor:
        return self.score(prompts, completions).aggregate

    def save_standardization(self, path: str | Path) -> None:
        from .io import atomic_write_text

        if self.mu is None:
            raise ValueError("fit_standardization first")
        stats = {m.name: [float(a), float(b)] for m, a, b in zip(self.members, self.mu, self.sigma)}
        atomic_write_text(path, json.dumps(stats, indent=2))

    def load_standardization(self, path: str | Path) -> None:
        stats = json.loads(Path(path).read_text())
        missing = [m.name for m in self.members if m.name not in stats]
        if missing:
            raise ValueError(f"{path} has no standardisation for members {missing}")
        self.mu = torch.tensor([stats[m.name][0] for m in self.members], dtype=torch.float64)
        self.sigma = torch.tensor([stats[m.name][1] for m in self.members], dtype=torch.float64)


def load_ensemble(path: str | Path, device: str = "cpu", **kwargs: Any) -> RewardEnsemble:
    """The ensemble ``align train reward`` saved: ``path/ensemble.json`` names the member directories
    (safetensors; ``trust_remote_code=False``): sequence classifiers (:class:`HFRewardModel`), or
    with ``kind: implicit`` DPO-trained policies read against their reference
    (:class:`LikelihoodReward`). ``kwargs`` go to :class:`RewardEnsemble`."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} is not a reward ensemble: {MANIFEST} is missing")
    manifest = json.loads(manifest_path.read_text())
    members: list[RewardMember] = []
    references: dict[str, Any] = {}  # members of one base share one reference copy
    chat = bool(manifest.get("conversational", False))  # trained on messages: text is scored as one chat turn each
    for member in manifest["members"]:
        member_dir = path / member["dir"]
        tok = AutoTokenizer.from_pretrained(member_dir)
        if member.get("kind", "classifier") == "implicit":
            model = AutoModelForCausalLM.from_pretrained(member_dir, trust_remote_code=False).to(device)
            ref = member["reference"]
            if ref not in references:
                references[ref] = AutoModelForCausalLM.from_pretrained(ref, trust_remote_code=False).to(device)
            members.append(LikelihoodReward(model, tok, references[ref], member["beta"], member["dir"], chat=chat))
            continue
        # num_labels=1 also for a LoRA member, whose directory holds an adapter on the base checkpoint
        model = AutoModelForSequenceClassification.from_pretrained(member_dir, num_labels=1, trust_remote_code=False).to(device)
        members.append(HFRewardModel(model, tok, member["dir"], chat=chat))
    return RewardEnsemble(members, **kwargs)
