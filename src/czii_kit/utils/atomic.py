"""Atomic file writes: write to a temp file in the same directory, then rename; and the check, before any work,
that an output folder can be written at all.

A crash mid-write leaves the previous file intact, never a truncated one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temp path next to ``path``; on success rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"cannot write to {path.parent}: directory is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        if Path(tmp).is_file():
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def check_output_folder(path: str | os.PathLike, flag: str = "--out", fix: str | None = None) -> Path:
    """Fail before the work, not after it: ``path`` is a folder, or can become one, that this process may write
    into. Nothing is created: the nearest existing folder at or above it is probed with a temporary file."""
    from czii_kit.errors import DataError

    path = Path(path)
    fix = fix or f"choose another {flag}"
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        where = "is a file, not a folder" if existing == path else f"lies under {existing}, which is a file"
        raise DataError(f"{flag} {path} {where}; {fix}")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".czii-probe-"):
            pass
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot write there ({e.strerror or e}); {fix}") from e
    return path
