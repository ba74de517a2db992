"""What a decoding method is to ``align generate`` and ``align eval``: its options (dataclass fields,
reachable as CLI flags and YAML keys), the models it reads, how it builds its transformers logits
processors and, where it has one, its vLLM form.

A method instance is made fresh for every :func:`align.generate.generate_outputs` call, so the
state a method keeps while it decodes (STEER's negative pool, EAD's token counts, refusal's control
tokens) lives on the instance and never leaks between calls.
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..config import ConfigError

if TYPE_CHECKING:
    from decoding import AuxiliaryModel
    from decoding.fusion import FusionSpec

    from ..generate import GenerateArgs, ModelStore


@dataclass
class Run:
    """One generation call as a method sees it: the options, the models, the prompts (as given:
    each model renders them in its own format) and each prompt's sampling seed."""

    args: GenerateArgs
    store: ModelStore
    prompts: list[Any]
    seeds: list[int]

    @property
    def tokenizer(self) -> Any:
        return self.store.tokenizer(self.args.model)

    def aux(self, ref: str, rows: slice, prompts: list[Any] | None = None) -> AuxiliaryModel:
        """``ref`` following the main model on ``prompts[rows]`` (default: the run's prompts), each
        read in ``ref``'s own format, so a chat model reads a negative prompt through its template
        as the main model reads the real one."""
        from decoding import AuxiliaryModel

        model, tok = self.store.load(ref)
        own = self.store.prompts_for(ref, prompts if prompts is not None else self.prompts)
        return AuxiliaryModel(model, tok, own[rows], ref)


@dataclass
class VLLMForm:
    """How a method runs in a vLLM engine: the model directory to serve (``None``: the main model),
    the logits processors registered at engine start, and each request's ``extra_args``."""

    model: str | None = None
    logits_processors: tuple[str, ...] = ()
    extra_args: dict[str, Any] | None = None


@dataclass
class DecodingMethod:
    """Base of every method: subclass it as a dataclass whose fields are the method's options
    (``metadata={"help": ...}``; no option name may repeat another method's, since both share one
    flat namespace of flags and keys), and override what the method needs."""

    name: ClassVar[str]
    _argument_group_name: ClassVar[str]  # the --help heading (transformers' HfArgumentParser reads it)
    required: ClassVar[tuple[str, ...]] = ()  # options that must be set
    finite: ClassVar[tuple[str, ...]] = ()  # float options that must be finite
    records_control: ClassVar[bool] = False  # rows get a "control" field (:meth:`control`)

    def check(self) -> None:
        """Validate the options (run only for the chosen method); a :class:`ConfigError` names the field."""
        for key in self.required:
            if getattr(self, key) in (None, "", []):  # 0.0 is a valid setting
                raise ConfigError(f"method {self.name!r} needs {key!r}")
        for key in self.finite:
            value = getattr(self, key)
            for v in value if isinstance(value, list) else [] if value is None else [value]:
                if not math.isfinite(v):
                    raise ConfigError(f"{key} must be finite, got {value}")

    def models(self) -> list[str]:
        """The models this method reads besides the main one (resolved, and their vocabularies
        checked against the main model's, before any model loads)."""
        return []

    def prepare(self, run: Run) -> None:
        """Checks and set-up before any model loads (a bad file or token fails here, cheaply)."""

    def processors(self, run: Run, rows: slice) -> list:
        """The transformers logits processors for the prompts ``run.prompts[rows]``."""
        return []

    def block_size(self, n: int) -> int:
        """Prompts generated before :meth:`after_block` sees their outputs (default: all at once)."""
        return max(1, n)

    def after_block(self, run: Run, ids: list[list[int]]) -> None:
        """Sees each block's completions (token ids, in prompt order) before the next block starts."""

    def generate_kwargs(self, run: Run) -> dict[str, Any]:
        """Extra :func:`decoding.generate.generate_ids` hooks (``make_kwargs`` / ``on_output``) on
        absolute row slices, e.g. a ``custom_generate`` loop."""
        return {}

    def control(self, run: Run, first: list[int]) -> str | None:
        """A control token a response opens with (recorded apart from the text), else ``None``."""
        return None

    def annotate(self, rows: list[dict[str, Any]]) -> None:
        """Adds method-specific fields to the output rows (in prompt order)."""

    def vllm(self, run: Run) -> VLLMForm | None:
        """The method's vLLM form, or ``None`` when it runs only with transformers."""
        return None


def fused(run: Run, method: DecodingMethod, spec: Callable[[Callable[[str], str]], FusionSpec]) -> VLLMForm:
    """The vLLM form of a multi-model method: a composite of its models (:mod:`decoding.fusion`),
    written once per store. ``spec(path)`` builds the fusion spec, ``path`` mapping each model
    reference to a directory vLLM can load.

    Every member reads the main model's prompt (one token stream per request); a member that would
    read another format under transformers (e.g. a chat-tuned model next to a base model) gets a
    warning naming it, since the two backends then decode different distributions."""
    from decoding.fusion import write_fusion

    from ..generate import servable

    args, store = run.args, run.store
    refs = [args.model, *method.models()]
    store.check_vocab(refs)  # the tokenizers alone, before anything is written or loaded
    main_chat = store.reads_chat(args.model)
    fmt = {True: "chat", False: "plain"}
    for ref in refs[1:]:
        if store.reads_chat(ref) != main_chat:
            warnings.warn(f"backend vllm, method {method.name}: {ref} reads the main model's {fmt[main_chat]} prompt "
                          f"(a composite's members read one token stream); with backend transformers it reads its own "
                          f"{fmt[not main_chat]} prompt. Set prompt_format to decode the same on both.", stacklevel=2)
    built = spec(lambda ref: servable(store.path(ref), args))
    key = json.dumps(asdict(built), sort_keys=True)
    if key not in store.composites:
        out = Path(tempfile.mkdtemp(prefix="alignkit-fusion-"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        try:
            store.composites[key] = str(write_fusion(built, out))
        except ValueError as err:
            raise ConfigError(f"method {method.name}: {err}") from err
    return VLLMForm(model=store.composites[key])


def options_of(method: type[DecodingMethod], values: Any) -> DecodingMethod:
    """An instance of ``method`` with its options read from ``values`` (any object with those attributes)."""
    return method(**{f.name: getattr(values, f.name) for f in fields(method) if f.init})


def flat_options(name: str, groups: tuple[type, ...], module: str) -> type:
    """One dataclass with every group's fields (flat CLI flags and YAML keys), for a command whose
    options come in groups (``argument_groups``; :func:`align.config.parse_config` lists each under
    its own --help heading). Its annotations are read in ``module``'s namespace."""
    specs = []
    for group in groups:
        for f in fields(group):
            default = {"default": f.default} if f.default_factory is MISSING else {"default_factory": f.default_factory}
            specs.append((f.name, f.type, field(**default, metadata=f.metadata)))
    names = [s[0] for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise TypeError(f"{name}: options declared by more than one group: {repeated}")
    flat = make_dataclass(name, specs)
    flat.__module__ = module
    return flat
