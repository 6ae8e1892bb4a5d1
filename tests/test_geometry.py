"""The geometry contract: napari world coordinates are LPS mm in (z, y, x) order.

For every array index (k, j, i) of a layer we open, ``layer.data_to_world((k, j, i))``
must equal ``reversed(image.TransformContinuousIndexToPhysicalPoint((i, j, k)))`` of
the same file read by SimpleITK itself, within 1e-3 mm, for identity, flipped and
oblique direction cosines in every format, in real napari layers.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from napari.layers import Image, Labels
from scipy.spatial.transform import Rotation

from napari_vnet._reader import napari_get_reader
from napari_vnet._writer import write_image, write_labels
from napari_vnet.io import layer_to_volume, read_volume, volume_to_layer_kwargs, write_volume

SHAPE = (5, 6, 7)  # (z, y, x), odd sizes on purpose
SPACING_ITK = (0.7, 0.8, 2.5)
ORIGIN_ITK = (10.25, -20.5, 30.75)
_OBLIQUE = Rotation.from_rotvec(np.deg2rad(25) * np.array([1, 2, 3]) / np.sqrt(14)).as_matrix()

DIRECTIONS = {  # ITK (x, y, z) direction matrices
    "identity": np.eye(3),
    # a NIfTI stored with an identity RAS affine reads in LPS as diag(-1, -1, 1)
    "ras_stored": np.diag([-1.0, -1.0, 1.0]),
    "rows_flipped": np.diag([1.0, -1.0, 1.0]),  # like the shared labels.nii.gz
    "oblique": _OBLIQUE,
    "oblique_improper": _OBLIQUE @ np.diag([1.0, 1.0, -1.0]),
}
FORMATS = [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr", ".img", ".gipl", ".gipl.gz"]
STORES_DIRECTION = {f for f in FORMATS if not f.startswith(".gipl")}  # GIPL keeps no direction


def make_image(direction: np.ndarray, dtype=np.int16) -> sitk.Image:
    arr = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 251).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING_ITK)
    img.SetOrigin(ORIGIN_ITK)
    img.SetDirection(np.asarray(direction, float).ravel())
    return img


def _indices() -> np.ndarray:
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in SHAPE], indexing="ij")).reshape(3, -1).T
    rng = np.random.default_rng(0)
    inside = rng.uniform(-0.5, np.array(SHAPE) - 0.5, size=(12, 3))  # continuous indices
    return np.vstack([corners, inside])


def assert_contract(layer, image: sitk.Image, tol: float = 1e-3) -> None:
    for idx in _indices():
        k, j, i = (float(v) for v in idx)
        expected = np.array(image.TransformContinuousIndexToPhysicalPoint((i, j, k)))[::-1]
        got = np.asarray(layer.data_to_world((k, j, i)), float)
        assert np.allclose(got, expected, atol=tol), (idx, got, expected)


@pytest.mark.parametrize("name", list(DIRECTIONS))
@pytest.mark.parametrize("ext", FORMATS)
def test_contract_for_every_format_and_orientation(tmp_path, ext, name):
    path = tmp_path / f"vol{ext}"
    sitk.WriteImage(make_image(DIRECTIONS[name]), str(path))
    reference = sitk.ReadImage(str(path))  # SimpleITK's own reading of the file
    if ext in STORES_DIRECTION:
        assert np.allclose(reference.GetDirection(), DIRECTIONS[name].ravel(), atol=1e-5)

    vol = read_volume(path)
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(reference))
    # the Volume's own mapping is the contract too
    for idx in _indices()[:4]:
        i, j, k = idx[::-1]
        ref = np.array(reference.TransformContinuousIndexToPhysicalPoint((i, j, k)))[::-1]
        assert np.allclose(vol.index_to_physical(idx), ref, atol=1e-3)

    kw = volume_to_layer_kwargs(vol)
    assert ("affine" in kw) == (ext in STORES_DIRECTION and name.startswith("oblique"))
    assert_contract(Image(vol.array, **kw), reference)
    assert_contract(Labels(vol.array.astype(np.uint8), **kw), reference)

    # ... and through the npe2 reader's layer data
    (data, layer_kw, layer_type) = napari_get_reader(str(path))(str(path))[0]
    layer = Labels(data, **layer_kw) if layer_type == "labels" else Image(data, **layer_kw)
    assert_contract(layer, reference)


@pytest.mark.parametrize("name", list(DIRECTIONS))
@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_layer_read_by_us_is_written_back_with_source_geometry(tmp_path, ext, name):
    src = tmp_path / "source.nii.gz"
    sitk.WriteImage(make_image(DIRECTIONS[name]), str(src))
    vol = read_volume(src)
    layer = Labels((vol.array % 7).astype(np.int32), **volume_to_layer_kwargs(vol))
    out = tmp_path / f"mask{ext}"
    assert write_labels(str(out), layer.data, layer._get_state()) == [str(out)]
    back = sitk.ReadImage(str(out))
    src_img = sitk.ReadImage(str(src))
    assert back.GetPixelID() == sitk.sitkUInt8  # smallest unsigned type for labels
    assert np.array_equal(sitk.GetArrayFromImage(back), layer.data)
    assert np.allclose(back.GetSpacing(), src_img.GetSpacing(), atol=1e-6)
    assert np.allclose(back.GetOrigin(), src_img.GetOrigin(), atol=1e-5)
    assert np.allclose(back.GetDirection(), src_img.GetDirection(), atol=1e-6)
    assert_contract(layer, back)


def _rotation_zyx(deg: float) -> np.ndarray:
    return Rotation.from_euler("x", deg, degrees=True).as_matrix()  # axis 0 (z) in napari order


@pytest.mark.parametrize(
    "layer_kwargs",
    [
        {"scale": (2.0, 0.5, 0.75), "translate": (-3.0, 4.0, 5.5)},
        {"scale": (2.0, -0.5, 0.75), "translate": (-3.0, 4.0, 5.5)},  # napari flip
        {"scale": (1.5, 1.0, 0.5), "translate": (1.0, 2.0, 3.0), "rotate": _rotation_zyx(30)},
        {
            "scale": (1.0, 2.0, 0.5),
            "affine": np.block(
                [[_OBLIQUE[::-1, ::-1], np.array([[7.0], [-8.0], [9.0]])], [np.zeros((1, 3)), 1.0]]
            ),
        },
    ],
    ids=["scale_translate", "negative_scale", "rotate", "affine"],
)
@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".nrrd"])
def test_napari_made_layer_is_written_from_its_transform(tmp_path, layer_kwargs, ext):
    data = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 300).astype(np.float32)
    layer = Image(data, **layer_kwargs)
    out = tmp_path / f"img{ext}"
    write_image(str(out), layer.data, layer._get_state())
    back = sitk.ReadImage(str(out))
    assert back.GetPixelID() == sitk.sitkFloat32
    assert np.array_equal(sitk.GetArrayFromImage(back), data)
    assert_contract(layer, back)
    # reading the written file gives a layer on exactly the same world positions
    vol = read_volume(out)
    assert_contract(Image(vol.array, **volume_to_layer_kwargs(vol)), back)


def test_layer_to_volume_inverts_volume_to_layer_kwargs():
    img = make_image(DIRECTIONS["oblique"])
    from napari_vnet.io import image_to_volume

    vol = image_to_volume(img)
    layer = Image(vol.array, **volume_to_layer_kwargs(vol))
    st = layer._get_state()
    back = layer_to_volume(
        layer.data, scale=st["scale"], translate=st["translate"], affine=st["affine"]
    )
    assert np.allclose(back.spacing, vol.spacing)
    assert np.allclose(back.origin, vol.origin)
    assert np.allclose(back.direction, vol.direction, atol=1e-9)
    # a moved layer is written where it now is, not at its source position
    layer.translate = (5.0, 0.0, 0.0)
    st = layer._get_state()
    moved = layer_to_volume(
        layer.data,
        scale=st["scale"],
        translate=st["translate"],
        affine=st["affine"],
        metadata=st["metadata"],
    )
    assert not np.allclose(moved.origin, vol.origin)
    assert np.allclose(moved.index_to_physical((1, 2, 3)), layer.data_to_world((1, 2, 3)))


def test_2d_and_4d_geometry(tmp_path):
    img2 = sitk.GetImageFromArray(np.arange(30, dtype=np.float32).reshape(5, 6))
    img2.SetSpacing((0.5, 2.0))
    img2.SetOrigin((1.0, -2.0))
    img2.SetDirection((1.0, 0.0, 0.0, -1.0))
    sitk.WriteImage(img2, str(tmp_path / "slice.nii.gz"))
    vol2 = read_volume(tmp_path / "slice.nii.gz")
    assert vol2.array.shape == (5, 6) and vol2.spacing == (2.0, 0.5)
    layer = Image(vol2.array, **volume_to_layer_kwargs(vol2))
    ref = sitk.ReadImage(str(tmp_path / "slice.nii.gz"))
    for j, i in [(0, 0), (4, 5), (2.5, 1.25)]:
        assert np.allclose(
            layer.data_to_world((j, i)), ref.TransformContinuousIndexToPhysicalPoint((i, j))[::-1]
        )

    arr4 = np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5)  # (t, z, y, x)
    img4 = sitk.GetImageFromArray(arr4, isVector=False)
    img4.SetSpacing((1.0, 2.0, 3.0, 1.5))
    img4.SetOrigin((4.0, 5.0, 6.0, 0.0))
    path4 = tmp_path / "series.nii.gz"
    sitk.WriteImage(img4, str(path4))
    vol4 = read_volume(path4)
    assert vol4.array.shape == (2, 3, 4, 5)
    layer4 = Image(vol4.array, **volume_to_layer_kwargs(vol4))
    ref4 = sitk.ReadImage(str(path4))
    for idx in [(0, 0, 0, 0), (1, 2, 3, 4), (0.5, 1, 2.5, 3)]:
        assert np.allclose(
            layer4.data_to_world(idx), ref4.TransformContinuousIndexToPhysicalPoint(idx[::-1])[::-1]
        )
    # and written back with the same 4-D geometry
    out = write_volume(vol4, tmp_path / "copy.nrrd")
    back = sitk.ReadImage(str(out))
    assert back.GetSpacing() == ref4.GetSpacing() and back.GetOrigin() == ref4.GetOrigin()
