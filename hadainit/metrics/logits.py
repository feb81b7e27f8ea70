"""The theory measured on a real network: the class-mean logit spectrum (SPEC section 7).

For features ``h``, classifier ``W`` and bias ``c``, the class-mean logit matrix is
``Z = W Mu + c 1^T`` (K x K; column k holds the mean logits of the samples of class k).
With ``P = I - 11^T/K`` and the softmax basis ``Q`` (walsh or fourier, class k on row k),
``Z_c = P Z P`` drops what softmax ignores (shifts of a sample's logits), the bias and
the constant mode, and ``F = Q^T Z_c Q`` is ``Z_c`` in the basis where the spectral UFM
is exactly diagonal:

* ``logit_leakage = ||offdiag(F)||_F / ||Z_c||_F`` (SPEC 7): 0 for the spectral UFM at all times
  and at neural collapse for any init (``Z_c -> c P``); how far a real network is from the
  regime where the exact theory holds.
* ``lam = diag(F)`` without mode 0 (the UFM's ``a * b``); in the fourier basis each
  (cos, sin) pair is averaged, as the exact theory needs them equal.
  ``logit_residual = ||F - diag(0, lam)||_F / ||Z_c||_F`` also counts the difference within
  each pair (for walsh it equals ``logit_leakage``): the whole distance from the exactly
  tractable form, and invariant under every relabelling of the classes that the basis
  allows (XOR shifts for walsh; cyclic shifts for fourier, which rotate each pair; the
  leakage alone is invariant only under those that map basis vectors to signed basis vectors).
  The singular values of ``Z_c`` are in ``zc_singular_values``.
* ``kl_lyapunov``: KL(u || sigma / sum sigma) of the top K-1 singular values of ``Z_c``
  (SPEC 6; ``inf`` when rank-deficient). In the spectral UFM both equal V(lam).
  The name is historical: ``hadainit.ufm.kl_lyapunov`` of the measured modes ``(0, lam)`` is
  ``kl_lyapunov_modes``; the two differ on a real network (e.g. 0.767 vs 0.097 for ``Z = 3 I + N(0, 1)``
  at K = 8) and agree in the spectral UFM, where the singular values of ``Z_c`` are the modes.
* margins: per sample ``z_y - max_{j != y} z_j`` (mean, min, fraction > 0); per class from
  ``Z`` (``Z[k, k] - max_{j != k} Z[j, k]``: mean, min); ``logit_norm`` the mean over samples
  of ``||z - mean(z) 1||``, the part of the logits softmax sees. ``spectral_margin`` is the
  UFM margin of the spectrum, ``min_m (z(0) - z(m))`` for ``Q diag(0, lam) Q^T``: the margin of
  the diagonal part of ``Z_c``, what the reduced dynamics and their slowdown law speak of.

* ``class_margin_normalized = class_margin_min / ||Z_c||_*`` (nuclear norm): the generalized collapse
  target of docs/theory.md §8. In the spectral UFM ``||Z_c||_* = sum(lam)`` and the class margins are
  the ``m_g``, so this is ``min_g m_g / sum(lam)``, which goes to ``t*(S)`` of the init's mode set (for
  the ETF, all modes, ``t* = 1/(K-1)``). Given ``t_star``
  (:meth:`LogitSpectrum.set_t_star`, e.g. from ``hadainit.modes.max_margin``), ``margin_to_t_star`` is
  the ratio, which rises toward 1.

On a real network V is a diagnostic, not a Lyapunov function: it can rise.

Memory. The default state holds the K x K sums of logits. For large heads (K = 1000 on d = 512,
K = 50,257 on d = 768) give ``feature_dim``: the state is then the K x d sums of the features, the
classifier is given by :meth:`LogitSpectrum.set_classifier`, and ``Z_c = (P W)(P Mu^T)^T`` (rank <= d) is
never formed: ``F``'s diagonal from one transform (fwht or FFT) of each factor, ``||Z_c||_F`` and the
singular values from d x d products, the class margins over chunks of columns. Memory O(K d). Its
``logit_leakage``/``logit_residual`` come from ``||F||_F^2 - ||diag F||^2``: their absolute accuracy is
about ``sqrt(eps) ~ 1e-8`` (relative to ``||Z_c||_F``), not round-off as in the K x K form.
The streaming :class:`LogitSpectrum` needs only the logits and labels (the
classifier's own outputs, so every value belongs to the weights that produced
them); :func:`logit_spectrum` computes the same from features and ``(W, c)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from .. import _checks
from ._torchmetrics import drop_cached
from .base import as_tensors, check_state_size
from .functional import check_batch, check_classifier
from ..bases import mode_pairs, resolve_basis, softmax_basis
from ..hadamard import fwht
from .formulas import unit_scale
from .._threads import lapack
from .pairwise import chunk_rows, threads
from ..ufm.lyapunov import etf_angle, kl_to_uniform
from ..ufm.forecast import spectral_margin

__all__ = ["LOGIT_KEYS", "LogitSpectrum", "OPTIONAL_LOGIT_KEYS", "SPECTRUM_KEYS", "factored_spectrum", "logit_spectrum",
           "mode_coefficients", "spectrum_of_class_mean_logits"]

#: The scalar keys of :class:`LogitSpectrum` (``lam``, the full spectrum, comes besides them).
LOGIT_KEYS = (
    "logit_leakage", "logit_residual", "lam_min", "lam_mean", "lam_max", "modes_nonpositive", "etf_angle", "kl_lyapunov_modes",
    "kl_lyapunov", "spectral_margin", "margin_mean", "margin_min", "margin_positive", "class_margin_mean", "class_margin_min",
    "class_margin_normalized", "logit_norm",
)
#: Keys present only when their input is known: ``margin_to_t_star`` after :meth:`LogitSpectrum.set_t_star`.
OPTIONAL_LOGIT_KEYS = ("margin_to_t_star",)
#: The list-valued outputs, from :meth:`LogitSpectrum.spectra` (not in ``compute()``).
SPECTRUM_KEYS = ("lam", "zc_singular_values")
#: The panels of :meth:`LogitSpectrum.plot`: keys of one scale together.
LOGIT_GROUPS = {
    "distance from the diagonal form": ("logit_leakage", "logit_residual"),
    "modes": ("lam_min", "lam_mean", "lam_max", "spectral_margin"),
    "KL values": ("kl_lyapunov", "kl_lyapunov_modes", "etf_angle"),
    "margins": ("margin_mean", "margin_min", "class_margin_mean", "class_margin_min", "logit_norm"),
    "fractions": ("margin_positive", "class_margin_normalized", "margin_to_t_star", "modes_nonpositive"),
}
DENSE_LIMIT = 2048  # factored state: K x K matrices are formed up to this K (the same values, exact off-diagonals)


def _check_logits(logits: Tensor, labels: Tensor, num_classes: int) -> None:
    if not isinstance(logits, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"logits and labels must be tensors, got {type(logits).__name__}, {type(labels).__name__}")
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must be (batch, {num_classes}), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be 1-D with one label per row ({logits.shape[0]}), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.numel():
        low, high = labels.aminmax()
        if low < 0 or high >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{low.item()}, {high.item()}]")


def _sample_margins(z: Tensor, labels: Tensor) -> Tensor:
    true = z.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = z.scatter(1, labels.unsqueeze(1), -math.inf)
    return true - others.max(1).values


def spectrum_of_class_mean_logits(z: Tensor, basis: str = "auto") -> dict:
    """The spectral keys of a K x K class-mean logit matrix ``Z`` (column k: mean logits of class k).

    Returns the scale-free keys of the module docstring (not the per-sample ones) and
    ``lam`` (a list of the K - 1 non-constant modes, pairs averaged for fourier).
    """
    k = z.shape[0]
    if z.dim() != 2 or z.shape != (k, k) or k < 3:
        raise ValueError(f"the class-mean logit matrix must be K x K with K >= 3, got shape {tuple(z.shape)}")
    z = z.to(torch.float64)
    if not torch.isfinite(z).all():
        raise ValueError("the class-mean logits contain NaN or Inf")
    kind = resolve_basis(k, basis)
    q = softmax_basis(k, kind, device=z.device)
    zc = z - z.mean(0, keepdim=True) - z.mean(1, keepdim=True) + z.mean()  # P Z P
    top = zc.abs().max()
    if not top > 0:
        raise ValueError("the centred class-mean logits are zero (all classes have the same mean logits)")
    zc = zc / top  # every key below is scale-free (the margins are taken from z itself)
    f = q.T @ zc @ q
    diag = torch.diagonal(f).clone()
    pairs = mode_pairs(k, kind).to(z.device)
    if pairs.numel():  # the exact theory needs equal values within each (cos, sin) pair
        mean = (diag[pairs[:, 0]] + diag[pairs[:, 1]]) / 2
        diag[pairs[:, 0]], diag[pairs[:, 1]] = mean, mean
    norm = torch.linalg.matrix_norm(zc)
    leakage = torch.linalg.matrix_norm(f - torch.diag(torch.diagonal(f))) / norm
    residual = torch.linalg.matrix_norm(f - torch.diag(diag)) / norm
    unit = diag[1:]  # lam / top: scale-free keys come from here, nothing over- or underflows
    lam = unit * top
    with lapack(k):
        sigma = torch.linalg.svdvals(zc)[: k - 1]
    full_rank = bool(sigma[-1] > sigma[0] * k * torch.finfo(sigma.dtype).eps)
    nonpositive = int((unit <= 0).sum())
    class_margin = torch.diagonal(z) - (z - torch.diag(torch.full((k,), math.inf, dtype=z.dtype, device=z.device))).max(0).values
    nuclear = sigma.sum() * top
    return {
        "logit_leakage": leakage.item(),
        "logit_residual": residual.item(),
        "lam_min": lam.min().item(),
        "lam_mean": lam.mean().item(),
        "lam_max": lam.max().item(),
        "modes_nonpositive": float(nonpositive),
        "etf_angle": etf_angle(torch.cat((unit.new_zeros(1), unit))).item(),  # raises when every mode is 0
        "kl_lyapunov_modes": kl_to_uniform(unit).item() if nonpositive == 0 else math.inf,
        "kl_lyapunov": kl_to_uniform(sigma).item() if full_rank else math.inf,
        "spectral_margin": spectral_margin(lam, kind).item(),
        "class_margin_mean": class_margin.mean().item(),
        "class_margin_min": class_margin.min().item(),
        "class_margin_normalized": (class_margin.min() / nuclear).item(),
        "lam": lam.tolist(),
        "zc_singular_values": (sigma * top).tolist(),
    }


def mode_coefficients(a: Tensor, kind: str) -> Tensor:
    """``Q^T a`` for a K x d matrix ``a`` and the softmax basis ``Q`` of ``kind`` (walsh or fourier), without
    forming ``Q``: one fwht (walsh) or real FFT (fourier) along the class axis, O(K d log K)."""
    k = a.shape[0]
    if kind == "walsh":
        return fwht(a, dim=0) / math.sqrt(k)
    spectrum = torch.fft.rfft(a, dim=0)  # X_f = sum_j a_j exp(-2 pi i f j / K)
    out = torch.empty_like(a)
    out[0] = spectrum[0].real / math.sqrt(k)
    pairs = (k - 1) // 2
    if pairs:
        out[1 : 2 * pairs + 1 : 2] = math.sqrt(2.0 / k) * spectrum[1 : pairs + 1].real  # cos modes
        out[2 : 2 * pairs + 1 : 2] = -math.sqrt(2.0 / k) * spectrum[1 : pairs + 1].imag  # sin modes
    if k % 2 == 0:
        out[k - 1] = spectrum[k // 2].real / math.sqrt(k)
    return out


def _class_margins(weight: Tensor, means: Tensor, bias: Tensor | None) -> Tensor:
    """``Z[k, k] - max_{j != k} Z[j, k]`` for ``Z = W Mu^T + c 1^T``, over chunks of columns (no K x K)."""
    k, d = weight.shape
    out = torch.empty(k, dtype=weight.dtype, device=weight.device)
    chunk = chunk_rows(k, d)
    with threads(1):
        for start in range(0, k, chunk):
            cols = slice(start, min(start + chunk, k))
            with threads(torch.get_num_threads()):
                z = weight @ means[cols].T  # K x chunk
            if bias is not None:
                z.add_(bias.unsqueeze(1))
            own = z.diagonal(offset=-start).clone()
            z.diagonal(offset=-start).fill_(-math.inf)
            out[cols] = own - z.max(0).values
    return out


def factored_spectrum(weight: Tensor, means: Tensor, bias: Tensor | None = None, basis: str = "auto") -> dict:
    """The keys of :func:`spectrum_of_class_mean_logits` for ``Z = W Mu^T + c 1^T`` given by its factors:
    ``weight`` and ``means`` (K x d, row k the mean feature of class k), ``bias`` (K,); memory O(K d).

    Up to :data:`DENSE_LIMIT` classes ``Z`` is formed (exact off-diagonal norms); beyond, the module
    docstring's factored form. ``zc_singular_values`` then holds the min(d, K - 1) leading ones.
    """
    k, d = weight.shape
    w, mu = weight.to(torch.float64), means.to(device=weight.device, dtype=torch.float64)
    c = None if bias is None else bias.to(w)
    if k <= DENSE_LIMIT:
        z = (w @ mu.T) if c is None else (w @ mu.T + c.unsqueeze(1))
        return spectrum_of_class_mean_logits(z, basis)
    kind = resolve_basis(k, basis)
    a, b = w - w.mean(0), mu - mu.mean(0)  # Z_c = P W Mu^T P = a b^T
    sa, sb = unit_scale(a), unit_scale(b)
    a, b = a * sa, b * sb
    norm2 = ((a.T @ a) * (b.T @ b)).sum()
    if not norm2 > 0:
        raise ValueError("the centred class-mean logits are zero (all classes have the same mean logits)")
    fa, fb = mode_coefficients(a, kind), mode_coefficients(b, kind)
    diag = (fa * fb).sum(1)  # diag(Q^T Z_c Q), scaled by sa sb
    paired = diag.clone()
    pairs = mode_pairs(k, kind).to(diag.device)
    if pairs.numel():
        mean = (diag[pairs[:, 0]] + diag[pairs[:, 1]]) / 2
        paired[pairs[:, 0]], paired[pairs[:, 1]] = mean, mean
    norm = norm2.sqrt()
    leakage = (norm2 - diag.pow(2).sum()).clamp_min(0).sqrt() / norm
    residual = (norm2 - diag.pow(2).sum() + (diag - paired).pow(2).sum()).clamp_min(0).sqrt() / norm
    unit = paired[1:] / paired[1:].abs().max()
    lam = paired[1:] / (sa * sb)
    with lapack(d):
        ra, rb = torch.linalg.qr(a, mode="r")[1], torch.linalg.qr(b, mode="r")[1]
        sigma = torch.linalg.svdvals(ra @ rb.T)[: min(d, k - 1)]
    full_rank = k - 1 <= d and bool(sigma[-1] > sigma[0] * k * torch.finfo(sigma.dtype).eps)
    nonpositive = int((unit <= 0).sum())
    class_margin = _class_margins(w, mu, c)
    nuclear = sigma.sum() / (sa * sb)
    return {
        "logit_leakage": leakage.item(),
        "logit_residual": residual.item(),
        "lam_min": lam.min().item(),
        "lam_mean": lam.mean().item(),
        "lam_max": lam.max().item(),
        "modes_nonpositive": float(nonpositive),
        "etf_angle": etf_angle(torch.cat((unit.new_zeros(1), unit))).item(),
        "kl_lyapunov_modes": kl_to_uniform(unit).item() if nonpositive == 0 else math.inf,
        "kl_lyapunov": kl_to_uniform(sigma).item() if full_rank else math.inf,
        "spectral_margin": spectral_margin(lam, kind).item(),
        "class_margin_mean": class_margin.mean().item(),
        "class_margin_min": class_margin.min().item(),
        "class_margin_normalized": (class_margin.min() / nuclear).item(),
        "lam": lam.tolist(),
        "zc_singular_values": (sigma / (sa * sb)).tolist(),
    }


class LogitSpectrum(Metric):
    """Streaming class-mean logit spectrum, margins and logit norm (module docstring), DDP-exact.

    States: per-class counts and logit sums (K x K), the sums of margins, centred logit norms and
    positive margins, and the smallest margin (``dist_reduce_fx="min"``); all float64.

    Args:
        num_classes: K >= 3 (K - 1 >= 2 non-constant modes).
        basis: ``"auto"`` (walsh for powers of two, else fourier), ``"walsh"`` or ``"fourier"``.
        feature_dim: d, for the factored state (module docstring, "Memory"): ``update`` then also takes the
            features, and :meth:`set_classifier` gives ``(W, c)`` before ``compute()``. Memory O(K d).
        t_star: the max-margin value t*(S) of the init's mode set, when known (:meth:`set_t_star`).

    >>> metric = LogitSpectrum(4)
    >>> metric.update(torch.eye(4) * 3.0, torch.arange(4))
    >>> metric.spectra()["lam"]  # the class-mean logits 3 I: a simplex ETF, every mode 3
    tensor([3., 3., 3.], dtype=torch.float64)
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_classes: int, *, basis: str = "auto", feature_dim: int | None = None,
                 t_star: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = _checks.positive_int(num_classes, "num_classes", minimum=3)
        self.feature_dim = None if feature_dim is None else _checks.positive_int(feature_dim, "feature_dim")
        self._weight: Tensor | None = None
        self._bias: Tensor | None = None
        self.t_star: float | None = None
        self.set_t_star(t_star)
        self.basis = resolve_basis(num_classes, basis)
        if self.basis == "hadamard":
            raise ValueError("the logit spectrum needs a softmax-diagonalizing basis ('walsh' or 'fourier')")
        k, f64 = num_classes, torch.float64
        self.add_state("counts", torch.zeros(k, dtype=f64), dist_reduce_fx="sum")
        if self.feature_dim is None:
            check_state_size("LogitSpectrum", 8 * k * (k + 1), f"num_classes={k}: a K x K float64 sum of logits; "
                             "give feature_dim for the O(K d) factored state")
            self.add_state("logit_sums", torch.zeros(k, k, dtype=f64), dist_reduce_fx="sum")
        else:
            d = self.feature_dim
            check_state_size("LogitSpectrum", 8 * k * (d + 1), f"num_classes={k} x feature_dim={d} float64 sums")
            self.add_state("feature_sums", torch.zeros(k, d, dtype=f64), dist_reduce_fx="sum")
        self.add_state("margin_sum", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("margin_positive", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("norm_sum", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("margin_min", torch.full((), math.inf, dtype=f64), dist_reduce_fx="min")

    def set_t_star(self, t_star: float | None) -> None:
        """The max-margin value t*(S) > 0 of the init's mode set (docs/theory.md §8; e.g. from
        ``hadainit.modes.max_margin``), for ``margin_to_t_star``; None drops it."""
        if t_star is None:
            self.t_star = None
            return
        value = _checks.positive_float(t_star, "t_star")
        self.t_star = value

    def set_classifier(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """The classifier ``(W, c)`` (K x d, K) whose logits were fed: needed by the factored state."""
        if self.feature_dim is None:
            raise ValueError("set_classifier is for the factored state: construct LogitSpectrum(..., feature_dim=d)")
        weight, bias = check_classifier(weight, bias, self.num_classes, self.feature_dim)
        if not torch.isfinite(weight).all():
            raise ValueError("the classifier weight contains NaN or Inf")
        self._weight, self._bias = weight, bias
        drop_cached(self)

    def update(self, logits: Tensor, labels: Tensor, features: Tensor | None = None) -> None:  # type: ignore[override]
        """Add a batch of logits (B, K) and integer labels (B,) in [0, K); with the factored state also the
        classifier's input features (B, d) that produced the logits."""
        _check_logits(logits, labels, self.num_classes)
        if self.feature_dim is not None:
            check_batch(features, labels, self.num_classes, self.feature_dim, values=False) if isinstance(
                features, Tensor) else _no_features()
        elif features is not None:
            raise ValueError("features are for the factored state: construct LogitSpectrum(..., feature_dim=d)")
        z = logits.detach().to(device=self.counts.device, dtype=torch.float64)
        labels = labels.to(device=z.device, dtype=torch.int64)
        if z.shape[0] == 0:
            return
        self.counts += torch.bincount(labels, minlength=self.num_classes)
        if self.feature_dim is None:
            self.logit_sums.index_add_(0, labels, z)
        else:
            self.feature_sums.index_add_(0, labels, features.detach().to(z))
        margin = _sample_margins(z, labels)
        self.margin_sum += margin.sum()
        self.margin_positive += (margin > 0).sum()
        self.margin_min = torch.minimum(self.margin_min, margin.min())
        self.norm_sum += torch.linalg.vector_norm(z - z.mean(1, keepdim=True), dim=1).sum()

    def class_mean_logits(self) -> Tensor:
        """``Z`` (K x K, column k = mean logits of class k); raises if a class has no sample."""
        if not (self.counts > 0).all():
            missing = (self.counts == 0).nonzero().flatten().tolist()
            raise ValueError(f"classes {missing} have no sample: the class-mean logit spectrum needs every class")
        if self.feature_dim is not None:
            raise ValueError("the factored state never forms Z (K x K): see class_mean_features()")
        return (self.logit_sums / self.counts.unsqueeze(1)).T

    def class_mean_features(self) -> Tensor:
        """The class means of the features (K x d) of the factored state; raises if a class has no sample."""
        if not (self.counts > 0).all():
            missing = (self.counts == 0).nonzero().flatten().tolist()
            raise ValueError(f"classes {missing} have no sample: the class-mean logit spectrum needs every class")
        return self.feature_sums / self.counts.unsqueeze(1)

    def compute(self) -> dict[str, Tensor]:
        """The scalar keys (:data:`LOGIT_KEYS`, and :data:`OPTIONAL_LOGIT_KEYS` when known) as 0-d float64
        tensors; the spectra (``lam``, ``zc_singular_values``) of the same pass: :meth:`spectra`."""
        out = self._values()
        self._spectra = {key: torch.tensor(out.pop(key), dtype=torch.float64, device=self.counts.device)
                         for key in SPECTRUM_KEYS}
        return as_tensors(out, self.counts.device)

    def spectra(self) -> dict[str, Tensor]:
        """``lam`` (the K - 1 non-constant modes, pairs averaged for fourier) and ``zc_singular_values``
        of the synced pass, as 1-d float64 tensors: the list-valued outputs, apart from ``compute()``."""
        self.compute()  # cached by torchmetrics until the next update: the spectra belong to that value
        return dict(self._spectra)

    def _values(self) -> dict:
        sums = self.logit_sums if self.feature_dim is None else self.feature_sums
        if not torch.isfinite(sums).all() or not torch.isfinite(self.norm_sum):
            raise ValueError("non-finite logits were accumulated (NaN or Inf in the metric state)")
        total = self.counts.sum()
        if self.feature_dim is None:
            out = spectrum_of_class_mean_logits(self.class_mean_logits(), self.basis)
        else:
            if self._weight is None:
                raise ValueError("the factored LogitSpectrum needs the classifier: call set_classifier(W, c) first")
            out = factored_spectrum(self._weight.to(self.counts.device), self.class_mean_features(),
                                    None if self._bias is None else self._bias.to(self.counts.device), self.basis)
        if self.t_star is not None:
            out["margin_to_t_star"] = out["class_margin_normalized"] / self.t_star
        out.update(
            margin_mean=(self.margin_sum / total).item(),
            margin_min=self.margin_min.item(),
            margin_positive=(self.margin_positive / total).item(),
            logit_norm=(self.norm_sum / total).item(),
        )
        return out

    def plot(self, val=None, ax=None, *, keys=None):
        """torchmetrics' ``plot()``: ``val`` (default ``compute()``) or a list of such dicts, one panel per group
        of keys of one scale (:data:`LOGIT_GROUPS`); ``keys`` selects keys. Returns ``(fig, axes)``."""
        from .plotting import plot_values

        return plot_values(self, val, ax, keys=keys, groups=LOGIT_GROUPS)


def _no_features():
    raise ValueError("the factored LogitSpectrum (feature_dim given) needs the features: update(logits, labels, features)")


def logit_spectrum(
    features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor | None = None, *, basis: str = "auto",
    batch_size: int = 65536,
) -> dict:
    """:class:`LogitSpectrum` of in-memory features ``(N, d)`` through the classifier ``(W, c)``, float64:
    its ``compute()`` and its :meth:`~LogitSpectrum.spectra` in one dict, as Python floats and lists (as
    :func:`~hadainit.metrics.functional.neural_collapse` returns floats)."""
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be a (K, d) tensor, got {getattr(weight, 'shape', type(weight).__name__)}")
    k, d = weight.shape
    if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[1] != d:
        raise ValueError(f"features must be (N, {d}), got {tuple(getattr(features, 'shape', ()))}")
    if bias is not None and (not isinstance(bias, Tensor) or bias.shape != (k,)):
        raise ValueError(f"bias must have shape ({k},), got {tuple(getattr(bias, 'shape', ()))}")
    w = weight.detach().to(device=features.device, dtype=torch.float64)
    c = None if bias is None else bias.detach().to(w)
    if not torch.isfinite(w).all() or (c is not None and not torch.isfinite(c).all()):
        raise ValueError("the classifier weight or bias contains NaN or Inf")
    factored = k > DENSE_LIMIT  # no K x K state for large heads
    metric = LogitSpectrum(k, basis=basis, feature_dim=d if factored else None, sync_on_compute=False)
    metric = metric.to(features.device)  # local
    if factored:
        metric.set_classifier(w, c)
    for i in range(0, features.shape[0], batch_size):
        x = features[i : i + batch_size].detach().to(torch.float64)
        z = x @ w.T
        metric.update(z if c is None else z + c, labels[i : i + batch_size], *((x,) if factored else ()))
    return {**{key: value.item() for key, value in metric.compute().items()},
            **{key: value.tolist() for key, value in metric.spectra().items()}}
