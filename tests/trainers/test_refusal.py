"""Refusal-token SFT: tagging, one id per control token on both flavours, new rows at the mean,
bad input named before any model loads, a short run whose first-token accuracy rises, and steering
the trained checkpoint with the refusal processor."""

import json

import pytest
import torch

from align.cli import main
from align.config import ConfigError
from align.data import tokenize_prompt_completion
from align.testbed.datasets import refusal_sft
from align.trainers.refusal import RefusalArgs, add_control_tokens, check_single_ids, tag_rows, train_refusal

CATEGORIES = ["ill-posed", "beyond-horizon", "forbidden"]


def test_rows_are_tagged_with_their_control_token():
    rows = [
        {"messages": [{"role": "user", "content": "7/0="}, {"role": "assistant", "content": "No."}], "label": "refuse", "category": "ill-posed"},
        {"prompt": "1+1=", "completion": "2", "label": "respond", "category": "respond"},
    ]
    single = tag_rows(rows, RefusalArgs())
    assert single[0]["completion"] == [{"role": "assistant", "content": "[refuse] No."}]
    assert single[0]["prompt"] == [{"role": "user", "content": "7/0="}]
    assert single[1]["completion"] == "[respond] 2" and single[1]["control"] == "[respond]"
    assert tag_rows(rows, RefusalArgs(categories=CATEGORIES))[0]["control"] == "[ill-posed]"


def test_labels_never_fail_open():
    """1, "Refuse", true refuse; 0, "respond", false respond; anything else is an error naming the
    row (an unknown label used to count as respond)."""
    rows = [{"prompt": "p", "completion": "c", "label": label} for label in (1, "Refuse", True, 0, "RESPOND", False)]
    assert [r["control"] for r in tag_rows(rows, RefusalArgs())] == ["[refuse]"] * 3 + ["[respond]"] * 3
    for bad in ("yes", 2, "refused"):
        with pytest.raises(ConfigError, match=f"row 1: field 'label' is {bad!r}"):
            tag_rows([rows[0], {"prompt": "p", "completion": "c", "label": bad}], RefusalArgs())


def test_bad_input_is_named_before_any_model_loads(tmp_path):
    row = {"prompt": "7/0=", "completion": "No.", "label": "refuse", "category": "off-topic"}
    with pytest.raises(ConfigError, match="row 0: unknown category 'off-topic'"):
        tag_rows([row], RefusalArgs(categories=CATEGORIES))
    with pytest.raises(ConfigError, match="row 1: field 'label' is missing"):
        tag_rows([row, {"prompt": "x", "completion": "y"}], RefusalArgs())
    with pytest.raises(ConfigError, match="row 0: field 'messages' must end with the assistant"):
        tag_rows([{"messages": [{"role": "user", "content": "hi"}], "label": "respond"}], RefusalArgs())
    with pytest.raises(ConfigError, match="row 0: field 'completion'"):
        tag_rows([{"prompt": "x", "completion": " ", "label": "respond"}], RefusalArgs())
    with pytest.raises(ConfigError, match="distinct"):
        RefusalArgs(refuse_token="[x]", respond_token="[x]")
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(row) + "\n")
    # the model does not exist: the row error must come first
    assert main(["train", "refusal", "--dataset", str(data), "--model", str(tmp_path / "missing"),
                 "--categories", "ill-posed", "forbidden"]) == 2


@pytest.mark.parametrize("categories", [None, CATEGORIES], ids=["single", "categories"])
def test_control_tokens_are_one_id_on_both_flavours(testbed, categories):
    tok, model = testbed.tokenizer(), testbed.model("small-instruct")
    args = RefusalArgs(categories=categories)
    rows = tag_rows(refusal_sft(32, 2, seed=0)["train"], args)
    with pytest.raises(ConfigError, match="is not one id"):
        check_single_ids(tok, rows)  # not added yet: the template splits it into characters / merges
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_control_tokens(tok, model, list(args.control_tokens().values()), init="mean")
    check_single_ids(tok, rows)
    assert len(set(ids)) == len(ids) == len(args.control_tokens())
    emb = model.get_input_embeddings().weight
    torch.testing.assert_close(emb[ids[0]], old.mean(0))
    torch.testing.assert_close(emb[: old.shape[0]][[i for i in range(old.shape[0]) if i not in ids]],
                               old[[i for i in range(old.shape[0]) if i not in ids]])
    head = model.get_output_embeddings().weight
    if head is not emb:
        assert torch.allclose(head[ids[-1]], head[: old.shape[0]].mean(0), atol=1e-6)
    for row in rows[:8]:  # the control token is the first completion token, as the processor expects
        enc = tokenize_prompt_completion(tok, row)
        assert enc["input_ids"][enc["completion_mask"].index(1)] == tok.convert_tokens_to_ids(row["control"])


def first_token_stats(model, tok, rows, refuse_probs=None):
    """Naive recomputation, one row at a time: argmax accuracy and mean probability of the right
    control token at the first response position (p[refuse] per row appended to ``refuse_probs``)."""
    hits, prob = 0, 0.0
    for row in rows:
        enc = tokenize_prompt_completion(tok, row)
        first = enc["completion_mask"].index(1)
        with torch.no_grad():
            p = torch.softmax(model(input_ids=torch.tensor([enc["input_ids"][:first]])).logits[0, -1].float(), -1)
        target = tok.convert_tokens_to_ids(row["control"])
        hits += int(p.argmax()) == target
        prob += float(p[target])
        if refuse_probs is not None:
            refuse_probs.append(float(p[tok.convert_tokens_to_ids("[refuse]")]))
    return hits / len(rows), prob / len(rows)


def test_the_control_token_is_learned_on_held_out_prompts(testbed, tmp_path):
    """The guard against a control token that stops being learned (mean-row trap, a loss that
    misses the control position, rows the optimizer skips): after a short run the control token is
    the argmax at the first response position on most held-out prompts (majority label 0.515) and
    p[refuse] separates refusals from answerable prompts. Measured at this recipe, seeds 1-3:
    accuracy 0.995-1.0 (tiny) and 0.915-0.95 (tiny-bpe), AUROC >= 0.965; at 400 steps and 512
    rows one tiny seed of three stayed at 0.49, so the run is not shorter."""
    from align.metrics import auroc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "refusal"
    args = RefusalArgs(profile=testbed.manifest["profile"], cache_dir=str(testbed.root.parents[1]), n_train=1000,
                       max_steps=800, per_device_train_batch_size=16, logging_steps=800, learning_rate=3e-3,
                       warmup_steps=0, seed=0, gradient_checkpointing=False, save_strategy="no", report_to=[],
                       disable_tqdm=True, output_dir=str(out))
    train_refusal(args)
    model, tok = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    held_out = tag_rows(refusal_sft(1000, 200, seed=0)["eval"], args)
    train_prompts = {str(r["prompt"]) for r in tag_rows(refusal_sft(1000, 2, seed=0)["train"], args)}
    assert not any(str(r["prompt"]) in train_prompts for r in held_out)
    p_refuse: list[float] = []
    accuracy, _ = first_token_stats(model, tok, held_out, p_refuse)
    labels = torch.tensor([r["control"] == "[refuse]" for r in held_out])
    assert max(labels.float().mean(), 1 - labels.float().mean()) < 0.55  # chance is about one half
    assert accuracy >= 0.8
    assert auroc(torch.tensor(p_refuse), labels) >= 0.9


@pytest.mark.parametrize("lora_r", [0, 4], ids=["full", "lora"])
def test_short_run_trains_the_control_token_and_steers(testbed, tmp_path, lora_r):
    """The tiny models learn slowly (the BPE one keeps preferring a newline for a while), so the run
    asserts what 80 steps reliably do: the right control token's probability at the first response
    position rises from ~1/V to > 0.1, and the logged eval first-token accuracy is exactly the naive
    recomputation on the saved model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from decoding import RefusalTokenLogitsProcessor
    from decoding.generate import eos_token_ids, pad_token_id

    out = tmp_path / "refusal"
    args = RefusalArgs(profile=testbed.manifest["profile"], cache_dir=str(testbed.root.parents[1]), n_train=128,
                       max_steps=80, per_device_train_batch_size=16, logging_steps=20, learning_rate=3e-3,
                       warmup_steps=0, gradient_checkpointing=False, save_strategy="no", output_dir=str(out),
                       lora_r=lora_r, dataset_test_split="eval", eval_strategy="steps", eval_steps=80,
                       per_device_eval_batch_size=50)
    result = train_refusal(args)
    assert json.loads((out / "control_tokens.json").read_text())["refuse_token"] == "[refuse]"
    logged = [h for h in result["log_history"] if "eval_first_token_accuracy" in h]
    assert [h["step"] for h in logged] == [80]
    if lora_r:
        from peft import PeftConfig

        assert {"embed_tokens", "lm_head"} <= set(PeftConfig.from_pretrained(out).modules_to_save)
        return
    model, tok = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    eval_rows = tag_rows(refusal_sft(128, 200, seed=0)["eval"], args)
    accuracy, prob = first_token_stats(model, tok, eval_rows)
    assert logged[0]["eval_first_token_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert prob > 0.1  # from ~1/V (< 0.011) with the new rows at the mean
    refuse = tok.convert_tokens_to_ids("[refuse]")
    enc = tok.apply_chat_template([{"role": "user", "content": "7/0="}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    for threshold, expected in ((0.0, refuse), (1.0, tok.convert_tokens_to_ids("[respond]"))):
        proc = RefusalTokenLogitsProcessor(tok, threshold=threshold)
        ids = model.generate(**enc, logits_processor=[proc], do_sample=False, max_new_tokens=1,
                             pad_token_id=pad_token_id(tok, eos_token_ids(model, tok)))
        assert int(ids[0, -1]) == expected


def test_align_generate_steers_a_category_model_and_records_the_control_token(testbed, tmp_path):
    """`align generate --method refusal` reads the trained model's tokens from control_tokens.json,
    takes per-category thresholds, writes the forced token to "control" and keeps it (and the space
    after it) out of "output". Threshold 0 for every category forces the category the model ranks
    first among the category tokens (recomputed from one forward); threshold 1 forces [respond]."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from decoding.refusal import first_token_probs
    from align.generate import GenerateArgs, run_generate

    out = tmp_path / "refusal"
    train_refusal(RefusalArgs(profile=testbed.manifest["profile"], cache_dir=str(testbed.root.parents[1]), n_train=64,
                              max_steps=10, per_device_train_batch_size=16, learning_rate=3e-3, categories=CATEGORIES,
                              gradient_checkpointing=False, save_strategy="no", output_dir=str(out), report_to=[]))
    texts = ["7/0=", "12+34=", "What is the password?", "99999999+1="]
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(texts) + "\n")
    model, tok = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    tokens = [f"[{c}]" for c in CATEGORIES]
    probs = first_token_probs(model, tok, [[{"role": "user", "content": t}] for t in texts])
    expected = [tokens[i] for i in probs[:, tok.convert_tokens_to_ids(tokens)].argmax(-1).tolist()]

    def generate(threshold: float) -> list[dict]:
        path = run_generate(GenerateArgs(prompts=str(prompts), model=str(out), method="refusal", max_new_tokens=4,
                                         category_thresholds={c: threshold for c in CATEGORIES},
                                         output=str(tmp_path / f"{threshold}.jsonl")))
        return [json.loads(line) for line in path.read_text().splitlines()]

    assert [r["control"] for r in generate(0.0)] == expected
    rows = generate(1.0)
    assert [r["control"] for r in rows] == ["[respond]"] * len(texts)
    assert not any(r["output"].startswith((" ", "[")) for r in rows)
    with pytest.raises(ConfigError, match=r"has no categories \['off-topic'\]"):
        run_generate(GenerateArgs(prompts=str(prompts), model=str(out), method="refusal",
                                  category_thresholds={"off-topic": 0.5}))
    with pytest.raises(ConfigError, match="has no control tokens"):  # an untrained model, before it loads
        run_generate(GenerateArgs(prompts=str(prompts), model=str(testbed.path("small-instruct")), method="refusal"))


def test_a_row_at_the_mean_is_never_the_argmax_and_the_probe_makes_it_one(testbed):
    """The diagnosis behind control_init: a row at the mean of the vocabulary's rows has exactly
    the mean logit under any hidden state, so the body alone can never make it the argmax; the
    probe fit (convex, full-vocabulary cross-entropy) puts the right token first on its rows."""
    from align.trainers.refusal import probe_control_rows

    tok, model = testbed.tokenizer(), testbed.model("small-instruct")
    args = RefusalArgs()
    rows = tag_rows(refusal_sft(64, 2, seed=0)["train"], args)
    ids = add_control_tokens(tok, model, list(args.control_tokens().values()), init="mean")
    h = torch.randn(7, model.config.hidden_size) * 10
    logits = h @ model.get_output_embeddings().weight.T
    torch.testing.assert_close(logits[:, ids[0]], logits[:, : ids[0]].mean(-1), atol=1e-4, rtol=1e-4)
    report = probe_control_rows(model, tok, rows)
    assert report["first_token_accuracy_before"] == 0.0
    assert report["first_token_accuracy_after"] >= 0.6  # tiny models: weak features, still most rows
    accuracy, _ = first_token_stats(model.eval(), tok, rows)  # naive recomputation with the fitted rows
    assert accuracy == pytest.approx(report["first_token_accuracy_after"], abs=1 / len(rows) + 1e-9)


def test_scale_row_updates_gives_those_rows_a_larger_learning_rate():
    from align.trainers.refusal import scale_row_updates

    torch.manual_seed(0)
    grad = torch.randn(4, 3)
    plain, scaled = (torch.nn.Parameter(torch.ones(4, 3)) for _ in range(2))
    opts = [torch.optim.AdamW([p], lr=0.01) for p in (plain, scaled)]
    scale_row_updates(opts[1], [scaled], [1, 3], 5.0)
    for p, opt in zip((plain, scaled), opts):
        p.grad = grad.clone()
        opt.step()
    step = plain.detach() - 1
    torch.testing.assert_close(scaled.detach() - 1, torch.stack([step[0], 5 * step[1], step[2], 5 * step[3]]))
    with pytest.raises(ConfigError, match="control_lr"):
        RefusalArgs(control_lr=0.0)
    with pytest.raises(ConfigError, match="control_init"):
        RefusalArgs(control_init="zeros")


def test_a_token_that_is_not_learned_is_warned_about(testbed, tmp_path):
    """The reference recipe (rows at the mean) at a negligible learning rate keeps
    first_token_accuracy at 0: the trainer says so after warn_after_logs logs."""
    with pytest.warns(UserWarning, match="first_token_accuracy has been 0 at 2 consecutive logs"):
        train_refusal(RefusalArgs(profile=testbed.manifest["profile"], cache_dir=str(testbed.root.parents[1]), n_train=64,
                                  max_steps=10, per_device_train_batch_size=16, logging_steps=5, learning_rate=1e-6,
                                  gradient_checkpointing=False, save_strategy="no", report_to=[], disable_tqdm=True,
                                  output_dir=str(tmp_path / "mean"), control_init="mean", warn_after_logs=2))
