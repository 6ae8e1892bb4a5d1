"""A folder of scans, segmented: read ahead, segment each case, write in the background.

Qt-free core behind ``napari-vnet predict INPUT_DIR --out OUT_DIR`` (the cases, their
outputs and the summary are :mod:`napari_vnet.workflows.batch`; each case is segmented by
:class:`napari_vnet.workflows.segment.Segmenter`; the whole run, shared among processes,
is :mod:`napari_vnet.workflows.batch_folder`).

:func:`predict_cases` runs one model over the cases. The next cases are read in a small
thread pool while the current one is segmented (as nnU-Net's preprocessing workers do),
and the outputs are written by a background thread, each file atomically (a temporary
file in the same folder, then ``os.replace``), the label map last - so a case whose label
map exists is complete, and a rerun skips it when the label map's record
(``<stem>_provenance.json``, :mod:`napari_vnet.workflows.batch_records`) names the same
weights; outputs made by other weights are neither skipped nor replaced without
``overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from napari_vnet.io.dicom_seg import require_highdicom, write_dicom_seg
from napari_vnet.workflows.batch import (
    Case,
    CaseResult,
    OutputPlan,
    _atomic_write,
    _write_json,
    label_statistics,
    plan_outputs,
)

log = logging.getLogger(__name__)

__all__ = ["predict_cases"]


# ----------------------------------------------------------------------------- running


def _background_priority() -> None:
    """Lower this thread's CPU priority (Linux: nice applies per thread), so that reading
    and writing take idle CPU time and never stall the inference threads' barriers."""
    import threading

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: run as is
        pass


class _Deferred(Future):
    """A future whose job runs in the thread that first asks for its result."""

    def __init__(self, fn, args, kwargs) -> None:
        super().__init__()
        self._job: tuple[Callable[..., Any], tuple, dict] | None = (fn, args, kwargs)

    def _run(self) -> None:
        if self._job is not None:
            fn, args, kwargs = self._job
            self._job = None
            try:
                self.set_result(fn(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - delivered through the future
                self.set_exception(exc)

    def result(self, timeout=None):
        self._run()
        return super().result(timeout)


class _InlineExecutor:
    """``workers=0``: jobs run in the calling thread, at once (``lazy=False``) or when
    their result is asked for (``lazy=True``: a read happens when the case's turn comes)."""

    def __init__(self, lazy: bool) -> None:
        self.lazy = lazy

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut = _Deferred(fn, args, kwargs)
        if not self.lazy:
            fut._run()
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _read_case(case: Case, card=None, prepare_kwargs: dict[str, Any] | None = None):
    """Read one case and, given a card, run its preprocessing too (on the read-ahead
    thread, so that the segmenting thread only runs the engine). Returns
    ``(volume, read seconds, Prepared or the exception preparing raised, or None)``."""
    from napari_vnet.workflows.batch_channels import channels_first, read_case_channels

    t0 = time.perf_counter()
    vol = read_case_channels(case.files)
    if vol.array.ndim < 3:
        raise ValueError(f"{case.path}: not a 3-D volume (shape {vol.shape})")
    t_read = time.perf_counter() - t0
    prepared: Any = None
    if card is not None:
        from napari_vnet.inference import prepare

        try:  # a multi-channel image goes to the engine as (C, z, y, x)
            prepared = prepare(channels_first(vol), card, spacing=vol.spacing,
                               **(prepare_kwargs or {}))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - reported when the case's turn comes
            prepared = exc
    return vol, t_read, prepared


def _result(case: Case, status: str, **fields) -> CaseResult:
    return CaseResult(key=case.key, stem=case.stem, input=case.path, status=status, **fields)


def _write_extras(case: Case, plan: OutputPlan, vol, done, card) -> list | None:
    """The statistics and probabilities files a plan asks for; the statistics written."""
    stats = None
    if plan.statistics is not None:
        stats = label_statistics(done.labels, vol, card.classes)
        record = {
            "case": case.stem,
            "input": case.path,
            "shape": list(vol.shape[: len(vol.spacing)]),
            "spacing_mm": [float(s) for s in vol.spacing[-3:]],
            "voxel_volume_ml": float(np.prod(vol.spacing[-3:])) / 1000.0,
            "classes": stats,
        }
        _write_json(plan.statistics, record)
    if plan.probabilities is not None and done.probabilities is not None:
        probs = np.asarray(done.probabilities, dtype=np.float16)

        def save(fh) -> None:
            np.savez(
                fh,
                probabilities=probs,
                label_values=np.asarray(card.label_values, np.int32),
                class_names=np.asarray([c.name for c in card.classes]),
                spacing=np.asarray(vol.spacing[-3:], float),
                origin=np.asarray(vol.origin[-3:], float),
                direction=np.asarray(vol.direction, float),
            )

        _atomic_write(plan.probabilities, save, binary=True)
    return stats


def _write_outputs(
    case: Case,
    plan: OutputPlan,
    vol,
    done,
    card,
    t_read: float,
    rank: int,
    timing: dict,
    weights: dict[str, Any] | None = None,
):
    """Write one case's outputs (label map last, between the two writes of its record);
    runs on the writer thread. ``done``: the case's
    :class:`~napari_vnet.workflows.segment.JobDone`."""
    from napari_vnet.workflows.batch_records import write_record
    from napari_vnet.workflows.segment import write_labels

    weights = weights or {}

    t_write = time.perf_counter()
    stats = _write_extras(case, plan, vol, done, card)
    plan.labels.parent.mkdir(parents=True, exist_ok=True)
    extra = {}
    if plan.fmt == "dicom-seg":
        extra["series_uid"] = str(require_highdicom()[0].UID())
    # the record first: a label map is never without one (nor taken for an input)
    write_record(plan, case, weights, complete=False, **extra)
    if plan.fmt == "dicom-seg":
        write_dicom_seg(done.labels, vol, card, plan.labels, series_uid=extra["series_uid"],
                        weights=weights.get("weights"))  # fmt: skip
    elif plan.fmt == "dicom-rtstruct":
        from napari_vnet.io.dicom_rtstruct import write_rtstruct

        write_rtstruct(done.labels, vol, card, plan.labels, weights=weights.get("weights"))
    else:
        write_labels(done.labels, plan.labels, vol, card)
    write_record(plan, case, weights, complete=True, **extra)
    return _result(
        case,
        "written",
        outputs=[str(p) for p in plan.files()],
        seconds=round(float(done.seconds), 3),
        threads=done.threads,
        total_seconds=round(time.perf_counter() - t_read, 3),
        shape=[int(s) for s in vol.shape],
        spacing=[float(s) for s in vol.spacing],
        statistics=stats,
        rank=rank,
        read_s=round(timing.get("read_s", 0.0), 3),
        prepare_s=round(timing.get("prepare_s", 0.0), 3),
        read_wait_s=round(timing.get("read_wait_s", 0.0), 3),
        write_s=round(time.perf_counter() - t_write, 3),
        weights=weights.get("weights"),
        weights_sha256=weights.get("weights_sha256"),
    )


def _skipped(case: Case, plan: OutputPlan, rank: int, record: dict) -> CaseResult:
    stats = None
    if plan.statistics is not None:
        try:
            stats = json.loads(plan.statistics.read_text(encoding="utf-8")).get("classes")
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s: unreadable statistics from an earlier run: %s", plan.statistics, exc)
    return _result(
        case,
        "skipped",
        outputs=[str(p) for p in plan.files()],
        statistics=stats,
        rank=rank,
        weights=record.get("weights"),
        weights_sha256=record.get("weights_sha256"),
    )


def _triage(
    cases: Sequence[Case], plans: Sequence[OutputPlan], weights: dict, overwrite: bool, rank: int
) -> tuple[list[CaseResult], list[tuple[Case, OutputPlan]]]:
    """``(results known now, cases to segment)``: a case is skipped only when its outputs
    are complete and its record names the same weights; outputs made by other weights
    (or not by napari-vnet) are neither skipped nor replaced without ``overwrite``."""
    from napari_vnet.workflows.batch_records import read_record, record_mismatch

    done: list[CaseResult] = []
    todo: list[tuple[Case, OutputPlan]] = []
    for case, plan in zip(cases, plans, strict=True):
        if case.error:
            done.append(_failed(case, case.error, rank))
            continue
        if not overwrite and plan.labels.exists():
            why = record_mismatch(plan, weights["weights_sha256"])
            if why:
                done.append(_failed(case, f"{why}; use --overwrite to replace it", rank))
                continue
            record = read_record(plan.record) or {}
            if record.get("complete") and plan.complete():
                done.append(_skipped(case, plan, rank, record))
                continue
        todo.append((case, plan))
    return done, todo


def _failed(case: Case, exc: BaseException | str, rank: int, t0: float | None = None) -> CaseResult:
    text = str(exc) or type(exc).__name__
    if case.path not in text:
        text = f"{case.path}: {text}"
    return _result(
        case,
        "failed",
        error=text,
        total_seconds=0.0 if t0 is None else round(time.perf_counter() - t0, 3),
        rank=rank,
    )


def _check_case(seg, case: Case, vol) -> str | None:
    """Model/image mismatches (napari_vnet.workflows.input_check) as warnings in the log; the
    refusal text when the model cannot take this image (channel count), else None."""
    from napari_vnet.workflows.segment import refusal_text

    issues = seg.input_issues(vol)
    for issue in issues:
        if not issue.refuses:
            log.warning("%s: %s", case.path, issue.text)
    return refusal_text(issues)


def predict_cases(
    cases: Sequence[Case],
    model,
    card,
    out_dir: str | os.PathLike,
    *,
    fmt: str = "same",
    overwrite: bool = False,
    statistics: bool = False,
    save_probabilities: bool = False,
    workers: int = 2,
    predict_kwargs: dict[str, Any] | None = None,
    rank: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_start: Callable[[Case, int, int], Any] | None = None,
    weights: str | os.PathLike | None = None,
) -> Iterator[CaseResult]:
    """Segment ``cases`` with one model; yield a :class:`CaseResult` per case.

    Each case's outputs get a record naming ``weights`` (the path shown) and the
    network's :func:`~napari_vnet.workflows.batch_records.weights_fingerprint`. Cases whose
    outputs all exist, made by the same weights, are skipped (unless ``overwrite``);
    existing outputs made by other weights fail (unless ``overwrite``); a case that cannot
    be read, segmented or written is yielded as ``failed`` and the run goes on. Up to
    ``workers`` cases are read ahead in a thread pool while the current one is segmented
    (reading holds at most ``workers`` volumes in memory); a single background thread
    writes the outputs (at most two cases wait for it). The read-ahead threads also run
    the card's preprocessing (:func:`napari_vnet.inference.prepare`: normalisation,
    resampling), so a case waiting in the pool holds its volume and its float32
    network input. ``workers=0`` reads, segments and writes one case after the other in
    the calling thread (no overlap). Results are yielded in the order cases finish,
    skipped ones first. ``on_start(case, i, n)`` is called before each case is segmented.
    """
    from napari_vnet.workflows.batch_records import weights_fingerprint
    from napari_vnet.workflows.segment import Segmenter

    produced_by = {
        "weights": None if weights is None else os.fspath(weights),
        "weights_sha256": weights_fingerprint(model, card),
        "arch": card.arch,
    }
    plans = [
        plan_outputs(c, out_dir, fmt, statistics=statistics, probabilities=save_probabilities)
        for c in cases
    ]
    done, todo = _triage(cases, plans, produced_by, overwrite, rank)
    yield from done
    if not todo:
        return
    settings = {**(predict_kwargs or {}), "return_probabilities": save_probabilities}
    seg = Segmenter(model, card, None if weights is None else Path(weights))
    pipeline = _Pipeline(seg, todo, settings, max(0, int(workers)), rank, produced_by)
    yield from pipeline.run(should_stop or (lambda: False), on_start)


class _Pipeline:
    """The cases to segment: read ahead by ``workers`` threads, segmented here one by one,
    written by one background thread (``workers=0``: all in the calling thread)."""

    def __init__(self, seg, todo, settings, workers: int, rank: int, produced_by: dict):
        from napari_vnet.workflows.threads import thread_choice

        self.seg, self.rank, self.produced_by = seg, rank, produced_by
        # chosen once per run: the read-ahead and writer threads run beside the engine
        helpers = workers + 1 if workers else 0
        threads = thread_choice(settings.get("threads"), helpers=helpers,
                                helpers_note="read-ahead and writer threads")  # fmt: skip
        self.settings = {**settings, "threads": threads}
        self.n = len(todo)
        self.upcoming = iter(todo)
        self.prepare_kwargs = {k: settings[k] for k in ("overlap", "batch_size") if k in settings}
        self.readers: _InlineExecutor | ThreadPoolExecutor
        self.writer: _InlineExecutor | ThreadPoolExecutor
        if workers == 0:
            self.readers, self.writer = _InlineExecutor(lazy=True), _InlineExecutor(lazy=False)
        else:
            self.readers = ThreadPoolExecutor(
                max_workers=workers,
                thread_name_prefix="napari-vnet-read",
                initializer=_background_priority,
            )
            self.writer = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="napari-vnet-write",
                initializer=_background_priority,
            )
        self.lookahead = max(1, workers)
        self.reads: deque[tuple[Case, OutputPlan, Future]] = deque()
        self.writes: deque[tuple[Case, Future, float]] = deque()

    def run(self, stop: Callable[[], bool], on_start) -> Iterator[CaseResult]:
        try:
            self._top_up()
            i = 0
            while self.reads:
                if stop():
                    break
                case, plan, fut = self.reads.popleft()
                self._top_up()
                i += 1
                yield from self._case(case, plan, fut, i, on_start)
            yield from self._written(keep=0)
        finally:
            for _, _, fut in self.reads:
                fut.cancel()
            self.readers.shutdown(wait=True, cancel_futures=True)
            self.writer.shutdown(wait=True)

    def _top_up(self) -> None:
        while len(self.reads) < self.lookahead:
            nxt = next(self.upcoming, None)
            if nxt is None:
                return
            read = self.readers.submit(_read_case, nxt[0], self.seg.card, self.prepare_kwargs)
            self.reads.append((nxt[0], nxt[1], read))

    def _case(self, case: Case, plan: OutputPlan, fut: Future, i: int, on_start):
        """Segment one case read ahead; queue its outputs for writing."""
        from napari_vnet.workflows.segment import JobFailed

        t0 = time.perf_counter()
        try:
            vol, t_read, prepared = fut.result()
        except Exception as exc:  # noqa: BLE001 - a broken file is reported, not fatal
            yield _failed(case, exc, self.rank, t0)
            return
        timing = {
            "read_s": t_read,
            "read_wait_s": time.perf_counter() - t0,
            "prepare_s": getattr(prepared, "seconds", 0.0),
        }
        log.info("read %s (%s) in %.2f s", case.path, vol.shape, t_read)
        refused = _check_case(self.seg, case, vol)
        if refused:
            yield _failed(case, refused, self.rank, t0)
            return
        if on_start is not None:
            on_start(case, i, self.n)
        try:
            if isinstance(prepared, Exception):
                raise prepared
            done = self.seg.segment(prepared if prepared is not None else vol, name=case.path,
                                    spacing=vol.spacing, settings=self.settings)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one failed case never stops the run
            log.debug("segmenting %s failed", case.path, exc_info=True)
            done = JobFailed(str(exc), exc)
        if isinstance(done, JobFailed):
            yield _failed(case, done.error or done.message, self.rank, t0)
            return
        yield from self._written(keep=1)  # bound the memory held by pending writes
        job = (case, plan, vol, done, self.seg.card, t0, self.rank, timing, self.produced_by)
        self.writes.append((case, self.writer.submit(_write_outputs, *job), t0))
        del vol, done, prepared, job
        while self.writes and self.writes[0][1].done():
            yield self._finished_write(*self.writes.popleft())

    def _written(self, keep: int) -> Iterator[CaseResult]:
        """Wait for pending writes until at most ``keep`` remain."""
        while len(self.writes) > keep:
            yield self._finished_write(*self.writes.popleft())

    def _finished_write(self, case: Case, fut: Future, t0: float) -> CaseResult:
        t_wait = time.perf_counter()
        try:
            result = fut.result()
        except Exception as exc:  # noqa: BLE001 - one failed case never stops the run
            log.debug("writing %s failed", case.path, exc_info=True)
            return _failed(case, exc, self.rank, t0)
        result.write_wait_s = round(time.perf_counter() - t_wait, 3)
        return result
