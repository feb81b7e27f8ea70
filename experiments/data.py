"""LightningDataModules with fixed train/test splits: real data that needs no download, and CIFAR.

* :class:`Digits`: scikit-learn's bundled handwritten digits (1,797 images 8x8, K = 10),
  a fixed 80/20 split.
* :class:`MNIST1D`: the ``mnist1d`` package's procedurally generated set (5,000 signals of
  length 40, K = 10), generated (never downloaded) with the package's default arguments and
  its own 4,000 / 1,000 split.
* :class:`CIFAR`: CIFAR-10/100 from the official python-format files under ``data_dir``
  (downloaded only with ``download=True``).

Every module has ``num_classes`` and ``input_shape`` (used to build the model) and serves
the test split as the validation loader.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

DATASETS = {"cifar10": ("CIFAR10", 10, "cifar-10-python.tar.gz"), "cifar100": ("CIFAR100", 100, "cifar-100-python.tar.gz")}
# per-channel statistics of the CIFAR training sets
_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}


class ClassificationData(L.LightningDataModule):
    """Base of the data modules: a training set, a test set (served for validation), loaders.

    Args:
        batch_size: training and evaluation batch size.
        num_workers: DataLoader worker processes.
    """

    num_classes: int
    input_shape: tuple[int, ...]

    def __init__(self, batch_size: int = 128, num_workers: int = 0) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch size must be positive: batch_size is {batch_size!r}, give an int >= 1")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_seed: int | None = None  # None: the run's seed (torch.initial_seed() when the loader is made)
        self.train_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        seed = torch.initial_seed() if self.shuffle_seed is None else self.shuffle_seed
        sampler = EpochShuffle(len(dataset), seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class EpochShuffle(torch.utils.data.Sampler):
    """The training order of epoch e: a permutation drawn from (seed, e) alone. Lightning calls
    ``set_epoch`` before every epoch, also in a run resumed from a checkpoint, which therefore sees the
    batches of the uninterrupted run (a plain shuffling loader draws from the global RNG, which a
    checkpoint does not restore)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


def _split(x: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int) -> tuple[TensorDataset, TensorDataset]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = len(y) - int(round(test_fraction * len(y)))
    return TensorDataset(x[order[:cut]], y[order[:cut]]), TensorDataset(x[order[cut:]], y[order[cut:]])


class Digits(ClassificationData):
    """scikit-learn's handwritten digits: 1,438 training / 359 test images (1 x 8 x 8, pixels / 16), K = 10."""

    num_classes = 10
    input_shape = (1, 8, 8)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            from sklearn.datasets import load_digits

            x, y = load_digits(return_X_y=True)
            x = torch.tensor(x, dtype=torch.float32).reshape(-1, *self.input_shape) / 16.0
            self.train_set, self.test_set = _split(x, torch.tensor(y, dtype=torch.int64), 0.2, seed=0)


@functools.lru_cache(maxsize=1)
def _mnist1d() -> dict:
    """The mnist1d set from its generator; the global RNG states it reseeds are restored afterwards."""
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        return make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


class MNIST1D(ClassificationData):
    """mnist1d, generated: 4,000 training / 1,000 test signals (1 x 40), K = 10."""

    num_classes = 10
    input_shape = (1, 40)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            data = _mnist1d()

            def tensors(x, y):
                return TensorDataset(torch.tensor(x, dtype=torch.float32).reshape(-1, *self.input_shape),
                                     torch.tensor(y, dtype=torch.int64))

            self.train_set, self.test_set = tensors(data["x"], data["y"]), tensors(data["x_test"], data["y_test"])


def cifar(name: str, data_dir: str | Path, *, train: bool, augment: bool, download: bool = False):
    """The torchvision CIFAR dataset ``name`` under ``data_dir`` (standard crop+flip augmentation if asked).

    Raises ``FileNotFoundError`` saying where the data was looked for and how to get it.
    """
    from torchvision import datasets, transforms

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    cls_name, _, archive = DATASETS[name]
    cls = getattr(datasets, cls_name)
    root = Path(data_dir)
    folder = root / cls.base_folder
    if not download and not folder.is_dir():
        raise FileNotFoundError(
            f"{name} not found: looked for {folder} (the python version of the dataset). Pass download=True "
            f"(--data.download true), or extract {archive} from https://www.cs.toronto.edu/~kriz/cifar.html into {root}"
        )
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    steps += [transforms.ToTensor(), transforms.Normalize(_MEAN[name], _STD[name])]
    try:
        return cls(str(root), train=train, transform=transforms.Compose(steps), download=download)
    except RuntimeError as err:  # torchvision: files present but failing their checksums
        raise FileNotFoundError(f"{name} under {folder} is incomplete or corrupted ({err}); re-download it") from err


class CIFAR(ClassificationData):
    """CIFAR-10 or CIFAR-100 (3 x 32 x 32), crop+flip augmentation on the training set.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        data_dir: the folder holding ``cifar-10-batches-py`` / ``cifar-100-python``.
        download: fetch the dataset into ``data_dir`` if missing (the only download in hadainit).
        augment: random crop and flip for training.
    """

    input_shape = (3, 32, 32)

    def __init__(self, name: Literal["cifar10", "cifar100"] = "cifar10", data_dir: str = "data", download: bool = False,
                 augment: bool = True, batch_size: int = 128, num_workers: int = 4) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
        self.name, self.data_dir, self.download, self.augment = name, data_dir, download, augment
        self.num_classes = DATASETS[name][1]

    def prepare_data(self) -> None:
        if self.download:
            cifar(self.name, self.data_dir, train=True, augment=False, download=True)
            cifar(self.name, self.data_dir, train=False, augment=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = cifar(self.name, self.data_dir, train=True, augment=self.augment)
            self.test_set = cifar(self.name, self.data_dir, train=False, augment=False)
