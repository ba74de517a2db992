"""Coverage of the claims' interval, measured by simulating the designs the published claims use:
1 build x 3 seeds and 3 builds x 3 seeds, every row scoring the same prompts, with build, seed and
prompt effects of the sizes read from ``data/claims`` (per-build and per-seed spreads of the
published differences). A nominal 95% interval must cover the true mean at least 93% of the time
and be no wider than needed where an exact interval exists. The same harness run on a nested
bootstrap (prompts resampled independently inside every row) finds it under-covering: the test
can fail."""

import numpy as np
import pytest
from scipy.stats import norm
from scipy.stats import t as t_dist

from align.claims.protocol import paired_difference, seeded_interval

REPS = 600

# name: (builds, seeds per build, prompts, sd of build, seed, prompt, build x prompt, noise)
# noise is each row's own per-prompt spread (sampling, a retrained model's other mistakes)
DESIGNS = {
    # a decoding difference on binary answers (eft-upscaling: build sd 0.06, seed sd 0.016, 350 prompts)
    "3x3 decoding": (3, 3, 350, 0.06, 0.016, 0.3, 0.05, 0.35),
    # a small training gain (dpo-gold / rpo-gold: build sd 0.01, seed sd 0.01)
    "3x3 small gain": (3, 3, 350, 0.01, 0.01, 0.15, 0.03, 0.2),
    # the build dominates (dlf-vs-fixed: build sd 0.10, 560 prompts)
    "3x3 build-dominated": (3, 3, 560, 0.10, 0.008, 0.3, 0.05, 0.3),
    # a log-probability difference on few prompts (rpo-displacement: build sd 0.5, seed sd 0.3, 140 prompts)
    "3x3 log-prob": (3, 3, 140, 0.5, 0.3, 1.0, 0.3, 1.5),
    # prompts dominate, the issue's own simulation (prompt sd 0.3, build sd 0.02, noise 0.3)
    "3x3 prompt-dominated": (3, 3, 350, 0.02, 0.0, 0.3, 0.0, 0.3),
    # one build, three seeds (bco-vs-dpo: seed sd 0.025, 350 prompts; overoptimization: 70 prompts)
    "1x3 training": (1, 3, 350, 0.0, 0.025, 0.2, 0.0, 0.3),
    "1x3 few prompts": (1, 3, 70, 0.0, 0.036, 0.3, 0.0, 0.4),
    "1x3 seed-dominated": (1, 3, 77, 0.0, 0.096, 0.2, 0.0, 0.3),
}


def simulate(design, reps=REPS, seed=0):
    """``reps`` tables ``[rows, prompts]`` of a design whose true mean is 0, and the build labels."""
    b, k, p, s_build, s_seed, s_prompt, s_bp, s_noise = design
    rng = np.random.default_rng(seed)
    x = (rng.normal(0, s_build, (reps, b, 1, 1)) + rng.normal(0, s_seed, (reps, b, k, 1))
         + rng.normal(0, s_prompt, (reps, 1, 1, p)) + rng.normal(0, s_bp, (reps, b, 1, p)) + rng.normal(0, s_noise, (reps, b, k, p)))
    return x.reshape(reps, b * k, p), [i for i in range(b) for _ in range(k)]


def coverage(interval, design, reps=REPS):
    tables, builds = simulate(design, reps)
    ends = np.array([interval(x, builds) for x in tables])
    return float(((ends[:, 0] <= 0) & (0 <= ends[:, 1])).mean()), ends[:, 1] - ends[:, 0]


def ours(x, builds):
    r = seeded_interval(x, builds=builds)
    return r["low"], r["high"]


def nested_bootstrap(x, builds, n_resamples=400, seed=0):
    """The interval the claims used before: builds, then seeds within a build, then prompts drawn
    independently inside every row (written out here, independent of the project's code)."""
    rng = np.random.default_rng(seed)
    b = len(set(builds))
    nested = x.reshape(b, -1, x.shape[1])
    _, k, p = nested.shape
    drawn = rng.integers(0, b, (n_resamples, b))
    seeds = rng.integers(0, k, (n_resamples, b, k))
    prompts = rng.integers(0, p, (n_resamples, b, k, p))
    means = nested[drawn[..., None, None], seeds[..., None], prompts].mean(axis=(1, 2, 3))
    return tuple(np.quantile(means, [0.025, 0.975]))


@pytest.mark.parametrize("name", list(DESIGNS))
def test_the_claims_interval_covers_at_its_nominal_level_in_every_design_the_claims_use(name):
    cover, widths = coverage(ours, DESIGNS[name])
    # 600 replications: the binomial standard error of a true 0.95 is 0.009, so 0.93 is over 2 se below
    assert cover >= 0.93, f"{name}: coverage {cover:.3f}"
    assert cover <= 0.99, f"{name}: coverage {cover:.3f} (the interval is far wider than it needs to be)"


def test_the_harness_finds_the_nested_bootstrap_under_covering():
    """The interval the claims published before this test existed, on the 3 x 3 design the
    issue measured (0.78 there): far below 0.93, so a regression to it fails."""
    cover, _ = coverage(nested_bootstrap, DESIGNS["3x3 prompt-dominated"], reps=200)
    assert cover < 0.85


def test_width_is_within_1_3x_of_the_exact_interval_where_one_exists():
    """Two designs with an exact interval. Builds and noise but no shared prompt effect: the
    t-interval over the three build means (2 df). One row: the t-interval over prompts. Ours is
    no more than 1.3x as wide (median over replications) and the second is the same interval."""
    design = (3, 3, 350, 0.06, 0.016, 0.0, 0.0, 0.35)
    tables, builds = simulate(design, 400)
    ratio = []
    for x in tables:
        low, high = ours(x, builds)
        means = x.reshape(3, 3, -1).mean(axis=(1, 2))
        exact = 2 * t_dist.ppf(0.975, 2) * means.std(ddof=1) / np.sqrt(3)
        ratio.append((high - low) / exact)
    assert np.median(ratio) <= 1.3
    x = np.random.default_rng(1).normal(0.2, 0.5, (1, 200))
    r = seeded_interval(x)
    half = t_dist.ppf(0.975, 199) * x.std(ddof=1) / np.sqrt(200)
    assert (r["low"], r["high"]) == pytest.approx((x.mean() - half, x.mean() + half), abs=1e-4)


def test_binary_scores_cover_too():
    """Per-prompt 0/1 answers (what most claims score), 3 builds x 3 seeds: a treated arm whose
    probit shifts by a prompt-, build- and seed-dependent amount; the true mean difference is the
    expectation over all three, computed by a large draw."""
    rng = np.random.default_rng(2)
    b, k, p, reps = 3, 3, 350, 600

    def draw(n_tables, n_prompts):
        ease = rng.normal(0, 1, (n_tables, 1, 1, n_prompts))
        shift = 0.3 + rng.normal(0, 0.3, (n_tables, 1, 1, n_prompts)) + rng.normal(0, 0.15, (n_tables, b, 1, 1)) \
            + rng.normal(0, 0.03, (n_tables, b, k, 1))
        control = rng.random((n_tables, b, k, n_prompts)) < norm.cdf(ease)
        treated = rng.random((n_tables, b, k, n_prompts)) < norm.cdf(ease + shift)
        return treated.astype(float).reshape(n_tables, b * k, n_prompts), control.astype(float).reshape(n_tables, b * k, n_prompts)

    big_t, big_c = draw(200, 5000)
    truth = float((big_t - big_c).mean())
    treated, control = draw(reps, p)
    builds = [i for i in range(b) for _ in range(k)]
    hits = [paired_difference(t, c, builds=builds) for t, c in zip(treated, control)]
    cover = np.mean([h["low"] <= truth <= h["high"] for h in hits])
    assert cover >= 0.93, cover


def test_rates_at_their_floor_or_ceiling_get_an_exact_interval():
    """0/130 over-refusals in every seed: Clopper-Pearson's upper end 0.028, not 0; 120/120 against
    a fixed 0.8 target: the difference's interval is the treated rate's exact interval minus 0.8."""
    zero = seeded_interval(np.zeros((3, 130)))
    assert zero["low"] == 0 and zero["high"] == pytest.approx(1 - 0.025 ** (1 / 130), abs=1e-4) and zero["high"] == pytest.approx(0.028, abs=5e-4)
    d = paired_difference(np.ones((3, 120)), np.full((3, 120), 0.8))
    assert d["mean"] == pytest.approx(0.2) and d["high"] == pytest.approx(0.2)
    assert d["low"] == pytest.approx(0.025 ** (1 / 120) - 0.8, abs=1e-4)  # 0.970 - 0.8
    both = paired_difference(np.ones((3, 46)), np.ones((3, 46)))
    assert both["low"] < -0.07 and both["high"] > 0.07  # 46/46 vs 46/46: each end 1 - 0.923
