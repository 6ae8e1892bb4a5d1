"""Segment one scan: load the weights, check the input, predict, report.

The one home of this use case; its three callers only word what it returns:

* the Segment dock runs :func:`segment_request` on a helper thread
  (:class:`napari_vnet._widgets._segment_job.SegmentJob`), which streams its
  :class:`Progress` and :class:`Message` events to the GUI and can stop it between batches;
* ``napari-vnet predict FILE --out FILE`` (:mod:`napari_vnet.commands.predict`) calls
  :func:`segment_file`;
* a folder run (:func:`napari_vnet.workflows.batch_run.predict_cases`) checks and segments
  each case with one :class:`Segmenter` (:meth:`Segmenter.input_issues`,
  :meth:`Segmenter.segment`).

:meth:`Segmenter.segment` ends in :class:`JobDone`, :class:`JobFailed` or
:class:`JobCancelled`: what the user can act on (an image the network refuses, out of
memory, Cancel) is an outcome, not an exception. Other errors propagate.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_vnet.errors import NapariVnetError

log = logging.getLogger(__name__)

__all__ = [
    "JobCancelled",
    "JobDone",
    "JobFailed",
    "Message",
    "Outcome",
    "Progress",
    "RunRequest",
    "SegmentRefused",
    "Segmenter",
    "WeightsUnusable",
    "check_image",
    "recommended_settings",
    "refusal_text",
    "result_info",
    "segment_file",
    "segment_request",
    "write_class_sidecar",
    "write_labels",
]


# ------------------------------------------------------------------ events and outcomes


@dataclass
class Progress:
    """Windows done of the total, after every batch."""

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
    probabilities: np.ndarray | None = None  # when the settings asked for them
    threads: int | None = None  # torch intra-op threads the run used
    #: the scan's score (0..1, :func:`napari_vnet.correct.uncertainty.scan_score`), with
    #: the uncertainty map
    uncertainty_score: float | None = None


@dataclass
class JobFailed:
    message: str  # what happened and what to do, for a notification
    error: BaseException | None = None


@dataclass
class JobCancelled:
    seconds: float = 0.0


Outcome = JobDone | JobFailed | JobCancelled


@dataclass
class RunRequest:
    """Everything a dock run needs, collected on the GUI thread."""

    image: Any  # array-like (z, y, x); read in the worker (dask etc. computed there)
    image_name: str
    spacing: tuple[float, float, float] | None
    weights: Path
    arch: str  # architecture chosen in the dock (must match the file's card)
    settings: dict[str, Any] = field(default_factory=dict)  # predict keyword arguments
    threads: int | None = None  # torch intra-op threads (None: automatic, a core kept for the GUI)
    folds: list[str] | None = None  # nnU-Net folder: the folds to ensemble (None: all)
    checkpoint: str | None = None  # nnU-Net folder: checkpoint file name in each fold


class WeightsUnusable(NapariVnetError):
    """The weights cannot be found or loaded; the message says why."""


class SegmentRefused(NapariVnetError):
    """A scan that was not segmented; the message (one or more lines) says why."""


# ---------------------------------------------------------------------------- the model


@dataclass
class Segmenter:
    """One network with its card, ready to segment scans one after the other."""

    model: Any
    card: Any
    weights: Path | None = None

    @classmethod
    def load(
        cls, weights: str | os.PathLike, *, folds: Any = None, checkpoint: str | None = None
    ) -> Segmenter:
        """Load ``weights`` (a path or a shipped name) on the CPU (``folds``, ``checkpoint``:
        inside an nnU-Net folder); raises :class:`WeightsUnusable` when they cannot be
        found or read."""
        from napari_vnet.models import CheckpointError
        from napari_vnet.weights import load_weights, resolve_weights

        try:
            path = resolve_weights(weights)
            model, card = load_weights(path, map_location="cpu", folds=folds,
                                       checkpoint=checkpoint)  # fmt: skip
        except (CheckpointError, OSError, ValueError) as exc:
            raise WeightsUnusable(str(exc)) from exc
        return cls(model, card, path)

    def input_issues(self, vol) -> list:
        """Mismatches between a :class:`~napari_vnet.io.Volume` and the card
        (:func:`napari_vnet.workflows.input_check.check_input`)."""
        from napari_vnet.workflows.input_check import check_input, value_sample

        n = vol.ndim
        return check_input(
            self.card,
            shape=tuple(vol.array.shape[:n]),
            spacing=tuple(vol.spacing),
            values=value_sample(vol.array),
            channels=int(vol.array.shape[-1]) if vol.array.ndim > n else 1,
            modality=str(vol.metadata.get("modality", "")),
        )

    def segment(
        self,
        image,
        *,
        name: str,
        spacing,
        settings: dict[str, Any] | None = None,
        progress: Callable[[int, int], Any] | None = None,
        should_stop: Callable[[], bool] | None = None,
        reserve: int = 0,
    ) -> Outcome:
        """Run :func:`napari_vnet.inference.predict` on ``image`` (an array, a Volume or a
        prepared input) with ``settings`` (its keyword arguments, the label options of
        :func:`napari_vnet.workflows.outputs.clean_labels`, and ``threads``: a
        :class:`~napari_vnet.runtime.ThreadChoice`, or a count, 0/None for the automatic
        choice keeping ``reserve`` cores free: :func:`napari_vnet.workflows.threads.use_threads`),
        and ``backend`` (:func:`napari_vnet.inference.backends.for_backend`).
        ``seconds`` of the outcome: inference, pre- and post-processing included."""
        from napari_vnet.inference import PredictionCancelled, predict
        from napari_vnet.inference.backends import for_backend
        from napari_vnet.runtime import is_oom
        from napari_vnet.workflows.outputs import clean_labels, pop_label_options
        from napari_vnet.workflows.threads import use_threads

        t0 = time.perf_counter()
        kwargs = dict(settings or {})
        threads = kwargs.pop("threads", None)
        backend = kwargs.pop("backend", "torch")
        cleanup = pop_label_options(kwargs)
        if progress is not None:
            kwargs["progress"] = progress
        if should_stop is not None:
            kwargs["should_stop"] = should_stop
        try:
            with use_threads(threads, reserve=reserve) as used:
                model = for_backend(self.model, self.card, backend, kwargs)
                pred = predict(image, model, self.card, spacing=spacing, **kwargs)
        except PredictionCancelled:
            return JobCancelled(time.perf_counter() - t0)
        except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is both
            if not is_oom(exc):
                raise
            return JobFailed(_oom_message(name, kwargs, exc), exc)
        except ValueError as exc:
            log.info("predict refused %r", name, exc_info=True)
            shown = self.weights.name if self.weights is not None else "these weights"
            return JobFailed(f"Cannot segment '{name}' with {shown}: {exc}", exc)
        if should_stop is not None and should_stop():  # cancelled during the last batch
            return JobCancelled(time.perf_counter() - t0)
        if cleanup:
            where = spacing if spacing is not None else getattr(image, "spacing", None)
            pred.labels = clean_labels(pred.labels, spacing=where, **cleanup)
        return JobDone(
            labels=pred.labels,
            card=self.card,
            seconds=float(pred.seconds),
            device=str(pred.device),
            amp=pred.amp,
            batch_size=int(pred.batch_size),
            windows=int(pred.windows),
            uncertainty=pred.uncertainty,
            probabilities=pred.probabilities,
            threads=used.threads,
            uncertainty_score=_scan_score(pred.uncertainty, pred.labels),
        )


def _scan_score(uncertainty: np.ndarray | None, labels: np.ndarray) -> float | None:
    """The uncertainty score of a prediction (None without an uncertainty map)."""
    if uncertainty is None:
        return None
    from napari_vnet.correct.uncertainty import scan_score

    return scan_score(uncertainty, labels if labels.shape == uncertainty.shape else None)


def refusal_text(issues) -> str | None:
    """The refusing issues' texts joined by "; ", or None when the model takes the image."""
    return "; ".join(i.text for i in issues if i.refuses) or None


def _oom_message(name: str, settings: dict[str, Any], exc: BaseException) -> str:
    where = settings.get("device", "auto")
    tips = ["set Batch size to 1"]
    if settings.get("tta"):
        tips.append("turn off test-time augmentation")
    if where not in ("cpu",):
        tips.append("choose the CPU device (slower, but uses main memory)")
    tips.append("close other programs or crop the image")
    return (
        f"Out of memory while segmenting '{name}' (device {where}): {exc}\nTry: {'; '.join(tips)}."
    )


# ----------------------------------------------------------------------- the dock's run


def check_image(image: np.ndarray, name: str, emit: Callable[[Any], None]) -> JobFailed | None:
    """A 3-D array of numbers with some finite values, or why not; NaN/infinite voxels
    are reported through ``emit`` as a warning :class:`Message`."""
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


def segment_request(
    req: RunRequest,
    emit: Callable[[Any], None],
    should_stop: Callable[[], bool],
    arch_label: Callable[[str], str] = str,
) -> Outcome:
    """The Segment dock's run: load the weights (their architecture must be the one chosen,
    named by ``arch_label``), read and check the image, segment it. Progress and notes go
    to ``emit``; ``seconds`` of the outcome counts from the start, loading included."""
    t0 = time.perf_counter()
    emit(Message(f"Loading {req.weights.name}…"))
    try:
        seg = Segmenter.load(req.weights, folds=req.folds, checkpoint=req.checkpoint)
    except WeightsUnusable as exc:
        return JobFailed(
            f"Cannot use weights {req.weights.name}: {exc}\n"
            "Choose another weights file (the shipped models are listed first).",
            exc.__cause__,
        )
    arch = seg.card.arch
    if arch != req.arch:
        return JobFailed(
            f"{req.weights.name} holds a {arch_label(arch)} model but "
            f"{arch_label(req.arch)} is selected: choose {arch_label(arch)} or other weights."
        )
    if should_stop():
        return JobCancelled(time.perf_counter() - t0)

    emit(Message(f"Reading {req.image_name}…"))
    image = np.asarray(req.image)
    problem = check_image(image, req.image_name, emit)
    if problem is not None:
        return problem

    emit(Message(f"Segmenting {req.image_name}…"))
    outcome = seg.segment(
        image,
        name=req.image_name,
        spacing=req.spacing,
        settings={**req.settings, "threads": req.threads},
        progress=lambda done, total: emit(Progress(int(done), int(total))),
        should_stop=should_stop,
        reserve=1,  # the GUI's core
    )
    if not isinstance(outcome, JobFailed):
        outcome.seconds = time.perf_counter() - t0
    return outcome


def recommended_settings(card, device: Any = "auto") -> dict[str, Any]:
    """The run settings a card recommends under ``history["inference"]`` (else the
    defaults): ``overlap``, ``tta``, ``amp`` and the post-processing ``postprocess``
    operations; for foreign weights ``tta`` and ``amp`` are their producer's on ``device``
    and ``producer`` says so (:func:`napari_vnet.workflows.producer.producer_defaults`)."""
    from napari_vnet.inference.postprocess import OPERATIONS
    from napari_vnet.workflows.producer import producer_defaults

    rec = card.history.get("inference", {}) if isinstance(card.history, dict) else {}
    rec = rec if isinstance(rec, dict) else {}
    ops = rec.get("postprocess")
    own = producer_defaults(card, device)
    return {
        "overlap": float(rec.get("overlap", 0.5)),
        "tta": own.tta if own else bool(rec.get("tta", False)),
        "amp": own.amp if own else "auto",
        "producer": own.describe() if own else "",
        "postprocess": [
            op for op in OPERATIONS if ops is True or (isinstance(ops, list | tuple) and op in ops)
        ],
    }


def result_info(
    card, model_name: str, weights, settings: dict[str, Any], spacing, done: JobDone
) -> dict[str, Any]:
    """What a result layer records of its run (``metadata["napari_vnet"]``); with the
    run's ``uncertainty_score`` when it has one."""
    info = {
        "model": card.arch,
        "model_name": model_name,
        "weights": str(weights),
        "description": card.description,
        "settings": {
            **{k: (v if not isinstance(v, list) else list(v)) for k, v in settings.items()},
            "spacing": list(spacing) if spacing else None,
        },
        "run": {
            "seconds": round(done.seconds, 3),
            "device": done.device,
            "amp": done.amp,
            "batch_size": done.batch_size,
            "windows": done.windows,
        },
    }
    if done.uncertainty_score is not None:
        info["uncertainty_score"] = round(float(done.uncertainty_score), 5)
    return info


# ------------------------------------------------------------------------ one file


def write_class_sidecar(label_path: str | os.PathLike, card) -> Path:
    """``<stem>.labels.json`` beside a written label map: the card's class names with the
    colours napari-vnet shows them in, so the file reopens with names and colours."""
    from napari_vnet.io.label_names import classes_with_colors, write_label_classes

    return write_label_classes(label_path, classes_with_colors(card.classes))


def write_labels(labels: np.ndarray, path: str | os.PathLike, vol, card) -> Path:
    """Write a label map with ``vol``'s geometry and its class sidecar; the path written."""
    from napari_vnet.io import write_volume

    written = write_volume(labels, path, like=vol, is_label=True)
    write_class_sidecar(written, card)  # names and colours when reopened
    return written


def segment_file(
    seg: Segmenter,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    settings: dict[str, Any],
    progress: Callable[[int, int], Any] | None = None,
    note: Callable[[str], Any] | None = None,
    started: float | None = None,
    extras: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read ``source``, check it against the card, segment it and write the label map to
    ``out`` (and the files ``extras`` asks for: :func:`napari_vnet.workflows.outputs.write_extras`,
    their paths in the summary); the run's summary (``seconds``: inference with pre/post-processing;
    ``total_seconds``: since ``started``, a ``time.perf_counter()`` value, or since this
    call). Issues of an image the model takes go to ``note``, one line each; raises
    :class:`SegmentRefused` naming the input when it is not segmented."""
    from napari_vnet.io import VolumeReadError, VolumeWriteError, read_volume
    from napari_vnet.workflows.input_check import format_issues
    from napari_vnet.workflows.outputs import write_extras

    started = time.perf_counter() if started is None else started
    try:
        vol = read_volume(source)
    except (VolumeReadError, FileNotFoundError) as exc:
        raise SegmentRefused(str(exc)) from exc
    log.info("read %s: shape %s, spacing %s mm", source, vol.shape, vol.spacing)
    issues = seg.input_issues(vol)
    lines = [f"{source}: {line}" for line in format_issues(issues)]
    if refusal_text(issues):
        raise SegmentRefused("\n".join(lines))
    for line in lines:
        if note is not None:
            note(line)
    done = seg.segment(vol.array, name=str(source), spacing=vol.spacing, settings=settings,
                       progress=progress)  # fmt: skip
    if isinstance(done, JobFailed):
        raise SegmentRefused(f"{source}: {done.error or done.message}")
    if isinstance(done, JobCancelled):  # only with a should_stop, which is not given
        raise SegmentRefused(f"{source}: cancelled")
    try:
        written = write_labels(done.labels, out, vol, seg.card)
        more = write_extras(done.labels, written, vol, seg.card, str(source), extras or {})
    except (VolumeWriteError, OSError, ValueError) as exc:
        raise SegmentRefused(str(exc)) from exc
    return {**_file_summary(seg, source, written, vol, done, settings, started), **more}


def _file_summary(seg, source, written, vol, done: JobDone, settings, started) -> dict[str, Any]:
    values, counts = np.unique(done.labels, return_counts=True)
    return {
        "input": str(source),
        "output": str(written),
        "weights": str(seg.weights),
        "arch": seg.card.arch,
        "seconds": round(done.seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "voxels": int(np.prod(vol.shape)),
        "shape": list(vol.shape),
        "spacing": [float(s) for s in vol.spacing],
        "device": done.device,
        "amp": done.amp,
        "windows": done.windows,
        "threads": done.threads,
        "backend": settings.get("backend", "torch"),
        "tta": bool(settings.get("tta")),
        "postprocess": settings.get("postprocess") or [],
        "labels": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
    }
