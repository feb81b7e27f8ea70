"""hadainit's compiled CPU kernels: optional, built once, cached.

Two users: :func:`hadainit.fwht` (``csrc/fwht.cpp``, a cache-blocked butterfly
transform) and the reduced GD step (``csrc/reduced_step.cpp``, its elementwise
passes fused; :mod:`hadainit.ufm._fused_step`). The sources ship in the package
and are compiled on first use by torch's extension loader
(:func:`torch.utils.cpp_extension.load`) into torch's extension cache,
``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``, in a folder whose
name carries a hash of the sources, the compiler flags and the
torch/Python versions: a change of any of them builds a new copy, and a
finished build is imported directly on later runs (no compiler call, no
``torch.utils.cpp_extension`` import).

Nothing here is required: without a C++ compiler, with a broken one, or with
``HADAINIT_NO_EXTENSION=1`` in the environment (read at the first call),
:func:`kernel` returns None and both users run their pure-PyTorch paths,
which are also the references the tests hold the kernels to. :func:`status`
says which path is in use and why.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["DISABLE_ENV", "ISA_ENV", "KernelStatus", "kernel", "kernel_isa", "status"]

#: Set to 1 (before the first fwht call) to never build or load the kernel.
DISABLE_ENV = "HADAINIT_NO_EXTENSION"

CSRC = Path(__file__).with_name("csrc")
SOURCES = ("fwht.cpp", "reduced_step.cpp", "module.cpp")  # compiled
HEADERS = ("fwht_kernel.h", "kernels.h", "simd.h")  # hashed too
_MARKER = "hadainit_build.json"  # written after a build that imported: the .so is complete

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_module: ModuleType | None = None
_status: KernelStatus | None = None


@dataclass(frozen=True)
class KernelStatus:
    """Which ``fwht`` path is in use on the CPU, and why.

    ``available``: the compiled kernel is loaded. ``reason``: ``"loaded from
    cache"``, ``"built"``, ``"built by another process (waited for it)"``,
    ``"disabled by HADAINIT_NO_EXTENSION"`` or the build error. ``build_seconds``: the wall time of the first build (recorded
    when it happened, possibly in another process); ``load_seconds``: this
    process's time to obtain the module; ``directory``: the build folder.
    """

    available: bool
    reason: str
    directory: str | None = None
    build_seconds: float | None = None
    load_seconds: float | None = None
    flags: tuple[str, ...] = ()


#: The x86-64 instruction set the kernel is compiled for: ``native`` (default: the level torch
#: itself dispatches to, so ``ATEN_CPU_CAPABILITY=avx2`` caps both), ``avx512``, ``avx2`` or
#: ``sse`` (no -m flags: the x86-64 baseline, SSE2). Read at the first call; part of the cache key.
ISA_ENV = "HADAINIT_KERNEL_ISA"
ISAS = ("native", "avx512", "avx2", "sse")
_ISA_FLAGS = {
    "avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw"],
    "avx2": ["-mavx2", "-mfma"],
    "sse": [],
}


def kernel_isa() -> str:
    """The ISA the kernel is (or will be) built for: ``$HADAINIT_KERNEL_ISA`` resolved against torch's dispatch level."""
    asked = os.environ.get(ISA_ENV, "").strip().lower() or "native"
    if asked not in ISAS:
        raise ValueError(f"{ISA_ENV} must be one of {ISAS}, got {asked!r}")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "native"
    capability = torch.backends.cpu.get_cpu_capability()
    supported = "avx512" if capability.startswith("AVX512") else "avx2" if capability.startswith("AVX2") else "sse"
    if asked == "native":
        return supported
    if ISAS.index(asked) < ISAS.index(supported):  # asked for more than this CPU (or the cap) allows
        raise ValueError(f"{ISA_ENV}={asked} but torch dispatches to {capability} here "
                         f"(ATEN_CPU_CAPABILITY or the CPU caps it); use one of {ISAS[ISAS.index(supported):]}")
    return asked


def _compile_flags() -> tuple[list[str], list[str]]:
    """(cflags, ldflags): -O3, the SIMD level of :func:`kernel_isa`, OpenMP where torch uses it."""
    cflags = ["-O3", "-ffp-contract=off"]  # no fused multiply-add: the step's values are the reference's, bit for bit
    ldflags: list[str] = []
    isa = kernel_isa()
    cflags += _ISA_FLAGS.get(isa, [])
    # at::parallel_for is inline: without -fopenmp it would run on one thread. The loader finds
    # torch's own libgomp.so.1 already in the process, so both share one OpenMP runtime.
    if sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info():
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags


def _extensions_root() -> Path:
    """torch's extension cache: $TORCH_EXTENSIONS_DIR, else <user cache>/torch_extensions/py<ver>_<accelerator>."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root)
    try:
        from torch import _appdirs

        base = Path(_appdirs.user_cache_dir(appname="torch_extensions"))
    except Exception:  # pragma: no cover - a torch without its private appdirs module
        base = Path.home() / ".cache" / "torch_extensions"
    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    return base / f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}_{accelerator}"


def _name(cflags: list[str], ldflags: list[str]) -> str:
    digest = hashlib.sha256()
    sources = [(CSRC / name).read_bytes() for name in (*SOURCES, *HEADERS)]
    for part in (*sources, repr((cflags, ldflags)).encode(), torch.__version__.encode(),
                 sys.version.encode(), os.environ.get("CXX", "").encode()):
        digest.update(part)
        digest.update(b"\0")
    return f"hadainit_kernels_{digest.hexdigest()[:16]}"


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _library_path(directory: Path, name: str) -> Path:
    return directory / f"{name}{'.pyd' if sys.platform == 'win32' else '.so'}"


def _load() -> tuple[ModuleType | None, KernelStatus]:
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        return None, KernelStatus(False, f"disabled by {DISABLE_ENV}")
    start = time.perf_counter()
    try:
        cflags, ldflags = _compile_flags()
        name = _name(cflags, ldflags)
        directory = _extensions_root() / name
    except Exception as exc:  # e.g. the package data is missing
        return None, KernelStatus(False, f"cannot prepare the build: {type(exc).__name__}: {exc}")
    library, marker = _library_path(directory, name), directory / _MARKER
    if marker.exists() and library.exists():
        try:
            module = _import(name, library)
            recorded = json.loads(marker.read_text()).get("build_seconds")
            return module, KernelStatus(True, "loaded from cache", str(directory), recorded,
                                        time.perf_counter() - start, tuple(cflags))
        except Exception as exc:
            return None, KernelStatus(False, f"the cached kernel in {directory} cannot be loaded "
                                             f"({type(exc).__name__}: {exc}); delete the folder to rebuild")
    missing = [tool for tool in (os.environ.get("CXX", "c++"), "ninja") if shutil.which(tool) is None]
    if missing:  # the common case without a toolchain: say so without importing the build machinery
        return None, KernelStatus(False, f"no {' or '.join(missing)} on PATH (a C++ compiler and ninja build the kernel)",
                                  str(directory))
    try:
        existed = library.exists()
        marked = marker.exists()  # a marker left beside a deleted library is not another process's build
        _log.info("hadainit: compiling the CPU kernels once into %s", directory)
        from torch.utils.cpp_extension import load  # imports setuptools: only when building

        directory.mkdir(parents=True, exist_ok=True)
        module = load(name, [str(CSRC / source) for source in SOURCES], extra_cflags=cflags, extra_ldflags=ldflags,
                      build_directory=str(directory), verbose=False)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        _log.info("hadainit: the CPU kernels could not be built (%s); using the pure-PyTorch paths", first_line)
        hint = f"; a build was left in {directory}: delete the folder to rebuild" if existed else ""
        return None, KernelStatus(False, f"build failed: {type(exc).__name__}: {first_line}{hint}", str(directory))
    seconds = time.perf_counter() - start
    if marker.exists() and not marked:  # another process finished the build while this one waited for it
        try:
            recorded = json.loads(marker.read_text()).get("build_seconds")
        except (OSError, ValueError):
            recorded = None
        return module, KernelStatus(True, "built by another process (waited for it)", str(directory), recorded,
                                    seconds, tuple(cflags))
    recorded = None if existed else seconds  # a library was there already: this process only linked/loaded it
    if not marker.exists() or marked:
        try:
            tmp = marker.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"build_seconds": recorded, "flags": cflags, "built": time.time()}))
            os.replace(tmp, marker)
        except OSError:  # a read-only cache still works, it is just not marked
            pass
    return module, KernelStatus(True, "built", str(directory), recorded, seconds, tuple(cflags))


def kernel() -> ModuleType | None:
    """The compiled module (``fwht``, ``fwht_`` and the step's passes), building it on the first call; None if unavailable."""
    global _module, _status
    if _status is None:
        with _lock:
            if _status is None:
                _module, _status = _load()
    return _module


def status() -> KernelStatus:
    """Whether the compiled kernel is in use (building or loading it first if not yet tried)."""
    kernel()
    assert _status is not None
    return _status


def _reset() -> None:
    """Forget the loaded state (tests: the next :func:`kernel` call decides again)."""
    global _module, _status
    with _lock:
        _module, _status = None, None
