"""A DICOM series in a zip archive (``predict scan.zip``; TotalSegmentator takes such zips).

:func:`zip_holds_dicom` peeks at an archive (member names and the first bytes of a few
members, nothing extracted) for the napari reader. :func:`read_dicom_zip` checks every
member before anything is written, then extracts them into a temporary folder and reads
it as a DICOM folder (:func:`napari_vnet.io.read_volume`: a folder with several series
needs ``series=``, as an unzipped folder does), so the geometry is the unzipped folder's.

Refused, with the zip and the problem named: not a zip or a damaged one; encrypted
members; member names that would land outside the folder (absolute names, drive letters,
``..``) or symbolic links; more than :data:`MAX_MEMBERS` members; members whose sizes
add up to more than the available memory (:func:`napari_vnet.io.memory.memory_problem`:
the series is decoded into memory anyway) or the free space of the temporary folder
(zip bombs); a member that inflates past its stated size. The extracted files stay while
the returned volume lives (a DICOM-SEG written for it references them), then go.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from napari_vnet.io.errors import VolumeReadError
from napari_vnet.io.headers import DICOM_EXTENSIONS, dicom_preamble

__all__ = ["MAX_MEMBERS", "extracted_zip", "is_zip_name", "read_dicom_zip", "zip_holds_dicom"]

MAX_MEMBERS = 100_000  # files in one archive (a CT series has hundreds to a few thousand)
_PEEK_MEMBERS = 16  # members whose first bytes zip_holds_dicom reads at most
_CHUNK = 1 << 20
_SKIPPED_PARTS = ("__MACOSX",)  # macOS resource forks: never DICOM


def is_zip_name(path: str | os.PathLike) -> bool:
    """Does the name end in ``.zip`` (any case)?"""
    return os.fspath(path).lower().endswith(".zip")


def _skipped(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return any(p in _SKIPPED_PARTS or p.startswith(".") for p in parts)


def _files(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    return [i for i in zf.infolist() if not i.is_dir() and not _skipped(i.filename)]


def zip_holds_dicom(path: str | os.PathLike) -> bool:
    """True when ``path`` is a zip whose members look like DICOM (a ``.dcm``/``.ima``
    name, or the ``DICM`` preamble in one of the first members); never raises."""
    try:
        with zipfile.ZipFile(path) as zf:
            files = _files(zf)
            if any(i.filename.lower().endswith(DICOM_EXTENSIONS) for i in files):
                return True
            for info in files[:_PEEK_MEMBERS]:
                if info.flag_bits & 0x1 or info.file_size < 132:
                    continue
                with zf.open(info) as fh:
                    if dicom_preamble(fh.read(132)):
                        return True
    except Exception:  # noqa: BLE001 - a reader probe answers, never fails
        return False
    return False


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why one member must not be extracted, or None."""
    name = info.filename
    shown = repr(name)
    if info.flag_bits & 0x1:
        return f"member {shown} is encrypted; napari-vnet reads unencrypted zips only"
    if stat.S_ISLNK(info.external_attr >> 16):
        return f"member {shown} is a symbolic link; refused"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return f"member {shown} has an absolute path; refused"
    if ".." in PurePosixPath(posix).parts:
        return f"member {shown} points outside the archive's folder ('..'); refused"
    return None


def _check_members(path: Path, zf: zipfile.ZipFile, where: Path) -> list[zipfile.ZipInfo]:
    """The members to extract, after checking all of them (see the module text)."""
    from napari_vnet.io.memory import human_bytes, memory_problem

    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise VolumeReadError(path, f"the zip holds {len(infos)} members (at most {MAX_MEMBERS})")
    for info in infos:
        problem = _member_problem(info)
        if problem:
            raise VolumeReadError(path, problem)
    files = _files(zf)
    total = sum(int(i.file_size) for i in files)
    problem = memory_problem(total, f"the zip's {len(files)} files ({human_bytes(total)} unpacked)")
    if problem:
        raise VolumeReadError(path, f"{problem} (a zip bomb?)")
    free = shutil.disk_usage(where).free
    if total > free:
        raise VolumeReadError(
            path,
            f"the zip unpacks to {human_bytes(total)} but the temporary folder {where} has "
            f"{human_bytes(free)} free",
        )
    return files


def _extract(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path) -> None:
    """One member under ``root``, never more bytes than its stated size."""
    dest = root.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as src, open(dest, "xb") as dst:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise VolumeReadError(
                    path, f"member {info.filename!r} inflates past its stated size; refused"
                )
            dst.write(chunk)


def _naming_the_zip(exc: VolumeReadError, path: Path, root: Path) -> VolumeReadError:
    """``exc`` (raised while reading the unpacked folder ``root``) as an error of the zip
    ``path``: the temporary folder is never shown."""
    problem = exc.problem.replace(str(root) + os.sep, "").replace(str(root), "the zip")
    problem = problem.replace("this folder", "the zip").replace("the folder", "the zip")
    return VolumeReadError(path, problem)


@contextlib.contextmanager
def extracted_zip(path: str | os.PathLike) -> Iterator[Path]:
    """``with extracted_zip("scan.zip") as folder:`` its members, checked (see the module
    text), in a temporary folder that is removed after the block; a
    :class:`VolumeReadError` raised in the block names the zip, not the folder."""
    path = Path(path)
    tmp = tempfile.TemporaryDirectory(prefix="napari-vnet-zip-")
    root = Path(tmp.name)
    try:
        _unpack(path, root)  # its errors name the zip already
        try:
            yield root
        except VolumeReadError as exc:
            raise _naming_the_zip(exc, path, root) from exc
    finally:
        tmp.cleanup()


def _unpack(path: Path, root: Path) -> Path:
    try:
        with zipfile.ZipFile(path) as zf:
            for info in _check_members(path, zf, root):
                _extract(path, zf, info, root)
    except VolumeReadError:
        raise
    except zipfile.BadZipFile as exc:
        raise VolumeReadError(path, f"not a readable zip archive ({exc})") from exc
    except (zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as exc:
        raise VolumeReadError(path, f"the zip cannot be unpacked ({exc})") from exc
    return root


def read_dicom_zip(path: str | os.PathLike, series=None):
    """The DICOM series in the zip ``path`` as a :class:`~napari_vnet.io.Volume` (``series``
    picks one of several, as for a folder). Raises :class:`VolumeReadError` naming the zip."""
    from napari_vnet.io.reading import read_volume

    path = Path(path)
    tmp = tempfile.TemporaryDirectory(prefix="napari-vnet-zip-")
    root = Path(tmp.name)
    try:
        _unpack(path, root)  # its errors name the zip already
        try:
            vol = read_volume(root, series=series)
        except VolumeReadError as exc:
            raise _naming_the_zip(exc, path, root) from exc
    except BaseException:
        tmp.cleanup()
        raise
    vol.path = str(path)
    vol.metadata["source_zip"] = str(path)
    weakref.finalize(vol, tmp.cleanup)  # the files stay while the volume lives
    return vol
