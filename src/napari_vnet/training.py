"""Fine-tuning engine: learn from (image, labels) pairs, even sparsely annotated ones (no Qt).

The public API is :func:`finetune`, a generator. It yields one event dict per iteration::

    {"iteration": 17, "total": 200, "loss": 0.61, "losses": {"dice": .., "ce": ..},
     "lr": 1e-3, "seconds": 4.2, ["val_dice": 0.71], ["checkpoint": "/path/new.pt"]}

and returns (``StopIteration.value``) a summary dict whose ``"out"`` is the path of the
best checkpoint written. ``should_stop()`` ends the run early; the best checkpoint written
so far stays on disk (if none was written yet, the current weights are), together with a
``<out stem>.resume<suffix>`` file from which ``TrainConfig(resume=True)`` continues.

Pipeline (each step a small function below):

1. pairs -> arrays on the image grid (labels in another geometry, e.g. flipped rows, are
   resampled onto the image with nearest neighbour), resampled to the card spacing and
   normalised as the card says (:func:`prepare_cases`);
2. label values -> output channels via the card's classes (values not listed become
   background); voxels equal to ``ignore_index`` or outside the ``annotated`` mask are
   unannotated and contribute nothing to any loss (the 3D U-Net paper's sparse training);
3. random patches, about a third centred on a labelled class (:class:`PatchSampler`),
   cheap augmentation (flips, in-plane 90 degree rotations, intensity scale/shift,
   Gaussian noise);
4. V-Net / 3D U-Net: soft Dice (Milletari) + cross entropy; Vox2Vox: least-squares
   adversarial loss with the PatchGAN discriminator + lambda * (generalized Dice +
   ``gan_ce_weight`` * cross entropy) (Cirillo et al. 2020: lambda = 5 and no cross
   entropy; the cross entropy term is ours, see :data:`VOX2VOX_CE_WEIGHT`);
5. AdamW, linear warm-up then poly or cosine decay, gradient clipping, AMP where the
   hardware has it (CUDA; CPU bf16 only with native bf16 support), optional validation
   Dice, best checkpoint written atomically.

Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel
(NCCL on GPUs, gloo on CPU); each rank samples its own patches and only rank 0 writes.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_vnet.inference import pad_to_window
from napari_vnet.io.volume import Volume
from napari_vnet.losses import (
    DiceCELoss,
    cross_entropy_loss,
    generalized_dice_loss,
    least_squares_gan_loss,
    one_hot,
)
from napari_vnet.models.card import ClassInfo, ModelCard
from napari_vnet.runtime import (
    available_memory,
    bf16_conv_guard,
    resolve_amp,
    resolve_device,
)

log = logging.getLogger(__name__)

__all__ = [
    "PatchSampler",
    "TrainConfig",
    "TrainingCancelled",
    "TrainingError",
    "TrainingPair",
    "finetune",
    "labels_on_image_grid",
    "parse_classes",
    "prepare_cases",
    "resume_path",
    "run_training",
]

#: Vox2Vox generator loss weight of the generalized Dice term (Cirillo et al. 2020).
VOX2VOX_LAMBDA = 5.0
#: Vox2Vox generator: weight of a cross-entropy term added to the generalized Dice term
#: (inside lambda). Not in the paper, whose generator loss has generalized Dice only. Without
#: it a class whose softmax probability collapses to ~0 early in training (the adversarial
#: term and the 1 / volume^2 weights of large organs make this easy) never recovers: the
#: Dice gradient reaches the logits through p * (1 - p) and vanishes, while the cross
#: entropy gradient (p - 1 at the class's voxels) does not. The shipped Vox2Vox phantom
#: weights trained without it predicted liver and spleen nowhere (Dice 0.000). 0 gives the
#: paper's loss.
VOX2VOX_CE_WEIGHT = 1.0
#: default training patch (z, y, x) when neither the config nor a base card gives one
DEFAULT_PATCH = (48, 48, 48)


class TrainingError(ValueError):
    """The training inputs cannot be used (the message names the input and the problem)."""


class TrainingCancelled(RuntimeError):
    """Raised by :func:`run_training` with ``raise_on_cancel=True`` when ``should_stop``
    ended the run; ``.summary`` holds the summary (the best checkpoint is on disk)."""

    def __init__(self, summary: dict[str, Any]):
        super().__init__(f"training cancelled at iteration {summary.get('iterations')}")
        self.summary = summary


@dataclass
class TrainingPair:
    """One training case.

    ``image``/``labels``: a numpy array (then ``spacing`` is needed unless 1 mm), a
    :class:`~napari_vnet.io.volume.Volume`, or a path readable by
    :func:`napari_vnet.io.read_volume`. ``annotated`` marks the voxels whose labels are
    meaningful: a bool array of the labels' shape, a per-z-slice bool vector, or a list of
    annotated z-slice indices. ``None``: everything (except ``ignore_index``) is annotated.
    """

    image: Any
    labels: Any
    spacing: tuple[float, float, float] | None = None
    annotated: Any = None
    name: str = ""


@dataclass
class TrainConfig:
    """Everything about a training run except the data and the starting weights."""

    arch: str | None = None  # "vnet" | "unet3d" | "vox2vox" (from scratch; ignored with base)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    classes: Any = None  # list[ClassInfo] | {value: name} | "5=liver,1=spleen" | None
    iterations: int | None = 200  # None: run for ``minutes``
    minutes: float | None = None  # time budget; the first of iterations/minutes ends the run
    patch_size: tuple[int, int, int] | None = None  # None: base card's, else DEFAULT_PATCH
    batch_size: int = 2
    lr: float | None = None  # None: 1e-3 from scratch, 3e-4 when fine-tuning
    weight_decay: float = 1e-4
    warmup: float = 0.05  # fraction of the run spent warming the learning rate up
    schedule: str = "poly"  # "poly" | "cosine" | "constant"
    grad_clip: float | None = 12.0
    spacing: tuple[float, float, float] | None = None  # None: base card's or the data's
    normalization: dict[str, Any] | None = None  # None: base card's or z-score
    ignore_index: int | None = None
    foreground_fraction: float = 1.0 / 3.0
    augment: bool = True
    val_fraction: float = 0.0
    eval_every: int | None = None  # iterations between validation/checkpoint points
    eval_seconds: float = 60.0  # ... or at most this many seconds between them
    seed: int = 0
    device: str = "auto"
    amp: Any = "auto"  # "auto" | True | False
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    gan_lambda: float = VOX2VOX_LAMBDA
    gan_ce_weight: float = VOX2VOX_CE_WEIGHT  # Vox2Vox: cross entropy beside the GDL term
    resume: bool = False
    keep_resume: bool = False  # keep the resume file after a run that finished normally

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible copy (stored in the card history of what it trained)."""
        d = asdict(self)
        if isinstance(d["classes"], dict):
            d["classes"] = {str(k): str(v) for k, v in d["classes"].items()}
        return d


# ----------------------------------------------------------------------------- classes


def parse_classes(spec: Any) -> list[ClassInfo] | None:
    """``"5=liver,1=spleen"`` / ``{5: "liver"}`` / ``[ClassInfo, ...]`` -> card classes.

    The result always starts with ``ClassInfo(0, "background")``; the order of the others
    is the order given (= output channel order).
    """
    if spec is None:
        return None
    items: list[tuple[int, str]] = []
    if isinstance(spec, str):
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            value, _, name = part.partition("=")
            try:
                items.append((int(value), name.strip() or f"class_{int(value)}"))
            except ValueError:
                raise TrainingError(
                    f"cannot parse class {part!r} in {spec!r}; expected VALUE=NAME, e.g. 5=liver"
                ) from None
    elif isinstance(spec, dict):
        items = [(int(v), str(n)) for v, n in spec.items()]
    else:
        out = [c if isinstance(c, ClassInfo) else ClassInfo.from_dict(c) for c in spec]
        items = [(c.value, c.name) for c in out]
        colors = {c.value: c.color for c in out}
        classes = [ClassInfo(0, "background", colors.get(0))]
        classes += [ClassInfo(v, n, colors.get(v)) for v, n in items if v != 0]
        return classes
    values = [v for v, _ in items]
    if len(set(values)) != len(values):
        raise TrainingError(f"duplicate label values in classes {spec!r}")
    if any(v < 0 for v in values):
        raise TrainingError(f"label values must be >= 0 in classes {spec!r}")
    background = next((n for v, n in items if v == 0), "background")
    return [ClassInfo(0, background)] + [ClassInfo(v, n) for v, n in items if v != 0]


def _classes_from_labels(labels_and_masks, ignore_index) -> list[ClassInfo]:
    """Every label value present in an annotated voxel (unannotated voxels do not count)."""
    values: set[int] = set()
    for lab, mask in labels_and_masks:
        values.update(int(v) for v in np.unique(lab if mask is None else lab[mask]))
    values.discard(0)
    if ignore_index is not None:
        values.discard(int(ignore_index))
    if not values:
        raise TrainingError("the label maps hold no foreground value; nothing to learn")
    if len(values) > 32:
        raise TrainingError(
            f"the label maps hold {len(values)} label values; select some with classes, "
            "e.g. '5=liver,1=spleen'"
        )
    return [ClassInfo(0, "background")] + [ClassInfo(v, f"class_{v}") for v in sorted(values)]


# ----------------------------------------------------------------------------- data


def _load(obj: Any, spacing, what: str) -> tuple[np.ndarray, Volume | None]:
    if isinstance(obj, Volume):
        return np.asarray(obj.array), obj
    if isinstance(obj, (str, os.PathLike)):
        from napari_vnet.io import read_volume

        vol = read_volume(obj)
        return np.asarray(vol.array), vol
    arr = np.asarray(obj)
    if arr.ndim != 3:
        raise TrainingError(f"{what} must be a 3-D (z, y, x) array, got shape {arr.shape}")
    return arr, None


def _same_grid(a: Volume, b: Volume) -> bool:
    return (
        a.shape == b.shape
        and np.allclose(a.spacing, b.spacing, rtol=1e-4, atol=1e-4)
        and np.allclose(a.origin, b.origin, atol=1e-3)
        and np.allclose(np.asarray(a.direction), np.asarray(b.direction), atol=1e-4)
    )


def labels_on_image_grid(image: Volume, labels: Volume) -> np.ndarray:
    """The label array on the image's voxel grid (nearest neighbour through physical space).

    Returns the labels' own array when both share the grid; otherwise resamples, which
    also undoes e.g. rows stored flipped (direction diag(1, -1, 1)) in the label file.
    """
    if _same_grid(image, labels):
        return np.asarray(labels.array)
    import SimpleITK as sitk

    def to_itk(vol: Volume, arr: np.ndarray):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing([float(s) for s in vol.spacing[::-1]])
        img.SetOrigin([float(o) for o in vol.origin[::-1]])
        img.SetDirection([float(d) for d in np.asarray(vol.direction)[::-1, ::-1].ravel()])
        return img

    lab = np.asarray(labels.array)
    src = lab.astype(np.int32) if lab.dtype.itemsize == 8 or lab.dtype == np.bool_ else lab
    moving = to_itk(labels, src)
    ref = to_itk(image, np.zeros(image.shape, np.uint8))
    out = sitk.Resample(
        moving, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, moving.GetPixelID()
    )
    return sitk.GetArrayFromImage(out).astype(lab.dtype, copy=False)


def _annotated_mask(annotated: Any, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    if annotated is None:
        return None
    a = np.asarray(annotated)
    if a.shape == shape:
        return a.astype(bool)
    mask = np.zeros(shape, bool)
    if a.dtype == np.bool_ and a.ndim == 1 and a.shape[0] == shape[0]:
        mask[a] = True
        return mask
    if a.ndim == 1 and a.dtype.kind in "iu":
        if a.size and (a.min() < 0 or a.max() >= shape[0]):
            raise TrainingError(
                f"{name}: annotated slice indices {a.tolist()} outside 0..{shape[0] - 1}"
            )
        mask[a] = True
        return mask
    raise TrainingError(
        f"{name}: 'annotated' must be a bool mask of shape {shape}, a per-slice bool vector of "
        f"length {shape[0]}, or a list of z-slice indices; got shape {a.shape} dtype {a.dtype}"
    )


@dataclass
class _Case:
    """One prepared case: network-ready image, channel-index target, annotated mask."""

    name: str
    image: np.ndarray  # float32 (z, y, x), normalised
    target: np.ndarray  # uint8 channel indices
    mask: np.ndarray | None  # bool, None = all annotated
    fg_coords: dict[int, np.ndarray] = field(default_factory=dict)  # channel -> (N, 3)
    annotated_coords: np.ndarray | None = None  # (N, 3) sample of annotated voxels

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]


def _index_case(case: _Case, rng: np.random.Generator, limit: int = 20000) -> None:
    def sample(coords: np.ndarray) -> np.ndarray:
        if len(coords) > limit:
            coords = coords[rng.choice(len(coords), limit, replace=False)]
        return coords.astype(np.int32)

    valid = case.mask if case.mask is not None else None
    for ch in np.unique(case.target):
        if ch == 0:
            continue
        sel = case.target == ch
        if valid is not None:
            sel &= valid
        coords = np.argwhere(sel)
        if len(coords):
            case.fg_coords[int(ch)] = sample(coords)
    if valid is not None:
        case.annotated_coords = sample(np.argwhere(valid))


def prepare_cases(
    pairs: Sequence[TrainingPair],
    classes: list[ClassInfo] | None,
    *,
    spacing: tuple[float, float, float] | None,
    normalization: dict[str, Any],
    ignore_index: int | None = None,
) -> tuple[list[_Case], list[ClassInfo], tuple[float, float, float]]:
    """Load, align, resample and normalise the pairs; map label values to channels.

    Returns the cases, the classes (derived from the label values when ``classes`` is
    None) and the spacing used (the first pair's when ``spacing`` is None).
    """
    from napari_vnet.transforms import normalize_intensity, resample_to_spacing

    if not pairs:
        raise TrainingError("no training pairs given")
    raw = []
    for i, pair in enumerate(pairs):
        pair = pair if isinstance(pair, TrainingPair) else TrainingPair(*pair)
        name = pair.name or (
            str(pair.image) if isinstance(pair.image, (str, os.PathLike)) else f"pair {i}"
        )
        img, img_vol = _load(pair.image, pair.spacing, f"{name}: image")
        lab, lab_vol = _load(pair.labels, pair.spacing, f"{name}: labels")
        if img.ndim != 3:
            raise TrainingError(f"{name}: image must be 3-D (z, y, x), got shape {img.shape}")
        if img_vol is not None and lab_vol is not None and not _same_grid(img_vol, lab_vol):
            log.info("%s: labels are on another grid; resampling them onto the image", name)
            lab = labels_on_image_grid(img_vol, lab_vol)
        if lab.shape != img.shape:
            raise TrainingError(
                f"{name}: labels shape {lab.shape} differs from image shape {img.shape}"
            )
        if lab.dtype.kind == "f":
            if not np.all(np.isfinite(lab)) or not np.array_equal(lab, np.round(lab)):
                raise TrainingError(f"{name}: labels must be integer label values")
            lab = lab.astype(np.int32)
        elif lab.dtype == np.bool_:
            lab = lab.astype(np.uint8)
        sp = pair.spacing or (img_vol.spacing if img_vol is not None else (1.0, 1.0, 1.0))
        sp = tuple(float(s) for s in sp)
        if len(sp) != 3 or any(s <= 0 for s in sp):
            raise TrainingError(f"{name}: spacing must be 3 positive values, got {sp}")
        mask = _annotated_mask(pair.annotated, lab.shape, name)
        raw.append((name, img, lab, sp, mask))

    if classes is None:
        classes = _classes_from_labels([(r[2], r[4]) for r in raw], ignore_index)
    target_spacing = tuple(float(s) for s in (spacing or raw[0][3]))
    lut_values = [c.value for c in classes]
    _check_label_values(raw, classes, ignore_index)
    cases = []
    for name, img, lab, sp, mask in raw:
        if not np.allclose(sp, target_spacing, rtol=1e-3):
            img = resample_to_spacing(img, sp, target_spacing, is_label=False)
            lab = resample_to_spacing(lab, sp, target_spacing, is_label=True, shape=img.shape)
            if mask is not None:
                mask = resample_to_spacing(mask, sp, target_spacing, is_label=True, shape=img.shape)
        image = normalize_intensity(img, normalization)
        if ignore_index is not None:
            ignored = lab == ignore_index
            if ignored.any():
                mask = ~ignored if mask is None else (mask & ~ignored)
        target = np.zeros(lab.shape, np.uint8)
        for ch, value in enumerate(lut_values):
            if ch:
                target[lab == value] = ch
        if mask is not None and not mask.any():
            raise TrainingError(f"{name}: no annotated voxel (after resampling/ignore value)")
        cases.append(_Case(name, np.ascontiguousarray(image, np.float32), target, mask))
    return cases, classes, target_spacing  # type: ignore[return-value]


def _check_label_values(raw, classes: list[ClassInfo], ignore_index: int | None) -> None:
    """Warn about label values the classes do not list (they are learnt as background);
    see also :func:`_check_foreground`."""
    known = {c.value for c in classes}
    for name, _img, lab, _sp, mask in raw:
        arr = (lab if mask is None else lab[mask]).ravel()
        if arr.dtype.kind in "ub" and arr.dtype.itemsize <= 2:  # fast for big uint8 maps
            values = {int(v) for v in np.flatnonzero(np.bincount(arr.astype(np.intp)))}
        else:
            values = {int(v) for v in np.unique(arr)}
        values.discard(0)
        if ignore_index is not None:
            values.discard(int(ignore_index))
        unknown = sorted(values - known)
        if unknown:
            log.warning(
                "%s: label value(s) %s are not classes of the model (%s); they are trained "
                "as background - add them as classes to learn them",
                name,
                unknown,
                ", ".join(f"{c.value}={c.name}" for c in classes),
            )


def _check_foreground(cases: list[_Case], classes: list[ClassInfo]) -> None:
    """Refuse a run in which no annotated voxel of any case holds a foreground class."""
    for c in cases:
        fg = c.target != 0
        if fg.any() if c.mask is None else (fg & c.mask).any():
            return
    raise TrainingError(
        "the label maps hold no annotated voxel of any class ("
        + ", ".join(f"{c.value}={c.name}" for c in classes if c.value != 0)
        + "): they are empty or only background; paint some labels first"
    )


def _check_output(out: Path) -> None:
    """Fail before training, not at the first checkpoint, when ``out`` cannot be written."""
    import tempfile

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as exc:
        parent = next((p for p in out.parents if p.exists()), None)
        reason = exc.strerror or str(exc)
        if parent is not None and not parent.is_dir():
            reason = f"{parent} is a file, not a folder"
        raise TrainingError(f"{out}: cannot save the weights there ({reason})") from exc
    if out.is_dir():
        raise TrainingError(f"{out}: is a folder; give a file name for the weights (.pt)")


def _check_batch_memory(card: ModelCard, patch, batch_size: int, n_classes: int, device) -> None:
    """Refuse a batch whose input, targets and first feature maps alone exceed the free
    main memory (an absurd batch size would otherwise fill the machine)."""
    if device.type != "cpu":
        return
    free = available_memory()
    if free is None:
        return
    widths = card.arch_kwargs.get("channels") if isinstance(card.arch_kwargs, dict) else None
    first = int(widths[0]) if isinstance(widths, (list, tuple)) and widths else 16
    # input + int64 target + mask, logits/softmax/grad, first feature map + its gradient
    per_voxel = 4 + 8 + 1 + 4 * 3 * n_classes + 4 * 2 * first
    need = int(batch_size) * int(np.prod(patch)) * per_voxel
    if need > free:
        gb = 1024**3
        raise TrainingError(
            f"not enough memory: batch size {batch_size} with patch {tuple(patch)} needs at "
            f"least {need / gb:.1f} GB, but only {free / gb:.1f} GB is free; use a batch "
            "size of 2-4 and a smaller patch size"
        )


def _split_validation(
    cases: list[_Case], fraction: float, rng: np.random.Generator
) -> tuple[list[_Case], list[_Case]]:
    """Hold out whole cases (>= 2 cases) or, for one case, the last z-slab of annotations.

    In the single-case split the training labels of the held-out slab are masked (the
    image stays visible as context), so no validation label is ever learnt from.
    """
    if fraction <= 0:
        return cases, []
    if not 0 < fraction < 1:
        raise TrainingError(f"val_fraction must be in [0, 1), got {fraction}")
    n = len(cases)
    if n >= 2 and round(fraction * n) >= 1:
        k = min(n - 1, max(1, round(fraction * n)))
        order = rng.permutation(n)
        val = [cases[i] for i in sorted(order[:k])]
        train = [cases[i] for i in sorted(order[k:])]
        return train, val
    train, val = [], []
    for c in cases:
        valid = c.mask if c.mask is not None else np.ones(c.shape, bool)
        per_slice = valid.reshape(c.shape[0], -1).sum(1).astype(np.float64)
        cum = np.cumsum(per_slice) / max(per_slice.sum(), 1.0)
        cut = int(np.searchsorted(cum, 1.0 - fraction)) + 1
        if cut >= c.shape[0] or cum[cut - 1] <= 0:
            raise TrainingError(
                f"{c.name}: too few annotated slices to hold out {fraction:.0%} for validation"
            )
        slab = np.zeros(c.shape, bool)
        slab[cut:] = True
        tmask = valid & ~slab
        vmask = valid & slab
        train.append(_Case(c.name, c.image, c.target, tmask))
        val.append(_Case(c.name + " (validation slab)", c.image, c.target, vmask))
    return train, val


# ----------------------------------------------------------------------------- sampling


class PatchSampler:
    """Random patches with foreground oversampling and cheap augmentation.

    About ``foreground_fraction`` of the patches are centred on a voxel of a labelled
    class (class chosen uniformly among those present); the others are uniform random
    (or, with sparse annotations, centred on a random annotated voxel so that they carry
    some loss). Cases smaller than the patch are padded as inference pads an image
    smaller than its window (:func:`napari_vnet.inference.predict`): at the high end of
    each axis, with the image's minimum; the padding is unannotated.
    """

    def __init__(
        self,
        cases: list[_Case],
        patch_size: Sequence[int],
        *,
        foreground_fraction: float = 1.0 / 3.0,
        augment: bool = True,
        seed: int | Sequence[int] = 0,
    ):
        self.patch = tuple(int(p) for p in patch_size)
        self.rng = np.random.default_rng(seed)
        self.foreground_fraction = float(foreground_fraction)
        self.augment = augment
        self.cases = [self._pad(c) for c in cases]
        for c in self.cases:
            _index_case(c, self.rng)

    def _pad(self, case: _Case) -> _Case:
        image = pad_to_window(case.image, self.patch)  # inference's layout and fill
        if image is case.image:
            return case
        pads = [(0, n - s) for n, s in zip(image.shape, case.shape, strict=True)]
        target = np.pad(case.target, pads)
        mask = np.ones(case.shape, bool) if case.mask is None else case.mask
        mask = np.pad(mask, pads)
        return _Case(case.name, image, target, mask)

    def _start(self, case: _Case) -> tuple[int, ...]:
        shape = case.shape
        center = None
        if case.fg_coords and self.rng.random() < self.foreground_fraction:
            ch = list(case.fg_coords)[self.rng.integers(len(case.fg_coords))]
            coords = case.fg_coords[ch]
            center = coords[self.rng.integers(len(coords))]
        elif case.annotated_coords is not None and len(case.annotated_coords):
            center = case.annotated_coords[self.rng.integers(len(case.annotated_coords))]
        if center is None:
            return tuple(
                int(self.rng.integers(0, s - p + 1))
                for s, p in zip(shape, self.patch, strict=False)
            )
        # jitter so the labelled voxel is not always at the patch centre
        return tuple(
            int(np.clip(c - p // 2 + self.rng.integers(-(p // 4), p // 4 + 1), 0, s - p))
            for c, p, s in zip(center, self.patch, shape, strict=False)
        )

    def _augment(self, img, tgt, msk):
        rng = self.rng
        for axis in range(3):
            if rng.random() < 0.5:
                img, tgt = np.flip(img, axis), np.flip(tgt, axis)
                msk = None if msk is None else np.flip(msk, axis)
        k = int(rng.integers(4)) if self.patch[1] == self.patch[2] else 2 * int(rng.integers(2))
        if k:
            img, tgt = np.rot90(img, k, (1, 2)), np.rot90(tgt, k, (1, 2))
            msk = None if msk is None else np.rot90(msk, k, (1, 2))
        img = img * np.float32(rng.uniform(0.9, 1.1)) + np.float32(rng.uniform(-0.1, 0.1))
        if rng.random() < 0.3:
            sigma = rng.uniform(0.0, 0.1)
            img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
        return img, tgt, msk

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(B, 1, *patch)`` float32 images, ``(B, *patch)`` int64 targets, bool masks."""
        imgs, tgts, msks = [], [], []
        any_mask = any(c.mask is not None for c in self.cases)
        for _ in range(batch_size):
            case = self.cases[int(self.rng.integers(len(self.cases)))]
            start = self._start(case)
            sl = tuple(slice(s, s + p) for s, p in zip(start, self.patch, strict=False))
            img, tgt = case.image[sl], case.target[sl]
            msk = case.mask[sl] if case.mask is not None else None
            if self.augment:
                img, tgt, msk = self._augment(img, tgt, msk)
            imgs.append(np.ascontiguousarray(img, np.float32))
            tgts.append(np.ascontiguousarray(tgt))
            if any_mask:
                msks.append(np.ones(self.patch, bool) if msk is None else np.ascontiguousarray(msk))
        masks = np.stack(msks) if any_mask else None
        return np.stack(imgs)[:, None], np.stack(tgts).astype(np.int64), masks


# ----------------------------------------------------------------------------- model


def width_kwargs(arch: str, width: int) -> dict[str, Any]:
    """``arch_kwargs`` for a base width ``W``: channels W, 2W, 4W... (5 levels for V-Net)."""
    levels = 5 if arch == "vnet" else 4
    return {"channels": [int(width) * 2**i for i in range(levels)]}


def _default_discriminator_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    widths = getattr(model, "arch_kwargs", {}).get("channels")
    return {"channels": list(widths)[:4]} if widths else {}


def _matching_channels(old_classes, new_classes) -> list[tuple[int, int]]:
    """(new channel, old channel) pairs for classes known to both cards: background to
    background, then by name (case-insensitive; liver stays liver even when the new labels
    number it 5 instead of 1), then by label value for classes whose names do not match."""
    old_by_name = {c.name.strip().lower(): i for i, c in enumerate(old_classes) if i}
    old_by_value = {c.value: i for i, c in enumerate(old_classes) if i}
    pairs, used = [(0, 0)], {0}
    for j, c in enumerate(new_classes):
        i = old_by_name.get(c.name.strip().lower()) if j else None
        if i is not None and i not in used:
            pairs.append((j, i))
            used.add(i)
    done = {j for j, _ in pairs}
    for j, c in enumerate(new_classes):
        i = old_by_value.get(c.value)
        if j and j not in done and i is not None and i not in used:
            pairs.append((j, i))
            used.add(i)
    return pairs


def _transfer_weights(new: torch.nn.Module, old_state: dict, old_classes, new_classes) -> list[str]:
    """Copy the base network's weights into ``new`` (built for ``new_classes``).

    The output layer (``head.*``, or any tensor whose first dimension is the class count
    and changed with it) is re-initialised, except the rows of classes both cards know
    (see :func:`_matching_channels`), which are copied into their new channel. Every
    other tensor is copied. Returns the names of the re-initialised tensors.
    """
    pairs = _matching_channels(old_classes, new_classes)
    n_old, n_new = len(old_classes), len(new_classes)
    state = new.state_dict()
    reinit = []
    for key, value in state.items():
        old = old_state.get(key)
        if old is None:
            reinit.append(key)
            continue
        is_output = (
            old.ndim == value.ndim
            and old.shape[1:] == value.shape[1:]
            and old.shape[0] == n_old
            and value.shape[0] == n_new
            and (key.startswith("head.") or old.shape != value.shape)
        )
        if is_output:
            reinit.append(key)
            fresh = value.clone()
            for j, i in pairs:
                fresh[j] = old[i]
            state[key] = fresh
        elif old.shape == value.shape:
            state[key] = old.to(value.dtype)
        else:
            reinit.append(key)
    new.load_state_dict(state)
    return reinit


def _setup_model(config: TrainConfig, base: Any):
    """-> (card, base_info, notes). ``base``: None (from scratch, ``config.arch``), a
    checkpoint path or shipped-weights name, or a ``(model, card)`` tuple."""
    notes: dict[str, Any] = {}
    if base is None:
        if not config.arch:
            raise TrainingError(
                "give an architecture (arch) to train from scratch, or base weights"
            )
        card = ModelCard(arch=config.arch, arch_kwargs=dict(config.arch_kwargs))
        notes["started_from"] = "scratch"
        return card, None, notes
    disc_state = disc_kwargs = None
    if isinstance(base, tuple):
        base_model, base_card = base
        notes["started_from"] = "in-memory model"
    else:
        from napari_vnet.models import load_checkpoint, load_checkpoint_state

        path = Path(base)
        if not path.exists():
            from napari_vnet.weights import resolve_weights

            path = resolve_weights(str(base))
        base_model, base_card = load_checkpoint(path, map_location="cpu")
        notes["started_from"] = path.name
        if base_card.arch == "vox2vox":
            disc_entry = load_checkpoint_state(path).get("discriminator") or {}
            disc_state = disc_entry.get("state_dict")
            disc_kwargs = disc_entry.get("kwargs")
    card = copy.deepcopy(base_card)
    card.history = {"base": dict(base_card.history)} if base_card.history else {}
    # the card describes the fine-tune; the base's own text and metrics move under "base"
    if base_card.description:
        card.history.setdefault("base", {})["description"] = base_card.description
    card.history.setdefault("base", {})["weights"] = notes["started_from"]
    card.description = (
        f"Fine-tuned with napari-vnet from {notes['started_from']} ({base_card.arch}); "
        "the base model's description and evaluation are under history.base."
    )
    return card, (base_model, base_card, disc_state, disc_kwargs), notes


def _build(card: ModelCard, base_info, classes, notes, config: TrainConfig):
    from napari_vnet.models import build_model

    disc = None
    if base_info is None:
        model = build_model(card)
    else:
        base_model, base_card, disc_state, disc_kwargs = base_info
        if classes is not None and [c.value for c in classes] != base_card.label_values:
            card.classes = classes
            model = build_model(card)
            reinit = _transfer_weights(model, base_model.state_dict(), base_card.classes, classes)
            notes["reinitialised_output_layer"] = True
            notes["reinitialised_tensors"] = reinit
            notes["previous_classes"] = [c.to_dict() for c in base_card.classes]
            notes["kept_classes"] = [
                f"{base_card.classes[i].name} (channel {i}) -> {classes[j].name} (channel {j})"
                for j, i in _matching_channels(base_card.classes, classes)
            ]
            disc_state = None  # its segmentation channels changed
        else:
            if classes is not None:  # same values, maybe new names
                card.classes = classes
            model = base_model
    if card.arch == "vox2vox":
        from napari_vnet.models import build_discriminator

        kwargs = dict(disc_kwargs) if base_info is not None and disc_kwargs else {}
        kwargs = kwargs or _default_discriminator_kwargs(model)
        disc = build_discriminator(card, **kwargs)
        if base_info is not None and disc_state is not None:
            try:
                disc.load_state_dict(disc_state)
            except (RuntimeError, KeyError) as exc:
                log.warning("base discriminator weights do not fit (%s); starting it fresh", exc)
    return model, disc


# ----------------------------------------------------------------------------- helpers


def lr_factor(progress: float, warmup: float, schedule: str) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of the run."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 0.02)
    if schedule == "constant":
        return 1.0
    rest = (progress - warmup) / max(1.0 - warmup, 1e-8)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * rest))
    if schedule == "poly":
        return (1.0 - rest) ** 0.9
    raise TrainingError(f"unknown schedule {schedule!r}; expected poly, cosine or constant")


def _resolve_device(name: str, local_rank: int = 0) -> torch.device:
    return resolve_device(name, local_rank)


def _amp_dtype(device: torch.device, amp: Any) -> torch.dtype | None:
    return resolve_amp(amp, device)


def resume_path(out: str | os.PathLike) -> Path:
    """Where a run writing ``out`` keeps its resume state: ``NEW.pt`` -> ``NEW.resume.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.resume{out.suffix or '.pt'}")


@torch.no_grad()
def _predict_case(model, image: np.ndarray, patch, device, amp_dtype) -> np.ndarray:
    """Argmax channel map of a whole (z, y, x) array, tile by tile (no overlap).

    An image smaller than the patch is padded as inference pads it (high end, minimum),
    so validation sees the windows the model will see.
    """
    shape = image.shape
    image = pad_to_window(image, patch)
    out = np.zeros(image.shape, np.uint8)
    starts = []
    for s, p in zip(image.shape, patch, strict=False):
        p = min(p, s)
        axis = list(range(0, max(s - p, 0) + 1, p))
        if axis[-1] + p < s:
            axis.append(s - p)
        starts.append((axis, p))
    for z in starts[0][0]:
        for y in starts[1][0]:
            for x in starts[2][0]:
                sl = (
                    slice(z, z + starts[0][1]),
                    slice(y, y + starts[1][1]),
                    slice(x, x + starts[2][1]),
                )
                t = torch.from_numpy(np.ascontiguousarray(image[sl]))[None, None].to(device)
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                ):
                    logits = model(t)
                out[sl] = logits.argmax(1)[0].to("cpu", torch.uint8).numpy()
    return out[: shape[0], : shape[1], : shape[2]]


def _validation_dice(
    model, cases: list[_Case], patch, device, amp_dtype, n_classes
) -> float | None:
    """Mean foreground Dice over the annotated voxels of the validation cases."""
    inter = np.zeros(n_classes)
    total = np.zeros(n_classes)
    was_training = model.training
    model.eval()
    try:
        for c in cases:
            if c.mask is not None:
                zs = np.flatnonzero(c.mask.reshape(c.shape[0], -1).any(1))
                lo = max(int(zs[0]) - patch[0] // 2, 0)
                hi = min(int(zs[-1]) + 1 + patch[0] // 2, c.shape[0])
            else:
                lo, hi = 0, c.shape[0]
            pred = _predict_case(model, c.image[lo:hi], patch, device, amp_dtype)
            tgt = c.target[lo:hi]
            valid = c.mask[lo:hi] if c.mask is not None else np.ones(tgt.shape, bool)
            for ch in range(1, n_classes):
                p = (pred == ch) & valid
                g = (tgt == ch) & valid
                inter[ch] += np.count_nonzero(p & g)
                total[ch] += np.count_nonzero(p) + np.count_nonzero(g)
    finally:
        model.train(was_training)
    present = total[1:] > 0
    if not present.any():
        return None
    return float(np.mean(2 * inter[1:][present] / total[1:][present]))


class _Dist:
    """torch.distributed state of the run (a no-op object when not distributed)."""

    def __init__(self, device_name: str):
        import torch.distributed as dist

        self.dist = dist
        self.created = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.enabled = dist.is_available() and (dist.is_initialized() or world > 1)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = _resolve_device(device_name, self.local_rank)
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)
            self.created = True
        self.rank = dist.get_rank() if self.enabled else 0
        self.world = dist.get_world_size() if self.enabled else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank."""
        if not self.enabled:
            return flag
        comm_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        t = torch.tensor([1.0 if flag else 0.0], device=comm_device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast(self, value: float | None) -> float | None:
        """Rank 0's value on every rank (None travels as NaN)."""
        if not self.enabled:
            return value
        comm_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        t = torch.tensor([math.nan if value is None else float(value)], device=comm_device)
        self.dist.broadcast(t, src=0)
        v = float(t.item())
        return None if math.isnan(v) else v

    def barrier(self) -> None:
        if self.enabled:
            self.dist.barrier()

    def close(self) -> None:
        if self.created and self.dist.is_initialized():
            self.dist.destroy_process_group()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _save(model, card, path, disc=None, extra=None) -> None:
    from napari_vnet.models import save_checkpoint

    save_checkpoint(
        _unwrap(model),
        card,
        path,
        discriminator=None if disc is None else _unwrap(disc),
        extra=extra,
    )


def _load_resume(path: Path) -> tuple[torch.nn.Module, ModelCard, dict, dict | None]:
    from napari_vnet.models import load_checkpoint, load_checkpoint_state

    model, card = load_checkpoint(path, map_location="cpu")
    state = load_checkpoint_state(path)
    extra = state.get("extra") or {}
    if "resume" not in extra:
        raise TrainingError(f"{path}: not a napari-vnet resume file (no resume state)")
    return model, card, extra["resume"], (state.get("discriminator") or {}).get("state_dict")


# ----------------------------------------------------------------------------- the loop


def finetune(
    pairs: Sequence[TrainingPair],
    config: TrainConfig | None = None,
    *,
    base: Any = None,
    out: str | os.PathLike = "model.pt",
    progress: Callable[[int, int], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Train or fine-tune a network; a generator of per-iteration event dicts.

    ``base``: None (from scratch with ``config.arch``), a checkpoint path, the name of
    shipped weights, or a ``(model, card)`` tuple. ``out``: the best checkpoint. The
    generator's return value (``StopIteration.value``) is a summary dict with ``"out"``,
    ``"iterations"``, ``"final_loss"``, ``"val_dice"``, ``"seconds"``, ``"cancelled"``...
    """
    config = config or TrainConfig()
    out = Path(out)
    dist = _Dist(config.device)
    try:
        summary = yield from _run(pairs, config, base, out, progress, should_stop, dist)
    finally:
        dist.close()
    return summary


def _run(pairs, config: TrainConfig, base, out: Path, progress, should_stop, dist: _Dist):
    t_setup = time.perf_counter()
    device = dist.device
    if dist.is_main:
        _check_output(out)
    rpath = resume_path(out)
    resume_state = None
    resumed_model = resumed_disc_state = None
    if config.resume and rpath.exists():
        resumed_model, card, resume_state, resumed_disc_state = _load_resume(rpath)
        base_info, notes = None, dict(card.history.get("run", {}))
        classes = card.classes
        spacing, normalization = card.spacing, card.normalization
        log.info("resuming %s at iteration %d", rpath, resume_state["iteration"])
    else:
        if config.resume:
            log.warning("--resume: no resume file %s; starting a new run", rpath)
        card, base_info, notes = _setup_model(config, base)
        classes = parse_classes(config.classes)
        if classes is None and base_info is not None:
            classes = list(card.classes)
        spacing = config.spacing or (card.spacing if base_info is not None else None)
        normalization = config.normalization or (
            card.normalization if base_info is not None else {"kind": "zscore"}
        )
    cases, classes, spacing = prepare_cases(
        pairs,
        classes,
        spacing=spacing,
        normalization=normalization,
        ignore_index=config.ignore_index,
    )
    n_classes = len(classes)
    _check_foreground(cases, classes)
    if n_classes < 2:
        raise TrainingError("need at least one foreground class besides background")
    if config.batch_size < 1:
        raise TrainingError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.iterations is None and not config.minutes:
        raise TrainingError("give iterations, minutes, or both")
    patch = tuple(
        int(p)
        for p in (
            config.patch_size
            or (
                card.patch_size
                if base_info is not None or resumed_model is not None
                else DEFAULT_PATCH
            )
        )
    )
    if len(patch) != 3 or min(patch) < 1:
        raise TrainingError(f"patch_size must be 3 positive sizes (z, y, x), got {patch}")
    from_scratch = notes.get("started_from") == "scratch"
    if from_scratch:
        # A new model's inference window will be this patch: no need to train on more
        # than the data holds (a smaller volume would be padded at inference anyway).
        max_shape = np.max([c.shape for c in cases], axis=0)
        patch = tuple(int(min(p, s)) for p, s in zip(patch, max_shape, strict=False))
    else:
        # A fine-tuned model segments in its card's inference window, and inference pads
        # an image smaller than the window up to it. Training must see the same windows:
        # a patch clipped to a thin volume (10 slices of a 32-slice window) or of another
        # size taught the network on inputs it never met at inference - with instance
        # normalisation the statistics of a window depend on its size and padding, and
        # fine-tuning the shipped U-Net on 5 slices of a real CT made it worse. So the
        # patch is not clipped (the sampler pads as inference does) and becomes the
        # window - unless it holds fewer voxels than the base's window, which is then kept
        # so that re-segmentation does not get slower (with a warning).
        window = tuple(int(p) for p in card.patch_size) if card.patch_size else None
        if window is None or np.prod(patch) >= np.prod(window):
            card.patch_size = patch
        elif window != patch:
            log.warning(
                "training patch %s is smaller than the inference window %s, which the "
                "fine-tuned model keeps; it will segment in windows it was not trained on "
                "(leave the patch size empty to train on the window)",
                patch,
                window,
            )

    _check_batch_memory(card, patch, config.batch_size, n_classes, device)
    card.spacing = tuple(spacing)
    card.normalization = dict(normalization)
    if from_scratch and resumed_model is None:
        # A new model's inference window is its training patch (see above for fine-tuning).
        card.patch_size = patch
    if resumed_model is not None:
        model = resumed_model
        disc = None
        if card.arch == "vox2vox":
            from napari_vnet.models import build_discriminator

            disc = build_discriminator(card, **resume_state.get("discriminator_kwargs", {}))
            if resumed_disc_state is not None:
                disc.load_state_dict(resumed_disc_state)
    else:
        card.classes = classes
        torch.manual_seed(config.seed)  # a new network's initial weights follow the seed
        model, disc = _build(card, base_info, classes, notes, config)
        card.arch_kwargs = dict(getattr(model, "arch_kwargs", card.arch_kwargs))
    disc_kwargs = dict(getattr(disc, "arch_kwargs", {})) if disc is not None else {}

    rng = np.random.default_rng([config.seed, 7])
    train_cases, val_cases = _split_validation(cases, config.val_fraction, rng)
    sampler = PatchSampler(
        train_cases,
        patch,
        foreground_fraction=config.foreground_fraction,
        augment=config.augment,
        seed=[
            config.seed,
            dist.rank,
            0 if resume_state is None else int(resume_state["iteration"]),
        ],
    )
    torch.manual_seed(config.seed + 1000 * dist.rank)

    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    base_lr = config.lr if config.lr is not None else (1e-3 if from_scratch else 3e-4)
    # pix2pix / Vox2Vox train both networks with Adam(beta1 = 0.5)
    betas = (0.9, 0.999) if disc is None else (0.5, 0.999)
    optimizer = torch.optim.AdamW(params, lr=base_lr, betas=betas, weight_decay=config.weight_decay)
    d_optimizer = None
    if disc is not None:
        disc.to(device).train()
        d_optimizer = torch.optim.AdamW(
            disc.parameters(), lr=base_lr, betas=betas, weight_decay=config.weight_decay
        )
    amp_dtype = _amp_dtype(device, config.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    d_scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_it = 0
    elapsed0 = 0.0
    best = {"metric": -math.inf, "iteration": 0, "val_dice": None, "loss": None}
    ema = None
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        if d_optimizer is not None and resume_state.get("d_optimizer"):
            d_optimizer.load_state_dict(resume_state["d_optimizer"])
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        start_it = int(resume_state["iteration"])
        elapsed0 = float(resume_state.get("seconds", 0.0))
        best.update(resume_state.get("best", {}))
        ema = resume_state.get("ema")
        base_lr = float(resume_state.get("base_lr", base_lr))

    train_model = model
    train_disc = disc
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        train_model = DDP(model, device_ids=ids)
        if disc is not None:
            train_disc = DDP(disc, device_ids=ids)

    criterion = DiceCELoss(config.dice_weight, config.ce_weight)
    iterations = config.iterations
    budget = None if not config.minutes else 60.0 * float(config.minutes)
    eval_every = config.eval_every or (min(50, max(5, iterations // 10)) if iterations else 50)
    history = dict(card.history)
    run_notes = dict(notes)
    run_notes.update(
        {
            "config": {k: v for k, v in config.to_dict().items() if k not in ("resume",)},
            "cases": [c.name for c in cases],
            "validation_cases": [c.name for c in val_cases],
            "world_size": dist.world,
            "device": str(device),
        }
    )
    state = {
        "last_eval_it": -1,
        "best_written": out.exists() and resume_state is not None and best["iteration"] > 0,
    }
    log.info(
        "training %s on %d case(s), patch %s, batch %d x %d rank(s), device %s, amp %s, setup %.1fs",
        card.arch, len(train_cases), patch, config.batch_size, dist.world, device, amp_dtype,
        time.perf_counter() - t_setup,
    )  # fmt: skip

    def card_with_history(it: int, seconds: float) -> ModelCard:
        c = copy.deepcopy(card)
        c.history = dict(history)
        c.history["run"] = dict(run_notes)
        c.history.update(
            {
                "iterations": it,
                "seconds": round(seconds, 2),
                "best_iteration": best["iteration"],
                "val_dice": best["val_dice"],
                "train_loss": best["loss"] if best["loss"] is None else round(best["loss"], 5),
                "classes": [f"{cl.value}={cl.name}" for cl in card.classes],
            }
        )
        return c

    def write_resume(it: int, seconds: float) -> None:
        extra = {
            "resume": {
                "iteration": it,
                "seconds": seconds,
                "optimizer": optimizer.state_dict(),
                "d_optimizer": None if d_optimizer is None else d_optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "best": dict(best),
                "ema": ema,
                "base_lr": base_lr,
                "discriminator_kwargs": disc_kwargs,
            }
        }
        _save(model, card_with_history(it, seconds), rpath, disc, extra)

    def checkpoint(it: int, seconds: float, loss_value: float | None) -> tuple[float | None, bool]:
        """Validation + best/resume checkpoint at an evaluation point (all ranks call it)."""
        val = None
        if val_cases:
            val = (
                _validation_dice(model, val_cases, patch, device, amp_dtype, n_classes)
                if dist.is_main
                else None
            )
            val = dist.broadcast(val)
        metric = val if val_cases else (None if loss_value is None else -loss_value)
        improved = metric is not None and metric > best["metric"]
        if improved:
            best.update(metric=metric, iteration=it, val_dice=val, loss=loss_value)
        if dist.is_main:
            if improved or not state["best_written"]:
                _save(model, card_with_history(it, seconds), out, disc, {"best": dict(best)})
            write_resume(it, seconds)
        state["best_written"] = True  # on every rank, so all take the same branches
        state["last_eval_it"] = it
        dist.barrier()
        return val, improved

    t0 = time.perf_counter() - elapsed0
    it = start_it
    last_loss = None
    cancelled = False
    last_eval = time.perf_counter()
    guard = bf16_conv_guard(model, disc)
    guard.__enter__()
    try:
        while True:
            seconds = time.perf_counter() - t0
            done_iters = iterations is not None and it >= iterations
            over_time = budget is not None and seconds >= budget
            user_stop = bool(should_stop()) if should_stop is not None else False
            if dist.any(done_iters or over_time or user_stop):
                cancelled = dist.any(user_stop) if dist.enabled else user_stop
                break
            frac = max(it / iterations if iterations else 0.0, seconds / budget if budget else 0.0)
            lr = base_lr * lr_factor(frac, config.warmup, config.schedule)
            for opt in (optimizer, d_optimizer):
                if opt is not None:
                    for g in opt.param_groups:
                        g["lr"] = lr
            img, tgt, msk = sampler.sample(config.batch_size)
            x = torch.from_numpy(img).to(device, non_blocking=True)
            y = torch.from_numpy(tgt).to(device, non_blocking=True)
            m = None if msk is None else torch.from_numpy(msk).to(device, non_blocking=True)
            if disc is None:
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                ):
                    logits = train_model(x)
                loss, parts = criterion(logits, y, m)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss, parts = _vox2vox_step(
                    train_model, train_disc, disc, x, y, m, optimizer, d_optimizer, scaler,
                    d_scaler, amp_dtype, device, config, params, n_classes,
                )  # fmt: skip
            it += 1
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise TrainingError(
                    f"loss became {last_loss} at iteration {it}; lower the learning rate "
                    f"(now {base_lr:g}) or check the image normalisation"
                )
            ema = last_loss if ema is None else 0.9 * ema + 0.1 * last_loss
            seconds = time.perf_counter() - t0
            total = (
                iterations if iterations else max(it, int(round(it * budget / max(seconds, 1e-6))))
            )
            event = {
                "iteration": it,
                "total": int(total),
                "loss": last_loss,
                "losses": parts,
                "lr": lr,
                "seconds": seconds,
            }
            is_last = iterations is not None and it >= iterations
            due = it % eval_every == 0 or time.perf_counter() - last_eval >= config.eval_seconds
            if dist.any(due or is_last) if dist.enabled else (due or is_last):
                val, improved = checkpoint(it, seconds, ema)
                last_eval = time.perf_counter()
                if val is not None:
                    event["val_dice"] = val
                if improved and dist.is_main:
                    event["checkpoint"] = str(out)
            if progress is not None:
                progress(it, int(total))
            yield event
    except (GeneratorExit, KeyboardInterrupt):
        # the consumer closed the generator (a napari worker's quit()) or Ctrl-C:
        # keep what we have - the best checkpoint (the current weights if none was
        # written yet) and the resume state. No collective calls: other ranks may be gone.
        seconds = time.perf_counter() - t0
        if dist.is_main and it > start_it:
            try:
                if not state["best_written"]:
                    _save(model, card_with_history(it, seconds), out, disc, {"best": dict(best)})
                write_resume(it, seconds)
            except Exception:  # noqa: BLE001 - closing must not raise
                log.exception("could not write checkpoints while stopping")
        raise
    finally:
        guard.__exit__(None, None, None)
    # (any other exception propagates and leaves the files on disk as they were: a
    # non-finite loss must not overwrite the best checkpoint with broken weights)
    seconds = time.perf_counter() - t0
    # normal end (all iterations, time budget, or should_stop)
    if it > start_it and (state["last_eval_it"] != it or not state["best_written"]):
        checkpoint(it, seconds, ema)  # the run ended between evaluation points
    if dist.is_main and not cancelled and not config.keep_resume and rpath.exists():
        rpath.unlink()
    return {
        "out": str(out),
        "iterations": it,
        "final_loss": ema,
        "last_loss": last_loss,
        "val_dice": best["val_dice"],
        "best_iteration": best["iteration"],
        "seconds": seconds,
        "cancelled": cancelled,
        "resume_file": str(rpath) if rpath.exists() else None,
        "device": str(device),
        "world_size": dist.world,
        "rank": dist.rank,
        "classes": [c.to_dict() for c in card.classes],
        "spacing": list(card.spacing),
        "patch_size": list(patch),
    }


def _vox2vox_step(
    G,
    D,
    D_plain,
    x,
    y,
    m,
    opt_g,
    opt_d,
    scaler,
    d_scaler,
    amp_dtype,
    device,
    config,
    params,
    n_classes,
):
    """One Vox2Vox update: discriminator (LSGAN), then generator (LSGAN + lambda * (GDL +
    ``gan_ce_weight`` * cross entropy); see :data:`VOX2VOX_CE_WEIGHT`).

    The discriminator sees (image, segmentation) with the segmentation zeroed at
    unannotated voxels, for real (one-hot) and generated (softmax) pairs alike, so the
    labels of unannotated voxels never reach any loss.
    """
    ac = dict(
        device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    )
    w = torch.ones_like(y, dtype=torch.float32)[:, None] if m is None else m.float()[:, None]
    with torch.autocast(**ac):
        logits = G(x)
    probs = torch.softmax(logits.float(), 1) * w
    real = one_hot(y, n_classes) * w
    # discriminator
    with torch.autocast(**ac):
        d_real = D(x, real)
        d_fake = D(x, probs.detach())
    d_loss = 0.5 * (least_squares_gan_loss(d_real, True) + least_squares_gan_loss(d_fake, False))
    opt_d.zero_grad(set_to_none=True)
    d_scaler.scale(d_loss).backward()
    d_scaler.unscale_(opt_d)
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(D_plain.parameters(), config.grad_clip)
    d_scaler.step(opt_d)
    d_scaler.update()
    # generator: the plain (un-wrapped) discriminator, frozen
    for p in D_plain.parameters():
        p.requires_grad_(False)
    try:
        with torch.autocast(**ac):
            g_fake = D_plain(x, probs)
        adv = least_squares_gan_loss(g_fake, True)
        gdl = generalized_dice_loss(logits, y, m)
        seg = gdl
        ce = None
        if config.gan_ce_weight:
            ce = cross_entropy_loss(logits, y, m)
            seg = gdl + config.gan_ce_weight * ce
        g_loss = adv + config.gan_lambda * seg
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(g_loss).backward()
    finally:
        for p in D_plain.parameters():
            p.requires_grad_(True)
    scaler.unscale_(opt_g)
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    scaler.step(opt_g)
    scaler.update()
    parts = {"gdl": float(gdl.detach())}
    if ce is not None:
        parts["ce"] = float(ce.detach())
    parts["adversarial"] = float(adv.detach())
    parts["discriminator"] = float(d_loss.detach())
    return g_loss, parts


def run_training(
    pairs,
    config=None,
    *,
    base=None,
    out="model.pt",
    progress=None,
    should_stop=None,
    on_event: Callable[[dict], Any] | None = None,
    raise_on_cancel: bool = False,
) -> dict[str, Any]:
    """Drive :func:`finetune` to its end and return its summary (for scripts and the CLI)."""
    gen = finetune(pairs, config, base=base, out=out, progress=progress, should_stop=should_stop)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            summary = stop.value
            break
        if on_event is not None:
            on_event(event)
    if raise_on_cancel and summary.get("cancelled"):
        raise TrainingCancelled(summary)
    return summary
