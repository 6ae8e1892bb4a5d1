"""DICOM transfer syntaxes: a small CT series written in each syntax reads back equal to the
uncompressed original (lossy syntaxes: close), on the same grid; and the guard against lying
element lengths still refuses a broken file in the deflated syntax."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from napari_vnet.io import VolumeReadError, list_dicom_series, read_volume
from napari_vnet.io.dicom_lengths import dicom_length_problem

imagecodecs = pytest.importorskip("imagecodecs")  # the test group's encoders

SHAPE = (4, 20, 24)
SPACING = (2.5, 0.8, 0.7)  # (z, y, x)
ORIGIN = (30.0, -20.0, 10.0)
# an oblique plane: the geometry must come through every syntax
ROW = np.array([np.cos(0.3), np.sin(0.3), 0.0])
COL = np.array([-np.sin(0.3), np.cos(0.3), 0.0])


def stored_values(bits: int = 12) -> np.ndarray:
    """A smooth body with a bright blob (CT-like stored values of ``bits`` bits)."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    body = 800 + 40 * z + 12 * y + 9 * x
    blob = ((y - 10) ** 2 + (x - 12) ** 2 < 30) * 1500
    values = (body + blob) >> (12 - bits)
    assert 0 < values.min() and values.max() < 1 << bits
    return values.astype(np.uint16 if bits > 8 else np.uint8)


def slice_dataset(k: int, plane: np.ndarray, series: str, study: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Syntax^Test", "TS-1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
    normal = np.cross(ROW, COL)
    xyz0 = np.asarray(ORIGIN[::-1])
    ds.ImagePositionPatient = [float(v) for v in xyz0 + k * SPACING[0] * normal]
    ds.ImageOrientationPatient = [float(v) for v in (*ROW, *COL)]
    ds.PixelSpacing = [SPACING[1], SPACING[2]]
    ds.SliceThickness = SPACING[0]
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = 8 if plane.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, min(bits, 12), min(bits, 12) - 1
    ds.PixelRepresentation = 0
    if bits == 16:
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = plane.tobytes()
    return ds


def _encapsulated(uid: str, encode):
    def compress(ds: Dataset, plane: np.ndarray) -> None:
        ds.PixelData = encapsulate([bytes(encode(plane))])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid

    return compress


def _deflated(ds: Dataset, plane: np.ndarray) -> None:
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian


def _rle(ds: Dataset, plane: np.ndarray) -> None:
    ds.compress(pydicom.uid.RLELossless)


# name: (transfer syntax, how to compress a slice, largest error allowed, bits)
SYNTAXES = {
    "explicit-little": (pydicom.uid.ExplicitVRLittleEndian, lambda ds, p: None, 0, 12),
    "deflated": (pydicom.uid.DeflatedExplicitVRLittleEndian, _deflated, 0, 12),
    "rle": (pydicom.uid.RLELossless, _rle, 0, 12),
    "jpeg-baseline": (
        pydicom.uid.JPEGBaseline8Bit,
        _encapsulated(pydicom.uid.JPEGBaseline8Bit, lambda p: imagecodecs.jpeg8_encode(p, 95)),
        12,
        8,
    ),
    "jpeg-extended-12bit": (
        pydicom.uid.JPEGExtended12Bit,
        _encapsulated(
            pydicom.uid.JPEGExtended12Bit,
            lambda p: imagecodecs.jpeg8_encode(p, 95, bitspersample=12),
        ),
        60,
        12,
    ),
    "jpeg-lossless-sv1": (
        pydicom.uid.JPEGLosslessSV1,
        _encapsulated(pydicom.uid.JPEGLosslessSV1, imagecodecs.ljpeg_encode),
        0,
        12,
    ),
    "jpeg-lossless": (
        pydicom.uid.JPEGLossless,
        _encapsulated(pydicom.uid.JPEGLossless, imagecodecs.ljpeg_encode),
        0,
        12,
    ),
    "jpeg-ls-lossless": (
        pydicom.uid.JPEGLSLossless,
        _encapsulated(pydicom.uid.JPEGLSLossless, lambda p: imagecodecs.jpegls_encode(p, 0)),
        0,
        12,
    ),
    "jpeg-ls-near-lossless": (
        pydicom.uid.JPEGLSNearLossless,
        _encapsulated(pydicom.uid.JPEGLSNearLossless, lambda p: imagecodecs.jpegls_encode(p, 2)),
        2,
        12,
    ),
    "jpeg2000-lossless": (
        pydicom.uid.JPEG2000Lossless,
        _encapsulated(
            pydicom.uid.JPEG2000Lossless,
            lambda p: imagecodecs.jpeg2k_encode(p, codecformat="J2K", reversible=True),
        ),
        0,
        12,
    ),
    "jpeg2000": (
        pydicom.uid.JPEG2000,
        _encapsulated(
            pydicom.uid.JPEG2000,
            lambda p: imagecodecs.jpeg2k_encode(p, 60, codecformat="J2K", bitspersample=12),
        ),
        40,
        12,
    ),
    "htj2k-lossless": (
        pydicom.uid.HTJ2KLossless,
        _encapsulated(pydicom.uid.HTJ2KLossless, lambda p: imagecodecs.htj2k_encode(p, 0)),
        0,
        12,
    ),
}


def write_series(folder: Path, values: np.ndarray, compress) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    files = []
    for k, plane in enumerate(values):
        ds = slice_dataset(k, plane, series, study)
        compress(ds, plane)
        path = folder / f"slice{(k * 3) % len(values):03d}.dcm"  # file order != slice order
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def test_deflated_data_set_is_really_deflated(tmp_path):
    """The test's deflated files hold a raw deflate stream after the meta group (so the
    length walk has to inflate it), and pydicom reads them back."""
    values = stored_values()
    files = write_series(tmp_path / "s", values, _deflated)
    raw = files[0].read_bytes()
    assert values[0].tobytes() not in raw
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert dicom_length_problem(files[0]) is None


@pytest.mark.parametrize("name", sorted(SYNTAXES))
def test_every_transfer_syntax_reads_like_the_original(tmp_path, name):
    uid, compress, tolerance, bits = SYNTAXES[name]
    values = stored_values(bits)
    write_series(tmp_path / "plain", values, lambda ds, p: None)
    files = write_series(tmp_path / name, values, compress)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == uid
    assert all(dicom_length_problem(f) is None for f in files)

    reference = read_volume(tmp_path / "plain")
    (series,) = list_dicom_series(tmp_path / name)
    assert series.shape == SHAPE
    vol = read_volume(tmp_path / name)
    expected = values.astype(np.int32) - (1024 if bits > 8 else 0)
    assert vol.array.shape == SHAPE
    error = np.abs(vol.array.astype(np.int32) - expected)
    assert int(error.max()) <= tolerance, (name, int(error.max()))
    if tolerance == 0:
        np.testing.assert_array_equal(vol.array, reference.array)
    else:  # lossy, but close: within the syntax's bound, and not at it everywhere
        assert 0 < float(error.mean()) < tolerance, (name, float(error.mean()))
    np.testing.assert_allclose(vol.spacing, SPACING, atol=1e-5)
    np.testing.assert_allclose(vol.origin, ORIGIN, atol=1e-4)
    np.testing.assert_allclose(vol.direction, reference.direction, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(vol.direction)[:, 2], ROW[::-1], atol=1e-6
    )  # the x axis of (z, y, x) runs along the rows' direction
    for got, want in ((vol.spacing, series.spacing), (vol.origin, series.origin)):
        np.testing.assert_allclose(got, want, atol=1e-4)


def _meta_end(raw: bytes) -> int:
    """Where the file meta group ends (by its (0002,0000) group length)."""
    assert raw[132:140] == b"\x02\x00\x00\x00UL\x04\x00"  # explicit VR LE, 4 bytes
    return 144 + struct.unpack_from("<I", raw, 140)[0]


def _rewrite_data_set(path: Path, change) -> None:
    """Inflate the deflated data set of ``path``, apply ``change`` to its bytes, deflate it
    again (raw deflate, as the transfer syntax says) and write the file back."""
    raw = path.read_bytes()
    meta_end = _meta_end(raw)
    data_set = bytearray(zlib.decompress(raw[meta_end:], -zlib.MAX_WBITS))
    change(data_set)
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    path.write_bytes(raw[:meta_end] + packer.compress(bytes(data_set)) + packer.flush())


def test_deflated_slice_with_a_lying_length_is_still_refused(tmp_path):
    files = write_series(tmp_path / "s", stored_values(), _deflated)

    def claim_more(data_set: bytearray) -> None:
        at = data_set.rfind(b"\xe0\x7f\x10\x00OW")  # (7FE0,0010) OW, explicit VR LE
        assert at > 0
        data_set[at + 8 : at + 12] = struct.pack("<I", 0x50000000)

    _rewrite_data_set(files[0], claim_more)
    problem = dicom_length_problem(files[0])
    assert problem and "(7FE0,0010) claims 1342177280 bytes" in problem
    with pytest.raises(VolumeReadError) as info:
        read_volume(files[0])
    assert str(files[0]) in str(info.value) and "claims 1342177280 bytes" in str(info.value)
    # the other slices still list and read as a series (one slice short)
    (series,) = list_dicom_series(tmp_path / "s")
    assert len(series.files) == SHAPE[0] - 1


def test_deflated_slice_that_does_not_inflate_is_refused(tmp_path):
    files = write_series(tmp_path / "s", stored_values(), _deflated)
    raw = bytearray(files[1].read_bytes())
    meta_end = _meta_end(bytes(raw))
    raw[meta_end:] = b"\xff" * (len(raw) - meta_end)  # not a deflate stream
    files[1].write_bytes(bytes(raw))
    problem = dicom_length_problem(files[1])
    assert problem and "does not inflate" in problem
    with pytest.raises(VolumeReadError, match="does not inflate"):
        read_volume(files[1])
