"""callbacks/_lightning.py, the one module that reads Lightning/torchmetrics internals (issue 23): each function
against what the pinned versions do, checked from the public side (the steps Lightning's own logged rows carry,
the batches a loader yields, the hooks a module defines)."""

import csv

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanMetric

from hadainit.callbacks import _lightning as internals

BATCHES, EPOCHS = 5, 2


class Tiny(L.LightningModule):
    def __init__(self, validate: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.seen_steps: list[int] = []
        if not validate:
            self.validation_step = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen_steps.append(internals.logger_step(self.trainer))
        loss = nn.functional.cross_entropy(self.fc(x), y)
        self.log("loss", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        pass

    def on_before_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return x * 2, y

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recorder(Callback):
    def __init__(self) -> None:
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append((trainer.current_epoch, batch_idx, internals.batches_ready(trainer),
                          internals.is_last_batch(trainer), internals.batches_completed(trainer)))


def _loader():
    gen = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(4 * BATCHES, 3, generator=gen), torch.arange(4 * BATCHES) % 2),
                      batch_size=4)


def _fit(tmp_path, module, val=True, **kwargs):
    rec = Recorder()
    trainer = L.Trainer(max_epochs=EPOCHS, callbacks=[rec], logger=CSVLogger(tmp_path, name="", version=""),
                        log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, **kwargs)
    trainer.fit(module, _loader(), _loader() if val else None)
    return trainer, rec


def test_progress_counters_follow_the_batches(tmp_path):
    module = Tiny()
    trainer, rec = _fit(tmp_path, module)
    for epoch, batch_idx, ready, last, completed in rec.rows:
        assert ready == batch_idx + 1
        assert last == (batch_idx == BATCHES - 1)
        assert completed in (epoch * BATCHES + batch_idx, epoch * BATCHES + batch_idx + 1)  # counted at the step's end
    assert internals.batches_completed(trainer) == EPOCHS * BATCHES
    # logger_step is the step Lightning's own rows of that training step carry in metrics.csv
    with open(tmp_path / "metrics.csv", newline="") as fh:
        logged = [int(r["step"]) for r in csv.DictReader(fh) if r.get("loss")]
    assert module.seen_steps == logged


def test_validation_data_is_seen(tmp_path):
    with_val, _ = _fit(tmp_path / "a", Tiny())
    assert internals.has_val_loader(with_val)
    without, _ = _fit(tmp_path / "b", Tiny(validate=False), val=False, limit_val_batches=0)
    assert not internals.has_val_loader(without)


def test_every_n_epochs_of_a_checkpoint():
    assert internals.every_n_epochs(ModelCheckpoint(every_n_epochs=3)) == 3
    assert internals.every_n_epochs(ModelCheckpoint()) == 1
    assert internals.every_n_epochs(EarlyStopping(monitor="x")) is None


def test_before_transfer_runs_the_modules_hook():
    x, y = torch.ones(2, 3), torch.zeros(2, dtype=torch.long)
    out = internals.before_transfer(Tiny(), (x, y))
    assert torch.equal(out[0], 2 * x) and out[1] is y


def test_set_update_count_and_the_compute_cache():
    metric = MeanMetric()
    metric.update(torch.tensor([1.0, 3.0]))
    assert metric.compute().item() == 2.0
    metric.mean_value = torch.tensor(10.0, dtype=metric.mean_value.dtype)  # state replaced as a restore does
    internals.set_update_count(metric, 4)
    assert metric.update_count == 4
    assert metric.compute().item() == 5.0  # the cached 2.0 was dropped


def test_saved_progress_of_real_checkpoints(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", save_last=True)
    trainer = L.Trainer(max_epochs=EPOCHS, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Tiny(), _loader(), _loader())
    state = torch.load(tmp_path / "c" / "last.ckpt", weights_only=False, map_location="cpu")
    assert internals.saved_progress(state) == (EPOCHS, 0)
    cut = L.Trainer(max_steps=BATCHES + 2, callbacks=[ModelCheckpoint(dirpath=tmp_path / "d", save_last=True)],
                    logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    cut.fit(Tiny(), _loader(), _loader())
    state = torch.load(tmp_path / "d" / "last.ckpt", weights_only=False, map_location="cpu")
    assert internals.saved_progress(state) == (1, 2)  # one epoch, then 2 batches of the second


def test_setup_val_data_makes_the_loaders_known_before_the_first_validation(tmp_path):
    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            internals.setup_val_data(trainer)
            self.loaders, self.batches = trainer.val_dataloaders, trainer.num_val_batches

    probe = Probe()
    trainer = L.Trainer(max_epochs=1, callbacks=[probe], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=3)
    trainer.fit(Tiny(), _loader(), _loader())
    assert isinstance(probe.loaders, DataLoader) and probe.batches == [3]


def test_callbacks_in_check_gives_the_list_trainer_validates():
    seen = []

    class Asks(Callback):
        def state_dict(self):
            return {"x": 1}

        @property
        def state_key(self):
            seen.append(internals.callbacks_in_check())
            return "asks"

    cb = Asks()
    L.Trainer(callbacks=[cb], logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert any(s is not None and cb in s for s in seen)
    assert internals.callbacks_in_check() is None
