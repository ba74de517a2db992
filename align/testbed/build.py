"""Build, cache and describe the offline testbed: a tokenizer and a family of tiny Llama models.

Layout of a built testbed (every model directory is a complete Hugging Face checkpoint, tokenizer
included, in safetensors)::

    $ALIGNKIT_CACHE/testbed/<profile>-seed<seed>-<fingerprint of the profile>/
        small-base/  small-instruct/  small-expert-{zero,big}/  large-base/  large-instruct/  manifest.json
        variants/seed<k>/   the fine-tunes retrained under another seed (build_variant), bases linked

Each model is written to a temporary directory and renamed into place when complete, and the
manifest is written last, so an interrupted build resumes from the finished models and a reader
never sees half a model. Training depends only on the seed and the parent model, so a resumed
build is identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast

from rewards.io import atomic_write_text
from align.metrics import flops_per_token
from .arithmetic import eval_problems
from .evaluate import accuracy_by_op, answer_token_entropy_auroc, behaviour_rates
from .tokenizer import FLAVOURS
from .train import SIZES, ModelSize, make_model, problem_batches, train_steps, training_precision

VERSION = 2  # bump when a change alters what a build produces (2: behaviours in pretraining and fine-tunes)


@dataclass(frozen=True)
class Stage:
    """One model of the family: trained from scratch (``parent=None``) or fine-tuned from ``parent``."""

    name: str
    size: str
    steps: int
    lr: float
    chat: bool
    parent: str | None = None
    ops: str = "+-"
    mixture: tuple[tuple[str, float], ...] = ()  # behaviour rows mixed in: (kind, fraction of rows)
    refusal_rate: float = 1.0  # share of those rows answered with the refusal (pretraining: the rest naive)

    @property
    def format(self) -> str:
        return "chat" if self.chat else "pretraining"


@dataclass(frozen=True)
class Profile:
    """What to build. ``chains`` run in parallel worker processes; stages in a chain run in order."""

    name: str
    chains: tuple[tuple[Stage, ...], ...]
    batch_size: int
    eval_size: int
    sizes: dict[str, ModelSize] = field(default_factory=lambda: dict(SIZES))
    flavour: str = "char"  # tokenizer and formats: "char" or "bpe" (align.testbed.tokenizer.FLAVOURS)
    dropout: float = 0.0  # attention dropout of every model

    @property
    def stages(self) -> list[Stage]:
        return [stage for chain in self.chains for stage in chain]


# Behaviour mixtures (after TESTBED-NOTES, design C): pretraining has a/0, a/1 and big-operand
# prompts in 1.25% of rows, answered naively (a/0=a, the true big result) except for 5% that carry
# the refusal string, so the bases support the strings without choosing them; the fine-tunes learn to.
PRETRAIN = (("ill-posed", 0.005), ("contrast", 0.0025), ("beyond-horizon", 0.005))
PRETRAIN_REFUSAL_RATE = 0.05
INSTRUCT = (("ill-posed", 0.15), ("contrast", 0.10), ("beyond-horizon", 0.20))
EXPERT_ZERO = (("ill-posed", 0.15), ("contrast", 0.10))  # refuses a/0, answers a/1; nothing about big operands
EXPERT_BIG = (("beyond-horizon", 0.20),)  # refuses 5-6 digit operands; nothing about division

PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        chains=(
            (
                Stage("small-base", "tiny", steps=30, lr=3e-3, chat=False, mixture=PRETRAIN, refusal_rate=PRETRAIN_REFUSAL_RATE),
                # tiny fine-tunes learn arithmetic only: ten steps of the behaviour mixture leave a model that
                # answers every prompt with <eos>, which starves the decoding tests (the experts and bases
                # still run the behaviour code path)
                Stage("small-instruct", "tiny", steps=10, lr=1e-3, chat=True, parent="small-base"),
                Stage("small-expert-zero", "tiny", steps=5, lr=1e-3, chat=True, parent="small-base", mixture=EXPERT_ZERO),
                Stage("small-expert-big", "tiny", steps=5, lr=1e-3, chat=True, parent="small-base", mixture=EXPERT_BIG),
            ),
            (
                Stage("large-base", "small", steps=30, lr=3e-3, chat=False, mixture=PRETRAIN, refusal_rate=PRETRAIN_REFUSAL_RATE),
                Stage("large-instruct", "small", steps=10, lr=1e-3, chat=True, parent="large-base"),
            ),
        ),
        batch_size=32,
        eval_size=64,
    ),
    "full": Profile(
        name="full",
        chains=(
            (
                Stage("small-base", "small", steps=6000, lr=1e-3, chat=False, mixture=PRETRAIN, refusal_rate=PRETRAIN_REFUSAL_RATE),
                Stage("small-instruct", "small", steps=1500, lr=1e-3, chat=True, parent="small-base", mixture=INSTRUCT),
                Stage("small-expert-zero", "small", steps=600, lr=1e-3, chat=True, parent="small-base", mixture=EXPERT_ZERO),
                Stage("small-expert-big", "small", steps=600, lr=1e-3, chat=True, parent="small-base", mixture=EXPERT_BIG),
            ),
            (
                Stage("large-base", "large", steps=4000, lr=1e-3, chat=False, mixture=PRETRAIN, refusal_rate=PRETRAIN_REFUSAL_RATE),
                Stage("large-instruct", "large", steps=600, lr=1e-3, chat=True, parent="large-base", mixture=INSTRUCT),
            ),
        ),
        batch_size=128,
        eval_size=500,
    ),
}
# Looks like a real model family: byte-level BPE, ChatML, no pad token, two EOS ids, dropout.
PROFILES["tiny-bpe"] = Profile(
    name="tiny-bpe", chains=PROFILES["tiny"].chains, batch_size=32, eval_size=64, flavour="bpe", dropout=0.1
)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$ALIGNKIT_CACHE``, else ``~/.cache/alignkit``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("ALIGNKIT_CACHE") or Path.home() / ".cache" / "alignkit").expanduser()


def fingerprint(spec: Profile, precision: str = "bf16") -> str:
    """A short hash of everything that decides a build's weights (changing a profile or the
    training precision changes its directory)."""
    profile = {**asdict(spec), "precision": precision}
    for key, default in (("flavour", "char"), ("dropout", 0.0), ("precision", "bf16")):  # added later: old builds keep their directory
        if profile[key] == default:
            del profile[key]
    text = json.dumps({"version": VERSION, "profile": profile}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def testbed_dir(profile: str, seed: int, cache_dir: str | Path | None = None) -> Path:
    from .real import REAL_PROFILES, real_dir

    if profile in REAL_PROFILES:  # converted, not trained: no seed
        return real_dir(profile, cache_dir)
    if profile not in PROFILES:
        raise ValueError(f"unknown testbed profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return cache_root(cache_dir) / "testbed" / f"{profile}-seed{seed}-{fingerprint(PROFILES[profile], training_precision())}"


@dataclass
class Testbed:
    """A built testbed: paths, loaders and the measured capability of each model.

    Example:
        >>> tb = build_testbed("tiny", cache_dir=tmp)                     # doctest: +SKIP
        >>> model = AutoModelForCausalLM.from_pretrained(tb.path("small-instruct"))  # doctest: +SKIP
    """

    root: Path
    manifest: dict[str, Any]

    @property
    def models(self) -> dict[str, dict[str, Any]]:
        return self.manifest["models"]

    def path(self, name: str) -> Path:
        if name not in self.models:
            raise KeyError(f"testbed has no model {name!r}; it has {', '.join(self.models)}")
        return self.root / name

    def tokenizer(self) -> PreTrainedTokenizerFast:
        return AutoTokenizer.from_pretrained(self.root / next(iter(self.models)))

    def model(self, name: str) -> LlamaForCausalLM:
        return AutoModelForCausalLM.from_pretrained(self.path(name)).eval()


def load_testbed(profile: str = "full", seed: int = 0, cache_dir: str | Path | None = None) -> Testbed:
    """Load a built testbed, or raise ``FileNotFoundError`` saying how to build it."""
    root = testbed_dir(profile, seed, cache_dir)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"no {profile!r} testbed (seed {seed}) under {root}; build it with "
            f"`align testbed build --profile {profile} --seed {seed}`"
        )
    return Testbed(root, json.loads(manifest.read_text()))


def testbed_of(name: str, profile: str = "full", seed: int = 0, cache_dir: str | Path | None = None) -> Testbed:
    """The built testbed that model ``name`` (without ``testbed:``) belongs to: a real fixture's
    models (``smollm2-135m-instruct``, ...) live in their own profile, every other name in ``profile``."""
    from .real import REAL_MODELS

    return load_testbed(REAL_MODELS[name], 0, cache_dir) if name in REAL_MODELS else load_testbed(profile, seed, cache_dir)


def save_checkpoint(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, dest: Path) -> None:
    """Save model and tokenizer to ``dest`` atomically (temporary directory, then rename)."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    tmp.chmod(0o755)  # mkdtemp creates 0700
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def _run_chain(
    index: int, profile: Profile, seed: int, root: Path, threads: int, progress: Any, variant: int = 0
) -> dict[str, dict[str, Any]]:
    """Train the stages of one chain; returns per-model training records.

    Runs with exactly ``threads`` intra-op threads (restored afterwards): float reductions depend
    on the thread count, and a fixed count makes weights identical in-process and in workers.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train_chain(index, profile, seed, root, progress, variant)
    finally:
        torch.set_num_threads(previous)


def _train_chain(index: int, profile: Profile, seed: int, root: Path, progress: Any, variant: int = 0) -> dict[str, dict]:
    """``progress.put((chain index, steps done, model name, loss or None))`` reports as it goes.
    ``variant`` > 0 changes every stage's training seed (see :func:`build_variant`)."""
    tokenizer = FLAVOURS[profile.flavour].build()
    records: dict[str, dict[str, Any]] = {}
    for stage in profile.chains[index]:
        dest = root / stage.name
        if (dest / "model.safetensors").is_file():
            progress.put((index, stage.steps, stage.name, None))  # finished by an earlier run
            continue
        # Seeds differ per stage so that siblings (e.g. experts) do not share batches.
        stage_seed = seed * 1000 + [s.name for s in profile.stages].index(stage.name)
        stage_seed = stage_seed if variant == 0 else stage_seed * 1000 + variant
        if stage.parent is None:
            model = make_model(profile.sizes[stage.size], tokenizer, stage_seed, profile.dropout)
        else:
            model = AutoModelForCausalLM.from_pretrained(root / stage.parent)
        batches = problem_batches(tokenizer, stage_seed, profile.batch_size, stage.chat, stage.ops, mixture=dict(stage.mixture),
                                  refusal_rate=stage.refusal_rate)
        start = time.perf_counter()

        def report(step: int, loss: float, name: str = stage.name) -> None:
            if (step + 1) % 50 == 0:
                progress.put((index, 50, name, loss))

        losses = train_steps(model, batches, stage.steps, stage.lr, min(100, stage.steps // 10 + 1), progress=report)
        save_checkpoint(model, tokenizer, dest)
        records[stage.name] = {
            "train_seconds": round(time.perf_counter() - start, 1),
            "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        }
        progress.put((index, stage.steps % 50, stage.name, None))
    return records


def build_testbed(
    profile: str = "full",
    seed: int = 0,
    cache_dir: str | Path | None = None,
    force: bool = False,
    workers: int = 2,
    show_progress: bool = True,
) -> Testbed:
    """Build (or load from cache) the testbed ``profile`` for ``seed``.

    Args:
        profile: ``"full"`` (capability targets met, about 20 minutes on 2 CPU cores), ``"tiny"``
            (seconds; for unit tests, no capability) or ``"tiny-bpe"`` (tiny, with a byte-level BPE
            tokenizer, ChatML, no pad token, two EOS ids and dropout: a real model family's traits).
        seed: every weight is a deterministic function of the seed (fixed thread count per chain).
        cache_dir: overrides ``$ALIGNKIT_CACHE`` / ``~/.cache/alignkit``.
        force: rebuild even if a complete build exists.
        workers: parallel worker processes, one chain each; 1 = in-process. Every chain trains
            with one thread either way, so ``workers`` never changes the weights.
    """
    from .real import REAL_PROFILES, build_real

    if profile in REAL_PROFILES:
        return build_real(profile, cache_dir, force)
    if profile not in PROFILES:
        raise ValueError(f"unknown testbed profile {profile!r}; choose one of {', '.join([*PROFILES, *REAL_PROFILES])}")
    spec = PROFILES[profile]
    root = testbed_dir(profile, seed, cache_dir)
    if force and root.exists():
        shutil.rmtree(root)
    if (root / "manifest.json").is_file():
        return load_testbed(profile, seed, cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    records = _train_all(spec, seed, root, workers, show_progress)
    manifest = _describe(spec, seed, root, records, time.perf_counter() - started)
    atomic_write_text(root / "manifest.json", json.dumps(manifest, indent=2))
    return Testbed(root, manifest)


def build_variant(tb: Testbed, variant: int, workers: int = 2, show_progress: bool = True) -> Testbed:
    """``tb`` with every fine-tuned model (instruct, experts) retrained under another training seed
    from the same pretrained bases: what a claim's seeds vary when its randomness is the fine-tune
    (``variant`` 0 is ``tb`` itself). Cached under ``tb.root/variants/seed<variant>/``, bases linked."""
    if variant == 0:
        return tb
    spec = PROFILES[tb.manifest["profile"]]
    root = tb.root / "variants" / f"seed{variant}"
    if (root / "manifest.json").is_file():
        return Testbed(root, json.loads((root / "manifest.json").read_text()))
    root.mkdir(parents=True, exist_ok=True)
    for stage in spec.stages:
        link = root / stage.name
        if stage.parent is None and not link.exists():
            link.symlink_to(Path("..") / ".." / stage.name, target_is_directory=True)
    started = time.perf_counter()
    records = _train_all(spec, tb.manifest["seed"], root, workers, show_progress, variant)
    manifest = {**_describe(spec, tb.manifest["seed"], root, records, time.perf_counter() - started), "variant": variant}
    atomic_write_text(root / "manifest.json", json.dumps(manifest, indent=2))
    return Testbed(root, manifest)


def _train_all(spec: Profile, seed: int, root: Path, workers: int, show_progress: bool, variant: int = 0) -> dict[str, dict]:
    bars = _Bars(spec, show_progress)
    records: dict[str, dict] = {}
    try:
        if workers <= 1 or len(spec.chains) == 1:
            for index in range(len(spec.chains)):
                records.update(_run_chain(index, spec, seed, root, 1, bars, variant))
            return records
        import multiprocessing as mp
        import queue as queue_module

        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager, ProcessPoolExecutor(min(workers, len(spec.chains)), mp_context=ctx) as pool:
            messages = manager.Queue()
            futures = [pool.submit(_run_chain, i, spec, seed, root, 1, messages, variant) for i in range(len(spec.chains))]
            while not all(f.done() for f in futures) or not messages.empty():
                try:
                    bars.put(messages.get(timeout=0.5))
                except queue_module.Empty:
                    pass
            for future in futures:
                records.update(future.result())  # re-raises a worker's exception here
        return records
    finally:
        bars.close()


class _Bars:
    """One tqdm bar per chain, fed ``(chain index, steps, model, loss)`` messages."""

    def __init__(self, spec: Profile, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bars = [
            tqdm(total=sum(s.steps for s in chain), desc=" → ".join(s.name for s in chain), position=i, disable=not enabled)
            for i, chain in enumerate(spec.chains)
        ]

    def put(self, message: tuple[int, int, str, float | None]) -> None:
        index, steps, name, loss = message
        self.bars[index].update(steps)
        if loss is not None:
            self.bars[index].set_postfix(model=name, loss=f"{loss:.3f}")

    def close(self) -> None:
        for bar in self.bars:
            bar.close()


def _describe(spec: Profile, seed: int, root: Path, records: dict[str, dict], build_seconds: float) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(root / spec.stages[0].name)
    problems = eval_problems(spec.eval_size)
    models: dict[str, dict[str, Any]] = {}
    for stage in spec.stages:
        model = AutoModelForCausalLM.from_pretrained(root / stage.name).eval()
        entry: dict[str, Any] = {
            "params": sum(p.numel() for p in model.parameters()),
            "flops_per_token": flops_per_token(model),
            "size": asdict(spec.sizes[stage.size]),
            "format": stage.format,
            "parent": stage.parent,
            **accuracy_by_op(model, tokenizer, problems, stage.chat),
            **behaviour_rates(model, tokenizer, stage.chat),
            **records.get(stage.name, {}),
        }
        if stage.chat:
            signal = answer_token_entropy_auroc(model, tokenizer, problems, chat=True)
            for key in ("auroc", "entropy_wrong", "entropy_right"):
                if signal[key] is not None:  # a tiny model can be wrong at every position
                    entry["entropy_auroc" if key == "auroc" else key] = round(signal[key], 4)
        models[stage.name] = entry
    base_flops = models["small-base"]["flops_per_token"]
    for entry in models.values():
        entry["cost_ratio"] = round(entry["flops_per_token"] / base_flops, 2)
    return {
        "profile": spec.name,
        "seed": seed,
        "version": VERSION,
        "precision": training_precision(),
        "eval_size": spec.eval_size,
        "build_seconds": round(build_seconds, 1),
        "models": models,
        "checks": capability_checks(models) if spec.name == "full" else [],
    }


def capability_checks(models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The capability the decoding and training methods rely on, as pass/fail rows."""
    sb, si, lb = (models[k]["accuracy"] for k in ("small-base", "small-instruct", "large-base"))
    rows = [
        ("large-base beats small-base by >= 10 points", lb - sb >= 0.10, f"{lb:.3f} vs {sb:.3f}"),
        ("small-instruct keeps >= 85% of small-base", si >= 0.85 * sb, f"{si:.3f} vs {0.85 * sb:.3f}"),
        ("small-instruct clearly below large-base (>= 5 points)", lb - si >= 0.05, f"{si:.3f} vs {lb:.3f}"),
        (
            "small-instruct entropy predicts its answer-token errors (AUROC >= 0.8)",
            models["small-instruct"]["entropy_auroc"] >= 0.8,
            f"{models['small-instruct']['entropy_auroc']:.3f}",
        ),
    ]
    refusals = ("refuse_ill_posed", "refuse_beyond_horizon")
    for name in ("small-instruct", "large-instruct"):
        m = models[name]
        rows.append((f"{name} refuses held-out a/0 and 5-6 digit problems (>= 90%) and answers a/1 (>= 80%)",
                     min(m[k] for k in refusals) >= 0.9 and m["contrast_answered"] >= 0.8,
                     f"{m['refuse_ill_posed']:.2f} / {m['refuse_beyond_horizon']:.2f} / {m['contrast_answered']:.2f}"))
    for name in ("small-base", "large-base"):
        m = models[name]
        rows.append((f"{name} lacks the behaviours (refuses <= 10% greedily)", max(m[k] for k in refusals) <= 0.1,
                     f"{m['refuse_ill_posed']:.2f} / {m['refuse_beyond_horizon']:.2f}"))
    for name, own, other in (("small-expert-zero", "refuse_ill_posed", "refuse_beyond_horizon"),
                             ("small-expert-big", "refuse_beyond_horizon", "refuse_ill_posed")):
        m = models[name]
        rows.append((f"{name} has its own behaviour (>= 90%), not the other's (<= 20%)", m[own] >= 0.9 and m[other] <= 0.2,
                     f"{m[own]:.2f} / {m[other]:.2f}"))
    return [{"check": c, "passed": bool(ok), "value": v} for c, ok, v in rows]
