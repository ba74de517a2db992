"""The composite's spec, directory and fusion rule (no vLLM needed; the vLLM model itself is tested
in tests/test_vllm_fusion.py)."""

import json

import pytest
import torch

from align.cli import main
from decoding.fusion import ARCHITECTURE, CONFIG_KEY, FusionSpec, fuse_logits, fuse_logprobs, write_fusion


def _lp(*rows):
    return torch.log_softmax(torch.tensor(rows, dtype=torch.float32), -1)


def test_eft_fusion_by_hand():
    torch.manual_seed(0)
    large, ta, tb, ref = (torch.log_softmax(torch.randn(4, 7), -1) for _ in range(4))
    spec = FusionSpec("eft", large="L", tuned=["A", "B"], reference="R", weights=[0.7, -0.2], vocab_size=7)
    got = fuse_logprobs(spec, {"large": large, "tuned_a": ta, "tuned_b": tb, "reference": ref})
    raw = large + 0.7 * (ta - ref) - 0.2 * (tb - ref)
    torch.testing.assert_close(got, raw - raw.logsumexp(-1, keepdim=True))
    # no reference: the large model's own log-probs are the reference
    alone = fuse_logprobs(FusionSpec("eft", large="L", tuned=["A"], vocab_size=7), {"large": large, "tuned_a": ta})
    torch.testing.assert_close(alone, ta)


def test_dlf_fusion_on_a_one_point_grid_is_fixed_weight_fusion():
    """With one α on the grid DLF has nothing to choose: softmax(l + α (expert - small))."""
    torch.manual_seed(1)
    large, small, expert = (torch.log_softmax(torch.randn(3, 5), -1) for _ in range(3))
    spec = FusionSpec("dlf", large="L", small_base="S", experts=["E"], grid=[0.6], vocab_size=5)
    got = fuse_logprobs(spec, {"large": large, "small_base": small, "expert_a": expert})
    torch.testing.assert_close(got, torch.log_softmax(large + 0.6 * (expert - small), -1))


@pytest.mark.parametrize("spec", [
    FusionSpec("eft", large="L", tuned=["A", "B"], reference="R", weights=[0.7, -0.2], vocab_size=7),
    FusionSpec("eft", large="L", tuned=["A"], weights=[1.5], vocab_size=7),  # the large model is the reference
    FusionSpec("eft", large="L", tuned=["A"], reference="R", upscale_top_p=0.6, vocab_size=7),
    FusionSpec("dlf", large="L", small_base="R", experts=["A", "B"], vocab_size=7),
], ids=["eft", "eft-no-reference", "eft-top-p", "dlf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fusing_raw_logits_equals_fusing_the_members_log_probs(spec, dtype):
    """What the composite computes from raw, padded logits (9 rows, 7 real ids, the members' dtype)
    is the log-prob rule on the members' own log-probs, with -inf on the padding ids."""
    torch.manual_seed(2)
    names = {"large": "large", "A": "tuned_a" if spec.method == "eft" else "expert_a",
             "B": "tuned_b" if spec.method == "eft" else "expert_b", "R": "reference" if spec.method == "eft" else "small_base"}
    raw = {names[k]: (3 * torch.randn(4, 9)).to(dtype) for k in ("large", "A", "B", "R")}
    raw = {k: v for k, v in raw.items() if k in spec.members()}
    got = fuse_logits(spec, raw)
    want = fuse_logprobs(spec, {k: torch.log_softmax(v[:, :7].float(), -1) for k, v in raw.items()})
    assert got.dtype == torch.float32 and got.shape == (4, 9)
    torch.testing.assert_close(got[:, :7], want, rtol=0, atol=2e-6)
    assert torch.isneginf(got[:, 7:]).all()


def test_member_names_hold_no_digits_and_bad_specs_are_named():
    spec = FusionSpec("dlf", large="L", small_base="S", experts=["E1", "E2"])
    assert list(spec.members()) == ["large", "small_base", "expert_a", "expert_b"]
    assert not any(c.isdigit() for name in spec.members() for c in name)
    with pytest.raises(ValueError, match="at least one tuned"):
        FusionSpec("eft", large="L")
    with pytest.raises(ValueError, match="weights: got 2 values for 1 models"):
        FusionSpec("eft", large="L", tuned=["A"], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="dlf fusion needs small_base"):
        FusionSpec("dlf", large="L", experts=["E"])


def test_align_fuse_writes_a_composite_without_weights(tiny_testbed, tmp_path, capsys):
    out = tmp_path / "eft"
    cache = str(tiny_testbed.root.parents[1])
    profile = tiny_testbed.manifest["profile"]
    code = main(["fuse", "--method", "eft", "--large", "testbed:large-base", "--tuned", "testbed:small-instruct",
                 "--reference", "testbed:small-base", "--weights", "0.5", "--profile", profile, "--cache_dir", cache, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    large = json.loads((tiny_testbed.path("large-base") / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE] and config["hidden_size"] == large["hidden_size"]
    spec = FusionSpec.from_config(config)
    assert spec.members() == {"large": str(tiny_testbed.path("large-base").resolve()),
                              "tuned_a": str(tiny_testbed.path("small-instruct").resolve()),
                              "reference": str(tiny_testbed.path("small-base").resolve())}
    assert spec.weights == [0.5] and spec.vocab_size == len(tiny_testbed.tokenizer())
    assert (out / "model.safetensors").stat().st_size < 64  # an empty weight file: nothing copied
    assert (out / "tokenizer.json").is_file() and CONFIG_KEY in config


def test_align_fuse_names_a_member_with_another_tokenizer(tiny_testbed, tmp_path, capsys, cache_dir):
    from align.testbed import build_testbed

    other = "tiny-bpe" if tiny_testbed.manifest["profile"] == "tiny" else "tiny"
    foreign = build_testbed(other, seed=0, cache_dir=cache_dir, workers=1, show_progress=False).path("small-instruct")
    code = main(["fuse", "--method", "dlf", "--large", str(tiny_testbed.path("large-base")), "--small_base",
                 str(tiny_testbed.path("small-base")), "--experts", str(foreign), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "do not share a vocabulary" in err and str(foreign.resolve()) in err
    assert not (tmp_path / "x").exists()  # checked before anything is written


def test_a_member_without_safetensors_is_named(tiny_testbed, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_testbed.path("small-base"), bare)
    for f in bare.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ValueError, match=r"fusion member tuned_a .*bare.*no \*\.safetensors"):
        write_fusion(FusionSpec("eft", large=str(tiny_testbed.path("large-base")), tuned=[str(bare)]), tmp_path / "out")
