"""The regular wheel (not only the editable install) carries hadainit.callbacks and .experiments."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_callbacks_and_experiments_into_the_namespace(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("hadainit", "callbacks", "experiments"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("hadainit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hadainit/callbacks/__init__.py" in names
    assert "hadainit/experiments/cli.py" in names
    # the optional CPU kernels are built from these on first use
    assert {"hadainit/csrc/fwht.cpp", "hadainit/csrc/reduced_step.cpp", "hadainit/csrc/fwht_kernel.h"} <= set(names)
    assert not any(n.startswith(("callbacks/", "experiments/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "hadainit = hadainit.experiments.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True
    )
    code = (
        "import sys, hadainit, hadainit.callbacks, hadainit.experiments, hadainit.experiments.cli;"
        "print(hadainit.__file__); print(hadainit.callbacks.__file__); print(hadainit.experiments.cli.__file__)"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    files = out.stdout.split()
    assert len(files) == 3 and all(f.startswith(str(target)) for f in files), out.stdout
