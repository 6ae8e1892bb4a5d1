"""The fine-tune dock's non-GUI half: geometry checks, output paths and worker jobs.

Everything here runs without Qt (the jobs run in napari thread workers, the training
itself in a child process that imports this module); the dock in :mod:`.finetune`
collects values on the GUI thread and hands copies to these jobs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


class GeometryMismatch(ValueError):
    """An image and a labels volume are not on the same voxel grid."""


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


def annotated_to_mask(annotated, shape) -> np.ndarray | None:
    """Normalise a file pair's ``annotated`` argument to a boolean mask."""
    if annotated is None:
        return None
    from napari_vnet._widgets import _edits  # here: the training process needs no Qt

    if isinstance(annotated, dict):
        return _edits.annotated_mask(shape, {_edits.KEY: annotated})
    arr = np.asarray(annotated)
    if arr.dtype == bool and arr.shape == tuple(shape):
        return arr
    return _edits.annotated_mask(shape, {_edits.KEY: {"axis": 0, "slices": arr.ravel().tolist()}})


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


def training_job(specs, config, base, out, stop: threading.Event, class_names=None):
    """Generator run in a thread worker: yields training events, returns the summary.

    The training itself runs in a child process (:func:`napari_vnet.child_process.run_in_child`)
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
        from napari_vnet.child_process import run_in_child

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
    from napari_vnet.child_process import DEFAULT_NICE

    text = os.environ.get("NAPARI_VNET_TRAIN_NICE", "").strip()
    try:
        return max(0, min(19, int(text))) if text else DEFAULT_NICE
    except ValueError:
        logger.warning("NAPARI_VNET_TRAIN_NICE=%r is not an integer; using %d", text, DEFAULT_NICE)
        return DEFAULT_NICE


def finetune_job(specs, config, base, out, class_names=None, *, should_stop):
    """The training proper (in the child process): pairs from specs, classes, finetune.

    Torch gets one core fewer than this process may use, so the GUI keeps one.
    """
    import torch

    from napari_vnet.child_process import child_threads
    from napari_vnet.training import TrainingPair, finetune

    before = torch.get_num_threads()
    torch.set_num_threads(min(before, child_threads()))
    try:
        pairs = [spec_to_pair(s, TrainingPair) for s in specs]
        classes = resolve_classes(base, pairs, class_names or {})
        if classes is not None:
            config = dataclasses.replace(config, classes=classes)
        if config.patch_size is None and base is not None:
            patch = trained_patch(base)
            if patch is not None:
                config = dataclasses.replace(config, patch_size=patch)
        summary = yield from finetune(pairs, config, base=base, out=out, should_stop=should_stop)
        return dict(summary or {})
    finally:
        torch.set_num_threads(before)


def trained_patch(base) -> tuple[int, int, int] | None:
    """The patch the base weights were trained with (their card's run history).

    A card's ``patch_size`` is its recommended inference window, often much larger
    (a whole phantom); fine-tuning with the training patch keeps CPU steps short.
    """
    from napari_vnet.models import read_card

    run = read_card(base).history.get("run") or {}
    patch = (run.get("config") or {}).get("patch_size")
    if isinstance(patch, list | tuple) and len(patch) == 3:
        return tuple(int(p) for p in patch)
    return None


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
    annotated = annotated_to_mask(spec["annotated"], img.shape) if spec["only_edited"] else None
    return TrainingPair(
        img.array, lab.array, tuple(img.spacing), annotated=annotated,
        name=Path(spec["labels_path"]).name,
    )  # fmt: skip


def label_values(labels: np.ndarray, mask: np.ndarray | None = None) -> set[int]:
    """Label values present (inside ``mask``); bincount for small unsigned types."""
    arr = np.asarray(labels)
    if mask is not None:
        arr = arr[np.asarray(mask, bool)] if np.asarray(mask).shape == arr.shape else arr
    if arr.size == 0:
        return set()
    if arr.dtype.kind in "ub" and arr.dtype.itemsize <= 2:
        return {int(v) for v in np.flatnonzero(np.bincount(arr.ravel().astype(np.intp)))}
    return {int(v) for v in np.unique(arr)}


def resolve_classes(base, pairs, names: dict[int, str]):
    """The classes to train: the base card's, plus label values it lacks (new classes).

    Returns None when the engine's own choice is right (base card's classes unchanged,
    or from scratch with no names given: one class per label value).
    """
    from napari_vnet.models import ClassInfo

    values: set[int] = set()
    for p in pairs:
        values |= label_values(p.labels, p.annotated)
    values.discard(0)
    if base is None:
        if not names:
            return None
        return [ClassInfo(0, "background")] + [
            ClassInfo(v, names.get(v, f"class_{v}")) for v in sorted(values | set(names))
        ]
    from napari_vnet.models import read_card

    card = read_card(base)
    known = {c.value for c in card.classes}
    new = sorted(values - known)
    if not new and not (set(names) & known):
        return None
    classes = [ClassInfo(c.value, names.get(c.value, c.name), c.color) for c in card.classes]
    classes += [ClassInfo(v, names.get(v, f"class_{v}")) for v in new]
    return classes


def export_job(items: list[dict], folder: Path, class_names: dict[int, str]) -> Path:
    """Worker: write the pairs as an nnU-Net v2 / MSD style dataset (as the CLI does).

    ``imagesTr/case_NNN_0000.nii.gz`` + ``labelsTr/case_NNN.nii.gz`` + ``dataset.json``.
    Label values are renumbered 1..K (nnU-Net needs consecutive values; the original
    values are kept in ``napari_vnet_label_values``). With annotated-slice records,
    voxels outside the annotated slices get nnU-Net's "ignore" label (K + 1), and the
    records are kept in ``napari_vnet_annotated_slices``.
    """
    from napari_vnet.dataset_export import write_nnunet_dataset
    from napari_vnet.io import read_volume

    folder = Path(folder)
    cases = []
    values: set[int] = set()
    for i, it in enumerate(items):
        if "image_path" in it:
            img, lab = read_volume(it["image_path"]), read_volume(it["labels_path"])
            if img.shape != lab.shape:
                raise GeometryMismatch(
                    f"{it['labels_path']} is not on the grid of {it['image_path']}"
                )
        else:
            img, lab = it["image"], it["labels"]
        arr = np.asarray(lab.array)
        mask = annotated_to_mask(it["annotated"], arr.shape) if it["only_edited"] else None
        values |= label_values(arr, mask)
        cases.append((f"case_{i:03d}", img, arr, mask, it["annotated"]))
    fg = sorted(values - {0})
    ignore = len(fg) + 1 if any(c[3] is not None for c in cases) else None
    lut = np.zeros(max(values | {0}) + 1, np.uint8)
    for k, v in enumerate(fg, start=1):
        lut[v] = k
    written, records = [], {}
    for case, img, arr, mask, record in cases:
        new = lut[arr]
        if mask is not None:
            new[~mask] = ignore
            records[case] = record if isinstance(record, dict) else None
        written.append((case, img, new))
    names = {0: "background"} | {v: class_names.get(v, f"class_{v}") for v in fg}
    write_nnunet_dataset(
        folder,
        written,
        [(names[v], v) for v in [0, *fg]],
        ignore_index=ignore,
        extra={
            "description": "training pairs exported from the napari-vnet Fine-tune dock",
            "napari_vnet_annotated_slices": records,
        },
    )
    return folder
