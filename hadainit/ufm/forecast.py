"""Forecast a run's class-mean logit spectrum with the exact reduced dynamics (SPEC section 7).

A run records the non-constant modes ``lam(e)`` of its class-mean logit matrix
(:mod:`hadainit.metrics.logits`; the UFM's ``a * b``) at epochs ``e``. The forecast
starts the balanced reduced gradient flow (``a = b = sqrt(lam)``, n = 1, no weight
decay) at a measured ``lam(e0)`` and maps epochs to flow time by one fitted
number, ``t = s (e - e0)``: the time scale ``s`` is the only parameter, chosen to
fit the spectra of the epochs in the fit window. It then predicts, for later
epochs, the spectrum, the margin, V and the epoch a margin is reached.

Two extensions make the map from epochs to flow time less rigid (``fit_forecast``'s
``time_map`` and ``rates``): a power-law time map ``t = s e0 ((e / e0)^p - 1) / p``
(``p = 1`` is the linear map, ``p = 0`` the logarithmic one; a real run's effective step
size drifts as its weights grow or its schedule decays), and one rate per mode
(``mode_rates`` of :func:`hadainit.ufm.spectral_flow`: a body that feeds each mode at
its own speed, still an exact spectral flow). Both are fitted on the same window.

The naive baseline it is always judged against holds the spectrum's shape and
extrapolates the margin linearly in log(epoch) over the same window (the UFM's
own slowdown law makes the margin grow like log t).

The margin of a spectrum is the UFM margin ``min_m (z(0) - z(m))`` of
``Q diag(lam) Q^T`` (:func:`hadainit.ufm.margins`): on a real network, the margin
of the diagonal part of the centred class-mean logits. Exact in the spectral UFM,
where the test with dense GD at a known step size (``t = lr * steps``) pins ``s``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _checks
from ..bases import mode_pairs, resolve_basis
from .lyapunov import kl_lyapunov
from .spectral import margins

__all__ = ["RATES", "TIME_MAPS", "SpectrumForecast", "fit_forecast", "baseline_forecast", "evaluate_forecast", "log_epoch_slope",
           "spectral_margin"]


def _full(lam: Tensor) -> Tensor:
    """Modes 1..K-1 -> a K-vector with mode 0 (the constant, irrelevant) set to 0."""
    return torch.cat((lam.new_zeros(*lam.shape[:-1], 1), lam), dim=-1)


def _finite(t: Tensor, name: str) -> Tensor:
    bad = ~torch.isfinite(t)
    if bad.any():
        raise ValueError(f"{name} must be finite, got {t[bad].flatten()[0].item()} at index "
                         f"{tuple(bad.nonzero()[0].tolist())}")
    return t


def _epochs(epochs, name: str = "epochs") -> Tensor:
    """A 0-d or 1-D series of finite epochs as a float64 1-D tensor (bool and complex: TypeError)."""
    e = _checks.real_tensor(epochs, name, dtype=torch.float64)
    if e.dim() > 1:
        raise ValueError(f"{name} must be a number or a 1-D sequence, got shape {tuple(e.shape)}")
    return _finite(e.flatten(), name)


def spectral_margin(lam: Tensor, basis: str = "auto") -> Tensor:
    """The UFM margin of spectra ``lam`` (..., K-1): ``min_m (z(0) - z(m))`` for ``Q diag(0, lam) Q^T``.

    Computed in float64 (integer values too, by the core's dtype rule; bool and complex
    raise ``TypeError``); ``lam`` must be finite (``ValueError``), so is the margin.

    >>> spectral_margin(torch.tensor([1.0, 1.0, 1.0]))  # K = 4 at collapse: z = (3, -1, -1, -1) / 4
    tensor(1., dtype=torch.float64)
    """
    lam = _checks.real_tensor(lam, "lam", dtype=torch.float64)
    if lam.dim() == 0 or lam.shape[-1] == 0:
        raise ValueError(f"lam must have shape (..., K-1) with K-1 >= 1 modes, got shape {tuple(lam.shape)}")
    _finite(lam, "lam")
    out = margins(_full(lam), basis).min(-1).values
    if not torch.isfinite(out).all():
        raise ValueError(f"the margin of lam overflows float64 (largest |lam| {lam.abs().max().item():.3g})")
    return out


def _as_series(epochs, lam) -> tuple[Tensor, Tensor]:
    e = _epochs(epochs)
    spectra = _checks.real_tensor(lam, "lam", dtype=torch.float64)
    if spectra.dim() != 2 or spectra.shape[0] != e.shape[0] or spectra.shape[1] < 2:
        raise ValueError(f"lam must be (epochs, K-1) with K-1 >= 2 and one row per epoch, got {tuple(spectra.shape)} "
                         f"for {e.shape[0]} epochs")
    _finite(spectra, "lam")
    if (e.diff() <= 0).any():
        raise ValueError("epochs must be strictly increasing")
    return e, spectra


@dataclass
class SpectrumForecast:
    """The reduced flow from ``lam0`` at ``epoch0``, with flow time ``time_scale * (epoch - epoch0)``."""

    basis: str
    epoch0: float
    lam0: Tensor  # (K-1,)
    time_scale: float
    fit_error: float  # mean relative spectrum error over the fit epochs after epoch0
    range_edge: str | None = None  # "lower"/"upper" if the fit stopped at an end of time_scale_range (warned)
    power: float = 1.0  # the time map's exponent p: t = s e0 ((e / e0)^p - 1) / p (p = 1: s (e - e0))
    rates: Tensor | None = None  # (K-1,) per-mode rates, geometric mean 1; None: every mode at rate 1

    def flow_time(self, epochs) -> Tensor:
        """Flow time at ``epochs`` (all >= epoch0): ``s (e - e0)`` for p = 1, else ``s e0 ((e/e0)^p - 1) / p``
        (``s e0 log(e / e0)`` at p = 0)."""
        return _flow_time(_epochs(epochs), self.epoch0, self.time_scale, self.power)

    def epoch_at(self, time: float) -> float:
        """The epoch at flow time ``time`` >= 0: the inverse of :meth:`flow_time` (``inf`` where a
        map with p < 0 never gets there: its flow time is bounded by ``s e0 / -p``)."""
        s, e0, p = self.time_scale, self.epoch0, self.power
        if p == 1.0:
            return e0 + time / s
        x = time / (s * e0)
        if p == 0.0:
            return e0 * math.exp(x) if x < 700 else math.inf
        base = 1.0 + p * x
        return e0 * base ** (1.0 / p) if base > 0 and math.isfinite(base ** (1.0 / p)) else math.inf

    def _full_rates(self) -> Tensor | None:
        return None if self.rates is None else torch.cat((self.rates.new_ones(1), self.rates))

    def _flow(self, times: Tensor, **kwargs):
        from .dynamics import spectral_flow

        a0 = _full(self.lam0).sqrt()
        return spectral_flow(a0, a0, times, basis=self.basis, mode_rates=self._full_rates(), **kwargs)

    def predict(self, epochs) -> dict[str, Tensor]:
        """``lam`` (E, K-1), ``margin`` (E,) and ``kl_lyapunov`` (E,) at ``epochs`` (finite, all >= epoch0)."""
        e = _epochs(epochs)
        if (e < self.epoch0).any():
            raise ValueError(f"the forecast starts at epoch {self.epoch0}; got epochs before it "
                             f"(smallest {e.min().item()})")
        t = _flow_time(e, self.epoch0, self.time_scale, self.power)
        if not torch.isfinite(t).all():
            raise ValueError(f"epoch {e.max().item():.3g} is beyond the flow's range: time_scale {self.time_scale:.3g} "
                             "times it overflows float64")
        unique, inverse = torch.unique(t, return_inverse=True)  # sorted
        states = self.lam0.unsqueeze(0).expand(unique.shape[0], -1).clone()  # t = 0: the start itself
        later = unique > 0
        if later.any():
            flow = self._flow(unique[later])
            if not flow.success or flow.t.shape[0] != int(later.sum()):
                raise RuntimeError(f"the reduced flow failed: {flow.message}")
            states[later] = flow.lam[:, 1:]
        lam = states[inverse]
        return {"lam": lam, "margin": spectral_margin(lam, self.basis), "kl_lyapunov": kl_lyapunov(_full(lam))}

    def epochs_to_margin(self, gamma: float, *, horizon_epochs: float = 1e12) -> float:
        """The epoch at which the forecast margin reaches ``gamma`` (``inf`` if not within the horizon).

        ``gamma`` a real number (``-inf`` is reached at ``epoch0``, ``+inf`` never); NaN
        raises ``ValueError``. ``horizon_epochs`` positive and finite.
        """
        gamma = _checks.real_number(gamma, "gamma")
        if math.isnan(gamma):
            raise ValueError("gamma must be a real number, got nan")
        horizon_epochs = _checks.positive_float(horizon_epochs, "horizon_epochs")
        horizon = _flow_time(torch.tensor([self.epoch0 + horizon_epochs], dtype=torch.float64), self.epoch0,
                             self.time_scale, self.power).item()
        if not math.isfinite(horizon):
            raise ValueError(f"horizon_epochs={horizon_epochs:.3g} times the time scale {self.time_scale:.3g} "
                             "overflows float64")
        now = float(spectral_margin(self.lam0, self.basis))
        if gamma <= now:
            return self.epoch0
        if gamma == math.inf:
            return math.inf

        def event(t, a, b):
            return float(margins(a * b, self.basis).min()) - gamma

        event.terminal, event.direction = True, 1
        flow = self._flow([horizon], events=[event])
        hits = flow.t_events[0]
        return self.epoch_at(hits[0].item()) if hits.numel() else math.inf


def _flow_time(e: Tensor, e0: float, s: float, p: float) -> Tensor:
    if p == 1.0:
        return s * (e - e0)
    log_u = (e / e0).log()
    return s * e0 * (log_u if p == 0.0 else torch.expm1(p * log_u) / p)


def _relative_errors(pred: Tensor, true: Tensor) -> Tensor:
    """``||pred - true|| / ||true||`` per row, scaled by ``max |true|`` first: no square under- or overflows."""
    scale = true.abs().amax(-1, keepdim=True)
    return torch.linalg.vector_norm((pred - true) / scale, dim=-1) / torch.linalg.vector_norm(true / scale, dim=-1)


def _time_scale_range(value) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"time_scale_range must be a pair (low, high) of positive numbers, got {value!r}")
    lo, hi = (_checks.real_number(v, "time_scale_range") for v in value)
    if not (0 < lo < hi < math.inf):
        raise ValueError(f"time_scale_range must be an increasing pair of positive finite numbers, got {value!r}")
    return lo, hi


#: relative spectrum errors in the fit's loss are capped here: a prediction 1e100 times off is as bad as any
_CAP = 1e100
_LOG_CAP = math.log(_CAP)


def _undetermined(e0: float, lam0: Tensor, kind: str, time_scale_range) -> str:
    return (f"the time scale is undetermined: the reduced flow from lam(epoch {e0:g}) (margin "
            f"{float(spectral_margin(lam0, kind)):.3g}) fits the later epochs equally at every time scale in "
            f"time_scale_range={tuple(time_scale_range)} (a saturated softmax, or epochs too close for the range)")


TIME_MAPS = ("linear", "power")
RATES = ("shared", "per_mode")


def _choice(value, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _power_range(value) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"power_range must be a pair (low, high) of finite numbers, got {value!r}")
    lo, hi = (_checks.real_number(v, "power_range") for v in value)
    if not (-math.inf < lo < hi < math.inf) or lo < -8 or hi > 8:
        raise ValueError(f"power_range must be an increasing pair of numbers within [-8, 8], got {value!r}")
    return lo, hi


def _mode_groups(k: int, kind: str) -> Tensor:
    """For modes 1..K-1, the index of the rate each uses (fourier: a cos/sin pair shares one)."""
    group = torch.arange(1, k)
    pairs = mode_pairs(k, kind)
    group[pairs[:, 1] - 1] = pairs[:, 0]
    return torch.unique(group, return_inverse=True)[1]


def fit_forecast(epochs, lam, *, basis: str = "auto", start: int | None = None,
                 time_scale_range: tuple[float, float] = (1e-6, 1e9), time_map: str = "linear",
                 power_range: tuple[float, float] = (-1.0, 2.0), rates: str = "shared") -> SpectrumForecast:
    """Fit the flow's map from epochs to time on a measured series: ``epochs`` (E,), ``lam`` (E, K-1).

    The flow starts at epoch index ``start`` (default: the first epoch whose modes are all
    positive; the balanced start needs ``a = b = sqrt(lam)``), and at least two epochs must
    follow it. The parameters minimize the mean squared relative spectrum error over those
    epochs:

    * ``time_map="linear"``: the time scale ``s`` of ``t = s (e - e0)`` alone.
    * ``time_map="power"``: ``s`` and the exponent ``p`` (within ``power_range``) of
      ``t = s e0 ((e / e0)^p - 1) / p``; needs ``e0 > 0``.
    * ``rates="per_mode"``: then one rate per mode (a fourier pair shares one), started from
      1 and fitted by least squares with the time map's exponent; normalized to geometric
      mean 1 (their common scale is the time scale's). K - 1 more parameters: use a window of
      several epochs, or the fit follows noise.

    For the time map, one flow solve serves every candidate: the trajectory from ``lam(e0)``
    is solved once up to the largest time the ranges allow and interpolated (cubic, in
    log(1 + t)) over a grid and a bounded refinement; the fit error is then recomputed
    exactly. Per-mode rates need a flow solve per evaluation (``scipy.optimize.least_squares``).
    """
    from scipy.interpolate import CubicSpline
    from scipy.optimize import minimize, minimize_scalar

    from .dynamics import spectral_flow

    e, spectra = _as_series(epochs, lam)
    kind = resolve_basis(spectra.shape[1] + 1, basis)
    time_map = _choice(time_map, "time_map", TIME_MAPS)
    rates = _choice(rates, "rates", RATES)
    p_lo, p_hi = _power_range(power_range) if time_map == "power" else (1.0, 1.0)
    positive = (spectra > 0).all(-1).nonzero().flatten()
    if start is None:
        if positive.numel() == 0:
            raise ValueError("the forecast needs an epoch with every mode positive")
        start = int(positive[0])
    start = _checks.integer(start, "start")
    if not 0 <= start < e.shape[0] or not bool((spectra[start] > 0).all()):
        raise ValueError(f"the forecast starts at an epoch whose modes are all positive; epoch index {start} is not")
    if e.shape[0] - start < 3:
        raise ValueError("the forecast needs at least two epochs after its start to fit the time scale")
    low, high = _time_scale_range(time_scale_range)
    lo, hi = math.log(low), math.log(high)
    e0, lam0 = e[start].item(), spectra[start]
    if time_map == "power" and not e0 > 0:
        raise ValueError(f"the power-law time map needs a start epoch > 0, got {e0:g}")
    fit_epochs, target = e[start + 1 :], spectra[start + 1 :]
    zero = (target == 0).all(-1)
    if zero.any():
        raise ValueError(f"lam is zero at epoch {fit_epochs[zero][0].item():g}: its relative error is undefined")

    def unit_times(power: float) -> Tensor:  # flow time at s = 1
        return _flow_time(fit_epochs, e0, 1.0, power)

    t_max = high * unit_times(p_hi).max().item()
    if not math.isfinite(t_max):
        raise ValueError(f"the epochs span {(fit_epochs[-1] - e0).item():.3g} after the start; times the largest time "
                         f"scale {high:.3g} that overflows float64: pass a time_scale_range in the epochs' units")
    a0 = _full(lam0).sqrt()
    taus = torch.linspace(0.0, math.log1p(t_max), 1200, dtype=torch.float64)
    flow = spectral_flow(a0, a0, torch.expm1(taus[1:]), basis=kind)
    if not flow.success or flow.t.shape[0] != taus.shape[0] - 1:
        raise RuntimeError(f"the reduced flow failed: {flow.message}")
    states = torch.cat((lam0.unsqueeze(0), flow.lam[:, 1:]))
    # a flow that moves by round-off only within the range (saturated softmax, epochs too close): no time scale
    if ((states - lam0).abs() <= 64 * torch.finfo(torch.float64).eps * lam0).all():
        raise ValueError(_undetermined(e0, lam0, kind, time_scale_range))
    # the balanced flow from positive modes keeps them positive (they only grow): interpolating log(lam)
    # keeps every digit at any scale of the spectrum (1e-200 or 1e300 alike)
    logs = bool((states > 0).all())
    path = CubicSpline(taus.numpy(), (states.log() if logs else states).numpy(), axis=0)
    scale = target.abs().amax(-1, keepdim=True)
    target_np = (target / scale).numpy()
    norms = torch.linalg.vector_norm(target / scale, dim=-1).numpy()
    log_scale = scale.log()
    units = {p_hi: unit_times(p_hi)}

    def loss(log_s: float, power: float = 1.0) -> float:
        unit = units[power] if power in units else unit_times(power)
        pred = torch.from_numpy(path(torch.log1p(math.exp(log_s) * unit).numpy()))
        # relative to the measured scale, capped at 1e100 (hopeless either way): finite at any scale
        pred = (pred - log_scale).clamp(max=_LOG_CAP).exp() if logs else (pred / scale).clamp(-_CAP, _CAP)
        return float((((pred.numpy() - target_np) ** 2).sum(-1) / norms**2).mean())

    powers = [1.0] if time_map == "linear" else torch.linspace(p_lo, p_hi, 25, dtype=torch.float64).tolist()
    for power in powers:
        units[power] = unit_times(power)
    grid = torch.linspace(lo, hi, 400 if time_map == "linear" else 200, dtype=torch.float64).tolist()
    values = {(g, power): loss(g, power) for power in powers for g in grid}
    (g_best, p_best), v_best = min(values.items(), key=lambda item: item[1])
    if max(values.values()) - v_best <= 1e-12 * max(values.values()):
        raise ValueError(_undetermined(e0, lam0, kind, time_scale_range))
    step = grid[1] - grid[0]
    if time_map == "linear":
        bounds = (max(lo, g_best - step), min(hi, g_best + step))
        res = minimize_scalar(loss, bounds=bounds, method="bounded", options={"xatol": 1e-9})
        log_s, power = (min(max(res.x, lo), hi), 1.0) if res.fun <= v_best else (g_best, 1.0)
    else:
        box = [(max(lo, g_best - step), min(hi, g_best + step)), (p_lo, p_hi)]
        res = minimize(lambda x: loss(x[0], x[1]), [g_best, p_best], method="Powell", bounds=box,
                       options={"xtol": 1e-9, "ftol": 1e-14})
        log_s, power = (float(res.x[0]), float(res.x[1])) if res.fun <= v_best else (g_best, p_best)
    edge = "lower" if log_s - lo < 1e-6 else "upper" if hi - log_s < 1e-6 else None
    fitted = SpectrumForecast(kind, e0, lam0, math.exp(log_s), math.nan, edge, power=power)
    if edge is not None:
        warnings.warn(f"the fitted time scale {fitted.time_scale:.3g} is at the {edge} end of time_scale_range="
                      f"{tuple(time_scale_range)}: the best fit may lie outside it", UserWarning, stacklevel=2)
    if rates == "per_mode" or time_map == "power":
        _refine(fitted, fit_epochs, target, (p_lo, p_hi) if time_map == "power" else None, rates == "per_mode")
    fitted.fit_error = _relative_errors(fitted.predict(fit_epochs)["lam"], target).mean().item()
    return fitted


def _refine(fitted: SpectrumForecast, fit_epochs: Tensor, target: Tensor, power_bounds, per_mode: bool) -> None:
    """Least squares on the exact flow's relative spectrum errors, from the interpolated fit: the time
    scale (or, with ``per_mode``, one rate per mode, which then carry the scale) and the exponent if
    ``power_bounds``. Per-mode rates end normalized to geometric mean 1 (their scale into s). Kept only
    if no worse than the start."""
    from scipy.optimize import least_squares

    groups = _mode_groups(target.shape[1] + 1, fitted.basis)
    n = int(groups.max()) + 1 if per_mode else 0
    scale = target.abs().amax(-1, keepdim=True)
    rows = target / scale
    norms = torch.linalg.vector_norm(rows, dim=-1, keepdim=True)
    base = SpectrumForecast(fitted.basis, fitted.epoch0, fitted.lam0, fitted.time_scale, math.nan, power=fitted.power)
    penalty = 1e3 * torch.ones(target.numel(), dtype=torch.float64).numpy()
    log_s0 = math.log(fitted.time_scale)

    def trial(x) -> SpectrumForecast:
        x = torch.as_tensor(x, dtype=torch.float64)
        if per_mode:
            base.rates = x[:n].exp()[groups]
        else:
            base.time_scale = math.exp(float(x[0]))
        if power_bounds is not None:
            base.power = float(x[-1])
        return base

    def residuals(x):
        try:
            pred = trial(x).predict(fit_epochs)["lam"]
        except (RuntimeError, ValueError):  # a flow the solver cannot follow: as bad as can be
            return penalty
        r = ((pred / scale - rows) / norms).flatten()
        return r.clamp(-_CAP, _CAP).numpy() if torch.isfinite(r).all() else penalty

    x0 = [0.0] * n if per_mode else [log_s0]
    low = [-20.0] * n if per_mode else [log_s0 - 5.0]
    high = [20.0] * n if per_mode else [log_s0 + 5.0]
    if power_bounds is not None:
        x0, low, high = x0 + [fitted.power], low + [power_bounds[0]], high + [power_bounds[1]]
    x0 = [min(max(v, lo), hi) for v, lo, hi in zip(x0, low, high)]
    start_cost = 0.5 * float((residuals(x0) ** 2).sum())
    res = least_squares(residuals, x0, bounds=(low, high), max_nfev=60 * (len(x0) + 1), xtol=1e-12, ftol=1e-14)
    if not res.cost <= start_cost:  # never worse than the interpolated fit it started from
        trial(x0)
    else:
        trial(res.x)
    fitted.power = base.power
    if per_mode:
        log_r = base.rates.log()
        gm = log_r.mean().item()  # geometric mean over the K - 1 modes: its scale goes into the time scale
        fitted.rates = (log_r - gm).exp()
        fitted.time_scale = base.time_scale * math.exp(gm)
    else:
        fitted.time_scale = base.time_scale


def log_epoch_slope(epochs, values) -> tuple[float, float]:
    """Least-squares ``values ~ slope * log(epoch) + intercept`` over epochs > 0; returns (slope, intercept).

    Epochs must be finite (``ValueError``); epochs <= 0 and non-finite values are left out.

    The UFM's slowdown law ``t(gamma) ~ e^gamma / (2 gamma)`` makes the margin grow like
    ``log t + log(2 gamma)``: slope 1 per e-fold of time (``gamma / (gamma - 1)``, tending to 1).
    """
    e = _epochs(epochs)
    v = _checks.real_tensor(values, "values", dtype=torch.float64)
    if v.dim() > 1 or v.flatten().shape != e.shape:
        raise ValueError(f"values must be a 1-D sequence with one value per epoch, got shape {tuple(v.shape)} for "
                         f"{e.shape[0]} epochs")
    v = v.flatten()
    keep = (e > 0) & torch.isfinite(v)
    if int(keep.sum()) < 2 or torch.unique(e[keep]).numel() < 2:
        raise ValueError("the log-epoch slope needs at least two distinct epochs > 0 with finite values")
    x = torch.stack((e[keep].log(), torch.ones_like(e[keep])), dim=1)
    coef = torch.linalg.lstsq(x, v[keep].unsqueeze(1)).solution.flatten()
    return coef[0].item(), coef[1].item()


@dataclass
class BaselineForecast:
    """Spectrum held in the shape of the last fit epoch; margin linear in log(epoch)."""

    basis: str
    shape: Tensor  # last fit spectrum
    margin_last: float
    slope: float
    intercept: float

    def predict(self, epochs) -> dict[str, Tensor]:
        """``lam``, ``margin`` and ``kl_lyapunov`` at ``epochs`` (finite and > 0: the margin is linear in log(epoch))."""
        e = _epochs(epochs)
        if (e <= 0).any():
            raise ValueError(f"the baseline is linear in log(epoch): epochs must be > 0, got {e[e <= 0][0].item()}")
        margin = self.slope * e.log() + self.intercept
        lam = self.shape * (margin / self.margin_last).unsqueeze(1)
        v = kl_lyapunov(_full(self.shape)) if (self.shape > 0).all() else torch.tensor(math.inf, dtype=torch.float64)
        return {"lam": lam, "margin": margin, "kl_lyapunov": v.expand(e.shape[0])}


def baseline_forecast(epochs, lam, *, basis: str = "auto") -> BaselineForecast:
    """The naive baseline fitted on a window (see the module docstring)."""
    e, spectra = _as_series(epochs, lam)
    kind = resolve_basis(spectra.shape[1] + 1, basis)
    margin = spectral_margin(spectra, kind)
    slope, intercept = log_epoch_slope(e, margin)
    last = margin[-1].item()
    if not last > 0:
        raise ValueError("the baseline scales the last spectrum by its margin, which must be positive")
    return BaselineForecast(kind, spectra[-1], last, slope, intercept)


def evaluate_forecast(epochs, lam, fit_until: float, *, basis: str = "auto", time_map: str = "linear",
                      rates: str = "shared") -> dict:
    """Fit both forecasts on epochs <= ``fit_until``, score them on the later (held-out) epochs.

    Errors, averaged over the held-out epochs: ``spectrum`` (relative, ||pred - lam|| / ||lam||),
    ``margin`` (absolute, on the spectral margin), ``kl_lyapunov`` (absolute; over epochs whose
    measured modes are all positive). ``time_map`` and ``rates`` as in :func:`fit_forecast`;
    the fitted exponent and rates are in ``power`` and ``rates`` (None for shared rates).
    """
    e, spectra = _as_series(epochs, lam)
    kind = resolve_basis(spectra.shape[1] + 1, basis)
    fit_until = _checks.real_number(fit_until, "fit_until")
    if math.isnan(fit_until):
        raise ValueError("fit_until must be a real number, got nan")
    fit, held = e <= fit_until, e > fit_until
    if not held.any():
        raise ValueError(f"no held-out epoch after fit_until={fit_until}")
    if not fit.any():
        raise ValueError(f"no epoch to fit at or before fit_until={fit_until} (the first epoch is {e[0].item():g})")
    model = fit_forecast(e[fit], spectra[fit], basis=kind, time_map=time_map, rates=rates)
    window = fit & (e >= model.epoch0) & (e > 0)
    base = baseline_forecast(e[window], spectra[window], basis=kind)
    truth_margin = spectral_margin(spectra[held], kind)
    positive = (spectra[held] > 0).all(-1)
    truth_v = kl_lyapunov(_full(spectra[held][positive])) if positive.any() else None
    out = {"time_scale": model.time_scale, "epoch0": model.epoch0, "fit_error": model.fit_error,
           "power": model.power, "rates": None if model.rates is None else model.rates.tolist(),
           "fit_epochs": e[fit].tolist(), "heldout_epochs": e[held].tolist()}
    for name, forecast in (("forecast", model), ("baseline", base)):
        pred = forecast.predict(e[held])
        out[name] = {
            "spectrum": _relative_errors(pred["lam"], spectra[held]).mean().item(),
            "margin": (pred["margin"] - truth_margin).abs().mean().item(),
            "kl_lyapunov": None if truth_v is None else (pred["kl_lyapunov"][positive] - truth_v).abs().mean().item(),
        }
    return out
