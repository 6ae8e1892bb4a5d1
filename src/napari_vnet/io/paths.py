"""File names SimpleITK can open, and printable names for messages.

SimpleITK's Python binding converts a ``str`` path to a C++ ``std::string`` through
UTF-8; a name that is not valid UTF-8 on disk (Latin-1 bytes from a Windows share or an
old zip archive) reaches Python as a ``str`` with lone surrogates (PEP 383), the
conversion yields a null pointer and ITK aborts the whole process (SIGABRT, not an
exception). So every path handed to SimpleITK goes through :func:`itk_names`: names that
encode as UTF-8 pass unchanged; otherwise the files are reached through symbolic links
with ASCII names in a private temporary folder (companions such as ``.raw`` data files
are linked beside them under the names the header uses).

:func:`printable` turns any path into text that can be printed and shown in Qt (the
undecodable bytes become ``\\xe9`` escapes); :func:`slug` makes a safe file name part
from any text; :func:`same_file` says whether two names (any spelling) are one file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def printable(path: str | os.PathLike | bytes) -> str:
    """``path`` as text that encodes as UTF-8 (undecodable bytes shown as ``\\xNN``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def slug(text: str, *, fallback: str, limit: int = 60) -> str:
    """``text`` as a file name part: runs of anything but ASCII letters, digits, ``.``,
    ``_`` and ``-`` become one ``_``, leading/trailing ``.``/``_`` are dropped, at most
    ``limit`` characters; ``fallback`` when nothing is left."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return s[:limit] or fallback


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file, in any spelling (relative paths,
    symbolic or hard links); for names not (both) there yet, whether they resolve alike."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def itk_safe(path: str | os.PathLike) -> bool:
    """True when SimpleITK can take ``path`` as it is (it encodes as UTF-8)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ext(name: bytes) -> str:
    """The (ASCII) file extension of a raw name, double extensions kept whole."""
    low = name.lower()
    for ext in (b".nii.gz", b".gipl.gz", b".raw.gz", b".img.gz"):
        if low.endswith(ext):
            return ext.decode()
    ext = os.path.splitext(low)[1]
    try:
        return ext.decode("ascii")
    except UnicodeDecodeError:
        return ""


def _stem(name: bytes) -> bytes:
    ext = _ext(name)
    return name[: len(name) - len(ext)] if ext else name


@contextmanager
def itk_names(
    paths: Sequence[str | os.PathLike], companions: Sequence[str | os.PathLike] = ()
) -> Iterator[list[str]]:
    """Names SimpleITK accepts for ``paths`` (same order), valid inside the ``with``.

    ``companions`` are files the first path's header refers to (data files of
    ``.mhd``/``.nhdr``/``.hdr``); when aliases are needed they are linked beside it
    under their names relative to its folder (and, for an ``.hdr``/``.img`` pair, under
    the alias's stem too). Raises :class:`VolumeReadError` naming the file when no
    alias can be made (a file system without symbolic links).
    """
    if all(itk_safe(p) for p in paths):
        yield [os.fspath(p) for p in paths]
        return
    folder = tempfile.mkdtemp(prefix="napari-vnet-names-")
    try:
        out: list[str] = []
        many = len(paths) > 1
        for i, p in enumerate(paths):
            raw = os.fsencode(os.path.abspath(p))
            name = os.path.basename(raw)
            if many:
                alias = f"{i:06d}{_ext(name)}"
            elif itk_safe(os.fsdecode(name)):
                alias = os.fsdecode(name)
            else:
                alias = "n" + hashlib.sha1(_stem(name)).hexdigest()[:10] + _ext(name)
            target = os.path.join(folder, alias)
            _link(raw, target, p)
            out.append(target)
        if companions and paths:
            head = os.fsencode(os.path.abspath(paths[0]))
            base, stem = os.path.dirname(head), _stem(os.path.basename(head))
            alias_stem = os.fsencode(_stem(os.fsencode(os.path.basename(out[0]))))
            for c in companions:
                raw = os.fsencode(os.path.abspath(c))
                rel = os.path.relpath(raw, base)
                for where in {rel} | (
                    {alias_stem + os.path.basename(raw)[len(stem) :]}
                    if _stem(os.path.basename(raw)) == stem and os.path.dirname(rel) == b""
                    else set()
                ):
                    dest = os.path.join(os.fsencode(folder), where)
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    if not os.path.lexists(dest):
                        _link(raw, dest, c)
        yield out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _link(raw: bytes, target: str | bytes, shown) -> None:
    from napari_vnet.io.errors import VolumeReadError  # errors imports this module

    try:
        os.symlink(raw, target)
    except OSError as exc:
        raise VolumeReadError(
            printable(shown),
            "the file name is not valid UTF-8 and SimpleITK cannot open it "
            f"({exc.strerror or exc}); rename the file or its folder",
        ) from exc


@contextmanager
def itk_name(path: str | os.PathLike, companions: Sequence[str | os.PathLike] = ()):
    """:func:`itk_names` for one path: yields one string."""
    with itk_names([path], companions) as names:
        yield names[0]


@contextmanager
def itk_write_name(path: Path) -> Iterator[str]:
    """A name SimpleITK can write to for ``path`` (whose folder exists and is writable):
    the folder is reached through an ASCII-named symbolic link when its name is not
    UTF-8; ``path``'s own name must be (the writer picks ASCII temporary names)."""
    folder = os.fsencode(os.path.abspath(path.parent))
    if itk_safe(os.fsdecode(folder)):
        yield os.fspath(path)
        return
    tmp = tempfile.mkdtemp(prefix="napari-vnet-names-")
    try:
        alias = os.path.join(tmp, "d")
        _link(folder, alias, path)
        yield os.path.join(alias, path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
