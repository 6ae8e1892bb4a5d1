"""Intensity normalisation and resampling shared by inference and training (no Qt).

Spatial tuples are ``(z, y, x)`` in mm, as everywhere in napari-vnet. Resampling uses
SimpleITK (linear for intensities/probabilities, nearest neighbour for labels) on grids
whose first voxel centres coincide, so ``resample_to_spacing(resample_to_spacing(a, s, t),
t, s, shape=a.shape)`` returns to the input grid.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_vnet.errors import NapariVnetError

log = logging.getLogger(__name__)

NORMALIZATION_KINDS = ("window", "zscore", "percentile", "ct", "none")


def _finite_fill(array: np.ndarray) -> np.ndarray:
    """float32 copy; NaN and -inf become the smallest finite value, +inf the largest."""
    out = np.asarray(array, dtype=np.float32)
    # asarray may return a *new view* of the same memory (e.g. float32 arrays read from
    # plain .nii, whose dtype object differs), so test memory, not identity
    if np.may_share_memory(out, array):
        out = out.copy()
    finite = np.isfinite(out)
    if not finite.all():
        if finite.any():
            low, high = float(out[finite].min()), float(out[finite].max())
        else:
            low = high = 0.0
        log.warning(
            "image has %d NaN/inf voxels; NaN/-inf set to %g, +inf to %g",
            int((~finite).sum()),
            low,
            high,
        )
        out[np.isposinf(out)] = high
        out[~np.isfinite(out)] = low
    return out


def normalize_intensity(array: np.ndarray, normalization: Mapping[str, Any]) -> np.ndarray:
    """Raw intensities -> float32 network input, as a model card's ``normalization`` says.

    * ``{"kind": "window", "low": L, "high": H}``: clip to [L, H], scale to [0, 1]
      (CT in HU);
    * ``{"kind": "zscore"}`` (optional ``"clip": [L, H]`` applied first): subtract the mean,
      divide by the standard deviation of the volume (MR);
    * ``{"kind": "percentile", "low": 0.5, "high": 99.5}``: clip to the volume's own
      percentiles, scale to [0, 1];
    * ``{"kind": "ct", "low": L, "high": H, "mean": M, "std": S}``: clip to [L, H], subtract
      M, divide by S - fixed statistics of the training data's foreground (nnU-Net's CT
      normalisation: L, H the 0.5 / 99.5 percentiles), the same for every scan;
    * ``{"kind": "none"}``: cast only.

    NaN/inf never reach the network; a constant image gives zeros, not NaN.
    """
    kind = str(normalization.get("kind", "zscore")).lower()
    if kind not in NORMALIZATION_KINDS:
        raise ValueError(
            f"unknown normalization kind {kind!r}; expected one of {NORMALIZATION_KINDS}"
        )
    need = {"window": ("low", "high"), "ct": ("low", "high", "mean", "std")}.get(kind, ())
    missing = [k for k in need if k not in normalization]
    if missing:
        raise ValueError(
            f"{kind} normalization needs {', '.join(need)}; the card lacks {', '.join(missing)}"
        )
    x = _finite_fill(array)
    if kind == "none":
        return x
    if kind == "window":
        low, high = float(normalization["low"]), float(normalization["high"])
        if not high > low:
            raise ValueError(f"window normalization needs high > low, got {low}, {high}")
        np.clip(x, low, high, out=x)
        x -= low
        x *= 1.0 / (high - low)
        return x
    if kind == "ct":
        low, high = float(normalization["low"]), float(normalization["high"])
        mean, std = float(normalization["mean"]), float(normalization["std"])
        if not high >= low or not std > 0:
            raise ValueError(f"ct normalization needs high >= low and std > 0, got {normalization}")
        np.clip(x, low, high, out=x)
        x -= mean
        x *= 1.0 / std
        return x
    if kind == "percentile":
        lo_q = float(normalization.get("low", 0.5))
        hi_q = float(normalization.get("high", 99.5))
        sample = x if x.size <= 2_000_000 else x.ravel()[:: x.size // 2_000_000 + 1]
        low, high = (float(v) for v in np.percentile(sample, [lo_q, hi_q]))
        if high <= low:
            return np.zeros_like(x)
        np.clip(x, low, high, out=x)
        x -= low
        x *= 1.0 / (high - low)
        return x
    # zscore
    clip = normalization.get("clip")
    if clip is not None:
        np.clip(x, float(clip[0]), float(clip[1]), out=x)
    mean = float(x.mean(dtype=np.float64))
    std = float(x.std(dtype=np.float64))
    x -= mean
    if std > 1e-8:
        x *= 1.0 / std
    return x


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]
) -> tuple[int, ...]:
    """Grid size covering the same extent at ``new_spacing`` (at least 1 voxel a side)."""
    return tuple(
        max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing, strict=True)
    )


class ResampleMemoryError(NapariVnetError, MemoryError, ValueError):
    """A resampled grid would not fit in memory (refused before allocating); a
    ValueError too, since the input's spacing or the model's decides the size."""


def _check_resample_memory(array, out_shape, spacing, new_spacing) -> None:
    """:class:`ResampleMemoryError` with the figures, before allocating, when the
    resampled grid (ITK's output plus its numpy copy) does not fit in the available
    memory."""
    from napari_vnet.io.memory import memory_problem

    nbytes = int(np.prod(out_shape, dtype=object)) * max(4, array.dtype.itemsize) * 2
    shape = " x ".join(str(n) for n in out_shape)
    problem = memory_problem(
        nbytes,
        f"resampling {tuple(array.shape)} voxels of spacing {tuple(spacing)} mm to "
        f"{tuple(new_spacing)} mm ({shape} voxels)",
    )
    if problem:
        raise ResampleMemoryError(problem)


def resample_to_spacing(
    array: np.ndarray,
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    is_label: bool,
    shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Resample a (z, y, x) array - or (C, z, y, x) channels - to ``new_spacing``.

    ``shape`` forces the output grid size (use the original shape to come back).
    Labels use nearest neighbour and keep their dtype; everything else is linear and
    float32. Returns the input itself when nothing changes.
    """
    import SimpleITK as sitk

    spacing = tuple(float(s) for s in spacing)
    new_spacing = tuple(float(s) for s in new_spacing)
    if array.ndim == 4:
        return np.stack(
            [
                resample_to_spacing(c, spacing, new_spacing, is_label=is_label, shape=shape)
                for c in array
            ]
        )
    if array.ndim != 3:
        raise ValueError(f"expected a (z, y, x) or (C, z, y, x) array, got shape {array.shape}")
    if len(spacing) != 3 or len(new_spacing) != 3:
        raise ValueError(f"spacings must have 3 values (z, y, x), got {spacing}, {new_spacing}")
    out_shape = (
        tuple(int(n) for n in shape)
        if shape is not None
        else resampled_shape(array.shape, spacing, new_spacing)
    )
    if out_shape == tuple(array.shape) and np.allclose(spacing, new_spacing):
        return array
    _check_resample_memory(array, out_shape, spacing, new_spacing)

    dtype = array.dtype
    src = array
    if not is_label:
        src = _finite_fill(array)
    elif dtype == np.bool_:
        src = array.astype(np.uint8)
    elif dtype.itemsize == 8 and dtype.kind in "iu":
        src = array.astype(np.int32)
    image = sitk.GetImageFromArray(src)
    image.SetSpacing(spacing[::-1])
    ref = sitk.Image([int(n) for n in out_shape[::-1]], image.GetPixelID())
    ref.SetSpacing(new_spacing[::-1])
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    # Extrapolation at the far border: clamp to the nearest voxel, never pad with 0.
    out = sitk.Resample(image, ref, sitk.Transform(), interp, 0.0, image.GetPixelID(), True)
    result = sitk.GetArrayFromImage(out)
    if is_label:
        return result.astype(dtype, copy=False)
    return result.astype(np.float32, copy=False)
