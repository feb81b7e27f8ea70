"""The unconstrained features model: dense model, exact reduced dynamics, Lyapunov function."""

from .dynamics import SpectralFlowResult, SpectralGDResult, spectral_flow, spectral_gd, time_to_margin
from .lyapunov import (
    coefficient_of_variation,
    etf_angle,
    kl_lyapunov,
    lyapunov_derivative,
    unbalanced_lyapunov,
    unbalanced_lyapunov_derivative,
)
from .model import UFM, GDHistory
from .spectral import class0_logits, margins, softmax_spectrum

__all__ = [
    "UFM",
    "GDHistory",
    "SpectralFlowResult",
    "SpectralGDResult",
    "class0_logits",
    "coefficient_of_variation",
    "etf_angle",
    "kl_lyapunov",
    "lyapunov_derivative",
    "margins",
    "softmax_spectrum",
    "spectral_flow",
    "spectral_gd",
    "time_to_margin",
    "unbalanced_lyapunov",
    "unbalanced_lyapunov_derivative",
]
