"""CIFAR-10/100 from the official python-format files, through torchvision. No download unless asked."""

from __future__ import annotations

from pathlib import Path

from torchvision import datasets, transforms

DATASETS = {
    "cifar10": (datasets.CIFAR10, 10, "cifar-10-python.tar.gz"),
    "cifar100": (datasets.CIFAR100, 100, "cifar-100-python.tar.gz"),
}
# per-channel statistics of the CIFAR training sets
_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}


def num_classes(name: str) -> int:
    return _spec(name)[1]


def _spec(name: str):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]


def cifar(name: str, data_dir: str | Path, *, train: bool, augment: bool, download: bool = False):
    """The torchvision CIFAR dataset ``name`` under ``data_dir`` (standard crop+flip augmentation if asked).

    Raises ``FileNotFoundError`` saying where the data was looked for and how to get it.
    """
    cls, _, archive = _spec(name)
    root = Path(data_dir)
    folder = root / cls.base_folder
    if not download and not folder.is_dir():
        raise FileNotFoundError(
            f"{name} not found: looked for {folder} (the python version of the dataset). Run with --download, "
            f"or extract {archive} from https://www.cs.toronto.edu/~kriz/cifar.html into {root}"
        )
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    steps += [transforms.ToTensor(), transforms.Normalize(_MEAN[name], _STD[name])]
    try:
        return cls(str(root), train=train, transform=transforms.Compose(steps), download=download)
    except RuntimeError as err:  # torchvision: files present but failing their checksums
        raise FileNotFoundError(f"{name} under {folder} is incomplete or corrupted ({err}); re-run with --download") from err
