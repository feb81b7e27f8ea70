"""The dense unconstrained features model (SPEC section 1).

``W`` (K x d) is the classifier, ``H`` (d x N) the free features, column
``k * n + j`` being sample j of class k; logits ``Z = W H``. With n = 1 and no
weight decay this is exactly a two-layer linear network fed ``e_1 .. e_K``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..basis import InitialBasis
from ..drift import leakage
from ..init import _compose_spectral, _spectral_factors
from .dynamics import _CHECK_EVERY, _divergence_message

__all__ = ["UFM", "GDHistory", "RECORDABLE"]

#: What :meth:`UFM.gradient_descent` can record.
RECORDABLE = ("loss", "singular_values", "spectrum", "leakage")


@dataclass
class GDHistory:
    """Recorded gradient-descent trajectory; row t of every tensor is ``step[t]``.

    ``spectrum_W``/``spectrum_H`` are ``diag(Q^T W V)`` and ``diag(V^T Hbar Q)``
    (Hbar: class means of H), the signed singular values in the tracked basis;
    ``leakage_W``/``leakage_H`` the off-diagonal parts relative to the norm.
    """

    step: Tensor
    loss: Tensor | None = None
    singular_values: Tensor | None = None
    spectrum_W: Tensor | None = None
    spectrum_H: Tensor | None = None
    leakage_W: Tensor | None = None
    leakage_H: Tensor | None = None


class UFM(nn.Module):
    """Dense UFM with parameters ``W`` (K x d) and ``H`` (d x n K).

    Args:
        weight: initial W.
        features: initial H; its column count must be ``K * samples_per_class``.
        samples_per_class: n.
        basis: the tracked basis, an :class:`hadainit.InitialBasis` (K x r and d x r,
            r = K, or the size of a mode set for K > d, docs/theory.md §8) in which the
            spectrum and leakage are measured; ``from_spectrum`` sets the spectral one
            (with its kind and mode set), ``random`` the SVD basis of W(0).
        left, right: the same as two tensors (orthonormal columns, checked; recorded as an
            ``InitialBasis`` of kind ``"custom"``); give ``basis`` or these, not both.

    :attr:`basis` is the record (float64, CPU: what :func:`hadainit.drift` and the monitors
    take); the buffers :attr:`left` and :attr:`right` are its working copies in W's dtype,
    moved by ``.to(...)``.

    W and H follow the core's dtype rule: integer tensors become float64, a
    floating W keeps its dtype and H takes it.
    """

    def __init__(
        self,
        weight: Tensor,
        features: Tensor,
        samples_per_class: int = 1,
        *,
        left: Tensor | None = None,
        right: Tensor | None = None,
        basis: InitialBasis | None = None,
    ) -> None:
        super().__init__()
        n = _checks.positive_int(samples_per_class, "samples_per_class")
        weight = _checks.real_tensor(weight, "weight")
        features = _checks.real_tensor(features, "features")
        if weight.dim() != 2 or features.dim() != 2 or weight.shape[1] != features.shape[0]:
            raise ValueError(
                f"need W (K, d) and H (d, N); got W {tuple(weight.shape)} and H {tuple(features.shape)}"
            )
        k = weight.shape[0]
        if k < 2:
            raise ValueError(f"the UFM needs K >= 2 classes, got W of shape {tuple(weight.shape)}")
        if features.shape[1] != k * n:
            raise ValueError(f"H must have K * n = {k * n} columns, got {features.shape[1]}")
        if not (torch.isfinite(weight).all() and torch.isfinite(features).all()):
            raise ValueError("W and H must be finite")
        self.W = nn.Parameter(weight.detach().clone())
        self.H = nn.Parameter(_checks.fit_dtype(features.detach(), weight.dtype, "H").clone())
        self.samples_per_class = n
        self.register_buffer("labels", torch.arange(k, device=weight.device).repeat_interleave(n))
        if basis is not None:
            if not isinstance(basis, InitialBasis):
                raise TypeError(f"basis must be an InitialBasis, got {type(basis).__name__}")
            if left is not None or right is not None:
                raise ValueError("give basis=InitialBasis or left and right, not both")
            left, right = basis.left, basis.right
        if (left is None) != (right is None):
            raise ValueError("give both left and right bases, or neither")
        if left is not None:
            if not (isinstance(left, Tensor) and isinstance(right, Tensor)):
                raise TypeError(f"left and right must be tensors, got {type(left).__name__} and {type(right).__name__}")
            r = left.shape[1] if left.dim() == 2 else -1
            if left.dim() != 2 or left.shape[0] != k or not 1 <= r <= min(k, weight.shape[1]) or right.shape != (
                weight.shape[1], r
            ):
                raise ValueError(f"need left (K, r) = ({k}, r) and right (d, r) = ({weight.shape[1]}, r) with "
                                 f"r <= min(K, d); got {tuple(left.shape)} and {tuple(right.shape)}")
            # a basis that is not orthonormal makes the spectrum and leakage meaningless (leakage above 1)
            left = _checks.orthonormal_columns(left, "left")
            right = _checks.orthonormal_columns(right, "right")
            if basis is None:
                basis = InitialBasis("custom", left, right)
            left, right = left.to(weight), right.to(weight)
        self._basis = basis
        # buffers, so that .to(device/dtype) moves the tracked basis with the model
        self.register_buffer("left", left)
        self.register_buffer("right", right)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_spectrum(
        cls,
        num_classes: int,
        feature_dim: int,
        a,
        b=None,
        *,
        basis: str | Tensor = "auto",
        modes=None,
        samples_per_class: int = 1,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> "UFM":
        """The spectral initialization of docs/theory.md §2 (see :func:`~hadainit.init.spectral_init`).

        For K > d (or with ``modes``) a mode set S: the tracked basis is ``(Q_S, V_r)`` and
        :meth:`spectrum` returns the r values on S, in increasing mode order.
        """
        dtype = _checks.floating_dtype(dtype)
        kind, q, a, b, v, chosen = _spectral_factors(
            num_classes, feature_dim, a, b, basis=basis, modes=modes, samples_per_class=samples_per_class,
            generator=generator,
        )
        w, h = _compose_spectral(q, a, b, v, samples_per_class)
        w, h = _checks.fit_dtype(w, dtype, "W"), _checks.fit_dtype(h, dtype, "H")
        model = cls(w, h, samples_per_class, basis=InitialBasis(kind, q, v, modes=chosen))
        return model.to(device)

    @classmethod
    def random(
        cls,
        num_classes: int,
        feature_dim: int,
        *,
        std: float = 1e-2,
        samples_per_class: int = 1,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> "UFM":
        """Small i.i.d. Gaussian init; the tracked basis is the SVD of W(0) (needs d >= K)."""
        k = _checks.positive_int(num_classes, "num_classes", minimum=2)
        d = _checks.positive_int(feature_dim, "feature_dim")
        n = _checks.positive_int(samples_per_class, "samples_per_class")
        std = _checks.positive_float(std, "std")
        dtype = _checks.floating_dtype(dtype)
        w = std * torch.randn(k, d, generator=generator, dtype=torch.float64)
        h = std * torch.randn(d, k * n, generator=generator, dtype=torch.float64)
        basis = None
        if d >= k:
            u, _, vh = torch.linalg.svd(w, full_matrices=False)
            basis = InitialBasis("svd", u, vh.T)
        model = cls(_checks.fit_dtype(w, dtype, "W"), _checks.fit_dtype(h, dtype, "H"), n, basis=basis)
        return model.to(device)

    # --------------------------------------------------------------- quantities
    @property
    def basis(self) -> InitialBasis | None:
        """The tracked basis as the one record, :class:`hadainit.InitialBasis` (None without one)."""
        return self._basis

    @property
    def num_classes(self) -> int:
        return self.W.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.W.shape[1]

    def logits(self) -> Tensor:
        return self.W @ self.H

    def class_means(self) -> Tensor:
        """Hbar, d x K: the mean of each class's n columns of H."""
        return self.H.reshape(self.feature_dim, self.num_classes, self.samples_per_class).mean(dim=2)

    def _targets(self) -> Tensor:
        return F.one_hot(self.labels, self.num_classes).T.to(self.W.dtype)

    def loss(self, kind: str = "ce", weight_decay=(0.0, 0.0)) -> Tensor:
        """SPEC section 1: mean CE over the N columns (or ``(1/2N)||Z - Y||^2``) plus weight decay."""
        _checks.loss_kind(kind)
        wd_w, wd_h = _checks.weight_decay(weight_decay)
        z = self.logits()
        if kind == "ce":
            data = F.cross_entropy(z.T, self.labels)
        else:
            data = 0.5 * (z - self._targets()).pow(2).sum() / z.shape[1]
        return data + 0.5 * wd_w * self.W.pow(2).sum() + 0.5 * wd_h * self.H.pow(2).sum()

    @torch.no_grad()
    def gradients(self, kind: str = "ce", weight_decay=(0.0, 0.0)) -> tuple[Tensor, Tensor]:
        """Closed-form ``(grad_W L, grad_H L)``: with ``G = (softmax(Z) - Y) / N`` (CE) or
        ``(Z - Y) / N`` (MSE), ``grad_W = G H^T + wd_W W`` and ``grad_H = W^T G + wd_H H``."""
        _checks.loss_kind(kind)
        wd_w, wd_h = _checks.weight_decay(weight_decay)
        z = self.logits()
        residual = (torch.softmax(z, dim=0) if kind == "ce" else z) - self._targets()
        g = residual / z.shape[1]
        return g @ self.H.T + wd_w * self.W, self.W.T @ g + wd_h * self.H

    @torch.no_grad()
    def step(self, lr: float, kind: str = "ce", weight_decay=(0.0, 0.0)) -> None:
        """One GD step; both matrices are updated from the same old iterate."""
        lr = _checks.positive_float(lr, "lr")  # a NaN step would silently poison W and H
        g_w, g_h = self.gradients(kind, weight_decay)
        self.W -= lr * g_w
        self.H -= lr * g_h

    @torch.no_grad()
    def spectrum(self) -> tuple[Tensor, Tensor]:
        """``(diag(Q^T W V), diag(V^T Hbar Q))`` in the tracked basis."""
        self._need_basis()
        a = torch.diagonal(self.left.T @ self.W @ self.right)
        b = torch.diagonal(self.right.T @ self.class_means() @ self.left)
        return a, b

    @torch.no_grad()
    def leakage(self) -> tuple[Tensor, Tensor]:
        """Off-diagonal leakage of W and of the class means of H in the tracked basis."""
        self._need_basis()
        return leakage(self.W, self.left, self.right), leakage(self.class_means().T, self.left, self.right)

    def _need_basis(self) -> None:
        if self.left is None:
            raise ValueError("this UFM tracks no basis (built with d < K or without left/right)")

    # ------------------------------------------------------------------- descent
    @torch.no_grad()
    def gradient_descent(
        self,
        lr: float,
        steps: int,
        *,
        loss: str = "ce",
        weight_decay=(0.0, 0.0),
        record=("loss", "spectrum", "leakage"),
        record_every: int = 1,
    ) -> GDHistory:
        """Full-batch GD for ``steps`` steps, recording at steps 0, record_every, ..., and the last.

        Args:
            lr: step size.
            steps: number of steps.
            loss: ``"ce"`` or ``"mse"``.
            weight_decay: ``(wd_W, wd_H)``.
            record: a tuple of names from :data:`RECORDABLE`.
            record_every: recording interval in steps.

        Raises:
            ValueError: if W or H becomes inf or NaN (or a recorded loss does). The
                message names the first such step and the stable step-size bound
                where one is known; the model is left at the last finite iterate.
        """
        lr = _checks.positive_float(lr, "lr")
        steps = _checks.positive_int(steps, "steps", minimum=0)
        every = _checks.positive_int(record_every, "record_every")
        _checks.loss_kind(loss)
        weight_decay = _checks.weight_decay(weight_decay)
        if isinstance(record, str) or not isinstance(record, (tuple, list, set, frozenset)):
            raise TypeError(f"record must be a tuple of names from {RECORDABLE}, got {record!r}")
        unknown = set(record) - set(RECORDABLE)
        if unknown:
            raise ValueError(f"cannot record {sorted(map(str, unknown))}; choose from {RECORDABLE}")
        if ("spectrum" in record or "leakage" in record):
            self._need_basis()
        rows: dict[str, list[Tensor]] = {name: [] for name in
                                         ("step", "loss", "singular_values", "spectrum_W", "spectrum_H",
                                          "leakage_W", "leakage_H")}

        def diverged(t: int) -> ValueError:
            return ValueError(_divergence_message(t, lr, loss, weight_decay, self.num_classes, self.samples_per_class))

        def snapshot(t: int) -> None:
            rows["step"].append(torch.tensor(t))
            if "loss" in record:
                value = self.loss(loss, weight_decay)
                if not torch.isfinite(value):  # finite W and H whose logits overflow
                    raise diverged(t)
                rows["loss"].append(value)
            if "singular_values" in record:
                rows["singular_values"].append(torch.linalg.svdvals(self.W))
            if "spectrum" in record:
                a, b = self.spectrum()
                rows["spectrum_W"].append(a)
                rows["spectrum_H"].append(b)
            if "leakage" in record:
                lw, lh = self.leakage()
                rows["leakage_W"].append(lw)
                rows["leakage_H"].append(lh)

        # the iterate is checked for inf/NaN every _CHECK_EVERY steps and before each snapshot
        # (no device sync per step); on a failure the steps since the last good copy are replayed
        safe = (0, self.W.clone(), self.H.clone())
        snapshot(0)
        for t in range(1, steps + 1):
            self.step(lr, loss, weight_decay)
            record_now = t % every == 0 or t == steps
            if record_now or t % _CHECK_EVERY == 0:
                if not self._finite():
                    raise diverged(self._replay_to_first_bad(safe, t, lr, loss, weight_decay))
                safe = (t, self.W.clone(), self.H.clone())
            if record_now:
                snapshot(t)
        return GDHistory(**{k: (torch.stack(v) if v else None) for k, v in rows.items()})

    def _finite(self) -> bool:
        return bool(torch.isfinite(self.W).all() and torch.isfinite(self.H).all())

    def _replay_to_first_bad(self, safe: tuple[int, Tensor, Tensor], last: int, lr: float, loss: str, wd) -> int:
        """From the finite copy ``safe`` = (step, W, H), step until the iterate is not finite; stay just before."""
        start, w, h = safe
        self.W.copy_(w)
        self.H.copy_(h)
        for t in range(start + 1, last + 1):
            w, h = self.W.clone(), self.H.clone()
            self.step(lr, loss, wd)
            if not self._finite():
                self.W.copy_(w)
                self.H.copy_(h)
                return t
        return last  # pragma: no cover - non-finite values stay non-finite under GD
