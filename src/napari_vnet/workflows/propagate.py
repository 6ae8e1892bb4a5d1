"""Propagate corrections: adapt the model to this scan, re-predict what the user left (no Qt).

After the user corrected a few slices, :func:`propagate_job` fine-tunes the weights that
made the prediction for a short budget (:func:`propagate_config`) on the corrected
voxels only - the edit record's training mask (:func:`kept_mask`: on an edited slice the
labels the user touched, the voxels the edits changed and a band of background around
them; a slice marked reviewed counts whole) - with the training engine's partial labels
(a class no corrected voxel shows is not learnt as background) and patches centred on
the corrected voxels (the sampler centres on annotated voxels). It then segments the scan
with the adapted weights. :func:`merge` turns that prediction into a
:class:`~napari_vnet.correct.tools.Change` on the voxels the user has not touched: every
kept voxel stays exactly as it is.

The job is a generator of :class:`PropagateProgress` (``stage`` "adapt", then "predict")
returning a :class:`PropagateResult`, so the dock runs it in the training child process
(:func:`child_job`, through :func:`napari_vnet.workflows.child_process.run_in_child`) and scripts
drive it in-process with :func:`propagate`. ``should_stop()`` ends it early: nothing is
predicted and the result says ``cancelled``.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_vnet.correct.tools import Change

log = logging.getLogger(__name__)

__all__ = [
    "ITERATIONS",
    "MINUTES",
    "PropagateProgress",
    "PropagateResult",
    "child_job",
    "kept_mask",
    "merge",
    "propagate",
    "propagate_config",
    "propagate_job",
]

#: fine-tune iterations of one propagate (batch 2)
ITERATIONS = 40
#: ... and its time cap: whichever comes first ends the fine-tune
MINUTES = 0.75
#: keyword arguments of :func:`napari_vnet.inference.predict` a propagate passes on from
#: the run that made the labels (the Segment dock's settings)
PREDICT_KEYS = ("overlap", "amp", "tta", "postprocess", "batch_size")


@dataclass
class PropagateProgress:
    """One step: ``stage`` "adapt" (``done`` of ``total`` iterations, ``loss``) or
    "predict" (``done`` of ``total`` windows); ``seconds`` since the job started."""

    stage: str
    done: int
    total: int
    seconds: float
    loss: float | None = None


@dataclass
class PropagateResult:
    """The adapted model's labels (``prediction``, None when cancelled) and what it took."""

    prediction: np.ndarray | None
    cancelled: bool
    iterations: int
    train_seconds: float
    predict_seconds: float
    loss: float | None = None

    @property
    def seconds(self) -> float:
        return self.train_seconds + self.predict_seconds


def propagate_config(
    iterations: int = ITERATIONS, minutes: float | None = MINUTES, **changes: Any
) -> Any:
    """The :class:`~napari_vnet.training.TrainConfig` of one propagate: a short fine-tune
    with a fixed learning rate, no validation, the final weights kept, light augmentation
    (mirroring and intensity only: the corrected slices are this scan's own anatomy)."""
    from napari_vnet.training import TrainConfig

    config = TrainConfig(
        iterations=int(iterations), minutes=minutes, batch_size=2, lr=1e-3, warmup=0.0,
        schedule="constant", val_fraction=0.0, keep="final", eval_every=int(iterations),
        eval_seconds=1e9, augment_spatial=False, augment_phase=False, partial_labels=True,
    )  # fmt: skip
    return dataclasses.replace(config, **changes)


def kept_mask(labels: np.ndarray, edited: Any) -> np.ndarray:
    """The voxels a propagate keeps (and learns from): ``edited`` is the layer's edit
    record (``metadata["annotated_slices"]``: per label and region, see
    :func:`napari_vnet.training.annotation_regions.training_mask`), a bool mask of the labels'
    shape, or z-slice indices. All False when nothing is recorded."""
    from napari_vnet.training.annotations import mask_from_record

    labels = np.asarray(labels)
    mask = mask_from_record(edited, labels.shape, labels)
    return np.zeros(labels.shape, bool) if mask is None else np.asarray(mask, bool)


def merge(labels: np.ndarray, prediction: np.ndarray, kept: np.ndarray) -> Change:
    """The change that gives every voxel outside ``kept`` the new prediction (only the
    voxels whose value differs are listed); kept voxels are never in it."""
    labels = np.asarray(labels)
    prediction = np.asarray(prediction)
    if prediction.shape != labels.shape or np.shape(kept) != labels.shape:
        raise ValueError(
            f"prediction {prediction.shape} and kept mask {np.shape(kept)} must have the "
            f"labels' shape {labels.shape}"
        )
    idx = np.nonzero((prediction != labels) & ~np.asarray(kept, bool))
    return Change(idx, prediction[idx].astype(labels.dtype))


def propagate_job(
    image: np.ndarray,
    labels: np.ndarray,
    kept: np.ndarray,
    spacing: tuple[float, float, float],
    weights: Any,
    config: Any = None,
    predict_settings: dict[str, Any] | None = None,
    *,
    should_stop: Callable[[], bool],
) -> Generator[PropagateProgress, None, PropagateResult]:
    """Fine-tune ``weights`` on the ``kept`` voxels of ``labels``, then predict ``image``.

    ``weights``: a checkpoint path, a shipped name or a ``(model, card)`` tuple;
    ``config``: a :class:`~napari_vnet.training.TrainConfig` (default
    :func:`propagate_config`); ``predict_settings``: keyword arguments of
    :func:`napari_vnet.inference.predict` (:data:`PREDICT_KEYS` are used). The adapted
    weights live in a temporary folder, removed at the end.
    """
    from napari_vnet.training import TrainingPair, finetune

    kept = np.asarray(kept, bool)
    if not kept.any():
        raise ValueError("no corrected voxel: correct a slice first")
    config = config or propagate_config()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="napari-vnet-propagate-") as tmp:
        out = Path(tmp) / "adapted.pt"
        pair = TrainingPair(image, labels, tuple(spacing), annotated=kept, name="this scan")
        gen = finetune([pair], config, base=weights, out=out, should_stop=should_stop)
        while True:
            try:
                step = next(gen)
            except StopIteration as done:
                summary = done.value
                break
            yield PropagateProgress("adapt", int(step.iteration), int(step.total),
                                    time.perf_counter() - t0, float(step.loss))  # fmt: skip
        train_seconds = time.perf_counter() - t0
        result = PropagateResult(None, True, int(summary.iterations), train_seconds, 0.0,
                                 summary.final_loss)  # fmt: skip
        if summary.cancelled or should_stop() or not out.exists():
            return result
        from napari_vnet.models import load_checkpoint

        model, card = load_checkpoint(out, map_location="cpu")
    settings = {k: v for k, v in (predict_settings or {}).items() if k in PREDICT_KEYS}
    pred = yield from _predict(image, model, card, spacing, config.device, settings,
                               should_stop, t0)  # fmt: skip
    result.predict_seconds = time.perf_counter() - t0 - train_seconds
    if pred is not None:
        result.prediction, result.cancelled = pred, False
    return result


def _predict(image, model, card, spacing, device, settings, should_stop, t0):
    """Segment in a thread of this process and yield its window progress; the labels,
    or None when stopped."""
    from napari_vnet.inference import PredictionCancelled, predict

    events: queue.Queue = queue.Queue()
    found: dict[str, Any] = {}

    def run() -> None:
        try:
            found["labels"] = predict(
                image, model, card, spacing=spacing, device=device, should_stop=should_stop,
                progress=lambda done, total: events.put((int(done), int(total))), **settings,
            ).labels  # fmt: skip
        except PredictionCancelled:
            found["labels"] = None
        except BaseException as exc:  # noqa: BLE001 - raised again in the job's thread
            found["error"] = exc
        finally:
            events.put(None)

    threading.Thread(target=run, name="propagate-predict", daemon=True).start()
    while (item := events.get()) is not None:
        yield PropagateProgress("predict", item[0], item[1], time.perf_counter() - t0)
    if "error" in found:
        raise found["error"]
    return found.get("labels")


def child_job(*args: Any, should_stop: Callable[[], bool], **kwargs: Any):
    """:func:`propagate_job` as the training child process runs it: torch's threads are
    chosen keeping one core for the viewer (:func:`napari_vnet.workflows.threads.use_threads`)."""
    import torch  # noqa: F401 - imported before the threads are chosen, so they apply to it

    from napari_vnet.workflows.threads import use_threads

    with use_threads(None, reserve=1):
        return (yield from propagate_job(*args, should_stop=should_stop, **kwargs))


def propagate(
    image: np.ndarray,
    labels: np.ndarray,
    edited: Any,
    *,
    weights: Any,
    spacing: tuple[float, float, float],
    config: Any = None,
    predict_settings: dict[str, Any] | None = None,
    progress: Callable[[PropagateProgress], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Change, PropagateResult]:
    """Run :func:`propagate_job` here and :func:`merge` its prediction into ``labels``
    (not written: apply the change). ``edited``: as for :func:`kept_mask`. A cancelled
    run gives an empty change."""
    labels = np.asarray(labels)
    kept = kept_mask(labels, edited)
    gen = propagate_job(
        np.asarray(image), labels, kept, spacing, weights, config, predict_settings,
        should_stop=should_stop or (lambda: False),
    )  # fmt: skip
    box: dict[str, PropagateResult] = {}

    def run():  # the job's events, its result kept in ``box``
        box["result"] = yield from gen

    for event in run():
        if progress is not None:
            progress(event)
    result = box["result"]
    if result.prediction is None:
        empty = tuple(np.empty(0, np.intp) for _ in labels.shape)
        return Change(empty, np.empty(0, labels.dtype)), result
    return merge(labels, result.prediction, kept), result
