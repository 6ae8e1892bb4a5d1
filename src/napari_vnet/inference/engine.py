"""The sliding-window engine: network outputs of every window, blended on one grid.

:func:`sliding_window` is a generator: it yields ``(windows done, windows total)`` after
every batch and returns an :class:`EngineResult` (label channel indices mapped through
``lut`` and, when asked, probabilities) on the padded network grid. It knows nothing
about files, spacings or intensities: :mod:`.preprocess` prepares its input and restores
its output to the input grid. On an out-of-memory error the batch is halved and retried,
then the stitching slab moves to the CPU, and only then :class:`InferenceMemoryError` is
raised.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_vnet.errors import NapariVnetError
from napari_vnet.inference.windows import ZStitcher, flip_sets, importance_map, window_grid
from napari_vnet.runtime import autocast, is_oom, release_memory

log = logging.getLogger(__name__)

__all__ = ["EngineResult", "InferenceMemoryError", "PredictionCancelled", "sliding_window"]


class PredictionCancelled(Exception):
    """Raised by :func:`~napari_vnet.inference.predict` when ``should_stop()`` returned True."""


class InferenceMemoryError(NapariVnetError, MemoryError):
    """Out of memory even with batch size 1 and stitching on the CPU."""


@dataclass
class EngineResult:
    """Labels (values of ``lut``), optional float16 probabilities and optional uint8
    uncertainty (normalised entropy, 0..255) on the engine's grid; ``scores`` (when
    asked for): the blended float32 scores a way back resamples (logits for a logits
    blend, else probabilities)."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    windows: int
    batch_size: int
    stats: dict[str, Any] = field(default_factory=dict)
    uncertainty: np.ndarray | None = None
    scores: np.ndarray | None = None


def cpu_channels_last() -> bool:
    """Run 3-D convolutions channels-last on the CPU? Measured 10-15% faster for V-Nets
    with oneDNN on AVX2 (benchmarks/inference.py); env NAPARI_VNET_CHANNELS_LAST=0 turns
    it off."""
    value = os.environ.get("NAPARI_VNET_CHANNELS_LAST", "1")
    return value.lower() not in ("0", "false", "no", "off")


CPU_BATCH_VOXELS = 64**3  # voxels per forward pass the CPU default batch aims at
CPU_BATCH_MAX = 32


def default_batch_size(device: torch.device, patch: Sequence[int]) -> int:
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except RuntimeError:  # pragma: no cover - no GPU here
            return 2
        # ~2 KB of activations per patch voxel for a 16-base V-Net in half precision
        per_window = 2048 * int(np.prod(patch))
        return int(max(1, min(8, free // (2 * per_window))))
    # On the CPU a window of 64^3 voxels or more keeps the cores busy alone (batching
    # only adds memory, measured); smaller windows (an nnU-Net plan's 16x32x32) are run
    # several per pass: fewer, larger operator calls, each a synchronisation point of the
    # OpenMP threads - measured 1.5-15x faster on 2 cores (benchmarks/nnunet_speed.py).
    return int(max(1, min(CPU_BATCH_MAX, CPU_BATCH_VOXELS // int(np.prod(patch)))))


class _WindowRunner:
    """The network on a stack of windows: TTA, blend weighting, uniform-window reuse."""

    def __init__(
        self, vol, model, patch, device, amp_dtype, n_classes, tta, blend, skip_uniform, gauss
    ):
        self.vol, self.model, self.patch = vol, model, tuple(patch)
        self.device, self.amp_dtype, self.n_classes = device, amp_dtype, n_classes
        self.flips = flip_sets(tta)
        self.blend = blend
        self.skip_uniform = skip_uniform
        self.gauss = gauss.to(device)
        self.channels_last = device.type == "cpu" and cpu_channels_last()
        self.mem_format = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        # A window whose every voxel holds the same value (air around a body after CT
        # windowing, zero padding) gives the same output wherever it lies: run it once.
        self.uniform_cache: dict[tuple[float, ...], torch.Tensor] = {}
        self.uniform_reused = 0

    def forward(self, x: np.ndarray) -> torch.Tensor:
        """Gaussian-weighted (TTA-averaged) softmax - or logits - of a stack of windows."""
        xt = torch.from_numpy(x).to(self.device).contiguous(memory_format=self.mem_format)
        total = self._scores(xt, self.flips[0])  # flip_sets always holds at least one pass
        for axes in self.flips[1:]:
            total.add_(self._scores(xt, axes))
        if len(self.flips) > 1:
            total.div_(len(self.flips))
        return total.mul_(self.gauss).contiguous()

    def _scores(self, xt: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        """Softmax (or logits) of the windows ``xt`` flipped along ``axes`` and back."""
        n = self.n_classes
        dims = [a + 2 for a in axes]
        inp = xt.flip(dims) if dims else xt
        with autocast(self.device, self.amp_dtype):
            logits = self.model(inp)
        if logits.ndim != 5 or logits.shape[1] != n:
            raise ValueError(
                f"model returned shape {tuple(logits.shape)} for input {tuple(inp.shape)}; "
                f"the card lists {n} classes: expected (B, {n}, D, H, W)"
            )
        if tuple(logits.shape[2:]) != self.patch:
            raise ValueError(
                f"model returned spatial size {tuple(logits.shape[2:])} for a patch {self.patch}"
            )
        out = logits.float() if self.blend == "logits" else torch.softmax(logits.float(), 1)
        return out.flip(dims) if dims else out

    def __call__(self, batch: list[tuple[int, ...]]) -> torch.Tensor:
        p = self.patch
        crops = [self.vol[:, z : z + p[0], y : y + p[1], q : q + p[2]] for z, y, q in batch]
        keys: list[tuple[float, ...] | None] = []
        for c in crops:
            key = None
            if self.skip_uniform:
                lo = c.min(axis=(1, 2, 3))
                if np.array_equal(lo, c.max(axis=(1, 2, 3))):
                    key = tuple(float(v) for v in lo)
            keys.append(key)
        todo, seen = [], set()
        for i, key in enumerate(keys):
            if key is None or (key not in self.uniform_cache and key not in seen):
                todo.append(i)
                if key is not None:
                    seen.add(key)
        computed = self.forward(np.stack([crops[i] for i in todo])) if todo else None
        if computed is not None and len(todo) == len(batch):
            return computed
        out = torch.empty((len(batch), self.n_classes, *p), device=self.gauss.device)
        fresh = {}
        if computed is not None:
            out[todo] = computed
            for j, i in enumerate(todo):
                key = keys[i]
                if key is not None:
                    fresh[key] = computed[j]
                    if len(self.uniform_cache) < 16:
                        self.uniform_cache[key] = computed[j].clone()
        done_here = set(todo)
        for i, key in enumerate(keys):
            if i not in done_here and key is not None:  # not run here: a uniform window
                out[i] = fresh[key] if key in fresh else self.uniform_cache[key]
                self.uniform_reused += 1
        return out


def _plan(grid_shape, patch, overlap, style, batch_size, device):
    """``(windows, batch size, slab depth)``: the window positions (the producer's
    ``steps``), the windows per forward pass, and the z extent one batch can span."""
    windows = window_grid(grid_shape, patch, overlap, steps=str(style.get("steps", "fixed")))
    n_win = len(windows)
    bs = int(batch_size) if batch_size else default_batch_size(device, patch)
    bs = max(1, min(bs, n_win))
    z_of = [w[0] for w in windows]
    depth = patch[0] + max(z_of[min(i + bs, n_win) - 1] - z_of[i] for i in range(n_win))
    return windows, bs, depth


@contextlib.contextmanager
def _running(model: torch.nn.Module, device: torch.device, channels_last: bool):
    """``model`` in eval mode on ``device`` (channels-last when asked) for the run; its
    mode and memory format restored after."""
    was_training = model.training
    model.eval()
    model.to(device)
    # the ignores: torch's stubs for Module.to omit memory_format= (valid at runtime)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    try:
        yield
    finally:
        model.train(was_training)
        if channels_last:
            model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def _stitcher(args: tuple, device: torch.device, **kwargs: Any) -> ZStitcher:
    """The stitching slab on ``device``, or on the CPU when there is no room for it there."""
    n_classes, shape, depth = args
    try:
        return ZStitcher(n_classes, shape, depth, device=device, **kwargs)
    except Exception as exc:  # noqa: BLE001 - only OOM is handled
        if not is_oom(exc) or device.type == "cpu":
            raise
        log.warning("no room for the stitching slab on %s; stitching on the CPU", device)
        return ZStitcher(n_classes, shape, depth, device=torch.device("cpu"), **kwargs)


def _after_oom(exc: BaseException, bs: int, stitcher: ZStitcher, device, patch) -> int:
    """The batch size to retry with after running out of memory (``exc``): half the
    batch, else the same with the stitching moved to the CPU; InferenceMemoryError when
    neither is left."""
    release_memory(device)
    if bs > 1:
        bs = max(1, bs // 2)
        log.warning("out of memory on %s; retrying with batch size %d", device, bs)
        return bs
    if stitcher.device.type != "cpu":
        log.warning("out of memory on %s; stitching on the CPU instead", device)
        stitcher.to(torch.device("cpu"))
        release_memory(device)
        return bs
    raise InferenceMemoryError(
        f"out of memory on {device} running the model on one {patch} patch "
        "(batch size 1, stitching on the CPU); use device='cpu' or a smaller "
        "patch size"
    ) from exc


def sliding_window(
    vol: np.ndarray,
    model: torch.nn.Module,
    patch: Sequence[int],
    lut: np.ndarray,
    *,
    overlap: float = 0.5,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch_size: int | None = None,
    tta: bool | Sequence[Sequence[int]] = False,
    blend: str = "softmax",
    return_probabilities: bool = False,
    skip_uniform: bool = True,
    should_stop: Callable[[], bool] | None = None,
    style: dict | None = None,
    return_uncertainty: bool = False,
    return_scores: bool = False,
) -> Iterator[tuple[int, int]]:
    """Run ``model`` over ``vol`` ``(C, z, y, x)`` (at least one ``patch`` per axis).

    Yields ``(done, total)`` windows after every batch; returns an :class:`EngineResult`.
    ``lut`` maps channel indices to label values. The model is moved to ``device`` in
    place, run under ``torch.inference_mode`` in eval mode, and its mode restored.
    ``style`` (a card's ``sliding_window``) picks the window positions (``steps``) and
    the weight map (``center``, ``mode``) of the weights' producer, e.g. nnU-Net's.
    ``return_uncertainty``: also the per-voxel normalised entropy of the blended
    probabilities as uint8 (0..255), computed slab by slab (one byte a voxel, no
    ``C x D x H x W`` array unless probabilities are asked for too).
    ``return_scores``: also the blended float32 scores (:class:`EngineResult`).
    """
    style = style or {}
    patch = tuple(int(p) for p in patch)
    grid_shape = tuple(int(s) for s in vol.shape[1:])
    if blend not in ("softmax", "logits"):
        raise ValueError(f"blend must be 'softmax' or 'logits', got {blend!r}")
    windows, bs, depth = _plan(grid_shape, patch, overlap, style, batch_size, device)
    n_win = len(windows)
    n_classes = len(lut)
    gauss = importance_map(
        patch, center=str(style.get("center", "mid")), mode=str(style.get("mode", "gaussian"))
    )
    weights = gauss if (return_probabilities or return_uncertainty or return_scores) else None
    stitcher = _stitcher(
        (n_classes, grid_shape, depth), device, lut=lut, label_dtype=lut.dtype,
        weights=weights, blend=blend, keep_probabilities=return_probabilities,
        uncertainty=return_uncertainty, keep_scores=return_scores,
    )  # fmt: skip
    runner = _WindowRunner(
        vol, model, patch, device, amp_dtype, n_classes, tta, blend, skip_uniform, gauss
    )
    stop = should_stop or (lambda: False)
    oom_retries = 0
    done = 0
    with _running(model, device, runner.channels_last), torch.inference_mode():
        while done < n_win:
            if stop():
                raise PredictionCancelled(f"prediction cancelled after {done}/{n_win} windows")
            batch = windows[done : done + bs]
            try:
                scores = runner(batch)
            except Exception as exc:  # noqa: BLE001 - only OOM is handled
                if not is_oom(exc):
                    raise
                oom_retries += 1
                bs = _after_oom(exc, bs, stitcher, device, patch)
                continue
            stitcher.add(scores, batch)
            del scores
            done += len(batch)
            stitcher.finalize(windows[done][0] if done < n_win else grid_shape[0])
            yield done, n_win
    return _result(stitcher, runner, n_win, bs, oom_retries)


def _result(stitcher: ZStitcher, runner: _WindowRunner, n_win: int, bs: int, oom_retries: int):
    """The :class:`EngineResult` of a finished run."""
    return EngineResult(
        labels=stitcher.labels,
        probabilities=stitcher.probabilities,
        uncertainty=stitcher.uncertainty,
        scores=stitcher.scores,
        windows=n_win,
        batch_size=bs,
        stats={
            "windows_run": n_win - runner.uniform_reused,  # through the network
            "uniform_windows_reused": runner.uniform_reused,
            "oom_retries": oom_retries,
            "tta_passes": len(runner.flips),
            "channels_last": runner.channels_last,
        },
    )
