import json

import pytest

from align.cli import main
from align.config import ConfigError
from align.generate import GenerateArgs, read_prompts, run_generate
from decoding import AuxiliaryModel, EFTLogitsProcessor
from decoding.generate import generate_with

PROMPTS = ["7+8=", "37+485=", "123-45="]


@pytest.fixture()
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"problem": p}) + "\n" for p in PROMPTS))
    return path


def args(tiny_testbed, prompt_file, tmp_path, **kw):
    base = dict(
        prompts=str(prompt_file), prompt_field="problem", output=str(tmp_path / "out.jsonl"), profile="tiny",
        cache_dir=str(tiny_testbed.root.parents[1]), max_new_tokens=5, batch_size=2,
    )
    return GenerateArgs(**{**base, **kw})


@pytest.mark.parametrize(
    "method, extra",
    [
        ("plain", {}),
        ("eft", {"model": "testbed:large-base", "tuned": ["testbed:small-instruct"], "reference": "testbed:small-base"}),
        ("dlf", {"model": "testbed:large-base", "small_base": "testbed:small-base", "experts": ["testbed:small-expert-zero", "testbed:small-expert-big"]}),
        ("steer", {"base": "testbed:small-base", "negative_examples": "data/preference/standard-train.jsonl", "do_sample": True}),
        ("negative", {"negative_prompt": "1-1="}),
        ("gedi", {"model": "testbed:large-base", "gedi_model": "GUIDE", "desired_code": "n:", "anti_code": "p:"}),
    ],
)
def test_every_method_writes_jsonl(tiny_testbed, prompt_file, tmp_path, method, extra):
    if extra.get("gedi_model") == "GUIDE":
        from align.testbed.gedi import build_sign_guide

        extra = {**extra, "gedi_model": str(build_sign_guide(tiny_testbed))}
    path = run_generate(args(tiny_testbed, prompt_file, tmp_path, method=method, **extra))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS
    assert all(r["method"] == method and isinstance(r["output"], str) and "params" in r for r in rows)


def test_eft_output_equals_the_processor(tiny_testbed, prompt_file, tmp_path):
    extra = {"model": "testbed:large-base", "tuned": ["testbed:small-instruct"], "reference": "testbed:small-base"}
    path = run_generate(args(tiny_testbed, prompt_file, tmp_path, method="eft", **extra))
    got = [json.loads(line)["output"] for line in path.read_text().splitlines()]
    tok = tiny_testbed.tokenizer()
    chat = [[{"role": "user", "content": p}] for p in PROMPTS]
    inst, small = tiny_testbed.model("small-instruct"), tiny_testbed.model("small-base")
    expected = generate_with(
        tiny_testbed.model("large-base"), tok, PROMPTS,
        lambda rows: [EFTLogitsProcessor(tok, [AuxiliaryModel(inst, tok, chat[rows])], AuxiliaryModel(small, tok, PROMPTS[rows]))],
        batch_size=2, do_sample=False, max_new_tokens=5,
    )
    assert got == [text for text, _ in expected]


def test_config_errors_before_loading(tiny_testbed, prompt_file, tmp_path, capsys):
    with pytest.raises(ConfigError, match="method 'eft' needs 'tuned'"):
        GenerateArgs(prompts=str(prompt_file), method="eft")
    with pytest.raises(ConfigError, match="weights must be finite"):
        GenerateArgs(prompts=str(prompt_file), method="eft", tuned=["x"], weights=[float("nan")])
    with pytest.raises(ConfigError, match=r"has no field 'prompt' \(fields: problem\)"):
        read_prompts(prompt_file)
    bad = args(tiny_testbed, prompt_file, tmp_path, method="eft", tuned=["/no/such/model"])
    with pytest.raises(ConfigError, match="'/no/such/model' is neither"):
        run_generate(bad)
    assert not (tmp_path / "out.jsonl").exists()
    cfg = tmp_path / "g.yaml"
    cfg.write_text("method: eft\nprompts: x.txt\ntuned: testbed:small-instruct\n")
    assert main(["generate", "--config", str(cfg)]) == 2
    assert "key 'tuned' must be list" in capsys.readouterr().err


def test_shipped_configs_parse():
    from align.config import parse_config

    for name in ("configs/generate-eft.yaml", "configs/generate-steer.yaml"):
        assert parse_config(GenerateArgs, ["--config", name]).method in ("eft", "steer")


def test_prompts_from_a_saved_dataset(tiny_testbed, tmp_path):
    from align.testbed.datasets import self_correction

    ds = self_correction(6, 3, conversational=True)
    ds.save_to_disk(str(tmp_path / "ds"))
    prompts = read_prompts(tmp_path / "ds", "prompt", "eval")
    assert prompts == ds["eval"]["prompt"] and isinstance(prompts[0], list)
    with pytest.raises(ConfigError, match="has no split 'test'; its splits: train, eval"):
        read_prompts(tmp_path / "ds", "prompt", "test")
    with pytest.raises(ConfigError, match="has no field 'problem'"):
        read_prompts(tmp_path / "ds", "problem", "eval")
    out = run_generate(
        GenerateArgs(prompts=str(tmp_path / "ds"), split="eval", output=str(tmp_path / "o.jsonl"), profile="tiny",
                     cache_dir=str(tiny_testbed.root.parents[1]), max_new_tokens=3)
    )
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("method", ["steer", "negative", "gedi", "ead"])
def test_vllm_backend_rejects_methods_without_a_vllm_form(prompt_file, method):
    with pytest.raises(ConfigError, match="cannot run with backend 'vllm'.*one token stream.*serves plain, eft, dlf, refusal"):
        GenerateArgs(prompts=str(prompt_file), method=method, backend="vllm", negative_prompt="x", gedi_model="x",
                     desired_code="a", anti_code="b", eta=0.0, gamma=0.0, large="x", tau=1.0)


@pytest.mark.parametrize("method, extra", [("eft", {"tuned": ["x"]}), ("dlf", {"small_base": "x", "experts": ["x"]}),
                                           ("plain", {}), ("refusal", {})])
def test_vllm_backend_accepts_methods_with_a_vllm_form(prompt_file, method, extra):
    assert GenerateArgs(prompts=str(prompt_file), method=method, backend="vllm", **extra).decoding().name == method


def test_help_groups_options_by_method(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    headings = ["generation (every method):", "eft: emulated fine-tuning", "dlf: dynamic logits fusion", "steer:", "negative:",
                "gedi:", "refusal:", "ead:"]
    at = [out.index(h) for h in headings]
    assert at == sorted(at)
    # each option sits under its own method's heading (after the usage line, which lists them all)
    def where(flag):
        return out.index(f"  {flag} ", at[0])

    assert at[1] < where("--tuned") < at[2] and at[5] < where("--omega") < at[6] and at[7] < where("--tau")
    assert at[0] < where("--max_new_tokens") < at[1]


def test_options_stay_flat_and_reach_the_chosen_method(tmp_path):
    from align.config import parse_config
    from align.methods import EFT, METHODS, flat_options

    cfg = tmp_path / "g.yaml"
    cfg.write_text("method: eft\nprompts: x.txt\ntuned: [testbed:small-instruct]\nweights: [0.5]\n")
    args = parse_config(GenerateArgs, ["--config", str(cfg), "--upscale_top_p", "0.9"])
    assert args.decoding() == EFT(tuned=["testbed:small-instruct"], weights=[0.5], upscale_top_p=0.9)
    assert sorted(METHODS) == ["dlf", "ead", "eft", "gedi", "negative", "plain", "refusal", "steer"]
    with pytest.raises(TypeError, match=r"more than one group: \['reference', 'tuned'"):
        flat_options("Clash", (EFT, EFT), __name__)
    with pytest.raises(ConfigError, match="unknown method 'proxy'; choose one of plain, eft"):
        GenerateArgs(prompts="x.txt", method="proxy")


def test_steer_negatives_do_not_depend_on_batching(tiny_testbed, prompt_file, tmp_path):
    """Each row draws its negatives with its own seed from the pool as it stands at its block of
    prompts, so the batch size changes nothing (it used to decide which rows' outputs a row saw)."""
    extra = {"method": "steer", "base": "testbed:small-base", "negative_examples": "data/preference/standard-train.jsonl",
             "do_sample": True, "negative_pool_block": 2}
    outs = []
    for batch_size in (1, 3):
        path = run_generate(args(tiny_testbed, prompt_file, tmp_path, batch_size=batch_size, output=str(tmp_path / f"{batch_size}.jsonl"),
                                 **extra))
        outs.append([json.loads(line)["output"] for line in path.read_text().splitlines()])
    assert outs[0] == outs[1]


def test_bad_options_fail_before_any_model_loads(tiny_testbed, prompt_file, tmp_path, monkeypatch, capsys):
    import align.generate as generate

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(generate.ModelStore, "load", no_loading)
    with pytest.raises(ConfigError, match="prompts: .*missing.txt does not exist"):
        run_generate(args(tiny_testbed, prompt_file, tmp_path, method="steer", base="testbed:small-base",
                          negative_examples=str(tmp_path / "missing.txt")))
    with pytest.raises(ConfigError, match="device 'cuda'"):
        args(tiny_testbed, prompt_file, tmp_path, device="cuda" if not __import__("torch").cuda.is_available() else "mps:9")
    cache = str(tiny_testbed.root.parents[1])
    code = main(["generate", "--prompts", str(prompt_file), "--cache_dir", cache, "--max_new_tokenz", "3"])
    assert code == 2 and "unknown option(s) --max_new_tokenz; did you mean --max_new_tokens?" in capsys.readouterr().err


def test_a_vocabulary_mismatch_is_named_before_any_model_loads(tiny_testbed, prompt_file, tmp_path, monkeypatch, cache_dir):
    from align.testbed import build_testbed
    import align.generate as generate

    bpe = build_testbed("tiny-bpe", seed=0, cache_dir=cache_dir, workers=1, show_progress=False)
    monkeypatch.setattr(generate.ModelStore, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(ConfigError, match="do not share a vocabulary"):
        run_generate(args(tiny_testbed, prompt_file, tmp_path, method="eft", model="testbed:large-base",
                          tuned=[str(bpe.path("small-instruct"))], reference="testbed:small-base"))


def test_the_negative_prompt_is_read_in_the_negative_models_format(tiny_testbed, prompt_file, tmp_path, monkeypatch):
    """The main (chat) model reads its templated chat; the negative prompt used to reach the same
    chat model as raw text. Now each model reads it in its own format, as it reads the prompts."""
    import decoding

    seen = {}
    real = decoding.AuxiliaryModel

    def spy(model, tokenizer, prompts, name="aux", **kw):
        seen[name] = list(prompts)
        return real(model, tokenizer, prompts, name, **kw)

    monkeypatch.setattr(decoding, "AuxiliaryModel", spy)
    run_generate(args(tiny_testbed, prompt_file, tmp_path, method="negative", negative_prompt="1-1="))
    assert seen["testbed:small-instruct"] == [[{"role": "user", "content": "1-1="}]]  # the last batch: one row
    run_generate(args(tiny_testbed, prompt_file, tmp_path, method="negative", negative_prompt="1-1=",
                      negative_model="testbed:small-base"))
    assert seen["testbed:small-base"] == ["1-1="]  # a plain model reads plain text
