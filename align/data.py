"""One dataset loader for every command, and the row checks that run before any model loads.

A dataset spec is whatever ``datasets.load_dataset`` takes (a hub id, or a local directory laid out
like a hub dataset repo, with ``dataset_config`` and a split name, as TRL's ``ScriptArguments``
call them), a ``.json``/``.jsonl``/``.parquet``/``.csv`` file, a ``save_to_disk`` directory, or
``testbed:NAME`` (a builder of the offline testbed). Preference rows may come in any TRL layout:
explicit or implicit prompt (the shared prefix is extracted with TRL's ``maybe_extract_prompt``),
standard text or conversational messages.

Example:
    >>> rows = [{"chosen": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}],
    ...          "rejected": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "5"}]}]
    >>> from datasets import Dataset
    >>> row = preference_rows(Dataset.from_list(rows))[0]
    >>> row["prompt"][0]["content"], row["chosen"][0]["content"]
    ('2+2=', '4')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .config import ConfigError

FILE_LOADERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def as_messages(prompt: Any) -> list[dict]:
    """A prompt as chat messages: a string becomes one user turn; messages are copied.

    Example:
        >>> as_messages("1+1=")
        [{'role': 'user', 'content': '1+1='}]
    """
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def last_text(turns: Any) -> str:
    """The text of a prompt or completion: a string as is, else the last message's content."""
    return turns if isinstance(turns, str) else turns[-1]["content"]


def plain_text(prompt: Any) -> str:
    """A prompt for a model without a chat template: a string as is; messages as their contents in
    order, one a line (system turn, history and all), so a multi-turn prompt keeps its problem.

    Example:
        >>> plain_text([{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "3"},
        ...             {"role": "user", "content": "Check it."}])
        '1+1=\\n3\\nCheck it.'
    """
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def load_split(
    spec: str,
    split: str = "train",
    config: str | None = None,
    testbed: Mapping[str, Callable[[], Any]] | None = None,
) -> Any:
    """The ``split`` of the dataset named by ``spec`` as a ``datasets.Dataset``.

    A single file or a saved single ``Dataset`` is one split, ``train``. A wrong split name is a
    :class:`ConfigError` listing the splits there are.
    """
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    testbed = testbed or {}
    if spec.startswith("testbed:"):
        if spec not in testbed:
            raise ConfigError(f"dataset {spec!r} is not a testbed dataset here; use one of {', '.join(testbed)}")
        loaded = testbed[spec]()
    elif Path(spec).is_file():
        suffix = Path(spec).suffix
        if suffix not in FILE_LOADERS:
            raise ConfigError(f"dataset {spec!r}: a file must end in {', '.join(FILE_LOADERS)}")
        if suffix == ".jsonl":  # our reader names the bad line; Arrow's JSON reader does not
            from rewards.io import read_jsonl

            loaded = DatasetDict(train=rows_to_dataset(read_jsonl(spec), spec))
        else:
            loaded = load_dataset(FILE_LOADERS[suffix], data_files=spec)
    elif Path(spec).is_dir() and any((Path(spec) / f).is_file() for f in ("dataset_dict.json", "state.json")):
        loaded = load_from_disk(spec)
    else:  # a hub id, or a directory laid out like a hub dataset repo
        try:
            loaded = load_dataset(spec, name=config)
        except (FileNotFoundError, ValueError, ConnectionError) as err:
            raise ConfigError(f"dataset {spec!r} could not be loaded: {err}") from err
    if isinstance(loaded, Dataset):
        loaded = DatasetDict(train=loaded)
    if split not in loaded:
        raise ConfigError(f"dataset {spec!r} has no split {split!r}; its splits: {', '.join(loaded)}")
    return loaded[split]


def rows_to_dataset(rows: list[dict], source: str = "rows") -> Any:
    """``Dataset.from_list``, with a type clash between rows reported by row and field (Arrow's own
    error names neither)."""
    import pyarrow as pa
    from datasets import Dataset

    try:
        return Dataset.from_list(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as err:
        seen: dict[str, tuple[int, str]] = {}
        for i, row in enumerate(rows):
            for key, value in row.items():
                kind = type(value).__name__
                first = seen.setdefault(key, (i, kind))
                if value is not None and first[1] != kind and first[1] != "NoneType":
                    raise ConfigError(f"{source}: row {i}: field {key!r} is {kind} ({value!r}) but row {first[0]} has "
                                      f"{first[1]}; every row must use one type per field") from err
        raise ConfigError(f"{source}: rows could not be read as one table: {err}") from err


def check_text_field(row: Any, index: int, key: str) -> None:
    """``row[key]`` must be non-empty text or non-empty chat messages; the error names row and field."""
    value = row.get(key) if isinstance(row, dict) else None
    if value is None:
        raise ConfigError(f"row {index}: field {key!r} is missing")
    ok = (isinstance(value, str) and value.strip()) or (
        isinstance(value, list) and value and all(isinstance(m, dict) and m.get("content") for m in value)
    )
    if not ok:
        raise ConfigError(f"row {index}: field {key!r} must be non-empty text or chat messages, got {value!r}")


def check_preference_rows(rows: Any) -> tuple[list[int], int]:
    """Validate ``prompt``/``chosen``/``rejected`` rows before any training.

    Returns the indices to keep and how many pairs had ``chosen == rejected`` (dropped: they carry
    no preference). Raises :class:`ConfigError` naming the first bad row and field.
    """
    keep, same = [], 0
    for i, row in enumerate(rows):
        for key in ("prompt", "chosen", "rejected"):
            check_text_field(row, i, key)
        if row["chosen"] == row["rejected"]:
            same += 1
        else:
            keep.append(i)
    return keep, same


def check_unpaired_rows(rows: Any) -> None:
    """``prompt``/``completion`` non-empty text or messages, ``label`` a bool; the error names row and field."""
    for i, row in enumerate(rows):
        for key in ("prompt", "completion"):
            check_text_field(row, i, key)
        if not isinstance(row.get("label"), bool):
            raise ConfigError(f"row {i}: field 'label' must be true or false, got {row.get('label')!r}")


def preference_rows(dataset: Any) -> Any:
    """``dataset`` with an explicit ``prompt`` in every row (TRL's ``maybe_extract_prompt`` for
    implicit-prompt rows) and only the ``prompt``/``chosen``/``rejected`` columns."""
    from trl.data_utils import maybe_extract_prompt

    missing = [c for c in ("chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise ConfigError(
            f"preference data needs columns 'chosen' and 'rejected' (and optionally 'prompt'); "
            f"missing {missing}, found {dataset.column_names}"
        )
    if "prompt" not in dataset.column_names or _prompt_is_implicit(dataset[0]):
        dataset = dataset.map(maybe_extract_prompt, desc="extracting prompts")
    return dataset.select_columns(["prompt", "chosen", "rejected"])


def _prompt_is_implicit(row: dict) -> bool:
    """A text ``prompt`` column beside conversational ``chosen`` (ultrafeedback_binarized's layout)."""
    return isinstance(row.get("prompt"), str) and isinstance(row.get("chosen"), list)


def select_valid_preferences(dataset: Any) -> tuple[Any, int]:
    """Normalised, validated preference rows with identical pairs dropped; returns (rows, dropped)."""
    dataset = preference_rows(dataset)
    keep, same = check_preference_rows(dataset)
    if same:
        print(f"dropped {same} pairs whose chosen equals rejected")
    if not keep:
        raise ConfigError("no usable preference pairs")
    return (dataset.select(keep) if same else dataset), same


def tokenize_prompt_completion(tokenizer: Any, row: dict, max_length: int = 1024) -> dict[str, list[int]] | None:
    """Prompt + completion ids and the completion mask, as TRL tokenizes preference data: chat
    messages through the template, plain text with EOS appended; the completion starts where the
    prompt and prompt+completion encodings diverge. ``None`` when the prompt fills ``max_length``."""
    from trl.data_utils import common_prefix_length, is_conversational

    if is_conversational(row):
        prompt = list(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True)["input_ids"])
        full = list(tokenizer.apply_chat_template(row["prompt"] + row["completion"])["input_ids"])
    else:
        completion = row["completion"]
        if not completion.endswith(tokenizer.eos_token):
            completion += tokenizer.eos_token
        prompt = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + completion)["input_ids"]
    start = common_prefix_length(prompt, full)
    if start >= max_length:
        return None
    full = full[:max_length]
    return {"input_ids": full, "completion_mask": [0] * start + [1] * (len(full) - start)}
