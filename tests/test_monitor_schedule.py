"""When a monitor measures (``Schedule``), in real runs: every n-th epoch beside a validation loader, a run
stopped mid-epoch, a loader without a length, checkpoints on epochs the monitor skips."""

import warnings

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from hadainit.callbacks import NeuralCollapseMonitor, SpectralMonitor
from tests.lightning_helpers import TinyModule, dataset, loader, messages, trainer


def test_every_n_epochs_with_a_validation_loader_measures_training_batches_only():
    nc, sp = NeuralCollapseMonitor(every_n_epochs=2), SpectralMonitor(every_n_epochs=2)
    val = DataLoader(dataset(130), batch_size=64)  # other batch shapes than training
    trainer([nc, sp], max_epochs=4).fit(TinyModule(), loader(), val)
    assert [h["epoch"] for h in nc.history] == [-1, 1, 3]
    assert [h["epoch"] for h in sp.history] == [-1, 1, 3]
    assert all(h["num_samples"] == 200 for h in nc.history)  # no validation sample leaks in


def test_a_run_stopped_mid_epoch_logs_the_fraction_it_trained():
    nc, spectral = NeuralCollapseMonitor(), SpectralMonitor()
    trainer([nc, spectral], max_epochs=5, max_steps=23).fit(TinyModule(), loader())  # 10 batches per epoch
    for monitor in (nc, spectral):
        assert [h["epochs_done"] for h in monitor.history] == [0.0, 1.0, 2.0, 2.3]
    assert nc.history[-1]["num_samples"] == 3 * 20


def test_a_loader_without_length_logs_whole_epochs():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            x, y = dataset().tensors
            return iter(zip(x, y))

    spectral = SpectralMonitor()
    trainer([spectral], max_epochs=2).fit(TinyModule(), DataLoader(Stream(), batch_size=20))
    assert [(h["epoch"], h["epochs_done"]) for h in spectral.history] == [(-1, 0.0), (0, 1.0), (1, 2.0)]


def test_checkpointing_at_epochs_the_monitor_skips_is_warned(tmp_path):
    nc = NeuralCollapseMonitor(every_n_epochs=2)
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "a", monitor="nc/nc1", save_on_train_epoch_end=True)
    with pytest.warns(UserWarning, match=r"ModelCheckpoint\(every_n_epochs=2"):
        trainer([nc, every_epoch], max_epochs=2, enable_checkpointing=True).fit(TinyModule(), loader())
    matched = ModelCheckpoint(dirpath=tmp_path / "b", monitor="nc/nc1", save_on_train_epoch_end=True, every_n_epochs=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer([NeuralCollapseMonitor(every_n_epochs=2), matched], max_epochs=2, enable_checkpointing=True).fit(
            TinyModule(), loader())
    assert not messages(record, "runs every epoch")
    assert matched.best_model_path.endswith("epoch=1-step=20.ckpt")
