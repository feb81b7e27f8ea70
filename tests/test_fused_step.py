"""The fused reduced step (buffers, compiled or torch passes) against the plain-torch reference implementation.

The reference is ``_rhs_reference`` (the right-hand side as it was written before the fused
passes) and a copy of the reference GD loop below; the fused values must agree to 1e-15
relative (float64) on many states, both bases, CE and MSE, with and without weight decay.
In practice they agree bit for bit, which is asserted where it is the design's claim.
"""

import itertools

import pytest
import torch

from hadainit import _kernels
from hadainit.bases import _tie_pairs
from hadainit.ufm import dynamics, spectral_flow, spectral_gd
from hadainit.ufm._fused_step import FusedRHS, TorchPasses
from hadainit.ufm.dynamics import _rhs_reference

PASSES = {"torch": TorchPasses}
if _kernels.kernel() is not None:
    PASSES["kernel"] = _kernels.kernel()

BASES = [("walsh", 2), ("walsh", 16), ("walsh", 1024), ("fourier", 3), ("fourier", 8), ("fourier", 45)]


def _relerr(x, ref):
    scale = ref.abs().max()
    return 0.0 if scale == 0 else ((x - ref).abs().max() / scale).item()


def _state(shape, kind, scale, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    b = torch.rand(shape, generator=g, dtype=torch.float64) * scale * torch.exp(torch.randn(shape, generator=g))
    return _tie_pairs(a.to(dtype), kind), _tie_pairs(b.to(dtype), kind)


@pytest.mark.parametrize("passes", sorted(PASSES))
@pytest.mark.parametrize("kind,k", BASES)
def test_rhs_and_step_equal_the_reference(passes, kind, k):
    tol = {torch.float64: 1e-15, torch.float32: 1e-7}
    seed = 0
    for loss, wd, n, dtype, shape, scale in itertools.product(
        ("ce", "mse"), ((0.0, 0.0), (1e-3, 2e-3)), (1, 3), tuple(tol), ((k,), (2, 3, k)), (1e-3, 1.0, 30.0, 1e3)
    ):
        seed += 1
        a, b = _state(shape, kind, scale, dtype, seed)
        da_ref, db_ref, loss_ref = _rhs_reference(a, b, kind, n, wd, loss)
        rhs = FusedRHS(a.shape, dtype, a.device, kind, n, wd, loss, passes=PASSES[passes])
        da, db = torch.empty_like(a), torch.empty_like(b)
        rhs.evaluate(a, b, da, db)
        value = rhs.loss(a, b)
        where = (loss, wd, n, dtype, shape, scale)
        for got, ref in ((da, da_ref), (db, db_ref), (value, loss_ref)):
            assert got.shape == ref.shape and got.dtype == ref.dtype, where
            assert _relerr(got, ref) <= tol[dtype], where
        lr = 0.7
        rhs.evaluate(a, b, da, db, lr)  # the GD step, written over the same buffers
        assert _relerr(da, a + lr * da_ref) <= tol[dtype] and _relerr(db, b + lr * db_ref) <= tol[dtype], where


@pytest.mark.parametrize("passes", sorted(PASSES))
def test_bit_for_bit_including_edge_states(passes):
    """Ties at the top (lam = 0: every class ties), negative and huge spectra, margins past float64's range."""
    k = 64
    states = [
        (torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)),
        (torch.full((k,), 2.0, dtype=torch.float64), torch.full((k,), -3.0, dtype=torch.float64)),
        (torch.linspace(-5, 5, k, dtype=torch.float64), torch.linspace(1, 2, k, dtype=torch.float64)),
        (torch.full((k,), 1e154, dtype=torch.float64), torch.full((k,), 1e154, dtype=torch.float64)),
        (torch.cat((torch.zeros(1), torch.full((k - 1,), 1e200, dtype=torch.float64))),
         torch.full((k,), 1e200, dtype=torch.float64)),
    ]
    for (a, b), loss in itertools.product(states, ("ce", "mse")):
        ref = _rhs_reference(a, b, "walsh", 1, (0.0, 0.0), loss)
        rhs = FusedRHS(a.shape, a.dtype, a.device, "walsh", 1, (0.0, 0.0), loss, passes=PASSES[passes])
        da, db = torch.empty_like(a), torch.empty_like(b)
        rhs.evaluate(a, b, da, db)
        for got, want in ((da, ref[0]), (db, ref[1]), (rhs.loss(a, b), ref[2])):
            assert torch.equal(got.nan_to_num(), want.nan_to_num()), (a[:3], b[:3], loss)


@pytest.mark.parametrize("passes", sorted(PASSES))
@pytest.mark.parametrize("kind", ["walsh", "fourier"])
def test_a_margin_of_minus_inf_overflows_the_loss_beside_nan_logits(passes, kind):
    """lam = a * b with -inf modes: z(0) = -inf, some z(m) NaN, one +inf. The reference's loss is inf
    (some margin is -inf); taking the max over z(m) with its NaN used to hide that and give NaN."""
    for dtype, big in ((torch.float64, 1e200), (torch.float32, 1e30)):
        a = torch.tensor([0.0, big, big, 1.0], dtype=dtype)
        b = torch.tensor([0.0, -big, -big, 1.0], dtype=dtype)
        if kind == "fourier":
            a, b = a[:3].clone(), b[:3].clone()  # K = 3: one (cos, sin) pair of equal modes
        ref = _rhs_reference(a, b, kind, 1, (0.0, 0.0), "ce")
        rhs = FusedRHS(a.shape, a.dtype, a.device, kind, 1, (0.0, 0.0), "ce", passes=PASSES[passes])
        da, db = torch.empty_like(a), torch.empty_like(b)
        rhs.evaluate(a, b, da, db)
        for got, want in ((da, ref[0]), (db, ref[1]), (rhs.loss(a, b), ref[2])):
            assert torch.equal(got, want) or torch.allclose(got, want, rtol=0, atol=0, equal_nan=True), (got, want)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_an_empty_batch_gives_empty_results(loss):
    a = torch.rand(0, 8, dtype=torch.float64)
    da, db, value = dynamics.spectral_rhs(a, a, "walsh", 1, (0.0, 0.0), loss)
    assert da.shape == db.shape == (0, 8) and value.shape == (0,)
    result = spectral_gd(a, a, lr=0.5, steps=2, loss=loss)
    assert result.a.shape == (3, 0, 8)  # steps 0, 1, 2


def _reference_gd(a, b, *, lr, steps, kind, n, wd, loss, every):
    """spectral_gd's loop as it was, on the reference right-hand side."""
    rec_a, rec_b, rec_loss = [], [], []
    for t in range(steps + 1):
        da, db, value = _rhs_reference(a, b, kind, n, wd, loss)
        if t % every == 0 or t == steps:
            rec_a.append(a)
            rec_b.append(b)
            rec_loss.append(value)
        a, b = a + lr * da, b + lr * db
    return torch.stack(rec_a), torch.stack(rec_b), torch.stack(rec_loss)


@pytest.mark.parametrize("kind,k,loss,wd", [("walsh", 256, "ce", (0.0, 0.0)), ("fourier", 12, "ce", (1e-3, 1e-3)),
                                            ("walsh", 32, "mse", (2e-3, 0.0)), ("fourier", 7, "mse", (0.0, 0.0))])
def test_spectral_gd_trajectory_equals_the_reference_loop(kind, k, loss, wd):
    a, b = _state((2, k), kind, 0.5, torch.float64, k)
    a, b = a.abs() + 0.1, b.abs() + 0.1
    res = spectral_gd(a, b, lr=0.5 * k, steps=150, basis=kind, samples_per_class=2, weight_decay=wd, loss=loss,
                      record_every=7)
    ref_a, ref_b, ref_loss = _reference_gd(a, b, lr=0.5 * k, steps=150, kind=kind, n=2, wd=wd, loss=loss, every=7)
    assert res.step.tolist() == list(range(0, 150, 7)) + [150]
    for got, ref in ((res.a, ref_a), (res.b, ref_b), (res.loss, ref_loss)):
        assert got.shape == ref.shape
        assert _relerr(got, ref) <= 1e-15


def test_spectral_flow_equals_the_reference_rhs(monkeypatch):
    a, b = _state((16,), "walsh", 1.0, torch.float64, 3)
    a, b = a.abs() + 0.2, b.abs() + 0.2
    fused = spectral_flow(a, b, [1.0, 10.0, 1e3], weight_decay=(1e-3, 0.0))

    class ReferenceRHS:  # what fun() evaluated before: the reference right-hand side
        def __init__(self, shape, dtype, device, kind, n, wd, loss):
            self.args = (kind, n, wd, loss)

        def evaluate(self, a, b, out_a, out_b, lr=None):
            da, db, self.value = _rhs_reference(a, b, *self.args)
            out_a.copy_(da)
            out_b.copy_(db)

        def loss(self, a, b):
            return self.value

    monkeypatch.setattr(dynamics, "FusedRHS", ReferenceRHS)
    ref = spectral_flow(a, b, [1.0, 10.0, 1e3], weight_decay=(1e-3, 0.0))
    assert fused.nfev == ref.nfev
    assert torch.equal(fused.a, ref.a) and torch.equal(fused.b, ref.b) and torch.equal(fused.loss, ref.loss)


def test_divergence_is_still_reported_with_its_first_step():
    a = torch.full((8,), 0.5, dtype=torch.float64)
    x, y, first = a, a, None
    for t in range(1, 501):  # the reference map: the first step whose iterate or loss is not finite
        da, db, _ = _rhs_reference(x, y, "walsh", 1, (0.0, 0.0), "mse")
        x, y = x + 100.0 * da, y + 100.0 * db
        if not (torch.isfinite(x).all() and torch.isfinite(_rhs_reference(x, y, "walsh", 1, (0.0, 0.0), "mse")[2])):
            first = t
            break
    assert first is not None
    with pytest.raises(ValueError, match=rf"after step {first} .*lr > K sqrt\(n\)"):
        spectral_gd(a, a, lr=100.0, steps=500, loss="mse")
