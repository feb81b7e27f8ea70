"""The study's measurements (hadainit.experiments.measures) against independent computations."""

import math

import numpy as np
import pytest
import torch

from hadainit.experiments import measures as m


# ------------------------------------------------------------ paired statistics
def test_paired_difference_matches_scipy_ttest_rel():
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(1)
    for trial in range(50):
        n = int(rng.integers(2, 9))
        b = rng.normal(0, 1, n)
        a = b + rng.normal(rng.normal(0, 1), rng.uniform(0.1, 2), n)
        got = m.paired_difference(list(a), list(b))
        ref = ttest_rel(a, b)
        ci = ref.confidence_interval(0.95)
        assert got["n"] == n
        assert math.isclose(got["mean"], float(np.mean(a - b)), rel_tol=1e-12, abs_tol=1e-15)
        assert math.isclose(got["p"], float(ref.pvalue), rel_tol=1e-9), trial
        assert math.isclose(got["low"], float(ci.low), rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(got["high"], float(ci.high), rel_tol=1e-9, abs_tol=1e-12)


def test_minimal_detectable_effect_has_the_stated_power():
    """At a true mean difference equal to the MDE, the exact power of the paired t-test (noncentral t) is about 80%:
    the normal-quantile approximation is within a few points for n >= 4."""
    from scipy.stats import nct, t

    rng = np.random.default_rng(2)
    for n in (4, 6, 10, 20):
        d = rng.normal(0, 1, n)
        got = m.paired_difference(list(d), [0.0] * n)
        se = got["sd"] / math.sqrt(n)
        q = t.ppf(0.975, n - 1)
        delta = got["mde"] / se
        power = nct.sf(q, n - 1, delta) + nct.cdf(-q, n - 1, delta)
        assert 0.75 < power < 0.86, (n, power)


def test_paired_difference_refuses_unequal_lengths_and_skips_missing():
    with pytest.raises(ValueError, match="equal lengths"):
        m.paired_difference([1.0, 2.0], [1.0])
    got = m.paired_difference([1.0, None, 3.0, 4.0], [0.0, 1.0, math.nan, 2.0])
    assert got["n"] == 2 and got["mean"] == 1.5


def test_holm_by_hand():
    # sorted p: 0.01, 0.02, 0.03, 0.04 with m = 4: 0.04, 0.06, 0.06 (monotone), 0.06
    assert m.holm([0.03, 0.01, None, 0.04, 0.02]) == pytest.approx([0.06, 0.04, None, 0.06, 0.06])
    assert m.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert m.holm([]) == []


def test_holm_controls_the_family_wise_error_under_the_null():
    rng = np.random.default_rng(3)
    rejections = sum(any(p < 0.05 for p in m.holm(list(rng.uniform(size=12)))) for _ in range(4000))
    assert rejections / 4000 < 0.05 + 3 * math.sqrt(0.05 * 0.95 / 4000)


# ------------------------------------------------------------- divergence
def _curve(losses, accs=None):
    accs = accs or [None] * len(losses)
    return [{"epochs_done": float(i + 1), **({"train/loss": l} if l is not None else {}),
             **({"train/acc": a} if a is not None else {})} for i, (l, a) in enumerate(zip(losses, accs))]


def test_divergence_on_synthetic_curves():
    smooth = _curve([2.0 / (1 + e) for e in range(50)], [min(1.0, 0.1 + 0.03 * e) for e in range(50)])
    assert m.divergence(smooth) is None
    # the CNN case of issue 25: loss 0.007 -> 5 at epoch 160
    spike = _curve([1.0] + [0.007] * 158 + [5.0, 4.0], [0.5] + [1.0] * 158 + [0.3, 0.4])
    got = m.divergence(spike)
    assert got["epoch"] == 160.0 and "running minimum" in got["reason"]
    just_under = _curve([1.0, 0.1, 0.99])  # 9.9x the minimum: not a divergence
    assert m.divergence(just_under) is None
    assert m.divergence(_curve([1.0, 0.5, math.nan]))["epoch"] == 3.0
    drop = _curve([1.0, 0.9, 0.8], [0.9, 0.95, 0.8])
    assert m.divergence(drop)["epoch"] == 3.0 and "train/acc" in m.divergence(drop)["reason"]


def test_a_noisy_early_phase_is_not_a_divergence_a_late_spike_is():
    """Issue 25 (false positives): accuracy swinging by 0.3 while still below 0.9 (the loss falling, with
    bumps under 10x) is learning, not divergence; the same drop after the accuracy reached 0.9 is."""
    early_acc = [0.1, 0.45, 0.15, 0.6, 0.3, 0.8, 0.55, 0.85, 0.89, 0.6]
    early_loss = [2.3, 1.5, 2.0, 1.1, 1.6, 0.7, 1.0, 0.5, 0.4, 0.9]
    noisy = _curve(early_loss + [0.3, 0.2, 0.1], early_acc + [0.92, 0.95, 0.97])
    assert m.divergence(noisy) is None
    late = _curve(early_loss + [0.3, 0.2, 0.1, 0.15], early_acc + [0.92, 0.95, 0.97, 0.7])
    got = m.divergence(late)
    assert got["epoch"] == 14.0 and "train/acc" in got["reason"]
    # the loss criterion is unchanged, armed or not: 10x over the running minimum in the early phase
    loss_spike = _curve([2.3, 1.0, 0.5, 6.0], [0.1, 0.3, 0.5, 0.1])
    assert m.divergence(loss_spike)["epoch"] == 4.0 and "running minimum" in m.divergence(loss_spike)["reason"]


def test_truncation_flags_runs_short_of_their_plan():
    table = _curve([1.0] * 20)
    assert m.truncation(table, 20) is None
    assert m.truncation(table, 200) == {"last_epoch": 20.0, "planned": 200}
    assert m.truncation([], 5) == {"last_epoch": 0.0, "planned": 5}


# ------------------------------------------------- label-free distance
def _collapsed(k, scale, shifts_rows, shifts_cols):
    p = torch.eye(k, dtype=torch.float64) - 1.0 / k
    return scale * p + shifts_rows.unsqueeze(1) + shifts_cols.unsqueeze(0)


def test_label_free_distance_is_zero_at_collapse_and_relabelling_invariant():
    gen = torch.Generator().manual_seed(0)
    for k in (3, 8, 10):
        z = _collapsed(k, 3.7, torch.randn(k, generator=gen, dtype=torch.float64),
                       torch.randn(k, generator=gen, dtype=torch.float64))
        assert m.label_free_distance(z) < 1e-14 * k
        noisy = torch.randn(k, k, generator=gen, dtype=torch.float64)
        d = m.label_free_distance(noisy)
        assert 0 < d <= 2
        for _ in range(5):
            perm = torch.randperm(k, generator=gen)
            assert math.isclose(m.label_free_distance(noisy[perm][:, perm]), d, rel_tol=1e-12)
        assert math.isclose(m.label_free_distance(7.0 * noisy), d, rel_tol=1e-12)  # scale-free
        # independent dense form: P Z P with explicit projector matrices
        p = torch.eye(k, dtype=torch.float64) - torch.ones(k, k, dtype=torch.float64) / k
        zc = p @ noisy @ p
        ref = torch.linalg.matrix_norm(zc / torch.linalg.matrix_norm(zc) - p / torch.linalg.matrix_norm(p)).item()
        assert math.isclose(d, ref, rel_tol=1e-12)


def test_label_free_distance_refuses_an_undefined_input():
    with pytest.raises(ValueError, match="zero"):
        m.label_free_distance(torch.ones(4, 4))
    with pytest.raises(ValueError, match="K x K"):
        m.label_free_distance(torch.ones(3, 4))


def test_fourier_leakage_depends_on_the_class_order_and_the_spread_shows_it():
    """A circulant Z is diagonal in the fourier basis (leakage 0 in the given order); relabelled, it is not."""
    k = 10
    first = torch.tensor([5.0, 1.0, -0.5, 0.3, -1.0, 0.2, -1.0, 0.3, -0.5, 1.0], dtype=torch.float64)  # symmetric
    z = torch.stack([first.roll(j) for j in range(k)], 1)
    spread = m.leakage_over_relabellings(z, count=50)
    assert spread["given"] < 1e-12
    assert spread["min"] <= spread["median"] <= spread["max"] and spread["max"] > 0.1
    assert m.label_free_distance(z) > 0  # not collapsed, and the same for every order


# --------------------------------------------------------------- margins
def test_margin_summary_against_direct_formulas():
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(200, 7, generator=gen, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (200,), generator=gen)
    s = m.margin_summary(z, y)
    margins = [float(z[i, y[i]] - max(z[i, j] for j in range(7) if j != y[i])) for i in range(200)]
    assert math.isclose(s["margin_min"], min(margins), rel_tol=1e-12)
    assert math.isclose(s["margin_mean"], float(np.mean(margins)), rel_tol=1e-12)
    ref_soft = -math.log(np.mean(np.exp(-np.array(margins))))
    assert math.isclose(s["margin_softmin"], ref_soft, rel_tol=1e-12)
    assert s["margin_min"] <= s["margin_softmin"] <= s["margin_mean"]
    loss = float(torch.nn.functional.cross_entropy(z, y))
    assert math.isclose(s["neg_log_loss"], -math.log(loss), rel_tol=1e-12)
    big = m.margin_summary(z * 1e3, y)  # large logits: stable (no inf/NaN)
    assert all(math.isfinite(v) for k, v in big.items() if k != "neg_log_loss")


def test_efold_slopes_of_a_log_law_and_a_power_law():
    t = list(np.geomspace(1, 1e4, 400))
    log_law = m.efold_slopes(t, [2.0 * math.log(x) + 3 for x in t], start=10.0)
    assert len(log_law) >= 6 and all(abs(w["slope"] - 2.0) < 1e-9 for w in log_law)
    power = m.efold_slopes(t, [x**0.5 for x in t], start=10.0)  # slope per e-fold grows like sqrt(t)/2
    assert all(b["slope"] > a["slope"] * 1.4 for a, b in zip(power, power[1:]))
    with pytest.raises(ValueError):
        m.efold_slopes(t, t, start=0.0)


def test_the_mde_range_uses_only_complete_comparisons():
    """Issue 25: a comparison that lost a seed (an excluded run) has a larger MDE that is not the design's; the
    stated range covers the comparisons with both arms healthy at every seed."""
    from hadainit.experiments.study import paired_comparisons, mde_range

    def run(init, seed, loss, healthy=True):
        return {"setup": "s", "weight_decay": 0.0, "init": init, "seed": seed, "healthy": healthy,
                "values": {"endpoints": {"log_loss@10": loss}}}

    gen = np.random.default_rng(0)
    runs = []
    for seed in range(4):
        base = gen.normal()
        runs += [run("default", seed, base), run("etf", seed, base + 0.1 * gen.normal()),
                 run("orthogonal", seed, base + 0.1 * gen.normal(), healthy=seed != 3)]
    paired = paired_comparisons(runs)
    by_arm = {c["arm"]: c for c in paired}
    assert by_arm["etf"]["complete"] and by_arm["etf"]["n"] == 4
    assert not by_arm["orthogonal"]["complete"] and by_arm["orthogonal"]["n"] == 3
    lo, hi = mde_range(paired, "log_loss@10")
    assert lo is hi is by_arm["etf"]
    assert mde_range([by_arm["orthogonal"]], "log_loss@10") is None
