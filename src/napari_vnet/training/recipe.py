"""Planning from the data, as nnU-Net v2's experiment planner does it (no Qt).

* :func:`foreground_intensity_stats` / :func:`plan_normalization`: CT intensities are
  normalised with fixed statistics of the training data's *foreground* (the labelled
  voxels): clip to their 0.5 / 99.5 percentiles, subtract their mean, divide by their
  standard deviation (nnU-Net's ``CTNormalization``; Isensee et al., Nature Methods
  2021). The statistics go into the card (``{"kind": "ct", ...}``) and inference applies
  the same numbers to every scan. Other modalities keep a per-volume z-score.
* :func:`plan_spacing`: the median spacing of the cases; for anisotropic data (largest
  spacing > 3x the smallest) the coarse axis takes the 10th percentile instead, as
  nnU-Net does, so thin-slice scans are not thrown away.
* :func:`plan_patch`: the training patch from the median case shape at that spacing and a
  memory budget: start from a patch of equal extent in mm, clip to the median shape,
  grow the other axes into the budget, then shrink the axis of largest extent in mm until
  the estimated activation memory of a batch fits; sizes are multiples of the network's down-sampling
  factor (nnU-Net's ``get_plans_for_configuration``, sized for a CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "CONTEXT_FOV_MM",
    "CONTEXT_PATCH_VOXELS",
    "ContextPlan",
    "activation_bytes_per_voxel",
    "body_extent_mm",
    "foreground_intensity_stats",
    "looks_like_ct",
    "plan_context",
    "plan_normalization",
    "plan_patch",
    "plan_spacing",
]

#: voxels sampled per case for the foreground statistics (nnU-Net samples 10 000)
SAMPLES_PER_CASE = 10_000


def looks_like_ct(images: Sequence[np.ndarray]) -> bool:
    """Hounsfield units: air (below -500; MR intensities are never that negative) and
    soft tissue (above -100) in the first image."""
    a = np.asarray(images[0])
    sample = a.ravel()[:: max(1, a.size // 200_000)]
    if sample.dtype.kind not in "iuf":
        return False
    lo, hi = np.percentile(sample, [1, 99.9])
    return bool(lo < -500 and hi > -100)


def foreground_intensity_stats(
    images: Sequence[np.ndarray],
    foregrounds: Sequence[np.ndarray],
    *,
    seed: int = 0,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> dict[str, float] | None:
    """0.5 / 99.5 percentiles, mean and std of the foreground voxels (clipped) of all
    cases, from up to :data:`SAMPLES_PER_CASE` voxels each; None without foreground."""
    rng = np.random.default_rng(seed)
    values = []
    for img, fg in zip(images, foregrounds, strict=True):
        v = np.asarray(img)[fg]
        v = v[np.isfinite(v)] if v.dtype.kind == "f" else v
        if v.size > SAMPLES_PER_CASE:
            v = v[rng.choice(v.size, SAMPLES_PER_CASE, replace=False)]
        values.append(v.astype(np.float64))
    if not values or sum(v.size for v in values) < 2:
        return None
    allv = np.concatenate(values)
    low, high = (float(x) for x in np.percentile(allv, percentiles))
    clipped = np.clip(allv, low, high)
    std = float(clipped.std())
    return {
        "low": low,
        "high": high,
        "mean": float(clipped.mean()),
        "std": max(std, 1e-8),
        "percentiles": [float(percentiles[0]), float(percentiles[1])],
        "voxels": int(allv.size),
    }


def plan_normalization(loaded, classes, *, seed: int = 0) -> dict[str, Any]:
    """``{"kind": "ct", ...}`` from the foreground of ``loaded`` (the pairs of the
    training plan) when the images are CT in HU, else ``{"kind": "zscore"}``."""
    images = [p.image for p in loaded]
    if not looks_like_ct(images):
        return {"kind": "zscore"}
    values = np.asarray([c.value for c in classes if c.value != 0])
    foregrounds = []
    for p in loaded:
        fg = np.isin(p.labels, values)
        if p.mask is not None:
            fg &= p.mask
        foregrounds.append(fg)
    stats = foreground_intensity_stats(images, foregrounds, seed=seed)
    if stats is None:
        return {"kind": "zscore"}
    log.info(
        "CT normalisation from %d foreground voxels: clip [%.1f, %.1f], mean %.1f, std %.1f",
        stats["voxels"], stats["low"], stats["high"], stats["mean"], stats["std"],
    )  # fmt: skip
    return {"kind": "ct", **stats}


def plan_spacing(spacings: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """Median spacing (z, y, x); an axis > 3x coarser than the finest takes its 10th
    percentile (nnU-Net's anisotropy rule)."""
    sp = np.asarray(spacings, dtype=np.float64).reshape(-1, 3)
    target = np.median(sp, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    if target[worst] > 3 * max(target[others].min(), 1e-8) and len(sp) > 1:
        target[worst] = np.percentile(sp[:, worst], 10)
    return tuple(float(s) for s in target)  # type: ignore[return-value]


def activation_bytes_per_voxel(arch: str, widths: Sequence[int], n_classes: int) -> float:
    """Rough training memory per input voxel of a patch: the feature maps kept for the
    backward pass (conv, norm and activation outputs, encoder and decoder) at every level,
    4 bytes each, plus input, target and logits."""
    per_level = 0.0
    for level, w in enumerate(widths):
        tensors = 6 if arch == "unet3d" else 8  # two conv-norm-act units, up / down paths
        per_level += 2 * tensors * w / 8**level
    return 4.0 * per_level + 4.0 * (2 + 3 * n_classes)


def _divisor(arch: str, widths: Sequence[int]) -> int:
    return 2 ** (len(widths) - 1)


def plan_patch(
    median_shape: Sequence[int],
    spacing: Sequence[float],
    *,
    arch: str,
    widths: Sequence[int],
    n_classes: int,
    batch_size: int,
    memory_mb: float,
    max_voxels: int | None = None,
) -> tuple[int, int, int]:
    """Training patch (z, y, x) for data of ``median_shape`` voxels at ``spacing``."""
    div = _divisor(arch, widths)
    shape = np.maximum(np.asarray(median_shape, dtype=np.float64), 1)
    sp = np.asarray(spacing, dtype=np.float64)
    per_voxel = activation_bytes_per_voxel(arch, widths, n_classes) * max(1, batch_size)
    budget = float(memory_mb) * 1024**2 / per_voxel
    if max_voxels:
        budget = min(budget, float(max_voxels))
    # equal extent in mm, as many voxels as the budget allows, clipped to the data
    iso = 1.0 / sp
    patch = iso * (budget / np.prod(iso)) ** (1.0 / 3.0)
    patch = np.minimum(patch, shape)

    def rounded(p):
        # nearest multiples of the divisor (at least one; the sampler pads a thin case)
        return np.maximum(div, np.round(p / div) * div).astype(int)

    # grow the axes not limited by the data while the budget allows (the extent in mm
    # of a thin slab is limited by its slice count, not by memory)
    for _ in range(8):
        free = patch < shape - 1e-6
        if not free.any() or np.prod(patch) >= budget * 0.99:
            break
        scale = (budget / np.prod(patch)) ** (1.0 / free.sum())
        patch = np.where(free, np.minimum(patch * scale, shape), patch)
    out = rounded(patch)
    # shrink the axis of largest extent in mm until the budget holds (our networks pool
    # all axes alike, so a thin scan's z side cannot shrink in small steps as nnU-Net's
    # topology allows: keeping the patch near isotropic in mm keeps its 3-D context)
    while np.prod(out) > budget and out.max() > div:
        extent = out * sp
        extent[out <= div] = -np.inf
        axis = int(np.argmax(extent))
        out[axis] -= div
    # a thin axis below one divisor keeps the data's own size (the network pads it)
    out = np.where(shape < div, np.ceil(shape).astype(int), out)
    return tuple(int(v) for v in out)  # type: ignore[return-value]


# ------------------------------------------------------------------ context first

#: in-plane field of view a patch should cover (mm): an abdomen's width. A structure is
#: told from its neighbours of similar intensity (liver from spleen, muscle, bowel) by
#: where it lies in the body, which a patch of a few cm cannot see.
CONTEXT_FOV_MM = 380.0
#: voxels of one training patch on a CPU (about 8 x 96 x 96): measured on the shared CT
#: (benchmarks/results/context_sweep.json), 2-3x as many iterations in the same minutes
#: as a 8 x 128 x 128 or 16 x 112 x 112 patch gave better scores on new patients
CONTEXT_PATCH_VOXELS = 80_000
#: the coarsest in-plane spacing the plan goes to (mm), and the z extent it keeps at least
CONTEXT_MAX_SPACING = 5.0
CONTEXT_MIN_Z_MM = 48.0
#: default feature widths of a network planned for context on a CPU (narrower than the
#: architectures' paper defaults, so that the large patch trains fast enough)
#: (four levels: z patches of 8 slices fit thin scans, so training windows hold real
#: slices; V-Net's 5x5x5 convolutions cost about 4x a 3x3x3 one, hence its half width)
CONTEXT_WIDTHS = {"unet3d": [16, 32, 64, 128], "vnet": [8, 16, 32, 64]}


def body_extent_mm(images: Sequence[np.ndarray], spacings: Sequence[Sequence[float]]) -> np.ndarray:
    """Median (z, y, x) extent in mm of the body in each image: the bounding box of the
    voxels above -500 HU for CT, else above 10% of the 1-99 percentile range."""
    extents = []
    for img, sp in zip(images, spacings, strict=True):
        a = np.asarray(img)
        step = max(1, a.size // 2_000_000)
        sample = a.ravel()[::step]
        if looks_like_ct([a]):
            threshold = -500.0
        else:
            lo, hi = np.percentile(sample, [1, 99])
            threshold = lo + 0.1 * (hi - lo)
        body = a > threshold
        extent = []
        for axis in range(3):
            other = tuple(i for i in range(3) if i != axis)
            hit = np.flatnonzero(body.any(axis=other))
            n = (hit[-1] - hit[0] + 1) if len(hit) else a.shape[axis]
            extent.append(n * float(sp[axis]))
        extents.append(extent)
    return np.median(np.asarray(extents, np.float64), axis=0)


@dataclass
class ContextPlan:
    """Spacing and patch chosen so that the patch sees the body (see :func:`plan_context`)."""

    spacing: tuple[float, float, float]
    patch: tuple[int, int, int]
    field_of_view_mm: tuple[float, float, float]
    body_extent_mm: tuple[float, float, float]
    reasons: list[str]


def _round_to(n: float, div: int) -> int:
    return int(max(div, np.ceil(n / div - 1e-9) * div))


def plan_context(
    extent_mm: Sequence[float],
    data_spacing: Sequence[float],
    *,
    divisor: int,
    voxels: int = CONTEXT_PATCH_VOXELS,
    fov_mm: float = CONTEXT_FOV_MM,
    max_spacing: float = CONTEXT_MAX_SPACING,
) -> ContextPlan:
    """The finest spacing at which a patch of ``voxels`` voxels covers the body's in-plane
    extent (up to ``fov_mm``), as nnU-Net's 3d_lowres buys context with coarser spacing.

    For each in-plane spacing from the data's up to ``max_spacing`` (z: the data's slice
    spacing or the in-plane one, whichever is coarser), the patch keeps the body's z
    extent up to :data:`CONTEXT_MIN_Z_MM` (rounded down to whole divisors, so that
    training patches hold real slices, not padding) and gives the rest of the voxels to
    the in-plane axes; the first spacing whose patch covers the target field of view wins
    (else the coarsest). Sizes are multiples of the network's ``divisor``.
    """
    ext = np.asarray(extent_mm, np.float64)
    sp0 = np.asarray(data_spacing, np.float64)
    target = np.minimum(ext[1:], fov_mm)
    best = None
    for s in np.unique(np.round(np.geomspace(sp0[1:].max(), max(max_spacing, sp0[1:].max()), 24), 3)):
        sp = np.array([max(sp0[0], s), max(sp0[1], s), max(sp0[2], s)])
        shape = ext / sp
        # z: the body's slices up to CONTEXT_MIN_Z_MM, rounded down so that a training
        # patch holds real slices only (as most windows of a longer scan do); a scan
        # thinner than one divisor is padded
        wanted = round(CONTEXT_MIN_Z_MM / sp[0] / divisor) * divisor
        nz = max(divisor, min(wanted, int(shape[0] // divisor) * divisor))
        side = np.sqrt(voxels / nz)
        nyx = [min(_round_to(shape[i], divisor), max(divisor, int(side // divisor) * divisor))
               for i in (1, 2)]  # fmt: skip
        fov = np.array([nz * sp[0], nyx[0] * sp[1], nyx[1] * sp[2]])
        coverage = float(np.min(fov[1:] / target))
        best = (sp, (nz, *nyx), fov, coverage)
        if coverage >= 0.999:
            break
    sp, patch, fov, coverage = best  # type: ignore[misc]
    reasons = [
        f"body extent {ext[0]:.0f} x {ext[1]:.0f} x {ext[2]:.0f} mm (z, y, x); in-plane "
        f"field of view wanted {target[0]:.0f} x {target[1]:.0f} mm (up to {fov_mm:.0f} mm)",
        f"spacing {sp[0]:.3g} x {sp[1]:.3g} x {sp[2]:.3g} mm (data {sp0[0]:.3g} x "
        f"{sp0[1]:.3g} x {sp0[2]:.3g}): the finest at which a {int(np.prod(patch)):,}-voxel "
        f"patch {patch[0]} x {patch[1]} x {patch[2]} sees {fov[0]:.0f} x {fov[1]:.0f} x "
        f"{fov[2]:.0f} mm ({min(coverage, 1.0):.0%} of the wanted field of view)",
    ]
    return ContextPlan(
        spacing=tuple(float(v) for v in sp),  # type: ignore[arg-type]
        patch=tuple(int(v) for v in patch),  # type: ignore[arg-type]
        field_of_view_mm=tuple(round(float(v), 1) for v in fov),  # type: ignore[arg-type]
        body_extent_mm=tuple(round(float(v), 1) for v in ext),  # type: ignore[arg-type]
        reasons=reasons,
    )
