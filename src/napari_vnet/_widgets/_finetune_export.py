"""Dataset export of the "Fine-tune model" dock (:class:`FinetuneExportMixin`, mixed into
:class:`~napari_vnet._widgets.finetune.FinetuneWidget`): the training pairs written as an
nnU-Net/MSD style folder by :func:`~napari_vnet.workflows.finetune.export_job` in a
thread worker.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QFileDialog

from napari_vnet._widgets import _edits
from napari_vnet._widgets._finetune_pairs import (
    CORRECTED,
    EDITED,
    _file_item,
    _Pair,
    check_same_geometry,
    layer_volume,
    notify,
)
from napari_vnet.workflows.finetune import export_job
from napari_vnet.workflows.options import parse_class_names

if TYPE_CHECKING:
    from qtpy.QtCore import Signal
    from qtpy.QtWidgets import QComboBox, QLineEdit


class FinetuneExportMixin:
    """Export dataset... and what it writes."""

    # what FinetuneWidget owns and this half uses (set in its __init__ and _build_ui)
    voxels_combo: QComboBox  # which voxels count: EDITED, CORRECTED or WHOLE
    class_names_edit: QLineEdit  # "3=kidney, 4=spleen"
    dataset_exported: Signal  # emitted with the folder once written
    _pairs_or_chosen: Callable[[str], list[_Pair]]  # FinetunePairsMixin

    def _on_export_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export training pairs to folder")
        if folder:
            self.export_dataset(folder)

    def export_dataset(self, folder):
        """Write the session's pairs as an nnU-Net/MSD style folder in a thread worker.

        ``imagesTr/case_NNN_0000.nii.gz``, ``labelsTr/case_NNN.nii.gz`` and a
        ``dataset.json``. With "whole edited / reviewed slices", voxels outside the
        annotated slices get nnU-Net's "ignore" label; with "what I corrected" so do the
        labels left as predicted on them (a dataset has no loss weights). Returns the
        worker, or None when refused; ``dataset_exported(folder)`` is emitted when it is
        written.
        """
        from napari.qt.threading import thread_worker

        mode = self.voxels_combo.currentText()
        try:
            items = self._export_items(mode in (EDITED, CORRECTED), mode == CORRECTED)
            names = parse_class_names(self.class_names_edit.text())
        except (ValueError, OSError) as exc:
            notify("error", f"Export refused: {exc}")
            return None
        worker = thread_worker(export_job, start_thread=False, ignore_errors=True)(
            items, Path(folder), names
        )
        worker.returned.connect(self._on_exported)
        worker.errored.connect(lambda exc: notify("error", f"Export failed: {exc}"))
        worker.start()
        return worker

    def _on_exported(self, folder) -> None:
        notify("info", f"Training pairs exported to {folder}")
        self.dataset_exported.emit(str(folder))

    def _export_items(self, only_edited: bool, regions: bool = False) -> list[dict]:
        items = []
        for p in self._pairs_or_chosen("No training pairs to export."):
            if p.is_file:
                items.append(_file_item(p, only_edited, regions))
                continue
            check_same_geometry(p.image_layer, p.labels_layer)
            labels = np.array(p.labels_layer.data, copy=True)
            record = p.labels_layer.metadata.get(_edits.KEY) if only_edited else None
            items.append(
                {
                    "image": layer_volume(p.image_layer, np.asarray(p.image_layer.data)),
                    "labels": layer_volume(p.labels_layer, labels),
                    "annotated": record,
                    "only_edited": only_edited,
                    "regions": regions,
                }
            )
        return items
