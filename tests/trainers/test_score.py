"""SCoRe trainer: the first logged loss equals a naive recomputation of the episodes it sampled
(one sequence at a time, per-token k3, shaped rewards and RLOO by hand) on both flavours; the
loss masks of a hand-built episode; greedy evaluation's E4 metrics; bad input named early."""

import math
import textwrap

import pytest
import torch

from align.cli import main
from align.config import ConfigError
from align.diagnostics.entanglement import sequence_logp
from align.metrics import self_correction_metrics
from align.trainers.score import ScoreArgs, ScoreTrainer, check_rewards, completion_mask, pack_episodes, train_score
from resume import kill_then_resume


def parity(prompts, completions, answer, **_):
    """A reward with variance on untrained models: 1 for an odd-length answer."""
    return [float(len(c[-1]["content"]) % 2) for c in completions]


def token_logps(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float(), -1)
    return logp.gather(-1, ids[0, len(prompt) :, None])[:, 0].tolist()


def _args(testbed, tmp_path, **kw):
    base = dict(profile=testbed.manifest["profile"], cache_dir=str(testbed.root.parents[1]), n_train=16,
                stage1_steps=0, stage2_steps=1, per_device_train_batch_size=2, num_generations=3, max_new_tokens=12,
                logging_steps=1, learning_rate=1e-3, output_dir=str(tmp_path / "score"), report_to=[],
                save_strategy="no", disable_tqdm=True, ref_model="testbed:small-base")
    return ScoreArgs(**{**base, **kw})


def test_completion_mask_by_hand():
    # prompts of 3 and 2 tokens, completions of 2 and 3: position t predicts token t+1
    mask = completion_mask([3, 2], [2, 3], width=6)
    assert mask.tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 1, 0]]


def test_pack_episodes_reads_a_first_turn_from_its_second_turn_row_when_it_is_a_prefix():
    # episode 0: x2 starts with x1 + y1 (shared row); episode 1: the attempt was re-tokenized (own row)
    seqs, rows1 = pack_episodes([[7, 8], [7, 8]], [[3, 4], [3, 5]], [[7, 8, 3, 4, 1], [7, 8, 35, 1]], [[6], [6, 2]])
    assert seqs == [[7, 8, 3, 4, 1, 6], [7, 8, 35, 1, 6, 2], [7, 8, 3, 5]]
    assert rows1 == [0, 2]


def test_first_loss_equals_a_naive_recomputation(testbed, tmp_path, monkeypatch):
    recorded = []
    original = ScoreTrainer.episodes

    def keep(self, rows, n, greedy=False):
        ep = original(self, rows, n, greedy)
        recorded.append((rows, ep))
        return ep

    monkeypatch.setattr(ScoreTrainer, "episodes", keep)
    args = _args(testbed, tmp_path, seed=1)  # a seed whose episodes earn some reward on both flavours
    log = train_score(args, reward_fn=parity)["log_history"][0]
    (rows, ep), = recorded
    policy, ref = testbed.model("small-instruct"), testbed.model("small-base")
    r = []
    for texts, finished in zip(ep["texts"], ep["finished"]):
        r.append(torch.tensor([float(len(t) % 2) * f for t, f in zip(texts, finished)]))
    r1, r2 = r
    w1, w2 = r1, r2 + 10.0 * (r2 - r1)  # Stage II, α = 10
    adv = [w.view(-1, 3) - (w.view(-1, 3).sum(-1, keepdim=True) - w.view(-1, 3)) / 2 for w in (w1, w2)]
    loss = 0.0
    with torch.no_grad():
        for i in range(len(r1)):
            for turn, (x, y) in enumerate(((ep["x1"][i], ep["y1"][i]), (ep["x2"][i], ep["y2"][i]))):
                lp = sequence_logp(policy, x, y).item()
                token = [token_logps(m, x, y) for m in (policy, ref)]  # one unpadded sequence per forward
                kl = sum(math.exp(r - p) - (r - p) - 1 for p, r in zip(*token))
                loss += -float(adv[turn].flatten()[i]) * lp + 0.01 * kl
    assert len(r1) == 2 * 3 and bool((torch.cat([r1, r2]) > 0).any())  # something to reinforce
    assert log["loss"] == pytest.approx(loss / len(r1), rel=1e-4, abs=1e-5)
    assert log["reward/t2_minus_t1"] == pytest.approx(float((r2 - r1).mean()), abs=1e-7)
    assert log["stage"] == 2
    # the instruction is a user turn after the first attempt, in the second prompt. Both ways of
    # reading turn 1 met the naive loss: on characters a finished attempt renders back to its own
    # ids and shares the second turn's row; the tiny BPE model ends with <|endoftext|>, which the
    # template renders as <|im_end|>, so there every first turn has a row of its own
    assert ep["x2"][0][: len(ep["x1"][0])] == ep["x1"][0]
    _, rows1 = pack_episodes(ep["x1"], ep["y1"], ep["x2"], ep["y2"])
    shared = [i for i, row in enumerate(rows1) if row == i]
    # a row is shared exactly when the second prompt starts with the attempt's own ids
    starts = [i for i, (x1, y1, x2) in enumerate(zip(ep["x1"], ep["y1"], ep["x2"])) if x2[: len(x1) + len(y1)] == x1 + y1]
    assert shared == starts
    if testbed.manifest["profile"] == "tiny":
        assert shared and shared == [i for i, f in enumerate(ep["finished"][0]) if f]


def test_greedy_evaluation_reports_self_correction_metrics(testbed, tmp_path):
    from decoding.generate import generate_ids

    args = _args(testbed, tmp_path, dataset_test_split="eval", eval_strategy="steps", eval_steps=1,
                 learning_rate=0.0, per_device_eval_batch_size=100, n_eval=24)
    log = next(h for h in train_score(args, reward_fn=parity)["log_history"] if "eval_acc_t1" in h)
    # naive: greedy two-turn episodes one problem at a time with the (unchanged, lr 0) policy
    from align.testbed.datasets import self_correction

    tok, model = testbed.tokenizer(), testbed.model("small-instruct")
    c1, c2 = [], []
    for row in self_correction(16, 24, 0, conversational=True)["eval"]:
        x1 = tok.apply_chat_template(row["prompt"], add_generation_prompt=True)["input_ids"]
        y1 = tok.decode(generate_ids(model, tok, [x1], do_sample=False, max_new_tokens=12)[0], skip_special_tokens=True)
        turns = row["prompt"] + [{"role": "assistant", "content": y1}, {"role": "user", "content": args.instruction}]
        x2 = tok.apply_chat_template(turns, add_generation_prompt=True)["input_ids"]
        y2 = tok.decode(generate_ids(model, tok, [x2], do_sample=False, max_new_tokens=12)[0], skip_special_tokens=True)
        c1.append(len(y1) % 2 == 1)
        c2.append(len(y2) % 2 == 1)
    expected = self_correction_metrics(c1, c2)
    assert {k: log[f"eval_{k}"] for k in expected} == pytest.approx(expected)


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ConfigError, match="instruction must be non-empty"):
        ScoreArgs(instruction="  ")
    with pytest.raises(ConfigError, match="rollout_backend vllm loads full weights"):
        ScoreArgs(rollout_backend="vllm", lora_r=4)
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
        ScoreArgs(temperature=0.0)  # accepted before, then crashed in the sampler
    with pytest.raises(ValueError, match="reward 'r' must return a list of 2 numbers, got 1"):
        check_rewards([1.0], 2, "r")
    with pytest.raises(ValueError, match="returned nan for completion 1"):
        check_rewards([1.0, float("nan")], 2, "r")
    with pytest.raises(ValueError, match="returned 'x' for completion 0"):
        check_rewards(["x", 1.0], 2, "r")
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n')
    # the model does not exist: the row error comes first
    assert main(["train", "score", "--dataset", str(data), "--model", str(tmp_path / "missing")]) == 2
    with pytest.raises(ConfigError, match="row 1: field 'answer'"):
        train_score(ScoreArgs(dataset=str(data), model=str(tmp_path / "missing")))


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from align.trainers.score import ScoreArgs, train_score

    def parity(prompts, completions, answer, **_):
        return [float(len(c[-1]["content"]) % 2) for c in completions]

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)

    args = ScoreArgs(profile="tiny", cache_dir=sys.argv[1], output_dir=sys.argv[2], n_train=24, stage1_steps=3,
                     stage2_steps=3, per_device_train_batch_size=2, num_generations=2, max_new_tokens=8,
                     logging_steps=1, save_steps=2, learning_rate=1e-3, ref_model="testbed:small-base",
                     resume=True, metrics_file=sys.argv[2] + ".json", disable_tqdm=True)
    train_score(args, reward_fn=parity, callbacks=[Kill()])
""")


def test_sigkill_mid_stage_then_resume_ends_like_an_uninterrupted_run(tiny_testbed, tmp_path):
    """Killed at step 3 (Stage I; last checkpoint: 2) and resumed into Stage II: the six losses and
    the final weights equal the uninterrupted run's (the episodes are seeded per step)."""
    from safetensors.torch import load_file

    a, b = kill_then_resume(KILL_SCRIPT, tmp_path, str(tiny_testbed.root.parents[1]), 3, ["checkpoint-2"])
    assert [h["stage"] for h in a["log_history"] if "stage" in h] == [1, 1, 1, 2, 2, 2]
    assert len(b["losses"]) == 6 and b["losses"] == pytest.approx(a["losses"], abs=1e-6)  # 1-2 from the checkpoint
    wa, wb = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("straight", "killed"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_reward_specs():
    from align.trainers.score import load_reward, verifier_reward

    assert load_reward("verifier") is verifier_reward
    math = load_reward("math")
    rows = [[{"role": "assistant", "content": "The answer is \\boxed{42}."}], [{"role": "assistant", "content": "41"}]]
    assert math(prompts=["q", "q"], completions=rows, answer=["#### 42", "42"]) == [1.0, 0.0]
    assert verifier_reward(["q"], [[{"role": "assistant", "content": "42"}]], answer=["42"]) == [1.0]
    with pytest.raises(ConfigError, match="reward must be"):
        ScoreArgs(reward="gold")
