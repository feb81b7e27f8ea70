"""The two-layer linear head on real data (the arm that sees Q): exact at alpha = 0, and what spread does."""

import math

import pytest
import torch

from hadainit.experiments import twolayer as tl
from hadainit.ufm.examples import ETF_ANGLE_RISE_K8

EPS = torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def digits8():
    x, y = tl.digits(8)
    return tl.balanced(x, y, 8)


def test_inputs_have_the_class_codes_as_class_means(digits8):
    x, y = digits8
    inputs, size = tl.head_inputs(x, y, 8, 0.7, 1.3)
    assert inputs.shape[0] == y.numel() and size["in_span"] > 0 and size["out_of_span"] > 0
    codes = torch.eye(inputs.shape[1], 8, dtype=torch.float64)
    for c in range(8):
        assert torch.allclose(inputs[y == c].mean(0), codes[:, c], atol=1e3 * EPS)
    # alpha = 1 is the real data up to one linear map: the Gram structure of deviations is kept up to that map,
    # and the inputs are full rank
    full, _ = tl.head_inputs(x, y, 8, 1.0, 1.0)
    assert torch.linalg.matrix_rank(full) == torch.linalg.matrix_rank(x - x.mean(0)) + 1 or \
        torch.linalg.matrix_rank(full) >= torch.linalg.matrix_rank(x) - 1


@pytest.mark.parametrize("k, basis, lam0", [(8, "walsh", ETF_ANGLE_RISE_K8.tolist()),
                                            (10, "fourier", list(tl.FOURIER10_LAM))])
def test_alpha_zero_is_the_reduced_dynamics_to_round_off(k, basis, lam0):
    """At alpha = 0 the features of a class coincide: the head is the UFM with one sample per class, and its
    spectrum follows hadainit.ufm.spectral_gd step for step (relative error ~ steps x eps)."""
    x, y = tl.balanced(*tl.digits(k), k)
    inputs, _ = tl.head_inputs(x, y, k, 0.0, 0.0)
    steps = 300
    record = [0, 1, 10, 100, 300]
    rows = tl.train_head(inputs, y, k, lam0=lam0, basis=basis, lr=1.0, steps=steps, record=record)
    exact = tl.reduced_rows(lam0, basis, 1.0, steps, record)
    for row in rows:
        err = max(abs(p - q) / abs(q) for p, q in zip(row["lam"], exact[row["step"]]))
        assert err < 100 * steps * EPS, (row["step"], err)
        assert row["leakage_W"] < 1e3 * EPS and row["logit_leakage"] < 1e3 * EPS


def test_out_of_span_spread_alone_leaves_the_dynamics_exact(digits8):
    """Class-mean-zero inputs outside the codes' span give those weights zero gradient from a spectral start
    (W1 is zero there and every sample of a class has the same logits): the trajectory is alpha = 0's."""
    x, y = digits8
    lam0 = ETF_ANGLE_RISE_K8.tolist()
    a, _ = tl.head_inputs(x, y, 8, 0.0, 0.0)
    b, _ = tl.head_inputs(x, y, 8, 0.0, 1.0)
    ra = tl.train_head(a, y, 8, lam0=lam0, basis="walsh", steps=200, record=[200])
    rb = tl.train_head(b, y, 8, lam0=lam0, basis="walsh", steps=200, record=[200])
    assert max(abs(p - q) / q for p, q in zip(ra[-1]["lam"], rb[-1]["lam"])) < 1e3 * EPS
    assert rb[-1]["leakage_W"] < 1e3 * EPS


def test_in_span_spread_breaks_the_frozen_vectors(digits8):
    x, y = digits8
    inputs, _ = tl.head_inputs(x, y, 8, 1.0, 0.0)
    rows = tl.train_head(inputs, y, 8, lam0=ETF_ANGLE_RISE_K8.tolist(), basis="walsh", steps=200, record=[0, 200])
    assert rows[0]["leakage_W"] < 1e3 * EPS  # spectral at the start
    assert rows[-1]["leakage_W"] > 1e-3  # not after real spread has acted


def test_summary_slopes_and_rise_from_synthetic_rows():
    rows = [{"time": t, "neg_log_loss": math.log(t) + 1, "margin_min": 2 * math.log(t), "margin_softmin": 1.0,
             "spectral_margin": math.log(t), "leakage_W": 0.0, "logit_leakage": 0.0, "out_of_span_W": 0.0,
             "label_free_distance": 0.1, "etf_angle": 0.2 + 0.1 * math.exp(-((math.log(t) - 3) ** 2))}
            for t in [math.exp(i / 10) for i in range(1, 101)]]
    s = tl.summarize(rows, 1.0)
    assert all(abs(w["slope"] - 1) < 1e-9 for w in s["slopes"]["neg_log_loss"])
    assert all(abs(w["slope"] - 2) < 1e-9 for w in s["slopes"]["margin_min"])
    assert s["etf_angle"]["relative_rise"] == pytest.approx(0.5, rel=1e-2)
    assert s["etf_angle"]["peak_time"] == pytest.approx(math.exp(3), rel=0.05)
