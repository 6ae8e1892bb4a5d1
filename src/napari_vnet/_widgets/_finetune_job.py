"""The fine-tune dock's non-GUI half: layer geometry checks, output paths, export job.

The training job itself is core (:mod:`napari_vnet.training.job`, re-exported here):
the training child process imports it, never this package. The dock in
:mod:`.finetune` collects values on the GUI thread and hands copies to these jobs.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

# the job itself is core (the training child imports no Qt): re-exported for the dock
from napari_vnet.training.job import (  # noqa: F401
    GeometryMismatch,
    annotated_to_mask,
    check_same_grid,
    finetune_job,
    plan_job,
    spec_to_pair,
    training_job,
)

logger = logging.getLogger(__name__)


def check_same_geometry(image_layer, labels_layer) -> None:
    """Raise :class:`GeometryMismatch` unless both layers share one voxel grid."""
    a, b = image_layer, labels_layer
    tail = (
        " Training needs the labels on the image's voxel grid: load both from the same "
        "scan, or resample the labels onto the image first."
    )
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
            f"'{b.name}' has shape {tuple(b.data.shape)}." + tail
        )
    checks = (
        ("scale (voxel spacing)", a.scale, b.scale),
        ("translate (origin)", a.translate, b.translate),
        ("rotate", a.rotate, b.rotate),
        ("shear", a.shear, b.shear),
        ("affine", a.affine.affine_matrix, b.affine.affine_matrix),
    )
    for what, x, y in checks:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if x.shape != y.shape or not np.allclose(x, y, rtol=1e-5, atol=1e-6):
            fmt = np.array2string
            raise GeometryMismatch(
                f"image layer '{a.name}' and labels layer '{b.name}' differ in {what}: "
                f"{fmt(x, precision=4)} vs {fmt(y, precision=4)}." + tail
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


# ------------------------------------------------------------------------ output paths


def user_weights_dir() -> Path:
    """Where fine-tuned weights of shipped (read-only, in-package) models go."""
    from napari_vnet._widgets._session import data_dir  # per-OS folder (platformdirs)

    return data_dir() / "weights"


def default_output_path(base: Path | None, arch: str = "model") -> Path:
    """``name-ftN.pt`` beside ``base`` (next free N; never ``base`` itself).

    Weights inside the installed package, or in a folder we cannot write, get their
    fine-tuned copy in :func:`user_weights_dir` instead.
    """
    import napari_vnet

    if base is None:
        folder, stem = user_weights_dir(), f"{arch}-new"
    else:
        base = Path(base)
        folder, stem = base.parent, re.sub(r"-ft\d+$", "", base.stem)
        pkg = Path(napari_vnet.__file__).resolve().parent
        inside_pkg = pkg in base.resolve().parents
        if inside_pkg or not os.access(folder, os.W_OK):
            folder = user_weights_dir()
    n = 1
    while (folder / f"{stem}-ft{n}.pt").exists() or (
        base is not None and (folder / f"{stem}-ft{n}.pt").resolve() == Path(base).resolve()
    ):
        n += 1
    return folder / f"{stem}-ft{n}.pt"


def parse_class_names(text: str) -> dict[int, str]:
    """``"3=kidney, 4=spleen"`` -> ``{3: "kidney", 4: "spleen"}``."""
    out: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        value, sep, name = part.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise ValueError(f"class name entry '{part}' is not of the form VALUE=NAME")
        out[int(value)] = name.strip()
    return out


def parse_patch(text: str) -> tuple[int, int, int]:
    nums = [int(t) for t in re.split(r"[,x\s]+", text.strip()) if t]
    if len(nums) == 1:
        nums *= 3
    if len(nums) != 3 or min(nums) < 8:
        raise ValueError(f"patch size '{text}' must be one or three integers >= 8 (z, y, x)")
    return tuple(nums)


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60}:{s % 60:02d}" if s < 3600 else f"{s // 3600}h{(s % 3600) // 60:02d}"


# ------------------------------------------------------------------------------ jobs


def trained_patch(base) -> tuple[int, int, int] | None:
    """The patch the base weights were trained with (see the training plan)."""
    from napari_vnet.training.plan import base_card_of
    from napari_vnet.training.plan import trained_patch as from_card

    return from_card(base_card_of(base))


def resolve_classes(base, pairs, names: dict[int, str]):
    """The classes the training plan gives ``pairs`` on ``base`` with ``names``: the base
    card's plus label values it lacks as new classes (from scratch: one per value)."""
    from napari_vnet.training.data import annotated_label_values, load_pairs
    from napari_vnet.training.plan import base_card_of
    from napari_vnet.training.plan import resolve_classes as plan_classes

    values = annotated_label_values(load_pairs(pairs), None)
    return plan_classes(None, names, base_card_of(base), values)[0]


def export_job(items: list[dict], folder: Path, class_names: dict[int, str]) -> Path:
    """Worker: write the pairs as an nnU-Net v2 / MSD style dataset, as the CLI's
    ``export-dataset`` does (:func:`napari_vnet.workflows.dataset_export.export_pairs`).

    Label values are renumbered 1..K; with annotated-slice records, voxels outside the
    annotated slices get nnU-Net's "ignore" label (K + 1), and the records are kept in
    ``napari_vnet_annotated_slices``.
    """
    from napari_vnet.training import TrainingPair
    from napari_vnet.workflows.dataset_export import export_pairs

    pairs, records = [], {}
    for i, it in enumerate(items):
        image = it.get("image_path", it.get("image"))
        labels = it.get("labels_path", it.get("labels"))
        annotated = None
        if it["only_edited"]:
            annotated = it["annotated"]  # a record: load_pairs reads it per region
            if not (it.get("regions") and isinstance(annotated, dict)):
                annotated = annotated_to_mask(annotated, _shape_of(image))  # whole slices
        if it["only_edited"]:
            records[f"case_{i:03d}"] = (
                it["annotated"] if isinstance(it["annotated"], dict) else None
            )
        pairs.append(TrainingPair(image, labels, annotated=annotated, name=str(labels)))
    export_pairs(
        folder,
        pairs,
        class_names=class_names,
        extra={
            "description": "training pairs exported from the napari-vnet Fine-tune dock",
            "napari_vnet_annotated_slices": records,
        },
    )
    return Path(folder)


def _shape_of(image) -> tuple[int, ...]:
    if isinstance(image, (str, os.PathLike)):
        from napari_vnet.io import read_header

        return tuple(int(s) for s in read_header(image)["shape"][:3])
    return tuple(image.shape)
