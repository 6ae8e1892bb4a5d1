"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The file is written to a temporary name in the target's folder (same file system, so the
rename is atomic), flushed to disk (``fsync``), optionally checked by a ``verify``
callable, and only then moved over the target with ``os.replace``. On any error the
temporary file is removed and the target is left as it was.

The temporary name keeps the target's extension (``.seg.nii.gz`` -> ``.seg.tmpXXXX.nii.gz``
style), so writers that choose the format from the name (SimpleITK) work through
:func:`atomic_write`'s callback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "orphaned_temps",
]

Verify = Callable[[Path], Any]


def _suffixes(path: Path) -> str:
    """``a.nii.gz`` -> ``.nii.gz``; ``a.pt`` -> ``.pt``; ``a`` -> ``""``."""
    name = path.name.lstrip(".")
    return "".join(Path(name).suffixes[-2:]) if name.endswith(".gz") else Path(name).suffix


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0)  # (read once: setting it is not thread-safe)
    os.umask(mask)
    return mask


def _temp_parts(path: Path) -> tuple[str, str]:
    """``(prefix, suffix)`` of the temporary names of ``path``: ``.<stem>.`` and
    ``.tmp<ext>``, with a random part of 8 characters between them (``mkstemp``)."""
    ext = _suffixes(path)
    stem = path.name[: len(path.name) - len(ext)] if ext else path.name
    # the temporary name adds ~15 bytes: keep it within the usual 255-byte name limit
    room = 255 - 16 - len(os.fsencode(ext))
    stem = os.fsdecode(os.fsencode(stem)[:room]) if len(os.fsencode(stem)) > room else stem
    return f".{stem}.", f".tmp{ext}"


def _temp_beside(path: Path) -> tuple[int, Path]:
    """An open descriptor and the name of a new hidden file beside ``path``, same extension."""
    prefix, suffix = _temp_parts(path)
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    return fd, Path(name)


def orphaned_temps(path: str | os.PathLike) -> list[Path]:
    """The temporary files that atomic writes of ``path`` (this very name, no other)
    left behind, e.g. when the writing process was killed: ``.<stem>.XXXXXXXX.tmp<ext>``
    beside it. Call only when no other process is writing ``path``."""
    path = Path(path)
    prefix, suffix = _temp_parts(path)
    pattern = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}" + re.escape(suffix))
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return sorted(path.parent / n for n in names if pattern.fullmatch(n))


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def _replacing(path: Path, verify: Verify | None) -> Iterator[tuple[int, Path]]:
    """``with _replacing(path, verify) as (fd, tmp):`` write the data to ``tmp`` (``fd`` is
    its open descriptor, for the block to use or close) and make it reach the disk; on
    leaving the block ``tmp`` gets the usual mode, ``verify(tmp)`` runs and ``tmp`` replaces
    ``path``. An error anywhere removes ``tmp`` and leaves ``path`` as it was."""
    fd, tmp = _temp_beside(path)
    try:
        yield fd, tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[Path], Any],
    *,
    verify: Verify | None = None,
    mkdir: bool = True,
) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then move it onto ``path``.

    ``write`` receives a path in the same folder with the same extension (for
    ``sitk.WriteImage``, ``torch.save(obj, path)``...). ``verify(tmp_path)`` runs after the
    data reached the disk and before the rename; raising there keeps the old file.
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path, verify) as (fd, tmp):
        os.close(fd)
        write(tmp)
        _fsync_file(tmp)
    return path


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    encoding: str | None = "utf-8",
    newline: str | None = None,
    verify: Verify | None = None,
) -> Iterator[IO[Any]]:
    """``with atomic_open(path, "w") as fh: ...``: the file appears complete on leaving the
    block without an error, and not at all (the old one stays) otherwise."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', got {mode!r}")
    binary = mode == "wb"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path, verify) as (fd, tmp):
        kwargs = {} if binary else {"encoding": encoding, "newline": newline}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, *, verify: Verify | None = None
) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), verify=verify)


def atomic_write_text(
    path: str | os.PathLike,
    text: str,
    *,
    encoding: str = "utf-8",
    newline: str | None = None,
    verify: Verify | None = None,
) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding=encoding, newline=newline) as fh:
            fh.write(text)

    return atomic_write(path, write, verify=verify)
