"""The shipped sample phantom: files, generator script, npe2 sample-data contribution."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from napari_vnet.sample_data import SAMPLE_FILES, sample_paths
from napari_vnet.sample_data.make_sample import SAMPLE_SEED, parse_seeds

from napari_vnet._sample_data import IMAGE_NAME, LABELS_NAME, phantom_ct
from napari_vnet.io import read_volume
from napari_vnet.phantoms import make_phantom


def test_sample_files_exist_and_are_small():
    paths = sample_paths()
    total = 0
    for p in paths.values():
        assert p.is_file(), p
        total += p.stat().st_size
    assert total < 5 * 1024 * 1024
    assert {p.name for p in paths.values()} == set(SAMPLE_FILES)


def test_sample_files_match_the_generator():
    """The committed files are exactly what make_sample.py writes from make_phantom."""
    paths = sample_paths()
    image, labels = read_volume(paths["ct"]), read_volume(paths["labels"])
    ref_img, ref_lab, classes = make_phantom(SAMPLE_SEED)
    assert image.array.dtype == np.int16 and labels.array.dtype == np.uint8
    np.testing.assert_array_equal(image.array, ref_img.array)
    np.testing.assert_array_equal(labels.array, ref_lab.array)
    np.testing.assert_allclose(image.spacing, ref_img.spacing, rtol=1e-5)
    np.testing.assert_allclose(image.origin, ref_img.origin, atol=1e-3)
    np.testing.assert_allclose(labels.spacing, image.spacing)
    doc = json.loads(paths["classes"].read_text())
    assert doc["seed"] == SAMPLE_SEED
    assert [c["name"] for c in doc["classes"]] == [c.name for c in classes]


def test_make_sample_script_writes_a_dataset(tmp_path):
    script = sample_paths()["ct"].parent / "make_sample.py"
    out = tmp_path / "ds"
    subprocess.run(
        [
            sys.executable,
            str(script),
            "--out",
            str(out),
            "--seeds",
            "3,5",
            "--shape",
            "16",
            "32",
            "32",
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "classes.json",
        "phantom_003_ct.nii.gz",
        "phantom_003_labels.nii.gz",
        "phantom_005_ct.nii.gz",
        "phantom_005_labels.nii.gz",
    ]
    lab = read_volume(out / "phantom_005_labels.nii.gz")
    ref = make_phantom(5, shape=(16, 32, 32))[1]
    np.testing.assert_array_equal(lab.array, ref.array)


def test_parse_seeds():
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    with pytest.raises(Exception, match="range"):
        parse_seeds("5-2")


def test_phantom_ct_layer_data_tuples_share_geometry():
    (img, img_kw, img_type), (lab, lab_kw, lab_type) = phantom_ct()
    assert (img_type, lab_type) == ("image", "labels")
    assert img.shape == lab.shape and img.dtype == np.int16
    assert img_kw["scale"] == lab_kw["scale"]
    assert img_kw["translate"] == lab_kw["translate"]
    assert img_kw["scale"][0] > img_kw["scale"][1]  # anisotropic: thick slices
    assert img_kw["name"] == IMAGE_NAME and lab_kw["name"] == LABELS_NAME
    assert img_kw["contrast_limits"] == (-160.0, 240.0)
    assert lab_kw["features"]["class"][1] == "liver"
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4}


@pytest.mark.gui
def test_open_sample_in_napari(make_napari_viewer):
    import napari

    viewer = make_napari_viewer()
    viewer.open_sample("napari-vnet", "phantom_ct")
    layers = {layer.name: layer for layer in viewer.layers}
    image, labels = layers[IMAGE_NAME], layers[LABELS_NAME]
    assert isinstance(image, napari.layers.Image)
    assert isinstance(labels, napari.layers.Labels)
    np.testing.assert_allclose(image.scale, labels.scale)
    np.testing.assert_allclose(image.translate, labels.translate)
    np.testing.assert_allclose(image.affine.affine_matrix, labels.affine.affine_matrix)
    # the physical extent is that of the file: shape * spacing, in LPS mm
    vol = read_volume(sample_paths()["ct"])
    np.testing.assert_allclose(image.scale, vol.spacing, rtol=1e-6)
    np.testing.assert_allclose(image.translate, vol.origin, atol=1e-4)
    # a world point maps to the same voxel in both layers; that voxel is liver
    liver_voxel = np.argwhere(labels.data == 1)[0]
    world = image.data_to_world(liver_voxel)
    np.testing.assert_allclose(labels.world_to_data(world), liver_voxel, atol=1e-6)
    assert labels.features.loc[labels.features["index"] == 1, "class"].item() == "liver"
    assert labels.get_color(1) is not None
    assert image.metadata["napari_vnet"]["spacing"] == pytest.approx(list(vol.spacing))
