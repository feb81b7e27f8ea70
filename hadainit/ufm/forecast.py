"""Forecast a run's class-mean logit spectrum with the exact reduced dynamics (SPEC section 7).

A run records the non-constant modes ``lam(e)`` of its class-mean logit matrix
(:mod:`hadainit.metrics.logits`; the UFM's ``a * b``) at epochs ``e``. The forecast
starts the balanced reduced gradient flow (``a = b = sqrt(lam)``, n = 1, no weight
decay) at a measured ``lam(e0)`` and maps epochs to flow time by one fitted
number, ``t = s (e - e0)``: the time scale ``s`` is the only parameter, chosen to
fit the spectra of the epochs in the fit window. It then predicts, for later
epochs, the spectrum, the margin, V and the epoch a margin is reached.

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
from dataclasses import dataclass

import torch
from torch import Tensor

from ..bases import resolve_basis
from .lyapunov import kl_lyapunov
from .spectral import margins

__all__ = ["SpectrumForecast", "fit_forecast", "baseline_forecast", "evaluate_forecast", "log_epoch_slope",
           "spectral_margin"]


def _full(lam: Tensor) -> Tensor:
    """Modes 1..K-1 -> a K-vector with mode 0 (the constant, irrelevant) set to 0."""
    return torch.cat((lam.new_zeros(*lam.shape[:-1], 1), lam), dim=-1)


def spectral_margin(lam: Tensor, basis: str = "auto") -> Tensor:
    """The UFM margin of spectra ``lam`` (..., K-1): ``min_m (z(0) - z(m))`` for ``Q diag(0, lam) Q^T``."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    return margins(_full(lam), basis).min(-1).values


def _as_series(epochs, lam) -> tuple[Tensor, Tensor]:
    e = torch.as_tensor(epochs, dtype=torch.float64).flatten()
    spectra = torch.as_tensor(lam, dtype=torch.float64)
    if spectra.dim() != 2 or spectra.shape[0] != e.shape[0] or spectra.shape[1] < 2:
        raise ValueError(f"lam must be (epochs, K-1) with K-1 >= 2 and one row per epoch, got {tuple(spectra.shape)} "
                         f"for {e.shape[0]} epochs")
    if not (torch.isfinite(e).all() and torch.isfinite(spectra).all()):
        raise ValueError("epochs and lam must be finite")
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

    def _flow(self, times: Tensor):
        from .dynamics import spectral_flow

        a0 = _full(self.lam0).sqrt()
        return spectral_flow(a0, a0, times, basis=self.basis)

    def predict(self, epochs) -> dict[str, Tensor]:
        """``lam`` (E, K-1), ``margin`` (E,) and ``kl_lyapunov`` (E,) at ``epochs`` (all >= epoch0)."""
        e = torch.as_tensor(epochs, dtype=torch.float64).flatten()
        if (e < self.epoch0).any():
            raise ValueError(f"the forecast starts at epoch {self.epoch0}; got epochs before it")
        t = self.time_scale * (e - self.epoch0)
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
        """The epoch at which the forecast margin reaches ``gamma`` (``inf`` if not within the horizon)."""
        from .dynamics import spectral_flow

        now = float(spectral_margin(self.lam0, self.basis))
        if gamma <= now:
            return self.epoch0

        def event(t, a, b):
            return float(margins(a * b, self.basis).min()) - gamma

        event.terminal, event.direction = True, 1
        a0 = _full(self.lam0).sqrt()
        flow = spectral_flow(a0, a0, [self.time_scale * horizon_epochs], basis=self.basis, events=[event])
        hits = flow.t_events[0]
        return self.epoch0 + hits[0].item() / self.time_scale if hits.numel() else math.inf


def _relative_errors(pred: Tensor, true: Tensor) -> Tensor:
    return torch.linalg.vector_norm(pred - true, dim=-1) / torch.linalg.vector_norm(true, dim=-1)


def fit_forecast(epochs, lam, *, basis: str = "auto", start: int | None = None,
                 time_scale_range: tuple[float, float] = (1e-6, 1e9)) -> SpectrumForecast:
    """Fit the time scale on a measured series: ``epochs`` (E,) and ``lam`` (E, K-1), K = lam.shape[1] + 1.

    The flow starts at epoch index ``start`` (default: the first epoch whose modes are all
    positive; the balanced start needs ``a = b = sqrt(lam)``), and at least two epochs must
    follow it. The time scale minimizes the mean squared relative spectrum error over those
    epochs. One flow solve serves every candidate: the trajectory from ``lam(e0)`` is solved
    once up to the largest time the range allows, interpolated (cubic, in log(1 + t)) for a
    fine grid in log s and a bounded refinement; the fit error is then recomputed exactly.
    """
    from scipy.interpolate import CubicSpline
    from scipy.optimize import minimize_scalar

    from .dynamics import spectral_flow

    e, spectra = _as_series(epochs, lam)
    kind = resolve_basis(spectra.shape[1] + 1, basis)
    positive = (spectra > 0).all(-1).nonzero().flatten()
    if start is None:
        if positive.numel() == 0:
            raise ValueError("the forecast needs an epoch with every mode positive")
        start = int(positive[0])
    if not 0 <= start < e.shape[0] or not bool((spectra[start] > 0).all()):
        raise ValueError(f"the forecast starts at an epoch whose modes are all positive; epoch index {start} is not")
    if e.shape[0] - start < 3:
        raise ValueError("the forecast needs at least two epochs after its start to fit the time scale")
    lo, hi = (math.log(v) for v in time_scale_range)
    if not lo < hi:
        raise ValueError(f"time_scale_range must be an increasing pair of positive numbers, got {time_scale_range}")
    e0, lam0 = e[start].item(), spectra[start]
    later, target = e[start + 1 :] - e0, spectra[start + 1 :]
    a0 = _full(lam0).sqrt()
    tau_max = math.log1p(math.exp(hi) * later.max().item())
    taus = torch.linspace(0.0, tau_max, 1200, dtype=torch.float64)
    flow = spectral_flow(a0, a0, torch.expm1(taus[1:]), basis=kind)
    if not flow.success or flow.t.shape[0] != taus.shape[0] - 1:
        raise RuntimeError(f"the reduced flow failed: {flow.message}")
    path = CubicSpline(taus.numpy(), torch.cat((lam0.unsqueeze(0), flow.lam[:, 1:])).numpy(), axis=0)
    target_np, norms = target.numpy(), torch.linalg.vector_norm(target, dim=-1).numpy()

    def loss(log_s: float) -> float:
        pred = path(torch.log1p(math.exp(log_s) * later).numpy())
        return float((((pred - target_np) ** 2).sum(-1) / norms**2).mean())

    grid = torch.linspace(lo, hi, 400).tolist()
    values = [loss(g) for g in grid]
    best = min(range(len(grid)), key=values.__getitem__)
    step = grid[1] - grid[0]
    res = minimize_scalar(loss, bounds=(grid[best] - step, grid[best] + step), method="bounded", options={"xatol": 1e-9})
    log_s = res.x if res.fun <= values[best] else grid[best]
    fitted = SpectrumForecast(kind, e0, lam0, math.exp(log_s), math.nan)
    fitted.fit_error = _relative_errors(fitted.predict(e[start + 1 :])["lam"], target).mean().item()
    return fitted


def log_epoch_slope(epochs, values) -> tuple[float, float]:
    """Least-squares ``values ~ slope * log(epoch) + intercept`` over epochs > 0; returns (slope, intercept).

    The UFM's slowdown law ``t(gamma) ~ e^gamma / (2 gamma)`` makes the margin grow like
    ``log t + log(2 gamma)``: slope 1 per e-fold of time (``gamma / (gamma - 1)``, tending to 1).
    """
    e = torch.as_tensor(epochs, dtype=torch.float64).flatten()
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
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
        e = torch.as_tensor(epochs, dtype=torch.float64).flatten()
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


def evaluate_forecast(epochs, lam, fit_until: float, *, basis: str = "auto") -> dict:
    """Fit both forecasts on epochs <= ``fit_until``, score them on the later (held-out) epochs.

    Errors, averaged over the held-out epochs: ``spectrum`` (relative, ||pred - lam|| / ||lam||),
    ``margin`` (absolute, on the spectral margin), ``kl_lyapunov`` (absolute; over epochs whose
    measured modes are all positive).
    """
    e, spectra = _as_series(epochs, lam)
    kind = resolve_basis(spectra.shape[1] + 1, basis)
    fit, held = e <= fit_until, e > fit_until
    if not held.any():
        raise ValueError(f"no held-out epoch after fit_until={fit_until}")
    model = fit_forecast(e[fit], spectra[fit], basis=kind)
    window = fit & (e >= model.epoch0) & (e > 0)
    base = baseline_forecast(e[window], spectra[window], basis=kind)
    truth_margin = spectral_margin(spectra[held], kind)
    positive = (spectra[held] > 0).all(-1)
    truth_v = kl_lyapunov(_full(spectra[held][positive])) if positive.any() else None
    out = {"time_scale": model.time_scale, "epoch0": model.epoch0, "fit_error": model.fit_error,
           "fit_epochs": e[fit].tolist(), "heldout_epochs": e[held].tolist()}
    for name, forecast in (("forecast", model), ("baseline", base)):
        pred = forecast.predict(e[held])
        out[name] = {
            "spectrum": _relative_errors(pred["lam"], spectra[held]).mean().item(),
            "margin": (pred["margin"] - truth_margin).abs().mean().item(),
            "kl_lyapunov": None if truth_v is None else (pred["kl_lyapunov"][positive] - truth_v).abs().mean().item(),
        }
    return out
