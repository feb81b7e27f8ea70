"""Reading a run's per-epoch values back: a Lightning ``CSVLogger`` ``metrics.csv``, or a folder holding one."""

from __future__ import annotations

import csv
import math
from pathlib import Path


def find_metrics_csv(path: str | Path) -> Path:
    """``path`` itself if it is a file, else the one ``metrics.csv`` under the folder (CSVLogger nests
    ``name/version_N/``); an error names what was found when there is none or several."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a metrics.csv file nor a run folder")
    found = sorted(path.rglob("metrics.csv"))
    if len(found) != 1:
        what = "no metrics.csv" if not found else f"{len(found)} metrics.csv files ({', '.join(map(str, found[:3]))})"
        raise FileNotFoundError(f"{path} holds {what}: pass the file itself")
    return found[0]


def read_metrics(path: str | Path) -> list[dict]:
    """One dict per measurement point (ascending), merging the rows Lightning writes for it; floats.

    The point is ``epochs_done``, the epochs completed when the values were logged: the
    monitors log it (0 at initialization, fractions for mid-epoch validation runs); for other
    rows it is ``epoch + 1`` (Lightning's ``epoch`` is the 0-based index of the epoch that
    closes). ``epoch`` is kept (``-1``: the monitors' values at initialization).
    """
    rows: dict[float, dict] = {}
    with open(find_metrics_csv(path)) as fh:
        for row in csv.DictReader(fh):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            done = float(row["epochs_done"]) if row.get("epochs_done") else epoch + 1.0
            entry = rows.setdefault(done, {"epoch": epoch, "epochs_done": done})
            for key, value in row.items():
                if value not in ("", None) and key not in ("epoch", "step", "epochs_done"):
                    entry[key] = float(value)
    return [rows[e] for e in sorted(rows)]


def series(table: list[dict], key: str) -> tuple[list[float], list[float]]:
    """``(epochs_done, values)`` of one key, over the epochs that have a finite value of it."""
    points = [(r["epochs_done"], r[key]) for r in table if key in r and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


#: What hadainit commands leave in an output folder: --overwrite empties only a folder holding one of these.
RUN_FILES = ("report.json", "metrics.csv", "runs.json", "compare.json", "slowdown.json")


def check_out(out: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """The run folder ``out``, checked but not touched: a file is refused; a non-empty folder is refused
    unless ``resume`` (a run continued from its checkpoint writes into its own folder) or ``overwrite``,
    and ``overwrite`` only replaces a folder that holds a hadainit output (:data:`RUN_FILES`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        if not overwrite:
            raise FileExistsError(f"--out {out} is not empty: pass --overwrite to replace it, or choose another folder")
        if not any((out / name).exists() for name in RUN_FILES):
            raise FileExistsError(f"--out {out} is not empty and holds no hadainit output ({', '.join(RUN_FILES[:4])}, "
                                  "...): --overwrite only replaces an earlier run's folder; choose another folder")
    return out


def clear_out(out: Path) -> Path:
    """Empty (and create) the checked folder ``out``: nothing old sits beside the new run."""
    import shutil

    if out.is_dir():
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def prepare_out(out: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """:func:`check_out`, then the folder emptied (``overwrite``) or created, ready to write."""
    out = check_out(out, overwrite=overwrite, resume=resume)
    if resume:
        out.mkdir(parents=True, exist_ok=True)
        return out
    return clear_out(out)


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    import os
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would make it (mkstemp's file is private)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it: a race with threads)."""
    import os

    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
