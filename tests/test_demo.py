"""`napari-vnet demo`: the phantom, both docks, the shipped V-Net selected, one click runs."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from napari_vnet.commands.demo import launch_demo
from napari_vnet.weights import resolve_weights

pytestmark = pytest.mark.usefixtures("config_dir")


@pytest.mark.gui
@pytest.mark.slow
def test_demo_sets_up_and_one_click_segments(make_napari_viewer, qtbot):
    from napari.layers import Image, Labels
    from qtpy.QtCore import Qt

    from napari_vnet._widgets._session import Session

    viewer = make_napari_viewer()
    demo = launch_demo(viewer)
    assert isinstance(demo.image, Image) and isinstance(demo.labels, Labels)
    assert Session.of(viewer).segment is demo.segment
    assert Session.of(viewer).finetune is demo.finetune
    assert demo.segment.current_weights == resolve_weights("vnet-phantom")
    assert demo.segment.image_layer is demo.image
    assert viewer.layers.selection.active is demo.image
    assert demo.worker is None  # nothing runs until the click

    with qtbot.waitSignal(demo.segment.prediction_added, timeout=300_000) as blocker:
        qtbot.mouseClick(demo.segment.run_button, Qt.MouseButton.LeftButton)
    layer = blocker.args[0]
    assert isinstance(layer, Labels) and layer in viewer.layers
    assert demo.predictions == [layer]
    np.testing.assert_allclose(layer.scale, demo.image.scale)
    np.testing.assert_allclose(layer.translate, demo.image.translate)
    assert layer.data.shape == demo.labels.data.shape
    # the sample phantom (seed 2026) was never seen in training: V-Net segments it well
    pred, gt = np.asarray(layer.data), np.asarray(demo.labels.data)
    dice = [2 * ((pred == v) & (gt == v)).sum() / ((pred == v).sum() + (gt == v).sum())
            for v in (1, 2, 3, 4)]  # fmt: skip
    assert np.mean(dice) >= 0.85, dice


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.mark.gui
@pytest.mark.slow
def test_demo_command_auto_screenshot_and_quit(tmp_path):
    """The console command under the test display: --auto, then screenshot, then exit 0."""
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        pytest.skip("no X display (pytest-xvfb provides one)")
    shot = tmp_path / "demo.png"
    env = dict(os.environ, NAPARI_VNET_CONFIG_DIR=str(tmp_path / "config"))
    proc = subprocess.run(
        [sys.executable, "-m", "napari_vnet.cli", "demo", "--auto",
         "--screenshot", str(shot), "--quit-after", "400"],
        capture_output=True, text=True, timeout=480, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert shot.is_file()
    width, height = _png_size(shot)
    assert width > 600 and height > 400
