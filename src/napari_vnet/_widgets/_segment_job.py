"""The "Segment volume" Run button's thread: no Qt or viewer access.

:class:`SegmentJob` is what the dock hands to a napari generator ``thread_worker``: its
:meth:`SegmentJob.events` generator runs the use case,
:func:`napari_vnet.workflows.segment.segment_request`, in a helper thread (``predict``
reports progress through a callback, not by yielding) and yields what that thread reports
through a queue, so the worker can stream progress to the GUI and be stopped between
steps. It ends by *returning* a :class:`~napari_vnet.workflows.segment.JobDone`,
``JobFailed`` or ``JobCancelled`` (never raising: superqt treats a RuntimeError escaping a
generator worker as "worker deleted" and silently drops it, which would hide e.g. a torch
OOM).

Inside the helper thread torch's intra-op threads are limited (one core is left for the
GUI) and restored afterwards.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from napari_vnet.workflows import segment as segment_flow
from napari_vnet.workflows.segment import JobFailed, Outcome, RunRequest

log = logging.getLogger(__name__)

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
    def events(self) -> Iterator[segment_flow.Progress | segment_flow.Message]:
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

    def _run(self, emit: Callable[[Any], None]) -> Outcome:
        from napari_vnet._widgets._weights_panel import arch_name

        return segment_flow.segment_request(
            self.request, emit, self.should_stop, arch_label=arch_name
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


def _unexpected_message(req: RunRequest, exc: BaseException) -> str:
    return (
        f"Segmentation of '{req.image_name}' with {req.weights.name} failed: "
        f"{type(exc).__name__}: {exc}\nSee the log for details; the viewer is unchanged."
    )
