"""``predict``: preprocess -> sliding-window engine -> back to the input grid -> post-process.

:func:`prepare` runs the first stage alone (validation, the card's intensity
normalisation and resampling), so that a caller can preprocess the next case in another
thread while the current one is segmented; ``predict(prepare(image, card), model, card)``
gives the same result as ``predict(image, model, card)``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_vnet.inference.engine import (
    EngineResult,
    InferenceMemoryError,
    PredictionCancelled,
    default_batch_size,
    sliding_window,
)
from napari_vnet.inference.preprocess import (
    PreparedContext,
    Preprocessing,
    blend_for,
    preprocessing_for,
)
from napari_vnet.inference.windows import pad_to_window, window_grid
from napari_vnet.io.volume import Volume
from napari_vnet.models.card import ModelCard
from napari_vnet.runtime import amp_name, available_memory, resolve_amp, resolve_device

__all__ = ["Prediction", "Prepared", "predict", "prepare"]


@dataclass
class Prediction:
    """The result of :func:`predict`.

    ``labels`` holds the card's label *values* (not channel indices) on the input grid,
    as uint8 (or uint16 when a value exceeds 255). ``probabilities`` (only when asked
    for) is ``(C, *input_shape)`` float16 in channel order of ``card.classes``.
    ``uncertainty`` (only when asked for) is the per-voxel entropy of the blended
    probabilities divided by ``log C``, scaled to 0..255, as uint8 on the input grid;
    None when the weights' producer has no way back for it (a MONAI bundle, an nnU-Net
    model that resamples).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    seconds: float = 0.0
    device: str = "cpu"
    amp: str | None = None  # "bf16", "fp16" or None (fp32)
    windows: int = 0
    batch_size: int = 1
    stats: dict[str, Any] = field(default_factory=dict)
    uncertainty: np.ndarray | None = None


def _check_settings(overlap, batch_size) -> None:
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")


def _check_image(image: np.ndarray, card: ModelCard, overlap, batch_size) -> np.ndarray:
    """``(C, z, y, x)`` view of ``image`` after validating it and the run settings."""
    n_in = int(card.in_channels)
    if n_in == 1 and image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if not (image.ndim == 3 and n_in == 1) and not (image.ndim == 4 and image.shape[0] == n_in):
        want = "(z, y, x)" if n_in == 1 else f"({n_in}, z, y, x)"
        raise ValueError(
            f"image of shape {image.shape} does not fit model {card.arch!r} "
            f"with {n_in} input channel(s): expected {want}"
        )
    _check_settings(overlap, batch_size)
    if len(card.classes) < 1:
        raise ValueError("model card lists no classes")
    if min(image.shape[-3:]) < 1:
        raise ValueError(f"image of shape {image.shape} is empty")
    if image.dtype.kind == "f" and not any(np.isfinite(plane).any() for plane in image):
        raise ValueError(
            f"the image contains no finite values (all {image.size} voxels are NaN or "
            "infinite); nothing to segment"
        )
    patch = tuple(int(p) for p in card.patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"card.patch_size must be three positive ints, got {card.patch_size!r}")
    values = card.label_values
    if min(values) < 0 or max(values) > 65535:
        raise ValueError(f"label values must be in [0, 65535], card has {values}")
    return image[None] if image.ndim == 3 else image


def _input_spacing(ctx: PreparedContext, spacing):
    given = ctx.input_spacing
    return given if given is not None else (None if spacing is None else tuple(spacing))


def check_memory(
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


@dataclass
class Prepared:
    """A volume preprocessed for one card by :func:`prepare`, ready for :func:`predict`.

    ``volume`` is the network input ``(C, z, y, x)`` (float32, on the card's grid),
    ``ctx`` what ``pre.restore`` needs to go back to the input grid of shape
    ``input_shape``. Holding one costs the preprocessed volume's memory (float32, so
    twice an int16 scan of the same grid, more when resampled to a finer spacing).
    """

    volume: np.ndarray
    ctx: PreparedContext
    pre: Preprocessing
    card: ModelCard
    input_shape: tuple[int, int, int]
    spacing: tuple[float, ...] | None
    geometry: Volume | None = None
    seconds: float = 0.0


def prepare(
    image: np.ndarray | Volume,
    card: ModelCard,
    *,
    spacing: Sequence[float] | None = None,
    overlap: float = 0.5,
    batch_size: int | None = None,
) -> Prepared:
    """Validate ``image`` and run the card's preprocessing (stage 1 of :func:`predict`).

    Arguments as for :func:`predict` (``overlap`` and ``batch_size`` are only checked
    here, so that a bad setting fails before the work). Runs on the CPU, needs no model,
    and may run in another thread than the :func:`predict` call that takes the result.
    """
    t0 = time.perf_counter()
    geometry = None
    if isinstance(image, Volume):
        geometry = image
        spacing = image.spacing if spacing is None else spacing
        image = image.array
    channels = _check_image(np.asarray(image), card, overlap, batch_size)
    in_shape = tuple(int(s) for s in channels.shape[1:])
    pre = preprocessing_for(card)
    vol, ctx = pre.preprocess(channels, spacing, geometry=geometry)  # e.g. MONAI's Orientationd
    return Prepared(
        volume=vol,
        ctx=ctx,
        pre=pre,
        card=card,
        input_shape=in_shape,  # type: ignore[arg-type]
        spacing=None if spacing is None else tuple(spacing),
        geometry=geometry,
        seconds=time.perf_counter() - t0,
    )


def predict(
    image: np.ndarray | Volume | Prepared,
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
    return_uncertainty: bool = False,
) -> Prediction:
    """Segment ``image`` with ``model``; returns labels (card label values) on its grid.

    Args:
        image: ``(z, y, x)`` array (or ``(C, z, y, x)`` for multi-channel cards), or a
            :class:`~napari_vnet.io.Volume` (whose spacing is used when ``spacing`` is None),
            or a :class:`Prepared` from :func:`prepare` for this card (the preprocessing
            is then skipped; ``spacing`` is taken from it when None).
        model: network returning logits ``(B, C, D, H, W)`` for any spatial size.
        card: the model card (classes, normalisation, training spacing, patch size).
        spacing: the image's voxel spacing ``(z, y, x)`` in mm; None = the card's spacing.
        device: "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:1", "mps".
        overlap: fraction of a patch shared by neighbouring windows, in [0, 1).
        batch_size: windows per forward pass (None: 1 on CPU, from free memory on GPU).
        amp: "auto", True, False, "bf16" or "fp16" (see :func:`napari_vnet.runtime.resolve_amp`).
        tta: True for the 8 axis-flip combinations, or a list of axis tuples to flip.
        postprocess: None/False, True (largest component + fill holes) or a list of
            operation names from :data:`napari_vnet.inference.postprocess.OPERATIONS`. The
            clean-up recorded in the card (``card.postprocess``, chosen on validation
            when it was trained) is applied too, unless ``postprocess`` is False.
        progress: called as ``progress(done, total)`` windows after every batch.
        should_stop: polled before every batch; True raises :class:`PredictionCancelled`.
        return_probabilities: also return float16 probabilities ``(C, *shape)``.
        return_uncertainty: also return the uint8 uncertainty map (see :class:`Prediction`);
            it costs one byte a voxel (the probabilities are not kept for it).
        skip_uniform: run the network once per distinct *uniform* window (all voxels
            equal, e.g. air after CT windowing) and reuse its output - exact, because
            such a window's output does not depend on where it lies.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)  # bad run settings fail before the preprocessing
    amp_dtype = resolve_amp(amp, dev)
    stop = should_stop or (lambda: False)
    prepared = _prepared(image, card, spacing, overlap, batch_size)
    del image
    t0 -= prepared.seconds  # a given Prepared's preprocessing counts in the result's seconds
    spacing = prepared.spacing if spacing is None else spacing
    # ---- 1. preprocessed by prepare(), padded to a window; 2. the engine, on the network grid
    vol, ctx, pre, in_shape = prepared.volume, prepared.ctx, prepared.pre, prepared.input_shape
    del prepared
    work_shape = tuple(int(s) for s in vol.shape[1:])
    if stop():
        raise PredictionCancelled("prediction cancelled before it started")
    vol = _padded(vol, card, dev, overlap, batch_size, return_probabilities)
    result = _run_engine(
        vol, model, card, dev, progress, overlap=overlap, amp_dtype=amp_dtype,
        batch_size=batch_size, tta=tta, skip_uniform=skip_uniform,
        return_probabilities=return_probabilities, return_scores=pre.needs_scores(ctx),
        should_stop=stop, return_uncertainty=return_uncertainty,
    )  # fmt: skip
    del vol
    # ---- 3. back to the input grid, post-process
    labels, probs, uncertainty = _to_input_grid(result, pre, ctx, work_shape, in_shape)
    labels = _postprocessed(labels, card, postprocess, _input_spacing(ctx, spacing))
    if labels.shape != in_shape:  # pragma: no cover - guarded by resample_to_spacing(shape=)
        raise RuntimeError(f"internal error: labels {labels.shape} != input {in_shape}")
    keep = probs is not None and return_probabilities
    return Prediction(
        labels=labels, probabilities=np.ascontiguousarray(probs) if keep else None,
        seconds=time.perf_counter() - t0, device=str(dev), amp=amp_name(amp_dtype),
        windows=result.windows, batch_size=result.batch_size,
        stats=_stats(ctx, in_shape, work_shape, result), uncertainty=uncertainty,
    )  # fmt: skip


def _stats(ctx: PreparedContext, in_shape, work_shape, result: EngineResult) -> dict[str, Any]:
    """What the run did, for :attr:`Prediction.stats`."""
    resampled = work_shape != in_shape if ctx.resampled is None else ctx.resampled
    return {
        "input_shape": list(in_shape),
        "nonfinite_replaced": int(ctx.nonfinite_replaced),
        "resampled": bool(resampled),
        "model_grid_shape": list(work_shape),
        **result.stats,
    }


def _prepared(image, card: ModelCard, spacing, overlap, batch_size) -> Prepared:
    """``image`` preprocessed for ``card`` (:func:`prepare`), or the :class:`Prepared`
    given, checked to be for this card (its ``seconds`` count: the caller's result
    includes them); a fresh one has ``seconds`` 0 (they are in the caller's clock)."""
    if not isinstance(image, Prepared):
        fresh = prepare(image, card, spacing=spacing, overlap=overlap, batch_size=batch_size)
        fresh.seconds = 0.0
        return fresh
    if image.card is not card and image.card != card:
        raise ValueError(
            f"the image was prepared for model {image.card.arch!r}, not for the "
            f"card of {card.arch!r}: call prepare() with this card"
        )
    _check_settings(overlap, batch_size)
    return image


def _padded(vol: np.ndarray, card: ModelCard, dev, overlap, batch_size, probabilities):
    """``vol`` padded to at least one window, after checking that the run fits in memory."""
    work_shape = tuple(int(s) for s in vol.shape[1:])
    patch = tuple(int(p) for p in card.patch_size)
    grid = tuple(max(s, p) for s, p in zip(work_shape, patch, strict=True))
    bs_est = int(batch_size) if batch_size else default_batch_size(dev, patch)
    n_win = len(window_grid(grid, patch, overlap))
    padded = grid != work_shape
    check_memory(card, grid, patch, max(1, min(bs_est, n_win)), dev, probabilities, padded)
    if padded:
        vol = np.stack([pad_to_window(c, patch) for c in vol])
    return vol


def _run_engine(vol, model, card: ModelCard, dev, progress, *, tta, **settings) -> EngineResult:
    """The sliding-window engine over ``vol`` with the card's window style (its TTA axes
    when ``tta`` is True), reporting ``progress(done, total)`` after every batch."""
    values = card.label_values
    lut = np.asarray(values, dtype=np.uint8 if max(values) <= 255 else np.uint16)
    style = dict(card.sliding_window or {})
    if tta is True and style.get("mirror_axes") is not None:  # the producer's own axes
        axes = [int(a) for a in style["mirror_axes"]]
        tta = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
    patch = tuple(int(p) for p in card.patch_size)
    engine = sliding_window(
        vol, model, patch, lut, device=dev, tta=tta, blend=blend_for(card), style=style,
        **settings,
    )  # fmt: skip
    while True:
        try:
            done, total = next(engine)
        except StopIteration as end:
            return end.value
        if progress is not None:
            progress(done, total)


def _to_input_grid(result: EngineResult, pre: Preprocessing, ctx, work_shape, in_shape):
    """``(labels, probabilities, uncertainty)`` of the engine's ``result`` (padded network
    grid) on the input grid; probabilities and uncertainty None where there is no way back."""
    crop = (slice(None), *(slice(0, s) for s in work_shape))
    probs = None if result.probabilities is None else result.probabilities[crop]
    scores = {"scores": result.scores[crop]} if result.scores is not None else {}
    labels, probs = pre.restore(ctx, labels=result.labels[crop[1:]], probabilities=probs, **scores)
    uncertainty = None
    if result.uncertainty is not None:
        uncertainty = pre.restore_uncertainty(ctx, result.uncertainty[crop[1:]])
        if uncertainty is not None:
            uncertainty = np.ascontiguousarray(uncertainty)
            uncertainty = uncertainty if uncertainty.shape == tuple(in_shape) else None
    return np.ascontiguousarray(labels), probs, uncertainty


def _postprocessed(labels: np.ndarray, card: ModelCard, postprocess, spacing) -> np.ndarray:
    """The asked clean-up, then the card's own (chosen on validation) unless
    ``postprocess`` is False."""
    if postprocess:
        from napari_vnet.inference.postprocess import apply_postprocess

        labels = apply_postprocess(labels, postprocess, spacing=spacing)
    if postprocess is not False and card.postprocess:
        from napari_vnet.inference.postprocess import apply_card_postprocess

        labels = apply_card_postprocess(labels, card.postprocess)
    return labels
