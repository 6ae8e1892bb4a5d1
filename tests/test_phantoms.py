"""The synthetic torso CT phantoms: deterministic, CT-like, with a consistent geometry."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vnet.phantoms import (
    DEFAULT_SHAPE,
    KIDNEYS,
    LIVER,
    PHANTOM_CLASSES,
    SPINE,
    SPLEEN,
    make_phantom,
)

SMALL = (24, 48, 48)


@pytest.fixture(scope="module")
def default_phantom():
    return make_phantom(0)


def test_same_seed_gives_identical_phantom():
    a_img, a_lab, a_cls = make_phantom(7, shape=SMALL)
    b_img, b_lab, b_cls = make_phantom(7, shape=SMALL)
    np.testing.assert_array_equal(a_img.array, b_img.array)
    np.testing.assert_array_equal(a_lab.array, b_lab.array)
    assert a_img.spacing == b_img.spacing and a_img.origin == b_img.origin
    assert a_cls == b_cls


def test_different_seeds_differ_in_anatomy_and_spacing():
    imgs = [make_phantom(s, shape=SMALL) for s in (1, 2, 3)]
    spacings = {img.spacing for img, _, _ in imgs}
    assert len(spacings) == 3
    for (_, la, _), (_, lb, _) in zip(imgs, imgs[1:], strict=False):
        assert not np.array_equal(la.array, lb.array)


def test_default_shape_dtypes_and_anisotropic_spacing(default_phantom):
    image, labels, classes = default_phantom
    assert image.shape == labels.shape == DEFAULT_SHAPE
    assert image.array.dtype == np.int16
    assert labels.array.dtype == np.uint8
    sz, sy, sx = image.spacing
    assert sy == sx and 1.5 <= sx <= 2.8
    assert 3.0 <= sz <= 5.0
    assert sz / sx > 1.2  # anisotropic: slices thicker than the in-plane pixels
    assert [c.value for c in classes] == [0, 1, 2, 3, 4]
    assert [c.name for c in classes] == ["background", "liver", "spleen", "kidneys", "spine"]


def test_labels_and_image_share_geometry(default_phantom):
    image, labels, _ = default_phantom
    assert labels.spacing == image.spacing
    assert labels.origin == image.origin
    np.testing.assert_array_equal(labels.direction, image.direction)
    np.testing.assert_array_equal(image.direction, np.eye(3))
    assert labels.metadata["is_label"] is True
    assert image.metadata["modality"] == "CT"


def test_every_class_present_with_plausible_size(default_phantom):
    image, labels, _ = default_phantom
    lab = labels.array
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4}
    counts = {v: int((lab == v).sum()) for v in (LIVER, SPLEEN, KIDNEYS, SPINE)}
    # the liver is the largest organ; every structure spans many voxels
    assert counts[LIVER] == max(counts.values())
    assert min(counts.values()) > 800


def test_hounsfield_ranges(default_phantom):
    image, labels, _ = default_phantom
    hu, lab = image.array.astype(float), labels.array
    corner = hu[:, :4, :4]
    assert abs(np.median(corner) + 1000) < 50  # air outside the body
    inner = {}
    from scipy import ndimage

    for v in (LIVER, SPLEEN, KIDNEYS, SPINE):
        core = ndimage.binary_erosion(lab == v, iterations=1)
        inner[v] = float(np.median(hu[core]))
    assert 90 <= inner[LIVER] <= 115
    assert 115 <= inner[SPLEEN] <= 140
    assert 160 <= inner[KIDNEYS] <= 195
    assert 400 <= inner[SPINE] <= 850
    assert inner[LIVER] < inner[SPLEEN] < inner[KIDNEYS] < inner[SPINE]
    body = hu > -500
    fat = body & (hu < -50) & (lab == 0)
    assert fat.sum() > 1000 and -140 < np.median(hu[fat]) < -60
    assert hu.min() >= -1024 and hu.max() <= 3071


def test_anatomical_sides(default_phantom):
    """LPS frame: the liver lies towards the patient's right (low x), spleen to the left."""
    _, labels, _ = default_phantom
    lab = labels.array
    x = np.arange(lab.shape[2])
    liver_x = (lab == LIVER).sum((0, 1)) @ x / (lab == LIVER).sum()
    spleen_x = (lab == SPLEEN).sum((0, 1)) @ x / (lab == SPLEEN).sum()
    spine_y = np.argwhere(lab == SPINE)[:, 1].mean()
    liver_y = np.argwhere(lab == LIVER)[:, 1].mean()
    assert liver_x < spleen_x
    assert spine_y > liver_y  # the spine is posterior (larger y)
    # two kidneys, one each side of the spine
    from scipy import ndimage

    _, n = ndimage.label(lab == KIDNEYS)
    assert n == 2


@pytest.mark.parametrize("shape", [(16, 32, 32), (17, 33, 41), SMALL])
def test_explicit_shapes_including_odd(shape):
    image, labels, _ = make_phantom(3, shape=shape)
    assert image.shape == labels.shape == shape
    assert set(np.unique(labels.array)) == {0, 1, 2, 3, 4}


def test_small_grid_keeps_the_physical_size():
    """A coarser grid covers the same field of view (larger voxels), not a smaller body."""
    big, _, _ = make_phantom(5)
    small, _, _ = make_phantom(5, shape=SMALL)
    fov_big = np.asarray(big.shape) * np.asarray(big.spacing)
    fov_small = np.asarray(small.shape) * np.asarray(small.spacing)
    np.testing.assert_allclose(fov_big, fov_small, rtol=1e-6)


def test_explicit_spacing_sets_the_grid():
    image, labels, _ = make_phantom(4, spacing=(5.0, 3.0, 3.0))
    assert image.spacing == (5.0, 3.0, 3.0)
    fov = np.asarray(image.shape) * 3.0
    assert 150 < fov[1] < 320
    # both given and too small: the anatomy shrinks to fit, still all classes
    image, labels, _ = make_phantom(4, shape=(16, 40, 40), spacing=(4.0, 2.0, 2.0))
    assert image.shape == (16, 40, 40)
    assert labels.array[:, 0, :].max() == 0 and labels.array[:, :, -1].max() == 0
    assert (image.array[:, :, 0] < -900).all()  # air all round: the body fits


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seed=-1), "seed"),
        (dict(seed=0, shape=(4, 32, 32)), "shape"),
        (dict(seed=0, spacing=(0.0, 1.0, 1.0)), "spacing"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, match):
    seed = kwargs.pop("seed")
    with pytest.raises(ValueError, match=match):
        make_phantom(seed, **kwargs)


def test_class_table_is_not_shared_mutable():
    _, _, classes = make_phantom(0, shape=(16, 32, 32))
    classes[1].name = "changed"
    assert PHANTOM_CLASSES[1].name == "liver"
