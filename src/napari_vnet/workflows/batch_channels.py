"""nnU-Net's multi-channel cases in a folder of scans: ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``...

nnU-Net's raw-data convention stores one file per input channel, the channel as a
four-digit suffix of the case id (the channel names are dataset.json's
``channel_names``). :func:`channel_groups` groups the files of one folder that share a
case id into one case, channels in suffix order:

* for a model with ``in_channels`` > 1, every file named ``CASE_NNNN`` is grouped; a case
  whose channels are not exactly ``0000`` .. ``in_channels - 1`` carries an error naming
  the case and its files (reported as a failed case; the other cases run);
* otherwise (one channel, or no model known) a folder is grouped only when every volume
  file in it is so named and every case has the same complete channels ``0000..N-1``
  (nnU-Net's ``imagesTr``/``imagesTs``); else its files stay cases of their own.

A grouped case is named by its case id (``CASE_0000.nii.gz`` alone gives ``CASE``, as
``nnUNetv2_predict`` names it). :func:`read_case_channels` reads the channel files of a
case, checks that they share one voxel grid, and stacks them into one
:class:`~napari_vnet.io.Volume` whose array is ``(z, y, x, C)`` (channels last, as
SimpleITK's multi-component images); :func:`channels_first` is the ``(C, z, y, x)`` view
the engine takes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_vnet.io.headers import VOLUME_SUFFIXES, known_suffix
from napari_vnet.io.paths import printable

__all__ = [
    "ChannelGroup",
    "channel_groups",
    "channel_part",
    "channels_first",
    "image_channels",
    "read_case_channels",
]

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class ChannelGroup:
    """The worklist entries of one case: one entry, or the channel files of a case id."""

    entries: list[Any]
    stem: str | None = None  # "dir/CASE" when grouped, else None (the entry's own name)
    error: str | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(e.path for e in self.entries)


def channel_part(key: str) -> tuple[str, int] | None:
    """``("dir/CASE", channel)`` of a file key named ``dir/CASE_NNNN.ext``, else None."""
    ext = known_suffix(key, VOLUME_SUFFIXES)
    if not ext:
        return None
    match = _CHANNEL.match(key[: len(key) - len(ext)].rsplit("/", 1)[-1])
    if match is None:
        return None
    folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    return folder + match["case"], int(match["channel"])


@dataclass
class _Folder:
    singles: list[Any] = field(default_factory=list)  # files not named CASE_NNNN, DICOM
    cases: dict[str, dict[int, Any]] = field(default_factory=dict)  # case -> channel -> entry

    def grouped(self, in_channels: int | None) -> bool:
        if in_channels is not None and in_channels > 1:
            return True
        if self.singles or not self.cases:
            return False
        first = sorted(next(iter(self.cases.values())))
        return all(sorted(c) == first == list(range(len(first))) for c in self.cases.values())


def _missing_text(case: str, found: dict[int, Any], in_channels: int) -> str | None:
    """Why a grouped case cannot run with a model of ``in_channels`` channels, or None."""
    want = set(range(in_channels))
    if set(found) == want:
        return None
    name = case.rsplit("/", 1)[-1]
    files = ", ".join(printable(os.path.basename(found[k].path)) for k in sorted(found))
    missing = sorted(want - set(found))
    extra = sorted(set(found) - want)
    why = []
    if missing:
        why.append("missing " + ", ".join(f"{name}_{k:04d}" for k in missing))
    if extra:
        why.append("unexpected " + ", ".join(f"{name}_{k:04d}" for k in extra))
    return (
        f"case {printable(case)}: the model takes {in_channels} channel(s) "
        f"({name}_0000 .. {name}_{in_channels - 1:04d}); {'; '.join(why)} (found: {files})"
    )


def channel_groups(entries: Sequence[Any], in_channels: int | None = None) -> list[ChannelGroup]:
    """The worklist ``entries`` (:class:`~napari_vnet.workflows.worklist_scan.ScanEntry`)
    as cases: the channel files of a case id grouped (see the module text), every other
    entry a case of its own; in the order of each case's first entry."""
    folders: dict[str, _Folder] = {}
    order: list[tuple[str, Any, tuple[str, int] | None]] = []  # (folder, entry, part)
    for e in entries:
        folder = e.key.rsplit("/", 1)[0] if "/" in e.key else ""
        part = None if (e.kind == "dicom" or e.broken) else channel_part(e.key)
        slot = folders.setdefault(folder, _Folder())
        if part is None:
            slot.singles.append(e)
        else:
            slot.cases.setdefault(part[0], {})[part[1]] = e
        order.append((folder, e, part))
    grouped = {folder: slot.grouped(in_channels) for folder, slot in folders.items()}
    groups: dict[int, ChannelGroup] = {}
    for folder, e, part in order:
        if part is None or not grouped[folder]:
            groups[id(e)] = ChannelGroup([e])
            continue
        slot = folders[folder]
        found = slot.cases[part[0]]
        first = found[min(found)]
        if first is not e:
            continue  # listed with its case's first channel file
        n = in_channels if in_channels is not None and in_channels > 1 else len(found)
        groups[id(e)] = ChannelGroup(
            [found[k] for k in sorted(found)], stem=part[0], error=_missing_text(part[0], found, n)
        )
    return list(groups.values())


def read_case_channels(paths: Sequence[str]):
    """The channel files ``paths`` of one case as one :class:`~napari_vnet.io.Volume`
    (array ``(z, y, x, C)``, the geometry and metadata of channel 0; the files in
    ``metadata["channel_files"]``, their DICOM modalities in ``"channel_modalities"``);
    one path reads as :func:`~napari_vnet.io.read_volume`.
    Raises :class:`~napari_vnet.io.VolumeReadError` naming the file when a channel is not a
    3-D volume or lies on another voxel grid than channel 0."""
    from napari_vnet.io import Volume, VolumeReadError, read_volume
    from napari_vnet.io.grid import grid_differences

    first = read_volume(paths[0])
    if len(paths) == 1:
        return first
    arrays, modalities = [], []
    for i, path in enumerate(paths):
        vol = first if i == 0 else read_volume(path)
        if vol.array.ndim != 3:
            raise VolumeReadError(path, f"channel {i} is not a 3-D volume (shape {vol.shape})")
        diffs = grid_differences(first, vol)
        if diffs:
            raise VolumeReadError(
                path,
                f"channel {i} lies on another voxel grid than channel 0 "
                f"({os.path.basename(paths[0])}): "
                + "; ".join(str(d) for d in diffs)
                + "; the channel files of a case must share one grid",
            )
        arrays.append(vol.array)
        modalities.append(str(vol.metadata.get("modality") or ""))
    stacked = np.stack(arrays)  # (C, z, y, x), contiguous for the engine
    del arrays
    meta = {**first.metadata, "channel_files": [str(p) for p in paths],
            "channel_modalities": modalities, "n_components": len(paths)}  # fmt: skip
    return Volume(
        array=np.moveaxis(stacked, 0, -1),
        spacing=first.spacing,
        origin=first.origin,
        direction=first.direction,
        pixel_type=first.pixel_type,
        metadata=meta,
        path=first.path,
    )


def image_channels(image: str | os.PathLike) -> list[str]:
    """The channel files of one image argument: ``a.nii.gz`` + ``os.pathsep`` +
    ``b.nii.gz`` (a list; ``:`` on Linux and macOS, ``;`` on Windows), or ``CASE_0000.ext``
    with its siblings ``CASE_0001.ext``, ``CASE_0002.ext``... (nnU-Net's channel files,
    up to the first one missing), else the image alone."""
    text = os.fspath(image)
    if os.pathsep in text and not os.path.exists(text):
        return [p for p in text.split(os.pathsep) if p]
    part = channel_part(os.path.basename(text))
    if part is None or part[1] != 0 or not os.path.isfile(text):
        return [text]
    ext = known_suffix(os.path.basename(text), VOLUME_SUFFIXES)
    base = text[: len(text) - len(ext) - 4]  # ".../CASE_"
    files = [text]
    while os.path.isfile(nxt := f"{base}{len(files):04d}{ext}"):
        files.append(nxt)
    return files


def channels_first(vol):
    """``vol`` with its array ``(C, z, y, x)`` for the engine when it has channels last
    (a view, no copy), else ``vol`` itself."""
    if vol.array.ndim != len(vol.spacing) + 1:
        return vol
    return vol.with_array(np.moveaxis(vol.array, -1, 0))
