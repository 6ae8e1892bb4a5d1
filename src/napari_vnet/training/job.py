"""The training job the Fine-tune dock (and the Scans dock through it) runs (no Qt).

The dock collects *specs* on the GUI thread - copies of layer data, or file paths with
their annotated-slice records - and hands them to :func:`training_job` in a thread
worker, which starts :func:`finetune_job` in a child process
(:func:`napari_vnet.workflows.child_process.run_in_child`). Everything the child imports lives in
the core: this module, :mod:`napari_vnet.training`, :mod:`napari_vnet.annotations`,
:mod:`napari_vnet.io` - never napari or Qt. The policy (classes, patch, masks) is the
training plan's (:func:`~napari_vnet.training.plan.plan_training`), as for the CLI.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path

import numpy as np

from napari_vnet.training.config import TrainConfig, TrainingError, TrainingPair

logger = logging.getLogger(__name__)

__all__ = [
    "GeometryMismatch",
    "check_same_grid",
    "finetune_job",
    "plan_job",
    "spec_to_pair",
    "training_job",
]


class GeometryMismatch(TrainingError):
    """An image and a labels volume are not on the same voxel grid."""


def check_same_grid(a, b, a_name, b_name) -> None:
    """Raise :class:`GeometryMismatch` unless two headers / Volumes share one voxel grid.

    ``a``/``b``: :func:`napari_vnet.io.read_header` dicts or Volumes (shape, spacing,
    origin, direction in z, y, x order).
    """

    def get(obj, key):
        return obj.get(key) if isinstance(obj, dict) else getattr(obj, key)

    checks = (
        ("shape", 0.0, 0.0),
        ("spacing", 1e-4, 1e-6),
        ("origin", 0.0, 1e-3),
        ("direction", 0.0, 1e-4),
    )
    for key, rtol, atol in checks:
        x, y = get(a, key), get(b, key)
        if x is None or y is None:
            continue
        x, y = np.asarray(x, float), np.asarray(y, float)
        if key == "shape":
            x, y = x[:3], y[:3]
        if x.shape != y.shape or not np.allclose(x, y, rtol=rtol, atol=atol):
            raise GeometryMismatch(
                f"{b_name} is not on the voxel grid of {a_name}: {key} "
                f"{np.array2string(y, precision=4)} vs {np.array2string(x, precision=4)}. "
                "Training needs the labels on the image's voxel grid."
            )


def annotated_to_mask(annotated, shape, labels=None) -> np.ndarray | None:
    """Normalise a file pair's ``annotated`` argument to a boolean mask (with
    ``labels``, a record's edited slices count per label and region)."""
    from napari_vnet.annotations import mask_from_record

    return mask_from_record(annotated, shape, labels)


def spec_to_pair(spec: dict, TrainingPair):
    """A worker-side TrainingPair from a spec (layer copies, or files read here)."""
    if "image_path" not in spec:
        return TrainingPair(
            spec["image"], spec["labels"], spec["spacing"], annotated=spec["annotated"],
            name=spec.get("name", ""),
        )  # fmt: skip
    from napari_vnet.io import read_volume

    img, lab = read_volume(spec["image_path"]), read_volume(spec["labels_path"])
    check_same_grid(img, lab, spec["image_path"], spec["labels_path"])
    annotated = (
        annotated_to_mask(
            spec["annotated"], img.shape, np.asarray(lab.array) if spec.get("regions") else None
        )
        if spec["only_edited"]
        else None
    )
    return TrainingPair(
        img.array, lab.array, tuple(img.spacing), annotated=annotated,
        name=Path(spec["labels_path"]).name,
    )  # fmt: skip


def with_class_names(config: TrainConfig, class_names: dict[int, str] | None) -> TrainConfig:
    """The dock's "Class names" field travels in the config, as for the CLI."""
    if not class_names:
        return config
    merged = {**(config.class_names or {}), **{int(k): str(v) for k, v in class_names.items()}}
    return dataclasses.replace(config, class_names=merged)


def plan_job(specs, config: TrainConfig, base, class_names=None):
    """The training plan of a dock job (what :func:`finetune_job` will train)."""
    from napari_vnet.training.plan import plan_training

    pairs = [spec_to_pair(s, TrainingPair) for s in specs]
    return plan_training(pairs, with_class_names(config, class_names), base=base)


def training_job(specs, config, base, out, stop: threading.Event, class_names=None):
    """Generator run in a thread worker: yields training events, returns the summary.

    The training itself runs in a child process
    (:func:`napari_vnet.workflows.child_process.run_in_child`) so that none of its work (reading files, imports, numpy, checkpoint pickling) can hold
    the GIL of the napari process and freeze the viewer; this thread only relays the
    events. ``stop`` (the dock's Cancel) ends the run at the next step; the best
    checkpoint so far is kept. Engine errors are raised here with their own message.
    Set ``NAPARI_VNET_TRAIN_IN_THREAD=1`` to train in this thread instead (debugging),
    which is also the fallback when no child process can be started;
    ``NAPARI_VNET_TRAIN_NICE`` (0-19, default 10) sets how far the training process
    lowers its CPU priority below the viewer's.
    """
    gen = None
    if os.environ.get("NAPARI_VNET_TRAIN_IN_THREAD", "") in ("", "0"):
        from napari_vnet.workflows.child_process import run_in_child

        try:
            gen = run_in_child(
                f"{__name__}:finetune_job", specs, config, base, out, class_names, stop=stop,
                nice=_training_nice(),
            )  # fmt: skip
        except OSError as exc:  # e.g. a frozen app without a Python to start
            logger.warning("cannot start a training process (%s); training in a thread", exc)
    if gen is None:
        gen = finetune_job(specs, config, base, out, class_names, should_stop=stop.is_set)
    return (yield from gen)


def _training_nice() -> int:
    """How much lower the training process's CPU priority is (``NAPARI_VNET_TRAIN_NICE``)."""
    from napari_vnet.workflows.child_process import DEFAULT_NICE

    text = os.environ.get("NAPARI_VNET_TRAIN_NICE", "").strip()
    try:
        return max(0, min(19, int(text))) if text else DEFAULT_NICE
    except ValueError:
        logger.warning("NAPARI_VNET_TRAIN_NICE=%r is not an integer; using %d", text, DEFAULT_NICE)
        return DEFAULT_NICE


def finetune_job(specs, config, base, out, class_names=None, *, should_stop):
    """The training proper (in the child process): pairs from specs, then :func:`finetune`
    (whose plan settles classes and patch as for the CLI).

    Torch gets one core fewer than this process may use, so the GUI keeps one.
    """
    import torch

    from napari_vnet.training.loop import finetune
    from napari_vnet.workflows.child_process import child_threads

    before = torch.get_num_threads()
    torch.set_num_threads(min(before, child_threads()))
    try:
        pairs = [spec_to_pair(s, TrainingPair) for s in specs]
        config = with_class_names(config, class_names)
        summary = yield from finetune(pairs, config, base=base, out=out, should_stop=should_stop)
        return summary
    finally:
        torch.set_num_threads(before)
