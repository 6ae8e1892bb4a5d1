"""The "Segment volume" dock in a real napari viewer, with real thread workers and a tiny
real checkpoint saved in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
torch = pytest.importorskip("torch")

from napari.layers import Labels  # noqa: E402
from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402

from napari_vnet._widgets import _session  # noqa: E402
from napari_vnet._widgets.segment import SegmentWidget, available_devices  # noqa: E402
from napari_vnet.models import ClassInfo, ModelCard  # noqa: E402

pytestmark = pytest.mark.gui

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


@pytest.fixture(autouse=True)
def _config(tmp_path, monkeypatch):
    monkeypatch.setenv(_session.CONFIG_ENV, str(tmp_path / "config"))


@pytest.fixture
def notes():
    """Notifications dispatched during the test: list of (severity, message)."""
    got: list[tuple[str, str]] = []

    def grab(n):
        got.append((n.severity, str(n.message)))

    notification_manager.notification_ready.connect(grab)
    yield got
    notification_manager.notification_ready.disconnect(grab)


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


def test_run_real_thread_adds_labels_with_geometry_and_classes(qtbot, dock, ckpt, notes):
    viewer, w = dock
    image = viewer.add_image(
        volume(), name="ct", scale=(2.0, 0.8, 0.9), translate=(-10.0, 5.0, 3.0)
    )
    assert w.select_weights(ckpt)
    assert w.current_weights == ckpt
    assert w.model.current_arch == "vnet"
    assert "liver" in w.model.info.text() and "spleen" in w.model.info.text()
    assert w.image.value is image
    n_before = len(viewer.layers)

    with qtbot.waitSignal(w.prediction_added, timeout=RUN_TIMEOUT_MS) as blocker:
        worker = w.run()
        assert worker is not None
        assert w.run_button.text() == "Cancel"
    wait_done(qtbot, w)
    assert w.run_button.text() == "Run"

    layer = blocker.args[0]
    assert isinstance(layer, Labels)
    assert len(viewer.layers) == n_before + 1 and layer in viewer.layers
    assert layer.name == "ct [V-Net]"
    assert layer.data.shape == image.data.shape
    assert set(np.unique(layer.data)) <= {0, 1, 5}
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    np.testing.assert_allclose(layer.affine.affine_matrix, image.affine.affine_matrix)
    # class names in the features table (shown in napari's status bar under the cursor)
    feats = layer.features
    assert dict(zip(feats["index"], feats["class"], strict=True)) == {
        0: "background",
        1: "liver",
        5: "spleen",
    }
    np.testing.assert_allclose(layer.colormap.map(np.array([1]))[0], CLASSES[1].color)
    meta = layer.metadata["napari_vnet"]
    assert meta["weights"] == str(ckpt)
    assert meta["model"] == "vnet"
    assert meta["settings"]["overlap"] == 0.5
    np.testing.assert_allclose(meta["settings"]["spacing"], (2.0, 0.8, 0.9))
    assert not errors(notes)
    # the weights went to the recent list
    assert ckpt.resolve() in [p.resolve() for p in _session.recent_weights()]

    # running again makes a second layer and leaves the first (maybe edited) one alone
    layer.data[0, 0, 0] = 7
    first = layer.data.copy()
    with qtbot.waitSignal(w.prediction_added, timeout=RUN_TIMEOUT_MS) as blocker2:
        w.run()
    wait_done(qtbot, w)
    assert blocker2.args[0].name == "ct [V-Net] (2)"
    np.testing.assert_array_equal(layer.data, first)
    assert len(viewer.layers) == n_before + 2


def test_flipped_oblique_image_overlays_exactly(qtbot, dock, ckpt):
    viewer, w = dock
    angle = np.deg2rad(20)
    rot = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    flip = np.diag([-1.0, 1.0, -1.0])
    affine = np.eye(4)
    affine[:3, :3] = rot @ flip
    affine[:3, 3] = (12.0, -3.0, 7.5)
    image = viewer.add_image(volume((20, 18, 22)), name="oblique", scale=(1.5, 1, 1), affine=affine)
    assert w.select_weights(ckpt)
    w.set_image_layer(image)
    with qtbot.waitSignal(w.prediction_added, timeout=RUN_TIMEOUT_MS) as blocker:
        w.run()
    wait_done(qtbot, w)
    layer = blocker.args[0]
    np.testing.assert_allclose(
        layer._data_to_world.affine_matrix, image._data_to_world.affine_matrix
    )
    # a voxel corner maps to the same world point in both layers
    corner = np.array([19.0, 0.0, 21.0])
    np.testing.assert_allclose(layer.data_to_world(corner), image.data_to_world(corner), atol=1e-9)
    np.testing.assert_allclose(layer.metadata["napari_vnet"]["settings"]["spacing"], (1.5, 1, 1))


def test_cancel_adds_nothing_and_changes_nothing(qtbot, dock, ckpt, notes):
    viewer, w = dock
    viewer.add_image(volume((64, 48, 48)), name="big")
    edited = viewer.add_labels(np.zeros((64, 48, 48), np.uint8), name="my edits")
    edited.data[3:5, 3:5, 3:5] = 2
    before_data = edited.data.copy()
    names = [lyr.name for lyr in viewer.layers]
    assert w.select_weights(ckpt)
    w.overlap.value = 0.75  # many windows: the run lasts long enough to be cancelled
    w.run()
    qtbot.waitUntil(lambda: w._progress[0] >= 1, timeout=RUN_TIMEOUT_MS)
    assert w.is_running
    w.run_button.click()  # the Run button is Cancel while running
    wait_done(qtbot, w)
    assert [lyr.name for lyr in viewer.layers] == names
    np.testing.assert_array_equal(edited.data, before_data)
    assert not errors(notes)
    assert any("cancelled" in m.lower() for _, m in notes)
    assert w.run_button.text() == "Run" and w.run_button.isEnabled()


def test_worker_quit_also_cancels(qtbot, dock, ckpt):
    viewer, w = dock
    viewer.add_image(volume((64, 48, 48)), name="big")
    assert w.select_weights(ckpt)
    w.overlap.value = 0.75
    worker = w.run()
    qtbot.waitUntil(lambda: w._progress[0] >= 1, timeout=RUN_TIMEOUT_MS)
    job = w._job
    worker.quit()
    wait_done(qtbot, w)
    assert not job.alive
    assert len(viewer.layers) == 1


def test_bad_weights_file_is_refused_with_a_notification(qtbot, dock, tmp_path, notes):
    viewer, w = dock
    viewer.add_image(volume(), name="ct")
    bad = tmp_path / "random.pt"
    bad.write_bytes(np.random.default_rng(1).bytes(4096))
    assert not w.select_weights(bad)
    assert w.current_weights is None
    assert any("random.pt" in m for m in errors(notes))
    assert not w.run_button.isEnabled()
    assert w.run() is None  # refused, with a notification
    assert len(viewer.layers) == 1


def test_weights_broken_after_choosing_fail_in_the_worker(qtbot, dock, ckpt, notes):
    viewer, w = dock
    viewer.add_image(volume(), name="ct")
    assert w.select_weights(ckpt)
    ckpt.write_bytes(b"not a checkpoint at all")  # replaced on disk after choosing
    w.run()
    wait_done(qtbot, w)
    assert len(viewer.layers) == 1
    errs = errors(notes)
    assert errs and "tiny_vnet.pt" in errs[-1]
    # the viewer keeps working
    viewer.add_points([[1, 2, 3]])
    assert len(viewer.layers) == 2


def test_nan_image_gives_an_error_and_no_layer(qtbot, dock, ckpt, notes):
    viewer, w = dock
    viewer.add_image(np.full((16, 16, 16), np.nan, np.float32), name="broken")
    assert w.select_weights(ckpt)
    w.run()
    wait_done(qtbot, w)
    assert len(viewer.layers) == 1
    assert any("NaN" in m for m in errors(notes))


def test_2d_image_refused(qtbot, dock, notes):
    viewer, w = dock
    flat = viewer.add_image(np.zeros((32, 32), np.float32), name="slice")
    assert w.image.value is None  # only 3D volumes are offered
    assert not w.set_image_layer(flat)
    assert any("2D" in m for _, m in notes)
    assert w.image_note.isVisibleTo(w) and "2D" in w.image_note.text()
    assert w.run() is None
    assert len(viewer.layers) == 1


def test_architecture_mismatch_is_refused(qtbot, dock, ckpt, tmp_path, notes):
    viewer, w = dock
    viewer.add_image(volume(), name="ct")
    assert w.select_weights(ckpt)
    assert w.run_button.isEnabled()
    w.model.arch.value = "unet3d"
    assert "V-Net" in w.model.problem and "3D U-Net" in w.model.problem
    assert not w.run_button.isEnabled()
    assert w.run() is None
    assert errors(notes) and "V-Net" in errors(notes)[-1]
    # choosing 3D U-Net weights sets the architecture back in line
    unet = save_tiny(tmp_path / "tiny_unet.pt", arch="unet3d")
    assert w.select_weights(unet)
    assert w.model.current_arch == "unet3d" and w.model.problem is None
    assert w.run_button.isEnabled()


def test_weights_list_devices_and_find_dock(qtbot, dock, ckpt, tmp_path):
    viewer, w = dock
    _session.add_recent_weights(ckpt)
    other = save_tiny(tmp_path / "other.pt")
    _session.add_recent_weights(other)
    assert _session.recent_weights()[:2] == [other.resolve(), ckpt.resolve()]
    w.refresh_weights()
    values = [c for c in w.model.weights.choices]
    assert str(other.resolve()) in values and str(ckpt.resolve()) in values
    devices = [v for _, v in available_devices()]
    assert devices[0] == "auto" and "cpu" in devices
    assert ("cuda" in devices) == torch.cuda.is_available()
    assert _session.find_dock_widget(viewer, SegmentWidget) is w
    other.unlink()
    assert other.resolve() not in _session.recent_weights()
