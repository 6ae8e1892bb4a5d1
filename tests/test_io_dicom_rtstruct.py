"""RTSTRUCT output: one ROI per class, named after it, whose closed planar contours lie on
the mask's boundary in patient coordinates, each on its source image; read back by
pydicom. Through the CLI as ``predict --format dicom-rtstruct``."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_vnet.cli import main
from napari_vnet.io import read_volume
from napari_vnet.models import ClassInfo, ModelCard
from test_io_dicom import write_dicom_series

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")  # the dicom-seg extra (in the test group)

SPACING_XYZ = (0.7, 0.8, 2.5)


def ct_series(folder, shape=(5, 16, 14), direction=np.eye(3)):
    ct = (np.arange(int(np.prod(shape))).reshape(shape) % 300).astype(np.int16)
    write_dicom_series(
        folder, ct, uid="1.2.826.0.1.88", description="CT", spacing=SPACING_XYZ, direction=direction
    )
    for f in folder.iterdir():  # a CT image needs its frame of reference
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = "1.2.826.0.1.88.1"
        ds.save_as(f)
    return read_volume(folder)


def test_rtstruct_contours_lie_on_the_mask_boundary(tmp_path):
    from napari_vnet.io.dicom_rtstruct import RTSTRUCT_SOP_CLASS, write_rtstruct

    oblique = Rotation.from_euler("zx", (25, 10), degrees=True).as_matrix()
    vol = ct_series(tmp_path / "ct", direction=oblique)
    labels = np.zeros(vol.shape, np.uint8)
    labels[1:4, 3:12, 2:10] = 5  # a liver block with a hole on slice 2
    labels[2, 6:8, 5:7] = 0
    labels[0:2, 0:3, 10:14] = 1  # a spleen touching the image border
    card = ModelCard(
        arch="unet3d",
        classes=[
            ClassInfo(0, "background"),
            ClassInfo(5, "liver"),
            ClassInfo(1, "spleen"),
            ClassInfo(2, "kidneys"),
        ],
    )
    path = write_rtstruct(labels, vol, card, tmp_path / "rt.dcm", weights="ct-starter")

    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTSTRUCT" and ds.SOPClassUID == RTSTRUCT_SOP_CLASS
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["liver", "spleen", "kidneys"]
    assert ds.ManufacturerModelName == "ct-starter"
    codes = [o.RTROIIdentificationCodeSequence[0].CodeValue for o in ds.RTROIObservationsSequence]
    assert codes == ["10200004", "78961009", "64033007"]
    sources = {}
    for f in (tmp_path / "ct").iterdir():
        image = pydicom.dcmread(f)
        sources[image.SOPInstanceUID] = image
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == "1.2.826.0.1.88.1"
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == set(sources)

    # patient (x, y, z) -> (k, j, i) of the volume
    inv = np.linalg.inv(np.asarray(vol.direction, float))
    origin, spacing = np.asarray(vol.origin, float), np.asarray(vol.spacing, float)
    by_roi = {c.ReferencedROINumber: c for c in ds.ROIContourSequence}
    for number, value in ((1, 5), (2, 1), (3, 2)):
        contours = getattr(by_roi[number], "ContourSequence", None) or []
        on_slices = []
        for contour in contours:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            xyz = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            assert len(xyz) == contour.NumberOfContourPoints >= 3
            kji = (inv @ (xyz[:, ::-1] - origin).T).T / spacing
            k = int(round(kji[0, 0]))
            np.testing.assert_allclose(kji[:, 0], k, atol=1e-3)  # planar, on a slice
            image = sources[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            assert np.isclose(
                np.dot(
                    np.asarray(image.ImagePositionPatient, float) - xyz[0],
                    np.cross(oblique[:, 0], oblique[:, 1]),
                ),
                0,
                atol=1e-3,
            )
            mask = np.pad(labels[k] == value, 1)
            ji = kji[:, 1:] + 1
            halves = np.round(2 * ji) / 2
            np.testing.assert_allclose(ji, halves, atol=1e-3)  # on the pixel edges' midpoints
            for j, i in halves:  # each point halfway between an inside and an outside pixel
                a = mask[int(np.floor(j)), int(np.floor(i))]
                b = mask[int(np.ceil(j)), int(np.ceil(i))]
                assert a != b, (value, k, j - 1, i - 1)
            on_slices.append(k)
        assert set(on_slices) == set(np.flatnonzero((labels == value).any(axis=(1, 2))))
        if value == 5:  # one outline on slices 1 and 3; on slice 2 the outline and its hole
            assert sorted(on_slices) == [1, 2, 2, 3]


def test_predict_writes_an_rtstruct_per_dicom_series(tmp_path, capsys):
    import torch

    from napari_vnet.models import build_model, save_checkpoint

    ct_series(tmp_path / "in" / "patient1" / "ct", shape=(8, 16, 16))
    torch.manual_seed(3)
    card = ModelCard(
        arch="vnet",
        arch_kwargs={"channels": [2, 4], "kernel_size": 3},
        classes=[ClassInfo(0, "background"), ClassInfo(1, "liver")],
        patch_size=(8, 8, 8),
        normalization={"kind": "none"},
    )
    ckpt = save_checkpoint(build_model(card), card, tmp_path / "tiny.pt")
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            str(tmp_path / "in"),
            "-w",
            str(ckpt),
            "-o",
            str(out),
            "--format",
            "dicom-rtstruct",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    ds = pydicom.dcmread(out / "patient1" / "ct.dcm")
    assert ds.Modality == "RTSTRUCT"
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["liver"]
    assert ds.ManufacturerModelName == "tiny"
