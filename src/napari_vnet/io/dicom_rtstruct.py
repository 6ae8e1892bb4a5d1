"""DICOM RT Structure Set (RTSTRUCT) output, for radiotherapy planning systems.

:func:`write_rtstruct` writes one ROI per foreground class of a model card (its name,
display colour and SNOMED CT code from :mod:`napari_vnet.io.dicom_codes`) with one
CLOSED_PLANAR contour per connected outline of the class on each source slice (holes as
contours of their own, read with the even-odd rule as planning systems do). The outlines
are traced on the pixel edges' midpoints (``skimage.measure.find_contours`` at 0.5, the
mask padded so an outline at the image border closes) and placed in patient coordinates
by each source image's Image Position, Orientation and Pixel Spacing; each contour
references its source image. Needs pydicom (the ``dicom-seg`` extra brings it).
"""

from __future__ import annotations

import datetime
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"  # what RTReferencedStudySequence names
_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "ReferringPhysicianName",
    "AccessionNumber",
)


def slice_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """The closed outlines of a 2D mask as (n, 2) arrays of (row, column) pixel
    coordinates (without repeating the first point); holes are outlines too."""
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, bool).astype(np.uint8), 1)
    outlines = []
    for c in find_contours(padded, 0.5):
        c = c - 1.0
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        if len(c) >= 3:
            outlines.append(c)
    return outlines


def _to_patient(points: np.ndarray, image) -> np.ndarray:
    """(row, column) pixel coordinates of ``image`` -> patient (x, y, z) in mm."""
    ipp = np.asarray([float(v) for v in image.ImagePositionPatient])
    iop = np.asarray([float(v) for v in image.ImageOrientationPatient]).reshape(2, 3)
    dr, dc = (float(v) for v in image.PixelSpacing)  # row spacing, column spacing
    return ipp + points[:, 1:2] * dc * iop[0] + points[:, 0:1] * dr * iop[1]


def _item(pydicom, **values: Any):
    ds = pydicom.Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def _image_ref(pydicom, image):
    return _item(
        pydicom,
        ReferencedSOPClassUID=image.SOPClassUID,
        ReferencedSOPInstanceUID=image.SOPInstanceUID,
    )


def _contours(pydicom, frames: np.ndarray, value: int, sources: list) -> list:
    """The contour items of one class over all source slices."""
    out = []
    for frame, image in zip(frames, sources, strict=True):
        for outline in slice_outlines(frame == value):
            xyz = _to_patient(outline, image)
            out.append(
                _item(
                    pydicom,
                    ContourImageSequence=[_image_ref(pydicom, image)],
                    ContourGeometricType="CLOSED_PLANAR",
                    NumberOfContourPoints=len(xyz),
                    ContourData=[f"{v:.4f}" for v in xyz.ravel()],
                )
            )
    return out


def _header(pydicom, sources: list, model: str):
    """The structure set's patient, study, series, equipment and SOP common attributes."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    from napari_vnet import __version__

    first = sources[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(RTSTRUCT_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    for key in _COPIED:
        setattr(ds, key, getattr(first, key, "") or "")
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.Modality, ds.SeriesInstanceUID = "RTSTRUCT", generate_uid()
    ds.SeriesNumber = int(getattr(first, "SeriesNumber", 0) or 0) + 2000
    ds.SeriesDescription = f"napari-vnet {model} structures"[:64]
    ds.InstanceNumber, ds.OperatorsName = 1, ""
    ds.Manufacturer, ds.ManufacturerModelName = "napari-vnet", model[:64]
    ds.SoftwareVersions = __version__
    ds.InstanceCreationDate = ds.StructureSetDate = ds.SeriesDate = date
    ds.InstanceCreationTime = ds.StructureSetTime = ds.SeriesTime = time
    ds.StructureSetLabel, ds.StructureSetName = "napari-vnet", model[:64]
    series = _item(
        pydicom,
        SeriesInstanceUID=first.SeriesInstanceUID,
        ContourImageSequence=[_image_ref(pydicom, s) for s in sources],
    )
    study = _item(
        pydicom,
        ReferencedSOPClassUID=_STUDY_REFERENCE_CLASS,
        ReferencedSOPInstanceUID=first.StudyInstanceUID,
        RTReferencedSeriesSequence=[series],
    )
    ds.ReferencedFrameOfReferenceSequence = [
        _item(
            pydicom,
            FrameOfReferenceUID=_frame_of_reference(first),
            RTReferencedStudySequence=[study],
        )
    ]
    return ds


def _frame_of_reference(image) -> str:
    uid = str(getattr(image, "FrameOfReferenceUID", "") or "")
    if not uid:
        raise ValueError("the source images have no Frame of Reference UID; RTSTRUCT needs one")
    return uid


def _roi_code(pydicom, name: str):
    """(the ROI's identification code item, its RT ROI Interpreted Type: ORGAN for an
    anatomical structure, empty otherwise)."""
    from pydicom.sr.codedict import codes

    from napari_vnet.io.dicom_codes import segment_codes

    coded = segment_codes(name)
    code = _item(
        pydicom,
        CodeValue=coded.type.value,
        CodingSchemeDesignator=coded.type.scheme_designator,
        CodeMeaning=coded.type.meaning,
    )
    organ = coded.category.value == codes.SCT.AnatomicalStructure.value
    return code, "ORGAN" if organ else ""


def write_rtstruct(
    labels: np.ndarray, volume, card, path: str | os.PathLike, *, weights=None
) -> Path:
    """Write ``labels`` (on ``volume``'s grid, read from a DICOM series) as an RT
    Structure Set (see the module docstring); written atomically."""
    from napari_vnet import __version__
    from napari_vnet._atomic import atomic_open
    from napari_vnet.io.dicom_seg import (
        _source_datasets,
        _source_frames,
        model_name,
        require_highdicom,
    )
    from napari_vnet.io.label_names import class_colors

    hd, pydicom = require_highdicom()
    path = Path(path)
    files, sources = _source_datasets(hd, pydicom, volume, path)
    frames = _source_frames(np.asarray(labels), volume, files, sources)
    foreground = [c for c in card.classes if int(c.value) != 0]
    model = model_name(card, weights)
    ds = _header(pydicom, sources, model)
    frame_uid = _frame_of_reference(sources[0])
    colors = class_colors(card.classes)
    rois, contours, observations = [], [], []
    for n, c in enumerate(foreground, start=1):
        rois.append(
            _item(
                pydicom,
                ROINumber=n,
                ReferencedFrameOfReferenceUID=frame_uid,
                ROIName=str(c.name)[:64] or f"label {c.value}",
                ROIGenerationAlgorithm="AUTOMATIC",
                ROIGenerationDescription=f"napari-vnet {__version__}, {model}"[:64],
            )
        )
        rgb = [int(round(255 * min(max(float(v), 0.0), 1.0))) for v in colors[int(c.value)][:3]]
        contour = _item(pydicom, ReferencedROINumber=n, ROIDisplayColor=rgb)
        contour.ContourSequence = _contours(pydicom, frames, int(c.value), sources)
        contours.append(contour)
        code, kind = _roi_code(pydicom, c.name)
        observations.append(
            _item(
                pydicom,
                ObservationNumber=n,
                ReferencedROINumber=n,
                RTROIInterpretedType=kind,
                ROIInterpreter="",
                RTROIIdentificationCodeSequence=[code],
            )
        )
    ds.StructureSetROISequence, ds.ROIContourSequence = rois, contours
    ds.RTROIObservationsSequence = observations
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getvalue())
    return path
