"""Atomic file writes: write a temporary file beside the target, fsync, then rename over it.

A reader (or a crash) sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

#: a test's fault injector: called as ``FAULT_HOOK(stage, path)`` at each stage of every atomic write
#: (``"write"`` before the temporary file, ``"rename"`` with it whole and fsynced, ``"renamed"`` after the
#: rename), and at ``"write"`` before the run folder's lock records its pid; it may raise (a simulated death,
#: an ``OSError(ENOSPC)``). ``None`` outside tests.
FAULT_HOOK: Callable[[str, Path], None] | None = None


def fault_point(stage: str, path: Path) -> None:
    """Where a test may inject a fault (:data:`FAULT_HOOK`); nothing otherwise."""
    if FAULT_HOOK is not None:
        FAULT_HOOK(stage, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, with the mode a plain ``open`` would give (0666 less
    the umask; ``mkstemp`` alone would leave 0600, unreadable to other users and services)."""
    path = Path(path)
    try:
        fault_point("write", path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _named(e, path) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault_point("rename", path)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _named(e, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fault_point("renamed", path)
    return path


def _named(e: OSError, path: Path) -> OSError:
    """``e`` naming the file being written (a write or fsync's error names none: "cannot write  (No space
    left on device)")."""
    if e.filename:
        return e
    named = OSError(e.errno, e.strerror or str(e), str(path))
    return named


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def check_creatable_dir(path: str | os.PathLike) -> Path:
    """Raise ``OSError`` unless ``path`` is a writable folder or could be created as one; creates nothing."""
    path = Path(path).absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(probe))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied", str(probe))
    return path


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) and prove a file can be written there; ``OSError`` if not."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".write-probe.")
    os.close(fd)
    os.unlink(tmp)
    return path
