"""Where an export may write: names checked, the target kept inside OUT, and
``--overwrite`` limited to what an export itself writes.

Folder names of an nnU-Net export come from the weights (the card's configuration and
plans names, its fold names), so a file could name ``../../elsewhere``. Every such name
must be one printable path component (:func:`folder_name`), the resolved target must lie
inside the folder the user gave (:func:`inside`), and an existing target is replaced only
when everything in it is something an export of that format writes (:func:`publish`):
a folder holding anything else (a training log, a user's file, a link) is refused, never
deleted.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from napari_vnet.errors import NapariVnetError

__all__ = [
    "BUNDLE_LAYOUT",
    "NNUNET_LAYOUT",
    "ExportError",
    "check_target",
    "folder_name",
    "inside",
    "publish",
    "tmp_beside",
]

#: the longest name accepted (the temporary folder beside it adds a prefix and a suffix)
MAX_NAME_BYTES = 200


class ExportError(NapariVnetError, ValueError):
    """The weights cannot be written in the asked format (says why)."""


#: what an nnU-Net export writes (paths relative to the trained-model folder)
NNUNET_LAYOUT = re.compile(r"(plans\.json|dataset\.json|fold_[^/]+(/checkpoint_final\.pth)?)")
#: what a MONAI bundle export writes
BUNDLE_LAYOUT = re.compile(r"(configs|models|configs/(inference|metadata)\.json|models/model\.pt)")


def folder_name(value: object, what: str) -> str:
    """``value`` when it can be one folder name (a non-empty printable string without a
    path separator, not ``.`` or ``..``); otherwise ExportError saying why."""
    if not isinstance(value, str):
        raise ExportError(f"{what} {value!r} is not a name (a {type(value).__name__})")
    seps = {"/", "\\", os.sep, os.altsep or "/"}
    problem = None
    if not value.strip():
        problem = "it is empty"
    elif value in (".", ".."):
        problem = "it names a folder above or the folder itself"
    elif any(s in value for s in seps):
        problem = "it holds a path separator"
    elif not value.isprintable():
        problem = "it holds control characters"
    elif len(value.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        problem = f"it is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ExportError(
            f"{what} {shown!r} cannot be a folder name ({problem}); refusing to write "
            "outside the chosen folder"
        )
    return value


def inside(target: Path, root: Path) -> Path:
    """``target`` when, links resolved, it is ``root`` or lies inside it."""
    real_root, real = root.resolve(), target.resolve()
    if real != real_root and real_root not in real.parents:
        raise ExportError(f"{target}: resolves to {real}, outside {root}; refusing to write there")
    return target


def _foreign_entry(dest: Path, layout: re.Pattern[str]) -> str | None:
    """The first thing in ``dest`` that an export of ``layout`` does not write (a link,
    another file or folder), or None."""
    for folder, dirs, files in os.walk(dest):
        rel = Path(folder).relative_to(dest)
        for name in sorted(dirs) + sorted(files):
            path = Path(folder) / name
            entry = (rel / name).as_posix()
            is_dir = name in dirs
            if path.is_symlink() or not layout.fullmatch(entry):
                return entry
            if is_dir == entry.endswith((".json", ".pth", ".pt", ".onnx", ".ts")):
                return entry  # a folder where a file belongs, or the other way round
    return None


def check_target(dest: Path, overwrite: bool, layout: re.Pattern[str]) -> None:
    """Before any work: ExportError when an existing ``dest`` may not be replaced (see
    :func:`publish`, which checks again when the export is done)."""
    if os.path.lexists(dest):
        _check_replaceable(dest, overwrite, layout)


def tmp_beside(dest: Path) -> Path:
    """A new empty temporary folder beside ``dest`` (same file system): an export is
    written there, then :func:`publish`-ed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))


def publish(tmp: Path, dest: Path, overwrite: bool, layout: re.Pattern[str]) -> Path:
    """Move the finished export ``tmp`` to ``dest``. An existing ``dest`` is replaced only
    with ``overwrite`` and only when it holds nothing but what such an export writes;
    otherwise ``tmp`` is removed and ExportError says why."""
    try:
        if os.path.lexists(dest):
            _check_replaceable(dest, overwrite, layout)
            aside = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old."))
            os.replace(dest, aside / "old")
            try:
                os.replace(tmp, dest)
            except BaseException:
                os.replace(aside / "old", dest)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _check_replaceable(dest: Path, overwrite: bool, layout: re.Pattern[str]) -> None:
    if not overwrite:
        raise ExportError(
            f"{dest}: already exists (choose another folder, or --overwrite to replace it)"
        )
    if dest.is_symlink() or not dest.is_dir():
        raise ExportError(
            f"{dest}: exists and is not a folder an export wrote (a file or a link); "
            "overwrite replaces only an earlier export - remove it yourself or choose "
            "another folder"
        )
    entry = _foreign_entry(dest, layout)
    if entry is not None:
        raise ExportError(
            f"{dest}: holds {entry!r}, which this export does not write; overwrite "
            "replaces only an earlier export - nothing was changed (remove it yourself or "
            "choose another folder)"
        )
