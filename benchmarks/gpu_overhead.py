"""Callback overhead on a GPU: ResNet-18, bf16-mixed, CIFAR-shaped synthetic data, with vs without the monitors.

``python -m benchmarks.gpu_overhead [--epochs 2] [--images 12800] [--out results_gpu_overhead.json]``.
Runs alternate (without, with, without, with) and report the median training steps per second over the
epochs after the first (the first includes cuDNN autotuning and warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from hadainit.callbacks import NeuralCollapseMonitor, SpectralMonitor
from hadainit.experiments.train import ClassifierModule, Throughput


def run_once(with_monitors: bool, args) -> list[float]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.images,), generator=gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True, num_workers=2,
                        pin_memory=True, persistent_workers=True)
    throughput = Throughput()
    callbacks = [throughput]
    if with_monitors:
        callbacks += [NeuralCollapseMonitor(classifier="model.fc"), SpectralMonitor(classifier="model.fc")]
    trainer = L.Trainer(max_epochs=args.epochs, accelerator=args.accelerator, devices=1, precision=args.precision,
                        callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(ClassifierModule("resnet18", 10, "hadamard"), loader)
    return throughput.steps_per_second


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--images", type=int, default=12800)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--accelerator", default="gpu")
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--out", type=Path, default=Path("results_gpu_overhead.json"))
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    results = {"without": [], "with": []}
    for _ in range(args.repeats):
        for label in ("without", "with"):
            sps = run_once(label == "with", args)
            results[label].extend(sps[1:] or sps)
            print(f"{label} monitors: steps/s by epoch {[round(s, 2) for s in sps]}", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    overhead = 1 - med["with"] / med["without"]
    summary = {"steps_per_second": med, "overhead": overhead, "samples": results, "config": vars(args) | {"out": str(args.out)},
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"median steps/s without {med['without']:.2f}, with {med['with']:.2f}: overhead {100 * overhead:.2f}% (goal < 3%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
