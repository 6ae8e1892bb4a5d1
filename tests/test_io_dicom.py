"""DICOM: series discovery, ordering, whole-series reading, and the shared CT + labels overlay."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from napari.layers import Image, Labels
from scipy.spatial.transform import Rotation

from napari_vnet._reader import napari_get_reader
from napari_vnet.io import (
    VolumeReadError,
    find_series_of_file,
    list_dicom_series,
    read_header,
    read_volume,
)

LIVER, SPLEEN, AORTA = 5, 1, 52


def write_dicom_series(
    folder,
    arr,
    *,
    uid,
    description,
    spacing=(0.7, 0.8, 2.5),
    origin=(10.0, -20.0, 30.0),
    direction=np.eye(3),
    number=1,
    names=None,
):
    """Write ``arr`` (z, y, x int16) as one DICOM file per slice, in scrambled file order."""
    os.makedirs(folder, exist_ok=True)
    vol = sitk.GetImageFromArray(arr)
    vol.SetSpacing(spacing)
    vol.SetOrigin(origin)
    vol.SetDirection(np.asarray(direction, float).ravel())
    d = np.asarray(direction, float)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    n = arr.shape[0]
    order = [(k * 5 + 3) % n for k in range(n)] if n % 5 else list(range(n))[::-1]
    for k in range(n):
        sl = vol[:, :, k]
        tags = {
            "0020|000e": uid,
            "0008|103e": description,
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.99",
            "0010|0010": "Doe^Jane",
            "0010|0020": "PAT-1",
            "0020|0011": str(number),
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(
                f"{v:.6f}" for v in vol.TransformIndexToPhysicalPoint((0, 0, k))
            ),
            "0020|0037": "\\".join(f"{v:.8f}" for v in list(d[:, 0]) + list(d[:, 1])),
            "0028|1050": "40",
            "0028|1051": "400",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        name = names[k] if names else f"img{order[k]:03d}"
        writer.SetFileName(os.path.join(folder, name))
        writer.Execute(sl)
    return vol


@pytest.fixture
def two_series(tmp_path):
    folder = tmp_path / "study with spaces é"
    a = (np.arange(4 * 5 * 6).reshape(4, 5, 6) * 3 - 100).astype(np.int16)
    b = (np.arange(3 * 6 * 4).reshape(3, 6, 4) * 2).astype(np.int16)
    oblique = Rotation.from_euler("z", 20, degrees=True).as_matrix()
    img_a = write_dicom_series(
        folder, a, uid="1.2.826.0.1.1", description="Axial soft tissue", number=2
    )
    img_b = write_dicom_series(
        folder,
        b,
        uid="1.2.826.0.1.2",
        description="Oblique recon",
        direction=oblique,
        number=3,
        names=[f"b{k}.dcm" for k in range(3)],
    )
    return folder, (a, img_a), (b, img_b)


def test_list_dicom_series_groups_orders_and_describes(two_series):
    folder, (a, img_a), (b, img_b) = two_series
    series = list_dicom_series(folder)
    assert [s.description for s in series] == ["Axial soft tissue", "Oblique recon"]
    s_a, s_b = series
    assert (
        s_a.uid == "1.2.826.0.1.1" and s_a.patient_name == "Doe Jane" and s_a.patient_id == "PAT-1"
    )
    assert s_a.shape == a.shape and s_b.shape == b.shape
    # files ordered by position along the slice normal (file names are scrambled)
    z = [float(sitk.ReadImage(f).GetOrigin()[2]) for f in s_a.files]
    assert z == sorted(z) and len(z) == 4
    # header geometry predicts what read_volume returns
    for s in series:
        vol = read_volume(folder, series=s.key)
        assert vol.array.shape == s.shape
        assert np.allclose(vol.spacing, s.spacing, atol=1e-4)
        assert np.allclose(vol.origin, s.origin, atol=1e-4)
        assert np.allclose(vol.direction, s.direction, atol=1e-6)
    assert s_a.window == (40.0, 400.0)


def test_folder_with_two_series(two_series):
    folder, (a, img_a), (b, img_b) = two_series
    with pytest.raises(VolumeReadError, match="2 DICOM series") as err:
        read_volume(folder)
    assert str(folder) in str(err.value) and "Oblique recon" in str(err.value)
    vol_b = read_volume(folder, series="1.2.826.0.1.2")
    assert np.array_equal(vol_b.array, b)
    assert np.allclose(vol_b.direction, np.asarray(img_b.GetDirection()).reshape(3, 3)[::-1, ::-1])
    assert np.array_equal(read_volume(folder, series=0).array, a)
    # the npe2 reader gives one layer per series, named by series description
    layers = napari_get_reader(str(folder))(str(folder))
    assert [(lt[1]["name"], lt[2]) for lt in layers] == [
        ("Axial soft tissue", "image"),
        ("Oblique recon", "image"),
    ]
    assert layers[0][1]["contrast_limits"] == (-160.0, 240.0)  # DICOM window 40 / 400
    assert "affine" in layers[1][1]  # oblique series
    layer = Image(layers[1][0], **layers[1][1])
    for k, j, i in [(0, 0, 0), (2, 5, 3), (1, 2.5, 0.5)]:
        expected = img_b.TransformContinuousIndexToPhysicalPoint((i, j, k))[::-1]
        assert np.allclose(layer.data_to_world((k, j, i)), expected, atol=1e-3)


def test_one_file_reads_its_whole_series(two_series):
    folder, (a, _), (b, _) = two_series
    one = sorted(folder.glob("b*.dcm"))[1]
    assert find_series_of_file(one).description == "Oblique recon"
    vol = read_volume(one)
    assert np.array_equal(vol.array, b)
    assert read_header(one)["shape"] == b.shape
    layers = napari_get_reader(str(one))(str(one))
    assert len(layers) == 1 and layers[0][0].shape == b.shape


def test_nested_folders_are_found(tmp_path):
    arr = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    write_dicom_series(
        tmp_path / "patient" / "study" / "series1", arr, uid="1.2.3", description="S1"
    )
    assert napari_get_reader(str(tmp_path / "patient")) is not None
    assert np.array_equal(read_volume(tmp_path / "patient").array, arr)
    assert list_dicom_series(tmp_path / "patient") == []  # not recursive by default
    assert len(list_dicom_series(tmp_path / "patient", recursive=True)) == 1


# --------------------------------------------------------------- shared real data


@pytest.fixture(scope="module")
def ct_and_labels(request):
    shared = request.getfixturevalue("shared_data")
    root = shared / "ct-dicom-patient-a"
    return root / "dicom", root / "labels.nii.gz"


def test_shared_dicom_matches_simpleitk(ct_and_labels):
    dicom, _ = ct_and_labels
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(dicom))
    reader.SetFileNames(files)
    ref = reader.Execute()
    vol = read_volume(dicom)
    assert vol.array.dtype == np.int16
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(ref))
    assert vol.spacing == tuple(reversed(ref.GetSpacing()))
    assert vol.origin == tuple(reversed(ref.GetOrigin()))
    assert vol.metadata["modality"] == "CT"
    assert vol.metadata["series_description"] == "CT Body 3.0"
    assert (vol.metadata["window_center"], vol.metadata["window_width"]) == (40.0, 300.0)
    header = read_header(dicom)
    assert header["shape"] == (20, 512, 512) and header["description"] == "CT Body 3.0"
    assert np.allclose(header["spacing"], vol.spacing) and np.allclose(header["origin"], vol.origin)
    # any one file of the series reads all 20 slices
    one = sorted(dicom.iterdir())[7]
    assert np.array_equal(read_volume(one).array, vol.array)


def test_shared_labels_overlay_the_anatomy_in_world_coordinates(ct_and_labels):
    dicom, labels_path = ct_and_labels
    ((ct_data, ct_kw, ct_type),) = napari_get_reader(str(dicom))(str(dicom))
    ((lab_data, lab_kw, lab_type),) = napari_get_reader(str(labels_path))(str(labels_path))
    assert (ct_type, lab_type) == ("image", "labels")
    ct_layer, lab_layer = Image(ct_data, **ct_kw), Labels(lab_data, **lab_kw)
    assert lab_layer.scale[1] < 0  # rows flipped in the file, honoured with a negative scale

    # label voxels land on CT voxels at the same physical point
    rng = np.random.default_rng(1)
    liver = np.argwhere(lab_data == LIVER)
    assert len(liver) > 1000
    pick = liver[rng.choice(len(liver), 500, replace=False)]
    world = np.array([lab_layer.data_to_world(p) for p in pick])
    ct_idx = np.rint([ct_layer.world_to_data(w) for w in world]).astype(int)
    assert np.allclose([ct_layer.data_to_world(i) for i in ct_idx], world, atol=1e-3)
    assert np.array_equal(ct_idx[:, 1], 511 - pick[:, 1])  # the row flip, exactly

    hu = ct_data[tuple(ct_idx.T)]
    assert 60 <= np.median(hu) <= 140  # contrast-enhanced liver parenchyma
    naive = ct_data[tuple(pick.T)]  # what a reader ignoring direction cosines would show
    assert np.median(np.abs(hu - naive)) > 0

    # resampling the label map onto the DICOM grid with SimpleITK (independent route)
    ct_img = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom)))
    lab_img = sitk.ReadImage(str(labels_path))
    on_ct = sitk.GetArrayFromImage(
        sitk.Resample(lab_img, ct_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )
    assert np.array_equal(on_ct, lab_data[:, ::-1, :])
    for label, lo, hi in [(LIVER, 60, 140), (SPLEEN, 40, 140), (AORTA, 120, 400)]:
        assert lo <= np.median(ct_data[on_ct == label]) <= hi, label
    # without honouring the flip the spleen would sit on fat/air (negative HU)
    assert np.median(ct_data[lab_data == SPLEEN]) < 0


def test_shared_mr_opens_as_image(shared_data):
    path = shared_data / "mr" / "mr_small.nii.gz"
    ((data, kw, kind),) = napari_get_reader(str(path))(str(path))
    assert kind == "image" and kw["name"] == "mr_small" and data.shape == (20, 91, 117)
    lo, hi = kw["contrast_limits"]
    assert lo < hi
    ref = sitk.ReadImage(str(path))
    assert np.array_equal(data, sitk.GetArrayFromImage(ref))
    layer = Image(data, **kw)
    for k, j, i in [(0, 0, 0), (19, 90, 116), (3, 40.5, 7)]:
        expected = ref.TransformContinuousIndexToPhysicalPoint((i, j, k))[::-1]
        assert np.allclose(layer.data_to_world((k, j, i)), expected, atol=1e-3)


def test_copied_series_without_uids_still_groups(tmp_path, ct_and_labels):
    """The shared series has empty SeriesInstanceUIDs; grouping falls back on other tags."""
    dicom, _ = ct_and_labels
    for f in sorted(dicom.iterdir())[:3]:
        shutil.copy(f, tmp_path / f.name)
    (s,) = list_dicom_series(tmp_path)
    assert s.uid == "" and s.key.startswith("nouid-") and s.shape == (3, 512, 512)
