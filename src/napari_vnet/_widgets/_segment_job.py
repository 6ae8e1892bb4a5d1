"""The work behind the "Segment volume" Run button, without any Qt or viewer access.

:class:`SegmentJob` is what the dock hands to a napari generator ``thread_worker``: its
:meth:`SegmentJob.events` generator runs :func:`napari_vnet.inference.predict` in a helper
thread (``predict`` reports progress through a callback, not by yielding) and yields what
that thread reports through a queue, so the worker can stream progress to the GUI and be
stopped between steps. It ends by *returning* a :class:`JobDone`, :class:`JobFailed` or
:class:`JobCancelled` (never raising: superqt treats a RuntimeError escaping a generator
worker as "worker deleted" and silently drops it, which would hide e.g. a torch OOM).

Inside the helper thread torch's intra-op threads are limited (one core is left for the
GUI) and restored afterwards.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class RunRequest:
    """Everything a run needs, collected on the GUI thread."""

    image: Any  # array-like (z, y, x); read in the worker (dask etc. computed there)
    image_name: str
    spacing: tuple[float, float, float] | None
    weights: Path
    arch: str  # architecture chosen in the dock (must match the file's card)
    settings: dict[str, Any] = field(default_factory=dict)  # predict keyword arguments
    threads: int | None = None  # torch intra-op threads in the worker (None: cpus - 1)


@dataclass
class Progress:
    done: int
    total: int


@dataclass
class Message:
    """A note for the user (``level``: "info" or "warning")."""

    text: str
    level: str = "info"


@dataclass
class JobDone:
    labels: np.ndarray
    card: Any  # ModelCard
    seconds: float
    device: str
    amp: str | None
    batch_size: int
    windows: int
    uncertainty: np.ndarray | None = None  # uint8, when the settings asked for it


@dataclass
class JobFailed:
    message: str  # what happened and what to do, for a notification
    error: BaseException | None = None


@dataclass
class JobCancelled:
    seconds: float = 0.0


_DONE = object()


def default_threads() -> int:
    """Torch intra-op threads for inference in the GUI: all cores but one."""
    return max(1, (os.cpu_count() or 2) - 1)


class SegmentJob:
    """One inference run. ``events()`` is the generator for a napari thread worker."""

    def __init__(self, request: RunRequest):
        self.request = request
        self._stop = threading.Event()
        self._extra_stop: list[Callable[[], bool]] = []
        self.thread: threading.Thread | None = None

    # ---------------------------------------------------------------- stopping
    def stop(self) -> None:
        """Ask the run to stop at the next batch of windows."""
        self._stop.set()

    def also_stop_when(self, check: Callable[[], bool]) -> None:
        """Add a condition polled with the stop flag (e.g. ``worker.abort_requested``)."""
        self._extra_stop.append(check)

    def should_stop(self) -> bool:
        return self._stop.is_set() or any(check() for check in self._extra_stop)

    @property
    def alive(self) -> bool:
        """Whether the helper thread running ``predict`` is still busy."""
        return self.thread is not None and self.thread.is_alive()

    # ---------------------------------------------------------------- generator
    def events(self) -> Iterator[Progress | Message]:
        """Yield Progress/Message items while predicting; return the outcome."""
        q: queue.SimpleQueue = queue.SimpleQueue()
        box: dict[str, Any] = {}

        def target() -> None:
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(self.request.threads or default_threads())
            try:
                box["outcome"] = self._run(q.put)
            except BaseException as exc:  # noqa: BLE001 - reported to the GUI
                log.exception("segmentation of %r failed", self.request.image_name)
                box["outcome"] = JobFailed(_unexpected_message(self.request, exc), exc)
            finally:
                torch.set_num_threads(before)
                q.put(_DONE)

        self.thread = threading.Thread(target=target, name="napari-vnet-predict", daemon=True)
        self.thread.start()
        _warm_up_imports()
        while True:
            item = q.get()
            if item is _DONE:
                break
            yield item
        self.thread.join()
        return box.get("outcome", JobFailed("Segmentation ended without a result."))

    # ---------------------------------------------------------------- the run
    def _run(self, emit: Callable[[Any], None]) -> JobDone | JobFailed | JobCancelled:
        req = self.request
        t0 = time.perf_counter()
        from napari_vnet.inference import PredictionCancelled, predict
        from napari_vnet.models import CheckpointError
        from napari_vnet.weights import load_weights

        emit(Message(f"Loading {req.weights.name}…"))
        try:
            model, card = load_weights(req.weights, map_location="cpu")
        except (CheckpointError, OSError) as exc:
            return JobFailed(
                f"Cannot use weights {req.weights.name}: {exc}\n"
                "Choose another weights file (the shipped models are listed first).",
                exc,
            )
        if card.arch != req.arch:
            from napari_vnet._widgets._weights_panel import arch_name

            return JobFailed(
                f"{req.weights.name} holds a {arch_name(card.arch)} model but "
                f"{arch_name(req.arch)} is selected: choose {arch_name(card.arch)} "
                "or other weights."
            )
        if self.should_stop():
            return JobCancelled(time.perf_counter() - t0)

        emit(Message(f"Reading {req.image_name}…"))
        image = np.asarray(req.image)
        problem = _check_image(image, req.image_name, emit)
        if problem is not None:
            return problem

        emit(Message(f"Segmenting {req.image_name}…"))
        try:
            pred = predict(
                image,
                model,
                card,
                spacing=req.spacing,
                progress=lambda done, total: emit(Progress(int(done), int(total))),
                should_stop=self.should_stop,
                **req.settings,
            )
        except PredictionCancelled:
            return JobCancelled(time.perf_counter() - t0)
        except MemoryError as exc:  # includes InferenceMemoryError, torch.OutOfMemoryError
            return JobFailed(_oom_message(req, exc), exc)
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                return JobFailed(_oom_message(req, exc), exc)
            raise
        except ValueError as exc:
            log.info("predict refused %r", req.image_name, exc_info=True)
            return JobFailed(
                f"Cannot segment '{req.image_name}' with {req.weights.name}: {exc}", exc
            )
        if self.should_stop():  # cancelled during the last batch: keep the promise
            return JobCancelled(time.perf_counter() - t0)
        return JobDone(
            labels=pred.labels,
            card=card,
            seconds=time.perf_counter() - t0,
            device=str(pred.device),
            amp=pred.amp,
            batch_size=int(pred.batch_size),
            windows=int(pred.windows),
            uncertainty=pred.uncertainty,
        )


def _warm_up_imports() -> None:
    """Import now, off the GUI thread, what napari needs to show a Labels layer with a
    features table for the first time (pandas alone takes ~0.5-1 s), so that adding the
    result does not freeze the viewer for that long."""
    for name in (
        "pandas",
        "scipy.linalg",
        "skimage.color",
        "skimage.exposure",
        "napari._vispy.overlays.labels_polygon",
        "napari._vispy.layers.labels",
    ):
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optimisation only
            log.debug("warm-up import of %s failed: %s", name, exc)


def _check_image(image: np.ndarray, name: str, emit) -> JobFailed | None:
    if image.ndim != 3:
        return JobFailed(f"'{name}' has {image.ndim} dimensions; segmentation needs a 3D volume.")
    if image.dtype.kind not in "fc":
        if image.dtype.kind not in "biu":
            return JobFailed(f"'{name}' has pixel type {image.dtype}; expected numbers.")
        return None
    finite = np.isfinite(image)
    n_bad = int(image.size - np.count_nonzero(finite))
    if n_bad == image.size:
        return JobFailed(
            f"'{name}' contains no finite values (all {image.size} voxels are NaN or "
            "infinite), so there is nothing to segment. Check how the image was made "
            "(e.g. a failed conversion) and open the original file."
        )
    if n_bad:
        emit(
            Message(
                f"'{name}' has {n_bad} NaN/infinite voxels ({100 * n_bad / image.size:.2g}%); "
                "they were treated as the lowest intensity. Check the result there.",
                level="warning",
            )
        )
    return None


def _oom_message(req: RunRequest, exc: BaseException) -> str:
    where = req.settings.get("device", "auto")
    tips = ["set Batch size to 1"]
    if req.settings.get("tta"):
        tips.append("turn off test-time augmentation")
    if where not in ("cpu",):
        tips.append("choose the CPU device (slower, but uses main memory)")
    tips.append("close other programs or crop the image")
    return (
        f"Out of memory while segmenting '{req.image_name}' (device {where}): {exc}\n"
        f"Try: {'; '.join(tips)}."
    )


def _unexpected_message(req: RunRequest, exc: BaseException) -> str:
    return (
        f"Segmentation of '{req.image_name}' with {req.weights.name} failed: "
        f"{type(exc).__name__}: {exc}\nSee the log for details; the viewer is unchanged."
    )
