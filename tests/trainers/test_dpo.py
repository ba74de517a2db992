import json

import pytest
import torch
from safetensors.torch import load_file

from align.cli import main
from align.config import ConfigError, parse_config
from align.data import check_preference_rows
from align.trainers.dpo import DPOArgs, dpo_config_kwargs, train_dpo


def test_objective_maps_onto_trl():
    assert dpo_config_kwargs(DPOArgs()) == {"beta": 0.1, "f_divergence_type": "reverse_kl", "loss_type": ["sigmoid"]}
    a = dpo_config_kwargs(DPOArgs(divergence="alpha", alpha=0.3))
    assert a["f_divergence_type"] == "alpha_divergence" and a["f_alpha_divergence_coef"] == pytest.approx(0.7)
    assert dpo_config_kwargs(DPOArgs(divergence="alpha", alpha=0.3, alpha_convention="trl"))["f_alpha_divergence_coef"] == pytest.approx(0.3)
    assert dpo_config_kwargs(DPOArgs(divergence="js"))["f_divergence_type"] == "js_divergence"
    assert dpo_config_kwargs(DPOArgs(loss="rpo", rpo_eta=0.2))["loss_type"] == ["sigmoid"]  # RPOTrainer adds the NLL
    with pytest.raises(ConfigError, match="sft_reduction"):
        DPOArgs(sft_reduction="mean")
    with pytest.raises(ConfigError, match="alpha"):
        DPOArgs(divergence="alpha", alpha=1.0)
    with pytest.raises(ConfigError, match="beta"):
        DPOArgs(beta=float("nan"))


def test_bad_rows_are_named_and_identical_pairs_dropped():
    good = {"prompt": "1+1=", "chosen": "2", "rejected": "3"}
    keep, same = check_preference_rows([good, {**good, "rejected": "2"}, good])
    assert keep == [0, 2] and same == 1
    with pytest.raises(ConfigError, match="row 1: field 'chosen' is missing"):
        check_preference_rows([good, {"prompt": "x", "rejected": "y"}])
    with pytest.raises(ConfigError, match="row 0: field 'rejected' must be non-empty"):
        check_preference_rows([{**good, "rejected": "  "}])
    with pytest.raises(ConfigError, match="row 0: field 'prompt'"):
        check_preference_rows([{**good, "prompt": [{"role": "user"}]}])


@pytest.mark.parametrize("loss, extra", [("dpo", {}), ("rpo", {}), ("dpo", {"precompute_ref_log_probs": True}),
                                         ("rpo", {"lora_r": 4, "gradient_checkpointing": True})])
def test_short_training_run(tiny_testbed, tmp_path, loss, extra):
    args = DPOArgs(
        model="testbed:small-instruct", profile="tiny", cache_dir=str(tiny_testbed.root.parents[1]), loss=loss,
        n_train=16, max_steps=3, per_device_train_batch_size=4, logging_steps=1, output_dir=str(tmp_path / loss),
        learning_rate=1e-3, **extra,
    )
    result = train_dpo(args)
    # step 1: the policy is its reference (a copy, precomputed log-probs, or LoRA with B = 0)
    first = result["log_history"][0]  # zero up to float rounding (precomputed log-probs come from another batch layout)
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-6) and first["rewards/margins"] == pytest.approx(0, abs=1e-6)
    log = result["last_log"]
    assert {"loss", "rewards/chosen", "rewards/accuracies", "logps/chosen"} <= set(log) and log["rewards/chosen"] != 0
    assert ("nll_loss" in log) == (loss == "rpo")
    if extra.get("lora_r"):
        return  # the saved model is the adapter
    assert result["pairs"] == 16 and result["dropped_identical"] == 0
    before = load_file(str(tiny_testbed.path("small-instruct") / "model.safetensors"))
    after = load_file(str(tmp_path / loss / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the policy trained
    # the testbed's reference checkpoint is untouched
    assert torch.equal(before["lm_head.weight"], load_file(str(tiny_testbed.path("small-instruct") / "model.safetensors"))["lm_head.weight"])


def test_cli_and_shipped_config(tmp_path, capsys):
    from align.claims.training import N_PAIRS, RECIPE

    shipped = parse_config(DPOArgs, ["--config", "configs/dpo-testbed.yaml"])
    assert {k: getattr(shipped, k) for k in RECIPE} == RECIPE and shipped.n_train == N_PAIRS  # quickstart's recipe
    bad = tmp_path / "bad.yaml"
    bad.write_text("betta: 0.1\n")
    assert main(["train", "dpo", "--config", str(bad)]) == 2
    assert "unknown key 'betta'" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "systems: give at least one system" in capsys.readouterr().err


@pytest.mark.parametrize("trainer", ["dpo", "bco", "score"])
def test_two_cpu_processes_match_one_with_the_same_global_batch(tiny_testbed, tmp_path, trainer):
    """Real DDP over gloo: world size 2 (asserted), per-device batch 4 vs one process with 8.

    Tolerance: step 1 (no update yet) and step 2 (one all-reduced update) agree within 1e-5; by
    step 3 Adam's normalisation of near-zero gradients amplifies all-reduce rounding, so 1e-3.
    BCO's δ is all-reduced: both runs end with the same δ (1e-5). SCoRe samples its rollouts with
    per-episode seeds, so both runs draw the same episodes (Stage I at step 1, Stage II after).
    """
    import subprocess
    import sys

    common = ["train", trainer, "--profile", "tiny", "--cache_dir", str(tiny_testbed.root.parents[1]), "--n_train", "32",
              "--max_steps", "3", "--logging_steps", "1"]
    if trainer == "score":
        common += ["--stage1_steps", "1", "--stage2_steps", "2", "--num_generations", "2", "--max_new_tokens", "6",
                   "--ref_model", "testbed:small-base", "--learning_rate", "1e-3"]
    import socket

    with socket.socket() as free:  # a fresh rendezvous port: the previous launch's may still be in TIME_WAIT
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    two = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu_2proc.yaml",
           "--main_process_port", port, "-m", "align", *common, "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "two"),
           "--metrics_file", str(tmp_path / "two.json")]
    one = [sys.executable, "-m", "align", *common, "--per_device_train_batch_size", "8", "--output_dir",
           str(tmp_path / "one"), "--metrics_file", str(tmp_path / "one.json")]
    for cmd in (two, one):
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    r2, r1 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("two", "one"))
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert len(r1["losses"]) == len(r2["losses"]) == 3
    assert r2["losses"][:2] == pytest.approx(r1["losses"][:2], abs=1e-5)
    assert r2["losses"][2] == pytest.approx(r1["losses"][2], abs=1e-3)
    if trainer == "bco":
        assert r2["delta"] == pytest.approx(r1["delta"], abs=1e-5) and r1["delta"] != 0
    if trainer == "score":
        kl = [[h["kl/t1"] for h in r["log_history"] if "kl/t1" in h] for r in (r1, r2)]
        assert kl[0][0] > 0 and kl[1] == pytest.approx(kl[0], rel=1e-4)  # the same episodes


@pytest.mark.parametrize("reduction", ["sum", "seq_mean", "token_mean"])
def test_rpo_reductions_match_a_naive_recomputation(tiny_testbed, tmp_path, reduction):
    """Step 1 (policy == reference, so the DPO part is log 2): loss = log 2 + coefficient · NLL of the
    chosen completions, NLL recomputed here token by token from the chat-rendered pairs."""
    import math

    from align.data import tokenize_prompt_completion
    from align.diagnostics.entanglement import sequence_logp
    from align.testbed.datasets import preference_pairs

    eta, beta = 0.3, 0.5
    args = DPOArgs(profile="tiny", cache_dir=str(tiny_testbed.root.parents[1]), loss="rpo", n_train=8, max_steps=1,
                   per_device_train_batch_size=8, logging_steps=1, output_dir=str(tmp_path / "rpo"), beta=beta,
                   rpo_eta=eta, sft_reduction=reduction)
    log = train_dpo(args)["last_log"]
    tok, model = tiny_testbed.tokenizer(), tiny_testbed.model("small-instruct")
    sums, counts = [], []
    with torch.no_grad():
        for row in preference_pairs(8, 8, seed=0, conversational=True)["train"]:
            enc = tokenize_prompt_completion(tok, {"prompt": row["prompt"], "completion": row["chosen"]}, 1024)
            start = enc["completion_mask"].index(1)
            sums.append(-float(sequence_logp(model, enc["input_ids"][:start], enc["input_ids"][start:])))
            counts.append(len(enc["input_ids"]) - start)
    nll = {"sum": sum(sums) / 8, "seq_mean": sum(s / n for s, n in zip(sums, counts)) / 8,
           "token_mean": sum(sums) / sum(counts)}[reduction]
    coefficient = eta * beta if reduction == "sum" else eta
    assert log["nll_loss"] == pytest.approx(nll, rel=1e-5)
    assert log["loss"] == pytest.approx(math.log(2) + coefficient * nll, rel=1e-5)


def test_entanglement_probe_logs_ge_stats_of_the_current_policy(tiny_testbed, tmp_path):
    """The ge/* entry at step 2 equals entanglement_stats recomputed on the saved step-2 model."""
    from transformers import AutoModelForCausalLM

    from align.diagnostics.entanglement import entanglement_stats, probe_pairs
    from align.testbed.datasets import preference_pairs

    args = DPOArgs(profile="tiny", cache_dir=str(tiny_testbed.root.parents[1]), n_train=16, max_steps=2,
                   per_device_train_batch_size=4, logging_steps=1, output_dir=str(tmp_path / "ge"), learning_rate=1e-3,
                   ge_probe_every=2, ge_probe_size=3)
    history = train_dpo(args)["log_history"]
    ge = [h for h in history if "ge/inner" in h]
    assert [h["step"] for h in ge] == [2]
    rows = preference_pairs(16, 8, seed=0, conversational=True)["train"]
    pairs = probe_pairs(tiny_testbed.tokenizer(), [rows[i] for i in range(3)])
    expected = entanglement_stats(AutoModelForCausalLM.from_pretrained(tmp_path / "ge"), pairs)
    assert ge[0]["ge/inner"] == pytest.approx(expected["ge/inner"], rel=1e-4)
    assert ge[0]["ge/cos"] == pytest.approx(expected["ge/cos"], rel=1e-4, abs=1e-6)
    assert ge[0]["ge/frac_chosen_down"] == expected["ge/frac_chosen_down"]


@pytest.mark.parametrize("loss", ["dpo", "rpo"])
def test_first_step_on_both_flavours_policy_is_its_reference(testbed, tmp_path, loss):
    """Step 1: policy == reference, so every reward is exactly 0 and the DPO loss log 2 — also on the
    BPE flavour (no pad token, ChatML, two EOS ids, attention dropout 0.1 that must be off). RPO adds
    the chosen completions' token-mean NLL, recomputed here one sequence at a time."""
    import math

    from align.data import tokenize_prompt_completion
    from align.diagnostics.entanglement import sequence_logp
    from align.testbed.datasets import preference_pairs

    args = DPOArgs(profile=testbed.manifest["profile"], cache_dir=str(testbed.root.parents[1]), n_train=8, max_steps=1,
                   per_device_train_batch_size=8, logging_steps=1, output_dir=str(tmp_path / "o"), learning_rate=1e-3,
                   gradient_checkpointing=False, loss=loss, rpo_eta=0.5)
    log = train_dpo(args)["log_history"][0]
    assert log["rewards/chosen"] == 0 and log["rewards/rejected"] == 0
    if loss == "dpo":
        assert log["loss"] == pytest.approx(math.log(2), abs=1e-6)
        return
    policy, tok = testbed.model("small-instruct"), testbed.tokenizer()
    total = count = 0.0
    with torch.no_grad():
        for row in preference_pairs(8, 8, seed=0, conversational=True)["train"]:
            enc = tokenize_prompt_completion(tok, {"prompt": row["prompt"], "completion": row["chosen"]})
            start = enc["completion_mask"].index(1)
            total -= float(sequence_logp(policy, enc["input_ids"][:start], enc["input_ids"][start:]))
            count += len(enc["input_ids"]) - start
    assert log["nll_loss"] == pytest.approx(total / count, abs=1e-5)
    assert log["loss"] == pytest.approx(math.log(2) + 0.5 * total / count, abs=1e-5)


def test_model_init_kwargs_reach_every_loaded_model(tiny_testbed):
    """TRL's model_init_kwargs used to be listed and ignored: they go to from_pretrained."""
    from align.config import ConfigError
    from align.trainers.common import load_models
    from align.trainers.dpo import DPOArgs

    args = DPOArgs(dataset="testbed:preference", profile="tiny", cache_dir=str(tiny_testbed.root.parents[1]),
                   model_init_kwargs={"attn_implementation": "eager"})
    _, policy, ref, _ = load_models(args)
    assert policy.config._attn_implementation == ref.config._attn_implementation == "eager"
    with pytest.raises(ConfigError, match="model_init_kwargs: set \\['dtype'\\]"):
        DPOArgs(dataset="testbed:preference", model_init_kwargs={"dtype": "bfloat16"})
