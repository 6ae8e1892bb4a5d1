"""Shared helpers and fixtures of the "Segment volume" dock tests (no tests here): a tiny
real three-class checkpoint saved in tmp_path, a docked widget in a real viewer, the
errors among the notifications (the ``notes`` and ``config_dir`` fixtures: conftest.py)."""

from __future__ import annotations

import napari  # noqa: F401
import numpy as np
import pytest
import torch
from napari.utils.notifications import NotificationSeverity

from napari_vnet._widgets.segment import SegmentWidget
from napari_vnet.models import ClassInfo, ModelCard

CLASSES = [
    ClassInfo(0, "background"),
    ClassInfo(1, "liver", (0.8, 0.3, 0.2, 1.0)),
    ClassInfo(5, "spleen", (0.2, 0.4, 0.9, 1.0)),
]
RUN_TIMEOUT_MS = 60_000


def tiny_card(arch: str = "vnet") -> ModelCard:
    kwargs = {"vnet": {"channels": [4, 8], "kernel_size": 3}, "unet3d": {"channels": [4, 8]}}
    return ModelCard(
        arch=arch,
        arch_kwargs=kwargs[arch],
        classes=list(CLASSES),
        normalization={"kind": "zscore"},
        spacing=(2.0, 1.0, 1.0),
        patch_size=(16, 16, 16),
        description="tiny test network",
    )


def save_tiny(path, arch: str = "vnet"):
    from napari_vnet.models import build_model, save_checkpoint

    torch.manual_seed(0)
    card = tiny_card(arch)
    save_checkpoint(build_model(card), card, path)
    return path


@pytest.fixture
def ckpt(tmp_path):
    return save_tiny(tmp_path / "tiny_vnet.pt")


@pytest.fixture
def dock(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment volume")
    yield viewer, widget
    if widget.worker is not None:  # never leave a thread running past the test
        widget.cancel()
        widget.worker.await_workers(msecs=RUN_TIMEOUT_MS)


def volume(shape=(24, 28, 20), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 1, shape).astype(np.float32)
    img[6:14, 8:20, 5:15] += 3.0
    return img


def wait_done(qtbot, widget):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)


def errors(notes):
    return [m for s, m in notes if s == NotificationSeverity.ERROR]
