"""Small inputs that ask for huge allocations are refused before anything is allocated,
with a message naming the file and the figures: a gzip-bomb NIfTI, a zip-bomb
checkpoint, a model card describing a giant network, an absurd resampling, a DICOM series
too large to decode.

Each case runs in a child process that reports its peak memory (``VmHWM``). The
available memory is what the machine has, or ``NAPARI_VNET_MEMORY_LIMIT`` where a test
pretends to be a smaller machine (the child also carries an address-space limit of
6 GB, so that code without the guards fails there instead of filling this machine)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    inflate_tensor_claim,
    run_limited_child,
    small_volume,
    tiny_card,
    write_dicom_series,
    write_image,
)

_PRELUDE = """
import json, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
def report(**kw):
    # VmHWM: this process's own peak (ru_maxrss also counts the parent's at fork time)
    with open("/proc/self/status") as fh:
        hwm = [ln for ln in fh if ln.startswith("VmHWM:")]
    kw["peak_mib"] = int(hwm[0].split()[1]) / 1024 if hwm else (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(kw))
"""


def _child(code: str, *args: str, limit: str | None = "512M") -> dict:
    return run_limited_child(_PRELUDE, code, *args, limit=limit)


def _gzip_bomb(path: Path, shape_xyz=(1024, 1024, 1024)) -> Path:
    """A valid .nii.gz of zeros (1 GiB of uint8) in about 1 MB: a header member followed
    by identical members of 16 MiB of zeros each (gzip allows concatenated members)."""
    template = path.parent / "template.nii"
    write_image(template, np.zeros((2, 2, 2), np.uint8))
    head = bytearray(template.read_bytes()[:352])
    template.unlink()
    dim = list(struct.unpack("<8h", head[40:56]))
    dim[0], dim[1], dim[2], dim[3] = 3, *shape_xyz
    head[40:56] = struct.pack("<8h", *dim)
    total = int(np.prod(shape_xyz))
    block = 16 << 20
    member = gzip.compress(b"\0" * block, compresslevel=9)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(bytes(head), compresslevel=9))
        for _ in range(total // block):
            fh.write(member)
    return path


def test_gzip_bomb_nifti_refused_before_allocating(tmp_path):
    bomb = _gzip_bomb(tmp_path / "bomb.nii.gz")
    assert bomb.stat().st_size < 3_000_000
    out = _child(
        """
        from napari_vnet.io import VolumeReadError, read_volume
        try:
            vol = read_volume(sys.argv[1])
            report(outcome="read", shape=list(vol.array.shape))
        except (VolumeReadError, MemoryError) as exc:
            report(outcome="refused", message=str(exc))
        """,
        str(bomb),
    )
    assert out["outcome"] == "refused", out
    assert str(bomb) in out["message"] and "1.0 GiB" in out["message"], out
    assert "refused before allocating" in out["message"], out
    assert out["peak_mib"] < 600, out


def test_gzip_bomb_listed_by_discovery_without_reading(tmp_path):
    _gzip_bomb(tmp_path / "bomb.nii.gz")
    out = _child(
        """
        from napari_vnet.workflows.worklist_scan import discover_scans
        (entry,) = discover_scans(sys.argv[1])
        report(shape=list(entry.shape), broken=entry.broken)
        """,
        str(tmp_path),
    )
    assert out["shape"] == [1024, 1024, 1024] and out["peak_mib"] < 600, out


def _zip_bomb_checkpoint(tmp_path: Path, numel: int = 300_000_000) -> Path:
    """A real tiny checkpoint whose one extra tensor claims ``numel`` float32 values,
    stored deflated (1.2 GB of zeros in about a megabyte)."""
    import torch

    from napari_vnet.models import build_model, save_checkpoint

    small = save_checkpoint(build_model(tiny_card()), tiny_card(), tmp_path / "small.pt")
    state = torch.load(small, weights_only=True)
    marker = 1_048_573  # an unusual size, easy to find in the pickle
    state["state_dict"]["padding"] = torch.zeros(marker)
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    # the big record, deflated: zeros compress about 1000:1
    bomb = inflate_tensor_claim(plain, tmp_path / "bomb.pt", marker, numel)
    return bomb


def test_zip_bomb_checkpoint_refused_before_loading(tmp_path):
    bomb = _zip_bomb_checkpoint(tmp_path)
    assert bomb.stat().st_size < 5_000_000
    out = _child(
        """
        from napari_vnet.models import load_checkpoint
        try:
            load_checkpoint(sys.argv[1])
            report(outcome="loaded")
        except Exception as exc:
            report(outcome="refused", message=f"{type(exc).__name__}: {exc}")
        """,
        str(bomb),
    )
    assert out["outcome"] == "refused", out
    assert str(bomb) in out["message"] and "refused before allocating" in out["message"], out
    assert "1.1 GiB" in out["message"], out
    assert out["peak_mib"] < 800, out


def test_giant_network_card_refused_before_building(tmp_path):
    """No pretend limit here: 75 GiB of parameters exceed any machine these tests run on."""
    out = _child(
        """
        from napari_vnet.models import ClassInfo, ModelCard, build_model
        card = ModelCard(arch="unet3d", arch_kwargs={"channels": [512, 2048, 8192, 16384]},
                         classes=[ClassInfo(0, "background"), ClassInfo(1, "liver")],
                         patch_size=(32, 32, 32), spacing=(1.0, 1.0, 1.0),
                         normalization={"kind": "zscore"})
        try:
            build_model(card)
            report(outcome="built")
        except Exception as exc:
            report(outcome="refused", message=f"{type(exc).__name__}: {exc}")
        """,
        limit=None,
    )
    assert out["outcome"] == "refused", out
    assert "20,298,511,362 parameters" in out["message"], out
    assert "75.6 GiB" in out["message"] and "refused before allocating" in out["message"], out


def test_absurd_card_spacing_refused_before_resampling(tmp_path, tiny_weights):
    """A 12 x 10 x 6 image and a card asking for 0.002 mm voxels: refused by `predict`
    naming the file and the resampled size (no pretend limit: 100 TB are refused here)."""
    import torch

    state = torch.load(tiny_weights, weights_only=True)
    state["card"]["spacing"] = [0.002, 0.002, 0.002]
    weights = tmp_path / "absurd.pt"
    torch.save(state, weights)
    image = write_image(tmp_path / "ct.nii.gz", small_volume().astype(np.float32))
    out = _child(
        """
        import contextlib, io
        from napari_vnet.cli import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["predict", sys.argv[1], "--weights", sys.argv[2],
                       "--out", sys.argv[3]])
        report(rc=rc, message=err.getvalue())
        """,
        str(image),
        str(weights),
        str(tmp_path / "out.nii.gz"),
        limit=None,
    )
    assert out["rc"] != 0 and str(image) in out["message"], out
    assert "resampling" in out["message"] and "refused before allocating" in out["message"], out
    assert out["peak_mib"] < 1500, out


def test_dicom_series_too_large_to_decode_refused(tmp_path):
    write_dicom_series(
        tmp_path / "series", small_volume((4, 64, 64)), uid="1.2.3.4.5.6", description="CT"
    )
    out = _child(
        """
        from napari_vnet.io import VolumeReadError, read_volume
        try:
            read_volume(sys.argv[1])
            report(outcome="read")
        except VolumeReadError as exc:
            report(outcome="refused", message=str(exc))
        """,
        str(tmp_path / "series"),
        limit="20K",
    )
    assert out["outcome"] == "refused" and "series" in out["message"], out
    assert "32.0 KiB" in out["message"] and "refused before allocating" in out["message"], out


def test_available_memory_takes_the_smallest_limit(monkeypatch):
    from napari_vnet.io.memory import available_memory, memory_problem, parse_size

    assert parse_size("1G") == 1 << 30 and parse_size("512M") == 512 << 20
    monkeypatch.setenv("NAPARI_VNET_MEMORY_LIMIT", "1M")
    assert available_memory() == 1 << 20
    assert "needs 2.0 MiB of memory but only 1.0 MiB" in memory_problem(2 << 20, "x")
    assert memory_problem(1000, "x") is None


def _pixel_length_bomb(folder: Path) -> Path:
    """A real 3-slice series whose middle slice's pixel data element claims 1.25 GiB (one
    length field changed, as a flipped byte or a truncated compressed slice does)."""
    files = write_dicom_series(
        folder, small_volume((3, 32, 32)), uid="1.2.826.0.1.3680043.8.498.99", description="CT"
    )
    raw = bytearray(files[1].read_bytes())
    at = raw.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010), explicit or implicit VR
    assert at > 0
    length_at = at + 8 if raw[at + 4 : at + 6] in (b"OW", b"OB") else at + 4
    raw[length_at : length_at + 4] = struct.pack("<I", 0x50000000)
    files[1].write_bytes(bytes(raw))
    return files[1]


def test_dicom_slice_with_a_huge_element_length_refused_before_decoding(tmp_path):
    bomb = _pixel_length_bomb(tmp_path / "series")
    out = _child(
        """
        from napari_vnet.io import VolumeReadError, read_volume
        from napari_vnet.workflows.worklist_scan import discover_scans
        try:
            read_volume(sys.argv[1])
            outcome, message = "read", ""
        except VolumeReadError as exc:
            outcome, message = "refused", str(exc)
        entries = list(discover_scans(os.path.dirname(sys.argv[1])))
        report(outcome=outcome, message=message,
               listed=[[e.n_files, e.error or ""] for e in entries])
        """,
        str(bomb),
        limit=None,
    )
    assert out["outcome"] == "refused" and str(bomb) in out["message"], out
    assert "claims 1342177280 bytes" in out["message"], out
    assert out["peak_mib"] < 600, out
    # discovery lists the two good slices as a series and the bad one as broken
    assert sorted(n for n, _ in out["listed"]) == [1, 2], out


def test_mutated_ct_slice_header_read_stays_small(tmp_path, shared_data):
    """A finding of the uncapped fuzz run: three bytes changed in the header of a real CT
    slice and the file cut at 91 %. GDCM's header-only read allocated 4.4 GB for it."""
    files = sorted((shared_data / "ct-dicom-patient-a" / "dicom").iterdir())
    data = bytearray(files[0].read_bytes())
    header = data.find(b"\xe0\x7f\x10\x00")
    for where, value in ((0.1456770348921732, 159), (0.13035621140897713, 197),
                         (0.6637581794510472, 230)):  # fmt: skip
        data[int(where * header)] = value
    bad = tmp_path / "mutated.dcm"
    bad.write_bytes(bytes(data[: int(len(data) * 0.9098296619697076)]))
    out = _child(
        """
        from napari_vnet._reader import napari_get_reader
        from napari_vnet.io import VolumeReadError
        reader = napari_get_reader(sys.argv[1])
        try:
            reader(sys.argv[1])
            report(outcome="read")
        except VolumeReadError as exc:
            report(outcome="refused", message=str(exc))
        """,
        str(bad),
        limit=None,
    )
    assert out["outcome"] == "refused" and str(bad) in out["message"], out
    assert "remain in the file" in out["message"], out
    assert out["peak_mib"] < 600, out


def _jpeg2000_series(folder: Path, n: int = 3) -> list[Path]:
    """A small CT series whose pixel data are JPEG-2000 (lossless) fragments, written with
    pydicom and imagecodecs (both installed with the test oracles)."""
    import imagecodecs
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import CTImageStorage, JPEG2000Lossless, generate_uid

    folder.mkdir()
    study, series, files = generate_uid(), generate_uid(), []
    for k in range(n):
        arr = (np.arange(64 * 64).reshape(64, 64) % 251 + 10 * k).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        meta.TransferSyntaxUID = JPEG2000Lossless
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, sop, "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = "J2K", "1"
        ds.ImagePositionPatient = [0, 0, 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness, ds.InstanceNumber = [0.7, 0.7], 2.5, k + 1
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = encapsulate([imagecodecs.jpeg2k_encode(arr, level=0, codecformat="J2K")])
        ds["PixelData"].VR = "OB"
        path = folder / f"slice{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


@pytest.mark.parametrize("keep", [0.5, 0.8, 0.95])
def test_truncated_jpeg2000_slice_is_refused_small(tmp_path, keep):
    """The finding: a truncated JPEG-2000 DICOM slice made a "header-only" read allocate
    1.6-3.4 GB. Now a fragment that runs past the end of the file is refused before GDCM
    decodes anything; the series' other slices still read. (A regression guard: these
    synthetic truncations were already refused by GDCM itself before the length check;
    the allocation the probe saw is reproduced by the mutated real CT slice above.)"""
    files = _jpeg2000_series(tmp_path / "series")
    data = files[1].read_bytes()
    files[1].write_bytes(data[: int(len(data) * keep)])
    out = _child(
        """
        from napari_vnet.io import VolumeReadError, read_volume
        try:
            read_volume(sys.argv[1])
            single, message = "read", ""
        except VolumeReadError as exc:
            single, message = "refused", str(exc)
        vol = read_volume(os.path.dirname(sys.argv[1]))
        report(single=single, message=message, series_shape=list(vol.array.shape))
        """,
        str(files[1]),
        limit=None,
    )
    assert out["single"] == "refused" and str(files[1]) in out["message"], out
    assert out["series_shape"] == [2, 64, 64], out
    assert out["peak_mib"] < 600, out
