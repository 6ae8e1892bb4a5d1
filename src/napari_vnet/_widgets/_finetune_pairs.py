"""The training pairs of the "Fine-tune model" dock (:class:`FinetunePairsMixin`, mixed
into :class:`~napari_vnet._widgets.finetune.FinetuneWidget`).

A pair is an (image layer, labels layer) of the viewer or an (image file, labels file)
handed over by the Scans dock. The pair list, the layers' voxel-grid check (the rule of
:mod:`napari_vnet.io.grid`, on the layers' geometry) and the copies of the pairs' data the
training worker gets (taken on the GUI thread; the user's labels are never shared) live
here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_vnet._widgets import _edits
from napari_vnet.io.grid import Grid, grid_differences
from napari_vnet.workflows.finetune import GeometryMismatch, check_pair_grid

if TYPE_CHECKING:
    from qtpy.QtWidgets import QComboBox, QListWidget

#: "Train on": what the user corrected or reviewed (per label and region; the labels left
#: as predicted on those slices kept at the small "untouched labels weight"), the default
CORRECTED = "what I corrected (untouched labels kept at low weight)"
#: ... the edited or reviewed slices whole; every voxel
EDITED, WHOLE = "whole edited / reviewed slices", "whole volume"


#: a layer's name for what differs between two grids (napari's transform parameters)
_LAYER_TERMS = {
    "spacing": "scale (voxel spacing)",
    "origin": "translate (origin)",
    "direction": "direction (rotate, shear, affine)",
}
_RESAMPLE_HINT = (
    " Training needs the labels on the image's voxel grid: load both from the same "
    "scan, or resample the labels onto the image first."
)


def layer_grid(layer) -> Grid:
    """The voxel grid a 3D napari layer shows (its data-to-world map)."""
    from napari_vnet.io import layer_world_matrix

    linear, offset = layer_world_matrix(
        3, scale=layer.scale, translate=layer.translate, affine=layer.affine,
        rotate=layer.rotate, shear=layer.shear,
    )  # fmt: skip
    return Grid.from_world_matrix(layer.data.shape[:3], linear, offset)


def check_same_geometry(image_layer, labels_layer) -> None:
    """Raise :class:`GeometryMismatch` unless both layers show one voxel grid."""
    a, b = image_layer, labels_layer
    if getattr(a, "multiscale", False) or getattr(b, "multiscale", False):
        raise GeometryMismatch(f"'{a.name}' or '{b.name}' is multiscale; use a single scale.")
    if getattr(a, "rgb", False):
        raise GeometryMismatch(f"image layer '{a.name}' is RGB; a grey-value volume is needed.")
    if a.ndim != 3:
        raise GeometryMismatch(
            f"image layer '{a.name}' has {a.ndim} dimensions; fine-tuning needs a 3D volume."
        )
    if a.data.shape != b.data.shape:
        raise GeometryMismatch(
            f"image layer '{a.name}' has shape {tuple(a.data.shape)} but labels layer "
            f"'{b.name}' has shape {tuple(b.data.shape)}." + _RESAMPLE_HINT
        )
    diffs = grid_differences(layer_grid(a), layer_grid(b))
    if diffs:
        what = "; ".join(f"{_LAYER_TERMS[d.what]}: {d.values}" for d in diffs)
        raise GeometryMismatch(
            f"image layer '{a.name}' and labels layer '{b.name}' differ in {what}." + _RESAMPLE_HINT
        )


def layer_volume(layer, array):
    """A core Volume for ``array`` on ``layer``'s grid (via io.layer_to_volume)."""
    from napari_vnet.io import layer_to_volume

    affine = layer.affine.affine_matrix
    return layer_to_volume(
        array,
        scale=tuple(layer.scale),
        translate=tuple(layer.translate),
        affine=None if np.allclose(affine, np.eye(len(affine))) else affine,
        metadata=dict(layer.metadata),
        rotate=layer.rotate,
        shear=layer.shear,
    )


def notify(kind: str, message: str) -> None:
    """A napari notification: ``kind`` is "info", "warning" or (anything else) an error."""
    from napari.utils import notifications

    {"info": notifications.show_info, "warning": notifications.show_warning}.get(
        kind, notifications.show_error
    )(message)


@dataclass
class _Pair:
    image_layer: Any = None
    labels_layer: Any = None
    image_path: Path | None = None
    labels_path: Path | None = None
    annotated: Any = None  # for file pairs: mask, slice list or {"axis", "slices"} record

    @property
    def is_file(self) -> bool:
        return self.image_path is not None

    def describe(self) -> str:
        if self.is_file:
            n = _count_file_annotated(self.annotated)
            extra = f" ({n} annotated slices)" if n else ""
            return f"{self.image_path.name}  +  {self.labels_path.name}{extra}"
        n = _edits.count_annotated(self.labels_layer.metadata)
        return f"{self.image_layer.name}  +  {self.labels_layer.name}  ({n} annotated slices)"


def _count_file_annotated(annotated) -> int:
    if annotated is None:
        return 0
    if isinstance(annotated, dict):
        return _edits.count_annotated({_edits.KEY: annotated})
    arr = np.asarray(annotated)
    if arr.dtype == bool and arr.ndim == 3:
        return int(arr.any(axis=(1, 2)).sum())
    return len(arr.ravel())


def _file_item(p: _Pair, only_edited: bool, regions: bool = False) -> dict:
    """The worker/export record for a file-backed pair (paths only; read off the GUI thread)."""
    return {
        "image_path": p.image_path,
        "labels_path": p.labels_path,
        "annotated": p.annotated if only_edited else None,
        "only_edited": only_edited,
        "regions": bool(regions and only_edited),
    }


class FinetunePairsMixin:
    """The pair list and the training data taken from it."""

    # what FinetuneWidget owns and this half uses (set in its __init__ and _build_ui)
    _pairs: list[_Pair]
    image_combo: QComboBox  # image layers of the viewer
    labels_combo: QComboBox  # labels layers of the viewer
    pair_list: QListWidget  # the pairs, as described by _Pair.describe

    def add_pair(self, image_layer, labels_layer) -> None:
        """Add an (image layer, labels layer) training pair; raises GeometryMismatch."""
        check_same_geometry(image_layer, labels_layer)
        for p in self._pairs:
            if p.image_layer is image_layer and p.labels_layer is labels_layer:
                return
        self._pairs.append(_Pair(image_layer=image_layer, labels_layer=labels_layer))
        self._refresh_pair_list()

    def add_file_pair(self, image_path, labels_path, annotated=None) -> None:
        """Add a pair of files (e.g. from the Scans dock); read when training starts.

        ``annotated``: None (whole volume), a boolean mask, a list of slice indices along
        axis 0, or an ``{"axis": a, "slices": [...]}`` record.
        """
        image_path, labels_path = Path(image_path), Path(labels_path)
        for p in (image_path, labels_path):
            if not p.exists():
                raise FileNotFoundError(f"training file not found: {p}")
        from napari_vnet.io import read_header

        check_pair_grid(read_header(image_path), read_header(labels_path), image_path, labels_path)
        # the same labels file again (e.g. handed over twice): update its record
        self._pairs = [p for p in self._pairs if p.labels_path != labels_path]
        self._pairs.append(
            _Pair(image_path=image_path, labels_path=labels_path, annotated=annotated)
        )
        self._refresh_pair_list()

    @property
    def pairs(self) -> list[_Pair]:
        return list(self._pairs)

    def _on_add_pair_clicked(self) -> None:
        img, lab = self.image_combo.currentData(), self.labels_combo.currentData()
        if img is None or lab is None:
            notify("warning", "Choose an image layer and a labels layer first.")
            return
        try:
            self.add_pair(img, lab)
        except ValueError as exc:  # GeometryMismatch and other refusals
            notify("error", str(exc))

    def _on_remove_pair(self) -> None:
        row = self.pair_list.currentRow()
        if 0 <= row < len(self._pairs):
            del self._pairs[row]
            self._refresh_pair_list()

    def _refresh_pair_list(self) -> None:
        self.pair_list.clear()
        for p in self._pairs:
            self.pair_list.addItem(p.describe())

    def _pairs_or_chosen(self, none_message: str) -> list[_Pair]:
        """The listed pairs, else the image and labels layers chosen in the combos
        (``ValueError(none_message)`` when neither is there)."""
        if self._pairs:
            return self._pairs
        img, lab = self.image_combo.currentData(), self.labels_combo.currentData()
        if img is None or lab is None:
            raise ValueError(none_message)
        return [_Pair(image_layer=img, labels_layer=lab)]

    def _training_specs(self, only_edited: bool, regions: bool = False) -> list[dict]:
        """Copies of the pairs' data for the worker (GUI thread; labels never shared).
        ``regions``: the edit record goes with the labels, so that training weighs what
        the user corrected or reviewed against what was left as predicted
        (:func:`napari_vnet.training.annotation_regions.training_weights`); else the edited
        slices count whole."""
        pairs = self._pairs_or_chosen("No training data: choose an image and a labels layer.")
        specs = []
        for p in pairs:
            if p.is_file:
                specs.append(_file_item(p, only_edited, regions))
                continue
            check_same_geometry(p.image_layer, p.labels_layer)
            labels = np.array(p.labels_layer.data, copy=True)
            mask = None
            if only_edited:
                meta = p.labels_layer.metadata
                if _edits.count_annotated(meta) == 0:
                    raise ValueError(
                        f"Labels layer '{p.labels_layer.name}' has no edited or reviewed "
                        "slices. Paint corrections or press 'Mark slice reviewed', or set "
                        f"'Train on' to '{WHOLE}'."
                    )
                # the record (JSON, per label and region) or the listed slices whole
                mask = (
                    json.loads(json.dumps(meta[_edits.KEY]))
                    if regions
                    else _edits.annotated_mask(labels.shape, meta)
                )
            vol = layer_volume(p.image_layer, np.asarray(p.image_layer.data))
            specs.append(
                {
                    "image": vol.array,
                    "labels": labels,
                    "spacing": tuple(float(s) for s in vol.spacing),
                    "annotated": mask,
                    "name": p.labels_layer.name,
                }
            )
        return specs
