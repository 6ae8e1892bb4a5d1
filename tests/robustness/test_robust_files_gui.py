"""A real napari viewer opens bad files with napari-vnet: an error naming the file, no
layer added or replaced, and the viewer stays usable (the next good file opens)."""

from __future__ import annotations

import napari  # noqa: F401
import numpy as np
import pytest

from conftest import BAD_FILE_CASES, copy_dicom_series, make_bad_file, small_volume, write_image

pytestmark = pytest.mark.gui


def _error_text(exc: BaseException) -> str:
    """The error and its causes (napari wraps a reader's exception)."""
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return " | ".join(parts)


@pytest.fixture
def viewer_with_work(make_napari_viewer, config_dir):
    """A viewer holding an image and a user-edited Labels layer."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(0).normal(size=(8, 16, 16)), name="ct")
    edits = np.zeros((8, 16, 16), np.uint8)
    edits[2:5, 3:9, 4:10] = 3
    labels = viewer.add_labels(edits.copy(), name="my edits")
    return viewer, image, labels, edits


def test_bad_files_leave_the_viewer_running(viewer_with_work, tmp_path):
    viewer, image, labels, edits = viewer_with_work
    bad = [make_bad_file(kind, tmp_path) for kind in BAD_FILE_CASES]
    empty_folder = tmp_path / "no images"
    empty_folder.mkdir()
    (empty_folder / "notes.txt").write_text("nothing to see")
    bad.append(empty_folder)
    for path in bad:
        with pytest.raises(Exception) as err:  # noqa: B017 - napari's wrapper type varies
            viewer.open(str(path), plugin="napari-vnet")
        assert path.name in _error_text(err.value), _error_text(err.value)
        # nothing added, nothing replaced, the user's edits untouched
        assert list(viewer.layers) == [image, labels]
        np.testing.assert_array_equal(labels.data, edits)
    # still usable: a good file opens next to the existing work and renders
    good = write_image(tmp_path / "good scan.nii.gz", small_volume().astype(np.float32))
    (layer,) = viewer.open(str(good), plugin="napari-vnet")
    assert layer.name == "good scan" and len(viewer.layers) == 3
    viewer.dims.ndisplay = 3
    shot = viewer.screenshot(canvas_only=True)
    assert shot.ndim == 3 and shot.size > 0


def test_odd_files_open_in_the_viewer(viewer_with_work, tmp_path, shared_data):
    viewer, image, labels, _edits = viewer_with_work
    nan = np.ones((4, 10, 12), np.float32)
    nan[0, 0, 0], nan[1, 1, 1] = np.nan, np.inf
    files = {
        "two_d": write_image(tmp_path / "two_d.mha", np.linspace(0, 1, 120).reshape(10, 12)),
        "dyn": write_image(tmp_path / "dyn.nii.gz", np.linspace(0, 9, 960).reshape(2, 4, 10, 12)),
        "vec": write_image(tmp_path / "vec.nrrd", np.ones((4, 10, 12, 3), np.float32), vector=True),
        "nan": write_image(tmp_path / "nan.mha", nan),
        "f64": write_image(tmp_path / "f64.nrrd", np.linspace(0, 1, 420).reshape(5, 6, 14)),
        "thin": write_image(tmp_path / "thin.mha", np.linspace(0, 1, 30).reshape(1, 1, 30)),
        "ünï cödé": write_image(tmp_path / "ünï cödé.nii.gz", np.ones((3, 4, 5), np.float32)),
    }
    counts = {k: len(viewer.open(str(p), plugin="napari-vnet")) for k, p in files.items()}
    assert counts == {"two_d": 1, "dyn": 1, "vec": 3, "nan": 1, "f64": 1, "thin": 1, "ünï cödé": 1}
    # a 2D image opens, but Segment volume refuses it with a reason
    from napari_vnet._widgets.segment import SegmentWidget

    seg = SegmentWidget(viewer)
    assert seg.set_image_layer(viewer.layers["two_d"]) is False
    assert "is a 2D image" in seg._refusal(viewer.layers["two_d"])
    lo, hi = viewer.layers["nan"].contrast_limits
    assert np.isfinite([lo, hi]).all() and lo < hi
    # a DICOM folder with a missing slice opens, with a warning
    folder = tmp_path / "gap"
    copy_dicom_series(shared_data, folder, skip=(7,))
    with pytest.warns(UserWarning, match="irregular slice spacing"):
        (ct,) = viewer.open(str(folder), plugin="napari-vnet")
    assert ct.data.shape == (19, 512, 512)
    assert viewer.layers[0] is image and viewer.layers[1] is labels
    viewer.dims.current_step = (3, 0, 0)  # still responds
