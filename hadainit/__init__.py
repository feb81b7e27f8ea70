"""hadainit: Hadamard (spectral) initialization, exact UFM dynamics, neural-collapse tools.

The core (this package) imports only torch (and scipy for ODEs); the Lightning
callbacks live in :mod:`hadainit.callbacks`, the validation runs in
:mod:`hadainit.experiments`.
"""

from .bases import basis_matrix, mode_pairs, paired_spectrum, softmax_basis
from .basis import INIT_BASIS_KINDS, InitialBasis
from .drift import detect_basis, drift, initial_basis, leakage
from .hadamard import constructible_orders, fwht, fwht_kernel_status, hadamard_matrix, is_constructible
from .init import DEFAULT_GAIN, hadamard_, spectral_init
from .modes import MaxMargin, auto_modes, basis_columns, check_modes, first_modes, max_margin, random_modes, truncation_modes

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_GAIN",
    "INIT_BASIS_KINDS",
    "InitialBasis",
    "MaxMargin",
    "auto_modes",
    "basis_columns",
    "basis_matrix",
    "check_modes",
    "constructible_orders",
    "detect_basis",
    "drift",
    "first_modes",
    "fwht",
    "fwht_kernel_status",
    "hadamard_",
    "hadamard_matrix",
    "initial_basis",
    "is_constructible",
    "leakage",
    "max_margin",
    "mode_pairs",
    "paired_spectrum",
    "random_modes",
    "softmax_basis",
    "spectral_init",
    "truncation_modes",
]
