"""NIfTI voxels read straight into the final numpy array (no second copy).

ITK's NIfTI IO reads the whole voxel block into a buffer of its own and then copies it
into the image (2x the volume at peak). For plain single-file NIfTI (no intensity
scaling, scalar type, dims as ITK reports them) the voxels are read here straight
into the final numpy array in chunks, with ITK's own conventions (non-finite floats
become 0, as nifti1_io does); the geometry still comes from ITK's header reading.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from napari_vnet.io.errors import VolumeReadError
from napari_vnet.io.headers import nifti_voxel_layout

_CHUNK = 1 << 24  # 16 MiB per read


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


def read_nifti_voxels(path: Path, reader) -> np.ndarray | None:
    """The voxels of the NIfTI file ``path`` (whose header ``reader`` has read) as the
    (z, y, x) array SimpleITK would give, or None when ITK should read it (scaled, vector,
    other dimensions or pixel type than ITK reports). VolumeReadError when truncated."""
    import SimpleITK as sitk

    gz = path.name.lower().endswith(".gz")
    with (gzip.open if gz else open)(path, "rb") as fh:
        parsed = nifti_voxel_layout(fh.read(544))
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
                got = fh.readinto(flat[pos : pos + _CHUNK].data)
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


def use_direct_nifti(ext: str, reader, forced: bool | None) -> bool:
    """Whether :func:`read_nifti_voxels` reads this file: ``forced`` when given, else
    always for ``.nii``, and for ``.nii.gz`` when the volume is large for the free memory."""
    if forced is not None:
        return forced
    if ext == ".nii":
        return True  # plain file reads: faster than ITK and no second copy
    from napari_vnet.io.memory import available_memory

    nbytes = int(np.prod(reader.GetSize())) * reader.GetNumberOfComponents() * 8  # upper bound
    free = available_memory()  # the one measure of free memory (MemAvailable, limits)
    return free is not None and nbytes > free // 4
