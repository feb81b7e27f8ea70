"""Issue 22 items 11a, 11c, 11d, 13 and 14 (the metrics side): each test failed before its fix.

References are independent: the loop-by-loop dense reference (``tests.metrics_reference``), closed forms
(chord lengths from angles), or the same metric on data it handles exactly.
"""

import math
import warnings

import pytest
import torch

from hadainit.metrics import NeuralCollapse, base
from hadainit.metrics.functional import neural_collapse
from hadainit.metrics.logits import LogitSpectrum
from hadainit.metrics.pairwise import pair_statistics
from tests.metrics_reference import reference_metrics

F64 = torch.float64
EPS = torch.finfo(F64).eps
SCALE_FREE = ("nc1", "nc1_trace", "cdnv", "gnc2_log", "gnc2_riesz", "etf_gap_means", "cos_std_means",
              "equinorm_means")


def _data(k=4, d=6, n=12, seed=0, offset=3.0):
    gen = torch.Generator().manual_seed(seed)
    means = offset * torch.randn(k, d, generator=gen, dtype=F64)
    labels = torch.arange(k * n) % k
    return means[labels] + torch.randn(k * n, d, generator=gen, dtype=F64), labels


# ---------------------------------------------------------------- 11a
def test_load_state_dict_moves_the_held_sums_to_the_loaded_reference():
    x, y = _data(seed=1)
    other, _ = _data(seed=2, offset=-9.0)
    held = NeuralCollapse(4, 6)
    held.update(x, y)
    donor = NeuralCollapse(4, 6)
    donor.update(other, y)  # its reference lies far from ``held``'s data
    held.load_state_dict(donor.state_dict())
    assert torch.equal(held.reference, donor.reference)
    want = reference_metrics(x, y)
    got = held.compute()
    for key in ("nc1", "cdnv", "within_class_trace"):  # the held data's values, not a mix
        assert math.isclose(got[key], want[key], rel_tol=1e-10), (key, got[key], want[key])


def test_load_state_dict_with_persistent_states_takes_both_sums_and_reference():
    x, y = _data(seed=3)
    donor = NeuralCollapse(4, 6)
    donor.persistent(True)
    donor.update(x, y)
    target = NeuralCollapse(4, 6)
    target.persistent(True)
    target.update(_data(seed=4)[0], y)
    target.load_state_dict(donor.state_dict())
    want = reference_metrics(x, y)
    assert math.isclose(target.compute()["nc1"], want["nc1"], rel_tol=1e-10)


# ---------------------------------------------------------------- 11c
@pytest.mark.parametrize("power", [-600, -540, -1000, 540, 900])
def test_scale_free_values_exact_at_extreme_feature_scales(power):
    # a power of two scales the features exactly, so the values at 2^power are those of the data at 1
    x, y = _data(seed=5)
    want = reference_metrics(x, y)
    scaled = x * 2.0**power
    metric = NeuralCollapse(4, 6)
    metric.update(scaled[:20], y[:20])
    metric.update(scaled[20:], y[20:])
    for got in (metric.compute(), neural_collapse(scaled, y)):
        for key in SCALE_FREE:
            assert math.isfinite(got[key]), (key, got[key])
            assert math.isclose(got[key], want[key], rel_tol=1e-10), (key, got[key], want[key])
        # the within-class trace is not scale-free: it scales by 4^power (0 or inf where that leaves float64)
        w = want["within_class_trace"]
        expected = math.ldexp(w, 2 * power) if 2 * power + math.frexp(w)[1] <= 1024 else math.inf
        assert got["within_class_trace"] == expected or math.isclose(got["within_class_trace"], expected,
                                                                     rel_tol=1e-10, abs_tol=1e-300)


def test_scaled_sums_merge_with_ordinary_ones_exactly():
    x, y = _data(seed=6)
    tiny = NeuralCollapse(4, 6)
    tiny.update(x[:24] * 2.0**-600, y[:24])
    plain = NeuralCollapse(4, 6)
    plain.update(x[24:] * 2.0**-600 * 2.0**450, y[24:])  # inside the band only after the 2^450: scale 1 here
    both = NeuralCollapse(4, 6)
    both.update(x * 2.0**-600, y)
    tiny.merge_state({**plain.metric_state, "reference": plain.reference})  # different scales: moved exactly
    # not the same data (the second half was 2^450 larger), so compare with the dense reference of the mix
    mixed = torch.cat((x[:24] * 2.0**-600, x[24:] * 2.0**-150))
    want = reference_metrics(mixed * 2.0**600, y)
    got = tiny.compute()
    for key in ("nc1", "nc1_trace", "cdnv"):
        assert math.isclose(got[key], want[key], rel_tol=1e-9), (key, got[key], want[key])
    assert math.isclose(both.compute()["nc1"], reference_metrics(x, y)["nc1"], rel_tol=1e-10)


# ---------------------------------------------------------------- 11d
def _chord(phi_a, phi_b):
    return 2 * abs(math.sin((phi_a - phi_b) / 2))  # ||u_a - u_b|| for unit vectors at angles phi


@pytest.mark.parametrize("separation", [1e-6, 1e-8, 1e-10, 1e-13])
def test_gnc2_energies_and_cdnv_keep_their_digits_for_close_means(separation):
    rows = torch.tensor([[1.0, 0.0], [1.0, separation], [-1.0, 0.3]], dtype=F64)
    variances = torch.tensor([0.5, 0.25, 1.0], dtype=F64)
    phi = [math.atan2(float(r[1]), float(r[0])) for r in rows]
    pairs = [(0, 1), (0, 2), (1, 2)]
    chords = [_chord(phi[a], phi[b]) for a, b in pairs]
    log_energy = sum(-math.log(c) for c in chords) / 3  # ordered pairs: each unordered pair twice, /6 * 2
    riesz = sum(1 / c for c in chords) / 3
    sq = [float(((rows[a] - rows[b]) ** 2).sum()) for a, b in pairs]  # the rows' own differences: exact here
    sq[0] = separation**2
    cdnv = sum((float(variances[a] + variances[b])) / (2 * s) for (a, b), s in zip(pairs, sq)) / 3
    got = pair_statistics(rows, variances)
    # from the differences of the unit rows: a few roundings relative to the chord, at any separation
    assert math.isclose(got.gnc2_riesz, riesz, rel_tol=1e-12)
    assert math.isclose(got.gnc2_log, log_energy, rel_tol=1e-12)
    assert math.isclose(got.cdnv, cdnv, rel_tol=1e-12)
    assert math.isclose(got.min_distance, separation, rel_tol=1e-12)


def test_coinciding_means_and_directions_give_infinite_energies():
    rows = torch.tensor([[0.1, 0.7, -0.3], [0.1, 0.7, -0.3], [-1.0, 0.3, 0.2]], dtype=F64)
    got = pair_statistics(rows, torch.ones(3, dtype=F64))
    assert got.cdnv == math.inf and got.gnc2_log == math.inf and got.gnc2_riesz == math.inf
    assert got.min_distance == 0.0
    same_direction = rows.clone()
    same_direction[1] *= 2.0  # distinct means, one direction: the energies are infinite, the CDNV finite
    got = pair_statistics(same_direction, torch.ones(3, dtype=F64))
    assert got.gnc2_log == math.inf and got.gnc2_riesz == math.inf and math.isfinite(got.cdnv)


def test_coinciding_class_means_in_the_metric_are_infinite():
    base_point = torch.tensor([[0.375, -0.25, 0.875]], dtype=F64)
    step = torch.tensor([[0.5, 0.25, -0.125]], dtype=F64)  # dyadic values: both means are exactly base_point
    x = torch.cat((base_point + step, base_point - step, base_point + 2 * step, base_point - 2 * step,
                   torch.tensor([[-2.0, 1.0, 0.0], [-2.0, 1.5, 0.0]], dtype=F64)))
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    got = neural_collapse(x, y)
    assert got["cdnv"] == math.inf and got["gnc2_log"] == math.inf and got["gnc2_riesz"] == math.inf


# ---------------------------------------------------------------- 13
def test_a_metric_larger_than_memory_is_refused_with_its_size(monkeypatch):
    monkeypatch.setattr(base, "_physical_memory", lambda: 64 * 2**30)
    with pytest.raises(ValueError, match=r"GiB.*num_classes=2147483648"):
        NeuralCollapse(2**31, 4)
    with pytest.raises(ValueError, match="GiB"):
        LogitSpectrum(2**17)  # a K x K state: 128 GiB


def test_a_large_metric_is_announced_with_its_size(monkeypatch):
    monkeypatch.setattr(base, "WARN_BYTES", 1000)
    with pytest.warns(UserWarning, match=r"GiB"):
        NeuralCollapse(10, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setattr(base, "WARN_BYTES", 1 << 30)
        NeuralCollapse(10, 8)


# ---------------------------------------------------------------- 14
@pytest.mark.parametrize("bad", [[0, 1, 7], [0, -1, 2], [4, 0, 1]])
def test_logit_spectrum_labels_outside_range_are_a_clear_error(bad):
    metric = LogitSpectrum(4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        metric.update(torch.randn(3, 4), torch.tensor(bad))
    assert metric.counts.sum() == 0  # nothing was added
