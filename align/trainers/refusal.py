"""``align train refusal``: refusal-token SFT on TRL's ``SFTTrainer``.

Jain et al., "Refusal Tokens: A Simple Way to Calibrate Refusals in Large Language Models",
arXiv:2412.06748. Every response is prefixed with a control token: ``[refuse]``
before refusals and ``[respond]`` before everything else, or, with ``categories``, one token per
refusal category (``[ill-posed]``, ...) plus ``[respond]``. The tokens are added as special
tokens; the embedding rows (and an untied output head's) of new ids start at the mean of the
existing rows, and by default (``control_init="probe"``) the control tokens' output rows are then
fitted on the frozen model (:func:`fit_control_rows`, the linear-probe step of LP-FT) before
fine-tuning.

Why (measured, issue #25): a row at the mean of the vocabulary's rows has exactly the mean logit
under every hidden state, so fine-tuning the body can only flatten the first response position
towards ``log p = -log V`` (SmolLM2-135M-Instruct: loss 19.5 there vs 3.3 elsewhere at the start,
log p[refuse] stuck near -10.5, first-token accuracy 0.0 after 20 steps); the row itself moves
about ``lr`` per coordinate per step under Adam (0.047 in L2 after 20 steps at 1e-4); and with
``[refuse]`` and ``[respond]`` at one point the body gets no gradient separating them. The testbed
showed the second half: p[refuse] 0.3-0.4 on every prompt, AUROC 0.65. With the probe: held-out
first-token accuracy 0.998 / AUROC 0.998 (testbed), 0.87 / 0.93 (SmolLM2, 16 steps of 8 rows).
``control_init="mean"`` is the reference recipe; ``control_lr`` gives the rows their own rate.
Loss is on the completion only and includes the control token, so afterwards the
refusal decision is the first response token's probability, which
:class:`decoding.RefusalTokenLogitsProcessor` (transformers and vLLM) thresholds.

Each control token must be exactly one id where the chat template puts it (first completion
token), and after a leading space too; a tokenizer or template that splits it is refused before
training. Under LoRA the embeddings and the untied head are trained in full (``modules_to_save``);
a tied head (Qwen2.5 0.5-3B, Llama-3.2 1B/3B, Gemma, SmolLM2) stays tied to the trained copy
(PEFT's ``ensure_weight_tying``), and the saved adapter loads with its grown vocabulary through
:func:`align.models.load_causal_lm`.

Example config (``configs/refusal-testbed.yaml``)::

    model: testbed:small-instruct
    dataset: testbed:refusal
    categories: [ill-posed, beyond-horizon, forbidden]
"""

from __future__ import annotations

import json
import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from trl import SFTConfig, SFTTrainer

from ..config import ConfigError
from .common import AlignFields, IntervalMeans, finish, first_forward_output, last_checkpoint, load_splits

TOKENS_FILE = "control_tokens.json"


@dataclass
class RefusalArgs(AlignFields, SFTConfig):
    """``trl.SFTConfig`` (every TRL option, TRL's defaults) plus :class:`AlignFields` and the
    control-token options below."""

    dataset: str = field(
        default="testbed:refusal",
        metadata={"help": "rows with messages (or prompt/completion) and a label; hub id, directory, file or testbed:refusal"},
    )
    n_train: int = field(default=2000, metadata={"help": "testbed:refusal: training rows"})
    refuse_token: str = field(default="[refuse]", metadata={"help": "single-token mode: the token before refusals"})
    respond_token: str = field(default="[respond]", metadata={"help": "the token before every other response"})
    categories: list[str] | None = field(
        default=None, metadata={"help": "category mode: refusal categories, each gets the token [<category>]"}
    )
    label_field: str = field(default="label", metadata={"help": "row field saying refuse or respond"})
    refuse_label: str = field(default="refuse", metadata={"help": "the label_field value of refusals (also true / 1)"})
    respond_label: str = field(default="respond", metadata={"help": "the label_field value of other responses (also false / 0)"})
    category_field: str = field(default="category", metadata={"help": "category mode: row field naming the category"})
    control_init: Literal["probe", "name", "mean"] = field(
        default="probe",
        metadata={"help": "start of the new rows: probe = fit the control tokens' output rows on the frozen model's first "
                          "response position first (the linear-probe step of LP-FT), from the mean; name = the mean of the "
                          "rows of the token's name without brackets; mean = the mean of all rows (the reference recipe: its "
                          "logit is the mean logit under every hidden state, so only the row's slow movement can make it win)"},
    )
    probe_rows: int = field(default=512, metadata={"help": "control_init probe: training rows the probe is fitted on"})
    probe_l2: float = field(default=1e-2, metadata={"help": "control_init probe: L2 pull of the rows towards their start"})
    control_lr: float | None = field(
        default=None,
        metadata={"help": "learning rate of the control tokens' rows (input and untied output), on learning_rate's "
                          "schedule; unset = learning_rate (the reference recipe)"},
    )
    warn_after_logs: int = field(
        default=3, metadata={"help": "warn when first_token_accuracy is 0 at this many consecutive training logs (0: never)"}
    )
    output_dir: str = field(default="runs/train/refusal", metadata={"help": "checkpoints and the final model"})

    def __post_init__(self) -> None:
        self.check_align_fields()
        if self.n_train < 1:
            raise ConfigError(f"n_train must be >= 1, got {self.n_train}")
        tokens = list(self.control_tokens().values())
        if any(not t.strip() for t in tokens) or len(set(tokens)) != len(tokens):
            raise ConfigError(f"control tokens must be distinct and non-empty, got {tokens}")
        if self.categories is not None and not self.categories:
            raise ConfigError("categories: give at least one category, or leave it unset for [refuse]/[respond]")
        if self.control_init not in ("probe", "name", "mean"):
            raise ConfigError(f"control_init must be 'probe', 'name' or 'mean', got {self.control_init!r}")
        if self.probe_rows < 1 or not math.isfinite(self.probe_l2) or self.probe_l2 < 0:
            raise ConfigError(f"probe_rows must be >= 1 and probe_l2 a finite number >= 0, got {self.probe_rows}, {self.probe_l2}")
        if self.control_lr is not None and (not math.isfinite(self.control_lr) or self.control_lr <= 0 or self.learning_rate <= 0):
            raise ConfigError(f"control_lr must be a finite number > 0 with learning_rate > 0, got {self.control_lr} "
                              f"(learning_rate {self.learning_rate})")
        if self.warn_after_logs < 0:
            raise ConfigError(f"warn_after_logs must be >= 0, got {self.warn_after_logs}")
        super().__post_init__()

    def control_tokens(self) -> dict[str, str]:
        """``{category or "refuse": token}`` plus ``"respond"``."""
        if self.categories is None:
            return {"refuse": self.refuse_token, "respond": self.respond_token}
        return {**{c: f"[{c}]" for c in self.categories}, "respond": self.respond_token}


def tag_rows(rows: Any, args: RefusalArgs) -> list[dict[str, Any]]:
    """Prompt-completion rows whose completion starts with its control token.

    Rows are conversational (``messages`` ending in the assistant turn) or standard
    (``prompt``/``completion``), with ``label_field`` (and ``category_field`` in category mode).
    Errors name the row and field.
    """
    from ..data import check_text_field

    tokens = args.control_tokens()
    out = []
    for i, row in enumerate(rows):
        label = row.get(args.label_field)
        if label is None:
            raise ConfigError(f"row {i}: field {args.label_field!r} is missing (the refuse/respond label)")
        refuse = parse_label(label, args.refuse_label, args.respond_label)
        if refuse is None:  # never guess: a label read as "respond" by default would train the opposite
            raise ConfigError(f"row {i}: field {args.label_field!r} is {label!r}; expected {args.refuse_label!r} / "
                              f"{args.respond_label!r} (any case), true / false or 1 / 0")
        key = "respond"
        if refuse:
            key = "refuse" if args.categories is None else row.get(args.category_field)
            if key not in tokens or key == "respond":
                raise ConfigError(f"row {i}: unknown category {key!r} in field {args.category_field!r}; "
                                  f"categories: {', '.join(args.categories or [])}")
        if "messages" in row:
            messages = row["messages"]
            if not messages or messages[-1].get("role") != "assistant" or len(messages) < 2:
                raise ConfigError(f"row {i}: field 'messages' must end with the assistant's response after a prompt")
            prompt, reply = messages[:-1], messages[-1]
            check_text_field({"completion": [reply]}, i, "completion")
            completion: Any = [{**reply, "content": f"{tokens[key]} {reply['content']}"}]
        else:
            for name in ("prompt", "completion"):
                check_text_field(row, i, name)
            prompt, completion = row["prompt"], row["completion"]
            if isinstance(completion, str):
                completion = f"{tokens[key]} {completion}"
            else:
                completion = [{**completion[0], "content": f"{tokens[key]} {completion[0]['content']}"}, *completion[1:]]
        out.append({"prompt": prompt, "completion": completion, "control": tokens[key]})
    return out


def parse_label(label: Any, refuse: str = "refuse", respond: str = "respond") -> bool | None:
    """Whether a row's label says refuse (``True``), respond (``False``) or neither (``None``).

    Example:
        >>> [parse_label(x) for x in ("refuse", "Refuse", 1, True, "respond", 0, "maybe", 2)]
        [True, True, True, True, False, False, None, None]
    """
    if isinstance(label, bool):
        return label
    if isinstance(label, int) and label in (0, 1):
        return bool(label)
    if isinstance(label, str):
        key = label.strip().lower()
        return True if key == refuse.lower() else False if key == respond.lower() else None
    return None


def add_control_tokens(tokenizer: Any, model: Any, tokens: Sequence[str], init: str = "name") -> list[int]:
    """Add ``tokens`` as special tokens, grow the embeddings if the new ids do not fit, and start
    every new id's input row (and output row, when the head is untied) at ``init``:

    * ``"name"``: the mean of the rows of the token's name without brackets and with a leading space
      (``" refuse"`` for ``[refuse]``, ``" ill-posed"`` for ``[ill-posed]``), a point the model
      already knows how to reach and different for every token;
    * ``"mean"``: the mean of the rows that were there before (the reference recipe).

    Returns the tokens' ids.

    Why ``"mean"`` stalls: for ``w_new = mean_v w_v``, ``h · w_new = mean_v (h · w_v)`` is the mean
    logit under every hidden state ``h``, never the largest, so fine-tuning the body can at best
    flatten the distribution towards ``log p = -log V``; only the row's own movement can make the
    token win, and Adam moves each coordinate about ``lr`` per step.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from align.testbed.tokenizer import build_tokenizer
        >>> tok = build_tokenizer()
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2))
        >>> refuse, respond = add_control_tokens(tok, model, ["[refuse]", "[respond]"], init="mean")
        >>> emb = model.get_input_embeddings().weight
        >>> bool(torch.allclose(emb[refuse], emb[: refuse].mean(0)))
        True
    """
    import torch

    before = len(tokenizer)
    names = [tokenizer(" " + t.strip("[]"), add_special_tokens=False)["input_ids"] for t in tokens]
    tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if max(ids) >= model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for matrix in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
            mean = matrix.weight[:before].mean(0)
            for token_id, name in zip(ids, names):
                if token_id >= before:
                    matrix.weight[token_id] = matrix.weight[name].mean(0) if init == "name" and name else mean
    return ids


def fit_control_rows(features: Any, other_lse: Any, targets: Any, init: Any, l2: float = 1e-2, steps: int = 100) -> Any:
    """The control tokens' output rows ``W [K, d]`` minimising, over rows ``i`` with hidden state
    ``h_i`` at the first response position and control token ``y_i``,

        mean_i [ logaddexp(L_i, logsumexp_k h_i · W_k) - h_i · W_{y_i} ] + l2 · mean_k ||W_k - init_k||²,

    where ``L_i`` is the log-sum-exp of every other token's logit: the full-vocabulary
    cross-entropy of the control position with the rest of the model frozen. Convex in ``W``;
    solved with L-BFGS. This is the linear-probe step of LP-FT (Kumar et al., "Fine-Tuning can
    Distort Pretrained Features and Underperform Out-of-Distribution", arXiv:2202.10054): fitting
    a new head before fine-tuning gives the body a useful gradient from the first step.

    Example:
        >>> import torch
        >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); other = torch.zeros(2)
        >>> W = fit_control_rows(h, other, torch.tensor([0, 1]), torch.zeros(2, 2), l2=1e-3)
        >>> (h @ W.T).argmax(-1).tolist()
        [0, 1]
    """
    import torch

    features, other_lse, init = features.float(), other_lse.float(), init.float()
    weights = init.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([weights], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> Any:
        optimizer.zero_grad()
        logits = features @ weights.T
        total = torch.logaddexp(other_lse, logits.logsumexp(-1)) - logits.gather(1, targets[:, None])[:, 0]
        value = total.mean() + l2 * (weights - init).pow(2).sum(-1).mean()
        value.backward()
        return value

    optimizer.step(loss)
    return weights.detach()


def probe_control_rows(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], l2: float = 1e-2,
                       batch_size: int = 32) -> dict[str, float]:
    """Set the output rows of ``rows``' control tokens to :func:`fit_control_rows` on the frozen
    model's hidden states at each row's first response position (read from the head's input).
    A tied head moves its embedding rows with it. Returns the probe's first-token accuracy on
    ``rows`` before and after."""
    import torch

    from decoding.refusal import first_token_probs

    from ..data import tokenize_prompt_completion

    head = model.get_output_embeddings()
    controls = sorted({row["control"] for row in rows})
    ids = torch.tensor(tokenizer.convert_tokens_to_ids(controls))
    prompts = []
    for row in rows:
        enc = tokenize_prompt_completion(tokenizer, row)
        prompts.append(enc["input_ids"][: enc["completion_mask"].index(1)])
    # first_token_probs batches prompts by length with a stable sort: already sorted, the hook
    # captures them in this order
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))
    prompts = [prompts[i] for i in order]
    targets = torch.tensor([controls.index(rows[i]["control"]) for i in order])
    captured: list[tuple[Any, Any]] = []
    hook = head.register_forward_hook(
        lambda _m, inputs, output: captured.append((inputs[0][:, -1].detach().float().cpu(), output[:, -1].detach().float().cpu())))  # a small CPU fit, whatever the device
    was_training = model.training
    try:
        first_token_probs(model.eval(), tokenizer, prompts, batch_size)
    finally:
        hook.remove()
        model.train(was_training)
    features = torch.cat([f for f, _ in captured])
    logits = torch.cat([o for _, o in captured])[:, : len(tokenizer)]  # raw logits: the probe adds its own to them
    before = float((logits.argmax(-1) == ids[targets]).float().mean())
    other = logits.clone()
    other[:, ids] = float("-inf")
    fitted = fit_control_rows(features, other.logsumexp(-1), targets, head.weight[ids.to(head.weight.device)].detach().float().cpu(), l2)
    with torch.no_grad():
        head.weight[ids.to(head.weight.device)] = fitted.to(head.weight.device, head.weight.dtype)
    control_logits = features @ fitted.T
    after = float(((control_logits.max(-1).values > other.max(-1).values) & (control_logits.argmax(-1) == targets)).float().mean())
    return {"rows": len(rows), "first_token_accuracy_before": round(before, 4), "first_token_accuracy_after": round(after, 4)}


def control_token_metrics(probs: Any, tokenizer: Any, categories: Sequence[str], rows: Sequence[int],
                          tokens: dict[str, str], respond_token: str = "[respond]") -> dict[str, float]:
    """Is the control token learned? On rows ``rows`` of first-response-position distributions
    ``probs`` (``[n, V]``, e.g. :func:`decoding.refusal.first_token_probs`) whose categories are
    ``categories``: ``first_token_accuracy`` = share of rows whose control token (``tokens`` maps a
    refusal category to its token; every other category wants ``respond_token``) is the argmax over
    the whole vocabulary, and ``auroc`` = AUROC of p[refusal tokens] (summed) for refusal vs other
    rows (0.5 when one side is empty).

    Example:
        >>> import torch
        >>> from transformers import AutoTokenizer
        >>> from align.testbed import build_testbed
        >>> tok = AutoTokenizer.from_pretrained(build_testbed("tiny", show_progress=False).path("small-instruct"))
        >>> _ = tok.add_special_tokens({"additional_special_tokens": ["[refuse]", "[respond]"]})
        >>> refuse, respond = tok.convert_tokens_to_ids(["[refuse]", "[respond]"])
        >>> probs = torch.zeros(3, len(tok))
        >>> probs[0, refuse], probs[1, respond], probs[2, refuse] = 0.9, 0.6, 0.4
        >>> control_token_metrics(probs, tok, ["harm", "ok", "ok"], [0, 1, 2], {"harm": "[refuse]"})
        {'first_token_accuracy': 0.6667, 'auroc': 1.0, 'rows': 3}
    """
    import torch

    from ..metrics import auroc

    rows = list(rows)
    want = torch.tensor(tokenizer.convert_tokens_to_ids([tokens.get(categories[i], respond_token) for i in rows]))
    accuracy = float((probs[rows].argmax(-1) == want).float().mean())
    refusal_ids = sorted(set(tokenizer.convert_tokens_to_ids(list(tokens.values()))))
    labels = torch.tensor([categories[i] in tokens for i in rows])
    p_refuse = probs[rows][:, refusal_ids].sum(-1)
    return {"first_token_accuracy": round(accuracy, 4), "auroc": round(auroc(p_refuse, labels), 4) if 0 < labels.sum() < len(rows) else 0.5,
            "rows": len(rows)}


def check_single_ids(tokenizer: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Each control token is one id where the template renders it: the first completion token of a
    row that uses it, and after a leading space. Raises :class:`ConfigError` otherwise."""
    from ..data import tokenize_prompt_completion

    seen: set[str] = set()
    for i, row in enumerate(rows):
        token = row["control"]
        if token in seen:
            continue
        seen.add(token)
        token_id = tokenizer.convert_tokens_to_ids(token)
        enc = tokenize_prompt_completion(tokenizer, {"prompt": row["prompt"], "completion": row["completion"]})
        first = enc["input_ids"][enc["completion_mask"].index(1)] if enc and 1 in enc["completion_mask"] else None
        spaced = tokenizer(f" {token}", add_special_tokens=False)["input_ids"]
        if first != token_id or spaced.count(token_id) != 1:
            raise ConfigError(
                f"control token {token!r} is not one id at the start of the response (row {i} starts with "
                f"{tokenizer.convert_ids_to_tokens([first]) if first is not None else None}, ' {token}' -> "
                f"{tokenizer.convert_ids_to_tokens(spaced)}): this tokenizer or chat template splits it"
            )


def train_refusal(args: RefusalArgs) -> dict[str, Any]:
    """Tag, add the tokens, fine-tune and save to ``args.output_dir`` (with ``control_tokens.json``)."""
    from ..data import rows_to_dataset
    from ..models import load_causal_lm, load_tokenizer
    from ..testbed.datasets import refusal_sft
    from .common import lora_config

    train, test = load_splits(args, {"testbed:refusal": lambda: refusal_sft(args.n_train, 200, args.seed)})
    train_rows = tag_rows(train, args)  # bad rows fail here, before any model loads
    test_rows = tag_rows(test, args) if test is not None else None
    path = args.resolve(args.model)
    tok = load_tokenizer(path, args.trust_remote_code)
    model = load_causal_lm(path, args.dtype, trust_remote_code=args.trust_remote_code, **args.init_kwargs())
    tokens = args.control_tokens()
    ids = add_control_tokens(tok, model, list(tokens.values()), "mean" if args.control_init == "probe" else args.control_init)
    check_single_ids(tok, train_rows)
    probe = {}
    if args.control_init == "probe":  # a seeded sample: files often hold one label after the other
        sample = random.Random(args.seed).sample(train_rows, min(args.probe_rows, len(train_rows)))
        probe = probe_control_rows(model, tok, sample, args.probe_l2)
    peft_config = lora_config(args)
    if peft_config is not None:
        peft_config.modules_to_save = _embedding_module_names(model)
        # a tied head must stay the trained embedding copy's: without this PEFT trains a copy of the
        # embeddings while the head keeps the frozen original, and every control token's output row
        # stays at the initial mean (identical logits for all of them)
        peft_config.ensure_weight_tying = _tied(model)
    columns = ["prompt", "completion"]
    trainer = RefusalSFTTrainer(
        model=model, args=args, processing_class=tok, peft_config=peft_config, control_ids=ids,
        train_dataset=rows_to_dataset(train_rows, args.dataset).select_columns(columns),
        eval_dataset=rows_to_dataset(test_rows, args.dataset).select_columns(columns) if test_rows else None,
    )
    trainer.train(resume_from_checkpoint=last_checkpoint(args))
    result = finish(trainer, args, tok, {"rows": len(train_rows), "control_tokens": dict(zip(tokens.values(), ids)), "probe": probe})
    if trainer.is_world_process_zero():
        from pathlib import Path

        from rewards.io import atomic_write_text

        atomic_write_text(Path(args.output_dir) / TOKENS_FILE, json.dumps(
            {"refuse_token": None if args.categories else args.refuse_token, "respond_token": args.respond_token,
             "categories": {c: f"[{c}]" for c in args.categories} if args.categories else None}, indent=2))
    return result


def _tied(model: Any) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def _embedding_module_names(model: Any) -> list[str]:
    """PEFT ``modules_to_save`` names of the input embeddings and an untied output head (a tied
    head follows the embeddings through ``ensure_weight_tying``)."""
    wanted = [model.get_input_embeddings()]
    if not _tied(model):
        wanted.append(model.get_output_embeddings())
    return [name.rsplit(".", 1)[-1] for name, module in model.named_modules() if any(module is w for w in wanted)]


class RefusalSFTTrainer(SFTTrainer):
    """TRL's ``SFTTrainer`` plus ``first_token_accuracy`` (how often the control token is the argmax
    at the first response position, read from the forward the loss already ran), a warning when it
    stays 0, and ``control_lr`` for the control tokens' rows."""

    def __init__(self, *a: Any, control_ids: Sequence[int] = (), **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._first = IntervalMeans()
        self._control_ids = list(control_ids)
        self._zero_logs = 0

    def create_optimizer(self, *a: Any, **kw: Any) -> Any:
        optimizer = super().create_optimizer(*a, **kw)
        control_lr = getattr(self.args, "control_lr", None)
        if control_lr is not None and self._control_ids:
            scale_row_updates(optimizer, embedding_matrices(self.model), self._control_ids, control_lr / self.args.learning_rate)
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with first_forward_output(self.accelerator.unwrap_model(model)) as captured:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        out = captured[0]
        mask = out.label_mask.bool()
        first = mask.int().argmax(-1)  # the first labelled position predicts the control token
        rows = mask.any(-1)
        hits = out.is_top1.gather(-1, first[:, None])[:, 0] & rows
        self._first.add("train" if self.model.training else "eval", "first_token_accuracy", hits, rows.sum())
        return result

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        training = self.model.training
        logs.update(self._first.pop("train" if training else "eval", self.accelerator))
        if training and "first_token_accuracy" in logs:
            self._zero_logs = self._zero_logs + 1 if logs["first_token_accuracy"] == 0 else 0
            limit = getattr(self.args, "warn_after_logs", 0)
            if limit and self._zero_logs == limit:
                warnings.warn(
                    f"first_token_accuracy has been 0 at {limit} consecutive logs (step {self.state.global_step}): the "
                    f"control token is not being learned. With control_init: mean its logit is the mean logit under "
                    f"every hidden state; use control_init: name and/or a larger control_lr (see align train refusal --help)",
                    stacklevel=2,
                )
        super().log(logs, start_time)


def embedding_matrices(model: Any) -> list[Any]:
    """The trainable ``[vocab, hidden]`` parameters (input embeddings and an untied head; under
    PEFT the ``modules_to_save`` copies), found by shape so that wrappers do not matter."""
    rows = model.get_input_embeddings().weight.shape[0]
    return [p for p in model.parameters() if p.requires_grad and p.dim() == 2 and p.shape[0] == rows]


def scale_row_updates(optimizer: Any, matrices: Sequence[Any], rows: Sequence[int], scale: float) -> None:
    """Multiply every optimizer step's update of ``rows`` of ``matrices`` by ``scale``: a learning
    rate of ``scale`` times the optimizer's for those rows alone, on the same schedule (with Adam,
    scaling their gradients instead would change nothing). Uses the optimizer's step hooks, so it
    holds under accelerate's wrapper; the rows must be whole on this process (not ZeRO-3 / FSDP
    sharded).

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(3, 2))
        >>> opt = torch.optim.SGD([w], lr=0.1)
        >>> scale_row_updates(opt, [w], [2], 10.0)
        >>> w.grad = torch.ones(3, 2); opt.step()
        >>> [round(x, 4) for x in w.detach()[:, 0].tolist()]
        [-0.1, -0.1, -1.0]
    """
    import torch

    index = torch.tensor(list(rows))
    saved: list[Any] = []

    def before(*_: Any) -> None:
        saved[:] = [m.detach()[index.to(m.device)].clone() for m in matrices]

    def after(*_: Any) -> None:
        with torch.no_grad():
            for m, old in zip(matrices, saved):
                i = index.to(m.device)
                m[i] = old + scale * (m[i] - old)

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)
