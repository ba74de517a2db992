"""The ``align`` command line: ``align <command> [options]``, options from ``--config`` YAML and flags."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .config import ConfigError, parse_config

Profile = Literal["full", "tiny", "tiny-bpe", "smollm2"]


@dataclass
class TestbedArgs:
    profile: Profile = field(default="full", metadata={"help": "'full' (capable models, ~20 min), 'tiny' / 'tiny-bpe' (seconds), or 'smollm2' (the real SmolLM2-135M-Instruct, converted from its wheel's GGUF)"})
    seed: int = field(default=0, metadata={"help": "seed of every weight and batch"})
    cache_dir: str | None = field(
        default=None, metadata={"help": "where testbeds live (default: $ALIGNKIT_CACHE or ~/.cache/alignkit)"}
    )

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")


@dataclass
class BuildArgs(TestbedArgs):
    force: bool = field(default=False, metadata={"help": "rebuild even if a complete build is cached"})
    workers: int = field(default=2, metadata={"help": "parallel training processes (1 = in-process)"})
    variants: int = field(
        default=0, metadata={"help": "also build variants 1..N: the fine-tunes retrained under other seeds (claims use 2)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.workers < 1 or self.variants < 0:
            raise ConfigError(f"workers must be >= 1 and variants >= 0, got {self.workers}, {self.variants}")


@dataclass
class InfoArgs(TestbedArgs):
    json: bool = field(default=False, metadata={"help": "print the manifest as JSON"})


@dataclass
class DatasetsArgs:
    out: str = field(default="data", metadata={"help": "directory for the JSONL samples"})
    n: int = field(default=16, metadata={"help": "rows per split in each sample"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})


@dataclass
class ReproduceArgs(TestbedArgs):
    n: int = field(default=500, metadata={"help": "held-out problems to evaluate on"})
    out: str = field(default="runs/reproduce", metadata={"help": "results go to OUT/NAME/result.json"})
    group: Literal["testbed", "real"] = field(
        default="testbed", metadata={"help": "--all: the testbed's claims, or the real model's (SmolLM2-135M-Instruct + CoCoNot, ~30 min)"}
    )
    testbed_seeds: str = field(
        default="", metadata={"help": "base builds, e.g. 0,1,2 (each built with `align testbed build --seed S --variants 2`): "
                                      "claims that can afford it bootstrap over builds, then seeds, then prompts (~16 min for all of them here)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.group not in ("testbed", "real"):
            raise ConfigError(f"group must be testbed or real, got {self.group!r}")
        parts = [p.strip() for p in self.testbed_seeds.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
            raise ConfigError(f"testbed_seeds must be distinct seeds >= 0 separated by commas (e.g. 0,1,2), got {self.testbed_seeds!r}")
        self.build_seeds = tuple(int(p) for p in parts) or (self.seed,)


# Commands that later issues implement; they exist now so scripts and docs can name them.
USAGE = """usage: align <command> [options]

commands:
  quickstart          build the full testbed (cached), train RPO and a reward ensemble, evaluate base /
                      EFT / EAD / the large base (greedy) and RPO / best-of-8 (T=1) on accuracy and the
                      fine-tuned behaviours, with intervals, and write runs/quickstart/report.html
  testbed build       build the offline testbed (--profile full|tiny|tiny-bpe|smollm2)
  testbed info        describe a built testbed (--json for machine-readable output)
  testbed datasets    write small samples of every dataset format (default: ./data)
  train dpo|rpo       DPO / f-DPO / RPO on TRL's DPOTrainer (--config configs/dpo-testbed.yaml)
  train reward        Bradley-Terry reward-model ensemble: classifiers or DPO implicit rewards (--config configs/reward-testbed.yaml)
  data ches           score preference pairs by (LN-)CHES, optionally keep the safest (writes a dataset)
  data coconot        refusal-token SFT rows from CoCoNot with a fixed train/dev/test split (data/refusal/coconot)
  train bco           BCO on unpaired thumbs-up/down data, optional UDM (--config configs/bco-testbed.yaml)
  train score         SCoRe two-turn self-correction RL, Stage I then II (--config configs/score-testbed.yaml)
  train refusal       refusal-token SFT: [refuse]/[respond] or per-category tokens (--config configs/refusal-testbed.yaml)
  generate            run a decoding method (plain, eft, dlf, steer, negative, gedi, refusal, ead) on prompts
  fuse                write an EFT or DLF composite that vLLM serves as one model
  eval                systems (model + decoding method) x prompt sets x scorers: per-sample JSONL and a
                      summary with intervals (--config configs/eval-testbed.yaml)
  report RUN_DIR...   one self-contained HTML page (tables with intervals, plots, sample browser, side by
                      side) and a Markdown summary from eval runs and reproduce results (-o report.html)
  reproduce NAME      check a paper claim on the testbed ({claims});
                      --all runs every one (reusing finished results) into one table, claims.json;
                      --all --group real: the real-model claims (SmolLM2 + CoCoNot), claims-real.json;
                      --readme [DIR] publishes DIR's results to data/claims and regenerates the claims tables (README, docs)
Every command takes --config file.yaml; flags given on the command line override its keys.
Run `align <command> --help` for a command's options.
"""


def _usage() -> str:
    from .claims import CLAIMS

    return USAGE.format(claims=", ".join(CLAIMS))


def _testbed_build(argv: Sequence[str], prog: str) -> int:
    from .testbed import build_testbed, build_variant

    args = parse_config(BuildArgs, argv, prog=prog)
    tb = build_testbed(args.profile, args.seed, args.cache_dir, force=args.force, workers=args.workers)
    print(f"testbed ready: {tb.root}")
    _print_table(tb.manifest)
    for k in range(1, args.variants + 1):
        variant = build_variant(tb, k, args.workers)
        print(f"variant {k} ready: {variant.root}")
        _print_table(variant.manifest)
    return 0


def _testbed_info(argv: Sequence[str], prog: str) -> int:
    from .testbed import load_testbed

    args = parse_config(InfoArgs, argv, prog=prog)
    tb = load_testbed(args.profile, args.seed, args.cache_dir)
    if args.json:
        print(json.dumps(tb.manifest, indent=2))
    else:
        print(f"testbed: {tb.root}")
        _print_table(tb.manifest)
    return 0


def _testbed_datasets(argv: Sequence[str], prog: str) -> int:
    from .testbed.datasets import write_samples

    args = parse_config(DatasetsArgs, argv, prog=prog)
    for path in write_samples(args.out, n=args.n, seed=args.seed):
        print(path)
    return 0


def _train_dpo(argv: Sequence[str], prog: str, loss: str) -> int:
    from .trainers.dpo import DPOArgs, train_dpo

    args = parse_config(DPOArgs, argv, prog=prog, defaults={"loss": loss})
    if args.loss != loss:  # the command names the objective; a config saying otherwise is a mistake
        raise ConfigError(f"loss: {args.loss!r} contradicts `{prog}`; use `align train {args.loss}` or drop the key")
    print(json.dumps(train_dpo(args), indent=2))
    print(f"model saved to {args.output_dir}")
    return 0


def _trainer(module: str, config: str, train: str, saved: str = "model") -> Callable[[Sequence[str], str], int]:
    """The ``align train NAME`` handler of ``align.trainers.<module>``: parse its config, train,
    print the result (imports stay lazy so ``align --help`` does not load torch)."""

    def run(argv: Sequence[str], prog: str) -> int:
        trainers = importlib.import_module(f"align.trainers.{module}")
        args = parse_config(getattr(trainers, config), argv, prog=prog)
        print(json.dumps(getattr(trainers, train)(args), indent=2))
        print(f"{saved} saved to {args.output_dir}")
        return 0

    return run


def _data_ches(argv: Sequence[str], prog: str) -> int:
    from .diagnostics.ches import CHESArgs, run_ches

    path, summary = run_ches(parse_config(CHESArgs, argv, prog=prog))
    print(json.dumps(summary, indent=2))
    print(f"written: {path}")
    return 0


@dataclass
class CoconotArgs:
    model: str = field(default="testbed:smollm2-135m-instruct", metadata={"help": "the model that answers the contrast prompts"})
    out: str = field(default="data/refusal/coconot", metadata={"help": "directory for train/dev/test.jsonl and manifest.json"})
    cache_dir: str | None = field(default=None, metadata={"help": "testbed cache directory (for testbed:NAME)"})


def _data_coconot(argv: Sequence[str], prog: str) -> int:
    from .coconot import write_coconot

    args = parse_config(CoconotArgs, argv, prog=prog)
    for path in write_coconot(args.model, args.out, args.cache_dir):
        print(f"written: {path}")
    return 0


def _fuse(argv: Sequence[str], prog: str) -> int:
    from .fuse import FuseArgs, run_fuse

    print(f"written: {run_fuse(parse_config(FuseArgs, argv, prog=prog))}")
    return 0


def _generate(argv: Sequence[str], prog: str) -> int:
    from .generate import GenerateArgs, run_generate

    path = run_generate(parse_config(GenerateArgs, argv, prog=prog))
    print(f"written: {path}")
    return 0


def _eval(argv: Sequence[str], prog: str) -> int:
    from .eval.run import EvalArgs, run_eval

    path = run_eval(parse_config(EvalArgs, argv, prog=prog))
    print(f"written: {path} (samples: {path.parent / 'samples.jsonl'})")
    return 0


def _report(argv: Sequence[str], prog: str) -> int:
    from .report import ReportArgs, render

    runs = []
    argv = list(argv)
    while argv and not argv[0].startswith("-"):
        runs.append(argv.pop(0))
    argv = ["--output" if a == "-o" else a for a in argv]
    args = parse_config(ReportArgs, argv, prog=prog, defaults={"runs": runs} if runs else None)
    page, md = render(args)
    print(md.read_text())
    print(f"written: {page} and {md}")
    return 0


def _reproduce(argv: Sequence[str], prog: str) -> int:
    from .claims import CLAIMS, profile_of, reproduce

    if argv and argv[0] == "--readme":  # results -> data/claims -> the README's table
        from .claims.table import publish, update_readme

        names = publish(argv[1] if len(argv) > 1 else "runs/reproduce", "data/claims")  # run from the repository root
        print(f"published {', '.join(names) or 'nothing'}; written: {update_readme('README.md', 'data/claims', 'docs/claims.md')}")
        return 0
    if argv and argv[0] == "--all":
        from .claims import reproduce_all

        args = parse_config(ReproduceArgs, argv[1:], prog=f"{prog} --all")
        profile = "smollm2" if args.group == "real" else args.profile
        builds = _builds(profile, args)
        rows, path = reproduce_all(builds[0], args.n, args.out, group=args.group, builds=builds)
        for row in rows:
            print(f"{row['name']:<22} value {row['value']!s:<8} baseline {row['baseline']!s:<8} {row.get('status') or ('holds' if row['holds'] else 'does not hold')}")
        print(f"written: {path} (render it: align report {args.out})")
        return 0
    if not argv or argv[0].startswith("-"):
        raise ConfigError(f"name a claim: {prog} NAME (or --all), with NAME one of {', '.join(CLAIMS)}")
    name, rest = argv[0], argv[1:]
    if name not in CLAIMS:
        raise ConfigError(f"unknown claim {name!r}; available: {', '.join(CLAIMS)}")
    args = parse_config(ReproduceArgs, rest, prog=f"{prog} {name}")
    builds = _builds(profile_of(name, args.profile), args)
    result, path = reproduce(name, builds[0], args.n, args.out, builds)
    print(json.dumps(result, indent=2))
    print(f"written: {path}")
    return 0


def _builds(profile: str, args: ReproduceArgs) -> list:
    """The base builds ``--testbed-seeds`` names (or ``--seed``'s alone), every one loaded before any claim runs."""
    from .testbed import load_testbed

    if profile == "smollm2" and len(args.build_seeds) > 1:
        raise ConfigError("testbed_seeds: the real model (smollm2) has one build; drop --testbed-seeds for the real group")
    return [load_testbed(profile, seed, args.cache_dir) for seed in args.build_seeds]


@dataclass
class QuickstartArgs(BuildArgs):
    out: str = field(default="runs/quickstart", metadata={"help": "trained models, eval runs and report.html go here"})
    n_eval: int = field(default=500, metadata={"help": "held-out problems to evaluate on"})


def _quickstart(argv: Sequence[str], prog: str) -> int:
    """Build the testbed, train RPO and a reward ensemble, evaluate greedy and sampled systems, write the report."""
    from .quickstart import quickstart

    from .testbed import load_testbed

    args = parse_config(QuickstartArgs, argv, prog=prog)
    result = quickstart(args.profile, args.seed, args.cache_dir, args.out, args.n_eval, args.workers)
    _print_table(load_testbed(args.profile, args.seed, args.cache_dir).manifest)
    print("\n" + result["markdown"].read_text())  # the report's scoreboard, its sentences and the comparisons
    print(f"seconds: {result['seconds']}")
    print(f"report: {result['report'].resolve()}")
    return 0


def _print_table(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"testbed {manifest['profile']} (seed {manifest['seed']}, {manifest['eval_size']} held-out)")
    columns = ("model", "params", "hidden x layers", "FLOPs/token x", "format", "accuracy", "acc +", "acc -", "entropy AUROC",
               "a/0 refused", "big refused", "a/1 answered")
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "format") else "right", no_wrap=column == "model")

    def pct(m: dict, key: str) -> str:
        return f"{m[key]:.3f}" if key in m else "-"

    for name, m in manifest["models"].items():
        shape = f"{m['size']['hidden']} x {m['size']['layers']}"
        table.add_row(
            name, f"{m['params']:,}", shape, f"{m['cost_ratio']:.2f}", m["format"],
            pct(m, "accuracy"), pct(m, "accuracy_add"), pct(m, "accuracy_sub"), pct(m, "entropy_auroc"),
            pct(m, "refuse_ill_posed"), pct(m, "refuse_beyond_horizon"), pct(m, "contrast_answered"),
        )
    console = Console(width=None if sys.stdout.isatty() else 200)  # no wrapping in logs and pipes
    console.print(table)
    for row in manifest.get("checks", []):
        mark = "[green]PASS[/green]" if row["passed"] else "[red]FAIL[/red]"
        console.print(f"{mark} {row['check']}: {row['value']}")


COMMANDS = {
    ("quickstart",): _quickstart,
    ("testbed", "build"): _testbed_build,
    ("testbed", "info"): _testbed_info,
    ("testbed", "datasets"): _testbed_datasets,
    ("reproduce",): _reproduce,
    ("generate",): _generate,
    ("fuse",): _fuse,
    ("eval",): _eval,
    ("report",): _report,
    ("train", "dpo"): lambda argv, prog: _train_dpo(argv, prog, "dpo"),
    ("train", "rpo"): lambda argv, prog: _train_dpo(argv, prog, "rpo"),
    ("train", "bco"): _trainer("bco", "BCOArgs", "train_bco"),
    ("train", "reward"): _trainer("reward_model", "RewardArgs", "train_reward", saved="ensemble"),
    ("train", "refusal"): _trainer("refusal", "RefusalArgs", "train_refusal"),
    ("train", "score"): _trainer("score", "ScoreArgs", "train_score"),
    ("data", "ches"): _data_ches,
    ("data", "coconot"): _data_coconot,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    for words, handler in COMMANDS.items():
        if tuple(argv[: len(words)]) == words:
            prog = "align " + " ".join(words)
            try:
                return handler(argv[len(words) :], prog)
            except (ConfigError, FileNotFoundError) as err:
                print(f"{prog}: error: {err}", file=sys.stderr)
                return 2
    print(f"align: error: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
