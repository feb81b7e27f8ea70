"""`python -m benchmarks [--device cuda] [--threads N] [--quick] [--isa native,avx2]`: print the table, write results.json.

The rows whose speed depends on the instruction set (the compiled fwht and the reduced step) are
run once per ISA in ``--isa``: ``native`` in this process, each other one in a child process with
torch's dispatch, MKL and oneDNN capped to it and the kernel built for it
(``HADAINIT_KERNEL_ISA``), so an AVX-512 machine also reports what an AVX2-only one would run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .suite import ISA_ROWS, format_table, run_suite

#: The environment that makes this process run as on a CPU with at most that ISA.
ISA_ENV = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "HADAINIT_KERNEL_ISA": "avx2"},
    "sse": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41",
            "HADAINIT_KERNEL_ISA": "sse"},
}


def _default_isas() -> str:
    """native, plus avx2 where the native level is above it (x86-64 with AVX-512)."""
    return "native,avx2" if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else "native"


def _isa_rows(isa: str, args: argparse.Namespace) -> list[dict]:
    """The ISA-dependent rows, run in a child process under ``ISA_ENV[isa]``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        cmd = [sys.executable, "-m", "benchmarks", "--only", ",".join(ISA_ROWS), "--isa", "native", "--out", str(out)]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        subprocess.run(cmd, check=True, env={**os.environ, **ISA_ENV[isa]}, stdout=subprocess.DEVNULL)
        rows = json.loads(out.read_text())["results"]
    return [row for row in rows if row.get("isa") == isa]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the suite runs")
    parser.add_argument("--only", default=None, help="run the rows whose function name contains one of these (comma-separated)")
    parser.add_argument("--isa", default=None,
                        help=f"ISAs for the ISA-dependent rows, comma-separated, from native,{','.join(ISA_ENV)} "
                             f"(default here: {_default_isas()})")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args(argv)
    isas = [s.strip() for s in (args.isa or _default_isas()).split(",") if s.strip()]
    unknown = [s for s in isas if s != "native" and s not in ISA_ENV]
    if unknown or "native" not in isas:
        parser.error(f"--isa takes native plus any of {sorted(ISA_ENV)}, got {args.isa!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    progress = lambda msg: print(f"... {msg}", file=sys.stderr, flush=True)  # noqa: E731
    results = run_suite(device, args.quick, only=args.only, progress=progress)
    if device.type == "cpu":
        for isa in isas:
            if isa != "native":
                progress(f"the ISA-dependent rows again as on an {isa} CPU (a child process)")
                results.extend(_isa_rows(isa, args))
    meta = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
    }
    print(f"device {meta['device']} ({meta['device_name']}, {meta['cpu_capability']}), {meta['threads']} threads, torch {meta['torch']}")
    print(format_table(results))
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {args.out} ({meta['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
