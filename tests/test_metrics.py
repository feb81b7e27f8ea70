"""SPEC section 6: the neural-collapse metrics against an independent dense reference and known geometry."""

import math
import warnings

import pytest
import torch

from hadainit import InitialBasis, hadamard_, initial_basis
from hadainit.bases import paired_spectrum
from hadainit.metrics import NearestMeanDisagreement, NeuralCollapse, base
from hadainit.metrics.functional import neural_collapse, per_class
from hadainit.metrics.pairwise import pair_statistics
from hadainit.ufm import UFM, kl_lyapunov
from hadainit.metrics.logits import LogitSpectrum
from tests.metrics_reference import mixture, reference_metrics, reference_per_class


def _data(k, d, n_per_class, seed=0, spread=0.5, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=gen, dtype=torch.float64) + offset
    labels = torch.arange(k).repeat(n_per_class)[torch.randperm(k * n_per_class, generator=gen)]
    x = means[labels] + spread * torch.randn(k * n_per_class, d, generator=gen, dtype=torch.float64)
    w = torch.randn(k, d, generator=gen, dtype=torch.float64)
    b = torch.randn(k, generator=gen, dtype=torch.float64)
    return x, labels, w, b


def _close(got, want, rtol=1e-10, atol=1e-13):
    assert set(want) <= set(got), set(want) - set(got)
    for key, value in want.items():
        if math.isinf(value):
            assert got[key] == value, key
            continue
        assert abs(got[key] - value) <= rtol * abs(value) + atol, (key, got[key], value)


def _streamed(x, labels, k, w=None, batch=37, **kwargs):
    metric = NeuralCollapse(k, x.shape[1], **kwargs)
    for i in range(0, x.shape[0], batch):
        metric.update(x[i : i + batch], labels[i : i + batch])
    metric.set_classifier(w)
    return metric.compute()


@pytest.mark.parametrize("k", [2, 3, 10, 100])
@pytest.mark.parametrize("d", [4, 64, 512])
def test_against_dense_reference(k, d):
    n_per_class = 6 if k == 100 else 12
    x, labels, w, b = _data(k, d, n_per_class, seed=k * 1000 + d)
    q = torch.linalg.qr(torch.randn(k, k, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(d, min(k, d), dtype=torch.float64))[0]
    basis = InitialBasis("custom", q[:, : min(k, d)], v)
    ref = reference_metrics(x, labels, w, b, basis=basis)
    _close(neural_collapse(x, labels, w, b, basis=basis), ref)
    streamed_ref = {key: val for key, val in ref.items() if key != "nc4"}  # NC4 streams separately
    metric = NeuralCollapse(k, d)
    for i in range(0, x.shape[0], 37):
        metric.update(x[i : i + 37], labels[i : i + 37])
    metric.set_classifier(w, basis=basis)
    _close(metric.compute(), streamed_ref)


@pytest.mark.parametrize("global_mean", ["unweighted", "weighted"])
def test_global_mean_choices(global_mean):
    x, labels, w, _ = _data(5, 16, 10, seed=3)
    keep = (labels != 2) | (torch.arange(len(labels)) % 3 == 0)  # unequal class sizes
    x, labels = x[keep], labels[keep]
    ref = reference_metrics(x, labels, w, global_mean=global_mean)
    _close(neural_collapse(x, labels, w, global_mean=global_mean), ref)
    _close(_streamed(x, labels, 5, w, global_mean=global_mean), {k: v for k, v in ref.items() if k != "nc4"})


def _etf_problem(k=10, d=32, n=8, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))[0]
    etf = math.sqrt(k / (k - 1)) * (torch.eye(k, dtype=torch.float64) - 1 / k) @ r.T  # unit-norm simplex ETF rows
    labels = torch.arange(k).repeat(n)
    return scale * etf[labels], labels, 0.7 * etf, gen


def test_exact_etf_geometry_is_zero_and_grows_with_noise():
    x, labels, w, gen = _etf_problem()
    res = neural_collapse(x, labels, w, torch.zeros(10, dtype=torch.float64))
    for key in ("nc1", "etf_gap_means", "etf_gap_classifier", "nc3", "nc3_duality", "nc4", "cdnv",
                "equinorm_means", "equinorm_classifier", "cos_std_means", "cos_etf_means", "kl_lyapunov"):
        assert abs(res[key]) < 1e-12, (key, res[key])
    previous = res
    for noise in (1e-3, 1e-2, 1e-1, 1.0):
        noisy = x + noise * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        cur = neural_collapse(noisy, labels, w)
        for key in ("nc1", "cdnv", "etf_gap_means", "nc3"):
            assert cur[key] > previous[key], (key, noise)
        previous = cur
    assert previous["nc4"] > 0


def test_closed_forms_on_the_simplex_etf():
    # unit simplex vectors are at distance sqrt(2K/(K-1)) from each other (Liu et al. 2023 energies);
    # a classifier parallel to the means has cosine 1 with every class mean (no duality spread)
    k = 10
    x, labels, w, _ = _etf_problem(k=k)
    res = neural_collapse(x, labels, w)
    distance = math.sqrt(2 * k / (k - 1))
    assert math.isclose(res["gnc2_log"], -math.log(distance), rel_tol=1e-13)
    assert math.isclose(res["gnc2_riesz"], 1 / distance, rel_tol=1e-13)
    assert abs(res["unc3"]) < 1e-14 and abs(res["nc1_trace"]) < 1e-14


def test_per_class_outputs_against_the_dense_reference():
    x, labels, w, _ = _data(7, 12, 9, seed=14)
    keep = labels != 3  # an unseen class is left out of the per-class tensors
    x, labels = x[keep], labels[keep]
    ref = reference_per_class(x, labels, w)
    with pytest.warns(UserWarning, match="never seen"):
        got = per_class(x, labels, w, num_classes=7)
    assert torch.equal(got["classes"], ref["classes"])
    for key in ("cdnv", "duality"):
        assert torch.allclose(got[key], ref[key], rtol=1e-11, atol=0), key
    with pytest.warns(UserWarning, match="never seen"):
        whole = neural_collapse(x, labels, w, num_classes=7)
    assert math.isclose(got["cdnv"].mean().item(), whole["cdnv"], rel_tol=1e-12)  # the pair mean, row by row
    assert math.isclose(got["duality"].pow(2).sum().sqrt().item(), whole["nc3"], rel_tol=1e-12)
    metric = NeuralCollapse(7, 12)
    metric.update(x, labels)
    metric.set_classifier(w)
    with pytest.warns(UserWarning, match="never seen"):
        streamed = metric.per_class()
    for key in ("cdnv", "duality"):
        assert torch.allclose(streamed[key], ref[key], rtol=1e-11, atol=0), key


def test_pairs_in_chunks_equal_one_chunk():
    gen = torch.Generator().manual_seed(15)
    rows, variances = torch.randn(37, 5, generator=gen, dtype=torch.float64), torch.rand(37, generator=gen)
    whole = pair_statistics(rows, variances.double(), chunk_elements=37 * 37)
    for chunk_rows in (1, 4, 36):
        part = pair_statistics(rows, variances.double(), chunk_elements=37 * chunk_rows)
        for key in ("cos_std", "cos_etf", "cdnv", "gnc2_log", "gnc2_riesz"):
            assert math.isclose(getattr(part, key), getattr(whole, key), rel_tol=1e-13), (chunk_rows, key)
        assert torch.allclose(part.cdnv_per_class, whole.cdnv_per_class, rtol=1e-13, atol=0)


def test_many_more_classes_than_dimensions():
    # K = 3000 > d = 8: compute works in R^d (d x d eigenproblem, pairs in chunks); checked against a
    # vectorized dense computation with the d x d pseudo-inverse and every K x K matrix formed
    k, d = 3000, 8
    x, labels, w, _ = _data(k, d, 3, seed=16)
    metric = NeuralCollapse(k, d)
    metric.update(x, labels)
    metric.set_classifier(w)
    got = metric.compute()
    means = torch.zeros(k, d, dtype=torch.float64).index_add_(0, labels, x) / 3
    m = means - means.mean(0)
    diff = x - means[labels]
    sigma_w = diff.T @ diff / len(x)
    sigma_b = m.T @ m / k
    etf = (torch.eye(k, dtype=torch.float64) - 1 / k) / math.sqrt(k - 1)

    def gap(g):
        return (g / g.norm() - etf).norm().item()

    unit = m / m.norm(dim=1, keepdim=True)
    cos = (unit @ unit.T)[~torch.eye(k, dtype=torch.bool)]
    want = {
        "nc1": torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)).item() / k,
        "etf_gap_means": gap(m @ m.T),
        "etf_gap_classifier": gap(w @ w.T),
        "nc3_duality": gap(w @ m.T),
        "cos_std_means": cos.std(correction=0).item(),
        "cos_etf_means": (cos + 1 / (k - 1)).abs().mean().item(),
        "kl_lyapunov": math.inf,
    }
    _close(got, want, rtol=1e-9)


def test_ufm_spectral_init_lyapunov_and_leakage():
    gen = torch.Generator().manual_seed(4)
    for k, basis in [(8, "walsh"), (10, "fourier")]:
        a = paired_spectrum(0.3 + torch.rand(k, generator=gen, dtype=torch.float64), basis)
        model = UFM.from_spectrum(k, 20, a, basis=basis, samples_per_class=3, generator=gen)
        model.gradient_descent(0.5, 50, record=())
        lam = torch.stack(model.spectrum()).prod(0)
        feats, labels = model.H.detach().T, model.labels
        res = neural_collapse(feats, labels, model.W.detach(), basis=InitialBasis(basis, model.left, model.right))
        assert math.isclose(res["kl_lyapunov"], kl_lyapunov(lam).item(), rel_tol=1e-12)
        assert res["drift"] < 1e-14 and res["drift_out_of_span"] < 1e-14


def test_drift_keys_only_with_an_explicit_basis():
    x, labels, _, _ = _data(8, 32, 5, seed=6)
    w = hadamard_(torch.empty(8, 32, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    assert "drift" not in neural_collapse(x, labels, w)  # no hidden attribute is read
    basis = initial_basis(w.clone(), "walsh")
    assert neural_collapse(x, labels, w, basis=basis)["drift"] < 1e-15
    w2 = w + 0.01 * torch.randn(8, 32, dtype=torch.float64)
    res = neural_collapse(x, labels, w2, basis=basis)
    assert res["drift"] > 1e-3 and res["drift_out_of_span"] > res["drift_offdiag"]


def test_set_classifier_makes_the_next_compute_fresh():
    # issue 10 item 8: compute() after set_classifier returned the previous classifier's cached values
    x, labels, w, _ = _data(6, 16, 10, seed=11)
    metric = NeuralCollapse(6, 16)
    metric.update(x, labels)
    metric.set_classifier(w)
    first = metric.compute()["nc3"]
    w2 = torch.randn(6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    metric.set_classifier(w2)
    second = metric.compute()["nc3"]
    assert math.isclose(first, neural_collapse(x, labels, w)["nc3"], rel_tol=1e-12)
    assert math.isclose(second, neural_collapse(x, labels, w2)["nc3"], rel_tol=1e-12)
    assert first != second


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_labels_of_every_integer_dtype(dtype):
    # issue 10 item 10: uint8/int16 labels crashed inside index_add_
    x, labels, w, _ = _data(5, 8, 6, seed=12)
    ref = neural_collapse(x, labels, w)
    _close(neural_collapse(x, labels.to(dtype), w), ref)
    metric = NeuralCollapse(5, 8)
    metric.update(x, labels.to(dtype))
    metric.set_classifier(w)
    _close(metric.compute(), {k: v for k, v in ref.items() if k != "nc4"})
    dense = torch.stack([x[labels == k].to(torch.float64).mean(0) for k in range(5)])  # ClassMeans was removed
    assert torch.allclose(dense, metric.class_means)


def test_batch_order_and_size_do_not_matter():
    x, labels, w, _ = _data(10, 64, 20, seed=7)
    base = _streamed(x, labels, 10, w, batch=200)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    for batch in (1, 7, 64):
        _close(_streamed(x[perm], labels[perm], 10, w, batch=batch), base, rtol=1e-12, atol=1e-14)


def test_large_common_offset_is_stable():
    # mean 1e3, within-class spread 1e-3: raw second moments lose everything in float32
    x, labels, w, _ = _data(6, 16, 50, seed=8, spread=1e-3, offset=1e3)
    ref = reference_metrics(x, labels, w)
    got = _streamed(x, labels, 6, w, batch=64)
    _close(got, {k: v for k, v in ref.items() if k != "nc4"}, rtol=1e-8, atol=0)
    # the naive one-pass raw-moment covariance in float32 is far off
    x32 = x.float()
    raw = x32.T @ x32 / len(x32)
    means = torch.stack([x32[labels == c].mean(0) for c in range(6)])
    counts = torch.bincount(labels, minlength=6).float()
    naive_trace = torch.trace(raw - (means.T * counts / len(x32)) @ means).item()
    assert abs(naive_trace - ref["within_class_trace"]) > 10 * ref["within_class_trace"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_features_accumulate_in_float64(dtype):
    # the accuracy contract (README section 3): float32 products summed in float64 carry a few float32
    # roundings (here one batch of 100 rows); precision="float64" is exact to round-off
    x, labels, w, _ = _data(5, 32, 20, seed=9)
    xl = x.to(dtype)
    want = {k: v for k, v in neural_collapse(xl.double(), labels, w).items() if k != "nc4"}
    for precision, rtol in (("float32", 2e-6), ("float64", 1e-12)):
        metric = NeuralCollapse(5, 32, precision=precision)
        metric.update(xl, labels)
        assert metric.second.dtype == torch.float64 and metric.sums.dtype == torch.float64
        metric.set_classifier(w)
        _close(metric.compute(), want, rtol=rtol, atol=1e-14)


def test_unseen_classes_are_excluded_with_a_warning():
    x, labels, w, _ = _data(6, 16, 10, seed=10)
    keep = (labels != 2) & (labels != 4)
    with pytest.warns(UserWarning, match=r"classes never seen: \[2, 4\]"):
        res = neural_collapse(x[keep], labels[keep], w)
    assert res["num_classes_seen"] == 4 and all(math.isfinite(v) for v in res.values())
    ref = reference_metrics(x[keep], labels[keep], w)
    _close(res, ref)


def test_nearest_mean_mismatch_streaming():
    x, labels, w, b = _data(10, 32, 20, seed=11)
    prev = NeuralCollapse(10, 32)
    prev.update(x, labels)
    prev.compute()
    nc4 = NearestMeanDisagreement(10, 32)
    nc4.set_means(prev.class_means, prev.seen)
    for i in range(0, len(x), 33):
        nc4.update(x[i : i + 33], x[i : i + 33] @ w.T + b)
    assert math.isclose(nc4.compute(), reference_metrics(x, labels, w, b)["nc4"], rel_tol=1e-15)
    with pytest.raises(ValueError, match="set_means"):
        NearestMeanDisagreement(10, 32).update(x, x @ w.T)


@pytest.mark.parametrize(
    "features, labels, exc, match",
    [
        (torch.randn(4, 8), torch.tensor([0, 1, 2, 5]), ValueError, r"labels must lie in \[0, 5\)"),
        (torch.randn(4, 8), torch.tensor([0, 1, -1, 2]), ValueError, r"labels must lie"),
        (torch.randn(4, 7), torch.tensor([0, 1, 2, 3]), ValueError, "feature_dim=8"),
        (torch.tensor([[math.nan] * 8] * 4), torch.tensor([0, 1, 2, 3]), ValueError, "NaN or Inf"),
        (torch.full((4, 8), math.inf), torch.tensor([0, 1, 2, 3]), ValueError, "NaN or Inf"),
        (torch.randn(4, 2, 4), torch.tensor([0, 1, 2, 3]), ValueError, "2-D"),
        (torch.randn(4, 8), torch.tensor([0.0, 1.0, 2.0, 3.0]), TypeError, "integer"),
        (torch.randn(4, 8), torch.tensor([0, 1, 2]), ValueError, "one label per feature row"),
        (torch.ones(4, 8, dtype=torch.int64), torch.tensor([0, 1, 2, 3]), TypeError, "floating"),
    ],
)
def test_bad_input_leaves_state_unchanged(features, labels, exc, match):
    metric = NeuralCollapse(5, 8)
    metric.update(torch.randn(10, 8), torch.arange(10) % 5)
    before = {name: getattr(metric, name).clone() for name in ("counts", "sums", "sq_norms", "second", "reference")}
    with pytest.raises(exc, match=match):
        metric.update(features, labels)
    for name, value in before.items():
        assert torch.equal(getattr(metric, name), value), name


def test_argument_checks():
    with pytest.raises(ValueError, match="global_mean"):
        NeuralCollapse(3, 4, global_mean="median")
    metric = NeuralCollapse(3, 4)
    with pytest.raises(ValueError, match=r"weight must be a \(3, 4\)"):
        metric.set_classifier(torch.zeros(4, 4))
    metric.update(torch.randn(6, 4), torch.arange(6) % 3)
    with pytest.raises(ValueError, match="empty metric"):
        metric.set_reference(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least 2 classes"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            neural_collapse(torch.randn(5, 4), torch.zeros(5, dtype=torch.int64), num_classes=3)


def test_without_per_batch_validation_non_finite_features_raise_at_compute():
    metric = NeuralCollapse(3, 4, validate_args=False)
    metric.update(torch.randn(6, 4), torch.arange(6) % 3)
    metric.update(torch.tensor([[math.nan, 0.0, 0.0, 0.0]]), torch.tensor([1]))  # accepted without a sync
    with pytest.raises(ValueError, match="non-finite features were accumulated"):
        metric.compute()
    nc4 = NearestMeanDisagreement(3, 4)
    nc4.set_means(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN or Inf"):
        nc4.update(torch.randn(2, 4), torch.tensor([[0.0, math.inf, 0.0], [0.0, 0.0, 0.0]]))


def test_collapse_keys_list_what_compute_returns():
    from hadainit.metrics import COLLAPSE_KEYS

    x, labels, w, _ = _data(6, 16, 10, seed=13)
    metric = NeuralCollapse(6, 16)
    metric.update(x, labels)
    metric.set_classifier(w)
    assert set(metric.compute()) == set(COLLAPSE_KEYS)


# ------------------------------------------- extreme feature scales, close and coinciding means, the size
F64 = torch.float64
SCALE_FREE_KEYS = ("nc1", "nc1_trace", "cdnv", "gnc2_log", "gnc2_riesz", "etf_gap_means", "cos_std_means",
                   "equinorm_means")


@pytest.mark.parametrize("power", [-600, -540, -1000, 540, 900])
def test_scale_free_values_exact_at_extreme_feature_scales(power):
    # a power of two scales the features exactly, so the values at 2^power are those of the data at 1
    x, y = mixture(seed=5)
    want = reference_metrics(x, y)
    scaled = x * 2.0**power
    metric = NeuralCollapse(4, 6)
    metric.update(scaled[:20], y[:20])
    metric.update(scaled[20:], y[20:])
    for got in (metric.compute(), neural_collapse(scaled, y)):
        for key in SCALE_FREE_KEYS:
            assert math.isfinite(got[key]), (key, got[key])
            assert math.isclose(got[key], want[key], rel_tol=1e-10), (key, got[key], want[key])
        # the within-class trace is not scale-free: it scales by 4^power (0 or inf where that leaves float64)
        w = want["within_class_trace"]
        expected = math.ldexp(w, 2 * power) if 2 * power + math.frexp(w)[1] <= 1024 else math.inf
        assert got["within_class_trace"] == expected or math.isclose(got["within_class_trace"], expected,
                                                                     rel_tol=1e-10, abs_tol=1e-300)


def test_scaled_sums_merge_with_ordinary_ones_exactly():
    x, y = mixture(seed=6)
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
