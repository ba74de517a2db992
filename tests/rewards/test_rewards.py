"""rewards: aggregations and ddof by hand, standardisation, LSC, the unbiased best-of-n estimator
against exhaustive enumeration, best-of-n, the TRL adapter called as TRL calls it, bad inputs,
HF reward members and `align train reward` on the tiny testbed."""

import itertools
import math
from pathlib import Path

import pytest
import torch

from rewards import (
    FunctionReward,
    HFRewardModel,
    ReferenceRewards,
    RewardEnsemble,
    TRLRewardFunction,
    Pick,
    Sample,
    aggregate,
    best_of_n,
    combine,
    hf_sampler,
    kl_best_of_n,
    load_ensemble,
    lsc,
    unbiased_best_of_n,
)

S = torch.tensor([[1.0, 2.0], [3.0, 2.0], [8.0, 2.0]])  # 3 members, 2 rows; row 2 all agree


def test_aggregations_by_hand():
    assert aggregate(S, "mean").tolist() == [4.0, 2.0]
    assert aggregate(S, "min").tolist() == [1.0, 2.0]
    assert aggregate(S, "median").tolist() == [3.0, 2.0]
    # population variance of (1, 3, 8) = (9 + 1 + 16) / 3 = 26/3; unbiased = 13
    assert aggregate(S, "uwo", lam=0.5).tolist() == pytest.approx([4 - 0.5 * 26 / 3, 2.0])
    assert aggregate(S, "uwo", lam=0.5, ddof=1).tolist() == pytest.approx([4 - 6.5, 2.0])
    assert aggregate(S, "mean_minus_std", k_s=2.0).tolist() == pytest.approx([4 - 2 * math.sqrt(26 / 3), 2.0])
    assert aggregate(torch.tensor([[1.0], [5.0], [2.0], [10.0]]), "median").tolist() == [3.5]  # even k: middle mean


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="at least 2 members"):
        aggregate(S[:1], "uwo")
    with pytest.raises(ValueError, match="at least 2 members"):
        RewardEnsemble([FunctionReward(lambda p, c: 1.0, "one")], aggregation="uwo")
    with pytest.raises(ValueError, match="member 1 gave a non-finite score .* for row 0"):
        aggregate(torch.tensor([[1.0], [float("nan")]]))
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate(S, "max")
    ens = RewardEnsemble([FunctionReward(lambda p, c: 1.0, "a"), FunctionReward(lambda p, c: float("nan"), "b")])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        ens.score(["x", "y"], ["z"])
    with pytest.raises(ValueError, match="member 1 gave a non-finite"):
        ens.score(["x"], ["z"])
    with pytest.raises(ValueError, match="unique"):
        RewardEnsemble([FunctionReward(len, "a"), FunctionReward(len, "a")])


def test_standardisation_is_frozen_on_the_calibration_set(tmp_path):
    ens = RewardEnsemble([FunctionReward(lambda p, c: 100 * len(c), "big"), FunctionReward(lambda p, c: len(c) / 10, "small")])
    calib = ["a", "abc", "abcde", "abcdefg"]
    ens.fit_standardization(["q"] * 4, calib)
    z = ens.score(["q"] * 4, calib).members
    assert torch.allclose(z.mean(1), torch.zeros(2, dtype=z.dtype), atol=1e-12)
    assert torch.allclose(z.std(1), torch.ones(2, dtype=z.dtype))
    assert torch.allclose(z[0], z[1])  # same ranking on different scales -> identical z-scores
    later = ens.score(["q"], ["abcdefghi"])  # new data does not refit: (9 - 4) / std(1, 3, 5, 7)
    assert later.members[0, 0].item() == pytest.approx(5 / torch.tensor([1.0, 3, 5, 7]).std().item())
    ens.save_standardization(tmp_path / "std.json")
    other = RewardEnsemble(ens.members)
    other.load_standardization(tmp_path / "std.json")
    assert torch.equal(other.score(["q"], ["ab"]).members, ens.score(["q"], ["ab"]).members)
    assert ens.score(["q"], ["ab"]).spread.item() == pytest.approx(0.0, abs=1e-12)


def test_lsc_and_reference_rewards_by_hand():
    assert lsc(torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(0.5))
    assert lsc(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(1 / (1 + math.exp(-2))))
    calls = []

    def sample(prompts, m):
        calls.append(list(prompts))
        return [[str(i) for i in range(m)] for _ in prompts]  # completions "0".."m-1"

    ref = ReferenceRewards(lambda p, c: torch.tensor([float(x) for x in c]), sample, m=5, q=0.5)
    assert ref(["a", "b", "a"]).tolist() == [2.0, 2.0, 2.0]  # median of 0..4
    assert ref(["a", "c"]).tolist() == [2.0, 2.0] and calls == [["a", "b"], ["c"]]  # cached per prompt
    assert ReferenceRewards(lambda p, c: torch.tensor([float(x) for x in c]), sample, m=4, q=None)(["z"]).item() == 1.5
    total = combine({"helpful": torch.tensor([-0.1, -2.0]), "harmless": torch.tensor([-0.2, -0.1])})
    assert total.tolist() == pytest.approx([-0.3, -2.1])
    with pytest.raises(ValueError, match="disagree on shape"):
        combine({"a": torch.zeros(2), "b": torch.zeros(3)})


def test_unbiased_best_of_n_equals_exhaustive_enumeration():
    g = torch.Generator().manual_seed(0)
    proxy, gold = torch.randn(9, generator=g), torch.randn(9, generator=g)
    for n in range(1, 10):
        subsets = list(itertools.combinations(range(9), n))
        brute = sum(float(gold[max(s, key=lambda i: proxy[i])]) for s in subsets) / len(subsets)
        assert unbiased_best_of_n(proxy, gold, n) == pytest.approx(brute, abs=1e-12)
    assert unbiased_best_of_n(proxy, gold, 1) == pytest.approx(float(gold.mean()))
    assert kl_best_of_n(1) == 0.0 and kl_best_of_n(4) == pytest.approx(math.log(4) - 0.75)
    ties = torch.zeros(6)
    assert unbiased_best_of_n(ties, gold[:6], 3, seed=1) == unbiased_best_of_n(ties, gold[:6], 3, seed=1)
    with pytest.raises(ValueError, match="1 <= n <= N"):
        unbiased_best_of_n(proxy, gold, 10)


def test_best_of_n_keeps_the_highest_aggregate():
    def sample(prompts, n):
        return [[p + "x" * k for k in (2, 0, 3, 1)][:n] for p in prompts]

    ens = RewardEnsemble([FunctionReward(lambda p, c: len(c), "len"), FunctionReward(lambda p, c: -abs(len(c) - 3), "near3")])
    picked = best_of_n(["a", "bb"], sample, lambda p, c: ens.score(p, c, "min").aggregate, n=4)
    # min(len, -|len-3|): "axx" -> min(3, 0) = 0 is best for "a"; "bbx" -> min(3, 0) = 0 for "bb"
    assert [c for c, _, _ in picked] == ["axx", "bbx"] and [s for _, s, _ in picked] == [0.0, 0.0]


def test_best_of_n_picks_a_truncated_sample_only_when_nothing_finished(tiny_testbed):
    """hf_sampler keeps generate's finished flag: here the prompt's answer needs more than 1 token."""
    model, tok = tiny_testbed.model("small-instruct"), tiny_testbed.tokenizer()
    prompts = ["12+34=", "5+5="]
    torch.manual_seed(0)
    cut = hf_sampler(model, tok, max_new_tokens=1)(prompts, 3)
    assert [[s.finished for s in row] for row in cut] == [[False] * 3] * 2
    torch.manual_seed(0)
    full = hf_sampler(model, tok, max_new_tokens=12)(prompts, 3)
    assert all(isinstance(s, Sample) and isinstance(s.completion, str) for row in full for s in row)
    assert any(s.finished for row in full for s in row)
    mixed = [[Sample("a" * 9, False), Sample("a", True), Sample("aa", True)], [Sample("b" * 5, False), Sample("b", False)]]
    longest = lambda p, c: torch.tensor([float(len(x)) for x in c])  # noqa: E731
    picks = best_of_n(["p"], lambda prompts, n: mixed[:1], longest, n=3)
    assert picks == [Pick("aa", 2.0, True)]  # the longest finished one, not the truncated 9
    assert best_of_n(["p"], lambda prompts, n: mixed[:1], longest, n=3, prefer_finished=False)[0].completion == "a" * 9
    assert best_of_n(["q"], lambda prompts, n: mixed[1:], longest, n=2) == [Pick("b" * 5, 5.0, False)]


def test_trl_adapter_called_as_trl_calls_reward_functions():
    from trl.trainer.utils import get_callable_name

    ens = RewardEnsemble([FunctionReward(lambda p, c: len(c[-1]["content"]), "len"),
                          FunctionReward(lambda p, c: 2.0 * len(c[-1]["content"]), "twice")])
    fn = TRLRewardFunction(ens, "mean", name="ens")
    logged = {}
    prompts = [[{"role": "user", "content": "1+1="}]] * 2
    completions = [[{"role": "assistant", "content": "2"}], [{"role": "assistant", "content": "11"}]]
    out = fn(prompts=prompts, completions=completions, completion_ids=[[5], [4, 4]], trainer_state=None,
             log_extra=lambda column, values: None, log_metric=lambda name, value: logged.setdefault(name, value),
             answer=["2", "2"])
    assert out == [1.5, 3.0] and all(isinstance(x, float) for x in out)
    assert get_callable_name(fn) == "ens"
    assert logged == {"ens/mean": 2.25, "ens/std": 0.75, "ens/min": 1.5}


@pytest.fixture(scope="module")
def reward_ensemble(tiny_testbed, tmp_path_factory):
    from align.trainers.reward_model import RewardArgs, train_reward

    out = tmp_path_factory.mktemp("rm")
    args = RewardArgs(profile="tiny", cache_dir=str(tiny_testbed.root.parents[1]), n_train=64, ensemble_size=2,
                      label_noise=0.25, max_steps=3, per_device_train_batch_size=8, output_dir=str(out))
    return args, train_reward(args)


def test_train_reward_writes_an_ensemble_and_resumes(reward_ensemble):
    from align.trainers.reward_model import train_reward

    args, manifest = reward_ensemble
    assert [m["seed"] for m in manifest["members"]] == [0, 1] and manifest["pairs"] == 64
    flipped = [m["flipped"] for m in manifest["members"]]
    assert flipped[0] != flipped[1] and all(4 <= f <= 28 for f in flipped)  # ~Binomial(64, 0.25)
    weights = [Path(args.output_dir) / f"member-{i}" / "model.safetensors" for i in (0, 1)]
    stamps = [w.stat().st_mtime_ns for w in weights]
    args.resume = True
    again = train_reward(args)
    assert again["members"] == manifest["members"]
    assert [w.stat().st_mtime_ns for w in weights] == stamps  # finished members are not retrained


def test_disjoint_members_train_on_their_own_slices(tiny_testbed, tmp_path):
    from align.config import ConfigError
    from align.trainers.reward_model import RewardArgs, train_reward

    common = {"profile": "tiny", "cache_dir": str(tiny_testbed.root.parents[1]), "per_device_train_batch_size": 4}
    args = RewardArgs(n_train=10, ensemble_size=3, member_data="disjoint", max_steps=1, output_dir=str(tmp_path), **common)
    manifest = train_reward(args)
    assert [m["pairs"] for m in manifest["members"]] == [4, 3, 3] and manifest["pairs"] == 10
    with pytest.raises(ConfigError, match="member_data"):
        RewardArgs(member_data="bootstrap", output_dir=str(tmp_path), **common)
    with pytest.raises(ConfigError, match="member 2 no pairs"):
        train_reward(RewardArgs(n_train=2, ensemble_size=3, member_data="disjoint", max_steps=1, output_dir=str(tmp_path / "b"), **common))


def test_first_logged_loss_equals_a_naive_recomputation(testbed, tmp_path):
    """Learning rate 0 and one batch of every pair: the logged loss is the Bradley–Terry loss of the
    saved member, scored one sequence at a time in eval mode — on both flavours (the BPE model has
    attention dropout 0.1 and no pad token)."""
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification

    from align.models import load_tokenizer
    from align.testbed.datasets import preference_pairs
    from align.trainers.reward_model import RewardArgs, train_reward

    args = RewardArgs(profile=testbed.manifest["profile"], cache_dir=str(testbed.root.parents[1]), n_train=8, max_steps=1,
                      per_device_train_batch_size=8, learning_rate=0.0, logging_steps=1, output_dir=str(tmp_path))
    manifest = train_reward(args)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "member-0").eval()
    tok = load_tokenizer(tmp_path / "member-0")

    def score(messages):
        ids = torch.tensor([tok.apply_chat_template(messages)["input_ids"]])
        with torch.no_grad():
            return model(input_ids=ids).logits[0, 0]

    rows = preference_pairs(8, 8, 0, True)["train"]
    margins = torch.stack([score(r["prompt"] + r["chosen"]) - score(r["prompt"] + r["rejected"]) for r in rows])
    assert margins.abs().max() > 1e-3  # a random head still ranks the pairs differently
    assert manifest["members"][0]["final_loss"] == pytest.approx(float(-F.logsigmoid(margins).mean()), abs=1e-5)


def test_lora_members_resume_as_finished(tiny_testbed, tmp_path):
    """A LoRA member saves an adapter, not model.safetensors: resuming must still see it finished."""
    from align.trainers.reward_model import RewardArgs, train_reward

    args = RewardArgs(profile="tiny", cache_dir=str(tiny_testbed.root.parents[1]), n_train=16, ensemble_size=2, lora_r=4,
                      max_steps=2, per_device_train_batch_size=8, output_dir=str(tmp_path))
    manifest = train_reward(args)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.name != "ensemble.json")
    assert any(p.name == "adapter_model.safetensors" for p in files)
    stamps = {p: p.stat().st_mtime_ns for p in files}
    args.resume = True
    assert train_reward(args)["members"] == manifest["members"]
    assert {p: p.stat().st_mtime_ns for p in files} == stamps  # nothing retrained or rewritten
    ens = load_ensemble(tmp_path)
    scores = ens.score([[{"role": "user", "content": "1+1="}]], [[{"role": "assistant", "content": "2"}]])
    assert scores.members.shape == (2, 1) and torch.isfinite(scores.members).all()


def test_hf_members_score_like_a_plain_forward(reward_ensemble, tiny_testbed):
    args, _ = reward_ensemble
    ens = load_ensemble(args.output_dir, aggregation="uwo")
    prompts = [[{"role": "user", "content": "12+3="}], [{"role": "user", "content": "7-9="}], [{"role": "user", "content": "1+1="}]]
    completions = [[{"role": "assistant", "content": "15"}], [{"role": "assistant", "content": "-2"}], [{"role": "assistant", "content": "3"}]]
    scores = ens.score(prompts, completions)
    assert scores.members.shape == (2, 3) and not torch.allclose(scores.members[0], scores.members[1])
    member = ens.members[0]
    for i, (p, c) in enumerate(zip(prompts, completions)):  # one at a time, no padding
        ids = torch.tensor([member.tokenizer.apply_chat_template(p + c)["input_ids"]])
        alone = member.model(input_ids=ids).logits[0, 0].item()
        assert scores.members[0, i].item() == pytest.approx(alone, abs=1e-5)
    m = scores.members
    assert torch.allclose(scores.aggregate, m.mean(0) - 0.5 * m.var(0, correction=0))
    assert isinstance(member, HFRewardModel)


def test_shipped_reward_configs_are_the_proxies_and_the_quickstarts_ensemble():
    from align.claims.rewards import LABEL_NOISE, PROXIES, RM_RECIPE
    from align.config import parse_config
    from align.quickstart import REWARD
    from align.trainers.reward_model import RewardArgs

    args = parse_config(RewardArgs, ["--config", "configs/reward-proxies-testbed.yaml"])
    assert {k: getattr(args, k) for k in RM_RECIPE} == RM_RECIPE
    assert (args.ensemble_size, args.label_noise, args.kind) == (PROXIES, LABEL_NOISE, "classifier")
    good = parse_config(RewardArgs, ["--config", "configs/reward-testbed.yaml"])
    assert {k: getattr(good, k) for k in REWARD} == REWARD and good.label_noise == 0.0


def test_trl_adapter_inside_a_real_grpo_step(tiny_testbed, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    seen = []

    def length(prompt, completion):
        seen.append(completion[-1]["content"])
        return float(len(completion[-1]["content"]))

    ens = RewardEnsemble([FunctionReward(length, "len"), FunctionReward(lambda p, c: 1.0, "one")], aggregation="mean")
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"{i}+1="}]} for i in range(4)])
    config = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=4,
                        max_steps=1, report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, logging_steps=1,
                        save_strategy="no")
    trainer = GRPOTrainer(model=tiny_testbed.model("small-instruct"), reward_funcs=[TRLRewardFunction(ens, name="ens")],
                          args=config, train_dataset=data, processing_class=tiny_testbed.tokenizer())
    trainer.train()
    log = trainer.state.log_history[0]
    assert len(seen) == 4  # 2 prompts x 2 generations per step
    assert log["rewards/ens/mean"] == pytest.approx(sum((len(t) + 1) / 2 for t in seen) / 4)
    assert log["ens/mean"] == pytest.approx(log["rewards/ens/mean"]) and "ens/std" in log


@pytest.mark.timeout(120)  # the check itself: it used to run for ever (timeouts were switched off)
def test_math_answers_that_would_hang_sympy_score_zero_in_any_thread():
    import threading

    from rewards.answers import math_answer_reward

    hostile = "$9^{9^{9^{9}}}$"
    assert math_answer_reward(["q", "q"], [hostile, "so it is \\boxed{72}"], ["#### 72"] * 2) == [0.0, 1.0]
    out = []
    worker = threading.Thread(target=lambda: out.append(math_answer_reward(["q", "q"], [hostile, "72"], ["72"] * 2)))
    worker.start()
    worker.join(100)
    assert out == [[0.0, 1.0]]  # off the main thread signals cannot time it out: a killable process does


def _naive_completion_logprob(model, tok, prompt, completion):
    """log π(completion | prompt) one row at a time, no padding: the completion is what the
    templated conversation adds to the templated prompt (text: + EOS)."""
    if isinstance(prompt, str):
        head, ids = tok(prompt)["input_ids"], tok(prompt + completion + tok.eos_token)["input_ids"]
    else:
        head = tok.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
        ids = tok.apply_chat_template(prompt + completion)["input_ids"]
    start = next(i for i, (a, b) in enumerate(zip(head, ids)) if a != b) if ids[: len(head)] != head else len(head)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))


def test_likelihood_member_is_beta_times_the_log_ratio_of_a_naive_forward(testbed):
    """Batched, padded scores equal β·(log π - log π_ref) of the completion's tokens recomputed one
    row at a time, for chat and text prompts on both flavours; π_ref = π gives 0; without a
    reference it is β·log π."""
    from rewards import LikelihoodReward

    policy, ref, tok = testbed.model("small-instruct"), testbed.model("small-base"), testbed.tokenizer()
    chats = [[{"role": "user", "content": "12+3="}], [{"role": "user", "content": "7-9="}], [{"role": "user", "content": "1+1="}]]
    answers = [[{"role": "assistant", "content": "15"}], [{"role": "assistant", "content": "-2"}], [{"role": "assistant", "content": "3000"}]]
    texts, tails = ["12+3=", "7-9=", "100+1="], ["15", "-2", "101"]
    for prompts, completions in ((chats, answers), (texts, tails)):
        member = LikelihoodReward(policy, tok, reference=ref, beta=0.1, batch_size=2)
        got = member(prompts, completions)
        want = [0.1 * (_naive_completion_logprob(policy, tok, p, c) - _naive_completion_logprob(ref, tok, p, c))
                for p, c in zip(prompts, completions)]
        assert got.tolist() == pytest.approx(want, abs=1e-6) and got.abs().min() > 1e-4
        assert LikelihoodReward(policy, tok, reference=policy)(prompts, completions).abs().max() < 1e-9
        alone = LikelihoodReward(policy, tok, beta=2.0)(prompts, completions)
        assert alone.tolist() == pytest.approx([2 * _naive_completion_logprob(policy, tok, p, c) for p, c in zip(prompts, completions)], abs=1e-6)
    with pytest.raises(ValueError, match="beta"):
        LikelihoodReward(policy, tok, beta=0.0)


def test_pairwise_accuracy_by_hand():
    from rewards import pairwise_accuracy

    score = FunctionReward(lambda p, c: {"a": 3.0, "b": 1.0, "c": 1.0, "d": 0.0}[c], "table")
    # (a > b) right, (b = c) a tie, (d < a) wrong, (c > d) right: (1 + 0.5 + 0 + 1) / 4
    assert pairwise_accuracy(score, ["q"] * 4, ["a", "b", "d", "c"], ["b", "c", "a", "d"]) == 0.625
    with pytest.raises(ValueError, match="as many chosen"):
        pairwise_accuracy(score, ["q"], ["a", "b"], ["c"])


def test_implicit_members_record_their_accuracies_and_load_as_likelihood_rewards(tiny_testbed, tmp_path):
    """kind implicit: DPO members; ensemble.json carries each member's train / held-out pairwise
    accuracy, equal to what the loaded member scores on the same pairs."""
    from align.testbed.datasets import preference_pairs
    from align.trainers.reward_model import RewardArgs, train_reward
    from rewards import LikelihoodReward, pairwise_accuracy

    args = RewardArgs(profile="tiny", cache_dir=str(tiny_testbed.root.parents[1]), n_train=24, n_eval=16, ensemble_size=2,
                      kind="implicit", beta=0.2, max_steps=3, per_device_train_batch_size=8, learning_rate=1e-3,
                      member_data="disjoint", output_dir=str(tmp_path))
    manifest = train_reward(args)
    assert manifest["kind"] == "implicit" and [m["pairs"] for m in manifest["members"]] == [12, 12]
    ens = load_ensemble(tmp_path)
    data = preference_pairs(24, 16, 0, True)
    for i, (member, info) in enumerate(zip(ens.members, manifest["members"])):
        assert isinstance(member, LikelihoodReward) and member.beta == 0.2 and info["reference"].endswith("small-instruct")
        for key, rows in (("held_out_accuracy", list(data["eval"])), ("train_accuracy", list(data["train"])[i::2])):
            want = pairwise_accuracy(member, [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
            assert info[key] == round(want, 4)
        assert info["held_out_pairs"] == 16
    scores = ens.raw([[{"role": "user", "content": "1+1="}]], [[{"role": "assistant", "content": "2"}]])
    assert scores.abs().min() > 0  # trained away from the reference
    # trained on messages: a plain prompt is scored as the chat turn it was trained on, not as raw text
    assert manifest["conversational"] and torch.equal(ens.raw(["1+1="], ["2"]), scores)


def test_best_of_n_generation_keeps_the_ensembles_pick_of_the_same_draws(tiny_testbed, tmp_path):
    """``best_of_n: 4`` in align generate: each prompt's output is, of the 4 draws the same seeds
    give with best_of_n 1, the one the ensemble scores highest (a finished one first); tokens
    count every draw. Bad settings are named before any model loads."""
    import zlib

    from align.config import ConfigError
    from align.generate import GenerateArgs, ModelStore, generate_outputs
    from align.trainers.reward_model import RewardArgs, train_reward

    common = {"profile": "tiny", "cache_dir": str(tiny_testbed.root.parents[1])}
    train_reward(RewardArgs(n_train=16, n_eval=4, kind="implicit", max_steps=2, per_device_train_batch_size=8, learning_rate=1e-3,
                            output_dir=str(tmp_path / "rm"), **common))
    prompts = ["12+3=", "7-9=", "40+2="]
    args = GenerateArgs(prompts="<test>", do_sample=True, max_new_tokens=6, best_of_n=4, reward=str(tmp_path / "rm"), **common)
    store = ModelStore(args)
    got = generate_outputs(args, prompts, store, seeds=[11, 12, 13])
    plain = GenerateArgs(prompts="<test>", do_sample=True, max_new_tokens=6, **common)
    draws = generate_outputs(plain, [p for p in prompts for _ in range(4)], ModelStore(plain),
                             [zlib.crc32(f"{s}/best-of/{j}".encode()) for s in (11, 12, 13) for j in range(4)])
    ens = load_ensemble(tmp_path / "rm")
    chat = store.prompts_for(args.model, prompts)
    for i, row in enumerate(got):
        group = draws[4 * i : 4 * i + 4]
        scores = ens([chat[i]] * 4, [[{"role": "assistant", "content": d["output"]}] for d in group]).tolist()
        allowed = [j for j in range(4) if group[j]["finished"]] or list(range(4))
        best = max(allowed, key=lambda j: scores[j])
        assert row["output"] == group[best]["output"] and row["reward"] == pytest.approx(scores[best], abs=1e-9)
        assert row["tokens"] == sum(d["tokens"] for d in group) and row["best_of"] == 4
    assert len({d["output"] for d in draws}) > 3  # the draws differ, so the pick means something
    with pytest.raises(ConfigError, match="needs do_sample"):
        GenerateArgs(prompts="<test>", best_of_n=4, reward=str(tmp_path / "rm"), **common)
    with pytest.raises(ConfigError, match="align train reward"):
        GenerateArgs(prompts="<test>", do_sample=True, best_of_n=4, reward=str(tmp_path / "nothing"), **common)


@pytest.mark.slow
def test_reward_members_learn_the_sum_on_the_full_testbed(tmp_path):
    """The full testbed (built, cached): an implicit member from large-instruct, trained with the
    shipped recipe for 300 steps, ranks 400 held-out pairs at >= 0.8 (measured 0.855 and 0.858,
    docs/rewards.md), while the same member untrained (policy = reference: every reward 0) sits at
    0.5 and a classifier member from small-instruct stays near chance (< 0.7; measured 0.60)."""
    from align.config import parse_config
    from align.testbed import load_testbed
    from align.testbed.datasets import preference_pairs
    from align.trainers.reward_model import RewardArgs, train_reward
    from rewards import LikelihoodReward, pairwise_accuracy

    tb = load_testbed("full")
    held_out = list(preference_pairs(8, 400, 0, True)["eval"])

    def accuracy(member) -> float:
        return pairwise_accuracy(member, [r["prompt"] for r in held_out], [r["chosen"] for r in held_out], [r["rejected"] for r in held_out])

    args = parse_config(RewardArgs, ["--config", "configs/reward-testbed.yaml", "--ensemble_size", "1", "--output_dir", str(tmp_path / "rm"),
                                     "--logging_steps", "1000000", "--report_to", "none"])
    train_reward(args)
    assert accuracy(load_ensemble(tmp_path / "rm").members[0]) >= 0.8
    large = tb.model("large-instruct")
    assert accuracy(LikelihoodReward(large, tb.tokenizer(), reference=large)) == 0.5
    train_reward(RewardArgs(model="testbed:small-instruct", dataset="testbed:preference", n_train=4000, max_steps=300,
                            learning_rate=3e-4, per_device_train_batch_size=32, output_dir=str(tmp_path / "clf"),
                            logging_steps=10**6, report_to=[], save_strategy="no", gradient_checkpointing=False))
    assert accuracy(load_ensemble(tmp_path / "clf").members[0]) < 0.7
