"""A Lightning callback of the study: the loss-driving margins and the label-order-free distance on the training set.

At the monitors' epochs (and at initialization) it runs the whole training set through the model in eval
mode, float64 logits, and logs under ``probe/``: ``loss`` (the cross-entropy at these weights, not the
running average of the epoch), ``neg_log_loss``, ``margin_min``, ``margin_softmin``, ``margin_mean`` and
``label_free_distance`` and ``normalized_margin`` (:mod:`hadainit.experiments.measures`); at the last epoch also the spread of
``logit_leakage`` over random relabellings of the classes (``leak_relabel_min/median/max``).
"""

from __future__ import annotations

import lightning as L
import torch

from .measures import class_mean_logits, label_free_distance, leakage_over_relabellings, margin_summary, normalized_margin
from .keys import PROBE

PREFIX = PROBE


class MarginProbe(L.Callback):
    """Train-set margins at ``at_epochs`` (epochs completed; 0 is the initialization), logged with ``epochs_done``.

    Args:
        at_epochs: the epochs-completed counts to measure at.
        relabellings: how many random class orders the final ``logit_leakage`` is recomputed for (0: none).
        batch_size: evaluation batch size.
    """

    def __init__(self, at_epochs: list[int], relabellings: int = 200, batch_size: int = 1024) -> None:
        self.at_epochs = set(int(e) for e in at_epochs) | {0}
        self.relabellings = relabellings
        self.batch_size = batch_size

    @torch.no_grad()
    def _logits(self, trainer, module) -> tuple[torch.Tensor, torch.Tensor]:
        data = trainer.datamodule.train_set
        loader = torch.utils.data.DataLoader(data, batch_size=self.batch_size, shuffle=False)
        was = module.training
        module.eval()
        try:
            out = [(module(x.to(module.device)).double().cpu(), y) for x, y in loader]
        finally:
            module.train(was)
        return torch.cat([o for o, _ in out]), torch.cat([y for _, y in out])

    def _measure(self, trainer, module, epochs_done: float, last: bool) -> None:
        logits, labels = self._logits(trainer, module)
        values = {PREFIX + k: v for k, v in margin_summary(logits, labels).items()}
        z = class_mean_logits(logits, labels, logits.shape[1])
        for name, fn in (("label_free_distance", label_free_distance), ("normalized_margin", normalized_margin)):
            try:
                values[PREFIX + name] = fn(z)
            except ValueError:  # undefined at this point (e.g. all class means equal): not logged
                pass
        if last and self.relabellings and logits.shape[1] >= 3:
            spread = leakage_over_relabellings(z, self.relabellings)
            values.update({PREFIX + f"leak_relabel_{k}": spread[k] for k in ("min", "median", "max")})
        for logger in trainer.loggers:
            logger.log_metrics({**values, "epoch": trainer.current_epoch if epochs_done else -1,
                                "epochs_done": epochs_done}, step=trainer.global_step)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            self._measure(trainer, pl_module, 0.0, last=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        done = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and done >= trainer.max_epochs
        if done in self.at_epochs or last:
            self._measure(trainer, pl_module, float(done), last=last)
