"""What a medical image file's name and first bytes say, without SimpleITK.

* **suffix tables**: the endings SimpleITK reads, the ones a folder listing shows as one
  scan each, their pixel-data companions, DICOM's, and the ImageIO of each format;
* **NIfTI-1/-2 and Analyze 7.5 headers** parsed from their first 540 bytes (sizes for
  the completeness checks, the voxel layout for the direct NIfTI read, shape/spacing/type
  for a fast folder listing);
* **data files named by a header** (MetaImage/NRRD ``ElementDataFile``/``data file``,
  the ``.img`` of an Analyze pair), checked to be regular files in the header's folder
  before SimpleITK opens anything;
* the **DICOM** preamble (``DICM`` at byte 128).
"""

from __future__ import annotations

import math
import os
import stat
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_vnet.io.errors import VolumeReadError

# ------------------------------------------------------------------------ suffixes

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
#: Extensions treated as DICOM even when the 128-byte preamble + "DICM" is missing.
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
#: Single-file volume formats listed as one scan each (lower-case suffixes): every read
#: extension but ``.img``, which is read through its ``.hdr``.
VOLUME_SUFFIXES = tuple(ext for ext in READ_EXTENSIONS if ext != ".img")
#: Pixel-data companions of header files: never listed on their own.
DATA_SUFFIXES = (".raw", ".img", ".zraw", ".raw.gz", ".img.gz")
#: Suffixes that are certainly not volumes (skipped without opening).
IGNORED_SUFFIXES = (
    ".json",
    ".txt",
    ".md",
    ".csv",
    ".py",
    ".png",
    ".jpg",
    ".jpeg",
    ".pdf",
    ".zip",
    ".pt",
    ".pth",
    ".xml",
    ".yaml",
    ".yml",
    ".log",
    ".tmp",
)
#: SimpleITK ImageIO per volume suffix: naming it skips the probing of every registered
#: ImageIO (which reads tens of kB of each file, pixel data included, before the header).
IMAGE_IO = {
    ".nii": "NiftiImageIO",
    ".nii.gz": "NiftiImageIO",
    ".hdr": "NiftiImageIO",
    ".mha": "MetaImageIO",
    ".mhd": "MetaImageIO",
    ".nrrd": "NrrdImageIO",
    ".nhdr": "NrrdImageIO",
    ".gipl": "GiplImageIO",
    ".gipl.gz": "GiplImageIO",
}


def split_suffix(name: str, suffixes: Sequence[str]) -> tuple[str, str] | None:
    """``(stem, suffix)`` for the first of ``suffixes`` (lower case) that ``name`` ends
    with in any case and is longer than (the suffix keeps ``name``'s case); else None."""
    low = name.lower()
    for ext in suffixes:
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    return None


def split_extension(path: str | os.PathLike) -> tuple[str, str]:
    """``("name", ".nii.gz")`` for ``dir/name.nii.gz``; double extensions stay whole."""
    name = Path(path).name
    return split_suffix(name, READ_EXTENSIONS + DICOM_EXTENSIONS) or os.path.splitext(name)


def has_volume_extension(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(READ_EXTENSIONS)


def known_suffix(name: str, suffixes: Sequence[str] = VOLUME_SUFFIXES + DATA_SUFFIXES) -> str:
    """The first of ``suffixes`` that ``name`` ends with (any case), else its last
    extension; lower case (``"CT.NII.GZ"`` -> ``".nii.gz"``, ``"a.Raw"`` -> ``".raw"``)."""
    low = name.lower()
    for suf in suffixes:
        if low.endswith(suf):
            return suf
    return os.path.splitext(low)[1]


# --------------------------------------------------------------------- first bytes


def read_head(path: str | os.PathLike, size: int) -> bytes | None:
    """The first ``size`` bytes of a regular file; None for anything else or an unreadable
    file (a FIFO or device would block or never end, so it is not opened)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return None


def dicom_preamble(head: bytes) -> bool:
    """Part-10 DICOM files carry 'DICM' at byte 128."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def has_dicom_magic(path: str | os.PathLike) -> bool:
    """A regular file with the DICOM preamble (reads 132 bytes, no pixels)."""
    head = read_head(path, 132)
    return head is not None and dicom_preamble(head)


def is_analyze_pair(path: Path) -> bool:
    """An Analyze 7.5 / NIfTI-1 pair: the .hdr (or the .img's .hdr) starts with the
    int32 348 (its own size) in either byte order."""
    hdr = path if path.suffix.lower() == ".hdr" else path.with_suffix(".hdr")
    if not hdr.is_file():
        hdr = path.with_suffix(".HDR")
    try:
        with open(hdr, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return len(head) == 4 and (
        int.from_bytes(head, "little") == 348 or int.from_bytes(head, "big") == 348
    )


# -------------------------------------------------------------------- NIfTI header

#: NIfTI datatype code -> (numpy type, SimpleITK pixel type) of the plain scalar types
NIFTI_SCALAR_TYPES = {
    2: ("u1", "8-bit unsigned integer"),
    4: ("i2", "16-bit signed integer"),
    8: ("i4", "32-bit signed integer"),
    16: ("f4", "32-bit float"),
    64: ("f8", "64-bit float"),
    256: ("i1", "8-bit signed integer"),
    512: ("u2", "16-bit unsigned integer"),
    768: ("u4", "32-bit unsigned integer"),
    1024: ("i8", "64-bit signed integer"),
    1280: ("u8", "64-bit unsigned integer"),
}

# header size -> (offset, struct format) of each field used
_NIFTI_LAYOUT: dict[int, dict[str, tuple[int, str]]] = {
    348: {
        "dim": (40, "8h"),
        "datatype": (70, "h"),
        "bitpix": (72, "h"),
        "pixdim": (76, "8f"),
        "vox_offset": (108, "f"),
        "scaling": (112, "2f"),
    },
    540: {
        "datatype": (12, "h"),
        "bitpix": (14, "h"),
        "dim": (16, "8q"),
        "pixdim": (104, "8d"),
        "vox_offset": (168, "q"),
        "scaling": (176, "2d"),
    },
}
# header size -> offset of the 4-byte magic
_NIFTI_MAGIC_OFFSET = {348: 344, 540: 4}


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1/-2 or Analyze 7.5 header napari-vnet uses, as stored."""

    byteorder: str  # "<" or ">"
    size: int  # 348 (NIfTI-1, Analyze) or 540 (NIfTI-2)
    magic: bytes  # b"n+1"/b"n+2": one file; b"ni1"/b"ni2": a pair; else Analyze
    dim: tuple[int, ...]  # all 8 entries: dim[0] is the number of axes
    datatype: int
    bitpix: int
    pixdim: tuple[float, ...]  # all 8 entries
    vox_offset: float  # a float in NIfTI-1, an integer in NIfTI-2
    scl_slope: float
    scl_inter: float

    @property
    def single_file(self) -> bool:
        """A ``.nii`` (header and voxels in one file)."""
        return self.magic == (b"n+1" if self.size == 348 else b"n+2")


def parse_nifti_header(head: bytes) -> NiftiHeader | None:
    """The header at the start of ``head`` (the first 540 bytes of the file, inflated),
    or None when it starts with no NIfTI-1/-2 or Analyze header size in either byte order."""
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0] if len(head) >= 4 else 0
        if size in _NIFTI_LAYOUT and len(head) >= size:
            break
    else:
        return None
    layout = _NIFTI_LAYOUT[size]

    def field(name: str) -> tuple[Any, ...]:
        offset, fmt = layout[name]
        return struct.unpack_from(endian + fmt, head, offset)

    magic = _NIFTI_MAGIC_OFFSET[size]
    return NiftiHeader(
        byteorder=endian,
        size=size,
        magic=bytes(head[magic : magic + 3]),
        dim=field("dim"),
        datatype=field("datatype")[0],
        bitpix=field("bitpix")[0],
        pixdim=field("pixdim"),
        vox_offset=field("vox_offset")[0],
        scl_slope=field("scaling")[0],
        scl_inter=field("scaling")[1],
    )


def nifti_data_size(head: bytes) -> tuple[int, int] | None:
    """(data offset, data bytes) from a NIfTI-1/-2 or Analyze header, or None."""
    header = parse_nifti_header(head)
    if header is None:
        return None
    offset = int(header.vox_offset)
    n = header.dim[0]
    if not 1 <= n <= 7 or header.bitpix <= 0:
        return None
    nbytes = int(np.prod([max(int(d), 1) for d in header.dim[1 : n + 1]])) * header.bitpix // 8
    return offset, nbytes


def nifti_voxel_layout(head: bytes) -> tuple[np.dtype, list[int], int] | None:
    """(dtype, dims, vox_offset) of a plain single-file NIfTI (scalar type, 1 to 4 axes, no
    intensity scaling), else None."""
    header = parse_nifti_header(head)
    if header is None or not header.single_file:
        return None
    n = header.dim[0]
    if header.datatype not in NIFTI_SCALAR_TYPES or not 1 <= n <= 4:
        return None
    slope, inter = header.scl_slope, header.scl_inter
    if slope not in (0.0, 1.0) or (slope == 1.0 and inter != 0.0):
        return None  # ITK rescales to float: leave it to ITK
    dtype = np.dtype(header.byteorder + NIFTI_SCALAR_TYPES[header.datatype][0])
    return dtype, [int(d) for d in header.dim[1 : n + 1]], int(header.vox_offset)


def nifti_facts(path: str) -> dict[str, Any] | None:
    """Shape/spacing/pixel type of a plain 2D/3D scalar NIfTI-1 file from its first bytes.

    ITK's NIfTI reader takes ~15 ms per ``.nii.gz`` header (it re-opens and re-buffers
    the stream); this reads at most 8 kB and inflates only the header. Returns None for
    anything unusual (rescaled, 4D, vector, odd sizes) so that SimpleITK decides.
    """
    gz = path.lower().endswith(".gz")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8192 if gz else 544)
        head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, 544) if gz else raw
    except (OSError, zlib.error):
        return None
    header = parse_nifti_header(head)
    if header is None or header.size != 348:
        return None  # SimpleITK reads no NIfTI-2: listed as readable, it would not open
    ndim = header.dim[0]
    sizes, spacing = header.dim[1 : ndim + 1], header.pixdim[1 : ndim + 1]
    if (
        ndim not in (2, 3)
        or header.datatype not in NIFTI_SCALAR_TYPES
        or any(n < 2 for n in sizes)
        or not all(math.isfinite(d) and d > 0 for d in spacing)
        or header.scl_slope not in (0.0, 1.0)
        or header.scl_inter != 0.0
    ):
        return None
    return {
        "shape": tuple(int(n) for n in sizes)[::-1],
        "spacing": tuple(float(d) for d in spacing)[::-1],
        "pixel_type": NIFTI_SCALAR_TYPES[header.datatype][1],
        "components": 1,
    }


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


def _file_names(lines: list[str], i: int, value: str) -> list[str]:
    """The names a data-file value on line ``i`` gives: ``LIST`` (the names on the
    following lines), a ``%d`` pattern, or one file."""
    if value.upper().startswith("LIST"):
        return [ln.strip() for ln in lines[i + 1 :] if ln.strip()]
    return _expand_pattern(value) or [value]


def _metaimage_data_names(lines: list[str]) -> list[str] | None:
    """The ``ElementDataFile`` names of a MetaImage header; None for ``LOCAL`` data."""
    for i, line in enumerate(lines):
        key, sep, value = line.partition("=")
        if not sep or key.strip() != "ElementDataFile":
            continue
        value = value.strip()
        if value.upper() == "LOCAL" or not value:
            return None
        return _file_names(lines, i, value)
    return None


def _nrrd_data_names(lines: list[str]) -> list[str] | None:
    """The ``data file`` names of a NRRD header: none when the data follows the header
    (``[]`` when the blank line that ends the header was read), None for no NRRD header."""
    if not lines or not lines[0].startswith("NRRD"):
        return None
    for i, line in enumerate(lines):
        if not line.strip():
            return []  # end of the header: the data follows
        key, sep, value = line.partition(":")  # ":=" starts a key/value pair, not a field
        if sep and not value.startswith("=") and key.strip().lower() in ("data file", "datafile"):
            return _file_names(lines, i, value.strip())
    return None


def _checked_data_file(path: Path, base: str, name: str) -> Path | None:
    """The data file ``name`` of the header ``path`` (in the real folder ``base``), None
    when it is missing; VolumeReadError when it is outside that folder or not a file."""
    raw = name.encode("latin-1")
    if b"\0" in raw:
        raise VolumeReadError(
            path, f"the header names a data file with a NUL byte ({name!r}); corrupt header"
        )
    candidate = os.path.join(os.fsencode(path.parent), raw)
    shown = os.fsdecode(raw)
    real = os.path.realpath(candidate)
    if not real.startswith(os.fsencode(base).rstrip(b"/") + b"/"):
        raise VolumeReadError(
            path,
            f"the header names the data file {shown!r}, which is outside the header's "
            "folder; refused (data files must lie in the header's folder or below)",
        )
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return None  # inside the folder but missing: ITK says so when pixels are read
    except OSError as exc:
        raise VolumeReadError(
            path,
            f"the data file {shown!r} named by the header cannot be opened ({exc.strerror or exc})",
        ) from exc
    if not stat.S_ISREG(st.st_mode):
        raise VolumeReadError(
            path,
            f"the data file {shown!r} named by the header is not a regular file "
            "(a device, FIFO, socket or folder); refused",
        )
    return Path(os.fsdecode(candidate))


def header_data_files(path: str | os.PathLike) -> list[Path] | None:
    """The data files a ``.mhd``/``.mha``/``.nhdr``/``.nrrd`` header names (None or ``[]``
    when the data is inside the header file, None for other formats), as paths under the
    header's folder. Raises :class:`VolumeReadError` for a name outside that folder or anything
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
    if low.endswith((".mhd", ".mha")):
        names = _metaimage_data_names(lines)
    else:
        names = _nrrd_data_names(lines)
    if names is None:
        return None
    base = os.path.realpath(path.parent)
    files = (_checked_data_file(path, base, name) for name in names)
    return [f for f in files if f is not None]


def companion_files(path: Path) -> list[Path]:
    """Files SimpleITK opens besides ``path`` (checked: regular files beside it): the
    data files its header names, or the other half of an Analyze ``.hdr``/``.img`` pair."""
    files = header_data_files(path)
    if files is not None:
        return files
    low = path.name.lower()
    if low.endswith((".hdr", ".img")):
        stem = path.name[:-4]
        out = []
        for ext in (".img", ".img.gz", ".IMG") if low.endswith(".hdr") else (".hdr", ".HDR"):
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
