"""The Segment dock's job (no Qt): outcomes, error messages, torch threads, cancellation.

The generator is driven by hand here, as napari's GeneratorWorker would drive it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vnet._widgets._segment_job import SegmentJob
from napari_vnet.workflows.segment import (
    JobCancelled,
    JobDone,
    JobFailed,
    Message,
    Progress,
    RunRequest,
)
from test_widget_segment_support import save_tiny, volume


def drive(job: SegmentJob, on_item=None):
    """Run ``job.events()`` to the end; returns (items, outcome)."""
    gen = job.events()
    items = []
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return items, stop.value
        items.append(item)
        if on_item is not None:
            on_item(item)


def request(weights, image=None, arch="vnet", **settings) -> RunRequest:
    return RunRequest(
        image=volume() if image is None else image,
        image_name="ct",
        spacing=(2.0, 1.0, 1.0),
        weights=weights,
        arch=arch,
        settings={"device": "cpu", **settings},
        threads=1,
    )


@pytest.fixture
def ckpt(tmp_path):
    return save_tiny(tmp_path / "tiny.pt")


def test_done_with_progress_and_threads_restored(ckpt):
    torch.set_num_threads(2)
    items, outcome = drive(SegmentJob(request(ckpt)))
    assert isinstance(outcome, JobDone)
    assert outcome.labels.shape == volume().shape
    progress = [i for i in items if isinstance(i, Progress)]
    assert progress and progress[-1].done == progress[-1].total
    assert torch.get_num_threads() == 2  # the worker's limit did not leak


def test_cancel_between_batches(ckpt):
    job = SegmentJob(request(ckpt, image=volume((64, 40, 40)), overlap=0.75))

    def stop_at_first_progress(item):
        if isinstance(item, Progress):
            job.stop()

    items, outcome = drive(job, stop_at_first_progress)
    assert isinstance(outcome, JobCancelled)
    done = [i.done for i in items if isinstance(i, Progress)]
    assert done and done[-1] < [i.total for i in items if isinstance(i, Progress)][-1]
    assert not job.alive


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: out of memory"),
        MemoryError("no room"),
    ],
)
def test_out_of_memory_says_what_to_do(ckpt, monkeypatch, error):
    import napari_vnet.inference as inference

    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(inference, "predict", boom)
    _, outcome = drive(SegmentJob(request(ckpt, tta=True)))
    assert isinstance(outcome, JobFailed)
    assert "Out of memory" in outcome.message
    assert "Batch size to 1" in outcome.message and "test-time augmentation" in outcome.message


def test_unexpected_runtime_error_is_reported_not_swallowed(ckpt, monkeypatch):
    # superqt drops RuntimeErrors escaping a generator worker; the job must return them
    import napari_vnet.inference as inference

    def boom(*args, **kwargs):
        raise RuntimeError("cuDNN exploded")

    monkeypatch.setattr(inference, "predict", boom)
    _, outcome = drive(SegmentJob(request(ckpt)))
    assert isinstance(outcome, JobFailed) and "cuDNN exploded" in outcome.message


def test_architecture_mismatch_and_bad_file(ckpt, tmp_path):
    _, outcome = drive(SegmentJob(request(ckpt, arch="unet3d")))
    assert isinstance(outcome, JobFailed)
    assert "V-Net" in outcome.message and "3D U-Net" in outcome.message
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    _, outcome = drive(SegmentJob(request(bad)))
    assert isinstance(outcome, JobFailed) and "bad.pt" in outcome.message


def test_some_nan_voxels_warn_all_nan_fails(ckpt):
    img = volume()
    img[0, :4, :4] = np.nan
    items, outcome = drive(SegmentJob(request(ckpt, image=img)))
    assert isinstance(outcome, JobDone)
    warnings = [i for i in items if isinstance(i, Message) and i.level == "warning"]
    assert warnings and "16 NaN" in warnings[0].text
    _, outcome = drive(SegmentJob(request(ckpt, image=np.full((8, 8, 8), np.inf, np.float32))))
    assert isinstance(outcome, JobFailed) and "no finite values" in outcome.message
