"""Thread counts for small dense linear algebra (issue 21, item 3's family).

torch's intra-op threads also drive MKL's LAPACK. On a machine whose cores are shared
(another process, a data loader, a CI neighbour) a multi-threaded LAPACK call on a small
matrix spends its time in OpenMP barriers: measured on 2 shared cores, ``eigh`` of a
512 x 512 float64 matrix took 7.1-7.2 s with 2 threads against 0.05 s with one. Such
calls (:func:`lapack`) run on one thread below :data:`ONE_THREAD_UP_TO`, where one
thread is as fast on a quiet machine anyway; larger ones keep torch's setting.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

#: matrices whose smaller dimension is at most this run their LAPACK call on one thread
ONE_THREAD_UP_TO = 1024


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads (at most the current number), restored after."""
    before = torch.get_num_threads()
    count = max(1, min(count, before))
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def lapack(*shape: int):
    """The thread context for a LAPACK call on a matrix of ``shape``: one thread when it is small."""
    return threads(1) if min(shape) <= ONE_THREAD_UP_TO else contextlib.nullcontext()
