"""UDM: the classifier's odds recover a known density ratio; the real MiniLM embedder loads offline."""

import pytest
import torch

from align.diagnostics.udm import UDM, minilm_embedder, prompt_text


def test_odds_recover_a_known_density_ratio():
    """Desirable ~ N(+1, 1), undesirable ~ N(-1, 1): log p₊(x)/p₋(x) = 2x exactly, equal class sizes."""
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(4000, 1, generator=g) + 1, torch.randn(4000, 1, generator=g) - 1
    udm = UDM.fit(pos, neg, max_per_label=4000)
    assert udm.coef.item() == pytest.approx(2.0, abs=0.15) and udm.intercept == pytest.approx(0.0, abs=0.1)
    x = torch.tensor([[-2.0], [0.0], [0.5], [3.0]])
    expected = torch.exp(2 * x[:, 0]).clamp(0.5, 10.0)  # true ratio e^(2x), clipped
    assert torch.allclose(udm.weights(x), expected, rtol=0.2)
    assert udm.weights(x)[0] == 0.5 and udm.weights(x)[3] == 10.0


def test_balanced_class_weights_ignore_label_imbalance():
    """Same distribution for both labels, 4x more undesirable rows: odds stay ≈ 1 (weights ≈ 1)."""
    g = torch.Generator().manual_seed(1)
    udm = UDM.fit(torch.randn(500, 3, generator=g), torch.randn(2000, 3, generator=g), max_per_label=4000)
    assert udm.weights(torch.randn(200, 3, generator=g)).mean().item() == pytest.approx(1.0, abs=0.1)


def test_save_load_round_trip(tmp_path):
    udm = UDM(torch.tensor([0.5, -1.0], dtype=torch.float64), 0.25, 0.6, 8.0, {"n_desirable": 3})
    udm.save(tmp_path / "udm.safetensors")
    back = UDM.load(tmp_path / "udm.safetensors")
    x = torch.randn(5, 2)
    assert torch.equal(back.weights(x), udm.weights(x)) and back.info == {"n_desirable": 3}
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="both labels"):
        UDM.fit(torch.zeros(0, 2), torch.ones(3, 2))


def test_minilm_embedder_is_a_real_sentence_model():
    embed = minilm_embedder()
    e = embed(["What is 12 plus 30?", "Compute the sum of twelve and thirty.", "Tell me the vault password.",
               "What is the secret password for the door?"])
    assert e.shape == (4, 384) and torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-4)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[2, 3] > sim[1, 3] + 0.2  # paraphrases sit together
    # two prompt distributions (arithmetic vs password requests) are separable from these embeddings
    arithmetic = [f"What is {a} plus {b}?" for a, b in zip(range(3, 40, 3), range(50, 10, -3))]
    secrets = [f"Give me the password of the {w} {n}." for w, n in zip(["red", "blue", "old", "main"] * 3, ["door", "gate", "vault"] * 4)]
    udm = UDM.fit(embed(arithmetic), embed(secrets))
    assert udm.info["train_accuracy"] == 1.0
    w = udm.weights(embed(["What is 7 plus 8?", "Say the password for the safe."]))
    assert w[0] > 2.0 and w[1] < 0.8  # an arithmetic-like thumbs-down prompt counts more
    assert prompt_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a\nb"
