"""Reading medical volumes with SimpleITK into :class:`~napari_vnet.io.volume.Volume`.

The array shares the SimpleITK image's pixel buffer (no second copy of the volume):
it is a writeable numpy view whose ``base`` keeps the image alive. Plain NIfTI voxels
can also be read straight into the array (ITK's NIfTI IO would hold two copies), see
:func:`read_volume`. Truncated NIfTI/GIPL/Analyze files, which ITK silently pads, are
detected from their headers and sizes.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import os
import re
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_vnet.io.dicom import (
    DicomSeries,
    find_series_of_file,
    is_dicom_file,
    list_dicom_series,
    select_series,
)
from napari_vnet.io.dicom_lengths import dicom_length_problem
from napari_vnet.io.dicom_tilt import unsheared_volume
from napari_vnet.io.dicom_zip import is_zip_name
from napari_vnet.io.errors import VolumeReadError
from napari_vnet.io.headers import (
    IMAGE_IO,
    READ_EXTENSIONS,
    companion_files,
    has_volume_extension,
    known_suffix,
    nifti_data_size,
    nifti_facts,
    split_extension,
)
from napari_vnet.io.nifti import read_nifti_voxels, use_direct_nifti
from napari_vnet.io.paths import itk_name, itk_names
from napari_vnet.io.volume import Volume

log = logging.getLogger(__name__)

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


def _geometry(source) -> dict[str, Any]:
    """Spacing, origin and direction in (z, y, x) order of a SimpleITK image or of an
    ImageFileReader that has read the header."""
    dim = source.GetDimension()
    return {
        "spacing": tuple(float(v) for v in reversed(source.GetSpacing())),
        "origin": tuple(float(v) for v in reversed(source.GetOrigin())),
        "direction": np.asarray(source.GetDirection(), float).reshape(dim, dim)[::-1, ::-1].copy(),
    }


def image_to_volume(image, *, path=None, metadata: dict | None = None) -> Volume:
    """Wrap a SimpleITK image as a Volume (shares memory; geometry in z, y, x order)."""
    meta = {"n_components": int(image.GetNumberOfComponentsPerPixel())}
    meta.update(metadata or {})
    return Volume(
        array=image_array(image),
        **_geometry(image),
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
    cleaned: list[str] = []
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
        sizes = nifti_data_size(head)
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
    for key in ("duplicate_slices", "irregular_spacing"):  # found while sorting the slices
        problem = series.extra.get(key)
        if problem:
            meta[key] = problem
            message = f"{folder}: DICOM series {series.name!r}: {problem}"
            log.warning(message)
            warnings.warn(message, UserWarning, stacklevel=2)
    if series.extra.get("shear") is not None:  # gantry tilt: re-gridded, with a warning
        meta["n_components"] = int(image.GetNumberOfComponentsPerPixel())
        return unsheared_volume(image_array(image), image.GetPixelIDTypeAsString(), series, meta)
    return image_to_volume(image, path=folder, metadata=meta)


def _check_dicom_file(path: Path) -> None:
    """Refuse a DICOM file whose element lengths run past its end (before GDCM sees it)."""
    problem = dicom_length_problem(path)
    if problem:
        raise VolumeReadError(path, problem)


def _dicom_series(path: Path, series) -> DicomSeries:
    """The series of a DICOM folder (``series`` picks one of several; its subfolders are
    searched when it holds none itself) or the series a DICOM file belongs to."""
    if path.is_dir():
        found = list_dicom_series(path) or list_dicom_series(path, recursive=True)
        return select_series(found, series, path)
    chosen = find_series_of_file(path)
    if chosen is None:
        raise VolumeReadError(path, "not a readable DICOM image file")
    return chosen


def _read_dicom_path(path: Path, series) -> Volume:
    if not path.is_dir():
        _check_dicom_file(path)
        from napari_vnet.io.dicom_seg import is_dicom_seg, read_dicom_seg

        if is_dicom_seg(path):  # a segmentation: labels on its source series' grid
            return read_dicom_seg(path)
    return read_dicom_series(_dicom_series(path, series))


def _volume_from_reader(reader, array: np.ndarray, path: Path, metadata: dict) -> Volume:
    import SimpleITK as sitk

    meta = {"n_components": 1}
    meta.update(metadata)
    return Volume(
        array=array,
        **_geometry(reader),
        pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
        metadata=meta,
        path=str(path),
    )


@contextlib.contextmanager
def _header_read(path: Path, companions) -> Iterator[Any]:
    """``with _header_read(path, companion_files(path)) as reader:`` a SimpleITK
    ImageFileReader of ``path`` with its header read; the file stays reachable under the
    reader's name inside the block (``reader.Execute()`` reads the voxels). ITK's
    ``RuntimeError``, there or in the block, becomes a :class:`VolumeReadError`."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    try:
        with itk_name(path, companions) as itk_path:
            reader.SetFileName(itk_path)
            reader.ReadImageInformation()
            yield reader
    except RuntimeError as exc:
        raise VolumeReadError(path, _clean_itk_message(exc)) from exc


def read_volume(
    path: str | os.PathLike,
    *,
    series: int | str | DicomSeries | None = None,
    fast_nifti: bool | None = None,
) -> Volume:
    """Read a medical volume: a file (NIfTI, MHA/MHD, NRRD, Analyze, GIPL, DICOM), a
    DICOM folder or a zip of one (:mod:`napari_vnet.io.dicom_zip`). One DICOM file reads
    its whole series (slices ordered by position).

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
    path = Path(path)
    _check_file(path)
    if path.is_dir():
        return _read_dicom_path(path, series)
    if not has_volume_extension(path):
        if is_dicom_file(path):
            return _read_dicom_path(path, series)
        if is_zip_name(path):  # a zipped DICOM folder (napari_vnet.io.dicom_zip)
            from napari_vnet.io.dicom_zip import read_dicom_zip

            return read_dicom_zip(path, series)
        raise VolumeReadError(
            path,
            f"unsupported file type {split_extension(path)[1]!r} (supported: "
            + ", ".join(READ_EXTENSIONS)
            + ", DICOM files and folders, zips of a DICOM folder)",
        )
    name, ext = split_extension(path)
    meta = {"format": ext.lower(), "name": name, "source_path": str(path)}
    companions = companion_files(path)
    try:
        with _header_read(path, companions) as reader:
            if 0 in reader.GetSize():
                size = " x ".join(str(int(n)) for n in reversed(reader.GetSize()))
                raise VolumeReadError(
                    path, f"the header describes an empty image ({size} voxels)"
                )
            check_image_memory(path, reader)
            _check_complete(path, reader)
            if ext.lower() in (".nii", ".nii.gz") and use_direct_nifti(
                ext.lower(), reader, fast_nifti
            ):
                array = read_nifti_voxels(path, reader)
                if array is not None:
                    return _volume_from_reader(reader, array, path, meta)
            image = reader.Execute()
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
        if not path.is_dir():
            _check_dicom_file(path)
        return _dicom_series(path, series).header()
    if not has_volume_extension(path):
        raise VolumeReadError(path, f"unsupported file type {split_extension(path)[1]!r}")
    with _header_read(path, companion_files(path)) as reader:
        pass  # the header is all that is read
    ncomp = int(reader.GetNumberOfComponents())
    shape = tuple(int(s) for s in reversed(reader.GetSize()))
    if ncomp > 1:
        shape = shape + (ncomp,)
    geometry = _geometry(reader)
    name, ext = split_extension(path)
    return {
        "path": str(path),
        "format": ext.lower(),
        "shape": shape,
        "spacing": geometry["spacing"],
        "origin": geometry["origin"],
        "direction": geometry["direction"].tolist(),
        "pixel_type": sitk.GetPixelIDValueAsString(reader.GetPixelID()),
        "n_components": ncomp,
        "description": name,
        "modality": "",
        "window": None,
    }


def read_file_header(path: str | os.PathLike) -> dict[str, Any]:
    """Shape and spacing ``(z, y, x)`` and pixel type of a volume file, from its header
    (fast: what a folder listing needs for each of thousands of files).

    Plain NIfTI is parsed from its first bytes; other formats use the ImageIO that the
    suffix names (no probing, so only the header is read); falls back to
    :func:`read_header` when that ImageIO refuses the file.
    Raises :class:`VolumeReadError` naming the file when neither can.
    """
    import SimpleITK as sitk

    path = str(path)
    suffix = known_suffix(os.path.basename(path))
    if suffix in (".nii", ".nii.gz"):
        head = nifti_facts(path)
        if head is not None:
            return head
    companions = companion_files(Path(path))  # data files checked before ITK opens them
    io_name = IMAGE_IO.get(suffix)
    if io_name is not None:
        reader = sitk.ImageFileReader()
        reader.SetImageIO(io_name)
        try:
            with itk_name(path, companions) as itk_path:
                reader.SetFileName(itk_path)
                reader.ReadImageInformation()
        except RuntimeError:
            pass  # let read_header try every ImageIO and word the error
        else:
            return {
                "shape": tuple(int(s) for s in reader.GetSize())[::-1],
                "spacing": tuple(float(s) for s in reader.GetSpacing())[::-1],
                "pixel_type": sitk.GetPixelIDValueAsString(reader.GetPixelID()),
                "components": int(reader.GetNumberOfComponents()),
            }
    return read_header(path)
