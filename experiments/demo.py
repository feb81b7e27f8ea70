"""The foundation demo: dense UFM gradient descent from four initializations.

Spectral inits in a softmax-diagonalizing basis (walsh, fourier) keep their
singular vectors frozen to round-off; a Paley Hadamard basis and a small random
init do not. Run as ``python -m hadainit.experiments.demo`` (``make demo``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from hadainit.bases import paired_spectrum
from hadainit.ufm import UFM

FEATURE_DIM = 32


def _spectrum(k: int, basis: str, gen: torch.Generator) -> torch.Tensor:
    return paired_spectrum(0.2 + 1.8 * torch.rand(k, generator=gen, dtype=torch.float64), basis)


def run_demo(steps: int = 2000, lr: float = 1.0, seed: int = 0) -> list[dict]:
    """Train the four inits; one row per init with the final loss and the max leakage over training."""
    gen = torch.Generator().manual_seed(seed)
    models = {
        "walsh spectral (K=16)": UFM.from_spectrum(16, FEATURE_DIM, _spectrum(16, "walsh", gen), basis="walsh", generator=gen),
        "fourier spectral (K=10)": UFM.from_spectrum(
            10, FEATURE_DIM, _spectrum(10, "fourier", gen), basis="fourier", generator=gen
        ),
        "Paley-12 rows (K=12)": UFM.from_spectrum(
            12, FEATURE_DIM, _spectrum(12, "hadamard", gen), basis="hadamard", generator=gen
        ),
        "small random (K=16)": UFM.random(16, FEATURE_DIM, std=0.1, generator=gen),
    }
    rows = []
    for name, model in models.items():
        start = time.perf_counter()
        hist = model.gradient_descent(lr, steps, record=("loss", "leakage"), record_every=max(1, steps // 100))
        rows.append(
            {
                "init": name,
                "final_loss": hist.loss[-1].item(),
                "leakage_W": hist.leakage_W[-1].item(),
                "max_leakage_W": hist.leakage_W.max().item(),
                "seconds": time.perf_counter() - start,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hadainit demo", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        rows = run_demo(args.steps, args.lr, args.seed)
    except ValueError as err:  # a bad --lr / --steps: one line, no traceback
        print(f"hadainit demo: error: {err}", file=sys.stderr)
        return 2
    print(f"dense UFM, d={FEATURE_DIM}, {args.steps} GD steps, lr={args.lr}, float64")
    print("leakage = ||offdiag(Q^T W V)||_F / ||W||_F in the initial basis (Q, V)")
    print(f"{'init':<26}{'final loss':>14}{'final leakage':>16}{'max leakage':>14}")
    for row in rows:
        print(f"{row['init']:<26}{row['final_loss']:>14.3e}{row['leakage_W']:>16.3e}{row['max_leakage_W']:>14.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
