"""Sliding-window inference: fast, memory-bounded, cancellable (no Qt).

``predict(image, model, card, spacing=...)`` turns a raw volume into a label map on the
input's own grid:

1. non-finite voxels are replaced by the smallest finite value (with a warning), and the
   intensities are normalised as the model card says (:func:`normalize_intensity`);
2. when the input spacing differs from the card's training spacing, the image is resampled
   to the card spacing (linear) and the result back to the input grid (labels nearest,
   probabilities linear);
3. the volume is covered by overlapping patches (``card.patch_size``; an image smaller
   than a patch is padded); each window's softmax is weighted by a Gaussian importance
   map (sigma = patch / 8, floored at 1e-3: the map of MONAI's ``sliding_window_inference``
   with ``mode="gaussian"``, so both engines blend windows alike) and windows are run in
   batches;
4. memory stays bounded: windows are visited in z order and their weighted scores are
   summed into a *rolling z-slab* of one patch depth (plus what one batch spans); slices
   that no later window can touch are finalised (argmax -> label values) and the slab
   moves on. Nothing of size ``C x D x H x W`` is ever allocated (unless probabilities
   are asked for, and then only in float16; their normaliser, the sum of the window
   weights, is one more channel of the slab);
5. optional flip test-time augmentation (8 flips, softmax averaged) and post-processing
   (:mod:`napari_vnet.postprocess`).

Device ``"auto"`` picks cuda > mps > cpu. Mixed precision ``amp="auto"``: bf16 (or fp16)
autocast on CUDA, fp16 on MPS, bf16 on a CPU only when it has native bf16 instructions
(``avx512_bf16``/``amx_bf16``; emulated bf16 is hundreds of times slower), else fp32.
On an out-of-memory error the batch is halved and retried, then the stitching buffer is
moved to the CPU, and only then :class:`InferenceMemoryError` is raised.

The engine never changes torch's thread count (the caller or the widget decides), runs
under ``torch.inference_mode`` and restores the model's train/eval mode afterwards; the
model is moved to the chosen device (in place, as ``Module.to`` does).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_vnet.io.volume import Volume
from napari_vnet.models.card import ModelCard
from napari_vnet.runtime import (
    amp_name as _amp_name,
)
from napari_vnet.runtime import (
    available_memory,
    cpu_has_native_bf16,
    resolve_amp,
    resolve_device,
)
from napari_vnet.runtime import (
    is_oom as _is_oom,
)
from napari_vnet.runtime import (
    release_memory as _free_device_memory,
)
from napari_vnet.transforms import normalize_intensity, resample_to_spacing

log = logging.getLogger(__name__)

__all__ = [
    "InferenceMemoryError",
    "available_memory",
    "Prediction",
    "PredictionCancelled",
    "cpu_has_native_bf16",
    "predict",
    "resolve_amp",
    "resolve_device",
    "sliding_window_starts",
]

GAUSSIAN_SIGMA_SCALE = 0.125  # sigma = patch size * 1/8 (nnU-Net, MONAI)
GAUSSIAN_MIN = 1e-3  # floor of the 3-D weight map so that no voxel gets zero weight
SPACING_RTOL = 1e-3  # spacings closer than this (relative) count as equal


class PredictionCancelled(Exception):
    """Raised by :func:`predict` when ``should_stop()`` returned True."""


class InferenceMemoryError(MemoryError):
    """Out of memory even with batch size 1 and stitching on the CPU."""


@dataclass
class Prediction:
    """The result of :func:`predict`.

    ``labels`` holds the card's label *values* (not channel indices) on the input grid,
    as uint8 (or uint16 when a value exceeds 255). ``probabilities`` (only when asked
    for) is ``(C, *input_shape)`` float16 in channel order of ``card.classes``.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    seconds: float = 0.0
    device: str = "cpu"
    amp: str | None = None  # "bf16", "fp16" or None (fp32)
    windows: int = 0
    batch_size: int = 1
    stats: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- devices


def _default_batch_size(device: torch.device, patch: Sequence[int]) -> int:
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except RuntimeError:  # pragma: no cover - no GPU here
            return 2
        # ~2 KB of activations per patch voxel for a 16-base V-Net in half precision
        per_window = 2048 * int(np.prod(patch))
        return int(max(1, min(8, free // (2 * per_window))))
    return 1  # on CPU, batching only adds memory (measured: no speed gain)


# --------------------------------------------------------------------------- windows


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


def pad_to_window(image: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """``image`` (z, y, x) padded to at least ``patch`` along each axis, at the high end,
    with the image's minimum: how :func:`predict` fills a window larger than the image.
    Training pads alike, so that a model learns on the windows it will segment. Returns
    ``image`` itself when no axis is short."""
    need = [max(0, p - s) for p, s in zip(patch, image.shape, strict=True)]
    if not any(need):
        return image
    return np.pad(image, [(0, n) for n in need], constant_values=float(image.min()))


def importance_map(patch: Sequence[int]) -> torch.Tensor:
    """Gaussian importance weights of one window (float32, shape ``patch``).

    The product of 1-D Gaussians with sigma = patch / 8 centred on the window, floored at
    ``GAUSSIAN_MIN`` so that no voxel gets zero weight: the same map as MONAI's
    ``compute_importance_map(mode="gaussian", sigma_scale=0.125)`` (and nnU-Net's
    sigma), so that both engines blend overlapping windows identically."""
    profiles = []
    for size in patch:
        sigma = max(size * GAUSSIAN_SIGMA_SCALE, 1e-6)
        x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
        profiles.append(np.exp(-0.5 * (x / sigma) ** 2))
    weights = np.multiply.outer(profiles[0], np.multiply.outer(profiles[1], profiles[2]))
    floor = max(float(weights.min()), GAUSSIAN_MIN)
    return torch.from_numpy(np.maximum(weights, floor).astype(np.float32))


class _ZStitcher:
    """Sums weighted window scores in a rolling slab along z; finalises slices behind it."""

    def __init__(
        self,
        n_classes: int,
        shape: tuple[int, int, int],
        depth: int,
        device: torch.device,
        lut: np.ndarray,
        label_dtype: np.dtype,
        weights: torch.Tensor | None,
    ) -> None:
        self.shape = shape
        self.depth = depth
        self.lut = lut
        self.labels = np.zeros(shape, dtype=label_dtype)
        # probabilities wanted: the window weight map, summed in one more slab channel,
        # normalises the weighted scores exactly
        self.weights = None if weights is None else weights.to(device)
        self.probabilities = (
            None if weights is None else np.zeros((n_classes, *shape), dtype=np.float16)
        )
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
        idx = torch.argmax(slab, dim=0).to("cpu", torch.int64).numpy()
        self.labels[self.base : until] = self.lut[idx]
        if self.probabilities is not None:
            probs = slab / self.acc[self.n_classes, :n].clamp_min(1e-12)
            self.probabilities[:, self.base : until] = probs.to("cpu", torch.float32).numpy()
        keep = self.depth - n
        if keep > 0:
            self.acc[:, :keep] = self.acc[:, n:].clone()
        self.acc[:, max(keep, 0) :] = 0
        self.base = until


# --------------------------------------------------------------------------- helpers


def _count_nonfinite(array: np.ndarray) -> int:
    if array.dtype.kind not in "fc":
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def _spacing_tuple(spacing: Any, name: str) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"{name} must be three positive numbers (z, y, x) in mm, got {spacing!r}")
    return sp  # type: ignore[return-value]


def _flip_sets(tta: bool | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Spatial axes (0..2) to flip for each TTA pass; () is the identity."""
    if tta is True:
        return [c for r in range(4) for c in itertools.combinations((0, 1, 2), r)]
    if not tta:
        return [()]
    return [tuple(int(a) for a in f) for f in tta]


def _check_memory(
    card: ModelCard,
    grid_shape: Sequence[int],
    patch: Sequence[int],
    batch: int,
    dev: torch.device,
    probabilities: bool,
    padded: bool = True,
) -> None:
    """Refuse *before allocating* a run whose certain allocations alone exceed the free
    main memory (an absurd patch or batch size would otherwise fill the machine)."""
    free = available_memory()
    if free is None:
        return
    n_in, n_cls = int(card.in_channels), len(card.classes)
    voxels, patch_voxels = int(np.prod(grid_shape)), int(np.prod(patch))
    slab = n_cls * int(patch[0]) * int(grid_shape[1]) * int(grid_shape[2])
    need = voxels + 4 * slab  # labels, stitching slab
    if padded:  # a padded copy of the input
        need += 4 * n_in * voxels
    if probabilities:
        need += 2 * n_cls * voxels
    if dev.type == "cpu":  # the batch itself: input, logits, softmax, first feature map
        widths = card.arch_kwargs.get("channels") if isinstance(card.arch_kwargs, dict) else None
        first = int(widths[0]) if isinstance(widths, (list, tuple)) and widths else 16
        need += 4 * batch * patch_voxels * (n_in + 3 * n_cls + first)
    if need <= free:
        return
    gb = 1024**3
    raise InferenceMemoryError(
        f"not enough memory: model {card.arch!r} with patch {tuple(int(p) for p in patch)} "
        f"and batch size {batch} on a {tuple(int(s) for s in grid_shape)} grid needs at "
        f"least {need / gb:.1f} GB, but only {free / gb:.1f} GB is free. Use a smaller "
        "patch size (e.g. 96 x 96 x 96 or the model card's) and batch size 1, or crop "
        "the image"
    )


def _cpu_channels_last() -> bool:
    """Run 3-D convolutions channels-last on the CPU? Measured 10-15% faster for V-Nets
    with oneDNN on AVX2 (benchmarks/inference.py); env NAPARI_VNET_CHANNELS_LAST=0 turns
    it off."""
    value = os.environ.get("NAPARI_VNET_CHANNELS_LAST", "1")
    return value.lower() not in ("0", "false", "no", "off")


# --------------------------------------------------------------------------- predict


def predict(
    image: np.ndarray | Volume,
    model: torch.nn.Module,
    card: ModelCard,
    *,
    spacing: Sequence[float] | None = None,
    device: str | torch.device | None = "auto",
    overlap: float = 0.5,
    batch_size: int | None = None,
    amp: Any = "auto",
    tta: bool | Sequence[Sequence[int]] = False,
    postprocess: Any = None,
    progress: Callable[[int, int], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    return_probabilities: bool = False,
    skip_uniform: bool = True,
) -> Prediction:
    """Segment ``image`` with ``model``; returns labels (card label values) on its grid.

    Args:
        image: ``(z, y, x)`` array (or ``(C, z, y, x)`` for multi-channel cards), or a
            :class:`~napari_vnet.io.Volume` (whose spacing is used when ``spacing`` is None).
        model: network returning logits ``(B, C, D, H, W)`` for any spatial size.
        card: the model card (classes, normalisation, training spacing, patch size).
        spacing: the image's voxel spacing ``(z, y, x)`` in mm; None = the card's spacing.
        device: "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:1", "mps".
        overlap: fraction of a patch shared by neighbouring windows, in [0, 1).
        batch_size: windows per forward pass (None: 1 on CPU, from free memory on GPU).
        amp: "auto", True, False, "bf16" or "fp16" (see :func:`resolve_amp`).
        tta: True for the 8 axis-flip combinations, or a list of axis tuples to flip.
        postprocess: None/False, True (largest component + fill holes) or a list of
            operation names from :data:`napari_vnet.postprocess.OPERATIONS`.
        progress: called as ``progress(done, total)`` windows after every batch.
        should_stop: polled before every batch; True raises :class:`PredictionCancelled`.
        return_probabilities: also return float16 probabilities ``(C, *shape)``.
        skip_uniform: run the network once per distinct *uniform* window (all voxels
            equal, e.g. air after CT windowing) and reuse its output - exact, because
            such a window's output does not depend on where it lies.
    """
    t0 = time.perf_counter()
    if isinstance(image, Volume):
        if spacing is None:
            spacing = image.spacing
        image = image.array
    image = np.asarray(image)
    n_in = int(card.in_channels)
    if n_in == 1 and image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if not (image.ndim == 3 and n_in == 1) and not (image.ndim == 4 and image.shape[0] == n_in):
        want = "(z, y, x)" if n_in == 1 else f"({n_in}, z, y, x)"
        raise ValueError(
            f"image of shape {image.shape} does not fit model {card.arch!r} "
            f"with {n_in} input channel(s): expected {want}"
        )
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if len(card.classes) < 1:
        raise ValueError("model card lists no classes")
    stop = should_stop or (lambda: False)
    in_shape = tuple(int(s) for s in image.shape[-3:])
    if min(in_shape) < 1:
        raise ValueError(f"image of shape {image.shape} is empty")

    dev = resolve_device(device)
    amp_dtype = resolve_amp(amp, dev)
    stats: dict[str, Any] = {"input_shape": list(in_shape)}

    # ---- preprocessing: finite values, normalisation, resampling to the card spacing
    channels = image[None] if image.ndim == 3 else image
    prepared = []
    n_bad_total = 0
    for ch in channels:
        # normalize_intensity replaces NaN/-inf by the smallest finite value, +inf by the
        # largest, and logs a warning; a constant image gives zeros.
        n_bad_total += _count_nonfinite(ch)
        norm = np.asarray(normalize_intensity(ch, card.normalization), dtype=np.float32)
        if not np.isfinite(norm).all():  # belt and braces: never feed NaN to the network
            norm = np.nan_to_num(norm, nan=0.0, posinf=0.0, neginf=0.0)
        prepared.append(norm)
    stats["nonfinite_replaced"] = n_bad_total

    in_spacing = None if spacing is None else _spacing_tuple(spacing, "spacing")
    model_spacing = None if card.spacing is None else _spacing_tuple(card.spacing, "card.spacing")
    resample = (
        in_spacing is not None
        and model_spacing is not None
        and not np.allclose(in_spacing, model_spacing, rtol=SPACING_RTOL, atol=0)
    )
    if resample:
        prepared = [
            np.asarray(
                resample_to_spacing(p, in_spacing, model_spacing, is_label=False), np.float32
            )
            for p in prepared
        ]
        log.info(
            "resampled %s @ %s mm -> %s @ %s mm",
            in_shape,
            in_spacing,
            prepared[0].shape,
            model_spacing,
        )
    vol = prepared[0][None] if len(prepared) == 1 else np.stack(prepared)
    del prepared
    work_shape = tuple(int(s) for s in vol.shape[1:])
    stats["resampled"] = bool(resample)
    stats["model_grid_shape"] = list(work_shape)
    if stop():
        raise PredictionCancelled("prediction cancelled before it started")

    # ---- pad to at least one patch
    patch = tuple(int(p) for p in card.patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"card.patch_size must be three positive ints, got {card.patch_size!r}")
    pad = [max(0, p - s) for p, s in zip(patch, work_shape, strict=True)]
    n_win_est = math.prod(
        len(sliding_window_starts(s + q, p, overlap))
        for s, q, p in zip(work_shape, pad, patch, strict=True)
    )
    bs_est = int(batch_size) if batch_size else _default_batch_size(dev, patch)
    _check_memory(
        card,
        [s + q for s, q in zip(work_shape, pad, strict=True)],
        patch,
        max(1, min(bs_est, n_win_est)),
        dev,
        return_probabilities,
        padded=any(pad),
    )
    if any(pad):
        padded = [pad_to_window(c, patch) for c in vol]
        vol = padded[0][None] if len(padded) == 1 else np.stack(padded)
        del padded
    grid_shape = tuple(int(s) for s in vol.shape[1:])

    # ---- windows, weights, stitcher
    starts_axes = [
        sliding_window_starts(s, p, overlap) for s, p in zip(grid_shape, patch, strict=True)
    ]
    windows = list(itertools.product(*starts_axes))  # z-major order: the slab rolls along z
    n_win = len(windows)
    gauss = importance_map(patch)
    bs = int(batch_size) if batch_size else _default_batch_size(dev, patch)
    bs = max(1, min(bs, n_win))
    z_of = [w[0] for w in windows]
    depth = patch[0] + max(z_of[min(i + bs, n_win) - 1] - z_of[i] for i in range(n_win))
    values = card.label_values
    label_dtype = np.uint8 if max(values) <= 255 else np.uint16
    if min(values) < 0 or max(values) > 65535:
        raise ValueError(f"label values must be in [0, 65535], card has {values}")
    lut = np.asarray(values, dtype=label_dtype)
    n_classes = len(values)
    weights = gauss if return_probabilities else None
    try:
        stitcher = _ZStitcher(n_classes, grid_shape, depth, dev, lut, label_dtype, weights)
    except Exception as exc:  # noqa: BLE001 - only OOM is handled
        if not _is_oom(exc) or dev.type == "cpu":
            raise
        log.warning("no room for the stitching slab on %s; stitching on the CPU", dev)
        stitcher = _ZStitcher(
            n_classes, grid_shape, depth, torch.device("cpu"), lut, label_dtype, weights
        )
    flips = _flip_sets(tta)
    channels_last = dev.type == "cpu" and _cpu_channels_last()
    mem_format = torch.channels_last_3d if channels_last else torch.contiguous_format

    was_training = model.training
    model.eval()
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    gauss_dev = gauss.to(dev)
    computed_shape = (n_classes, *patch)

    def forward(x: np.ndarray) -> torch.Tensor:
        """Gaussian-weighted (TTA-averaged) softmax of a stack of windows."""
        xt = torch.from_numpy(x).to(dev).contiguous(memory_format=mem_format)
        total = None
        for axes in flips:
            dims = [a + 2 for a in axes]
            inp = xt.flip(dims) if dims else xt
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(inp)
            if logits.ndim != 5 or logits.shape[1] != n_classes:
                raise ValueError(
                    f"model returned shape {tuple(logits.shape)} for input {tuple(inp.shape)}; "
                    f"the card lists {n_classes} classes: expected (B, {n_classes}, D, H, W)"
                )
            if tuple(logits.shape[2:]) != patch:
                raise ValueError(
                    f"model returned spatial size {tuple(logits.shape[2:])} for a patch {patch}"
                )
            prob = torch.softmax(logits.float(), dim=1)
            if dims:
                prob = prob.flip(dims)
            total = prob if total is None else total.add_(prob)
        if len(flips) > 1:
            total.div_(len(flips))
        return total.mul_(gauss_dev).contiguous()

    # A window whose every voxel holds the same value (air around a body after CT
    # windowing, zero padding) gives the same output wherever it lies: run it once.
    uniform_cache: dict[tuple[float, ...], torch.Tensor] = {}
    counters = {"uniform_reused": 0}

    def run_batch(batch: list[tuple[int, int, int]]) -> torch.Tensor:
        crops = [vol[:, z : z + patch[0], y : y + patch[1], q : q + patch[2]] for z, y, q in batch]
        keys: list[tuple[float, ...] | None] = []
        for c in crops:
            key = None
            if skip_uniform:
                lo = c.min(axis=(1, 2, 3))
                if np.array_equal(lo, c.max(axis=(1, 2, 3))):
                    key = tuple(float(v) for v in lo)
            keys.append(key)
        todo, seen = [], set()
        for i, key in enumerate(keys):
            if key is None or (key not in uniform_cache and key not in seen):
                todo.append(i)
                if key is not None:
                    seen.add(key)
        computed = forward(np.stack([crops[i] for i in todo])) if todo else None
        if len(todo) == len(batch):
            out = computed
        else:
            out = torch.empty((len(batch), *computed_shape), device=gauss_dev.device)
            if computed is not None:
                out[todo] = computed
        fresh = {}
        for j, i in enumerate(todo):
            key = keys[i]
            if key is not None:
                fresh[key] = computed[j]
                if len(uniform_cache) < 16:
                    uniform_cache[key] = computed[j].clone()
        done_here = set(todo)
        for i, key in enumerate(keys):
            if i not in done_here:
                out[i] = fresh[key] if key in fresh else uniform_cache[key]
                counters["uniform_reused"] += 1
        return out

    oom_retries = 0
    done = 0
    try:
        with torch.inference_mode():
            while done < n_win:
                if stop():
                    raise PredictionCancelled(f"prediction cancelled after {done}/{n_win} windows")
                batch = windows[done : done + bs]
                try:
                    scores = run_batch(batch)
                except Exception as exc:  # noqa: BLE001 - only OOM is handled
                    if not _is_oom(exc):
                        raise
                    oom_retries += 1
                    _free_device_memory(dev)
                    if bs > 1:
                        bs = max(1, bs // 2)
                        log.warning("out of memory on %s; retrying with batch size %d", dev, bs)
                        continue
                    if stitcher.device.type != "cpu":
                        log.warning("out of memory on %s; stitching on the CPU instead", dev)
                        stitcher.to(torch.device("cpu"))
                        _free_device_memory(dev)
                        continue
                    raise InferenceMemoryError(
                        f"out of memory on {dev} running model {card.arch!r} on one "
                        f"{patch} patch (batch size 1, stitching on the CPU); use "
                        "device='cpu' or a smaller patch size"
                    ) from exc
                stitcher.add(scores, batch)
                del scores
                done += len(batch)
                stitcher.finalize(windows[done][0] if done < n_win else grid_shape[0])
                if progress is not None:
                    progress(done, n_win)
    finally:
        model.train(was_training)
        if channels_last:
            model.to(memory_format=torch.contiguous_format)

    # ---- crop padding, resample back, post-process
    labels = stitcher.labels[: work_shape[0], : work_shape[1], : work_shape[2]]
    probs = stitcher.probabilities
    del stitcher
    if probs is not None:
        probs = probs[:, : work_shape[0], : work_shape[1], : work_shape[2]]
    if resample:
        labels = np.asarray(
            resample_to_spacing(labels, model_spacing, in_spacing, is_label=True, shape=in_shape)
        ).astype(label_dtype, copy=False)
        if probs is not None:
            probs = np.stack(
                [
                    np.asarray(
                        resample_to_spacing(
                            p.astype(np.float32),
                            model_spacing,
                            in_spacing,
                            is_label=False,
                            shape=in_shape,
                        ),
                        dtype=np.float16,
                    )
                    for p in probs
                ]
            )
    labels = np.ascontiguousarray(labels)
    if postprocess:
        from napari_vnet.postprocess import apply_postprocess

        labels = apply_postprocess(labels, postprocess, spacing=in_spacing)
    if labels.shape != in_shape:  # pragma: no cover - guarded by resample_to_spacing(shape=)
        raise RuntimeError(f"internal error: labels {labels.shape} != input {in_shape}")

    stats.update(uniform_windows_reused=counters["uniform_reused"])
    stats.update(oom_retries=oom_retries, tta_passes=len(flips), channels_last=channels_last)
    seconds = time.perf_counter() - t0
    return Prediction(
        labels=labels,
        probabilities=None if probs is None else np.ascontiguousarray(probs),
        seconds=seconds,
        device=str(dev),
        amp=_amp_name(amp_dtype),
        windows=n_win,
        batch_size=bs,
        stats=stats,
    )
