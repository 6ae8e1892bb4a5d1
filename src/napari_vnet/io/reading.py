"""Reading medical volumes with SimpleITK into :class:`~napari_vnet.io.volume.Volume`.

The array shares the SimpleITK image's pixel buffer (no second copy of the volume):
it is a writeable numpy view whose ``base`` keeps the image alive. Plain NIfTI voxels
can also be read straight into the array (ITK's NIfTI IO would hold two copies), see
:func:`read_volume`. Truncated NIfTI/GIPL/Analyze files, which ITK silently pads, are
detected from their headers and sizes.
"""

from __future__ import annotations

import errno
import gzip
import logging
import os
import re
import stat
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from napari_vnet.io.dicom import (
    DicomSeries,
    dicom_length_problem,
    find_series_of_file,
    is_dicom_file,
    list_dicom_series,
    select_series,
)
from napari_vnet.io.dicom_tilt import unsheared_volume
from napari_vnet.io.errors import VolumeReadError
from napari_vnet.io.paths import itk_name, itk_names
from napari_vnet.io.volume import Volume

log = logging.getLogger(__name__)

#: File name endings read by SimpleITK (besides DICOM), longest first.
READ_EXTENSIONS = (
    ".nii.gz",
    ".gipl.gz",
    ".nii",
    ".mha",
    ".mhd",
    ".nrrd",
    ".nhdr",
    ".hdr",
    ".img",
    ".gipl",
)


def split_extension(path: str | os.PathLike) -> tuple[str, str]:
    """``("name", ".nii.gz")`` for ``dir/name.nii.gz``; double extensions stay whole."""
    name = Path(path).name
    low = name.lower()
    for ext in READ_EXTENSIONS + (".dcm", ".ima", ".dicom"):
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    stem, ext = os.path.splitext(name)
    return stem, ext


def has_volume_extension(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(READ_EXTENSIONS)


class _ImageBuffer:
    """Exposes a SimpleITK image's pixel buffer to numpy and keeps the image alive."""

    def __init__(self, image):
        import SimpleITK as sitk

        self.image = image
        view = sitk.GetArrayViewFromImage(image)
        interface = dict(view.__array_interface__)
        interface["data"] = (interface["data"][0], False)  # writeable: we own the image
        self.__array_interface__ = interface


def image_array(image) -> np.ndarray:
    """The (z, y, x[, c]) numpy array of a SimpleITK image, sharing its memory."""
    return np.asarray(_ImageBuffer(image))


def image_to_volume(image, *, path=None, metadata: dict | None = None) -> Volume:
    """Wrap a SimpleITK image as a Volume (shares memory; geometry in z, y, x order)."""
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), float).reshape(dim, dim)[::-1, ::-1].copy()
    meta = {"n_components": int(image.GetNumberOfComponentsPerPixel())}
    meta.update(metadata or {})
    return Volume(
        array=image_array(image),
        spacing=tuple(float(v) for v in reversed(image.GetSpacing())),
        origin=tuple(float(v) for v in reversed(image.GetOrigin())),
        direction=direction,
        pixel_type=image.GetPixelIDTypeAsString(),
        metadata=meta,
        path=None if path is None else str(path),
    )


def _clean_itk_message(exc: Exception) -> str:
    """A short, human reason from an ITK/SimpleITK exception text."""
    text = str(exc)
    if "Unable to determine ImageIO reader" in text:
        return "SimpleITK recognises no image format in this file (wrong extension or not an image)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and lines[0].startswith("Exception thrown in SimpleITK"):
        lines = lines[1:]
    cleaned = []
    for ln in lines:
        ln = re.sub(r"^(ITK ERROR|sitk::ERROR):\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?", "", ln)
        if ln.startswith("Reason:") and cleaned and "cannot be read" in cleaned[-1]:
            continue  # a stale errno, not the reason
        cleaned.append(ln)
    nrrd = [ln for ln in cleaned if ln.startswith("[nrrd]")]
    if nrrd:
        cleaned = [ln for ln in cleaned if not ln.startswith("[nrrd]")][:1] + nrrd[-1:]
    reason = " / ".join(cleaned) or type(exc).__name__
    if "cannot be read" in reason or "not read completely" in reason or "expected" in reason:
        reason = f"the file is truncated or corrupt ({reason})"
    return reason


# ------------------------------------------------- completeness of raw / gzip data
# ITK fills missing NIfTI/GIPL data with zeros or garbage instead of failing, so the
# sizes are checked here from the headers (cheap: a few hundred bytes and a stat).


def _nifti_sizes(head: bytes) -> tuple[int, int] | None:
    """(data offset, data bytes) from a NIfTI-1/-2 or Analyze header, or None."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            n = dim[0]
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            dim = struct.unpack(endian + "8q", head[16:80])
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            offset = struct.unpack(endian + "q", head[168:176])[0]
            n = dim[0]
            break
    else:
        return None
    if not 1 <= n <= 7 or bitpix <= 0:
        return None
    nbytes = int(np.prod([max(int(d), 1) for d in dim[1 : n + 1]])) * bitpix // 8
    return offset, nbytes


def _gzip_holds(path: Path, expected: int) -> int | None:
    """None if the gzip stream of ``path`` decompresses to >= expected bytes, else its length."""
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        isize = struct.unpack("<I", fh.read(4))[0]
    if isize == expected % (1 << 32):
        return None  # the trailer agrees: complete (fast path)
    total = 0
    try:  # unusual trailer (multi-member gzip?) or truncated: stream through it once
        with gzip.open(path, "rb") as gz:
            while chunk := gz.read(1 << 22):
                total += len(chunk)
    except (EOFError, OSError, zlib.error):
        return total
    return None if total >= expected else total


def _check_complete(path: Path, reader) -> None:
    low = path.name.lower()
    gz = low.endswith(".gz")
    expected = None
    if low.endswith((".nii", ".nii.gz", ".hdr", ".img")):
        header = path if not low.endswith(".img") else path.with_suffix(".hdr")
        if not header.exists():
            header = path.with_suffix(".HDR") if low.endswith(".img") else header
        opener = gzip.open if gz else open
        try:
            with opener(header, "rb") as fh:
                head = fh.read(544)
        except (OSError, EOFError, zlib.error) as exc:
            raise VolumeReadError(header, f"the file is truncated or corrupt ({exc})") from exc
        sizes = _nifti_sizes(head)
        if sizes is None:
            return
        offset, nbytes = sizes
        if low.endswith((".hdr", ".img")):
            data_file = path.with_suffix(".img") if low.endswith(".hdr") else path
            if data_file.exists() and data_file.stat().st_size < nbytes:
                raise VolumeReadError(
                    data_file,
                    f"the file is truncated: {data_file.stat().st_size} bytes of {nbytes} expected",
                )
            return
        expected = offset + nbytes
    elif low.endswith((".gipl", ".gipl.gz")):
        import SimpleITK as sitk

        probe = sitk.Image(
            [1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents()
        )
        n = int(np.prod(reader.GetSize())) * reader.GetNumberOfComponents()
        expected = 256 + n * probe.GetSizeOfPixelComponent()
    if expected is None:
        return
    if gz:
        got = _gzip_holds(path, expected)
        if got is not None:
            raise VolumeReadError(
                path,
                f"the file is truncated: it decompresses to {got} bytes of {expected} expected",
            )
    elif path.stat().st_size < expected:
        raise VolumeReadError(
            path, f"the file is truncated: {path.stat().st_size} bytes of {expected} expected"
        )


def _stat(path: Path, what: str = "file or folder") -> os.stat_result:
    """``os.stat`` with the reason in words (missing, permission, name too long...)."""
    try:
        return os.stat(path)
    except FileNotFoundError as exc:
        raise VolumeReadError(path, f"no such {what}") from exc
    except PermissionError as exc:
        raise VolumeReadError(
            path, f"permission denied (the {what} or one of its folders is not readable)"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise VolumeReadError(path, "the file name is too long for the file system") from exc
        raise VolumeReadError(path, exc.strerror or str(exc)) from exc


def _check_file(path: Path) -> None:
    st = _stat(path)
    if stat.S_ISDIR(st.st_mode):
        if not os.access(path, os.R_OK | os.X_OK):
            raise VolumeReadError(path, "permission denied (the folder is not readable)")
        return
    if not stat.S_ISREG(st.st_mode):
        raise VolumeReadError(path, "not a regular file (a device, FIFO or socket); refused")
    if st.st_size == 0:
        raise VolumeReadError(path, "the file is empty")
    try:
        with open(path, "rb"):
            pass
    except PermissionError as exc:
        raise VolumeReadError(path, "permission denied (the file is not readable)") from exc


# -------------------------------------------------- data files named by a header
# MetaImage (.mhd/.mha) and NRRD (.nhdr/.nrrd) headers name their pixel data file(s);
# ITK follows those names anywhere (absolute paths, ../, /dev/zero, FIFOs). An untrusted
# dataset could so read other files into an image, or hang the reader. The names are
# checked here, before SimpleITK opens the header: each must be a regular file inside
# the header's folder (or a subfolder), after resolving symbolic links.

_HEADER_LIMIT = 1 << 16


def _expand_pattern(value: str) -> list[str] | None:
    """``"slice%03d.raw 1 10 1"`` -> the file names; None when it is not a pattern."""
    parts = value.split()
    if "%" not in value or len(parts) < 4:
        return None
    try:
        first, last, step = (int(v) for v in parts[1:4])
    except ValueError:
        return None
    if step == 0 or abs(last - first) // abs(step) > 100_000:
        return None
    stop = last + (1 if step > 0 else -1)
    try:
        return [parts[0] % i for i in range(first, stop, step)]
    except (TypeError, ValueError):
        return None


def header_data_files(path: str | os.PathLike) -> list[Path] | None:
    """The data files a ``.mhd``/``.mha``/``.nhdr``/``.nrrd`` header names (None when the
    data is inside the header file, or for other formats), as paths under the header's
    folder. Raises :class:`VolumeReadError` for a name outside that folder or anything
    but a regular file there, before any of them is opened."""
    path = Path(path)
    low = path.name.lower()
    if not low.endswith((".mhd", ".mha", ".nhdr", ".nrrd")):
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER_LIMIT)
    except OSError as exc:
        raise VolumeReadError(path, exc.strerror or str(exc)) from exc
    lines = head.decode("latin-1").splitlines()
    names: list[str] = []
    if low.endswith((".mhd", ".mha")):
        for i, line in enumerate(lines):
            key, sep, value = line.partition("=")
            if not sep or key.strip() != "ElementDataFile":
                continue
            value = value.strip()
            if value.upper() == "LOCAL" or not value:
                return None
            if value.upper().startswith("LIST"):
                names = [ln.strip() for ln in lines[i + 1 :] if ln.strip()]
            else:
                names = _expand_pattern(value) or [value]
            break
        else:
            return None
    else:
        if not lines or not lines[0].startswith("NRRD"):
            return None
        for i, line in enumerate(lines):
            if not line.strip():
                break  # end of the header: the data follows
            key, sep, value = line.partition(":")
            if not sep or value.startswith("=") or key.strip().lower() not in (
                "data file",
                "datafile",
            ):
                continue
            value = value.strip()
            if value.upper().startswith("LIST"):
                names = [ln.strip() for ln in lines[i + 1 :] if ln.strip()]
            else:
                names = _expand_pattern(value) or [value]
            break
        else:
            return None
    base = os.path.realpath(path.parent)
    out = []
    for name in names:
        raw = name.encode("latin-1")
        if b"\0" in raw:
            raise VolumeReadError(
                path, f"the header names a data file with a NUL byte ({name!r}); corrupt header"
            )
        candidate = os.path.join(os.fsencode(path.parent), raw)
        shown = os.fsdecode(raw)
        real = os.path.realpath(candidate)
        inside = real.startswith(os.fsencode(base).rstrip(b"/") + b"/")
        if not inside:
            raise VolumeReadError(
                path,
                f"the header names the data file {shown!r}, which is outside the header's "
                "folder; refused (data files must lie in the header's folder or below)",
            )
        try:
            st = os.stat(real)
        except FileNotFoundError:
            continue  # inside the folder but missing: ITK says so when pixels are read
        except OSError as exc:
            raise VolumeReadError(
                path, f"the data file {shown!r} named by the header cannot be opened "
                f"({exc.strerror or exc})"
            ) from exc
        if not stat.S_ISREG(st.st_mode):
            raise VolumeReadError(
                path,
                f"the data file {shown!r} named by the header is not a regular file "
                "(a device, FIFO, socket or folder); refused",
            )
        out.append(Path(os.fsdecode(candidate)))
    return out


def _companions(path: Path) -> list[Path]:
    """Files SimpleITK opens besides ``path`` (checked: regular files beside it)."""
    files = header_data_files(path)
    if files is not None:
        return files
    low = path.name.lower()
    if low.endswith((".hdr", ".img")):
        stem = path.name[:-4]
        out = []
        for ext in ((".img", ".img.gz", ".IMG") if low.endswith(".hdr") else (".hdr", ".HDR")):
            other = path.parent / (stem + ext)
            try:
                st = os.stat(other)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                raise VolumeReadError(
                    other, "not a regular file (a device, FIFO or socket); refused"
                )
            out.append(other)
        return out
    return []


def _bytes_per_pixel(reader) -> int:
    import SimpleITK as sitk

    probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID())
    return probe.GetSizeOfPixelComponent() * max(1, reader.GetNumberOfComponents())


def check_image_memory(path: Path, reader) -> None:
    """Refuse (VolumeReadError naming the file and the figures) an image whose voxels,
    as its header describes them, do not fit in the available memory."""
    from napari_vnet.io.memory import memory_problem

    size = [int(n) for n in reader.GetSize()]
    nbytes = int(np.prod(size, dtype=object)) * _bytes_per_pixel(reader)
    shape = " x ".join(str(n) for n in reversed(size))
    problem = memory_problem(nbytes, f"the image ({shape} voxels)")
    if problem:
        raise VolumeReadError(path, problem)


def _dicom_metadata(series: DicomSeries) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format": "DICOM",
        "modality": series.modality,
        "series_description": series.description,
        "series_uid": series.uid,
        "series_key": series.key,
        "series_number": series.series_number,
        "patient_name": series.patient_name,
        "patient_id": series.patient_id,
        "study_uid": series.study_uid,
        "study_description": series.study_description,
        "study_date": series.study_date,
        "source_files": list(series.files),
        "name": series.name,
    }
    if series.window is not None:
        meta["window_center"], meta["window_width"] = series.window
    return meta


def _check_series_memory(series: DicomSeries, first: str) -> None:
    """Refuse a series whose decoded voxels (slices x rows x columns x pixel size, from the
    headers) do not fit in the available memory, before any pixel is decoded."""
    import SimpleITK as sitk

    from napari_vnet.io.memory import memory_problem

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(first)
    reader.ReadImageInformation()
    per_file = int(np.prod([int(n) for n in reader.GetSize()], dtype=object))
    nbytes = per_file * len(series.files) * _bytes_per_pixel(reader)
    if getattr(series.extra.get("shear"), "resampled", False):  # the re-gridded copy
        nbytes += int(np.prod(series.shape, dtype=object)) * _bytes_per_pixel(reader)
    shape = " x ".join(str(n) for n in series.shape)
    problem = memory_problem(nbytes, f"the DICOM series {series.name!r} ({shape} voxels)")
    if problem:
        raise VolumeReadError(series.folder, problem)


def read_dicom_series(series: DicomSeries) -> Volume:
    """Read one discovered DICOM series (all its slices, ordered by position)."""
    import SimpleITK as sitk

    folder = series.folder
    try:
        with itk_names(series.files) as names:
            _check_series_memory(series, names[0])
            if len(names) == 1:
                image = sitk.ReadImage(names[0])
            else:
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(names)
                image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(
            folder, f"DICOM series {series.name!r}: {_clean_itk_message(exc)}"
        ) from exc
    meta = _dicom_metadata(series)
    duplicates = series.extra.get("duplicate_slices")
    if duplicates:
        meta["duplicate_slices"] = duplicates
        message = f"{folder}: DICOM series {series.name!r}: {duplicates}"
        log.warning(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    irregular = series.extra.get("irregular_spacing")
    if irregular:
        meta["irregular_spacing"] = irregular
        message = f"{folder}: DICOM series {series.name!r}: {irregular}"
        log.warning(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    if series.extra.get("shear") is not None:  # gantry tilt: re-gridded, with a warning
        meta["n_components"] = int(image.GetNumberOfComponentsPerPixel())
        return unsheared_volume(image_array(image), image.GetPixelIDTypeAsString(), series, meta)
    return image_to_volume(image, path=folder, metadata=meta)


def _read_dicom_path(path: Path, series) -> Volume:
    if path.is_dir():
        found = list_dicom_series(path)
        if not found:
            found = list_dicom_series(path, recursive=True)
        return read_dicom_series(select_series(found, series, path))
    problem = dicom_length_problem(path)
    if problem:
        raise VolumeReadError(path, problem)
    from napari_vnet.io.dicom_seg import is_dicom_seg, read_dicom_seg

    if is_dicom_seg(path):  # a segmentation: labels on its source series' grid
        return read_dicom_seg(path)
    chosen = find_series_of_file(path)
    if chosen is None:
        raise VolumeReadError(path, "not a readable DICOM image file")
    return read_dicom_series(chosen)


# ------------------------------------------------------- NIfTI without a second copy
# ITK's NIfTI IO reads the whole voxel block into a buffer of its own and then copies it
# into the image (2x the volume at peak). For plain single-file NIfTI (no intensity
# scaling, scalar type, dims as ITK reports them) the voxels are read here straight
# into the final numpy array in chunks, with ITK's own conventions (non-finite floats
# become 0, as nifti1_io does); the geometry still comes from ITK's header reading.

_NIFTI_TYPES = {
    2: "u1",
    4: "i2",
    8: "i4",
    16: "f4",
    64: "f8",
    256: "i1",
    512: "u2",
    768: "u4",
    1024: "i8",
    1280: "u8",
}
_CHUNK = 1 << 24  # 16 MiB per read


def _nifti_plain_header(head: bytes):
    """(byte order, dims, dtype, vox_offset) of a plain single-file NIfTI, else None."""
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348 and head[344:347] == b"n+1":
            dim = struct.unpack(endian + "8h", head[40:56])
            code = struct.unpack(endian + "h", head[70:72])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            slope, inter = struct.unpack(endian + "ff", head[112:120])
            break
        if size == 540 and len(head) >= 540 and head[4:7] == b"n+2":
            dim = struct.unpack(endian + "8q", head[16:80])
            code = struct.unpack(endian + "h", head[12:14])[0]
            offset = struct.unpack(endian + "q", head[168:176])[0]
            slope, inter = struct.unpack(endian + "dd", head[176:192])
            break
    else:
        return None
    if code not in _NIFTI_TYPES or not 1 <= dim[0] <= 4:
        return None
    if slope not in (0.0, 1.0) or (slope == 1.0 and inter != 0.0):
        return None  # ITK rescales to float: leave it to ITK
    dtype = np.dtype(endian + _NIFTI_TYPES[code])
    return dtype, [int(d) for d in dim[1 : dim[0] + 1]], offset


def _gunzip_into(fh, flat: np.ndarray, skip: int) -> int:
    """Inflate the gzip stream ``fh`` into ``flat`` (uint8), dropping its first ``skip``
    bytes; returns the number of bytes stored. Memory: a few MiB of buffers."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    pos, n, buf = 0, flat.size, b""
    while pos < n:
        if not buf:
            if inflater.eof:  # a multi-member gzip file: next member
                buf = inflater.unused_data
                inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
            if not buf:
                buf = fh.read(1 << 22)
                if not buf:
                    break
        out = memoryview(inflater.decompress(buf, min(n - pos + skip, _CHUNK)))
        buf = inflater.unconsumed_tail
        if skip:
            cut = min(skip, len(out))
            out, skip = out[cut:], skip - cut
        flat[pos : pos + len(out)] = np.frombuffer(out, np.uint8)
        pos += len(out)
        if inflater.eof and not buf:
            buf = inflater.unused_data
            if buf:
                inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    return pos


def _read_nifti_voxels(path: Path, reader) -> np.ndarray | None:
    import SimpleITK as sitk

    gz = path.name.lower().endswith(".gz")
    with (gzip.open if gz else open)(path, "rb") as fh:
        parsed = _nifti_plain_header(fh.read(544))
    if parsed is None or reader.GetNumberOfComponents() != 1:
        return None
    dtype, dims, offset = parsed
    size = list(reader.GetSize())
    if [d for d in dims if d != 1] != [d for d in size if d != 1]:
        return None  # ITK sees other dimensions (e.g. vector intent): let it read
    native = dtype.newbyteorder("=")
    probe = sitk.GetArrayViewFromImage(sitk.Image([1] * len(size), reader.GetPixelID()))
    if probe.dtype != native:
        return None
    array = np.empty(tuple(reversed(size)), native)
    flat = array.reshape(-1).view(np.uint8)
    with open(path, "rb", buffering=0) as fh:
        if gz:
            pos = _gunzip_into(fh, flat, offset)
        else:
            fh.seek(offset)
            pos = 0
            while pos < flat.size:
                got = fh.readinto(memoryview(flat[pos : pos + _CHUNK]))
                if not got:
                    break
                pos += got
    if pos < flat.size:
        raise VolumeReadError(
            path, f"the file is truncated: {pos} of {flat.size} voxel bytes found"
        )
    values = array.reshape(-1)
    step = max(1, _CHUNK // native.itemsize)
    for start in range(0, values.size, step):
        part = values[start : start + step]
        if dtype.byteorder not in ("=", "|") and dtype != native:
            part.byteswap(inplace=True)
        if native.kind == "f":
            part[~np.isfinite(part)] = 0  # nifti1_io's (and so SimpleITK's) convention
    return array


def _use_direct_nifti(ext: str, reader, forced: bool | None) -> bool:
    if forced is not None:
        return forced
    if ext == ".nii":
        return True  # plain file reads: faster than ITK and no second copy
    from napari_vnet.io.memory import available_memory

    nbytes = int(np.prod(reader.GetSize())) * reader.GetNumberOfComponents() * 8  # upper bound
    free = available_memory()  # the one measure of free memory (MemAvailable, limits)
    return free is not None and nbytes > free // 4


def _volume_from_reader(reader, array: np.ndarray, path: Path, metadata: dict) -> Volume:
    dim = reader.GetDimension()
    import SimpleITK as sitk

    meta = {"n_components": 1}
    meta.update(metadata)
    return Volume(
        array=array,
        spacing=tuple(float(v) for v in reversed(reader.GetSpacing())),
        origin=tuple(float(v) for v in reversed(reader.GetOrigin())),
        direction=np.asarray(reader.GetDirection(), float).reshape(dim, dim)[::-1, ::-1].copy(),
        pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
        metadata=meta,
        path=str(path),
    )


def read_volume(
    path: str | os.PathLike,
    *,
    series: int | str | DicomSeries | None = None,
    fast_nifti: bool | None = None,
) -> Volume:
    """Read a medical volume: a file (NIfTI, MHA/MHD, NRRD, Analyze, GIPL, DICOM) or a
    DICOM folder. One DICOM file reads its whole series (slices ordered by position).

    ``series`` picks one series (index, SeriesInstanceUID or :class:`DicomSeries` key)
    when a folder holds several; without it such a folder raises an error listing them.
    The returned array shares SimpleITK's buffer (no extra copy) and is writeable.
    ITK's NIfTI IO holds two copies at its peak, so plain NIfTI voxels are read straight
    into the array instead (same values as SimpleITK; the tests check it): always for
    ``.nii``; for ``.nii.gz`` only when the volume is large for the free memory
    (> 1/4 of it), since ITK's own inflate is faster than Python's zlib.
    ``fast_nifti=True``/``False`` forces the direct/ITK path.

    Raises :class:`VolumeReadError` naming the file and the problem.
    """
    import SimpleITK as sitk

    path = Path(path)
    _check_file(path)
    if path.is_dir():
        return _read_dicom_path(path, series)
    if not has_volume_extension(path):
        if is_dicom_file(path):
            return _read_dicom_path(path, series)
        raise VolumeReadError(
            path,
            f"unsupported file type {split_extension(path)[1]!r} (supported: "
            + ", ".join(READ_EXTENSIONS)
            + ", DICOM files and folders)",
        )
    name, ext = split_extension(path)
    meta = {"format": ext.lower(), "name": name, "source_path": str(path)}
    companions = _companions(path)
    reader = sitk.ImageFileReader()
    try:
        with itk_name(path, companions) as itk_path:
            reader.SetFileName(itk_path)
            reader.ReadImageInformation()
            if 0 in reader.GetSize():
                size = " x ".join(str(int(n)) for n in reversed(reader.GetSize()))
                raise VolumeReadError(
                    path, f"the header describes an empty image ({size} voxels)"
                )
            check_image_memory(path, reader)
            _check_complete(path, reader)
            if ext.lower() in (".nii", ".nii.gz") and _use_direct_nifti(
                ext.lower(), reader, fast_nifti
            ):
                array = _read_nifti_voxels(path, reader)
                if array is not None:
                    return _volume_from_reader(reader, array, path, meta)
            image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(path, _clean_itk_message(exc)) from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeReadError(path, f"the file is truncated or corrupt ({exc})") from exc
    return image_to_volume(image, path=path, metadata=meta)


def read_header(path: str | os.PathLike, *, series=None) -> dict[str, Any]:
    """Header facts without reading pixel data.

    Keys: path, format, shape (numpy order, z y x [c]), spacing, origin, direction
    (z, y, x convention), pixel_type, n_components, description, modality, and for DICOM
    patient/study/series fields and window.
    """
    import SimpleITK as sitk

    path = Path(path)
    _check_file(path)
    if path.is_dir() or (not has_volume_extension(path) and is_dicom_file(path)):
        if path.is_dir():
            found = list_dicom_series(path) or list_dicom_series(path, recursive=True)
            chosen = select_series(found, series, path)
        else:
            problem = dicom_length_problem(path)
            if problem:
                raise VolumeReadError(path, problem)
            chosen = find_series_of_file(path)
            if chosen is None:
                raise VolumeReadError(path, "not a readable DICOM image file")
        return chosen.header()
    if not has_volume_extension(path):
        raise VolumeReadError(path, f"unsupported file type {split_extension(path)[1]!r}")
    companions = _companions(path)
    reader = sitk.ImageFileReader()
    try:
        with itk_name(path, companions) as itk_path:
            reader.SetFileName(itk_path)
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeReadError(path, _clean_itk_message(exc)) from exc
    dim = reader.GetDimension()
    ncomp = int(reader.GetNumberOfComponents())
    shape = tuple(int(s) for s in reversed(reader.GetSize()))
    if ncomp > 1:
        shape = shape + (ncomp,)
    d = np.asarray(reader.GetDirection(), float).reshape(dim, dim)[::-1, ::-1]
    name, ext = split_extension(path)
    return {
        "path": str(path),
        "format": ext.lower(),
        "shape": shape,
        "spacing": tuple(float(v) for v in reversed(reader.GetSpacing())),
        "origin": tuple(float(v) for v in reversed(reader.GetOrigin())),
        "direction": d.tolist(),
        "pixel_type": sitk.GetPixelIDValueAsString(reader.GetPixelID()),
        "n_components": ncomp,
        "description": name,
        "modality": "",
        "window": None,
    }
