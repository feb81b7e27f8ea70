"""Output folders: hadainit empties only a folder it can prove it made, and one command writes into it at a time.

* The marker :data:`MARKER` (``.hadainit-run``, a small JSON file) is written into every output
  folder a hadainit command makes, when it starts writing there. ``--overwrite`` empties a
  non-empty folder only when it holds the marker; never the working directory (or a folder
  holding it), never a folder that is (or holds) an input of the same command.
* The lock :data:`LOCK` (``.hadainit-lock``, created with ``O_EXCL``, holding the pid and host) is
  held while a command writes into the folder: a second command into the same folder is refused.
  A lock whose process is gone (same host, no such pid) is stale and taken over.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     with prepare(Path(tmp) / "run", command="doc") as folder:
...         sorted(p.name for p in folder.path.iterdir())
['.hadainit-lock', '.hadainit-run']
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Iterable

MARKER = ".hadainit-run"
LOCK = ".hadainit-lock"


def _inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies under it (both resolved)."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def check_out(out: str | Path, *, overwrite: bool = False, resume: bool = False, inputs: Iterable[str | Path] = (),
              option: str = "--out") -> Path:
    """The output folder ``out``, checked but not touched.

    Refused (``ValueError``/``FileExistsError``, naming the fix): an empty name (an unset shell
    variable); a path under a file; a folder that is, or holds, one of ``inputs``; a non-empty
    folder unless ``resume`` or ``overwrite``; and with ``overwrite``, a folder without
    :data:`MARKER` or one that is (or holds) the working directory.

    Args:
        out: the folder.
        overwrite: a non-empty folder may be emptied (if hadainit made it).
        resume: a run continued from its checkpoint writes into its own, non-empty folder.
        inputs: what the command reads (runs to compare, a checkpoint): never emptied.
        option: the option's name, for the messages.
    """
    if isinstance(out, str) and not out.strip():
        raise ValueError(f"{option} is empty (an unset shell variable?): name the output folder")
    out = Path(out)
    for parent in (out, *out.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                where = "is a file" if parent == out else f"lies under {parent}, which is a file"
                raise FileExistsError(f"{option} {out} {where}, not a folder")
            break
    for item in inputs:
        if _inside(Path(item), out):
            raise ValueError(f"{option} {out} is (or holds) the input {item}: write the output to another folder")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not resume:
        if not overwrite:
            raise FileExistsError(f"{option} {out} is not empty: pass --overwrite to replace it, or choose another folder")
        if _inside(Path.cwd(), out):
            raise FileExistsError(f"{option} {out} is the working directory (or holds it): --overwrite never empties "
                                  "it; choose a subfolder")
        if not (out / MARKER).is_file():
            raise FileExistsError(f"{option} {out} is not empty and holds no hadainit output (no {MARKER} marker, "
                                  "which every hadainit command writes into the folders it makes): --overwrite only "
                                  "replaces such a folder; choose another folder, or empty it yourself")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def _stale(text: str | None) -> bool:
    """A lock written on this host by a process that is gone (or unreadable: half written long ago)."""
    parts = (text or "").split()
    if len(parts) < 2 or not parts[0].isdigit():
        return text is not None
    return parts[1] == socket.gethostname() and not _pid_alive(int(parts[0]))


class OutputFolder:
    """An output folder this process holds the lock of (see the module docstring); a context manager."""

    def __init__(self, path: Path, created: bool, token: str, was_empty: bool = False) -> None:
        self.path, self.created, self.was_empty, self._token = path, created, was_empty or created, token
        self._held = True
        atexit.register(self.release)

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    def clear(self) -> None:
        """Empty the folder, all but the lock."""
        for child in self.path.iterdir():
            if child.name == LOCK:
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    def mark(self, command: str) -> None:
        """Write :data:`MARKER`: this folder is hadainit's (``--overwrite`` may empty it later)."""
        record = {"command": command, "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (self.path / MARKER).write_text(json.dumps(record) + "\n")

    def discard(self) -> None:
        """Undo a command that failed before writing anything worth keeping: a folder it created is removed,
        another one is emptied back to its marker (so ``--overwrite`` can reuse it)."""
        for child in self.path.iterdir():
            if child.name not in (LOCK, MARKER):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        if self.was_empty:
            (self.path / MARKER).unlink(missing_ok=True)
        self.release()
        if self.created:
            try:
                self.path.rmdir()
            except OSError:
                pass

    def release(self) -> None:
        """Remove the lock (if it is still this process's)."""
        if not self._held:
            return
        self._held = False
        atexit.unregister(self.release)
        if _read(self.lock) == self._token:
            self.lock.unlink(missing_ok=True)

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim(out: Path, *, option: str = "--out") -> OutputFolder:
    """Create ``out`` (and its parents) and take its lock; ``FileExistsError`` while another live process holds it."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    was_empty = not any(p.name != LOCK for p in out.iterdir())
    lock = out / LOCK
    token = f"{os.getpid()} {socket.gethostname()} {time.time():.6f}\n"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            seen = _read(lock)
            if not _stale(seen):
                holder = (seen or "?").split()
                who = f"pid {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
                raise FileExistsError(f"{option} {out} is in use by another hadainit command ({who}): wait for it, "
                                      f"or choose another folder (if no command is running, remove {lock})") from None
            _take_over(lock, seen)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        return OutputFolder(out, created, token, was_empty)
    raise FileExistsError(f"{option} {out}: could not take the lock {lock} (another command keeps taking it)")


def _take_over(lock: Path, seen: str | None) -> None:
    """Remove the stale lock ``seen``, and only it: a lock taken meanwhile by another process is put back."""
    aside = lock.with_name(f"{LOCK}.stale-{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # someone else removed it
    if _read(aside) != seen:  # a fresh lock replaced the stale one between our read and the rename
        try:
            os.link(aside, lock)
        except OSError as err:
            if err.errno != errno.EEXIST:
                raise
    aside.unlink(missing_ok=True)


def prepare(out: str | Path, *, command: str, overwrite: bool = False, resume: bool = False,
            inputs: Iterable[str | Path] = (), option: str = "--out") -> OutputFolder:
    """:func:`check_out`, :func:`claim`, then (unless ``resume``) the folder emptied; marked as ``command``'s.

    The caller releases the lock (``with prepare(...) as folder:``, or ``folder.release()``).
    """
    inputs = list(inputs)
    path = check_out(out, overwrite=overwrite, resume=resume, inputs=inputs, option=option)
    folder = claim(path, option=option)
    try:
        check_out(path, overwrite=overwrite, resume=resume, inputs=inputs, option=option)  # again, under the lock
        if not resume:
            folder.clear()
        folder.mark(command)
    except BaseException:
        folder.release()
        raise
    return folder


def prepare_out(out: str | Path, *, overwrite: bool = False, resume: bool = False, command: str = "hadainit",
                inputs: Iterable[str | Path] = ()) -> Path:
    """:func:`prepare` for commands that write their folder and exit: the lock is released at exit.

    A drop-in for ``hadainit.experiments.runs.prepare_out`` (same arguments and result).
    """
    return prepare(out, command=command, overwrite=overwrite, resume=resume, inputs=inputs).path
