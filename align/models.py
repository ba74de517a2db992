"""Model and tokenizer loading for every command: a hub id, a local directory or ``testbed:NAME``.

Real checkpoints differ from the testbed in ways every command must survive: no pad token (Llama,
Mistral, GPT-2: the EOS token pads, as TRL does), several EOS ids (``generation_config.eos_token_id``
as a list, e.g. Qwen's ``<|im_end|>`` and ``<|endoftext|>``), a chat template or none, bf16 weights.
``trust_remote_code`` is off unless the caller turns it on.

Example:
    >>> from align.testbed import build_tokenizer
    >>> tok = build_tokenizer()
    >>> uses_chat(tok), uses_chat(tok, "plain")
    (True, False)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .config import ConfigError

if TYPE_CHECKING:
    import torch

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_model(name: str, profile: str = "full", seed: int = 0, cache_dir: str | None = None) -> str:
    """``testbed:NAME`` -> that testbed model's directory; a hub id or a directory is returned as is."""
    if name.startswith("testbed:"):
        from .testbed import testbed_of

        bare = name.removeprefix("testbed:")
        return str(testbed_of(bare, profile, seed, cache_dir).path(bare))
    return name


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    """``AutoTokenizer`` for ``path``; a tokenizer without a pad token pads with its EOS token (TRL's rule)."""
    from transformers import AutoTokenizer

    from .testbed.real import is_gguf

    try:
        if is_gguf(path):
            tok = AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
        else:
            tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(not_found(path, err)) from err
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(f"model {path}: its tokenizer has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def not_found(path: str | Path, err: Exception) -> str:
    return f"model {str(path)!r} is neither testbed:NAME, a checkpoint directory nor a reachable hub id ({err})"


def torch_dtype(dtype: str) -> "torch.dtype | str":
    """``"auto"`` (the checkpoint's own dtype) or the named ``torch.dtype``."""
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype if dtype == "auto" else getattr(torch, dtype)


def check_device(device: str | None) -> None:
    """A :class:`ConfigError` for a device this machine does not have (before any model loads)."""
    import torch

    if device is None:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise ConfigError(f"device {device!r} is not a torch device ({err})") from err
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, True):
        raise ConfigError(f"device {device!r}: no {kind} device is available on this machine (torch {torch.__version__}); "
                          "leave device unset to use what there is")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(
    path: str | Path,
    dtype: str = "auto",
    device: str | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    cls: Any = None,
    **init_kwargs: Any,
) -> Any:
    """A model from a hub id, a directory or a ``.gguf`` file (de-quantised), in ``dtype``, on
    ``device`` (or spread by ``device_map``); ``init_kwargs`` go to ``from_pretrained`` (e.g. a
    trainer's ``model_init_kwargs``: ``attn_implementation``, ``revision``).

    Training passes ``dtype="float32"`` (fp32 master weights: a bf16 hub checkpoint would otherwise
    train in pure bf16); generation defaults to the checkpoint's dtype.
    """
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {**init_kwargs, "dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    from .testbed.real import is_gguf, strip_gguf_quantizer

    if (Path(path) / "adapter_config.json").is_file():
        return load_adapter(path, dtype, device, device_map, trust_remote_code, cls, **init_kwargs)
    if is_gguf(path):
        kwargs.update(gguf_file=Path(path).name, dtype=torch_dtype("float32" if dtype == "auto" else dtype))
        path = Path(path).parent
    try:
        model = (cls or AutoModelForCausalLM).from_pretrained(str(path), **kwargs)
    except OSError as err:
        raise ConfigError(not_found(path, err)) from err
    if "gguf_file" in kwargs:
        strip_gguf_quantizer(model)
    if device is not None and device_map is None:
        model.to(device)
    return model


def load_adapter(
    path: str | Path, dtype: str = "auto", device: str | None = None, device_map: str | dict | None = None,
    trust_remote_code: bool = False, cls: Any = None, **init_kwargs: Any,
) -> Any:
    """A PEFT adapter directory (``align train ... --lora_r N``) merged into its base model.

    The base is loaded from the adapter's ``base_model_name_or_path`` and, when the adapter was
    trained with tokens the base lacks (``align train refusal``), its embeddings are first grown to
    the adapter's saved tokenizer, so the saved rows fit (transformers' own adapter loading fails
    there with a size mismatch). Merged, the result is a plain model every decoder can use.
    """
    import json

    from peft import PeftModel

    base_path = json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_path:
        raise ConfigError(f"model {path}: adapter_config.json names no base_model_name_or_path")
    base = load_causal_lm(base_path, dtype, None, device_map, trust_remote_code, cls, **init_kwargs)
    vocab = len(load_tokenizer(path, trust_remote_code))
    if vocab > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(vocab, mean_resizing=False)
    model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    if device is not None and device_map is None:
        model.to(device)
    return model


def uses_chat(tokenizer: Any, override: str | None = None) -> bool:
    """Whether prompts go through the chat template: ``override`` (``"chat"``/``"plain"``) if given,
    else whether the tokenizer has a chat template."""
    if override is not None:
        if override not in ("chat", "plain"):
            raise ConfigError(f"prompt format must be 'chat' or 'plain', got {override!r}")
        return override == "chat"
    return getattr(tokenizer, "chat_template", None) is not None
