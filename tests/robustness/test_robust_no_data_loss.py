"""No work is lost: a user-edited Labels layer is never overwritten by inference or
training (also while the user keeps painting during a run), bad training input in the
Fine-tune dock gives a message instead of a crash, and the writers refuse to overwrite
the file an image was read from unless asked."""

from __future__ import annotations

import hashlib
from pathlib import Path

import napari  # noqa: F401
import numpy as np
import pytest

from conftest import small_volume, write_image

pytestmark = pytest.mark.gui
TIMEOUT_MS = 120_000


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def errors(notes):
    return [m for s, m in notes if s.lower() == "error"]


def paint_voxel(layer, zyx, value=1):
    """Paint one voxel through the layer API (undo history and paint events, like a brush)."""
    layer.data_setitem(tuple(np.array([v]) for v in zyx), value)


def blob(shape=(16, 24, 24)):
    z, y, x = np.indices(shape)
    truth = ((z - 8) ** 2 + (y - 12) ** 2 + (x - 12) ** 2 < 30).astype(np.uint8)
    image = np.random.default_rng(0).normal(0, 0.3, shape).astype(np.float32) + truth
    return image, truth


def test_inference_never_overwrites_edited_labels(make_napari_viewer, qtbot, tiny_weights,
                                                  config_dir):  # fmt: skip
    from napari_vnet._widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    image_data, truth = blob()
    image = viewer.add_image(image_data, name="ct")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.select_weights(tiny_weights)
    # the user already corrected a previous result, under the name a new result would get
    edited = viewer.add_labels(truth * 1, name="ct [V-Net]")
    paint_voxel(edited, (8, 12, 12))
    mine = edited.data.copy()
    widget.set_image_layer(image)
    for n in (2, 3):
        with qtbot.waitSignal(widget.prediction_added, timeout=TIMEOUT_MS) as added:
            widget.run()
        paint_voxel(edited, (2, 2, 2))  # keeps painting while the run goes on
        mine[2, 2, 2] = 1
        qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
        # a new layer, or (the dock's default) the previous unedited result updated
        assert added.args[0].name in (f"ct [V-Net] ({n})", "ct [V-Net] (2)")
        assert added.args[0] is not edited
    assert viewer.layers["ct [V-Net]"] is edited
    np.testing.assert_array_equal(edited.data, mine)
    # a cancelled run changes nothing either
    n_layers = len(viewer.layers)
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert len(viewer.layers) == n_layers
    np.testing.assert_array_equal(edited.data, mine)


def test_training_never_overwrites_labels_or_base_weights(make_napari_viewer, qtbot,
                                                          tiny_weights, config_dir):  # fmt: skip
    from napari_vnet._widgets.finetune import WHOLE, FinetuneWidget

    viewer = make_napari_viewer()
    image_data, truth = blob()
    image = viewer.add_image(image_data, name="scan")
    labels = viewer.add_labels(truth.copy(), name="corrected")
    ft = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(ft)
    ft.set_base_weights(tiny_weights)
    ft.add_pair(image, labels)
    ft.voxels_combo.setCurrentText(WHOLE)
    ft.stop_combo.setCurrentText("iterations")
    ft.iterations_spin.setValue(3)
    ft.patch_edit.setText("16")
    ft.batch_spin.setValue(1)
    ft.device_combo.setCurrentText("cpu")
    base_hash = sha(tiny_weights)
    mine = labels.data.copy()
    with qtbot.waitSignal(ft.weights_saved, timeout=TIMEOUT_MS) as saved:
        assert ft.train() is not None
        paint_voxel(labels, (1, 1, 1))  # the user keeps painting while it trains
        mine[1, 1, 1] = 1
    qtbot.waitUntil(lambda: ft._worker is None, timeout=TIMEOUT_MS)
    out = Path(saved.args[0])
    assert out != tiny_weights and out.is_file()
    assert sha(tiny_weights) == base_hash  # base weights untouched
    np.testing.assert_array_equal(labels.data, mine)  # labels untouched, new edits kept
    # the base file itself is refused as output
    ft.set_output_path(tiny_weights)
    assert ft.train() is None
    assert sha(tiny_weights) == base_hash


def test_finetune_dock_bad_input_gives_messages(make_napari_viewer, qtbot, tiny_weights,
                                                config_dir, notes, tmp_path):  # fmt: skip
    from napari_vnet._widgets.finetune import WHOLE, FinetuneWidget
    from napari_vnet.workflows.finetune import GeometryMismatch

    viewer = make_napari_viewer()
    image_data, truth = blob()
    image = viewer.add_image(image_data, name="scan")
    wrong_shape = viewer.add_labels(truth[:, :20], name="cropped")
    wrong_spacing = viewer.add_labels(truth, name="coarse", scale=(2.0, 1.0, 1.0))
    empty = viewer.add_labels(np.zeros_like(truth), name="empty")
    ft = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(ft)
    ft.set_base_weights(tiny_weights)
    with pytest.raises(GeometryMismatch, match="'cropped' has shape"):
        ft.add_pair(image, wrong_shape)
    with pytest.raises(GeometryMismatch, match="scale"):
        ft.add_pair(image, wrong_spacing)
    # files of different grids are refused by name
    img_file = write_image(tmp_path / "scan.nii.gz", small_volume((8, 10, 12)))
    lab_file = write_image(tmp_path / "scan_seg.nii.gz", small_volume((8, 10, 12)) % 2,
                           spacing=(3.0, 1.0, 1.0))  # fmt: skip
    with pytest.raises(GeometryMismatch, match="scan_seg.nii.gz"):
        ft.add_file_pair(img_file, lab_file)
    assert ft.pairs == []

    # output not writable (even for root): under a regular file
    ft.add_pair(image, empty)
    ft.voxels_combo.setCurrentText(WHOLE)
    ft.stop_combo.setCurrentText("iterations")
    ft.iterations_spin.setValue(2)
    ft.patch_edit.setText("16")
    ft.device_combo.setCurrentText("cpu")
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    ft.set_output_path(blocker / "tuned.pt")
    notes.clear()
    assert ft.train() is None
    assert errors(notes) and "a file" in errors(notes)[-1]

    # empty labels: the engine refuses, the dock shows it, nothing is written
    ft.set_output_path(tmp_path / "tuned.pt")
    notes.clear()
    assert ft.train() is not None
    qtbot.waitUntil(lambda: ft._worker is None, timeout=TIMEOUT_MS)
    assert errors(notes) and "Training failed" in errors(notes)[-1]
    assert "background" in errors(notes)[-1]
    assert not (tmp_path / "tuned.pt").exists()
    assert len(viewer.layers) == 4  # the viewer is fine and unchanged


def test_writers_refuse_to_overwrite_the_source_image(make_napari_viewer, tmp_path):
    from napari_vnet._writer import write_image as npe2_write_image
    from napari_vnet._writer import write_labels
    from napari_vnet.io import VolumeWriteError, read_volume, write_volume

    viewer = make_napari_viewer()
    path = write_image(tmp_path / "patient.nii.gz", small_volume().astype(np.float32))
    before = sha(path)
    (layer,) = viewer.open(str(path), plugin="napari-vnet")
    layer.data[0, 0, 0] = 123.0  # edited in napari
    meta = {k: getattr(layer, k) for k in ("scale", "translate", "rotate", "shear", "metadata")}
    meta["affine"] = layer.affine.affine_matrix
    with pytest.raises(VolumeWriteError, match="would overwrite the source image"):
        npe2_write_image(str(path), layer.data, meta)
    # a mask derived from the image cannot be saved over it either
    with pytest.raises(VolumeWriteError, match="would overwrite the source image"):
        write_labels(str(path), (layer.data > 50).astype(np.uint8), meta)
    with pytest.raises(Exception, match="overwrite the source"):  # noqa: B017
        viewer.layers.save(str(path), selected=False, plugin="napari-vnet")
    assert sha(path) == before
    # another name works, and the core writes over the source only when asked
    (saved,) = npe2_write_image(str(tmp_path / "patient_edited.nii.gz"), layer.data, meta)
    assert read_volume(saved).array[0, 0, 0] == 123.0
    vol = read_volume(path)
    write_volume(vol.with_array(vol.array + 1), path, overwrite_source=True)
    assert sha(path) != before
