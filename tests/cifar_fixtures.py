"""Small synthetic CIFAR-10/100 in the official python on-disk format (pickled dicts, uint8 rows)."""

import os
import pickle
from pathlib import Path

import numpy as np


def _images(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    # a class-dependent colour and pattern plus noise, so a tiny network can learn something
    colours = rng.integers(40, 216, size=(num_classes, 3, 1, 1))
    pattern = rng.integers(-30, 30, size=(num_classes, 3, 32, 32))
    noise = rng.integers(-25, 25, size=(len(labels), 3, 32, 32))
    imgs = np.clip(colours[labels] + pattern[labels] + noise, 0, 255).astype(np.uint8)
    return imgs.reshape(len(labels), 3 * 32 * 32)  # the official row layout: 1024 R, 1024 G, 1024 B


def write_fake_cifar(root: Path, name: str = "cifar10", n_train: int = 300, n_test: int = 100, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    k = 10 if name == "cifar10" else 100
    root = Path(root)
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        labels = np.arange(n_train) % k
        rng.shuffle(labels)
        for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            batch = {"batch_label": f"training batch {i} of 5", "labels": labels[part].tolist(),
                     "data": _images(labels[part], k, np.random.default_rng(seed)), "filenames": []}
            with open(folder / f"data_batch_{i}", "wb") as fh:
                pickle.dump(batch, fh)
        test_labels = np.arange(n_test) % k
        with open(folder / "test_batch", "wb") as fh:
            pickle.dump({"labels": test_labels.tolist(), "data": _images(test_labels, k, np.random.default_rng(seed)),
                         "batch_label": "testing batch 1 of 1", "filenames": []}, fh)
        with open(folder / "batches.meta", "wb") as fh:
            pickle.dump({"label_names": [f"class{i}" for i in range(k)], "num_cases_per_batch": n_train // 5}, fh)
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", n_train), ("test", n_test)):
            labels = np.arange(n) % k
            with open(folder / split, "wb") as fh:
                pickle.dump({"fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                             "data": _images(labels, k, np.random.default_rng(seed)), "filenames": []}, fh)
        with open(folder / "meta", "wb") as fh:
            pickle.dump({"fine_label_names": [f"class{i}" for i in range(k)],
                         "coarse_label_names": [f"super{i}" for i in range(20)]}, fh)
    return root


def skip_checksums(monkeypatch) -> None:
    """torchvision refuses files whose md5 is not the official one: bypass only that check."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
