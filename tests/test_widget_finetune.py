"""The "Fine-tune model" dock in a real napari window, training in a real thread."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from napari_vnet._widgets import _edits
from napari_vnet._widgets._finetune_pairs import check_same_geometry
from napari_vnet._widgets.finetune import CORRECTED, EDITED, WHOLE, FinetuneWidget
from napari_vnet.workflows.finetune import GeometryMismatch, default_output_path, user_weights_dir

SCALE = (2.0, 1.0, 1.0)
TIMEOUT_MS = 150_000


pytestmark = pytest.mark.usefixtures("config_dir")


def blob_volume(seed: int = 0):
    """A 16x32x32 image with a bright ellipsoid and its true mask."""
    z, y, x = np.mgrid[:16, :32, :32]
    truth = (((z - 8) / 5.0) ** 2 + ((y - 15) / 9.0) ** 2 + ((x - 17) / 8.0) ** 2) <= 1.0
    rng = np.random.default_rng(seed)
    image = (100.0 * truth + rng.normal(0, 20, truth.shape)).astype(np.float32)
    return image, truth.astype(np.uint8)


def save_tiny_weights(path: Path) -> Path:
    from napari_vnet.models import ClassInfo, ModelCard, build_model, save_checkpoint

    card = ModelCard(
        arch="unet3d",
        arch_kwargs={"channels": [4, 8]},
        classes=[ClassInfo(0, "background"), ClassInfo(1, "blob")],
        spacing=SCALE,
        patch_size=(16, 16, 16),
    )
    return save_checkpoint(build_model(card), card, path)


@pytest.fixture
def base_weights(tmp_path) -> Path:
    return save_tiny_weights(tmp_path / "models" / "tiny.pt")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def correct_slices(layer, truth, zs):
    """Paint the true mask into slices ``zs`` through the layer API (paint events fire)."""
    for z in zs:
        yy, xx = np.nonzero(truth[z])
        layer.data_setitem((np.full(yy.shape, z), yy, xx), 1)


def open_docks(viewer):
    _, seg = viewer.window.add_plugin_dock_widget("napari-vnet", "Segment volume")
    _, ft = viewer.window.add_plugin_dock_widget("napari-vnet", "Fine-tune model")
    seg, ft = seg.content, ft.content  # docks come in scroll areas (_widgets._docking)
    assert isinstance(ft, FinetuneWidget)
    return seg, ft


def small_settings(ft, iterations):
    ft.stop_combo.setCurrentText("iterations")
    ft.iterations_spin.setValue(iterations)
    ft.patch_edit.setText("16")
    ft.batch_spin.setValue(1)
    ft.device_combo.setCurrentText("cpu")


@pytest.mark.gui
@pytest.mark.slow
def test_train_on_painted_slices_then_resegment(make_napari_viewer, qtbot, base_weights):
    from napari.layers import Labels

    from napari_vnet._widgets._session import recent_weights
    from napari_vnet.models import load_checkpoint

    viewer = make_napari_viewer()
    image_data, truth = blob_volume()
    image = viewer.add_image(image_data, scale=SCALE, name="scan")
    labels = viewer.add_labels(np.zeros_like(truth), scale=SCALE, name="corrected")
    seg, ft = open_docks(viewer)
    assert seg.select_weights(base_weights)
    ft.refresh_base_weights()
    assert ft.base_weights() == base_weights  # follows the Segment dock by default
    assert Path(ft.out_edit.text()) == base_weights.parent / "tiny-ft1.pt"

    correct_slices(labels, truth, [5, 8, 11])
    labels.paint((3, 2, 2), 0)  # erasing background changes nothing: not an edit
    assert _edits.records(labels.metadata) == [(0, [5, 8, 11])]
    assert "3" in ft.count_label.text()
    ft.add_pair(image, labels)
    assert ft.voxels_combo.currentText() == CORRECTED
    small_settings(ft, iterations=6)
    labels_before = labels.data.copy()
    base_hash = sha(base_weights)

    with qtbot.waitSignal(ft.weights_saved, timeout=TIMEOUT_MS) as saved:
        worker = ft.train()
        assert worker is not None
    qtbot.waitUntil(lambda: ft._worker is None, timeout=10_000)

    out = Path(saved.args[0])
    assert out == base_weights.parent / "tiny-ft1.pt" and out.is_file()
    assert sha(base_weights) == base_hash  # the base is never overwritten
    assert ft.curve.iterations == list(range(1, 7))
    assert len(ft.curve.plotted["loss"]) == 6  # laid out for painting, not only stored
    assert all(np.isfinite(ft.curve.losses))
    assert ft.progress.value() == 100
    np.testing.assert_array_equal(labels.data, labels_before)  # user labels untouched
    model, card = load_checkpoint(out)
    # the best checkpoint (smoothed training loss: no validation with 3 slices) is one of
    # the two evaluation points of a 6-iteration run
    assert card.history["iterations"] == card.history["best_iteration"] in (5, 6)
    assert [c.value for c in card.classes] == [0, 1]

    assert out.resolve() in [p.resolve() for p in recent_weights()]
    assert seg.current_weights is not None and seg.current_weights.resolve() == out.resolve()
    listed = [Path(str(c)).resolve() for c in seg.model.weights.choices if c]
    assert out.resolve() in listed

    assert Path(ft.out_edit.text()) == base_weights.parent / "tiny-ft2.pt"  # next version
    n_layers = len(viewer.layers)
    with qtbot.waitSignal(seg.prediction_added, timeout=TIMEOUT_MS) as added:
        assert ft.segment_with_new_weights() is not None
    new = added.args[0]
    assert isinstance(new, Labels) and new in viewer.layers
    assert len(viewer.layers) == n_layers + 1
    assert new.data.shape == truth.shape
    np.testing.assert_array_equal(labels.data, labels_before)


@pytest.mark.gui
def test_cancel_keeps_a_loadable_best_checkpoint(
    make_napari_viewer, qtbot, base_weights, monkeypatch
):
    from napari_vnet.models import load_checkpoint

    def not_here(*args, **kwargs):
        raise AssertionError("training ran in the napari process, not in its child process")

    monkeypatch.setattr("napari_vnet.training.finetune", not_here)

    viewer = make_napari_viewer()
    image_data, truth = blob_volume(1)
    image = viewer.add_image(image_data, scale=SCALE)
    labels = viewer.add_labels(truth.copy(), scale=SCALE)
    ft = FinetuneWidget(viewer)
    ft.set_base_weights(base_weights)
    ft.add_pair(image, labels)
    ft.voxels_combo.setCurrentText(WHOLE)
    ft.stop_combo.setCurrentText("minutes")
    ft.minutes_spin.setValue(2.0)
    config = ft.training_config()
    assert (config.iterations, config.minutes, config.eval_seconds) == (None, 2.0, 15.0)
    small_settings(ft, iterations=100_000)
    config = ft.training_config()
    assert (config.device, config.iterations, config.minutes) == ("cpu", 100_000, None)
    assert config.lr is None and config.patch_size == (16, 16, 16)  # auto lr: the engine's
    out = base_weights.parent / "cancelled.pt"
    ft.set_output_path(out)

    with qtbot.waitSignal(ft.weights_saved, timeout=TIMEOUT_MS) as saved:
        assert ft.train() is not None
        qtbot.waitUntil(lambda: len(ft.curve.losses) >= 3, timeout=TIMEOUT_MS)
        ft.cancel()
    qtbot.waitUntil(lambda: ft._worker is None, timeout=30_000)

    assert Path(saved.args[0]) == out and out.is_file()
    assert "Cancelled" in ft.status_label.text()
    model, card = load_checkpoint(out)
    assert 3 <= card.history["iterations"] < 100_000
    assert ft.train_btn.isEnabled() and not ft.cancel_btn.isEnabled()


@pytest.mark.gui
def test_new_class_is_added_to_the_card_and_named(make_napari_viewer, qtbot, base_weights):
    from napari_vnet.models import read_card

    viewer = make_napari_viewer()
    image_data, truth = blob_volume(2)
    image = viewer.add_image(image_data, scale=SCALE)
    labels = viewer.add_labels(np.zeros_like(truth), scale=SCALE)
    correct_slices(labels, truth, [7, 8])
    labels.paint((8, 28, 28), 2)  # a structure the base model does not know
    ft = FinetuneWidget(viewer)
    ft.set_base_weights(base_weights)
    ft.add_pair(image, labels)
    ft.class_names_edit.setText("2=kidney")
    small_settings(ft, iterations=2)
    with qtbot.waitSignal(ft.weights_saved, timeout=TIMEOUT_MS) as saved:
        assert ft.train() is not None
    card = read_card(saved.args[0])
    assert [(c.value, c.name) for c in card.classes] == [
        (0, "background"),
        (1, "blob"),
        (2, "kidney"),
    ]


@pytest.mark.parametrize(
    "labels_kw, what",
    [
        ({"data_shape": (16, 32, 30)}, "shape"),
        ({"scale": (1.0, 1.0, 1.0)}, "scale"),
        ({"translate": (0.0, 4.0, 0.0)}, "translate"),
        ({"affine": np.diag([1.0, -1.0, 1.0, 1.0])}, "affine"),
        ({"rotate": 30}, "rotate"),
    ],
)
def test_geometry_mismatch_message_names_layers_and_property(labels_kw, what):
    from napari.layers import Image, Labels

    image_data, truth = blob_volume()
    image = Image(image_data, scale=SCALE, name="scan")
    kw = dict(labels_kw)
    shape = kw.pop("data_shape", truth.shape)
    kw.setdefault("scale", SCALE)
    labels = Labels(np.ones(shape, np.uint8), name="other", **kw)
    with pytest.raises(GeometryMismatch, match=f"'scan'.*'other'.*{what}") as err:
        check_same_geometry(image, labels)
    assert "resample" in str(err.value)
    check_same_geometry(image, Labels(truth, scale=SCALE))  # same grid: accepted
    with pytest.raises(GeometryMismatch, match="3D volume"):
        check_same_geometry(Image(image_data[0]), Labels(truth[0]))


@pytest.mark.gui
def test_widget_refuses_mismatched_pair(make_napari_viewer):
    viewer = make_napari_viewer()
    image_data, truth = blob_volume()
    image = viewer.add_image(image_data, scale=SCALE, name="scan")
    labels = viewer.add_labels(truth.copy(), scale=SCALE, translate=(0, 3, 0), name="other")
    ft = FinetuneWidget(viewer)
    with pytest.raises(GeometryMismatch, match="translate"):
        ft.add_pair(image, labels)
    ft._on_add_pair_clicked()  # the button path: an error notification, no pair
    assert ft.pairs == [] and ft.pair_list.count() == 0
    ft.image_combo.setCurrentIndex(ft.image_combo.findText("scan"))
    ft.labels_combo.setCurrentIndex(ft.labels_combo.findText("other"))
    ft.voxels_combo.setCurrentText(WHOLE)
    ft.new_model_radio.setChecked(True)
    assert ft.train() is None  # refused before any worker starts
    assert ft._worker is None


@pytest.mark.gui
def test_edited_only_without_edits_is_refused_and_mark_reviewed_fixes_it(
    make_napari_viewer, base_weights
):
    viewer = make_napari_viewer()
    image_data, truth = blob_volume()
    image = viewer.add_image(image_data, scale=SCALE)
    labels = viewer.add_labels(truth.copy(), scale=SCALE)
    ft = FinetuneWidget(viewer)
    ft.set_base_weights(base_weights)
    ft.add_pair(image, labels)
    assert ft.train() is None  # nothing edited or reviewed yet

    viewer.dims.set_point(0, 6 * SCALE[0])  # world coordinates: slice 6
    assert ft.mark_current_slice() == 6
    assert _edits.records(labels.metadata) == [(0, [6])]
    assert "1" in ft.count_label.text() and "1 annotated" in ft.pair_list.item(0).text()
    # looking along x now: marks and paint go to axis 2
    viewer.dims.order = (2, 0, 1)
    viewer.dims.set_point(2, 20)
    assert ft.mark_current_slice() == 20
    labels.paint((3, 4, 9), 3)
    assert _edits.records(labels.metadata) == [(0, [6]), (2, [9, 20])]
    assert ft.mark_current_slice(reviewed=False) == 20
    assert _edits.records(labels.metadata) == [(0, [6]), (2, [9])]


@pytest.mark.gui
def test_export_dataset_writes_nnunet_layout(make_napari_viewer, qtbot, tmp_path):
    from napari_vnet.io import Volume, read_volume, write_volume

    viewer = make_napari_viewer()
    image_data, truth = blob_volume()
    image = viewer.add_image(image_data, scale=SCALE, name="scan")
    labels = viewer.add_labels(np.zeros_like(truth), scale=SCALE, name="corr")
    correct_slices(labels, truth, [8])
    img_path = write_volume(Volume(image_data, spacing=SCALE), tmp_path / "b.nii.gz")
    lab_path = write_volume(
        Volume(truth * 2, spacing=SCALE), tmp_path / "b_seg.nii.gz", is_label=True
    )
    ft = FinetuneWidget(viewer)
    ft.add_pair(image, labels)
    ft.add_file_pair(img_path, lab_path, annotated={"axis": 0, "slices": [7, 9]})
    assert len(ft.pairs) == 2 and "2 annotated" in ft.pair_list.item(1).text()
    ft.add_file_pair(img_path, lab_path, annotated={"axis": 0, "slices": [7, 9]})  # again
    assert len(ft.pairs) == 2  # handed over twice: still one pair
    moved = write_volume(
        Volume(truth, spacing=SCALE, origin=(0.0, 5.0, 0.0)), tmp_path / "moved_seg.nii.gz"
    )
    with pytest.raises(GeometryMismatch, match="origin"):
        ft.add_file_pair(img_path, moved)
    ft.class_names_edit.setText("1=blob, 2=blob2")
    ft.voxels_combo.setCurrentText(EDITED)  # the edited slices whole
    with qtbot.waitSignal(ft.dataset_exported, timeout=60_000) as done:
        assert ft.export_dataset(tmp_path / "ds") is not None
    ds = Path(done.args[0])
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["numTraining"] == 2
    assert meta["labels"] == {"background": 0, "blob": 1, "blob2": 2, "ignore": 3}
    assert meta["napari_vnet_annotated_slices"]["case_001"] == {"axis": 0, "slices": [7, 9]}
    lab0 = read_volume(ds / "labelsTr" / "case_000.nii.gz")
    assert np.allclose(lab0.spacing, SCALE)
    assert (lab0.array[8] == truth[8]).all() and (lab0.array[:8] == 3).all()
    lab1 = read_volume(ds / "labelsTr" / "case_001.nii.gz").array
    assert (lab1[7] == 2 * truth[7]).all() and (lab1[0] == 3).all()
    img0 = read_volume(ds / "imagesTr" / "case_000_0000.nii.gz")
    np.testing.assert_allclose(img0.array, image_data)
    assert labels.data[7].sum() == 0  # the layer was not changed by exporting


def test_default_output_path_versions_and_never_the_base(tmp_path, monkeypatch):
    base = tmp_path / "liver.pt"
    base.write_bytes(b"x")
    assert default_output_path(base) == tmp_path / "liver-ft1.pt"
    (tmp_path / "liver-ft1.pt").write_bytes(b"x")
    assert default_output_path(base) == tmp_path / "liver-ft2.pt"
    assert default_output_path(tmp_path / "liver-ft1.pt") == tmp_path / "liver-ft2.pt"
    assert default_output_path(None, "vnet") == user_weights_dir() / "vnet-new-ft1.pt"
    assert str(user_weights_dir()).startswith(str(tmp_path / "config"))
    import napari_vnet

    shipped = Path(napari_vnet.__file__).parent / "weights" / "vnet-phantom.pt"
    assert default_output_path(shipped) == user_weights_dir() / "vnet-phantom-ft1.pt"


@pytest.mark.gui
def test_engine_error_is_shown_and_the_dock_recovers(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image_data, truth = blob_volume()
    image = viewer.add_image(image_data, scale=SCALE)
    labels = viewer.add_labels(np.zeros_like(truth), scale=SCALE)  # nothing to learn
    ft = FinetuneWidget(viewer)
    ft.add_pair(image, labels)
    ft.voxels_combo.setCurrentText(WHOLE)
    ft.new_model_radio.setChecked(True)
    ft.width_spin.setValue(2)
    small_settings(ft, iterations=2)
    assert ft.train() is not None  # the engine refuses in the worker, quickly
    qtbot.waitUntil(lambda: ft._worker is None, timeout=60_000)
    assert "Training failed" in ft.status_label.text()
    assert "foreground" in ft.status_label.text()  # the engine's own explanation
    assert ft.train_btn.isEnabled() and not ft.cancel_btn.isEnabled()


def test_loss_curve_skips_missing_values_and_fits_the_data(qapp):
    from napari_vnet._widgets._losscurve import LossCurve

    curve = LossCurve()
    curve.add_point(1, 2.0)
    curve.add_point(2, float("nan"))
    curve.add_point(3, 1.5, val_dice=0.25)
    curve.add_point(4, None, val_dice=0.5)
    curve.redraw()
    assert curve.iterations == [1, 3] and curve.losses == [2.0, 1.5]
    assert curve.val_iterations == [3, 4] and curve.val_dice == [0.25, 0.5]
    lo, hi = curve.ylim
    assert 1.3 < lo < 1.5 and 2.0 < hi < 2.2  # the data's range, not 0..max
    assert curve.xlim == (1.0, 4.0)
    assert [y for _, y in curve.plotted["dice"]] == [0.25, 0.5]
    curve.clear()
    assert curve.losses == [] and curve.plotted["loss"] == []


def test_auto_patch_is_the_patch_the_weights_were_trained_with(tmp_path):
    from napari_vnet.models import ClassInfo, ModelCard, build_model, save_checkpoint
    from napari_vnet.workflows.finetune import trained_patch

    plain = save_tiny_weights(tmp_path / "plain.pt")
    assert trained_patch(plain) is None  # no training history: the engine uses the card's
    card = ModelCard(
        arch="unet3d",
        arch_kwargs={"channels": [4, 8]},
        classes=[ClassInfo(0, "background"), ClassInfo(1, "blob")],
        patch_size=(48, 96, 96),  # the recommended inference window
        history={"run": {"config": {"patch_size": [8, 16, 16]}}},
    )
    path = save_checkpoint(build_model(card), card, tmp_path / "trained.pt")
    assert trained_patch(path) == (8, 16, 16)


@pytest.mark.gui
def test_dock_job_and_cli_train_make_the_same_plan(make_napari_viewer, tmp_path, capsys):
    """The same files, base weights and settings through the Fine-tune dock's job (as the
    Scans dock hands corrected scans over: file pairs with annotated-slice records) and
    through ``napari-vnet train`` give the same training plan: classes (a label value the
    base lacks becomes a named new class), patch (the base's training patch), window,
    spacing, normalisation, annotated slices."""
    import json

    import SimpleITK as sitk

    from napari_vnet.cli import main
    from napari_vnet.models import ClassInfo, ModelCard, build_model, save_checkpoint
    from napari_vnet.workflows.finetune import plan_job

    card = ModelCard(
        arch="unet3d", arch_kwargs={"channels": [4, 8]},
        classes=[ClassInfo(0, "background"), ClassInfo(1, "blob")], spacing=SCALE,
        patch_size=(16, 32, 32), history={"run": {"config": {"patch_size": [8, 16, 16]}}},
    )  # fmt: skip
    base = save_checkpoint(build_model(card), card, tmp_path / "base.pt")
    image, truth = blob_volume(3)
    labels = truth.copy()
    labels[6:9, 2:5, 2:5] = 3  # a structure the base does not know
    paths = []
    for arr, name in ((image, "scan.nii.gz"), (labels, "scan.seg.nii.gz")):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(SCALE[::-1])
        sitk.WriteImage(img, str(tmp_path / name))
        paths.append(str(tmp_path / name))
    slices = [6, 7, 8]

    ft = FinetuneWidget(make_napari_viewer())
    ft.set_base_weights(base)
    ft.add_file_pair(paths[0], paths[1], annotated={"axis": 0, "slices": slices})
    ft.class_names_edit.setText("3=kidney")
    ft.voxels_combo.setCurrentText(EDITED)
    specs = ft._training_specs(only_edited=True)
    config = ft.training_config()
    dock = plan_job(specs, config, ft.base_weights()).to_dict()

    rc = main(
        ["train", "--image", paths[0], "--labels", paths[1], "--weights", str(base),
         "--annotated-slices", ",".join(map(str, slices)), "--class-names", "3=kidney",
         "--out", str(tmp_path / "cli.pt"), "--dry-run", "--json"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    cli = json.loads(captured.out.strip().splitlines()[-1])
    dock = json.loads(json.dumps(dock))
    dock["cases"] = cli["cases"] = None  # names: the dock shows the labels file's name
    assert dock == cli
    assert cli["classes"] == {"0": "background", "1": "blob", "3": "kidney"}
    assert cli["new_classes"] == {"3": "kidney"}
    assert cli["patch_size"] == [8, 16, 16] and cli["window"] == [16, 32, 32]
    assert cli["annotated_slices"] == [slices]
    assert not (tmp_path / "cli.pt").exists()  # a dry run writes nothing
