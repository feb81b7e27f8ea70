"""hadainit._threads: small LAPACK calls run on one thread (multi-threaded LAPACK on small matrices collapses on
shared cores: 7 s vs 0.05 s for a 512 x 512 eigh, measured), larger ones keep torch's threads; the count is restored."""

import torch

from hadainit import _threads
from hadainit.metrics import functional


def _spy(monkeypatch, name):
    seen = []
    real = getattr(torch.linalg, name)

    def wrapped(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, name, wrapped)
    return seen


def test_small_lapack_calls_run_on_one_thread_and_the_count_is_restored(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        eigh, svdvals = _spy(monkeypatch, "eigh"), _spy(monkeypatch, "svdvals")
        gen = torch.Generator().manual_seed(0)
        feats, labels = torch.randn(120, 16, generator=gen, dtype=torch.float64), torch.arange(120) % 6
        functional.neural_collapse(feats, labels, torch.randn(6, 16, generator=gen, dtype=torch.float64))
        assert eigh and set(eigh) == {1}  # NC1's eigendecomposition
        assert svdvals and set(svdvals) == {1}  # the KL value's singular values
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_threshold():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with _threads.lapack(_threads.ONE_THREAD_UP_TO, 5000):
            assert torch.get_num_threads() == 1
        with _threads.lapack(_threads.ONE_THREAD_UP_TO + 1, 5000):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
