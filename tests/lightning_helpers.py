"""A tiny deterministic Lightning setup for the callback tests (importable by spawned DDP workers)."""

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hadainit

K, D = 5, 16


class TinyModule(L.LightningModule):
    num_classes = K  # how the monitors tell the classifier from the hidden nn.Linear layers

    def __init__(self, init: str = "hadamard", seed: int = 0, lr: float = 0.2) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, D), nn.Tanh())
        self.fc = nn.Linear(D, K)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        if init == "hadamard":
            hadainit.hadamard_(self.fc.weight, generator=gen)
        self.lr = lr

    def forward(self, x):
        return self.fc(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_epoch=True, on_step=False, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.5)


def dataset(n: int = 200):
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(n) % K
    x = torch.randn(n, 8, generator=gen) + 1.5 * nn.functional.one_hot(y, 8).float()
    return TensorDataset(x, y)


class InterleavedSampler(torch.utils.data.Sampler):
    """Rank r of w takes indices r, r + w, ... in order, read at iteration time: with batch size b per rank,
    the union of the ranks' i-th batches is exactly the single-process i-th batch of size w * b.
    (Lightning's own DistributedSampler always shuffles training data.)"""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        dist = torch.distributed
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        return iter(range(rank, self.n, world))

    def __len__(self) -> int:
        dist = torch.distributed
        world = dist.get_world_size() if dist.is_initialized() else 1
        return len(range(0, self.n, world))


def loader(n: int = 200, batch_size: int = 20):
    return DataLoader(dataset(n), batch_size=batch_size, sampler=InterleavedSampler(n))


def trainer(callbacks, max_epochs=3, **kwargs):
    opts = dict(max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                num_sanity_val_steps=0)
    opts.update(kwargs)
    return L.Trainer(**opts)


class ResumableLoader(DataLoader):
    """A DataLoader Lightning can resume mid-epoch: it remembers how many batches it yielded
    (``state_dict``) and skips them on the first pass after ``load_state_dict``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._skip = 0

    def __iter__(self):
        skip, self._skip = self._skip, 0
        self._yielded = skip
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                self._yielded += 1
                yield batch

    def state_dict(self) -> dict:
        return {"yielded": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        self._skip = state["yielded"]


def resumable_loader(n: int = 200, batch_size: int = 20):
    return ResumableLoader(dataset(n), batch_size=batch_size, shuffle=False)


def assert_same_history(a: list[dict], b: list[dict], rel: float = 1e-9, abs_: float = 1e-12, what: str = "") -> None:
    """Two monitor histories agree row by row (scalars and lists such as the singular values)."""
    import math

    assert [h["epoch"] for h in a] == [h["epoch"] for h in b], what
    for ha, hb in zip(a, b):
        assert set(ha) == set(hb), (what, ha["epoch"])
        for key, value in ha.items():
            for x, y in zip(value if isinstance(value, list) else [value], hb[key] if isinstance(value, list) else [hb[key]]):
                assert math.isclose(x, y, rel_tol=rel, abs_tol=abs_), (what, ha["epoch"], key, x, y)


def digits(split: str = "train"):
    """scikit-learn's bundled handwritten digits (K = 10, 8x8, no download): a fixed 1,437 / 360 split."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    idx = order[:cut] if split == "train" else order[cut:]
    return TensorDataset(x[idx], y[idx])


class DigitsMLP(L.LightningModule):
    """A real small network: 64 -> 64 -> 32 -> 10 MLP on the digits, classifier ``fc``."""

    def __init__(self, init: str = "hadamard", seed: int = 0, lr: float = 0.05, num_classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)
        if init == "hadamard":
            hadainit.hadamard_(self.fc.weight, generator=torch.Generator().manual_seed(seed))
            nn.init.zeros_(self.fc.bias)
        self.lr = lr
        self.num_classes = num_classes

    def forward(self, x):
        return self.fc(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def digits_loader(split: str = "train", batch_size: int = 64, shuffle: bool = False):
    return DataLoader(digits(split), batch_size=batch_size, shuffle=shuffle)


def features_of(module, data, body: str = "body"):
    """The classifier's input features of ``data`` in eval mode (an independent pass)."""
    module.eval()
    with torch.no_grad():
        x, y = data.tensors
        return getattr(module, body)(x), y


def assert_values_close(got: dict, ref: dict, rel: float, abs_: float) -> None:
    """Every key of ``ref`` (scalars and lists) matches ``got``."""
    import math

    for key, value in ref.items():
        if isinstance(value, list):
            assert torch.allclose(torch.tensor(got[key]), torch.tensor(value), rtol=rel, atol=abs_), key
        else:
            assert math.isclose(got[key], value, rel_tol=rel, abs_tol=abs_), (key, got[key], value)


def batched_features(module, x, batch_size=20, chunks=1):
    """The body's features of x computed in the shapes the training steps used (batches, chunks).
    float32 products of other shapes round differently, and by how much depends on the BLAS and
    the CPU's instruction set (issue 21): a reference on all rows at once can differ from the
    batched values by ~1e-8 relative on one machine and agree to 1e-12 on another. Computed in
    the same shapes, the features are the same float32 numbers, and only the monitor's float64
    summation order remains.
    """
    module.eval()
    with torch.no_grad():
        return torch.cat([module.body(c) for b in x.split(batch_size) for c in b.chunk(chunks)])


def body_features(module, x):
    """The body's features of all of x at once, in the classifier's dtype (a true-precision run)."""
    with torch.no_grad():
        return module.body(x.to(module.fc.weight.dtype))


def messages(record, text: str) -> list[str]:
    """The messages of the recorded warnings that contain ``text``."""
    return [str(w.message) for w in record if text in str(w.message)]
