"""What a segmentation gives besides its label map (TotalSegmentator's conveniences).

* :func:`class_values`: class names -> label values (``--roi-subset``), refusing unknown
  names with the valid ones listed;
* :func:`clean_labels`: keep only some classes, drop components smaller than a volume
  (``--remove-small MM3``); :meth:`napari_vnet.workflows.segment.Segmenter.segment`
  applies it when the settings carry ``keep_classes`` / ``remove_small_mm3``;
* :func:`write_split_masks`: one 0/1 mask per class, named after the class;
* :func:`write_statistics`: per class voxels, volume and intensity, as JSON;
* :func:`write_preview`: a PNG of three orthogonal slices through the mask's centre with
  the mask over the image (numpy and zlib only).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LABEL_OPTIONS",
    "beside",
    "class_values",
    "clean_labels",
    "pop_label_options",
    "preview_image",
    "split_mask_dir",
    "write_png",
    "write_preview",
    "write_split_masks",
    "write_extras",
    "write_statistics",
]

#: run-settings keys that :func:`clean_labels` takes (not :func:`~napari_vnet.inference.predict`'s)
LABEL_OPTIONS = ("keep_classes", "remove_small_mm3")


def class_values(card, names: Iterable[str]) -> list[int]:
    """The label values of the class ``names`` (case-insensitive; a value is taken too);
    ValueError naming the unknown ones and listing the valid names."""
    by_name = {str(c.name).lower(): int(c.value) for c in card.classes if int(c.value) != 0}
    values, unknown = [], []
    for name in names:
        key = str(name).strip().lower()
        value = by_name.get(key)
        if value is None and key.isdigit() and int(key) in by_name.values():
            value = int(key)
        if value is None:
            unknown.append(str(name))
        elif value not in values:
            values.append(value)
    if unknown:
        valid = ", ".join(str(c.name) for c in card.classes if int(c.value) != 0)
        raise ValueError(f"unknown class name(s) {', '.join(unknown)}; this model has: {valid}")
    return values


def pop_label_options(settings: dict[str, Any]) -> dict[str, Any]:
    """Take :data:`LABEL_OPTIONS` out of run ``settings`` (in place); those given."""
    taken = {k: settings.pop(k, None) for k in LABEL_OPTIONS}
    return {k: v for k, v in taken.items() if v is not None}


def clean_labels(
    labels: np.ndarray,
    *,
    keep_classes: Sequence[int] | None = None,
    remove_small_mm3: float | None = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """``labels`` with only ``keep_classes`` (others -> 0) and without the components of
    a class smaller than ``remove_small_mm3`` cubic millimetres (``spacing`` in mm); a copy
    when anything is asked."""
    from napari_vnet.inference.postprocess import remove_small_components

    if keep_classes is None and not remove_small_mm3:
        return labels
    out = np.array(labels, copy=True)
    if keep_classes is not None:
        out[~np.isin(out, np.asarray(list(keep_classes) + [0]))] = 0
    if remove_small_mm3:
        remove_small_components(out, float(remove_small_mm3), spacing)
    return out


def _split_name(out: Path) -> tuple[str, str]:
    from napari_vnet.io.writing import write_extension

    ext = write_extension(out) or ".nii.gz"
    name = out.name
    return (name[: -len(ext)] if name.lower().endswith(ext) else out.stem), ext


def beside(out: str | Path, suffix: str) -> Path:
    """``<stem><suffix>`` beside the label map ``out`` (``mask.nii.gz`` -> ``mask<suffix>``)."""
    out = Path(out)
    return out.parent / f"{_split_name(out)[0]}{suffix}"


def split_mask_dir(out: str | Path) -> Path:
    """The folder of the per-class masks of the label map ``out``: ``<stem>_masks``."""
    return beside(out, "_masks")


def write_split_masks(
    labels: np.ndarray, out: str | Path, vol, card, values: Sequence[int] | None = None
) -> list[Path]:
    """One 0/1 mask per foreground class (or per ``values``) with ``vol``'s geometry, in
    :func:`split_mask_dir`, each named after its class (``liver.nii.gz``), in the label
    map's format; the paths written."""
    from napari_vnet.io import write_volume
    from napari_vnet.io.paths import slug

    folder = split_mask_dir(out)
    ext = _split_name(Path(out))[1]
    folder.mkdir(parents=True, exist_ok=True)
    written, used = [], set()
    for c in card.classes:
        value = int(c.value)
        if value == 0 or (values is not None and value not in values):
            continue
        name = slug(str(c.name), fallback=f"class_{value}")
        name = name if name not in used else f"{name}_{value}"
        used.add(name)
        mask = (labels == value).astype(np.uint8)
        written.append(write_volume(mask, folder / f"{name}{ext}", like=vol, is_label=True))
    return written


def write_statistics(labels: np.ndarray, vol, card, out: str | Path, source: str) -> Path:
    """``<stem>_statistics.json`` beside the label map ``out``: per foreground class voxels,
    volume (ml) and the image's mean/std intensity, as a folder run writes per case."""
    from napari_vnet._atomic import atomic_open
    from napari_vnet.workflows.batch import STATISTICS_SUFFIX, label_statistics

    path = beside(out, STATISTICS_SUFFIX)
    record = {
        "case": _split_name(Path(out))[0],
        "input": str(source),
        "shape": list(vol.shape[-3:]),
        "spacing_mm": [float(s) for s in vol.spacing[-3:]],
        "voxel_volume_ml": float(np.prod(vol.spacing[-3:])) / 1000.0,
        "classes": label_statistics(labels, vol, card.classes),
    }
    with atomic_open(path, "w") as fh:
        json.dump(record, fh, indent=1)
    return path


def write_extras(
    labels: np.ndarray, out: Path, vol, card, source: str, extras: dict[str, Any]
) -> dict[str, Any]:
    """The files ``extras`` asks for beside the label map ``out``: ``split_masks`` (True:
    :func:`write_split_masks`), ``statistics`` (True: :func:`write_statistics`),
    ``preview`` (a PNG path: :func:`write_preview`); their paths by those keys."""
    written: dict[str, Any] = {}
    if extras.get("split_masks"):
        values = extras.get("keep_classes")
        masks = write_split_masks(labels, out, vol, card, values)
        written["split_masks"] = [str(p) for p in masks]
    if extras.get("statistics"):
        written["statistics"] = str(write_statistics(labels, vol, card, out, source))
    if extras.get("preview"):
        written["preview"] = str(write_preview(labels, vol, card, extras["preview"]))
    return written


# ------------------------------------------------------------------------ preview PNG


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """An 8-bit RGB PNG of ``rgb`` (``(h, w, 3)`` uint8), written with zlib alone."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(h))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path = Path(path)
    path.write_bytes(png)
    return path


def _square_pixels(plane: np.ndarray, rows_mm: float, cols_mm: float, step: float) -> np.ndarray:
    """``plane`` resampled (nearest) to square pixels of ``step`` mm."""
    h = max(1, int(round(plane.shape[0] * rows_mm / step)))
    w = max(1, int(round(plane.shape[1] * cols_mm / step)))
    ri = np.minimum((np.arange(h) * plane.shape[0]) // h, plane.shape[0] - 1)
    ci = np.minimum((np.arange(w) * plane.shape[1]) // w, plane.shape[1] - 1)
    return plane[np.ix_(ri, ci)]


def preview_image(image: np.ndarray, labels: np.ndarray, spacing, card) -> np.ndarray:
    """``(h, w, 3)`` uint8: axial, coronal and sagittal slices through the centre of the
    mask (of the volume when the mask is empty), side by side at one scale (square pixels
    of the finest spacing), the image in grey (1st-99th percentile) and each class in its
    colour at half opacity."""
    from napari_vnet.io.label_names import class_colors

    image = np.asarray(image, dtype=np.float32)
    image = image[0] if image.ndim == labels.ndim + 1 else image
    fg = np.argwhere(labels > 0)
    centre = fg.mean(axis=0).round().astype(int) if len(fg) else np.array(labels.shape) // 2
    lo, hi = np.nanpercentile(image, [1, 99]) if image.size else (0.0, 1.0)
    grey = np.clip((np.nan_to_num(image, nan=lo) - lo) / max(float(hi - lo), 1e-6), 0, 1)
    colors = class_colors(card.classes)
    lut = np.zeros((int(labels.max(initial=0)) + 1, 3), np.float32)
    for value, rgba in colors.items():
        if 0 < value < len(lut):
            lut[value] = rgba[:3]
    sz, sy, sx = (float(s) for s in spacing)
    z, y, x = (int(c) for c in centre)
    views = [  # rows, columns and their spacing; coronal and sagittal with z up
        (grey[z], labels[z], sy, sx),
        (grey[:, y][::-1], labels[:, y][::-1], sz, sx),
        (grey[:, :, x][::-1], labels[:, :, x][::-1], sz, sy),
    ]
    panels = []
    step = min(sz, sy, sx)  # one scale for the three views
    for g, lab, rows_mm, cols_mm in views:
        g = _square_pixels(g, rows_mm, cols_mm, step)
        lab = _square_pixels(lab, rows_mm, cols_mm, step)
        rgb = np.repeat(g[..., None], 3, axis=2)
        on = lab > 0
        rgb[on] = 0.5 * rgb[on] + 0.5 * lut[lab[on]]
        panels.append(rgb)
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0))) for p in panels]
    return (np.concatenate(padded, axis=1)[:, :-4] * 255).round().astype(np.uint8)


def write_preview(labels: np.ndarray, vol, card, path: str | Path) -> Path:
    """:func:`preview_image` of ``vol`` and ``labels`` as a PNG at ``path``."""
    return write_png(path, preview_image(vol.array, labels, vol.spacing[-3:], card))
