"""``align fuse``: write an EFT or DLF composite that vLLM serves as one model (:mod:`decoding.fusion`).

The directory holds a config naming the member checkpoints and the fusion rule, and the shared
tokenizer; no weights are copied. ``align generate --backend vllm --method eft|dlf`` and
``align eval`` systems with ``backend: vllm`` write one themselves; this command is for serving::

    align fuse --method eft --large testbed:large-base --tuned testbed:small-instruct \\
        --reference testbed:small-base --out runs/eft-composite
    vllm serve runs/eft-composite --kv-cache-memory-bytes 1073741824
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from .config import ConfigError
from .methods import DLF, EFT, flat_options, options_of


@dataclass
class FuseOptions:
    _argument_group_name: ClassVar[str] = "fuse"

    method: Literal["eft", "dlf"] = field(default="eft", metadata={"help": "the fusion rule"})
    large: str = field(default="", metadata={"help": "the large model whose distribution is reweighted"})
    out: str = field(default="", metadata={"help": "the composite's directory (written)"})
    profile: str = field(default="full", metadata={"help": "testbed profile for testbed:NAME"})
    seed: int = field(default=0, metadata={"help": "testbed seed"})
    cache_dir: str | None = field(default=None, metadata={"help": "testbed cache directory"})


@dataclass
class FuseArgs(flat_options("FuseFields", (FuseOptions, EFT, DLF), __name__)):  # type: ignore[misc]
    """``align fuse`` options: the large model, the output, and the method's own options (the same
    flags as ``align generate``'s)."""

    argument_groups: ClassVar[tuple[type, ...]] = (FuseOptions, EFT, DLF)

    def __post_init__(self) -> None:
        if not self.large or not self.out:
            raise ConfigError("fuse: give --large and --out")
        options_of(EFT if self.method == "eft" else DLF, self).check()


def run_fuse(args: FuseArgs) -> Path:
    """Resolve every model and write the composite directory ``args.out``."""
    from decoding.fusion import write_fusion

    from .models import resolve_model

    method = options_of(EFT if args.method == "eft" else DLF, args)
    try:
        spec = method.fusion(args.large, lambda ref: resolve_model(ref, args.profile, args.seed, args.cache_dir))
        return write_fusion(spec, args.out)
    except ValueError as err:
        raise ConfigError(f"fuse: {err}") from err
