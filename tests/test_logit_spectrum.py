"""The class-mean logit spectrum (SPEC section 7) against the exact UFM, closed forms and invariances."""

import math

import pytest
import torch

from hadainit.bases import mode_pairs, softmax_basis
from hadainit.metrics.logits import LOGIT_KEYS, LogitSpectrum, logit_spectrum
from hadainit.ufm import UFM, etf_angle, kl_lyapunov, margins

GEN = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def _paired(values, kind):
    pairs = mode_pairs(values.shape[-1], kind)
    values[pairs[:, 1]] = values[pairs[:, 0]]
    return values


@pytest.mark.parametrize("k, kind, n", [(8, "walsh", 1), (16, "walsh", 2), (10, "fourier", 3), (7, "fourier", 1)])
def test_equals_the_spectral_ufm(k, kind, n):
    a = _paired(torch.rand(k, dtype=torch.float64, generator=GEN(k)) + 0.2, kind)
    model = UFM.from_spectrum(k, 2 * k, a, basis=kind, samples_per_class=n, generator=GEN(1))
    model.gradient_descent(0.5, 30, record=())
    aa, bb = model.spectrum()
    lam = aa * bb  # the reduced state of the same run
    feats = model.H.T  # column k * n + j of H: sample j of class k
    labels = torch.arange(k).repeat_interleave(n)
    out = logit_spectrum(feats, labels, model.W)
    assert torch.allclose(torch.as_tensor(out["lam"], dtype=torch.float64), lam[1:], rtol=1e-12, atol=1e-13)
    assert out["logit_leakage"] < 1e-13 and out["logit_residual"] < 1e-13
    sigma = torch.as_tensor(out["zc_singular_values"], dtype=torch.float64)  # Z_c = Q diag(lam) Q^T: |lam| sorted
    assert torch.allclose(sigma, lam[1:].abs().sort(descending=True).values, rtol=1e-12)
    assert math.isclose(out["kl_lyapunov_modes"], kl_lyapunov(lam).item(), rel_tol=1e-10)
    assert math.isclose(out["kl_lyapunov"], kl_lyapunov(lam).item(), rel_tol=1e-10)
    assert math.isclose(out["etf_angle"], etf_angle(lam).item(), rel_tol=1e-10, abs_tol=1e-15)
    gamma = margins(lam, kind).min().item()  # every sample of every class has the same margin
    for key in ("margin_mean", "margin_min", "class_margin_mean", "class_margin_min", "spectral_margin"):
        assert math.isclose(out[key], gamma, rel_tol=1e-12), key
    assert out["margin_positive"] == 1.0 and out["modes_nonpositive"] == 0.0


def test_simplex_etf_has_no_leakage_and_a_flat_spectrum():
    k, c = 6, 2.5
    z = c * (torch.eye(k, dtype=torch.float64) - 1.0 / k)  # Z_c = c P: neural collapse
    out = LogitSpectrum(k)
    out.update(z.T, torch.arange(k))  # row i: the logits of a sample of class i
    res = {**out.compute(), **out.spectra()}
    assert res["logit_leakage"] < 1e-15 and res["kl_lyapunov"] < 1e-15 and res["etf_angle"] < 1e-15
    assert torch.allclose(torch.as_tensor(res["lam"], dtype=torch.float64), torch.full((k - 1,), c, dtype=torch.float64))
    assert math.isclose(res["margin_mean"], c, rel_tol=1e-14)


def _random_case(k, seed):
    n = 5 * k
    labels = torch.arange(n) % k
    logits = 3.0 * torch.eye(k, dtype=torch.float64)[labels] + torch.randn(n, k, dtype=torch.float64, generator=GEN(seed))
    return logits, labels


def _spectral_keys(res):
    return {k: res[k] for k in ("logit_residual", "lam", "etf_angle", "kl_lyapunov", "kl_lyapunov_modes",
                                "spectral_margin", "zc_singular_values")}


def _close(a, b):
    for key, value in a.items():
        got = torch.as_tensor(b[key], dtype=torch.float64)
        assert torch.allclose(got, torch.as_tensor(value, dtype=torch.float64), rtol=1e-11, atol=1e-12), key


def _metric(logits, labels, k):
    metric = LogitSpectrum(k)
    metric.update(logits, labels)
    return {**metric.compute(), **metric.spectra()}


def test_invariant_to_shifts_softmax_ignores_and_to_a_bias():
    k = 8
    logits, labels = _random_case(k, 3)
    ref = _metric(logits, labels, k)
    shifted = logits + torch.randn(logits.shape[0], 1, dtype=torch.float64, generator=GEN(4))  # per-sample shift
    _close(ref, _metric(shifted, labels, k))
    biased = logits + torch.randn(k, dtype=torch.float64, generator=GEN(5))  # a classifier bias c
    _close(_spectral_keys(ref), _metric(biased, labels, k))


def _relabelled(logits, labels, perm):
    out = torch.empty_like(logits)
    out[:, perm] = logits
    return out, perm[labels]


@pytest.mark.parametrize("k, kind", [(8, "walsh"), (9, "fourier"), (10, "fourier")])
def test_invariant_to_relabelling_within_the_basis_group(k, kind):
    logits, labels = _random_case(k, 6)
    ref = _metric(logits, labels, k)
    for s in range(1, k):
        # walsh: class j -> j XOR s; fourier: j -> j + s mod K: Q is kept up to signs / rotations within pairs
        perm = torch.arange(k) ^ s if kind == "walsh" else (torch.arange(k) + s) % k
        _close(_spectral_keys(ref), _metric(*_relabelled(logits, labels, perm), k))
    # the leakage alone (SPEC 7) is kept by the relabellings that map basis vectors to signed basis vectors
    signed = [torch.arange(k) ^ s for s in range(1, k)] if kind == "walsh" else [(-torch.arange(k)) % k] + (
        [(torch.arange(k) + k // 2) % k] if k % 2 == 0 else [])
    for perm in signed:
        got = _metric(*_relabelled(logits, labels, perm), k)
        assert math.isclose(got["logit_leakage"], ref["logit_leakage"], rel_tol=1e-11)
    if kind == "walsh":
        assert ref["logit_leakage"] == ref["logit_residual"]
    else:
        assert ref["logit_residual"] > ref["logit_leakage"]


def test_streaming_and_merged_states_equal_one_pass():
    k = 10
    logits, labels = _random_case(k, 7)
    whole = _metric(logits, labels, k)
    parts = [LogitSpectrum(k), LogitSpectrum(k)]
    for i, part in enumerate(parts):
        for j in range(i * 25, logits.shape[0], 50):  # interleaved batches, as DDP ranks would see them
            part.update(logits[j : j + 25], labels[j : j + 25])
    parts[0].merge_state(parts[1])  # the DDP reduction: sums and a min
    merged = parts[0].compute()
    for key in LOGIT_KEYS:
        assert math.isclose(merged[key], whole[key], rel_tol=1e-12, abs_tol=1e-14), key


def test_exact_at_extreme_scales():
    k = 8
    logits, labels = _random_case(k, 8)
    ref = _metric(logits, labels, k)
    for scale in (1e-150, 1e150):
        res = _metric(logits * scale, labels, k)
        assert math.isclose(res["logit_leakage"], ref["logit_leakage"], rel_tol=1e-12)
        assert math.isclose(res["kl_lyapunov"], ref["kl_lyapunov"], rel_tol=1e-10)
        assert math.isclose(res["etf_angle"], ref["etf_angle"], rel_tol=1e-10)


def test_negative_modes_are_counted_and_v_is_infinite():
    k = 4
    q = softmax_basis(k)
    lam = torch.tensor([0.0, 2.0, -0.5, 1.0], dtype=torch.float64)
    z = q @ torch.diag(lam) @ q.T
    res = _metric(z.T, torch.arange(k), k)
    assert res["modes_nonpositive"] == 1.0 and res["kl_lyapunov_modes"] == math.inf
    assert math.isclose(res["etf_angle"], etf_angle(lam).item(), rel_tol=1e-12)


@pytest.mark.parametrize("bad", [[0, 1, 7], [0, -1, 2], [4, 0, 1]])
def test_logit_spectrum_labels_outside_range_are_a_clear_error(bad):
    metric = LogitSpectrum(4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        metric.update(torch.randn(3, 4), torch.tensor(bad))
    assert metric.counts.sum() == 0  # nothing was added
