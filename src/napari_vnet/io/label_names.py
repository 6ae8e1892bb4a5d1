"""Class names and colours of a label map, from the sidecar files the field writes.

A label file found beside one of these gets its classes (``[{"value", "name", "color"}]``,
colour RGBA in 0..1 or None) with :func:`read_label_classes`:

* ``<stem>.labels.json`` (written by napari-vnet's writer), ``labels.json``, ``<stem>.json``: ``{"1": "spleen", ...}``, ``{"spleen": 1, ...}``,
  ``{"classes": [{"value": 1, "name": "spleen", "color": [r, g, b(, a)]}, ...]}`` or a
  ``{"labels": ...}`` mapping in either direction;
* an ITK-SNAP label description file (``<stem>.txt``, ``labels.txt``,
  ``label_description.txt``, ``*.label``): ``IDX R G B A VIS MSH "LABEL"`` lines;
* a 3D Slicer colour table (``<stem>.ctbl``, or the one ``.ctbl`` of the folder):
  ``value name R G B A`` lines;
* 3D Slicer ``.seg.nrrd`` segment metadata (``SegmentN_Name``, ``SegmentN_LabelValue``,
  ``SegmentN_Color`` in the NRRD header of the label file itself);
* an nnU-Net ``dataset.json`` (v2 ``{"labels": {"liver": 1}}`` or MSD/v1
  ``{"labels": {"1": "liver"}}``) in the label file's folder or up to two folders above
  (``Dataset001/labelsTr/case.nii.gz`` -> ``Dataset001/dataset.json``).

:func:`pair_labels_with_images` tells label files from images in a list of volume files
by the usual conventions (``case_seg.nii.gz`` beside ``case.nii.gz``, ``labels/case`` or
``labelsTr/case`` beside ``images/case`` / ``imagesTr/case_0000``).

No napari import here (core).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from napari_vnet.errors import NapariVnetError

log = logging.getLogger(__name__)

__all__ = [
    "LabelSidecarError",
    "class_colors",
    "classes_with_colors",
    "find_label_sidecar",
    "labels_display_kwargs",
    "pair_labels_with_images",
    "pairing_rule",
    "parse_ctbl",
    "parse_itksnap",
    "parse_labels_json",
    "read_label_classes",
    "read_seg_nrrd_classes",
    "write_label_classes",
]

_VOLUME_ENDINGS = (".nii.gz", ".gipl.gz", ".seg.nrrd", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


class LabelSidecarError(NapariVnetError, ValueError):
    """A sidecar file exists but cannot be understood (the message names file and line)."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def _stem(path: Path) -> str:
    name = path.name
    low = name.lower()
    for end in _VOLUME_ENDINGS:
        if low.endswith(end):
            return name[: -len(end)]
    return path.stem


def _cls(value: Any, name: Any, color=None) -> dict[str, Any]:
    return {"value": int(value), "name": str(name), "color": color}


def _rgba(values: Iterable[float], scale: float) -> list[float]:
    vals = [float(v) / scale for v in values]
    if len(vals) == 3:
        vals.append(1.0)
    return [min(1.0, max(0.0, v)) for v in vals[:4]]


# ------------------------------------------------------------------ parsers


def parse_labels_json(data: Any, path: str | Path = "labels.json") -> list[dict[str, Any]]:
    """Classes from the JSON forms listed in the module docstring."""
    if isinstance(data, dict) and "classes" in data:
        out = []
        for c in data["classes"]:
            if not isinstance(c, dict) or "value" not in c or "name" not in c:
                raise LabelSidecarError(path, f"class entry without value/name: {c!r}")
            color = c.get("color")
            if color is not None:
                scale = 255.0 if max(color) > 1 else 1.0
                color = _rgba(color, scale)
            out.append(_cls(c["value"], c["name"], color))
        return out
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        data = data["labels"]
    if not isinstance(data, dict) or not data:
        raise LabelSidecarError(path, "expected an object mapping label values and names")
    out = []
    for k, v in data.items():
        if _is_int(k):  # "1": "spleen"
            out.append(_cls(int(k), v))
        elif _is_int(v):  # "spleen": 1 (nnU-Net v2)
            out.append(_cls(int(v), k))
        elif isinstance(v, list) and v and all(_is_int(x) for x in v):
            # nnU-Net region: "whole tumour": [1, 2, 3]; names the highest value alone
            log.info("%s: region %r (values %s) is not one class; skipped", path, k, v)
        else:
            raise LabelSidecarError(path, f"cannot read the entry {k!r}: {v!r}")
    return sorted(out, key=lambda c: c["value"])


def _is_int(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return True
    return isinstance(x, str) and re.fullmatch(r"\s*\d+\s*", x) is not None


def _table_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, stripped line)`` of a colour table, without blanks and ``#``
    comments."""
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield n, line


def parse_itksnap(text: str, path: str | Path = "labels.txt") -> list[dict[str, Any]]:
    """ITK-SNAP label description: ``IDX R G B A VIS MSH "LABEL"`` (``#`` comments)."""
    out = []
    for n, line in _table_lines(text):
        try:
            parts = shlex.split(line)
            value, r, g, b, a = int(parts[0]), *map(float, parts[1:5])
            name = parts[7] if len(parts) > 7 else f"label {value}"
        except (ValueError, IndexError) as exc:
            raise LabelSidecarError(
                path, f"line {n} is not IDX R G B A VIS MSH LABEL: {line!r}"
            ) from exc
        out.append(_cls(value, name, [r / 255.0, g / 255.0, b / 255.0, min(1.0, max(0.0, a))]))
    return out


def parse_ctbl(text: str, path: str | Path = "colors.ctbl") -> list[dict[str, Any]]:
    """3D Slicer colour table: ``value name R G B A`` (0..255, ``#`` comments)."""
    out = []
    for n, line in _table_lines(text):
        parts = line.split()
        try:
            value = int(parts[0])
            rgba = [float(v) for v in parts[-4:]] if len(parts) >= 6 else None
            name = " ".join(parts[1:-4]) if rgba is not None else " ".join(parts[1:])
        except (ValueError, IndexError) as exc:
            raise LabelSidecarError(
                path, f"line {n} is not 'value name R G B A': {line!r}"
            ) from exc
        if not name:
            raise LabelSidecarError(path, f"line {n} has no name: {line!r}")
        out.append(_cls(value, name, _rgba(rgba, 255.0) if rgba else None))
    return out


def read_seg_nrrd_classes(path: str | Path) -> list[dict[str, Any]] | None:
    """Segments of a 3D Slicer ``.seg.nrrd`` (header only), or None when it has none."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise LabelSidecarError(path, f"cannot read the NRRD header: {exc}") from exc
    keys = set(reader.GetMetaDataKeys())
    out, layers = [], set()
    i = 0
    while f"Segment{i}_Name" in keys:
        meta = {
            k: reader.GetMetaData(f"Segment{i}_{k}")
            for k in ("Name", "LabelValue", "Color", "Layer")
            if f"Segment{i}_{k}" in keys
        }
        try:
            value = int(meta.get("LabelValue", i + 1))
            color = _rgba(meta["Color"].split(), 1.0) if "Color" in meta else None
        except ValueError as exc:
            raise LabelSidecarError(path, f"segment {i} has unreadable metadata: {meta}") from exc
        layers.add(meta.get("Layer", "0"))
        out.append(_cls(value, meta["Name"], color))
        i += 1
    if len(layers) > 1:
        log.warning(
            "%s: segments on %d layers (overlapping); names are per layer value", path, len(layers)
        )
    return out or None


# ------------------------------------------------------------------ finding the sidecar


def _candidates(label_path: Path) -> list[Path]:
    folder, stem = label_path.parent, _stem(label_path)
    c = [
        folder / f"{stem}.labels.json",  # what napari-vnet's writer puts beside a label map
        folder / f"{stem}.json",
        folder / "labels.json",
        folder / f"{stem}.ctbl",
        folder / f"{stem}.txt",
        folder / f"{stem}_labels.txt",
        folder / "labels.txt",
        folder / "label_description.txt",
        folder / f"{stem}.label",
    ]
    try:
        ctbl = sorted(p for p in folder.glob("*.ctbl"))
        labels = sorted(p for p in folder.glob("*.label"))
    except OSError:
        ctbl = labels = []
    if len(ctbl) == 1:
        c.append(ctbl[0])
    if len(labels) == 1:
        c.append(labels[0])
    for up in (folder, folder.parent, folder.parent.parent):
        c.append(up / "dataset.json")
    return c


def find_label_sidecar(label_path: str | os.PathLike[str]) -> Path | None:
    """The sidecar file naming ``label_path``'s classes (see module docstring), or None."""
    p = Path(label_path)
    if p.name.lower().endswith(".seg.nrrd"):
        return p
    for cand in _candidates(p):
        if cand.is_file() and cand != p:
            if cand.name == "dataset.json" and not _dataset_json_has_labels(cand):
                continue
            return cand
    return None


def _dataset_json_has_labels(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")).get("labels"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def read_label_classes(
    label_path: str | os.PathLike[str],
) -> tuple[list[dict[str, Any]], Path] | None:
    """(classes, sidecar path) for a label file, or None when no sidecar is found.

    Raises :class:`LabelSidecarError` when a sidecar exists but cannot be read.
    """
    sidecar = find_label_sidecar(label_path)
    if sidecar is None:
        return None
    name = sidecar.name.lower()
    if name.endswith(".seg.nrrd"):
        classes = read_seg_nrrd_classes(sidecar)
        return (classes, sidecar) if classes else None
    try:
        text = sidecar.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise LabelSidecarError(sidecar, f"cannot read: {exc.strerror or exc}") from exc
    if name.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise LabelSidecarError(sidecar, f"not valid JSON: {exc}") from exc
        return parse_labels_json(data, sidecar), sidecar
    if name.endswith(".ctbl"):
        return parse_ctbl(text, sidecar), sidecar
    return parse_itksnap(text, sidecar), sidecar


def write_label_classes(label_path: str | os.PathLike[str], classes: list[dict[str, Any]]) -> Path:
    """Write ``<stem>.labels.json`` beside a label file (atomically), in the
    ``{"classes": [...]}`` form :func:`read_label_classes` reads first."""
    from napari_vnet._atomic import atomic_write_text

    p = Path(label_path)
    out = p.with_name(f"{_stem(p)}.labels.json")
    rows = [
        {
            "value": int(c["value"]),
            "name": str(c["name"]),
            **(
                {"color": [round(float(v), 4) for v in c["color"]]}
                if c.get("color") is not None
                else {}
            ),
        }
        for c in sorted(classes, key=lambda c: int(c["value"]))
    ]
    atomic_write_text(out, json.dumps({"classes": rows}, indent=1) + "\n")
    return out


_GOLDEN = 0.618033988749895


def _value_and_color(c: Any) -> tuple[int, Any]:
    if isinstance(c, dict):
        return int(c["value"]), c.get("color")
    return int(c.value), getattr(c, "color", None)


def class_colors(classes: Iterable[Any]) -> dict[int, tuple[float, ...]]:
    """Label value -> RGBA for classes (dicts or ``ClassInfo``): their own colour where
    given, otherwise distinct hues (golden-ratio steps). The colours napari-vnet shows a
    prediction in; also written into sidecars and DICOM-SEG display colours."""
    import colorsys

    colors: dict[int, tuple[float, ...]] = {}
    hue = 0.08
    for c in classes:
        value, color = _value_and_color(c)
        if value == 0:
            colors[0] = (0.0, 0.0, 0.0, 0.0)
            continue
        if color is not None:
            rgba = tuple(float(v) for v in color)
            colors[value] = rgba if len(rgba) == 4 else (*rgba[:3], 1.0)
        else:
            r, g, b = colorsys.hsv_to_rgb(hue % 1.0, 0.75, 0.95)
            colors[value] = (r, g, b, 1.0)
            hue += _GOLDEN
    return colors


def classes_with_colors(classes: Iterable[Any]) -> list[dict[str, Any]]:
    """``[{"value", "name", "color"}]`` for classes (dicts or ``ClassInfo``), every
    foreground class with the colour :func:`class_colors` gives it."""
    items = list(classes)
    colors = class_colors(items)
    out = []
    for c in items:
        value, _ = _value_and_color(c)
        name = c["name"] if isinstance(c, dict) else c.name
        out.append(_cls(value, name, list(colors[value]) if value != 0 else None))
    return out


def labels_display_kwargs(classes: list[dict[str, Any]]) -> dict[str, Any]:
    """napari Labels arguments: ``colormap`` (the classes' colours, when given) and
    ``features`` (class names shown on hover). Plain data, no napari import."""
    out: dict[str, Any] = {
        "features": {
            "index": [int(c["value"]) for c in classes],
            "class": [str(c["name"]) for c in classes],
        }
    }
    if any(c.get("color") is not None and int(c["value"]) != 0 for c in classes):
        colors: dict = {None: (1.0, 0.0, 1.0, 1.0)}  # values without a class: magenta
        colors[0] = (0.0, 0.0, 0.0, 0.0)
        for c in classes:
            if c.get("color") is not None and int(c["value"]) != 0:
                colors[int(c["value"])] = tuple(float(v) for v in c["color"])
        out["colormap"] = colors
    return out


# ------------------------------------------------------------------ label files beside images

_LABEL_SUFFIX = re.compile(r"^(?P<case>.+?)[_\-.](seg|segmentation|label|labels|mask|gt)$", re.I)
_LABEL_DIRS = {"labels", "labelstr", "labelsts", "segmentations", "masks", "gt", "ground_truth"}
_IMAGE_DIRS = {"images", "imagestr", "imagests", "scans", "volumes"}
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")  # nnU-Net case_0000


def _case_of_image(path: Path) -> str:
    stem = _stem(path)
    m = _CHANNEL.match(stem)
    return m.group("case") if m else stem


def pair_labels_with_images(paths: Iterable[str | Path]) -> dict[str, str]:
    """``{label file: image file}`` for the label files among ``paths``.

    A label file is ``<case>_seg`` (also ``-seg``, ``_label(s)``, ``_mask``,
    ``_segmentation``, ``_gt``) or Slicer's ``<case>.seg.nrrd`` beside ``<case>``, or ``<case>`` in a ``labels``/
    ``labelsTr``/``segmentations``/``masks`` folder whose sibling ``images``/``imagesTr``
    holds ``<case>`` or nnU-Net's ``<case>_0000``. Files that match no image stay scans.
    """
    items = [Path(p) for p in paths]
    by_folder_case: dict[tuple[Path, str], Path] = {}
    for p in items:
        by_folder_case.setdefault((p.parent, _case_of_image(p)), p)
    out: dict[str, str] = {}
    for p in items:
        stem = _stem(p)
        image = None
        m = _LABEL_SUFFIX.match(stem)
        case = m.group("case") if m else None
        if p.name.lower().endswith(".seg.nrrd"):  # 3D Slicer: case.seg.nrrd beside case.nrrd
            case = stem
        if case is not None:
            cand = next(
                (
                    q
                    for q in items
                    if q != p
                    and q.parent == p.parent
                    and _case_of_image(q) == case
                    and not q.name.lower().endswith(".seg.nrrd")
                ),
                None,
            )
            if cand is not None:
                image = cand
        if image is None and p.parent.name.lower() in _LABEL_DIRS:
            for sib in p.parent.parent.iterdir() if p.parent.parent.is_dir() else ():
                if sib.is_dir() and sib.name.lower() in _IMAGE_DIRS:
                    if (
                        p.parent.name.lower().endswith(("tr", "ts"))
                        and sib.name.lower()[-2:] != p.parent.name.lower()[-2:]
                    ):
                        continue
                    cand = by_folder_case.get((sib, stem)) or by_folder_case.get(
                        (sib, m.group("case") if m else stem)
                    )
                    if cand is not None:
                        image = cand
                        break
        if image is not None:
            out[str(p)] = str(image)
    return out


def label_files_in_folder(
    folder: str | Path, files: Iterable[str | Path], within: str | Path | None = None
) -> dict[str, str]:
    """Pairs (label file -> image file) that involve ``files`` of ``folder``.

    For discovery that walks one folder at a time: the volume files of a sibling
    ``labels``/``images`` folder (same split suffix ``Tr``/``Ts``) are looked at too, so
    ``images/a.nii.gz`` learns of ``labels/a.nii.gz`` and ``labels/a.nii.gz`` is known to
    be a label file when its own folder is walked. ``within``: the folder the user chose;
    sibling folders outside it are never looked at (a ``labels`` folder beside a chosen
    ``scans`` folder may hold anything, e.g. another program's predictions).
    """
    folder = Path(folder)
    own = [Path(f) for f in files]
    extra: list[Path] = []
    kind = folder.name.lower()
    inside = within is None or _strictly_inside(folder, Path(within))
    if inside and (kind in _LABEL_DIRS or kind in _IMAGE_DIRS):
        want = _IMAGE_DIRS if kind in _LABEL_DIRS else _LABEL_DIRS
        try:
            for sib in folder.parent.iterdir():
                if sib.is_dir() and sib.name.lower() in want:
                    extra += [p for p in sib.iterdir() if p.name.lower().endswith(_VOLUME_ENDINGS)]
        except OSError:
            pass
    pairs = pair_labels_with_images([*own, *extra])
    mine = {str(p) for p in own}
    return {lab: img for lab, img in pairs.items() if lab in mine or img in mine}


def _strictly_inside(folder: Path, root: Path) -> bool:
    try:
        folder, root = folder.resolve(), root.resolve()
    except OSError:
        return False
    return folder != root and root in folder.parents


def pairing_rule(label_path: str | Path, image_path: str | Path) -> str:
    """Why a label file was paired with an image, in words (shown in the Scans dock)."""
    lab, img = Path(label_path), Path(image_path)
    if lab.parent == img.parent:
        if lab.name.lower().endswith(".seg.nrrd"):
            return f"{lab.name} is the 3D Slicer segmentation of {img.name} (same folder)"
        return f"{lab.name} is named after {img.name} (suffix _seg/_label/_mask/_gt)"
    return f"{lab.parent.name}/{lab.name} matches {img.parent.name}/{img.name} ({lab.parent.name}/ beside {img.parent.name}/)"
