"""Writing volumes with SimpleITK, atomically, with the geometry they came from."""

from __future__ import annotations

import errno
import gzip
import logging
import os
import re
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from napari_vnet.io.errors import VolumeWriteError
from napari_vnet.io.headers import header_data_files, nifti_data_size
from napari_vnet.io.paths import same_file
from napari_vnet.io.volume import Volume

log = logging.getLogger(__name__)

#: Writable file name endings and whether SimpleITK compresses them.
WRITE_EXTENSIONS = {".nii.gz": True, ".nii": False, ".nrrd": True, ".mha": True, ".mhd": False}

_LABEL_HINT = re.compile(r"(seg|label|mask)", re.IGNORECASE)


def write_extension(path: str | os.PathLike) -> str | None:
    low = Path(path).name.lower()
    for ext in WRITE_EXTENSIONS:
        if low.endswith(ext) and len(low) > len(ext):
            return ext
    return None


def smallest_unsigned_dtype(max_value: int) -> np.dtype:
    """uint8, uint16, uint32 or uint64: the smallest that holds ``max_value``."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"label value {max_value} does not fit in 64 bits")


def as_label_array(array: np.ndarray, path="<array>") -> np.ndarray:
    """The label map as the smallest unsigned integer type (values unchanged)."""
    a = np.asarray(array)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.size == 0:
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise VolumeWriteError(path, "a label map must hold whole numbers (got fractions/NaN)")
    elif a.dtype.kind not in "iu":
        raise VolumeWriteError(path, f"a label map must be integer, got {a.dtype}")
    lo, hi = a.min(), a.max()
    if lo < 0:
        raise VolumeWriteError(path, f"a label map must be non-negative (minimum is {lo})")
    dt = smallest_unsigned_dtype(int(hi))
    return a if a.dtype == dt else a.astype(dt)


def _narrow_wide_integers(a: np.ndarray) -> np.ndarray:
    """64-bit integers (e.g. from argmax) become the smallest type holding their values."""
    if a.dtype.kind not in "iu" or a.dtype.itemsize < 8 or a.size == 0:
        return a
    lo, hi = int(a.min()), int(a.max())
    kinds = (np.uint8, np.uint16, np.uint32) if lo >= 0 else (np.int8, np.int16, np.int32)
    for dt in kinds:
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return a.astype(dt)
    return a


def volume_to_image(vol: Volume, *, path="<volume>"):
    """A SimpleITK image with the volume's pixels and geometry (copies the pixels)."""
    import SimpleITK as sitk

    a = np.asarray(vol.array)
    n = len(vol.spacing)
    if a.ndim not in (n, n + 1):
        raise VolumeWriteError(
            path, f"array shape {a.shape} does not match a {n}-D geometry (spacing {vol.spacing})"
        )
    is_vector = a.ndim == n + 1
    if a.dtype == bool:
        a = a.astype(np.uint8)
    elif a.dtype == np.float16:
        a = a.astype(np.float32)
    direction = np.asarray(vol.direction, float)
    if direction.shape != (n, n):
        raise VolumeWriteError(path, f"direction must be {n}x{n}, got {direction.shape}")
    if not np.allclose(direction.T @ direction, np.eye(n), atol=1e-4):
        raise VolumeWriteError(
            path,
            "direction cosines are not orthonormal (the layer is sheared or scaled inside its "
            "affine); medical formats cannot store that",
        )
    if np.any(np.asarray(vol.spacing, float) <= 0):
        raise VolumeWriteError(path, f"spacing must be positive, got {tuple(vol.spacing)}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(a), isVector=is_vector)
    image.SetSpacing([float(v) for v in reversed(vol.spacing)])
    image.SetOrigin([float(v) for v in reversed(vol.origin)])
    image.SetDirection([float(v) for v in direction[::-1, ::-1].ravel()])
    return image


def _mhd_data_files(header: Path) -> list[Path]:
    try:
        with open(header, encoding="latin-1") as fh:
            for line in fh:
                key, _, value = line.partition("=")
                if key.strip() == "ElementDataFile":
                    value = value.strip()
                    if value and value.upper() not in ("LOCAL", "LIST"):
                        return [header.parent / value]
    except OSError:
        pass
    return []


def source_files(vol: Volume | None) -> list[Path]:
    """The files a volume was read from (header + data files, or all DICOM slices)."""
    if vol is None:
        return []
    out: list[Path] = [Path(f) for f in vol.metadata.get("source_files", []) or []]
    named = (vol.path, vol.metadata.get("source_path"))
    for src in {s for s in named if s is not None and s != ""}:
        p = Path(src)
        out.append(p)
        low = p.name.lower()
        if low.endswith(".mhd"):
            out += _mhd_data_files(p)
        elif low.endswith(".nhdr"):
            out += [p.with_suffix(".raw"), p.with_suffix(".raw.gz")]
        elif low.endswith(".hdr"):
            out.append(p.with_suffix(".img"))
        elif low.endswith(".img"):
            out.append(p.with_suffix(".hdr"))
    return [p for p in out if not p.is_dir()]


def _files_written(path: Path, ext: str) -> list[Path]:
    out = [path]
    if ext == ".mhd":
        out.append(path.parent / (path.name[: -len(ext)] + ".raw"))
    return out


_TEMP_PREFIX = ".napari-vnet-write-"
_ORPHAN_SECONDS = 3600


_TEMP_FILE = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)*$")  # napari_vnet._atomic's names


def clean_orphans(folder: Path) -> None:
    """Remove what writes killed half-way left behind: temporary folders whose process
    is gone (the pid is in the name) or older than an hour, and hidden temporary files
    (``.name.XXXX.tmp.nii.gz``) older than an hour."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    now = time.time()
    for item in entries:
        if not item.name.startswith(_TEMP_PREFIX) and _TEMP_FILE.match(item.name):
            try:
                if item.is_file(follow_symlinks=False) and (
                    now - item.stat(follow_symlinks=False).st_mtime > _ORPHAN_SECONDS
                ):
                    os.unlink(item.path)
                    log.info("removed an orphan temporary file %s", item.path)
            except OSError:
                pass
    items = [e for e in entries if e.name.startswith(_TEMP_PREFIX)]
    for item in items:
        pid = item.name[len(_TEMP_PREFIX) :].split("-", 1)[0]
        try:
            if pid.isdigit() and int(pid) != os.getpid():
                try:
                    os.kill(int(pid), 0)
                    alive = True
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    alive = True
            else:
                alive = pid.isdigit()
            if alive and now - item.stat(follow_symlinks=False).st_mtime < _ORPHAN_SECONDS:
                continue
            shutil.rmtree(item.path, ignore_errors=True)
            log.info("removed an orphan temporary folder %s", item.path)
        except OSError:
            pass


def _expected_bytes(image) -> int:
    size = int(np.prod([int(n) for n in image.GetSize()], dtype=object))
    return size * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()


def _inflated_size(fh, wbits: int) -> tuple[int, bool]:
    """(bytes the deflate stream at ``fh``'s position inflates to, whether it reached its
    end marker, checksum and length trailer included); a few MiB of buffers at most."""
    inflater = zlib.decompressobj(wbits)
    total = 0
    while not inflater.eof:
        chunk = inflater.unconsumed_tail or fh.read(1 << 22)
        if not chunk:
            break
        total += len(inflater.decompress(chunk, 1 << 24))
    return total, inflater.eof


def _embedded_data(head: bytes, low: str) -> tuple[int, bool] | None:
    """(offset of the voxel data, compressed?) of a ``.nrrd``/``.mha`` header that holds
    its data in the same file; None when it names a separate data file."""
    if low.endswith(".nrrd"):
        end = head.find(b"\n\n")
        lines = head[: max(end, 0)].decode("latin-1").split("\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        if end < 0 or fields.keys() & {"data file", "datafile"}:
            return None  # a separate data file (or an unusual header): not checked here
        return end + 2, fields.get("encoding", "raw") in ("gzip", "gz")
    start = head.find(b"ElementDataFile")
    line_end = head.find(b"\n", start)
    if start < 0 or line_end < 0 or b"LOCAL" not in head[start:line_end]:
        return None
    return line_end + 1, b"CompressedData = True" in head[:start]


def _embedded_data_problem(path: Path, expected: int) -> str | None:
    """Why the voxel data inside a just-written ``.nrrd`` or ``.mha`` is incomplete, or
    None. SimpleITK's NRRD writer reports success when the disk fills up as it closes
    the gzip stream (the last block and the checksum are lost), so compressed data is
    inflated here to its end marker; raw data is checked by its size."""
    with open(path, "rb") as fh:
        found = _embedded_data(fh.read(_HEADER_BYTES), path.name.lower())
        if found is None:
            return None
        offset, compressed = found
        if not compressed:
            got = os.path.getsize(path) - offset
            return None if got >= expected else f"{max(got, 0)} of {expected} voxel bytes"
        fh.seek(offset)
        total, complete = _inflated_size(fh, zlib.MAX_WBITS | 32)  # gzip or zlib wrapper
    if total < expected or not complete:
        return f"its compressed data ends early ({total} of {expected} bytes, no end marker)"
    return None


_HEADER_BYTES = 1 << 16


def verify_written(path: Path, image, shown: Path | None = None) -> None:
    """Check a just-written file before it replaces anything: ITK's NIfTI writer ignores
    short writes (a full disk), so the size is checked from the header, a ``.nii.gz`` is
    decompressed completely (CRC and length), and other formats' headers are read back.
    Raises :class:`VolumeWriteError` naming ``shown`` (default ``path``)."""
    import SimpleITK as sitk

    from napari_vnet.io.paths import itk_name

    shown = shown or path
    expected = _expected_bytes(image)
    low = path.name.lower()

    def incomplete(detail: str) -> VolumeWriteError:
        return VolumeWriteError(
            shown,
            f"the written file is incomplete ({detail}); the disk may be full. "
            "The previous file (if any) is kept",
        )

    try:
        size = os.path.getsize(path)
        if size == 0:
            raise incomplete("0 bytes")
        if low.endswith((".nii", ".nii.gz")):
            opener = gzip.open if low.endswith(".gz") else open
            with opener(path, "rb") as fh:
                sizes = nifti_data_size(fh.read(544))
            if sizes is None:
                raise incomplete("its header cannot be read back")
            need = sizes[0] + sizes[1]
            if low.endswith(".gz"):
                total = 0
                with gzip.open(path, "rb") as gz:  # checks the CRC and length trailer
                    while chunk := gz.read(1 << 22):
                        total += len(chunk)
            else:
                total = size
            if total < need:
                raise incomplete(f"{total} of {need} bytes")
            return
        with itk_name(path) as name:
            reader = sitk.ImageFileReader()
            reader.SetFileName(name)
            reader.ReadImageInformation()
            if tuple(reader.GetSize()) != tuple(image.GetSize()):
                raise incomplete("its header cannot be read back")
        if low.endswith((".nrrd", ".mha")):
            problem = _embedded_data_problem(path, expected)
            if problem:
                raise incomplete(problem)
        if low.endswith(".mhd"):
            for raw in header_data_files(path) or []:
                got = os.path.getsize(raw)
                if got < expected:
                    raise incomplete(f"{raw.name}: {got} of {expected} bytes")
    except (OSError, EOFError, zlib.error, RuntimeError) as exc:
        text = str(exc).strip()
        raise incomplete(text.splitlines()[-1] if text else repr(exc)) from exc


def _disk_message(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{exc.strerror}; the disk may be full. The previous file (if any) is kept"
    if exc.errno == errno.ENAMETOOLONG:
        return "the file name is too long for the file system"
    return exc.strerror or str(exc)


def _atomic_write(image, path: Path, compress: bool) -> None:
    """Write to a temporary file beside ``path`` (:func:`napari_vnet._atomic.atomic_write`),
    check it with :func:`verify_written` before the rename, so the old file stays until a
    complete new one replaces it. ``.mhd`` (header + data file) goes through a temporary
    folder instead (:func:`_atomic_write_pair`)."""
    import SimpleITK as sitk

    from napari_vnet._atomic import atomic_write
    from napari_vnet.io.paths import itk_name

    clean_orphans(path.parent)
    if write_extension(path) == ".mhd":
        return _atomic_write_pair(image, path, compress)

    def write(tmp: Path) -> None:
        with itk_name(tmp) as name:  # an ASCII alias when the name is not UTF-8
            sitk.WriteImage(image, name, useCompression=compress)

    try:
        atomic_write(
            path, write, verify=lambda tmp: verify_written(tmp, image, shown=path), mkdir=False
        )
    except RuntimeError as exc:
        raise _itk_write_error(exc, path, image) from exc
    except OSError as exc:  # e.g. the disk filled up, or the file is read-only
        if exc.filename and Path(os.fsdecode(exc.filename)).parent == path.parent and (
            exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM)
        ):
            raise VolumeWriteError(
                path, f"the folder {path.parent} is not writable ({_disk_message(exc)})"
            ) from exc
        raise VolumeWriteError(path, _disk_message(exc)) from exc


#: ITK/teem/MetaIO wordings of a write that the disk (or a file size limit) refused
_SHORT_WRITE = re.compile(
    r"space|too large|quota|failed to (write|flush)|fail after write", re.IGNORECASE
)


def _itk_write_error(exc: RuntimeError, path: Path, image) -> VolumeWriteError:
    reason = str(exc).strip().splitlines()[-1]
    if _SHORT_WRITE.search(reason) or _disk_nearly_full(path.parent, _expected_bytes(image)):
        reason += "; the disk may be full. The previous file (if any) is kept"
    return VolumeWriteError(path, reason)


def _atomic_write_pair(image, path: Path, compress: bool) -> None:
    """``.mhd`` + ``.raw``: written into a temporary folder beside ``path``, checked, then
    moved into place (data file first, header last).

    Not :func:`napari_vnet._atomic.atomic_write`: that helper makes one file under a
    temporary name, but the header names its data file (``ElementDataFile``), so the
    pair must be written, and verified, under the final names together; hence a
    temporary folder on the same file system and two renames.
    """
    import SimpleITK as sitk

    from napari_vnet.io.paths import itk_safe, itk_write_name

    try:
        tmpdir = Path(
            tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-", dir=path.parent)
        )
    except OSError as exc:
        raise VolumeWriteError(
            path, f"the folder {path.parent} is not writable ({_disk_message(exc)})"
        ) from exc
    ext = write_extension(path) or ""
    # same name as the target, so .mhd headers name the right .raw; an ASCII stand-in
    # when the name is not UTF-8 (SimpleITK aborts on it), fixed up after writing
    name = path.name if itk_safe(path.name) else "volume" + ext
    try:
        target = tmpdir / name
        with itk_write_name(target) as itk_target:
            sitk.WriteImage(image, itk_target, useCompression=compress)
        if name != path.name and ext == ".mhd":
            _rename_mhd_data(target, path.name[: -len(ext)] + ".raw")
        verify_written(target, image, shown=path)
        for produced in sorted(tmpdir.iterdir()):
            if produced.name != name:  # data files (e.g. .raw) first ...
                os.replace(produced, path.parent / produced.name)
        os.replace(target, path)  # ... then the header, so a reader never sees half a pair
    except RuntimeError as exc:
        raise _itk_write_error(exc, path, image) from exc
    except OSError as exc:  # e.g. the disk filled up, or the file is read-only
        raise VolumeWriteError(path, _disk_message(exc)) from exc
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _disk_nearly_full(folder: Path, need: int) -> bool:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < need + (1 << 20)


def _rename_mhd_data(header: Path, data_name: str) -> None:
    """Point a written ``.mhd`` at ``data_name`` and rename its data file to match."""
    raw = header.read_bytes()
    old = header.name[: -len(".mhd")] + ".raw"
    new_bytes = os.fsencode(data_name)
    lines = raw.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b"ElementDataFile"):
            lines[i] = b"ElementDataFile = " + new_bytes
    header.write_bytes(b"\n".join(lines))
    os.replace(header.parent / old, os.path.join(os.fsencode(header.parent), new_bytes))


def _check_target(path: Path) -> str:
    """The write extension of ``path``; raises :class:`VolumeWriteError` when it is not
    writable there (unknown extension, missing folder, a folder of that name)."""
    ext = write_extension(path)
    if ext is None:
        raise VolumeWriteError(
            path, "unsupported extension (use one of " + ", ".join(WRITE_EXTENSIONS) + ")"
        )
    if not path.parent.is_dir():
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise VolumeWriteError(path, f"{parent} is a file, not a folder")
        raise VolumeWriteError(path, f"the folder {path.parent} does not exist")
    if path.is_dir():
        raise VolumeWriteError(path, "a folder has this name")
    return ext


def write_volume(
    array_or_volume: np.ndarray | Volume,
    path: str | os.PathLike,
    like: Volume | None = None,
    *,
    overwrite_source: bool = False,
    is_label: bool | None = None,
) -> Path:
    """Write an array or Volume to ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha`` or ``.mhd``.

    Geometry comes from ``like`` if given (its grid must match the array's shape), else
    from the Volume itself, else identity (1 mm, origin 0). Label maps (``is_label``
    True, or None with a bool array / a file name saying seg/label/mask / a Volume whose
    metadata says ``is_label``) are stored as the smallest unsigned integer type;
    64-bit integer images are narrowed losslessly. The write is atomic (temporary file
    in the same folder + ``os.replace``). Writing onto the file(s) the volume or
    ``like`` was read from raises :class:`VolumeWriteError` unless ``overwrite_source``.
    """
    path = Path(path)
    ext = _check_target(path)
    vol: Volume | None
    geometry: Volume | None
    if isinstance(array_or_volume, Volume):
        vol = array_or_volume
        array = np.asarray(vol.array)
        geometry = like if like is not None else vol
    else:
        vol = None
        array = np.asarray(array_or_volume)
        geometry = like
    if geometry is None:
        n = array.ndim
        geometry = Volume(array, spacing=(1.0,) * n, origin=(0.0,) * n, direction=np.eye(n))
    n = len(geometry.spacing)
    spatial = array.shape[:n]
    if like is not None and tuple(spatial) != tuple(like.array.shape[:n]):
        raise VolumeWriteError(
            path,
            f"array shape {array.shape} does not match the reference grid {like.array.shape[:n]}",
        )

    if is_label is None:
        is_label = (
            array.dtype == bool
            or bool(vol is not None and vol.metadata.get("is_label"))
            or (array.dtype.kind in "iub" and bool(_LABEL_HINT.search(path.name)))
        )
    array = as_label_array(array, path) if is_label else _narrow_wide_integers(array)

    if not overwrite_source:
        targets = _files_written(path, ext)
        for src in source_files(vol) + source_files(like):
            if any(same_file(t, src) for t in targets):
                raise VolumeWriteError(
                    path,
                    f"this would overwrite the source image {src}; choose another file name "
                    "(or pass overwrite_source=True)",
                )

    out = Volume(
        array=array,
        spacing=tuple(geometry.spacing),
        origin=tuple(geometry.origin),
        direction=np.asarray(geometry.direction, float),
    )
    image = volume_to_image(out, path=path)
    _atomic_write(image, path, WRITE_EXTENSIONS[ext])
    log.info("wrote %s (%s, %s)", path, array.dtype, array.shape)
    return path
