"""Where the windows go and how their outputs are merged (no torch model here).

* :func:`sliding_window_starts` / :func:`window_grid`: MONAI's window positions, so the
  two engines can be compared window for window (``steps="even"``: nnU-Net's positions,
  :func:`even_window_starts`);
* :func:`pad_to_window`: how a window larger than the image is filled (high end, image
  minimum) - training pads alike;
* :func:`importance_map`: the Gaussian weight of a window (MONAI's / nnU-Net's sigma);
* :class:`ZStitcher`: sums weighted window outputs in a rolling z-slab and finalises the
  slices no later window can touch (argmax -> label values), so nothing of size
  ``C x D x H x W`` is allocated unless probabilities are asked for.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from napari_vnet.runtime import class_argmax

GAUSSIAN_SIGMA_SCALE = 0.125  # sigma = patch size * 1/8 (nnU-Net, MONAI)
GAUSSIAN_MIN = 1e-3  # floor of the 3-D weight map so that no voxel gets zero weight

__all__ = [
    "GAUSSIAN_MIN",
    "GAUSSIAN_SIGMA_SCALE",
    "ZStitcher",
    "entropy_uint8",
    "flip_sets",
    "importance_map",
    "pad_to_window",
    "even_window_starts",
    "sliding_window_starts",
    "window_grid",
]


def sliding_window_starts(length: int, patch: int, overlap: float) -> list[int]:
    """Start indices of windows of size ``patch`` covering ``length`` with ``overlap``.

    Windows step by ``int(patch * (1 - overlap))`` and the last one is moved back to end
    at ``length`` - the same positions as MONAI's ``sliding_window_inference``, so the two
    engines can be compared window for window.
    """
    if length <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = math.ceil((length - patch) / step) + 1
    return [min(i * step, length - patch) for i in range(n)]


def even_window_starts(length: int, patch: int, overlap: float) -> list[int]:
    """Start indices of windows covering ``length``, spread evenly: as many windows as a
    step of ``patch * (1 - overlap)`` needs, the actual step rounded per window - the
    positions of nnU-Net's ``compute_steps_for_sliding_window`` (tile step ``1 - overlap``)."""
    if length <= patch:
        return [0]
    n = math.ceil((length - patch) / (patch * (1.0 - overlap))) + 1
    step = (length - patch) / (n - 1)
    return [int(np.round(step * i)) for i in range(n)]


def window_grid(
    shape: Sequence[int], patch: Sequence[int], overlap: float, steps: str = "fixed"
) -> list[tuple[int, ...]]:
    """All window starts ``(z, y, x)`` in z-major order (the stitching slab rolls along z).
    ``steps``: "fixed" (MONAI's positions) or "even" (nnU-Net's)."""
    starts = even_window_starts if steps == "even" else sliding_window_starts
    axes = [starts(s, p, overlap) for s, p in zip(shape, patch, strict=True)]
    return list(itertools.product(*axes))


def pad_to_window(image: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """``image`` (z, y, x) padded to at least ``patch`` along each axis, at the high end,
    with the image's minimum: how :func:`~napari_vnet.inference.predict` fills a window
    larger than the image. Training pads alike, so that a model learns on the windows it
    will segment. Returns ``image`` itself when no axis is short."""
    need = [max(0, p - s) for p, s in zip(patch, image.shape, strict=True)]
    if not any(need):
        return image
    return np.pad(image, [(0, n) for n in need], constant_values=float(image.min()))


def importance_map(
    patch: Sequence[int], *, center: str = "mid", mode: str = "gaussian"
) -> torch.Tensor:
    """Gaussian importance weights of one window (float32, shape ``patch``).

    The product of 1-D Gaussians with sigma = patch / 8 centred on the window, floored at
    ``GAUSSIAN_MIN`` so that no voxel gets zero weight: the same map as MONAI's
    ``compute_importance_map(mode="gaussian", sigma_scale=0.125)`` (and nnU-Net's
    sigma), so that both engines blend overlapping windows identically.
    ``center="floor"`` puts the peak on voxel ``size // 2`` as nnU-Net's
    ``compute_gaussian`` does (MONAI: the middle, ``(size - 1) / 2``);
    ``mode="constant"``: all ones (MONAI's default ``SlidingWindowInferer``)."""
    if mode == "constant":
        return torch.ones(tuple(int(p) for p in patch), dtype=torch.float32)
    if mode != "gaussian" or center not in ("mid", "floor"):
        raise ValueError(f"importance map mode/center {mode!r}/{center!r} is not supported")
    if center == "floor":  # nnU-Net's map, value for value (see _nnunet_importance_map)
        return _nnunet_importance_map(patch)
    profiles = []
    for size in patch:
        sigma = max(size * GAUSSIAN_SIGMA_SCALE, 1e-6)
        mid = size // 2 if center == "floor" else (size - 1) / 2.0
        x = np.arange(size, dtype=np.float64) - mid
        profiles.append(np.exp(-0.5 * (x / sigma) ** 2))
    weights = np.multiply.outer(profiles[0], np.multiply.outer(profiles[1], profiles[2]))
    floor = max(float(weights.min()), GAUSSIAN_MIN)
    return torch.from_numpy(np.maximum(weights, floor).astype(np.float32))


def _nnunet_importance_map(patch: Sequence[int]) -> torch.Tensor:
    """nnU-Net's window weights: a unit impulse on voxel ``size // 2`` blurred by a
    Gaussian of sigma patch / 8 (``scipy.ndimage.gaussian_filter``, zero outside),
    scaled to a peak of 10 and stored in float16 - so the far corners underflow to 0 and
    are then set to the smallest non-zero weight (nnU-Net's ``compute_gaussian``). The
    float16 rounding and that floor are kept: they decide how strongly each window counts
    near the image border, where an uncertain model's windows disagree."""
    from scipy.ndimage import gaussian_filter

    size = tuple(int(p) for p in patch)
    impulse = np.zeros(size)
    impulse[tuple(s // 2 for s in size)] = 1.0
    blurred = gaussian_filter(impulse, [s * GAUSSIAN_SIGMA_SCALE for s in size], 0, mode="constant")
    weights = (blurred / blurred.max() * 10.0).astype(np.float16)
    weights[weights == 0] = weights[weights > 0].min()
    return torch.from_numpy(weights.astype(np.float32))


def flip_sets(tta: bool | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Spatial axes (0..2) to flip for each TTA pass; () is the identity."""
    if tta is True:
        return [c for r in range(4) for c in itertools.combinations((0, 1, 2), r)]
    if not tta:
        return [()]
    return [tuple(int(a) for a in f) for f in tta]


def entropy_uint8(probs: torch.Tensor) -> np.ndarray:
    """Per-voxel entropy of probabilities ``(C, ...)`` divided by ``log C`` (0: certain,
    1: all classes equally likely), scaled to 0..255 as uint8 on the CPU."""
    n = int(probs.shape[0])
    if n < 2:
        return np.zeros(tuple(probs.shape[1:]), dtype=np.uint8)
    p = probs.float().clamp(0.0, 1.0)
    h = -(p * torch.log(p.clamp_min(1e-12))).sum(0) / math.log(n)
    return (h.clamp(0.0, 1.0) * 255.0).round().to("cpu", torch.uint8).numpy()


class ZStitcher:
    """Sums weighted window scores in a rolling slab along z; finalises slices behind it.

    ``blend="softmax"`` (default) sums Gaussian-weighted probabilities; ``"logits"`` sums
    weighted logits (nnU-Net's way), whose probabilities are the softmax of the weighted
    mean. ``weights`` (the window weight map) is needed for probabilities: summed in one
    more slab channel, it normalises the weighted scores exactly. ``keep_scores``: also
    keep those normalised scores (the blended logits, or probabilities) as float32
    ``scores``, for a way back that resamples them (nnU-Net resamples logits once).
    """

    def __init__(
        self,
        n_classes: int,
        shape: tuple[int, int, int],
        depth: int,
        device: torch.device,
        lut: np.ndarray,
        label_dtype: np.dtype,
        weights: torch.Tensor | None,
        blend: str = "softmax",
        keep_probabilities: bool = True,
        uncertainty: bool = False,
        keep_scores: bool = False,
    ) -> None:
        self.shape = shape
        self.depth = depth
        self.lut = lut
        self.blend = blend
        self.labels = np.zeros(shape, dtype=label_dtype)
        self.weights = None if weights is None else weights.to(device)
        if uncertainty and weights is None:
            raise ValueError("the uncertainty map needs the window weights")
        self.probabilities = (
            None
            if weights is None or not keep_probabilities
            else np.zeros((n_classes, *shape), dtype=np.float16)
        )
        self.scores = (
            np.zeros((n_classes, *shape), dtype=np.float32)
            if keep_scores and weights is not None
            else None
        )
        # normalised entropy of the blended probabilities, 0..255 (uint8: one byte a voxel)
        self.uncertainty = np.zeros(shape, dtype=np.uint8) if uncertainty else None
        self.base = 0  # global z of acc[:, 0]
        extra = 0 if weights is None else 1
        self.acc = torch.zeros((n_classes + extra, depth, shape[1], shape[2]), device=device)
        self.n_classes = n_classes

    @property
    def device(self) -> torch.device:
        return self.acc.device

    def to(self, device: torch.device) -> None:
        self.acc = self.acc.to(device)
        if self.weights is not None:
            self.weights = self.weights.to(device)

    def add(self, scores: torch.Tensor, starts: Sequence[tuple[int, int, int]]) -> None:
        scores = scores.to(self.acc.device)
        pz, py, px = scores.shape[2:]
        c = self.n_classes
        for s, (z, y, x) in zip(scores, starts, strict=True):
            z0 = z - self.base
            self.acc[:c, z0 : z0 + pz, y : y + py, x : x + px] += s
            if self.weights is not None:
                self.acc[c, z0 : z0 + pz, y : y + py, x : x + px] += self.weights

    def finalize(self, until: int) -> None:
        """All slices ``< until`` are complete: write them out and advance the slab."""
        n = until - self.base
        if n <= 0:
            return
        slab = self.acc[: self.n_classes, :n]
        idx = class_argmax(slab, 0).to("cpu", torch.int64).numpy()
        self.labels[self.base : until] = self.lut[idx]
        wanted = self.probabilities is not None or self.uncertainty is not None
        if wanted or self.scores is not None:
            probs = slab / self.acc[self.n_classes, :n].clamp_min(1e-12)
            if self.scores is not None:
                self.scores[:, self.base : until] = probs.to("cpu", torch.float32).numpy()
            if self.blend == "logits" and wanted:
                probs = torch.softmax(probs, dim=0)
            if self.probabilities is not None:
                self.probabilities[:, self.base : until] = probs.to("cpu", torch.float32).numpy()
            if self.uncertainty is not None:
                self.uncertainty[self.base : until] = entropy_uint8(probs)
        keep = self.depth - n
        if keep > 0:
            self.acc[:, :keep] = self.acc[:, n:].clone()
        self.acc[:, max(keep, 0) :] = 0
        self.base = until
