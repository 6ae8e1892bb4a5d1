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


def export_pairs(
    folder: str | Path,
    pairs: Sequence[Any],
    *,
    classes: Any = None,
    class_names: dict[int, str] | None = None,
    ignore_index: int | None = None,
    **dataset: Any,
) -> Path:
    """Export training pairs (:class:`~napari_vnet.training.TrainingPair`: files, Volumes
    or arrays, with optional annotated-slice records) the way training reads them.

    The training plan decides (as for ``napari-vnet train``): labels in another geometry
    are resampled onto the image grid; the classes are ``classes`` (other values become
    background) or every value in annotated voxels, named from ``class_names``; values
    are renumbered 1..K in class order (:func:`napari_vnet.training.renumber_for_export`).
    Voxels outside the annotated slices, or equal to ``ignore_index``, get nnU-Net's
    "ignore" label K + 1; so do the voxels an edit record's slices left as predicted
    (a dataset has no loss weights: it keeps what the user corrected or reviewed).
    ``dataset``: :func:`write_nnunet_dataset`'s ``name``, ``channel``, ``extra`` and
    ``sources``. Returns the dataset.json path.
    """
    from napari_vnet.training.data import annotated_label_values, load_pairs
    from napari_vnet.training.plan import renumber_for_export, resolve_classes

    loaded = load_pairs(pairs)
    values = annotated_label_values(loaded, ignore_index, uncorrected_weight=0.0)
    chosen, _ = resolve_classes(classes, class_names, None, values)
    sparse = any(p.mask is not None for p in loaded)
    ignore = len(chosen) if (sparse or ignore_index is not None) else None
    written = []
    for i, p in enumerate(loaded):
        image = p.volume if p.volume is not None else Volume(p.image, spacing=p.spacing)
        if image.shape != p.labels.shape:  # pragma: no cover - load_pairs checked it
            raise ValueError(f"{p.name}: labels and image disagree in shape")
        new = renumber_for_export(
            p.labels, chosen, mask=p.counted(0.0), ignore_index=ignore_index,
            ignore_label=ignore,
        )
        written.append((f"case_{i:03d}", image, new))
    return write_nnunet_dataset(
        folder,
        written,
        [(c.name, c.value) for c in chosen],
        ignore_index=ignore,
        **dataset,
    )
