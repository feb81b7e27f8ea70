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

**A Lyapunov function for every spectral start** (SPEC 5b; gradient flow,
n samples per class, no weight decay). V needs balance (``a_i^2 = n b_i^2``);
off balance it can rise (:mod:`hadainit.ufm.examples`). Write ``b' = sqrt(n) b``,
``c_i = 1 - mu_i >= 0`` and ``r = 1 / (sqrt(n) K)``; the flow is then symmetric,
``da_i/dt = r c_i b'_i`` and ``db'_i/dt = r c_i a_i``. Over the modes i >= 1::

    U(a, b) = log( mean_i (a_i^2 + b'_i^2) / 2 ) - mean_i log( ((a_i + b'_i) / 2)^2 ).

*Balanced* (``a = b'``): ``U = log mean(a^2) - mean log(a^2) = V(a^2) = V(lam)``,
V being scale-invariant and ``lam = a b = a^2 / sqrt(n)``.

*U >= 0*: with ``m_i = (a_i + b'_i)/2``, ``d_i = (a_i - b'_i)/2`` one has
``(a_i^2 + b'_i^2)/2 = m_i^2 + d_i^2``, so

    U = V(m^2) + log(1 + sum_i d_i^2 / sum_i m_i^2),

a sum of two non-negative terms; ``U = 0`` iff all ``m_i`` are equal and all
``d_i = 0``: balanced, at NC. (This split is also how U is computed.)

*dU/dt <= 0*: ``d/dt (a_i^2 + b'_i^2)/2 = 2 r c_i a_i b'_i`` and
``d/dt log m_i^2 = 2 (da_i + db'_i) / (a_i + b'_i) = 2 r c_i``, hence, with
``lam'_i = a_i b'_i`` and ``S = sum_i (a_i^2 + b'_i^2)/2``::

    dU/dt = 2 r [ sum_i lam'_i c_i / S - mean_i c_i ].

AM-GM gives ``S >= sum_i lam'_i``, and ``sum_i lam'_i c_i >= 0`` (a and b
stay positive, ``c_i >= 0``), so the bracket is at most
``sum_i lam'_i c_i / sum_i lam'_i - mean_i c_i``. As ``lam' = sqrt(n) lam``,
this is ``sum_i lam_hat_i c_i - mean_i c_i``: the bracket of dV/dt above (with
``g_i`` proportional to ``c_i``), <= 0 by the same three identities and
Chebyshev's sum inequality. So U never increases, from any positive start,
balanced or not, in both bases (both members of a fourier pair count as modes),
for any n; it is constant only balanced at NC. Along the flow
``a_i^2 - b'_i^2`` is conserved, so ``a_i - b'_i = (a_i^2 - b'_i^2) / (a_i + b'_i) -> 0``
as the modes grow: the balance is restored and U -> 0.

*With weight decay* ``(wd_W, wd_H)`` the flow gains ``-wd_W a_i`` and
``-wd_H b'_i``. Then ``d/dt (a_i^2 + b'_i^2)/2`` gains ``-(wd_W a_i^2 + wd_H b'_i^2)``
and ``d/dt log m_i^2`` gains ``-2 (wd_W a_i + wd_H b'_i) / (a_i + b'_i)``. For
*equal* decays ``wd_W = wd_H = w`` these are ``-2 w (a_i^2 + b'_i^2)/2`` and
``-2 w``: they cancel in dU/dt, which keeps the closed form above, so the proof
holds as it stands (a and b stay positive: ``da_i/dt >= -wd_W a_i``, so
``a_i(t) >= a_i(0) exp(-wd_W t)``, and likewise for b).
For unequal decays the cancellation fails and U can rise; nothing is claimed
there, nor for gradient descent: the validation run (``hadainit ufm``) measures
both. :func:`unbalanced_lyapunov_derivative` evaluates dU/dt for any decays.

**Numerics.** V, U, ``etf_angle`` and ``coefficient_of_variation`` are
scale-invariant, and are computed that way: the values are first divided by
the power of two just above their largest magnitude (exact, so nothing is
lost near NC, where they are second-order small), and a value too small to
survive that division (subnormal after it) enters through its logarithm,
taken before the division. So they are exact at any finite scale
(``kl_lyapunov([0, 1e-300, 1e300, 1])`` is about 689, not inf). They are
computed and returned in float64, whatever the input's dtype (integer
values and Python sequences are accepted alike).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _checks
from ..bases import check_spectrum, resolve_basis
from .spectral import margins, softmax_spectrum

__all__ = [
    "kl_lyapunov",
    "kl_to_uniform",
    "etf_angle",
    "coefficient_of_variation",
    "lyapunov_derivative",
    "unbalanced_lyapunov",
    "unbalanced_lyapunov_derivative",
]


def _modes(values, name: str) -> Tensor:
    """``values`` as float64 with K >= 3 finite entries in the last dim."""
    t = _checks.real_tensor(values, name, dtype=torch.float64)
    if t.dim() == 0 or t.shape[-1] < 3:
        raise ValueError(
            f"{name} needs K >= 3 modes in its last dim (K-1 >= 2 non-constant modes), got {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite")
    return t


def _lam_bar(lam, *, positive: bool) -> Tensor:
    bar = _modes(lam, "lam")[..., 1:]
    if positive and not (bar > 0).all():
        raise ValueError(
            f"the KL Lyapunov function needs every non-constant eigenvalue lam_1..lam_(K-1) > 0; "
            f"smallest is {bar.min().item():.6g}"
        )
    return bar


def _scaled(x: Tensor, top: Tensor) -> Tensor:
    """``x / 2^e`` with ``top = f 2^e``, ``1/2 <= f < 1``: exact (a power of two), and ``|x| < 1`` if ``|x| <= top``.

    Exactness matters near NC, where V and the ETF angle are second-order small: dividing by
    ``top`` itself would add a rounding error of relative size eps to every entry.
    """
    _, e = torch.frexp(torch.where(top > 0, top, torch.ones_like(top)))
    half = torch.div(e, 2, rounding_mode="floor")  # two factors: 2^-e alone overflows for subnormal top
    return x * torch.exp2(-half.to(x.dtype)) * torch.exp2((half - e).to(x.dtype))


def _by_max_magnitude(x: Tensor) -> Tensor:
    """``x`` scaled by a power of two to ``max|x| < 1`` over the last dim (no overflow/underflow of squares)."""
    return _scaled(x, x.abs().amax(-1, keepdim=True))


def kl_lyapunov(lam) -> Tensor:
    """``V = KL(u || lam_hat) = log(mean(lam_bar) / geometric_mean(lam_bar))`` >= 0, 0 exactly at NC.

    Accurate to round-off also near NC, where V ~ cv^2 / 2 is tiny, and at any
    finite scale. Returns float64, shape ``lam.shape[:-1]``.

    >>> float(kl_lyapunov(torch.tensor([0.0, 2.0, 2.0, 2.0])))
    0.0
    """
    return kl_to_uniform(_lam_bar(lam, positive=True))


def kl_to_uniform(values: Tensor) -> Tensor:
    """``KL(u || x / sum(x)) = log(mean(x) / geometric_mean(x))`` over the last dim, for x >= 0 (inf if some x = 0).

    Computed as ``mean(y - log1p(y))`` with ``y = x / mean(x) - 1`` (``mean(y) = 0``): every term
    is >= 0, so nothing cancels near uniformity, and round-off in the mean enters only at second order.
    ``x`` is divided by its maximum first; entries that underflow in that division enter through
    ``log(x) - log(max x)``. float64 throughout.
    """
    x = _checks.real_tensor(values, "values", dtype=torch.float64)
    if x.dim() == 0 or not (torch.isfinite(x).all() and (x >= 0).all()):
        raise ValueError("kl_to_uniform needs finite values >= 0 along a last dim")
    top = x.amax(-1, keepdim=True)
    return _kl_scaled(_scaled(x, top), torch.log(x) - torch.log(top))


def _kl_scaled(r: Tensor, log_r: Tensor) -> Tensor:
    """KL to uniform of ``x`` given as ``r = x / s`` (s ~ max(x); r may underflow) and ``log_r = log x - log max(x)``."""
    mean = r.mean(-1, keepdim=True)  # within [max(r) / K, max(r)], max(r) in [1/2, 1): no overflow, no underflow
    y = (r - mean) / mean  # r - mean is exact near uniformity
    # log(1 + y) = log(r / mean): log1p(y) while 1 + y >= 1/2 (then y carries all digits of r / mean);
    # below, log(r) - log(mean), with log(r) from the log domain where r lost its digits (underflow)
    normal = r >= torch.finfo(r.dtype).tiny
    log_top = torch.log(r.amax(-1, keepdim=True))
    log_q = torch.where(normal, torch.log(torch.where(normal, r, 1.0)), log_r + log_top) - torch.log(mean)
    log1p_y = torch.where(y < -0.5, log_q, torch.log1p(y.clamp_min(-0.5)))
    return _x_minus_log1p(y, log1p_y).mean(-1)


def _x_minus_log1p(x: Tensor, log1p_x: Tensor) -> Tensor:
    """``x - log(1 + x)`` to round-off, also for tiny |x| (series ``sum (-1)^k x^k / k``, k >= 2)."""
    small = x.abs() < 0.05
    xs = torch.where(small, x, torch.zeros_like(x))
    series = torch.zeros_like(x)
    power = xs * xs
    for k in range(2, 16):  # 0.05^14 / 14 < 1e-16 of x^2/2
        series = series + (power / k if k % 2 == 0 else -power / k)
        power = power * xs
    return torch.where(small, series, x - log1p_x)


def etf_angle(lam) -> Tensor:
    """``1 - <lam_bar, 1> / (||lam_bar|| sqrt(K-1))``: 1 minus the cosine to the NC direction.

    Computed as ``||u - 1/sqrt(K-1)||^2 / 2`` for the unit vector ``u``: no cancellation near NC;
    scaled by ``max|lam_bar|`` first, so exact at any finite scale. float64.
    """
    bar = _lam_bar(lam, positive=False)
    if not (bar.abs().amax(-1) > 0).all():
        raise ValueError("etf_angle is undefined for lam_bar = 0")
    scaled = _by_max_magnitude(bar)
    u = scaled / torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)
    return 0.5 * (u - 1.0 / math.sqrt(bar.shape[-1])).pow(2).sum(-1)


def coefficient_of_variation(lam) -> Tensor:
    """``std(lam_bar) / |mean(lam_bar)|`` (population std), scaled by ``max|lam_bar|`` first. float64."""
    scaled = _by_max_magnitude(_lam_bar(lam, positive=False))
    mean = scaled.mean(-1)
    if not (mean != 0).all():
        raise ValueError("the coefficient of variation is undefined for mean(lam_bar) = 0")
    return scaled.std(-1, correction=0) / mean.abs()


def lyapunov_derivative(lam, basis: str = "auto") -> Tensor:
    """``dV/dt`` along balanced gradient flow (n = 1, no weight decay), by the closed form above. <= 0. float64."""
    lam = _modes(lam, "lam")
    bar = _lam_bar(lam, positive=True)
    _, p, _ = softmax_spectrum(lam, basis)
    top = bar.amax(-1, keepdim=True)
    gamma = margins(lam / top, basis)  # margins are linear in lam: scaled, they cannot overflow
    rest = p[..., 1:]
    bracket = (rest * gamma).sum(-1) - rest.sum(-1) * gamma.mean(-1)
    return 2.0 * bracket / (bar / top).sum(-1)


# --------------------------------------------------------------------------- U (SPEC 5b)


def _positive_pair(a, b, samples_per_class: int) -> tuple[Tensor, Tensor, int]:
    a = _modes(a, "a")
    b = _modes(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    n = _checks.positive_int(samples_per_class, "samples_per_class")
    for name, x in (("a", a), ("b", b)):
        if not (x[..., 1:] > 0).all():
            raise ValueError(
                f"the unbalanced Lyapunov function needs every non-constant mode {name}_1..{name}_(K-1) > 0; "
                f"smallest is {x[..., 1:].min().item():.6g}"
            )
    return a, b, n


def _balanced_parts(a: Tensor, b: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``(a_i, b'_i)`` over modes i >= 1, scaled by a common power of two to below 1 (b' below sqrt(n))."""
    a, b = a[..., 1:], b[..., 1:]
    top = torch.maximum(a.amax(-1, keepdim=True), b.amax(-1, keepdim=True))
    return _scaled(a, top), math.sqrt(n) * _scaled(b, top)  # exact scaling: U is second-order small near NC


def unbalanced_lyapunov(a, b, *, samples_per_class: int = 1) -> Tensor:
    """``U(a, b)`` of SPEC 5b: a Lyapunov function of gradient flow from *any* positive spectral start.

    ``U = log(mean_i (a_i^2 + b'_i^2)/2) - mean_i log(((a_i + b'_i)/2)^2)`` over the modes
    i >= 1, ``b' = sqrt(n) b``. ``U >= 0``; on balanced starts (``a_i^2 = n b_i^2``) it equals
    :func:`kl_lyapunov` of ``lam = a * b``; it never increases along the gradient flow without
    weight decay (proof in the module docs) and tends to 0 as the flow restores the balance.

    Args:
        a, b: singular values of W and H per mode, shape (..., K), K >= 3; modes 1..K-1 must be
            positive (mode 0, the constant mode, is ignored).
        samples_per_class: n.

    Returns:
        float64 tensor of shape ``a.shape[:-1]``; exact at any finite scale (U is scale-invariant).

    >>> float(unbalanced_lyapunov([0.0, 2.0, 2.0, 2.0], [0.0, 2.0, 2.0, 2.0]))
    0.0
    """
    a, b, n = _positive_pair(a, b, samples_per_class)
    a_s, bp_s = _balanced_parts(a, b, n)
    m, d = a_s / 2 + bp_s / 2, a_s / 2 - bp_s / 2
    m_top = m.amax(-1, keepdim=True)
    # log m_i from the unscaled values, for modes too small to survive the scaling
    log_m = torch.logaddexp(torch.log(a[..., 1:]), torch.log(b[..., 1:]) + 0.5 * math.log(n)) - math.log(2.0)
    log_r = 2.0 * (log_m - log_m.amax(-1, keepdim=True))
    m, d = _scaled(m, m_top), _scaled(d, m_top)
    r = m.pow(2)
    gap = d.pow(2).sum(-1) / r.sum(-1)
    return _kl_scaled(r, log_r) + torch.log1p(gap)


def unbalanced_lyapunov_derivative(
    a, b, basis: str = "auto", *, samples_per_class: int = 1, weight_decay=(0.0, 0.0)
) -> Tensor:
    """``dU/dt`` along the gradient flow, in closed form (SPEC 5b). <= 0 without weight decay or with equal decays.

    With ``c_i = 1 - mu_i`` of ``lam = a * b``, ``lam'_i = a_i b'_i``, ``S = sum_i (a_i^2 + b'_i^2)/2``
    (sums and means over the modes i >= 1) and ``r = 1 / (sqrt(n) K)``::

        dU/dt = (2 r sum_i lam'_i c_i - sum_i (wd_W a_i^2 + wd_H b'_i^2)) / S
                - 2 r mean_i c_i + 2 mean_i (wd_W a_i + wd_H b'_i) / (a_i + b'_i),

    which for ``wd_W = wd_H`` is ``2 r [sum_i lam'_i c_i / S - mean_i c_i]``. Fourier spectra
    must be paired (as for the flow). float64, shape ``a.shape[:-1]``.
    """
    a, b, n = _positive_pair(a, b, samples_per_class)
    wd_w, wd_h = _checks.weight_decay(weight_decay)
    k = a.shape[-1]
    kind = resolve_basis(k, basis)
    a = check_spectrum(a, k, kind, "a")
    b = check_spectrum(b, k, kind, "b")
    lam = a * b
    if not torch.isfinite(lam).all():
        raise ValueError("lam = a * b overflows float64")
    _, _, c = softmax_spectrum(lam, kind)
    c = c[..., 1:]
    a_s, bp_s = _balanced_parts(a, b, n)  # common scale: S, lam' and the decay sums scale alike
    rate = 2.0 / (math.sqrt(n) * k)
    s_half = ((a_s.pow(2) + bp_s.pow(2)) / 2).sum(-1)
    decay = (wd_w * a_s.pow(2) + wd_h * bp_s.pow(2)).sum(-1) / s_half
    decay_log = 2.0 * ((wd_w * a_s + wd_h * bp_s) / (a_s + bp_s)).mean(-1)
    return rate * ((a_s * bp_s * c).sum(-1) / s_half - c.mean(-1)) - decay + decay_log
