"""The unconstrained features model: dense model, exact reduced dynamics, Lyapunov function."""

from .model import UFM, GDHistory

__all__ = ["UFM", "GDHistory"]
