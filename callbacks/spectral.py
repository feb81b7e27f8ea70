"""SpectralMonitor: drift of the classifier's singular vectors from its initialization, and the KL Lyapunov value."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from hadainit.drift import leakage
from hadainit.metrics import ClassMeans, class_mean_logit_kl

from .basis import check_kind, initial_basis
from .capture import FeatureCapture, default_labels, find_classifier, metric_checkpoint, restore_metric
from .plotting import plot_history


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spans of a and b (orthonormal columns)."""
    cos = torch.linalg.svdvals(a.T @ b).clamp(-1.0, 1.0)
    return torch.arccos(cos).flip(0)


class SpectralMonitor(Callback):
    """Log ``spectral/<key>`` every ``every_n_epochs``: how far the classifier W left its initial singular basis.

    * When the weight was set by :func:`hadainit.hadamard_` (its basis kind is
      recorded, or given as ``init_basis``), ``leakage = ||offdiag(Q^T W V)||_F / ||W||_F``
      with ``V`` recovered from W(0) (see :mod:`hadainit.callbacks.basis`): zero while
      the singular vectors stay frozen. Otherwise the initial basis is the SVD of
      W(0) (arbitrary within repeated singular values, which is why the known
      basis is preferred) and the drift is the largest principal angle between the
      initial and current top-r left and right singular subspaces.
    * ``sv_max``, ``sv_min``, ``sv_cv``: the singular values of W (all of them in ``history``).
    * ``kl_lyapunov``: KL(u || sigma / sum sigma) of the double-centred class-mean logit matrix,
      class means accumulated from the training forward passes of the epoch (synced under DDP).

    The initial basis is in ``state_dict``: a run resumed from a checkpoint keeps
    measuring drift from the true initialization, not from the resumed weights.

    Args:
        classifier: attribute path of the ``nn.Linear`` (default: the last one).
        init_basis: the ``hadamard_`` basis kind of the classifier, if its record may be lost
            (``ddp_spawn``, deepcopy); default: read the record.
        every_n_epochs: log after every n-th epoch.
        plot_dir: if given, ``spectral.png`` is written there at the end of fit (rank zero).
        labels_from_batch: how to read labels from a batch.
    """

    def __init__(
        self,
        *,
        classifier: str | None = None,
        init_basis: str | None = None,
        every_n_epochs: int = 1,
        plot_dir: str | Path | None = None,
        labels_from_batch: Callable = default_labels,
    ) -> None:
        if not isinstance(every_n_epochs, int) or isinstance(every_n_epochs, bool) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive int, got {every_n_epochs!r}")
        if classifier is not None and not isinstance(classifier, str):
            raise TypeError(f"classifier must be an attribute path string, got {type(classifier).__name__}")
        self.classifier_path = classifier
        self.init_basis = check_kind(init_basis)
        self.every_n_epochs = every_n_epochs
        self.plot_dir = None if plot_dir is None else Path(plot_dir)
        self.labels_from_batch = labels_from_batch
        self.history: list[dict] = []
        self.singular_values: list[list[float]] = []
        self.basis_kind: str | None = None
        self.left: torch.Tensor | None = None
        self.right: torch.Tensor | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._classifier = find_classifier(pl_module, self.classifier_path)
        k, d = self._classifier.out_features, self._classifier.in_features
        self._means = ClassMeans(k, d, validate_args=False)  # no per-batch device sync
        self._capture = FeatureCapture(self._classifier)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after the DDP broadcast of the weights, and after a resumed run's load_state_dict
        if self.left is None:
            basis = initial_basis(self._classifier.weight, self.init_basis)
            self.basis_kind, self.left, self.right = basis.kind, basis.left, basis.right

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and hasattr(self, "_capture"):
            self._capture.remove()

    def _due(self, trainer: Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 and not trainer.sanity_checking

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # per batch, not per epoch: Lightning skips on_train_epoch_start when resuming mid-epoch
        self._capture.active = self._due(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        features, _ = self._capture.take()
        if features is not None:
            if self._means.device != features.device:
                self._means.to(features.device)
            self._means.update(features, self.labels_from_batch(batch))

    def measure(self, weight: torch.Tensor) -> tuple[dict, list[float]]:
        """The basis-drift values and the singular values of ``weight`` (without the class-mean KL)."""
        w = weight.detach().to(torch.float64).cpu()
        sv = torch.linalg.svdvals(w)
        out = {"sv_max": sv[0].item(), "sv_min": sv[-1].item(), "sv_cv": (sv.std(correction=0) / sv.mean()).item()}
        if self.basis_kind == "svd":
            r = self.left.shape[1]
            u, _, vh = torch.linalg.svd(w, full_matrices=False)
            out["angle_left_max"] = principal_angles(self.left, u[:, :r]).max().item()
            out["angle_right_max"] = principal_angles(self.right, vh[:r].T).max().item()
        else:
            out["leakage"] = leakage(w, self.left, self.right).item()
        return out, sv.tolist()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._capture.active = False
        if not self._due(trainer):
            return
        values, sv = self.measure(self._classifier.weight)
        if self._means.update_count:
            try:
                means, seen = self._means.compute()  # synced across ranks
            except ValueError as err:  # non-finite features: say so, log the rest
                rank_zero_warn(f"epoch {trainer.current_epoch}: spectral/kl_lyapunov not logged: {err}")
            else:
                if int(seen.sum()) >= 2:
                    w = self._classifier.weight.detach()[seen.to(self._classifier.weight.device)]
                    values["kl_lyapunov"] = class_mean_logit_kl(w, means[seen].to(w.device))
            self._means.reset()
        self.history.append({"epoch": trainer.current_epoch, **values})
        self.singular_values.append(sv)
        for key, value in values.items():
            pl_module.log(f"spectral/{key}", torch.tensor(value, dtype=torch.float64), on_epoch=True, sync_dist=False)

    @rank_zero_only
    def _plot(self) -> None:
        if self.plot_dir is not None and self.history:
            self.plot_dir.mkdir(parents=True, exist_ok=True)
            plot_history(self.history, self.plot_dir / "spectral.png", f"Classifier spectrum (basis: {self.basis_kind})")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._plot()

    def state_dict(self) -> dict:
        return {
            "basis_kind": self.basis_kind,
            "left": self.left,
            "right": self.right,
            "history": self.history,
            "singular_values": self.singular_values,
            "means": metric_checkpoint(self._means) if hasattr(self, "_means") else None,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.basis_kind = state_dict["basis_kind"]
        self.left, self.right = state_dict["left"], state_dict["right"]
        self.history = list(state_dict.get("history", []))
        self.singular_values = list(state_dict.get("singular_values", []))
        if hasattr(self, "_means"):  # setup ran first: continue a mid-epoch accumulation
            restore_metric(self._means, state_dict.get("means"))
