"""Training data: pairs -> network-ready cases on one grid, validation split (no Qt)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from napari_vnet.io.grid import resample_onto, same_grid
from napari_vnet.io.volume import Volume
from napari_vnet.models.card import ClassInfo
from napari_vnet.training.config import TrainingError, TrainingPair

log = logging.getLogger(__name__)

__all__ = [
    "LoadedPair",
    "weight_code",
    "weighting_note",
    "annotated_label_values",
    "labels_on_image_grid",
    "load_pairs",
    "prepare_cases",
    "intensity_unit",
    "structure_regions",
]


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


def labels_on_image_grid(image: Volume, labels: Volume) -> np.ndarray:
    """The label array on the image's voxel grid: the labels' own array when both share
    the grid (:func:`napari_vnet.io.grid.same_grid`), else resampled onto it
    (:func:`napari_vnet.io.grid.resample_onto`: nearest neighbour through physical space,
    which also undoes e.g. rows stored flipped, direction diag(1, -1, 1))."""
    if same_grid(image, labels):
        return np.asarray(labels.array)
    return resample_onto(labels, image).array


def _annotated_mask(
    annotated: Any, shape: tuple[int, ...], name: str, labels: np.ndarray | None = None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(mask, corrected)``: the voxels that count, and of those the ones the user
    corrected or reviewed (None: all of them). Only an edit record (a dict) read with its
    ``labels`` tells the two apart (:func:`napari_vnet.training.annotation_regions.training_regions`)."""
    if annotated is None:
        return None, None
    if isinstance(annotated, dict):  # an edit record: edited slices per label and region
        from napari_vnet.training.annotations import mask_from_record

        if labels is None:
            return mask_from_record(annotated, shape, None), None
        from napari_vnet.training.annotation_regions import training_regions

        regions = training_regions(labels, annotated)
        if regions is None:
            return None, None
        listed, corrected = regions
        return listed, None if np.array_equal(listed, corrected) else corrected
    a = np.asarray(annotated)
    if a.shape == shape:
        return a.astype(bool), None
    mask = np.zeros(shape, bool)
    if a.dtype == np.bool_ and a.ndim == 1 and a.shape[0] == shape[0]:
        mask[a] = True
        return mask, None
    if a.ndim == 1 and a.dtype.kind in "iu":
        if a.size and (a.min() < 0 or a.max() >= shape[0]):
            raise TrainingError(
                f"{name}: annotated slice indices {a.tolist()} outside 0..{shape[0] - 1}"
            )
        mask[a] = True
        return mask, None
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
    # loss weight of each voxel in 1/255 (uint8, :func:`weight_code`); None: 1 wherever
    # the mask is. Only the voxels of the mask count, whatever their weight here.
    weight: np.ndarray | None = None
    fg_coords: dict[int, np.ndarray] = field(default_factory=dict)  # channel -> (N, 3)
    annotated_coords: np.ndarray | None = None  # (N, 3) sample of annotated voxels
    # structures of the label map (every non-zero label value, also those not learnt, as
    # compact ids 1..255; 0 none) for the contrast-phase augmentation; None: not used
    regions: np.ndarray | None = None
    # one unit of the normalised image in the data's own intensity unit (HU for CT)
    intensity_unit: float | None = None

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


@dataclass
class LoadedPair:
    """A pair read and aligned: labels on the image grid, annotated mask, spacing."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    mask: np.ndarray | None
    volume: Volume | None = None  # the image's Volume when it came from a file / Volume
    # of the mask's voxels, those the user corrected or reviewed (an edit record's
    # regions); None: every voxel of the mask
    corrected: np.ndarray | None = None

    def counted(self, uncorrected_weight: float) -> np.ndarray | None:
        """The voxels that count when the untouched ones weigh ``uncorrected_weight``."""
        if self.corrected is None or uncorrected_weight > 0:
            return self.mask
        return self.corrected


def load_pairs(pairs: Sequence[TrainingPair]) -> list[LoadedPair]:
    """Read the pairs; labels in another geometry are resampled onto the image grid
    (nearest neighbour through physical space); masks from the ``annotated`` records."""
    if not pairs:
        raise TrainingError("no training pairs given")
    out = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, LoadedPair):
            out.append(pair)
            continue
        pair = pair if isinstance(pair, TrainingPair) else TrainingPair(*pair)
        name = pair.name or (
            str(pair.image) if isinstance(pair.image, (str, os.PathLike)) else f"pair {i}"
        )
        img, img_vol = _load(pair.image, pair.spacing, f"{name}: image")
        lab, lab_vol = _load(pair.labels, pair.spacing, f"{name}: labels")
        if img.ndim != 3:
            raise TrainingError(f"{name}: image must be 3-D (z, y, x), got shape {img.shape}")
        if img_vol is not None and lab_vol is not None and not same_grid(img_vol, lab_vol):
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
        mask, corrected = _annotated_mask(pair.annotated, lab.shape, name, lab)
        out.append(
            LoadedPair(name, img, lab, sp, mask, img_vol, corrected=corrected)  # type: ignore[arg-type]
        )
    return out


def weighting_note(loaded: Sequence[LoadedPair], uncorrected_weight: float) -> dict | None:
    """What a run learns from on the slices of edit records, in numbers and words (None
    when no pair has voxels left as predicted on its edited slices)."""
    corrected = untouched = 0
    for p in loaded:
        if p.corrected is not None and p.mask is not None:
            corrected += int(np.count_nonzero(p.corrected & p.mask))
            untouched += int(np.count_nonzero(p.mask & ~p.corrected))
    if not untouched:
        return None
    w = float(uncorrected_weight)
    if w <= 0:
        words = (
            f"trained on the {corrected:,} voxels you corrected or reviewed only; the "
            f"{untouched:,} left as predicted on those slices did not count (weight 0)"
        )
    elif w >= 1:
        words = (
            f"trained on the edited slices whole: the {untouched:,} voxels left as "
            f"predicted counted as much as the {corrected:,} you corrected (weight 1)"
        )
    else:
        words = (
            f"trained on the {corrected:,} voxels you corrected or reviewed (weight 1) and "
            f"the {untouched:,} left as predicted on those slices at weight {w:g}"
        )
    return {"corrected": corrected, "uncorrected": untouched, "uncorrected_weight": w,
            "message": words}  # fmt: skip


def annotated_label_values(
    loaded: Sequence[LoadedPair], ignore_index: int | None, uncorrected_weight: float = 1.0
) -> set[int]:
    """Non-zero label values present in the voxels that count (the ignore value
    excluded; :meth:`LoadedPair.counted`)."""
    values: set[int] = set()
    for p in loaded:
        mask = p.counted(uncorrected_weight)
        arr = (p.labels if mask is None else p.labels[mask]).ravel()
        if arr.dtype.kind in "ub" and arr.dtype.itemsize <= 2:  # fast for big uint8 maps
            values |= {int(v) for v in np.flatnonzero(np.bincount(arr.astype(np.intp)))}
        else:
            values |= {int(v) for v in np.unique(arr)}
    values.discard(0)
    if ignore_index is not None:
        values.discard(int(ignore_index))
    return values


def weight_code(
    mask: np.ndarray | None, corrected: np.ndarray | None, uncorrected_weight: float
) -> np.ndarray | None:
    """What counts, as one array resampled like a label map: the bool ``mask`` when every
    voxel of it weighs 1 (no ``corrected`` part, or ``uncorrected_weight`` 1), the
    ``corrected`` voxels alone when the others weigh 0, else uint8 loss weights in 1/255:
    255 on the corrected voxels, ``uncorrected_weight`` (at least 1/255) on the others of
    the mask, 0 outside it."""
    if mask is None or corrected is None or uncorrected_weight >= 1.0:
        return mask
    if uncorrected_weight <= 0.0:
        return mask & corrected
    code = np.zeros(mask.shape, np.uint8)
    code[mask] = max(1, min(254, int(round(255 * float(uncorrected_weight)))))
    code[corrected & mask] = 255
    return code


def prepare_cases(
    pairs: Sequence[TrainingPair | LoadedPair],
    classes: list[ClassInfo] | None,
    *,
    spacing: tuple[float, float, float] | None,
    normalization: dict[str, Any],
    ignore_index: int | None = None,
    producer: Any = None,
    regions: bool = True,
    uncorrected_weight: float = 1.0,
) -> tuple[list[_Case], list[ClassInfo], tuple[float, float, float]]:
    """Load, align, resample and normalise the pairs; map label values to channels.

    Returns the cases, the classes (derived from the label values when ``classes`` is
    None) and the spacing used (the first pair's when ``spacing`` is None).
    ``producer``: the preprocessing of foreign weights (e.g. nnU-Net's, from
    :func:`napari_vnet.foreign.preprocessing_for`), used instead of ours through its
    ``prepare_training(image, labels, mask, spacing)``. ``regions``: keep each case's
    structure map (:func:`structure_regions`) for the contrast-phase augmentation.
    ``uncorrected_weight``: the loss weight of the voxels of an edit record's slices the
    user left as predicted (:attr:`TrainConfig.uncorrected_weight`; :func:`weight_code`).
    """
    from napari_vnet.transforms import normalize_intensity, resample_to_spacing

    loaded = load_pairs(pairs)
    raw = [
        (p.name, p.image, p.labels, p.spacing, weight_code(p.mask, p.corrected, uncorrected_weight))
        for p in loaded
    ]
    if classes is None:
        classes = _classes_from_labels(
            [(r[2], None if r[4] is None else r[4] > 0) for r in raw], ignore_index
        )
    target_spacing = tuple(float(s) for s in (spacing or raw[0][3]))
    lut_values = [c.value for c in classes]
    _check_label_values(raw, classes, ignore_index)
    cases = []
    for name, img, lab, sp, annot in raw:
        if producer is not None:  # the weights' producer prepares image, labels and mask
            image, lab, annot = _produce(producer, img, lab, annot, sp)
        elif not np.allclose(sp, target_spacing, rtol=1e-3):
            img = resample_to_spacing(img, sp, target_spacing, is_label=False)
            lab, annot = _resample_annotations(name, lab, annot, sp, target_spacing, img.shape)
        if producer is None:
            image = normalize_intensity(img, normalization)
        mask, weight = _mask_and_weight(annot, lab, ignore_index)
        target = np.zeros(lab.shape, np.uint8)
        for ch, value in enumerate(lut_values):
            if ch:
                target[lab == value] = ch
        if mask is not None and not mask.any():
            raise TrainingError(f"{name}: no annotated voxel (after resampling/ignore value)")
        cases.append(
            _Case(
                name, np.ascontiguousarray(image, np.float32), target, mask, weight=weight,
                regions=structure_regions(lab, ignore_index, mask) if regions else None,
                intensity_unit=intensity_unit(normalization) if producer is None else None,
            )
        )  # fmt: skip
    return cases, classes, target_spacing  # type: ignore[return-value]


def _produce(producer, img, lab, annot, sp):
    """The foreign producer's ``(image, labels, what counts)``; uint8 weights travel as
    a second label map through the same preparation."""
    if annot is None or annot.dtype == np.bool_:
        return producer.prepare_training(img, lab, annot, sp)
    image, lab, mask = producer.prepare_training(img, lab, annot > 0, sp)
    code = producer.prepare_training(img, annot, None, sp)[1]
    return image, lab, np.where(mask, code, 0).astype(np.uint8)


def _mask_and_weight(annot, lab, ignore_index):
    """The bool mask and the uint8 weights (None: 1 on the mask) of what counts, without
    the voxels of the ignore value."""
    weight = None
    mask = annot
    if annot is not None and annot.dtype != np.bool_:
        weight = np.asarray(annot, np.uint8)
        mask = weight > 0
    if ignore_index is not None:
        ignored = lab == ignore_index
        if ignored.any():
            mask = ~ignored if mask is None else (mask & ~ignored)
            if weight is not None:
                weight = np.where(ignored, 0, weight).astype(np.uint8)
    return mask, weight


def structure_regions(
    labels: np.ndarray, ignore_index: int | None = None, mask: np.ndarray | None = None
) -> np.ndarray:
    """Every non-zero label value of ``labels`` as a compact id 1..255 (0: unlabelled, the
    ignore value, or outside the annotated ``mask``, whose labels must stay invisible;
    values beyond 255 distinct ones share ids). The contrast-phase
    augmentation shifts each structure's intensity on its own, as organs enhance
    differently from one contrast phase or scanner to the next."""
    if mask is not None:
        labels = np.where(mask, labels, 0)
    values = np.unique(labels)
    values = values[values != 0]
    if ignore_index is not None:
        values = values[values != ignore_index]
    out = np.zeros(labels.shape, np.uint8)
    for k, v in enumerate(values.tolist()):
        out[labels == v] = 1 + k % 255
    return out


def intensity_unit(normalization: dict[str, Any]) -> float | None:
    """Data units (HU for CT) per unit of the normalised image, for the normalisations
    with fixed statistics (``ct``, ``window``); None for per-volume ones."""
    kind = str(normalization.get("kind", "")).lower()
    try:
        if kind == "ct":
            return float(normalization["std"])
        if kind == "window":
            return float(normalization["high"]) - float(normalization["low"])
    except (KeyError, TypeError, ValueError):
        return None
    return None


def _sparse_slice_sources(
    per_slice: np.ndarray, spacing_z: float, target_z: float, n_out: int
) -> np.ndarray:
    """The source z index of each output slice: nearest neighbour, except that an output
    slice whose nearest source slice is unannotated takes the annotated source slice
    nearest to it instead (when one has it as its own nearest output slice). Resampling
    sparse annotated slices to a coarser z spacing then keeps every one of them (two
    only merge when they fall on the same output slice), each displaced by at most half
    an output slice; plain nearest neighbour drops those that fall between output slices
    (e.g. annotated 2-mm slices 2, 6, 10, 14, 18 at 3.85 mm: 14 and 18 were lost). Of two
    annotated slices equally near an output slice, the one with more annotated voxels
    wins."""
    n_in = len(per_slice)
    scale = target_z / spacing_z
    src = np.clip(np.round(np.arange(n_out) * scale), 0, n_in - 1).astype(np.intp)
    for s in np.flatnonzero(per_slice):
        k = int(np.clip(round(s / scale), 0, n_out - 1))
        current = src[k]
        if not per_slice[current] or (
            per_slice[current] < per_slice[s] and abs(current - k * scale) >= abs(s - k * scale)
        ):
            src[k] = s
    return src


def _resample_annotations(name, lab, mask, sp, target_spacing, shape):
    """Labels and annotated mask (or uint8 weights) onto the resampled image grid
    (nearest neighbour).

    With sparse annotated slices and a coarser target z spacing (fine-tuning a model of
    coarser spacing on a few corrected slices), the z axis takes the annotated slices
    through :func:`_sparse_slice_sources` and only the in-plane axes are resampled.
    """
    from napari_vnet.transforms import resample_to_spacing

    sp = tuple(float(v) for v in sp)
    if mask is not None and target_spacing[0] > sp[0] * (1 + 1e-3):
        per_slice = (mask > 0).reshape(mask.shape[0], -1).sum(1)
        if 0 < np.count_nonzero(per_slice) < len(per_slice):
            src = _sparse_slice_sources(per_slice, sp[0], target_spacing[0], shape[0])
            kept = len(set(src.tolist()) & set(np.flatnonzero(per_slice).tolist()))
            log.info(
                "%s: %d of %d annotated slices kept at %.3g mm slices",
                name, kept, np.count_nonzero(per_slice), target_spacing[0],
            )  # fmt: skip
            sp_z = (float(target_spacing[0]), *sp[1:])
            lab = resample_to_spacing(lab[src], sp_z, target_spacing, is_label=True, shape=shape)
            mask = resample_to_spacing(mask[src], sp_z, target_spacing, is_label=True, shape=shape)
            return lab, mask
    lab = resample_to_spacing(lab, sp, target_spacing, is_label=True, shape=shape)
    if mask is not None:
        mask = resample_to_spacing(mask, sp, target_spacing, is_label=True, shape=shape)
    return lab, mask


def _check_label_values(raw, classes: list[ClassInfo], ignore_index: int | None) -> None:
    """Warn about label values the classes do not list (they are learnt as background);
    see also :func:`_check_foreground`."""
    known = {c.value for c in classes}
    for name, _img, lab, _sp, mask in raw:
        arr = (lab if mask is None else lab[mask > 0]).ravel()
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
        annotated_z = np.flatnonzero(per_slice)
        if len(annotated_z) and cut > annotated_z[-1]:
            # the slab past the cut would hold no annotation (few annotated slices, e.g.
            # sparse slices resampled to a coarser spacing): hold out the last one
            cut = int(annotated_z[-1])
        if cut >= c.shape[0] or cut < 1 or cum[cut - 1] <= 0:
            raise TrainingError(
                f"{c.name}: too few annotated slices to hold out {fraction:.0%} for validation"
            )
        slab = np.zeros(c.shape, bool)
        slab[cut:] = True
        tmask = valid & ~slab
        vmask = valid & slab
        train.append(replace(c, mask=tmask, fg_coords={}, annotated_coords=None))
        val.append(
            replace(c, name=c.name + " (validation slab)", mask=vmask, fg_coords={},
                    annotated_coords=None)
        )  # fmt: skip
    return train, val
