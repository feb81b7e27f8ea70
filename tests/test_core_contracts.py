"""The numerical core's contracts that cut across its modules (each a root cause of a silently wrong result
once, issue 14): one dtype rule for every entry point, divergence reports, degenerate time grids, arguments
read one way, and the code-health rules.

The raising cases are rows of docs/bad_inputs.md (tests/test_bad_inputs.py); the extreme
scales are in tests/test_extremes.py. Here: what must *work* the same for every input form.
"""

import math
import subprocess
import sys

import pytest
import torch

import hadainit
from hadainit import bases, hadamard, hadamard_matrix, init, paired_spectrum, spectral_init
from hadainit.bases import check_spectrum, mode_pairs
from hadainit.ufm import (
    UFM,
    class0_logits,
    coefficient_of_variation,
    etf_angle,
    kl_lyapunov,
    lyapunov_derivative,
    margins,
    softmax_spectrum,
    spectral_flow,
    spectral_gd,
    time_to_margin,
    unbalanced_lyapunov,
)
from hadainit.ufm import dynamics, lyapunov, model

# ------------------------------------------------------------------ 1. one dtype rule

INT_LAM = [0, 1, 3, 2, 5, 4, 6, 2]
ENTRY_POINTS = {
    "kl_lyapunov": kl_lyapunov,
    "etf_angle": etf_angle,
    "coefficient_of_variation": coefficient_of_variation,
    "lyapunov_derivative": lyapunov_derivative,
    "class0_logits": class0_logits,
    "margins": margins,
    "softmax_spectrum": lambda x: softmax_spectrum(x)[2],
    "unbalanced_lyapunov": lambda x: unbalanced_lyapunov(x, x),
    "spectral_gd": lambda x: spectral_gd(x, x, lr=0.5, steps=3).a,
    "spectral_flow": lambda x: spectral_flow(x, x, [1.0]).a,
    "check_spectrum": lambda x: check_spectrum(x, 8, "walsh", "x"),
    "paired_spectrum": lambda x: paired_spectrum(x, "walsh"),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_int_tensors_int_lists_and_floats_are_one_input(name):
    f = ENTRY_POINTS[name]
    ref = f(torch.tensor(INT_LAM, dtype=torch.float64))
    for form in (INT_LAM, torch.tensor(INT_LAM), torch.tensor(INT_LAM, dtype=torch.int32)):
        got = f(form)
        assert got.dtype == torch.float64 and torch.equal(got, ref), (name, form)


def test_python_floats_are_read_as_float64():
    # the default dtype (float32) would round 1e300 to inf and 1 + 1e-12 to 1
    assert torch.equal(margins([0.0, 1e300, 1e300, 1e300]), torch.full((3,), 1e300, dtype=torch.float64))
    assert kl_lyapunov([0.0, 1.0, 1.0 + 1e-12, 1.0]) > 0


def test_hadamard_matrix_in_integer_dtypes_is_exact():
    ref = hadamard_matrix(12)
    for dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.complex64):
        h = hadamard_matrix(12, dtype=dtype)
        assert h.dtype == dtype and torch.equal(h.to(torch.float64), ref)


def test_dense_ufm_accepts_integer_weights_as_float64():
    w = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]])
    h = torch.tensor([[2, 0, 0], [0, 2, 0], [0, 0, 2], [0, 0, 0], [0, 0, 0]])
    ufm = UFM(w, h)
    ref = UFM(w.double(), h.double())
    assert ufm.W.dtype == torch.float64 and torch.equal(ufm.loss(), ref.loss())


def test_integer_bases_are_read_as_float64():
    # a permutation is an orthonormal basis, whatever the dtype it is written in
    perm = torch.eye(4, dtype=torch.int64)[[2, 0, 3, 1]]
    w_int = hadainit.hadamard_(torch.empty(4, 6, dtype=torch.float64), basis=perm, generator=torch.Generator().manual_seed(0))
    w_flt = hadainit.hadamard_(torch.empty(4, 6, dtype=torch.float64), basis=perm.double(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(w_int, w_flt)
    ufm = UFM(torch.randn(4, 6, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), left=perm,
              right=torch.eye(6, 4, dtype=torch.int32))
    assert ufm.left.dtype == torch.float64 and ufm.leakage()[0] <= 1


def test_spectral_init_fits_its_dtype():
    w, h = spectral_init(4, 8, [1.0, 2.0, 3.0, 4.0], dtype=torch.float16, generator=torch.Generator().manual_seed(0))
    w64, h64 = spectral_init(4, 8, [1.0, 2.0, 3.0, 4.0], generator=torch.Generator().manual_seed(0))
    assert w.dtype == torch.float16 and torch.allclose(w.double(), w64, rtol=1e-3, atol=1e-3)
    assert torch.allclose(h.double(), h64, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ 3. divergence


def _first_nonfinite_mse_step(a, b, lr, k):
    """The reduced MSE map in plain Python floats (da = (1 - ab) b / K, db = (1 - ab) a / K): the first
    step after which a, b or the loss sum (1 - ab)^2 / 2K is not finite."""
    a, b = list(a), list(b)
    for step in range(1, 10_000):
        c = [1.0 - x * y for x, y in zip(a, b)]
        a, b = [x + lr * ci * y / k for x, y, ci in zip(a, b, c)], [y + lr * ci * x / k for x, y, ci in zip(a, b, c)]
        loss = sum((1.0 - x * y) * (1.0 - x * y) for x, y in zip(a, b)) / (2 * k)
        if not all(math.isfinite(v) for v in a + b + [loss]):
            return step
    raise AssertionError("did not diverge")


@pytest.mark.parametrize("lr", [6.0, 10.0, 40.0])
def test_reduced_gd_names_the_first_nonfinite_step(lr):
    a, b = [0.0, 1.0, 2.0, 0.5], [0.0, 1.0, 0.3, 0.2]
    step = _first_nonfinite_mse_step(a, b, lr, 4)
    with pytest.raises(ValueError, match=rf"not finite after step {step} \(lr={lr:g}\).*K sqrt\(n\) = 4\b"):
        spectral_gd(a, b, lr=lr, steps=step + 200, loss="mse")
    spectral_gd(a, b, lr=lr, steps=step - 1, loss="mse")  # one step fewer is fine


def test_reduced_gd_divergence_in_a_batch_element():
    a = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 0.5]], dtype=torch.float64)
    b = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.3, 0.2]], dtype=torch.float64)
    step = _first_nonfinite_mse_step(b[1].tolist(), a[1].tolist(), 10.0, 4)
    with pytest.raises(ValueError, match=rf"after step {step} "):
        spectral_gd(a, b, lr=10.0, steps=300, loss="mse")


@pytest.mark.parametrize("n", [1, 3])
def test_mse_stable_step_bound_is_sharp(n):
    # SPEC: balanced minimum a b = 1, a^2 = sqrt(n): GD settles there for lr < K sqrt(n), not above
    k = 4
    a = torch.full((k,), n**0.25, dtype=torch.float64) * (1 + 0.01 * torch.arange(k))
    b = 1.02 / a  # near the minimum, not on it
    bound = k * math.sqrt(n)
    below = spectral_gd(a, b, lr=0.97 * bound, steps=3000, samples_per_class=n, loss="mse", record_every=3000)
    assert (below.lam[-1, 1:] - 1).abs().max() < 1e-10
    try:
        above = spectral_gd(a, b, lr=1.03 * bound, steps=3000, samples_per_class=n, loss="mse", record_every=3000)
        assert (above.lam[-1, 1:] - 1).abs().max() > 1e-3
    except ValueError as err:  # or it diverges outright
        assert "not finite" in str(err)


def test_dense_gd_stops_at_the_first_nonfinite_step_and_keeps_the_last_finite_iterate():
    def fresh():
        return UFM.random(4, 8, std=1.0, generator=torch.Generator().manual_seed(0))

    replay, step = fresh(), 0
    while torch.isfinite(replay.W).all() and torch.isfinite(replay.H).all():
        last = (replay.W.detach().clone(), replay.H.detach().clone())
        replay.step(10.0, "mse")
        step += 1
    ufm = fresh()
    with pytest.raises(ValueError, match=rf"after step {step} .*K sqrt\(n\) = 4\b"):
        ufm.gradient_descent(10.0, 500, loss="mse", record=("singular_values",), record_every=1000)
    assert torch.equal(ufm.W, last[0]) and torch.equal(ufm.H, last[1])


def test_demo_with_a_huge_step_exits_with_one_line(capsys):
    from hadainit.experiments import demo

    assert demo.main(["--lr", "1e6", "--steps", "60"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged" in err[0] and "after step" in err[0] and "Traceback" not in err[0]


# ------------------------------------------------------------------ 4. degenerate time grids


def test_flow_at_t0_alone_returns_the_initial_state():
    a = torch.tensor([0.0, 1.0, 2.0, 0.5], dtype=torch.float64)
    res = spectral_flow(a, a, [0.0])
    assert res.status == 0 and res.success and torch.equal(res.t, torch.zeros(1, dtype=torch.float64))
    assert torch.equal(res.a[0], a) and torch.equal(res.b[0], a)
    assert torch.equal(res.loss[0], softmax_spectrum(a * a)[0])


def test_times_closer_than_the_log_time_resolution_share_a_state():
    a = torch.tensor([0.0, 1.0, 2.0, 0.5], dtype=torch.float64)
    res = spectral_flow(a, a, [1e20, 1e20 + 1e5])
    alone = spectral_flow(a, a, [1e20])
    assert res.status == 0 and res.a.shape == (2, 4)
    assert torch.equal(res.a[0], res.a[1]) and torch.equal(res.a[0], alone.a[0])
    assert torch.equal(res.t, torch.tensor([1e20, 1e20 + 1e5], dtype=torch.float64))


def test_flow_from_a_tiny_start_is_as_accurate_as_from_a_unit_one():
    # at lam ~ 1e-200 the softmax is uniform, every 1 - mu_i = 1: a(t) = a0 exp(t / K) exactly
    k, a0 = 8, 1e-100
    a = torch.full((k,), a0, dtype=torch.float64)
    t = torch.tensor([1.0, 10.0, 50.0], dtype=torch.float64)
    res = spectral_flow(a, a, t)
    expected = a0 * torch.exp(t / k)
    assert torch.allclose(res.a[:, 1:], expected[:, None].expand(-1, k - 1), rtol=1e-8, atol=0)


def test_time_to_margin_from_a_subnormal_start():
    # symmetric manifold: t = int (e^l + K - 1) / (2 l) dl = (Ei(g) - Ei(l0) + (K - 1) log(g / l0)) / 2
    special = pytest.importorskip("scipy.special")
    k, g, lam0 = 4, 1e-300, 1e-310
    exact = (special.expi(g) - special.expi(lam0) + (k - 1) * math.log(g / lam0)) / 2
    assert math.isclose(time_to_margin(g, lam0, k).item(), exact, rel_tol=1e-7)
    k, g, lam0 = 8, 3.0, 1e-6
    exact = (special.expi(g) - special.expi(lam0) + (k - 1) * math.log(g / lam0)) / 2
    assert math.isclose(time_to_margin(g, lam0, k).item(), exact, rel_tol=1e-6)


def test_flow_outputs_stay_paired_in_the_fourier_basis():
    # LSODA (used with weight decay) parts the members of a pair by round-off; the output must be a
    # valid fourier spectrum again, e.g. to restart the flow from it
    gen = torch.Generator().manual_seed(2)
    a = paired_spectrum(10 ** (3 * torch.rand(4, 6, generator=gen, dtype=torch.float64) - 2), "fourier")
    b = paired_spectrum(10 ** (3 * torch.rand(4, 6, generator=gen, dtype=torch.float64) - 2), "fourier")
    res = spectral_flow(a, b, torch.logspace(-2, 5, 7), basis="fourier", weight_decay=(3e-3, 3e-3))
    pairs = mode_pairs(6, "fourier")
    for x in (res.a, res.b):
        assert torch.equal(x[..., pairs[:, 0]], x[..., pairs[:, 1]])
    spectral_flow(res.a[-1], res.b[-1], [1.0], basis="fourier")


# ------------------------------------------------------------------ 5. arguments read one way


def test_weight_decay_pairs_in_any_container_agree():
    a = [0.0, 1.0, 2.0, 0.5]
    ref = spectral_gd(a, a, lr=0.5, steps=5, weight_decay=(0.1, 0.2)).a
    for wd in ([0.1, 0.2], torch.tensor([0.1, 0.2], dtype=torch.float64)):
        assert torch.equal(spectral_gd(a, a, lr=0.5, steps=5, weight_decay=wd).a, ref)


# ------------------------------------------------------------------ code health


@pytest.mark.parametrize("k, kind", [(5, "fourier"), (8, "fourier"), (8, "walsh"), (12, "hadamard")])
def test_paired_spectrum_gives_an_admissible_spectrum(k, kind):
    free = torch.rand(3, k, generator=torch.Generator().manual_seed(k), dtype=torch.float64) + 0.1
    spec = paired_spectrum(free, kind)
    pairs = mode_pairs(k, kind)
    assert torch.equal(spec[:, pairs[:, 0]], spec[:, pairs[:, 1]])
    unpaired = torch.ones(k, dtype=torch.bool)
    unpaired[pairs[:, 1]] = False
    assert torch.equal(spec[:, unpaired], free[:, unpaired])  # the free values kept, nothing else changed
    assert torch.equal(check_spectrum(spec, k, kind, "spec"), spec)
    spectral_init(k, k + 2, spec[0], basis=kind)


def test_internal_helpers_are_not_exported():
    for module, names in [
        (hadamard, ["is_power_of_two"]),
        (bases, ["resolve_basis", "check_spectrum"]),
        (init, ["spectral_factors", "compose_spectral", "_spectral_factors", "_compose_spectral"]),
        (dynamics, ["spectral_rhs"]),
    ]:
        for name in names:
            assert name not in module.__all__, (module.__name__, name)
    for module in (hadainit, hadamard, bases, init, dynamics, lyapunov, model):
        for name in module.__all__:
            assert not name.startswith("_") and getattr(module, name).__doc__, (module.__name__, name)


def test_importing_the_metrics_does_not_load_scipy_integrate():
    # torchmetrics imports scipy.signal (which loads scipy.integrate) by itself; stubbed, what remains is ours
    code = (
        "import sys, types\n"
        "stub = types.ModuleType('scipy.signal'); stub.hamming = None; sys.modules['scipy.signal'] = stub\n"
        "import hadainit.metrics, hadainit.ufm\n"
        "assert 'scipy.integrate' not in sys.modules, sorted(m for m in sys.modules if m.startswith('scipy'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
