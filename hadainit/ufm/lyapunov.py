"""The KL Lyapunov function and the natural distances to neural collapse (SPEC sections 4-5).

All functions take eigenvalues ``lam`` of shape (..., K) in the basis' mode
order and ignore mode 0 (the constant mode never affects the loss); they act
on ``lam_bar = lam[..., 1:]``.

**Why V is a Lyapunov function** (balanced gradient flow, n = 1, no weight
decay). With ``g_i = d log lam_i / dt = 2 (1 - mu_i) / K`` and
``lam_hat = lam_bar / sum(lam_bar)``::

    dV/dt = sum_i lam_hat_i g_i - mean_i g_i .

Three identities (sums over modes i >= 1, classes m != 0)::

    sum_i lam_i (1 - mu_i) = K sum_m p(m) gamma(m)
    sum_i (1 - mu_i)       = K (1 - p(0))
    sum_m gamma(m)         = sum(lam_bar)

turn this into::

    dV/dt = (2 / sum(lam_bar)) [ sum_m p(m) gamma(m) - (1 - p(0)) mean_m gamma(m) ],

and since ``p(m)`` is proportional to ``exp(-gamma(m))``, decreasing in
``gamma(m)``, Chebyshev's sum inequality makes the bracket <= 0, with equality
only when all margins are equal: at NC. :func:`lyapunov_derivative` evaluates
this closed form; the tests check it against the chain rule and the identities
to round-off.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .spectral import margins, softmax_spectrum

__all__ = ["kl_lyapunov", "kl_to_uniform", "etf_angle", "coefficient_of_variation", "lyapunov_derivative"]


def _lam_bar(lam: Tensor, *, positive: bool) -> Tensor:
    if not isinstance(lam, Tensor):
        lam = torch.as_tensor(lam, dtype=torch.float64)
    if lam.dim() == 0 or lam.shape[-1] < 3:
        raise ValueError(f"lam needs K >= 3 modes in its last dim (K-1 >= 2 non-constant modes), got {tuple(lam.shape)}")
    if not torch.isfinite(lam).all():
        raise ValueError("lam must be finite")
    bar = lam[..., 1:]
    if positive and not (bar > 0).all():
        raise ValueError(
            f"the KL Lyapunov function needs every non-constant eigenvalue lam_1..lam_(K-1) > 0; "
            f"smallest is {bar.min().item():.6g}"
        )
    return bar


def kl_lyapunov(lam: Tensor) -> Tensor:
    """``V = KL(u || lam_hat) = log(mean(lam_bar) / geometric_mean(lam_bar))`` >= 0, 0 exactly at NC.

    Accurate to round-off also near NC, where V ~ cv^2 / 2 is tiny.

    >>> float(kl_lyapunov(torch.tensor([0.0, 2.0, 2.0, 2.0])))
    0.0
    """
    return kl_to_uniform(_lam_bar(lam, positive=True))


def kl_to_uniform(values: Tensor) -> Tensor:
    """``KL(u || x / sum(x)) = log(mean(x) / geometric_mean(x))`` over the last dim, for x > 0.

    Computed as ``mean(y - log1p(y))`` with ``y = x / mean(x) - 1`` (``mean(y) = 0``): every term
    is >= 0, so nothing cancels near uniformity, and round-off in the mean enters only at second order.
    """
    mean = values.mean(-1, keepdim=True)
    return _x_minus_log1p((values - mean) / mean).mean(-1)


def _x_minus_log1p(x: Tensor) -> Tensor:
    """``x - log(1 + x)`` to round-off, also for tiny |x| (series ``sum (-1)^k x^k / k``, k >= 2)."""
    small = x.abs() < 0.05
    xs = torch.where(small, x, torch.zeros_like(x))
    series = torch.zeros_like(x)
    power = xs * xs
    for k in range(2, 16):  # 0.05^14 / 14 < 1e-16 of x^2/2
        series = series + (power / k if k % 2 == 0 else -power / k)
        power = power * xs
    return torch.where(small, series, x - torch.log1p(torch.where(small, torch.zeros_like(x), x)))


def etf_angle(lam: Tensor) -> Tensor:
    """``1 - <lam_bar, 1> / (||lam_bar|| sqrt(K-1))``: 1 minus the cosine to the NC direction.

    Computed as ``||u - 1/sqrt(K-1)||^2 / 2`` for the unit vector ``u``: no cancellation near NC.
    """
    bar = _lam_bar(lam, positive=False)
    norm = torch.linalg.vector_norm(bar, dim=-1, keepdim=True)
    if not (norm > 0).all():
        raise ValueError("etf_angle is undefined for lam_bar = 0")
    u = bar / norm
    return 0.5 * (u - 1.0 / math.sqrt(bar.shape[-1])).pow(2).sum(-1)


def coefficient_of_variation(lam: Tensor) -> Tensor:
    """``std(lam_bar) / mean(lam_bar)`` (population std)."""
    bar = _lam_bar(lam, positive=False)
    mean = bar.mean(-1)
    if not (mean != 0).all():
        raise ValueError("the coefficient of variation is undefined for mean(lam_bar) = 0")
    return bar.std(-1, correction=0) / mean.abs()


def lyapunov_derivative(lam: Tensor, basis: str = "auto") -> Tensor:
    """``dV/dt`` along balanced gradient flow (n = 1, no weight decay), by the closed form above. <= 0."""
    bar = _lam_bar(lam, positive=True)
    _, p, _ = softmax_spectrum(lam, basis)
    gamma = margins(lam, basis)
    rest = p[..., 1:]
    bracket = (rest * gamma).sum(-1) - rest.sum(-1) * gamma.mean(-1)
    return 2.0 * bracket / bar.sum(-1)
