"""The classifier's initial singular basis, as the monitors measure drift from it.

Only the *left* basis Q needs to be known: it is the basis kind of
:func:`hadainit.hadamard_` (recorded on the weight, or named by the user).
The right basis is recovered from the initial weights themselves,
``V = W0^T Q diag(1/s)``, which is exact for ``W0 = Q diag(s) V^T`` and, read
from the weights every DDP rank received from rank 0, identical on all ranks
(an unseeded ``hadamard_`` draws a different V on every rank). The record
attached by ``hadamard_`` survives ordinary pickling and ``torch.save``, but not
``copy.deepcopy`` or ``torch.multiprocessing`` transfers (``ddp_spawn``): there,
pass the kind explicitly (``init_basis="walsh"`` etc.).

Without a kind, the basis is the SVD of W0 (arbitrary within repeated singular
values) and drift is reported as principal angles instead of leakage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hadainit.bases import BASIS_KINDS, basis_matrix
from hadainit.init import spectral_record


@dataclass
class InitialBasis:
    kind: str  # a basis kind, "custom" (a recorded Q), or "svd"
    left: Tensor  # K x r, float64, CPU
    right: Tensor  # d x r, float64, CPU


def check_kind(kind: str | None) -> str | None:
    if kind is not None and (kind not in BASIS_KINDS or kind == "auto"):
        raise ValueError(f"init_basis must be one of {BASIS_KINDS[1:]} or None, got {kind!r}")
    return kind


def initial_basis(weight: Tensor, kind: str | None = None) -> InitialBasis:
    """The initial basis of ``weight`` (K x d); ``kind`` overrides the ``hadamard_`` record."""
    w = weight.detach().to(torch.float64).cpu()
    k, d = w.shape
    record = spectral_record(weight)
    kind = kind or (record.kind if record is not None else None)
    if kind is None:
        u, _, vh = torch.linalg.svd(w, full_matrices=False)
        return InitialBasis("svd", u, vh.T)
    left = record.left if kind == "custom" else basis_matrix(k, kind)
    cols = w.T @ left  # d x K: column i is s_i v_i
    s = torch.linalg.vector_norm(cols, dim=0)
    good = s > 1e-6 * s.max()
    right = torch.zeros(d, k, dtype=torch.float64)
    right[:, good] = cols[:, good] / s[good]
    if not good.all():  # modes with s_i = 0 (zero_mean): any orthonormal completion, chosen deterministically
        full = torch.linalg.qr(torch.cat((right[:, good], torch.eye(d, dtype=torch.float64)), dim=1))[0]
        right[:, ~good] = full[:, int(good.sum()) : int(good.sum()) + int((~good).sum())]
    return InitialBasis(kind, left, right)
