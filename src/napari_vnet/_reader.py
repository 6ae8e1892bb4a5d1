"""npe2 reader: medical volumes (NIfTI, MHA/MHD, NRRD, Analyze, GIPL), DICOM series and
zips of DICOM files.

``napari_get_reader`` only looks at the name (and, for extension-less files, the 132
bytes of a DICOM preamble; for a zip, its member names and the first bytes of a few
members); it never raises. The reader it returns raises
:class:`napari_vnet.io.VolumeReadError` with the file and the problem for broken input.
Geometry: world coordinates are LPS millimetres (z, y, x), see ``napari_vnet.io.layers``.
Reading returns layer data and nothing else: napari's reader preferences are written by the
plugin's activation and ``napari-vnet napari-readers`` (:mod:`napari_vnet.reader_preferences`),
and the viewer's camera is kept radiological by the docks' session (:mod:`._widgets._session`).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_vnet.io import (
    Volume,
    VolumeReadError,
    as_label_array,
    display_range,
    find_series_of_file,
    is_dicom_file,
    list_dicom_series,
    looks_like_labels,
    read_dicom_series,
    read_volume,
    split_extension,
    volume_to_layer_kwargs,
)
from napari_vnet.io.dicom_zip import extracted_zip, is_zip_name, zip_holds_dicom
from napari_vnet.io.headers import has_volume_extension, is_analyze_pair
from napari_vnet.io.label_names import LabelSidecarError, labels_display_kwargs, read_label_classes

log = logging.getLogger(__name__)

_MAX_ENTRIES_PROBED = 400  # how many directory entries napari_get_reader may look at
_MAX_CHANNEL_LAYERS = 8  # more components than this become an extra axis, not layers


def _folder_has_dicom(folder: Path, depth: int = 2) -> bool:
    budget = [_MAX_ENTRIES_PROBED]

    def probe(d: Path, level: int) -> bool:
        subdirs = []
        with os.scandir(d) as it:
            for entry in it:
                budget[0] -= 1
                if budget[0] < 0:
                    return False
                if entry.name.startswith("."):
                    continue
                if entry.is_file() and is_dicom_file(entry.path):
                    return True
                if entry.is_dir():
                    subdirs.append(Path(entry.path))
        return level < depth and any(probe(s, level + 1) for s in sorted(subdirs))

    return probe(folder, 0)




def _napari_folder_reader(path):
    """napari's own reader for what napari-vnet does not read although it is the
    preferred reader (a folder without DICOM, a Radiance .hdr), or None."""
    try:
        from napari_builtins.io import napari_get_reader as builtin_get_reader
    except ImportError:  # napari without its builtins: nothing to hand over to
        return None
    return builtin_get_reader(path)


def napari_get_reader(path):
    """Return :func:`read_medical` if ``path`` looks like something we read, else None.

    A folder without DICOM files gets napari's own folder reader (napari-vnet is the
    preferred reader for folders, see :mod:`napari_vnet.reader_preferences`)."""
    try:
        if isinstance(path, (list, tuple)):
            if len(path) != 1:
                return None
            path = path[0]
        p = Path(path)
        if p.is_dir():
            return read_medical if _folder_has_dicom(p) else _napari_folder_reader(str(p))
        if p.suffix.lower() in (".hdr", ".img") and not is_analyze_pair(p):
            return _napari_folder_reader(str(p))  # Radiance HDR, raw images: napari's reader
        if has_volume_extension(p) or (p.is_file() and is_dicom_file(p)):
            return read_medical
        if is_zip_name(p) and p.is_file():  # only a zip of DICOM files is claimed
            return read_medical if zip_holds_dicom(p) else None
    except Exception:  # never raise from here (napari tries every reader)
        log.debug("napari_get_reader(%r) failed", path, exc_info=True)
    return None


def _unique(name: str, used: set[str]) -> str:
    out, n = name, 2
    while out in used:
        out = f"{name} ({n})"
        n += 1
    used.add(out)
    return out


def _add_class_names(kw: dict, path: str, own: list | None = None) -> None:
    """Class names and colours the file carries itself (``own``: a DICOM-SEG's segments)
    or from a sidecar (labels.json, ITK-SNAP, .ctbl, .seg.nrrd, dataset.json); a broken
    sidecar is a warning, never a reason not to open the labels."""
    if own:
        kw.update(labels_display_kwargs(own))
        kw["metadata"]["classes"] = own
        kw["metadata"]["classes_source"] = str(path)
        return
    try:
        found = read_label_classes(path)
    except LabelSidecarError as exc:
        warnings.warn(f"label names not read: {exc}", stacklevel=2)
        return
    if found is None:
        return
    classes, sidecar = found
    kw.update(labels_display_kwargs(classes))
    kw["metadata"]["classes"] = classes
    kw["metadata"]["classes_source"] = str(sidecar)
    log.info("%s: %d class names from %s", path, len(classes), sidecar)


def volume_layer_data(vol: Volume, name: str) -> list[tuple[Any, dict, str]]:
    """napari LayerDataTuples for one volume: Labels for label maps, else Image(s)."""
    n = len(vol.spacing)
    array = vol.array
    is_label = looks_like_labels(vol, name)
    kw = volume_to_layer_kwargs(vol, is_label=is_label)
    kw["name"] = name
    if is_label:
        if array.dtype.kind not in "iu":
            array = as_label_array(array, vol.path or name)
        if vol.path:
            _add_class_names(kw, vol.path, vol.metadata.get("classes"))
        return [(array, kw, "labels")]
    ncomp = array.ndim - n
    if ncomp == 1:
        channels = array.shape[-1]
        if n in (2, 3) and array.dtype == np.uint8 and channels in (3, 4):  # RGB(A) colour
            kw["rgb"] = True
            return [(array, kw, "image")]
        if channels <= _MAX_CHANNEL_LAYERS:
            kw["channel_axis"] = -1
            kw["contrast_limits"] = [
                display_range(vol.with_array(array[..., c], metadata={})) for c in range(channels)
            ]
            kw["colormap"] = "gray"
            return [(array, kw, "image")]
        # many components (e.g. a diffusion or displacement series): an extra leading axis
        array = np.moveaxis(array, -1, 0)
        kw["scale"] = (1.0,) + tuple(kw["scale"])
        kw["translate"] = (0.0,) + tuple(kw["translate"])
        if "units" in kw:
            kw["units"] = ("pixel", *kw["units"])
        if "axis_labels" in kw:
            kw["axis_labels"] = ("component", *kw["axis_labels"])
        if "affine" in kw:
            aff = np.eye(n + 2)
            aff[1:, 1:] = kw["affine"]
            kw["affine"] = aff
        kw["contrast_limits"] = display_range(vol.with_array(array, metadata={}))
        return [(array, kw, "image")]
    if ncomp != 0:
        raise VolumeReadError(vol.path or name, f"unexpected array shape {array.shape}")
    kw["contrast_limits"] = display_range(vol)
    kw["colormap"] = "gray"
    return [(array, kw, "image")]


def _dicom_folder_layers(folder: Path) -> list[tuple[Any, dict, str]]:
    """One layer per DICOM series in ``folder`` (or, when it holds none, its subfolders)."""
    series = list_dicom_series(folder) or list_dicom_series(folder, recursive=True)
    if not series:
        raise VolumeReadError(folder, "no DICOM image series found in this folder")
    used: set[str] = set()
    layers = []
    for s in series:
        layers += volume_layer_data(read_dicom_series(s), _unique(s.name, used))
    return layers


def _dicom_zip_layers(path: Path) -> list[tuple[Any, dict, str]]:
    """The layers of the DICOM folder zipped in ``path`` (checked and unpacked into a
    temporary folder: :mod:`napari_vnet.io.dicom_zip`); errors name the zip."""
    with extracted_zip(path) as folder:
        return _dicom_folder_layers(folder)


def read_medical(path) -> list[tuple[Any, dict, str]]:
    """Read a file, one DICOM file (its whole series), a folder or a zip of DICOM files
    (one layer per series).

    Returns layer data only: no napari setting and no viewer is touched here (reader
    preferences: :mod:`napari_vnet.reader_preferences`; the camera of the viewer the layers
    go to: :class:`napari_vnet._widgets._session.Session`)."""
    if isinstance(path, (list, tuple)):
        return [layer for p in path for layer in read_medical(p)]
    p = Path(path)
    if p.is_dir():
        return _dicom_folder_layers(p)
    if is_zip_name(p) and not has_volume_extension(p):
        return _dicom_zip_layers(p)
    if not has_volume_extension(p) and is_dicom_file(p):
        from napari_vnet.io.dicom_seg import is_dicom_seg, read_dicom_seg

        if is_dicom_seg(p):  # a DICOM-SEG: Labels on its source series' grid
            return volume_layer_data(read_dicom_seg(p), split_extension(p)[0])
        s = find_series_of_file(p)
        if s is None:
            from napari_vnet.io.dicom_lengths import dicom_length_problem

            problem = dicom_length_problem(p) or "not a readable DICOM image file"
            raise VolumeReadError(p, problem)
        return volume_layer_data(read_dicom_series(s), s.name)
    return volume_layer_data(read_volume(p), split_extension(p)[0])
