"""hadainit: Hadamard (spectral) initialization, exact UFM dynamics, neural-collapse tools.

The core (this package) imports only torch (and scipy for ODEs); the Lightning
callbacks live in :mod:`hadainit.callbacks`, the validation runs in
:mod:`hadainit.experiments`.
"""

from .bases import basis_matrix, leakage, mode_pairs, softmax_basis
from .hadamard import constructible_orders, fwht, hadamard_matrix, is_constructible
from .init import DEFAULT_GAIN, hadamard_, spectral_init, spectral_record

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_GAIN",
    "basis_matrix",
    "constructible_orders",
    "fwht",
    "hadamard_",
    "hadamard_matrix",
    "is_constructible",
    "leakage",
    "mode_pairs",
    "softmax_basis",
    "spectral_init",
    "spectral_record",
]
