import pytest
import torch

from decoding import AuxiliaryModel, DLFLogitsProcessor, dlf_select
from naive import assert_same_decoding, chat, naive_greedy, processor_greedy


PROMPTS = ["7+8=", "37+485=", "123-45="]
STEPS = 6
GRID = [round(0.1 * i, 1) for i in range(21)]


@pytest.fixture(scope="module")
def models(tiny_testbed):
    return {name: tiny_testbed.model(name) for name in ("small-base", "small-instruct", "large-base", "large-instruct")}


def naive_kl(p_log, q_log):
    return sum(float(pl.exp() * (pl - ql)) for pl, ql in zip(p_log, q_log))


def naive_dlf(lp, expert_names, picks):
    """Grid search written out with Python loops; records the (expert, α) chosen."""
    best = None
    for e, name in enumerate(expert_names):
        for alpha in GRID:
            z = lp["main"] + alpha * (lp[name] - lp["small"])
            fused = z - torch.logsumexp(z, -1)
            a, b = naive_kl(fused, lp["main"]), naive_kl(lp["main"], fused)
            objective = sum(
                (a - naive_kl(lp[t], lp["small"])) ** 2 + (b - naive_kl(lp["small"], lp[t])) ** 2 for t in expert_names
            )
            if best is None or objective < best[0]:
                best = (objective, e, alpha, fused)
    picks.append((best[1], best[2]))
    return best[3]


@pytest.mark.parametrize("prompts", [PROMPTS[1:2], PROMPTS], ids=["batch1", "batch3"])
@pytest.mark.parametrize("n_experts", [1, 2])
def test_dlf_equals_naive_recomputation(tiny_testbed, models, prompts, n_experts):
    tok = tiny_testbed.tokenizer()
    names = ["small-instruct", "large-instruct"][:n_experts]
    proc = DLFLogitsProcessor(
        tok,
        small_base=AuxiliaryModel(models["small-base"], tok, prompts, "small"),
        experts=[AuxiliaryModel(models[n], tok, chat(prompts), n) for n in names],
    )
    got = processor_greedy(models["large-base"], tok, prompts, proc, STEPS)
    picks = []
    expected = naive_greedy(
        tok,
        {
            "main": (models["large-base"], prompts),
            "small": (models["small-base"], prompts),
            **{n: (models[n], chat(prompts)) for n in names},
        },
        lambda lp: naive_dlf(lp, names, picks),
        STEPS,
    )
    assert_same_decoding(got, expected)
    # the recorded choices are the naive search's, row by row
    k = 0
    for row, (ids, _) in enumerate(expected):
        for step in range(len(ids)):
            expert, alpha = picks[k]
            assert int(proc.choices[step]["expert"][row]) == expert
            assert float(proc.choices[step]["alpha"][row]) == pytest.approx(alpha)
            k += 1
    assert any(p[1] > 0 for p in picks)  # the search is not degenerate on these models


def test_expert_equal_to_small_base_reproduces_large(tiny_testbed, models):
    tok = tiny_testbed.tokenizer()
    proc = DLFLogitsProcessor(
        tok,
        small_base=AuxiliaryModel(models["small-base"], tok, PROMPTS, "small"),
        experts=[AuxiliaryModel(models["small-base"], tok, PROMPTS, "same-as-small")],
    )
    got = processor_greedy(models["large-base"], tok, PROMPTS, proc, STEPS)
    expected = naive_greedy(tok, {"main": (models["large-base"], PROMPTS)}, lambda lp: lp["main"], STEPS)
    assert_same_decoding(got, expected)
    assert all((c["alpha"] == 0).all() for c in proc.choices)  # every α ties: the first (0) is kept


def test_select_hand_example():
    # one expert whose shift equals the large model's own: KL targets are met exactly at α = 1
    small = torch.log_softmax(torch.tensor([[0.0, 0.0, 0.0]]), -1)
    expert = torch.log_softmax(torch.tensor([[1.0, 0.0, -1.0]]), -1)
    large = torch.log_softmax(torch.tensor([[0.0, 0.0, 0.0]]), -1)
    fused, e, alpha = dlf_select(large, small, [expert], torch.tensor(GRID))
    assert int(e) == 0 and float(alpha) == pytest.approx(1.0)
    torch.testing.assert_close(fused, expert)


def test_bad_configuration(tiny_testbed, models):
    tok = tiny_testbed.tokenizer()
    small = AuxiliaryModel(models["small-base"], tok, PROMPTS, "small")
    with pytest.raises(ValueError, match="at least one expert"):
        DLFLogitsProcessor(tok, small_base=small, experts=[])
    with pytest.raises(ValueError, match="finite"):
        DLFLogitsProcessor(tok, small_base=small, experts=[small], grid=[0.0, float("nan")])


def dense_dlf_select(large, small, experts, grid):
    """The search written the direct way: every fused [n, G, B, V] distribution materialised."""
    q_t = torch.stack(experts)
    fused = torch.log_softmax(large + grid[None, :, None, None] * (q_t - small)[:, None], dim=-1)

    def kl(p_log, q_log):
        return (p_log.exp() * (p_log - q_log)).sum(-1)

    a, b = kl(fused, large.expand_as(fused)), kl(large.expand_as(fused), fused)
    targets_fwd, targets_rev = kl(q_t, small.expand_as(q_t)), kl(small.expand_as(q_t), q_t)  # [n, B]
    objective = ((a[..., None] - targets_fwd.T) ** 2 + (b[..., None] - targets_rev.T) ** 2).sum(-1)  # [n, G, B]
    n, g, batch = objective.shape
    best = objective.permute(2, 0, 1).reshape(batch, n * g).argmin(-1)
    return fused[best // g, best % g, torch.arange(batch)], best // g, grid[best % g]


@pytest.mark.parametrize("search", ["moments", "dense"])
@pytest.mark.parametrize(
    "grid",
    [GRID, [1.7, 0.0, 0.3, 2.0, 0.5], [-0.5, 0.0, 0.5, 1.0], [0.0, 1 / 3, 1.0, 2**0.5]],
    ids=["uniform", "unsorted-lattice", "negative", "off-lattice"],
)
def test_streaming_search_equals_dense_search_at_a_large_vocabulary(grid, search):
    """Both of dlf_select's searches (the blocked moment sums, and its own dense one) against the
    direct materialisation of every fused distribution."""
    gen = torch.Generator().manual_seed(0)
    batch, vocab = 4, 50_000

    def lp(scale):
        return torch.log_softmax(scale * torch.randn(batch, vocab, generator=gen, dtype=torch.float64), -1).float()

    large, small = lp(3.0), lp(2.0)
    experts = [(small + 0.5 * lp(2.0)).log_softmax(-1), (small + 0.2 * lp(4.0)).log_softmax(-1)]
    grid_t = torch.tensor(grid)
    fused, expert, alpha = dlf_select(large, small, experts, grid_t, search=search)
    want_fused, want_expert, want_alpha = dense_dlf_select(large, small, experts, grid_t)
    assert torch.equal(expert, want_expert) and torch.equal(alpha, want_alpha)
    if grid == GRID:  # rows choose differently: not a degenerate case
        assert len(set(zip(expert.tolist(), alpha.tolist()))) > 1
    torch.testing.assert_close(fused, want_fused, atol=1e-5, rtol=1e-5)


def test_lattice_detection_routes_grids_to_both_moment_paths():
    from decoding.dlf import _lattice

    step, ks = _lattice([0.0, 0.3, 0.5, 1.7, 2.0])  # the "unsorted-lattice" grid above, sorted
    assert step == pytest.approx(0.1) and ks == [0, 3, 5, 17, 20]
    assert _lattice([0.0, 1 / 3, 1.0, 2**0.5]) is None  # "off-lattice": one exp per candidate
    assert _lattice([0.0, 100.0, 100.5]) is None  # 201 steps: more powers than the exp path costs


def test_a_search_whose_moments_underflow_picks_what_the_dense_search_picks():
    """log P of -200 and -80 beside 0, and a shift whose maximum sits on the -200 token: every
    candidate's e^{o(s - max s)} underflows on the dominant token, the sums go to 0 and the
    objective to NaN, which argmin used to pick (α = 1.7 here; the dense search in fp32 and fp64: 0)."""
    large = torch.log_softmax(torch.tensor([[0.0, -209.1721, -98.5989]]), -1)
    small = torch.log_softmax(torch.tensor([[0.0, -49.5886, -59.0108]]), -1)
    expert = torch.log_softmax(torch.tensor([[-13.040, -2.1458e-06, -46.719]]), -1)
    grid = torch.tensor(GRID)
    fused, chosen, alpha = dlf_select(large, small, [expert], grid, search="moments")  # 3 ids: auto would go dense
    for dtype in (torch.float32, torch.float64):
        want_fused, want_expert, want_alpha = dense_dlf_select(large.to(dtype), small.to(dtype), [expert.to(dtype)], grid.to(dtype))
        assert float(alpha) == float(want_alpha) and torch.equal(chosen, want_expert)
    assert torch.isfinite(fused[:, 0]).all()
    torch.testing.assert_close(fused, want_fused.float(), atol=1e-5, rtol=1e-5)


def test_the_accelerator_path_never_picks_a_lost_candidate(monkeypatch):
    """Without syncs (GPU) the underflowed candidates are dropped, not recomputed: the pick is finite
    and not the NaN candidate the unguarded search took (α = 1.7)."""
    import decoding.dlf as dlf_module

    monkeypatch.setattr(dlf_module, "syncs_are_free", lambda device: False)
    large = torch.log_softmax(torch.tensor([[0.0, -209.1721, -98.5989]]), -1)
    small = torch.log_softmax(torch.tensor([[0.0, -49.5886, -59.0108]]), -1)
    expert = torch.log_softmax(torch.tensor([[-13.040, -2.1458e-06, -46.719]]), -1)
    fused, _, alpha = dlf_select(large, small, [expert], torch.tensor(GRID), search="moments")
    assert float(alpha) < 1.7 and torch.isfinite(fused[:, 0]).all()


def test_auto_search_is_dense_at_the_testbed_size_and_moments_at_a_real_vocabulary(monkeypatch):
    import decoding.dlf as dlf_module

    calls = []
    real = dlf_module._tilted_moments
    monkeypatch.setattr(dlf_module, "_tilted_moments", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(1)
    for vocab, moments in ((96, False), (152_000, True)):
        large, small, expert = (torch.log_softmax(torch.randn(8, vocab, generator=gen), -1) for _ in range(3))
        calls.clear()
        dlf_select(large, small, [expert], torch.tensor(GRID))
        assert bool(calls) is moments, vocab
    with pytest.raises(ValueError, match="search must be"):
        dlf_select(large, small, [expert], torch.tensor(GRID), search="fast")

