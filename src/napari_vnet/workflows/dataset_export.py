"""Write (image, labels) pairs as an nnU-Net v2 / Medical Segmentation Decathlon folder.

One writer for ``napari-vnet export-dataset`` and the Fine-tune dock's export, so that
corrected data can feed bigger training elsewhere::

    FOLDER/imagesTr/case_000_0000.nii.gz   image channel 0 on its own geometry
    FOLDER/imagesTr/case_000_0001.nii.gz   channel 1 of a multi-channel case, ...
    FOLDER/labelsTr/case_000.nii.gz        labels 0..K (+ "ignore"), same grid
    FOLDER/dataset.json                    channel_names, labels (name -> index),
                                           numTraining, file_ending; MSD keys
                                           (modality, training, test); original label
                                           values in napari_vnet_label_values

Channel names (:func:`dataset_channel_names`): the names given, else the model card's
(an nnU-Net dataset.json's ``channel_names``), else the images' DICOM modality, else
"CT" for a one-channel image of a card trained on Hounsfield units; a CT channel is
named "CT", the name for which nnU-Net applies its CT normalisation (other names get a
per-image z-score).

No Qt; callers renumber their label maps to consecutive indices first (nnU-Net needs
them) and say which name each index has.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_vnet._atomic import atomic_write_text
from napari_vnet.io import Volume, write_volume


def _channels(image: Volume) -> list[Volume]:
    """The channel volumes of ``image``: itself, or one per channel (channels last)."""
    if image.array.ndim == len(image.spacing):
        return [image]
    return [image.with_array(image.array[..., c]) for c in range(image.array.shape[-1])]


def _modality(image: Volume, channel: int) -> str:
    per_channel = image.metadata.get("channel_modalities")
    if per_channel and channel < len(per_channel):
        return str(per_channel[channel] or "")
    return str(image.metadata.get("modality") or "") if channel == 0 else ""


def dataset_channel_names(
    images: Sequence[Volume], given: Mapping[int, str] | None = None, card: Any = None
) -> dict[str, str]:
    """dataset.json's ``channel_names`` for ``images`` (see the module text): ``given``
    (index -> name) first, then ``card``'s names, the first image's DICOM modality, "CT"
    for a one-channel image of a card trained on Hounsfield units, else "image" (one
    channel) or "channel_<i>". Raises ValueError when the images differ in channels."""
    from napari_vnet.workflows.input_check import _channel_names, expects_hu

    counts = sorted({len(_channels(v)) for v in images}) or [1]
    if len(counts) > 1:
        raise ValueError(f"the cases have {counts[0]} to {counts[-1]} channels; "
                         "every case of a dataset needs the same channels")  # fmt: skip
    n = counts[0]
    given = dict(given or {})
    unknown = sorted(set(given) - set(range(n)))
    if unknown:
        raise ValueError(f"channel name for channel {unknown[0]}, but the images have {n}")
    from_card = _channel_names(card) if card is not None else []
    names = {}
    for i in range(n):
        name = (
            given.get(i)
            or (from_card[i] if len(from_card) == n else "")
            or (_modality(images[0], i) if images else "")
            or ("CT" if n == 1 and card is not None and expects_hu(card) else "")
            or ("image" if n == 1 else f"channel_{i}")
        )
        names[str(i)] = "CT" if name.strip().casefold() == "ct" else name
    return names


def write_nnunet_dataset(
    folder: str | Path,
    cases: Sequence[tuple[str, Volume, np.ndarray]],
    classes: Sequence[tuple[str, int]],
    *,
    ignore_index: int | None = None,
    name: str | None = None,
    channel: str | None = None,
    channel_names: Mapping[int, str] | None = None,
    card: Any = None,
    extra: dict[str, Any] | None = None,
    sources: Sequence[Any] | None = None,
) -> Path:
    """Write ``cases`` = ``[(case_id, image, index_labels), ...]`` into ``folder``.

    ``image``: a Volume, one channel or several (channels last), each channel written as
    ``<case>_<channel:04d>.nii.gz``. ``classes``: ``(name, original label value)`` per
    index 0..K (index 0 background). ``ignore_index``: the index of unannotated voxels,
    written as the "ignore" label. ``channel_names`` (index -> name; ``channel``: the name
    of channel 0) and ``card`` (a model card): the channel names
    (:func:`dataset_channel_names`). ``extra``: more dataset.json keys. ``sources``:
    source path (or paths, one per channel) per case, recorded. Returns the dataset.json
    path."""
    folder = Path(folder)
    given = dict(channel_names or {})
    if channel:
        given.setdefault(0, channel)
    names = dataset_channel_names([image for _, image, _ in cases], given, card)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for i, (case, image, labels) in enumerate(cases):
        for c, channel_image in enumerate(_channels(image)):
            write_volume(channel_image, folder / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        write_volume(labels, folder / "labelsTr" / f"{case}.nii.gz", like=image, is_label=True)
        entry: dict[str, Any] = {
            "image": f"./imagesTr/{case}.nii.gz",
            "label": f"./labelsTr/{case}.nii.gz",
        }
        if sources is not None and sources[i] is not None:
            src = sources[i]
            multi = not isinstance(src, (str, os.PathLike))
            entry["source_image"] = [str(f) for f in src] if multi else str(src)
        training.append(entry)
    labels_map = {cls_name: k for k, (cls_name, _) in enumerate(classes)}
    if ignore_index is not None:
        labels_map["ignore"] = int(ignore_index)
    dataset = {
        "name": name or folder.name,
        "channel_names": names,
        "labels": labels_map,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        # Medical Segmentation Decathlon (nnU-Net v1) keys
        "modality": dict(names),
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
    channels: Sequence[Sequence[str | os.PathLike] | None] | None = None,
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
    ``channels``: per pair, the files of a multi-channel image (channel 0 first, the
    pair's image; they must share its grid:
    :func:`napari_vnet.workflows.batch_channels.read_case_channels`), or None.
    ``dataset``: :func:`write_nnunet_dataset`'s ``name``, ``channel``,
    ``channel_names``, ``card``, ``extra`` and ``sources``. Returns the dataset.json path.
    """
    from napari_vnet.training.data import annotated_label_values, load_pairs
    from napari_vnet.training.plan import renumber_for_export, resolve_classes
    from napari_vnet.workflows.batch_channels import read_case_channels

    loaded = load_pairs(pairs)
    values = annotated_label_values(loaded, ignore_index, uncorrected_weight=0.0)
    chosen, _ = resolve_classes(classes, class_names, None, values)
    sparse = any(p.mask is not None for p in loaded)
    ignore = len(chosen) if (sparse or ignore_index is not None) else None
    written = []
    for i, p in enumerate(loaded):
        image = p.volume if p.volume is not None else Volume(p.image, spacing=p.spacing)
        files = channels[i] if channels is not None else None
        if files is not None and len(files) > 1:
            image = read_case_channels([str(f) for f in files])
        if image.shape[:3] != p.labels.shape:  # pragma: no cover - load_pairs checked it
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
