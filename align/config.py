"""YAML + command-line configuration in the TRL style.

``--config file.yaml`` sets dataclass fields, command-line flags override them (``trl.TrlParser``).
On top of TRL this checks every YAML key and value *before any work*: an unknown key or a value of
the wrong type is a :class:`ConfigError` naming the key, the file and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with path.open() as f:
        data = yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a YAML mapping of keys to values, got {type(data).__name__}")
    return data


def _matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple, Sequence):
        args = typing.get_args(annotation)
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def check_config(cls: type, config: dict[str, Any], source: str = "config") -> None:
    """Raise :class:`ConfigError` for keys ``cls`` lacks and values of the wrong type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    for key, value in config.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {key!r}; valid keys: {', '.join(sorted(fields))}")
        if not _matches(value, hints[key]):
            raise ConfigError(
                f"{source}: key {key!r} must be {_describe(hints[key])}, got {value!r} ({type(value).__name__})"
            )


def parse_config(cls: type[T], args: Sequence[str], prog: str | None = None, defaults: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from ``defaults``, then ``--config file.yaml``, then command-line flags (each wins
    over the one before).

    Example:
        >>> from dataclasses import dataclass, field
        >>> @dataclass
        ... class Cfg:
        ...     steps: int = field(default=10, metadata={"help": "training steps"})
        >>> parse_config(Cfg, ["--steps", "3"]).steps
        3
    """
    from trl import TrlParser  # import lazily: trl pulls in much of the stack

    args = list(args)
    config: dict[str, Any] = {}
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise ConfigError("--config needs a YAML file path")
        path = args[i + 1]
        del args[i : i + 2]
        config = load_yaml(path)
        env = config.pop("env", {})  # TRL convention: environment variables to set
        if not isinstance(env, dict):
            raise ConfigError(f"{path}: key 'env' must be a mapping of environment variables")
        check_config(cls, config, source=path)
        os.environ.update({str(k): str(v) for k, v in env.items()})
    # a class made of option groups (``argument_groups``: ``align generate``'s methods) lists each
    # group under its own --help heading and is built from all groups' values
    groups = getattr(cls, "argument_groups", (cls,))
    parser = TrlParser(dataclass_types=list(groups), prog=prog)
    if defaults or config:
        parser.set_defaults_with_config(**{**(defaults or {}), **config})
    *parsed, unknown = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
    flags = [a for a in unknown if a.startswith("--")]
    if unknown:
        import difflib

        known = [f.name for f in dataclasses.fields(cls) if f.init]
        hints = [f"--{m[0]}" for a in flags for m in [difflib.get_close_matches(a.lstrip("-").split("=")[0], known, 1)] if m]
        raise ConfigError(f"unknown option(s) {' '.join(flags or unknown)}" + (f"; did you mean {', '.join(hints)}?" if hints else "")
                          + f" (`{prog or 'align'} --help` lists the options)")
    if groups == (cls,):
        return parsed[0]
    return cls(**{f.name: getattr(g, f.name) for g in parsed for f in dataclasses.fields(g) if f.init})
