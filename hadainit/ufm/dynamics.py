"""The exact reduced dynamics of the UFM from a spectral initialization (SPEC section 3).

Per mode i, with ``c_i = 1 - mu_i`` (CE) or ``1 - lam_i`` (MSE)::

    da_i/dt = c_i * b_i / K       - wd_W * a_i
    db_i/dt = c_i * a_i / (n K)   - wd_H * b_i

``spectral_gd`` is the GD map (the right-hand side times the step, from the
old iterate): it equals dense GD from the same spectral init to round-off, at
O(K log K) per step (walsh) instead of O(K^2 d). ``spectral_flow`` solves the
gradient-flow ODE with scipy in log-time ``tau = log(1 + t)``: in the slowdown
regime the rates fall like ``1 / t``, so ``dy/dtau = (1 + t) f(y)`` stays O(1)
and a handful of steps per decade reach ``t = 1e12`` and beyond.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import _checks
from ..bases import SOFTMAX_DIAGONALIZING, _tie_pairs, check_spectrum, mode_pairs, resolve_basis
from ._fused_step import FusedRHS, fused_dtypes
from .spectral import margins, softmax_spectrum

# scipy.integrate is imported inside spectral_flow: importing the package (and hadainit.metrics)
# must not pay for it.

__all__ = ["SpectralGDResult", "SpectralFlowResult", "spectral_gd", "spectral_flow", "time_to_margin"]

#: The largest horizon time_to_margin integrates to (float64's largest finite value is 1.8e308).
_T_MAX = 1e308

#: How often (in steps) GD checks its iterate for inf/NaN; the first bad step is then found by replay.
_CHECK_EVERY = 64


@dataclass
class SpectralGDResult:
    """Recorded reduced-GD trajectory: row t of ``a``, ``b``, ``loss`` is ``step[t]``."""

    step: Tensor
    a: Tensor
    b: Tensor
    loss: Tensor

    @property
    def lam(self) -> Tensor:
        """Eigenvalues of the class-mean logit matrix, ``a * b``."""
        return self.a * self.b


@dataclass
class SpectralFlowResult:
    """Gradient-flow solution, in the manner of ``scipy.integrate.solve_ivp``.

    ``t`` are the requested times reached (fewer if a terminal event stopped
    the flow), ``a``/``b``/``loss`` the states there. ``t_events[j]`` are the
    times at which event j fired (empty if not before the horizon: never guessed).
    ``status``: 0 reached the last time, 1 a terminal event, -1 solver failure.
    """

    t: Tensor
    a: Tensor
    b: Tensor
    loss: Tensor
    t_events: list[Tensor]
    status: int
    message: str
    nfev: int

    @property
    def lam(self) -> Tensor:
        return self.a * self.b

    @property
    def success(self) -> bool:
        return self.status >= 0


def _validate(a, b, basis: str, samples_per_class: int, weight_decay, loss: str):
    a_t = _checks.real_tensor(a, "a")
    if a_t.dim() == 0 or a_t.shape[-1] < 2:
        raise ValueError(f"a must have shape (..., K) with K >= 2 modes, got {tuple(a_t.shape)}")
    k = a_t.shape[-1]
    kind = resolve_basis(k, basis)
    if kind not in SOFTMAX_DIAGONALIZING:
        raise ValueError(
            f"the reduced dynamics need a softmax-diagonalizing basis {SOFTMAX_DIAGONALIZING}, got {basis!r}"
        )
    a_t = check_spectrum(a_t, k, kind, "a", dtype=None)
    b_t = check_spectrum(b, k, kind, "b", dtype=a_t.dtype).to(a_t.device)
    if a_t.shape != b_t.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a_t.shape)} and {tuple(b_t.shape)}")
    n = _checks.positive_int(samples_per_class, "samples_per_class")
    return a_t, b_t, kind, n, _checks.weight_decay(weight_decay), _checks.loss_kind(loss)


def _mode_rates(rates, k: int, kind: str) -> Tensor:
    """K positive finite per-mode rates as float64 (fourier: a pair's two rates equal), or ValueError/TypeError."""
    r = _checks.real_tensor(rates, "mode_rates", dtype=torch.float64).cpu()
    if r.shape != (k,):
        raise ValueError(f"mode_rates must have one rate per mode, shape ({k},), got {tuple(r.shape)}")
    if not (torch.isfinite(r).all() and (r > 0).all()):
        raise ValueError(f"mode_rates must be positive and finite, got {r.tolist()}")
    pairs = mode_pairs(k, kind)
    if pairs.numel() and not torch.equal(r[pairs[:, 0]], r[pairs[:, 1]]):
        raise ValueError("in the fourier basis a cos/sin pair of modes (1, 2), (3, 4), ... must share its rate; "
                         f"got mode_rates {r.tolist()}")
    return r


def spectral_rhs(
    a: Tensor, b: Tensor, kind: str, samples_per_class: int, weight_decay: tuple[float, float], loss: str
) -> tuple[Tensor, Tensor, Tensor]:
    """``(da/dt, db/dt, loss)`` of the reduced flow (no validation: an internal hot path).

    float32/float64 go through :class:`FusedRHS` (a dozen fused passes, the
    same values bit for bit); other dtypes through :func:`_rhs_reference`.
    """
    if a.dtype not in fused_dtypes() or b.dtype != a.dtype or b.shape != a.shape or b.device != a.device:
        return _rhs_reference(a, b, kind, samples_per_class, weight_decay, loss)
    a, b = a.contiguous(), b.contiguous()
    rhs = FusedRHS(a.shape, a.dtype, a.device, kind, samples_per_class, weight_decay, loss)
    da, db = torch.empty_like(a), torch.empty_like(b)
    rhs.evaluate(a, b, da, db)
    return da, db, rhs.loss(a, b)


def _rhs_reference(
    a: Tensor, b: Tensor, kind: str, samples_per_class: int, weight_decay: tuple[float, float], loss: str
) -> tuple[Tensor, Tensor, Tensor]:
    """The right-hand side as plain torch operations: the reference of :class:`FusedRHS` (and its tests)."""
    k = a.shape[-1]
    wd_w, wd_h = weight_decay
    lam = a * b
    if loss == "ce":
        value, _, c = softmax_spectrum(lam, kind)
    else:
        c = 1.0 - lam
        value = 0.5 * c.pow(2).sum(-1) / k
    if wd_w or wd_h:
        value = value + 0.5 * wd_w * a.pow(2).sum(-1) + 0.5 * wd_h * samples_per_class * b.pow(2).sum(-1)
    da = c * b / k - wd_w * a
    db = c * a / (samples_per_class * k) - wd_h * b
    return da, db, value


def _divergence_message(
    step: int, lr: float, loss: str, weight_decay: tuple[float, float], num_classes: int, samples_per_class: int
) -> str:
    """What to say when gradient descent produced inf/NaN at ``step``: the step, and the stable bound if known.

    Squared loss without weight decay: at a minimum ``Z = Y`` the Hessian is
    ``J^T J / N`` and, with ``||W||_2 ||H||_2 >= ||Y||_2 = sqrt(n)``, its largest
    eigenvalue is at least ``2 sqrt(n) / N = 2 / (K sqrt(n))`` (per mode of the
    reduced map: ``(b^2 + a^2/n) / K`` with ``a b = 1``). GD can therefore settle
    at no minimum once ``lr > K sqrt(n)``. Cross-entropy has no minimum and no
    such bound is known: its curvature falls as the margins grow.
    """
    k, n = num_classes, samples_per_class
    text = f"gradient descent diverged: the iterate (or its loss) is not finite after step {step} (lr={lr:g})"
    if loss == "mse" and weight_decay == (0.0, 0.0):
        return text + f"; for the squared loss no minimum is stable for lr > K sqrt(n) = {k * math.sqrt(n):.4g}"
    which = "cross-entropy" if loss == "ce" else "the squared loss with weight decay"
    return text + f"; no stable step-size bound is known for {which}: lower lr"


def _first_bad_step(start: int, state: tuple[Tensor, ...], advance: Callable, finite: Callable, limit: int) -> int:
    """Replay ``advance`` from ``state`` (verified finite after step ``start``): the first step that is not finite."""
    for t in range(start + 1, limit + 1):
        state = advance(*state)
        if not finite(*state):
            return t
    return limit  # not reached: non-finite values stay non-finite under these maps


def spectral_gd(
    a,
    b,
    *,
    lr: float,
    steps: int,
    basis: str = "auto",
    samples_per_class: int = 1,
    weight_decay=(0.0, 0.0),
    loss: str = "ce",
    record_every: int = 1,
) -> SpectralGDResult:
    """The exact reduced GD map from ``(a, b)`` (shape (..., K), mode 0 = constant).

    Equals full-matrix GD on the dense UFM from the same spectral
    initialization (:meth:`hadainit.ufm.UFM.gradient_descent`) to round-off.
    Records steps 0, record_every, ..., and the last. dtype and device of ``a``
    are kept (float32/float64, CPU/CUDA); batches run in parallel.

    Args:
        a, b: singular values of W and H per mode.
        lr: step size; steps: number of steps.
        basis: ``"walsh"``, ``"fourier"`` or ``"auto"``.
        samples_per_class: n.
        weight_decay: ``(wd_W, wd_H)``.
        loss: ``"ce"`` or ``"mse"`` (squared loss: the modes decouple).
        record_every: recording interval.

    Raises:
        ValueError: if an iterate becomes inf or NaN; the message gives the first
            such step (a loss that overflows counts) and, where one is known,
            the stable step-size bound.
    """
    a, b, kind, n, wd, loss = _validate(a, b, basis, samples_per_class, weight_decay, loss)
    lr = _checks.positive_float(lr, "lr")
    steps = _checks.positive_int(steps, "steps", minimum=0)
    every = _checks.positive_int(record_every, "record_every")

    def advance(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        da, db, _ = _rhs_reference(a, b, kind, n, wd, loss)
        return a + lr * da, b + lr * db

    def finite(a: Tensor, b: Tensor) -> bool:
        value = _rhs_reference(a, b, kind, n, wd, loss)[2]  # e.g. MSE: lam ~ 1e160 is finite, its loss is not
        return bool(torch.isfinite(a).all() and torch.isfinite(b).all() and torch.isfinite(value).all())

    def diverged(t: int, safe: tuple[int, Tensor, Tensor]) -> ValueError:
        bad = _first_bad_step(safe[0], safe[1:], advance, finite, t)
        return ValueError(_divergence_message(bad, lr, loss, wd, a.shape[-1], n))

    if a.dtype in fused_dtypes():
        return _gd_fused(a, b, kind, n, wd, loss, lr, steps, every, diverged)
    rec_step, rec_a, rec_b, rec_loss = [], [], [], []
    safe = (0, a, b)  # the last iterate verified finite (checked every _CHECK_EVERY steps: no sync per step)
    for t in range(steps + 1):
        da, db, value = _rhs_reference(a, b, kind, n, wd, loss)
        if t % every == 0 or t == steps:
            rec_step.append(t)
            rec_a.append(a)
            rec_b.append(b)
            rec_loss.append(value)
        if t < steps:
            a, b = a + lr * da, b + lr * db
            if (t + 1) % _CHECK_EVERY == 0 or t + 1 == steps:
                if not finite(a, b):
                    raise diverged(t + 1, safe)
                safe = (t + 1, a, b)
    return SpectralGDResult(torch.tensor(rec_step), torch.stack(rec_a), torch.stack(rec_b), torch.stack(rec_loss))


def _gd_fused(a: Tensor, b: Tensor, kind: str, n: int, wd: tuple[float, float], loss: str, lr: float, steps: int,
              every: int, diverged: Callable) -> SpectralGDResult:
    """spectral_gd's loop over two pairs of buffers (the iterate and the next), values as the reference loop's.

    Iterate t's loss comes out of the evaluation that also makes step t, so the
    finiteness check of iterate t (every _CHECK_EVERY steps and at the end) costs
    no extra evaluation; the recorded rows are written into the result directly.
    Every K-sized buffer is allocated before the loop: resident memory stays flat.
    """
    recorded = sorted(set(range(0, steps + 1, every)) | {steps})
    rec_a = torch.empty((len(recorded), *a.shape), dtype=a.dtype, device=a.device)
    rec_b = torch.empty_like(rec_a)
    rec_loss = torch.empty((len(recorded), *a.shape[:-1]), dtype=a.dtype, device=a.device)
    rhs = FusedRHS(a.shape, a.dtype, a.device, kind, n, wd, loss)
    cur_a, cur_b = a.contiguous(), b.contiguous()
    nxt_a, nxt_b = torch.empty_like(cur_a), torch.empty_like(cur_b)
    safe_a, safe_b = cur_a.clone(), cur_b.clone()  # the last iterate verified finite, overwritten in place
    safe = (0, safe_a, safe_b)
    row = 0
    for t in range(steps + 1):
        last = t == steps
        rhs.evaluate(cur_a, cur_b, None if last else nxt_a, None if last else nxt_b, lr)
        record = t % every == 0 or last
        check = t > 0 and (t % _CHECK_EVERY == 0 or last)
        if record or check:
            value = rhs.loss(cur_a, cur_b)
            if check:
                if not bool(torch.isfinite(cur_a).all() and torch.isfinite(cur_b).all() and torch.isfinite(value).all()):
                    raise diverged(t, safe)
                safe_a.copy_(cur_a)
                safe_b.copy_(cur_b)
                safe = (t, safe_a, safe_b)
            if record:
                rec_a[row].copy_(cur_a)
                rec_b[row].copy_(cur_b)
                rec_loss[row].copy_(value)
                row += 1
        cur_a, nxt_a, cur_b, nxt_b = nxt_a, cur_a, nxt_b, cur_b
    return SpectralGDResult(torch.tensor(recorded), rec_a, rec_b, rec_loss)


EventFn = Callable[[float, Tensor, Tensor], float]


@dataclass
class _Initial:
    """The solve_ivp answer for a grid that is just t = 0: the initial state, status 0."""

    t: np.ndarray
    y: np.ndarray
    t_events: list
    status: int = 0
    message: str = "only t = 0 was requested: the initial state"
    nfev: int = 0


def _event_value(value, number: int, shape: torch.Size) -> float:
    """An event's return value as one finite float, or a one-line ValueError saying what came back instead.

    An event sees the whole batch (a and b of shape (..., K)) and must reduce it to one number: the
    solver locates one sign change at a time (e.g. ``margins(a * b).min()`` for "any trajectory").
    """
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"event {number} returned a tensor of shape {tuple(value.shape)}; an event must return one number. "
                f"The flow's a and b have shape {tuple(shape)}: reduce over the batch (e.g. .min()), or solve "
                "each trajectory separately for one event time each"
            )
        value = value.item()
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"event {number} returned {type(value).__name__} {value!r}; it must return a real number") from None
    if math.isnan(out):
        raise ValueError(f"event {number} returned NaN; it must return a real number whose sign change is the event")
    return out


def spectral_flow(
    a0,
    b0,
    t: Sequence[float] | Tensor,
    *,
    basis: str = "auto",
    samples_per_class: int = 1,
    weight_decay=(0.0, 0.0),
    loss: str = "ce",
    rtol: float = 1e-9,
    atol: float | None = None,
    events: Sequence[EventFn] | EventFn | None = None,
    method: str = "auto",
    mode_rates=None,
) -> SpectralFlowResult:
    """Solve the reduced gradient-flow ODE from ``(a0, b0)`` at the times ``t``.

    Integrates ``dy/dtau = (1 + t) f(y)`` in ``tau = log(1 + t)`` with
    ``scipy.integrate.solve_ivp`` in float64 on the CPU; results come back in
    the dtype and device of ``a0``.

    Args:
        a0, b0: initial singular values, shape (..., K).
        t: strictly increasing output times >= 0 (integration starts at 0; ``[0.0]``
            alone returns the initial state). Times closer together than the
            log-time resolution (about ``1e-16 * t * log(t)``, e.g. 1e20 and
            1e20 + 1e5) share one state: float64 cannot tell them apart in log-time.
        rtol, atol: solver tolerances (on a and b). ``atol=None``: ``1e-12`` times
            the largest initial value if that is below 1 (the flow is linear at
            small scale, so a tiny start needs a proportionally tiny atol).
        events: callables ``event(t, a, b) -> float`` whose sign changes are
            located, with optional ``terminal``/``direction`` attributes as in
            solve_ivp; their times are in ``t_events``.
        method: a solve_ivp method, or ``"auto"``: DOP853 for CE without weight
            decay (non-stiff in log-time), LSODA otherwise (the flow then
            converges exponentially, which is stiff in log-time).
        mode_rates: ``None`` (every mode at rate 1), or K positive finite rates ``r``: mode m
            moves at ``r_m`` times its gradient (``da_m/dt = r_m f_m``, the same for b). This is
            the exact reduced form of dense gradient flow preconditioned by ``Q diag(r) Q^T`` on
            the left of W and the right of H (docs/theory.md §7: a body that feeds each mode at
            its own rate); the frozen vectors are kept. In the fourier basis a cos/sin pair of
            modes must share its rate, or the flow would leave the basis (``ValueError``).
    """
    a0, b0, kind, n, wd, loss = _validate(a0, b0, basis, samples_per_class, weight_decay, loss)
    rates = None if mode_rates is None else _mode_rates(mode_rates, a0.shape[-1], kind)
    from scipy.integrate import solve_ivp  # lazy: see the imports

    times = _checks.real_tensor(t, "t", dtype=torch.float64).flatten().cpu()
    if times.numel() == 0 or not torch.isfinite(times).all() or (times < 0).any() or (times.diff() <= 0).any():
        raise ValueError("t must be a non-empty, strictly increasing sequence of finite times >= 0")
    rtol = _checks.positive_float(rtol, "rtol")
    if atol is None:
        scale = float(torch.maximum(a0.abs().max(), b0.abs().max()))
        atol = 1e-12 * min(1.0, scale) if scale > 0 else 1e-12
    atol = _checks.positive_float(atol, "atol")
    if method == "auto":
        method = "DOP853" if loss == "ce" and wd == (0.0, 0.0) else "LSODA"
    shape = a0.shape
    size = a0.numel()

    def unpack(y: np.ndarray) -> tuple[Tensor, Tensor]:
        y_t = torch.from_numpy(np.ascontiguousarray(y))  # the solver may hand over strided views
        return y_t[:size].view(shape), y_t[size:].view(shape)

    rhs = FusedRHS(shape, torch.float64, torch.device("cpu"), kind, n, wd, loss)  # buffers reused by every call

    def fun(tau: float, y: np.ndarray) -> np.ndarray:
        a, b = unpack(y)
        out = torch.empty(2 * size, dtype=torch.float64)  # fresh: the solver keeps the arrays it is given
        rhs.evaluate(a, b, out[:size].view(shape), out[size:].view(shape))
        if rates is not None:
            out.view(2, *shape).mul_(rates)
        return out.mul_(math.exp(tau)).numpy()

    event_list = [] if events is None else [events] if callable(events) else list(events)
    wrapped = []
    for number, ev in enumerate(event_list):
        if not callable(ev):
            raise TypeError(f"events must be callables event(t, a, b) -> float, got {type(ev).__name__} (event {number})")

        def fn(tau, y, ev=ev, number=number):
            a, b = unpack(y)
            return _event_value(ev(math.expm1(tau), a, b), number, shape)

        fn.terminal = getattr(ev, "terminal", False)
        fn.direction = getattr(ev, "direction", 0)
        wrapped.append(fn)

    y0 = torch.cat((a0.flatten(), b0.flatten())).to(torch.float64).cpu().numpy()
    # distinct huge times can share a log-time: solve at the distinct ones, then give each time its row
    taus, row = np.unique(torch.log1p(times).numpy(), return_inverse=True)
    if taus[-1] == 0.0:  # only t = 0 asked for: the initial state, nothing to integrate
        sol = _Initial(t=taus, y=y0[:, None], t_events=[np.empty(0) for _ in wrapped])
    else:
        sol = solve_ivp(
            fun, (0.0, float(taus[-1])), y0, method=method, t_eval=taus, rtol=rtol, atol=atol, events=wrapped or None
        )
    kept = torch.from_numpy(row.reshape(-1))[torch.from_numpy(row.reshape(-1)) < len(sol.t)]
    reached = len(kept)
    ys = torch.from_numpy(np.ascontiguousarray(sol.y.T))[kept] if reached else torch.empty(0, 2 * size, dtype=torch.float64)
    # the exact flow keeps fourier pairs equal; a solver (LSODA's Jacobian) can part them by round-off
    a_out = _tie_pairs(ys[:, :size].reshape(reached, *shape), kind)
    b_out = _tie_pairs(ys[:, size:].reshape(reached, *shape), kind)
    if reached:
        _, _, value = spectral_rhs(a_out, b_out, kind, n, wd, loss)
    else:  # a terminal event fired before the first requested time
        value = torch.empty(0, *shape[:-1], dtype=torch.float64)
    t_events = [torch.expm1(torch.as_tensor(te, dtype=torch.float64)) for te in (sol.t_events or [])]
    like = dict(dtype=a0.dtype, device=a0.device)
    return SpectralFlowResult(
        t=times[:reached].to(**like),
        a=a_out.to(**like),
        b=b_out.to(**like),
        loss=value.to(**like),
        t_events=t_events,
        status=int(sol.status),
        message=str(sol.message),
        nfev=int(sol.nfev),
    )


def time_to_margin(
    gamma: float | Sequence[float] | Tensor,
    lam0: float,
    num_classes: int,
    *,
    basis: str = "auto",
    modes=None,
    rtol: float = 1e-10,
) -> Tensor:
    """Gradient-flow time for the balanced trajectory from ``lam_i = lam0`` (n = 1) to reach margin ``gamma``.

    Computed from the reduced dynamics by event detection on the smallest
    margin, not from the symmetric-manifold approximation
    ``dlam/dt = 2 lam / (exp(lam) + K - 1)`` (the tests compare the two).
    Margins already reached (``gamma <= lam0``) take time 0. Any positive
    finite ``lam0`` works (the flow is solved with a tolerance scaled to it);
    a margin whose time exceeds float64's range (``exp(gamma) / (2 gamma)`` beyond
    1e308, i.e. gamma above about 700) raises ``ValueError``.

    Args:
        gamma: target margins.
        lam0: the initial value of every mode in play.
        num_classes: K.
        basis: ``"walsh"``, ``"fourier"`` or ``"auto"``.
        modes: a mode set S (K > d, docs/theory.md §8): ``lam_i = lam0`` on S and 0 elsewhere
            (the modes off S stay 0). It must separate the classes
            (:func:`hadainit.modes.check_modes`), else no margin is ever reached. None: all modes.
            With a mode set the trajectory leaves the symmetric manifold (it heads for the
            max-margin LP's solution) and "already reached" compares ``gamma`` with the
            initial minimum margin.
        rtol: the solver's relative tolerance.

    Returns a float64 tensor with the shape of ``gamma``.
    """
    k = _checks.positive_int(num_classes, "num_classes", minimum=2)
    kind = resolve_basis(k, basis)
    lam0 = _checks.positive_float(lam0, "lam0")
    rtol = _checks.positive_float(rtol, "rtol")
    targets = _checks.real_tensor(gamma, "gamma", dtype=torch.float64).cpu()
    if not torch.isfinite(targets).all():
        raise ValueError("gamma must be finite")
    a0 = torch.full((k,), math.sqrt(lam0), dtype=torch.float64)
    a0[0] = 0.0  # the constant mode never matters
    start = lam0
    if modes is not None:
        from ..modes import check_modes  # lazy: hadainit.modes imports this package

        on = check_modes(modes, k, kind)
        a0 = torch.zeros(k, dtype=torch.float64)
        a0[on] = math.sqrt(lam0)
        start = float(margins(a0 * a0, kind).min())
    flat = targets.flatten()
    pending = sorted({float(g) for g in flat if g > start})
    result = torch.zeros_like(flat)
    if pending:
        g = pending[-1]  # t(g) >= int_{g - 1}^{g} e^l / (2 l) dl >= (e^g - e^(g - 1)) / (2 g): beyond float64?
        if g + math.log(-math.expm1(-min(1.0, g - start))) - math.log(2 * g) > math.log(torch.finfo(torch.float64).max):
            raise ValueError(_beyond_range(g))
        g_max = pending[-1]
        # horizon: 10x the symmetric-manifold bound t(g) <= (e^g + K - 1) log(g / lam0) / 2, in logs (no overflow);
        # a mode set's slower start gets up to three more decades-of-four before giving up
        log_h = math.log(5.0) + float(torch.logaddexp(torch.tensor(g_max), torch.tensor(math.log(k - 1.0))))
        log_h += math.log(max(math.log(g_max / min(lam0, start)), 1e-300))
        events = []
        for g in pending:
            def ev(t, a, b, g=g):
                return float(margins(a * b, kind).min()) - g

            ev.direction = 1
            ev.terminal = g == g_max
            events.append(ev)
        atol = 1e-14 * min(1.0, math.sqrt(lam0))  # linear at small scale: the tolerance scales with the start
        for attempt in range(1 if modes is None else 4):
            horizon = math.exp(min(log_h + attempt * 4 * math.log(10.0), math.log(_T_MAX)))
            sol = spectral_flow(a0, a0, [horizon], basis=kind, rtol=rtol, atol=atol, events=events)
            if sol.t_events[-1].numel() or horizon >= _T_MAX:
                break
        for g, te in zip(pending, sol.t_events):
            if te.numel() == 0:
                if horizon >= _T_MAX:
                    raise ValueError(_beyond_range(g))
                raise RuntimeError(f"margin {g} was not reached before t = {horizon:.3g} ({sol.message})")
            result[flat == g] = te[0]
    return result.reshape(targets.shape)


def _beyond_range(g: float) -> str:
    return (f"margin {g:g} is reached only after t ~ exp(gamma) / (2 gamma) = "
            f"10^{(g - math.log(2 * g)) / math.log(10):.0f}, beyond float64's range; margins up to about 700 can be timed")
