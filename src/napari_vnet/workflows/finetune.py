"""Fine-tune (or train from scratch): what ``napari-vnet train`` and the Fine-tune dock
both run (no Qt).

* training pairs: from files with annotated slices (:func:`pairs_from_files`, the command
  line), or from the dock's *specs* - copies of layer data, or file paths with their
  annotated-slice records (:func:`spec_to_pair`); a pair of files must lie on one voxel
  grid (:func:`check_pair_grid`, the rule of :mod:`napari_vnet.io.grid`);
* where the weights go: never the base weights (:func:`is_base_weights`); the dock's
  default ``name-ftN.pt`` (:func:`default_output_path`);
* the plan (:func:`~napari_vnet.training.plan.plan_training`, also :func:`plan_job`) and
  the run: :func:`train` (to the end, events to a callback: the command line) or
  :func:`training_job` (a generator for the dock's thread worker, which starts
  :func:`finetune_job` in a child process so that no training work holds the viewer's GIL).

Everything the child imports is core or this module - never napari or Qt.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_vnet.io.errors import VolumeReadError
from napari_vnet.io.grid import grid_differences
from napari_vnet.io.paths import same_file
from napari_vnet.models.errors import CheckpointError
from napari_vnet.training.config import TrainConfig, TrainingError, TrainingPair

logger = logging.getLogger(__name__)

__all__ = [
    "INPUT_ERRORS",
    "GeometryMismatch",
    "check_pair_grid",
    "default_output_path",
    "finetune_job",
    "is_base_weights",
    "pairs_from_files",
    "plan_job",
    "spec_to_pair",
    "train",
    "trained_patch",
    "training_job",
    "user_weights_dir",
]

#: what a run refuses with a message naming the input (bad files, bad weights, bad settings)
INPUT_ERRORS = (TrainingError, FileNotFoundError, VolumeReadError, CheckpointError)

#: why a pair is refused, after what differs
ON_IMAGE_GRID = "Training needs the labels on the image's voxel grid."


class GeometryMismatch(TrainingError):
    """An image and a labels volume are not on the same voxel grid."""


def check_pair_grid(image, labels, image_name, labels_name) -> None:
    """Raise :class:`GeometryMismatch` unless two Volumes / headers share one voxel grid."""
    diffs = grid_differences(image, labels)
    if diffs:
        raise GeometryMismatch(
            f"{labels_name} is not on the voxel grid of {image_name}: "
            + "; ".join(str(d) for d in diffs)
            + f". {ON_IMAGE_GRID}"
        )


# ------------------------------------------------------------------------------ pairs


def pairs_from_files(
    images: Sequence[str],
    labels: Sequence[str],
    annotated: Sequence[list[int] | dict | None] = (),
) -> list[TrainingPair]:
    """One pair per (image, labels) path, in order, with its annotated z slices or edit
    record (None or ``annotated`` empty: every slice)."""
    slices = list(annotated) or [None] * len(images)
    return [
        TrainingPair(img, lab, annotated=sl, name=str(img))
        for img, lab, sl in zip(images, labels, slices, strict=True)
    ]


def spec_to_pair(spec: dict) -> TrainingPair:
    """A TrainingPair from a dock spec (layer copies, or files read here)."""
    if "image_path" not in spec:
        return TrainingPair(
            spec["image"], spec["labels"], spec["spacing"], annotated=spec["annotated"],
            name=spec.get("name", ""),
        )  # fmt: skip
    from napari_vnet.io import read_volume
    from napari_vnet.training.annotations import mask_from_record

    img, lab = read_volume(spec["image_path"]), read_volume(spec["labels_path"])
    check_pair_grid(img, lab, spec["image_path"], spec["labels_path"])
    annotated = spec["annotated"] if spec["only_edited"] else None
    if annotated is not None and not (spec.get("regions") and isinstance(annotated, dict)):
        annotated = mask_from_record(annotated, img.shape, None)  # the slices whole
    # (a record with regions: load_pairs reads it per label and region, with the labels)
    return TrainingPair(
        img.array, lab.array, tuple(img.spacing), annotated=annotated,
        name=Path(spec["labels_path"]).name,
    )  # fmt: skip


# ------------------------------------------------------------------------------ weights


def is_base_weights(out: str | os.PathLike, base: Any) -> bool:
    """True when ``out`` is the base weights file (a path or a shipped name; any
    spelling of the same file: links, relative paths)."""
    if base is None or isinstance(base, tuple):
        return False
    try:
        from napari_vnet.weights import resolve_weights

        path = resolve_weights(str(base))
    except Exception:  # noqa: BLE001 - the run words a bad base itself
        path = Path(base)
    return same_file(out, path)


def user_weights_dir() -> Path:
    """Where fine-tuned weights of shipped (read-only, in-package) models go."""
    from napari_vnet.user_dirs import data_dir  # per-OS folder (platformdirs)

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


def trained_patch(base) -> tuple[int, int, int] | None:
    """The patch the base weights (a path or shipped name) were trained with, if recorded."""
    from napari_vnet.training.plan import base_card_of
    from napari_vnet.training.plan import trained_patch as of_card

    return of_card(base_card_of(base))


# ------------------------------------------------------------------------------ runs


def plan_job(specs, config: TrainConfig, base):
    """The training plan of a dock job (what :func:`finetune_job` will train)."""
    from napari_vnet.training.plan import plan_training

    return plan_training([spec_to_pair(s) for s in specs], config, base=base)


def train(
    pairs: Sequence[TrainingPair],
    config: TrainConfig,
    *,
    base: Any,
    out: str | os.PathLike,
    on_event: Callable[[Any], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    threads: int | None = None,
):
    """Train on ``pairs`` to the end; each :class:`~napari_vnet.training.TrainingStep` goes
    to ``on_event``; returns the :class:`~napari_vnet.training.TrainingSummary`. Ctrl-C keeps
    the best checkpoint and the resume file (``config.resume`` continues). ``threads``:
    torch's intra-op threads (0/None: :func:`napari_vnet.workflows.threads.thread_choice`)."""
    from napari_vnet.training.loop import run_training
    from napari_vnet.workflows.threads import use_threads

    with use_threads(threads):
        return run_training(
            pairs, config, base=base, out=out, on_event=on_event, should_stop=should_stop
        )


def training_job(specs, config: TrainConfig, base, out, stop: threading.Event):
    """Generator run in the dock's thread worker: yields training events, returns the
    summary.

    The training itself runs in a child process (:func:`napari_vnet.workflows.child_process.run_in_child`)
    so that none of its work (reading files, imports, numpy, checkpoint pickling) can hold
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
                f"{__name__}:finetune_job", specs, config, base, out, stop=stop,
                nice=_training_nice(),
            )  # fmt: skip
        except OSError as exc:  # e.g. a frozen app without a Python to start
            logger.warning("cannot start a training process (%s); training in a thread", exc)
    if gen is None:
        gen = finetune_job(specs, config, base, out, should_stop=stop.is_set)
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


def finetune_job(specs, config: TrainConfig, base, out, *, should_stop):
    """The training proper (in the child process): pairs from specs, then
    :func:`~napari_vnet.training.finetune` (whose plan settles classes and patch as for
    the command line). Torch's threads are chosen keeping one core for the GUI
    (:func:`napari_vnet.workflows.threads.use_threads`)."""
    from napari_vnet.training.loop import finetune
    from napari_vnet.workflows.threads import use_threads

    with use_threads(None, reserve=1):
        pairs = [spec_to_pair(s) for s in specs]
        return (yield from finetune(pairs, config, base=base, out=out, should_stop=should_stop))


def export_job(items: list[dict], folder: Path, class_names: dict[int, str]) -> Path:
    """Write the dock's pairs as an nnU-Net v2 / MSD style dataset, as the command line's
    ``export-dataset`` does (:func:`napari_vnet.workflows.dataset_export.export_pairs`).

    Label values are renumbered 1..K; with annotated-slice records, voxels outside the
    annotated slices get nnU-Net's "ignore" label (K + 1), and the records are kept in
    ``napari_vnet_annotated_slices``.
    """
    from napari_vnet.training.annotations import mask_from_record
    from napari_vnet.workflows.dataset_export import export_pairs

    pairs, records = [], {}
    for i, it in enumerate(items):
        image = it.get("image_path", it.get("image"))
        labels = it.get("labels_path", it.get("labels"))
        annotated = None
        if it["only_edited"]:
            annotated = it["annotated"]  # a record: load_pairs reads it per region
            if not (it.get("regions") and isinstance(annotated, dict)):
                annotated = mask_from_record(annotated, _shape_of(image), None)  # whole slices
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
