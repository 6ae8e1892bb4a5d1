"""Write (image, labels) pairs as an nnU-Net v2 / Medical Segmentation Decathlon folder.

One writer for ``napari-vnet export-dataset`` and the Fine-tune dock's export, so that
corrected data can feed bigger training elsewhere::

    FOLDER/imagesTr/case_000_0000.nii.gz   image (channel 0) on its own geometry
    FOLDER/labelsTr/case_000.nii.gz        labels 0..K (+ "ignore"), same grid
    FOLDER/dataset.json                    channel_names, labels (name -> index),
                                           numTraining, file_ending; MSD keys
                                           (modality, training, test); original label
                                           values in napari_vnet_label_values

No Qt; callers renumber their label maps to consecutive indices first (nnU-Net needs
them) and say which name each index has.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_vnet._atomic import atomic_write_text
from napari_vnet.io import Volume, write_volume


def write_nnunet_dataset(
    folder: str | Path,
    cases: Sequence[tuple[str, Volume, np.ndarray]],
    classes: Sequence[tuple[str, int]],
    *,
    ignore_index: int | None = None,
    name: str | None = None,
    channel: str | None = None,
    extra: dict[str, Any] | None = None,
    sources: Sequence[str | None] | None = None,
) -> Path:
    """Write ``cases`` = ``[(case_id, image, index_labels), ...]`` into ``folder``.

    ``classes``: ``(name, original label value)`` per index 0..K (index 0 background).
    ``ignore_index``: the index of unannotated voxels, written as the "ignore" label.
    ``channel``: channel name (default: the first image's modality, else "image").
    ``extra``: more dataset.json keys. ``sources``: source path per case (recorded).
    Returns the dataset.json path."""
    folder = Path(folder)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for i, (case, image, labels) in enumerate(cases):
        write_volume(image, folder / "imagesTr" / f"{case}_0000.nii.gz")
        write_volume(labels, folder / "labelsTr" / f"{case}.nii.gz", like=image, is_label=True)
        entry = {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}
        if sources is not None and sources[i] is not None:
            entry["source_image"] = str(sources[i])
        training.append(entry)
    if channel is None:
        channel = str(cases[0][1].metadata.get("modality") or "image") if cases else "image"
    labels_map = {cls_name: k for k, (cls_name, _) in enumerate(classes)}
    if ignore_index is not None:
        labels_map["ignore"] = int(ignore_index)
    dataset = {
        "name": name or folder.name,
        "channel_names": {"0": channel},
        "labels": labels_map,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        # Medical Segmentation Decathlon (nnU-Net v1) keys
        "modality": {"0": channel},
        "training": training,
        "test": [],
        "napari_vnet_label_values": {cls_name: int(v) for cls_name, v in classes},
        **(extra or {}),
    }
    path = folder / "dataset.json"
    atomic_write_text(path, json.dumps(dataset, indent=2))
    return path
