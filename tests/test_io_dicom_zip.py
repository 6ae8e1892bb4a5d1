"""A zipped DICOM folder reads as the folder does (``read_volume``, ``predict scan.zip``, the
napari reader), and unsafe archives are refused naming the zip and the problem."""

from __future__ import annotations

import os
import stat
import zipfile

import numpy as np
import pytest

from napari_vnet._reader import napari_get_reader, read_medical
from napari_vnet.cli import main
from napari_vnet.io import VolumeReadError, read_volume
from test_io_dicom import write_dicom_series


def _zip_folder(folder, dest, prefix=""):
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for root, _, names in os.walk(folder):
            for name in sorted(names):
                full = os.path.join(root, name)
                zf.write(full, prefix + os.path.relpath(full, folder))
    return dest


def _assert_same_volume(a, b):
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.array, b.array)
    assert a.spacing == b.spacing and a.origin == b.origin
    np.testing.assert_array_equal(a.direction, b.direction)


@pytest.fixture
def two_series(tmp_path):
    folder = tmp_path / "study"
    rng = np.random.default_rng(0)
    for i, desc in enumerate(("arterial", "venous")):
        arr = rng.integers(-100, 300, size=(5 + i, 12, 10)).astype(np.int16)
        names = [f"s{i}_{k:03d}.dcm" for k in range(5 + i)]
        uid = f"1.2.826.0.1.99.{i + 1}"
        write_dicom_series(folder, arr, uid=uid, description=desc, number=i + 1, names=names)
    return folder


def test_real_ct_zip_reads_as_its_folder(shared_data, tmp_path):
    folder = shared_data / "ct-dicom-patient-a" / "dicom"
    zipped = _zip_folder(folder, tmp_path / "ct.zip", prefix="patient/dicom/")
    vol = read_volume(zipped)
    _assert_same_volume(vol, read_volume(folder))
    assert vol.path == str(zipped) and vol.metadata["modality"] == "CT"
    files = vol.metadata["source_files"]
    assert all(os.path.isfile(f) for f in files)  # kept while the volume lives (DICOM-SEG)
    del vol
    import gc

    gc.collect()
    assert not any(os.path.exists(f) for f in files)  # then removed
    # the napari reader claims it (by peeking) and gives the folder's layer
    assert napari_get_reader(str(zipped)) is read_medical
    ((data, kw, kind),) = read_medical(str(zipped))
    ((fdata, fkw, _),) = read_medical(str(folder))
    assert kind == "image" and kw["name"] == fkw["name"]
    np.testing.assert_array_equal(data, fdata)
    np.testing.assert_allclose(kw["affine"] if "affine" in kw else kw["scale"],
                               fkw["affine"] if "affine" in fkw else fkw["scale"])  # fmt: skip


def test_zip_with_several_series_picks_as_a_folder(two_series, tmp_path):
    zipped = _zip_folder(two_series, tmp_path / "study.zip")
    with pytest.raises(VolumeReadError) as info:
        read_volume(zipped)
    text = str(info.value)
    assert str(zipped) in text and "2 DICOM series" in text and "venous" in text
    assert "napari-vnet-zip-" not in text  # the temporary folder is not what is named
    for which in (0, 1, "1.2.826.0.1.99.2"):
        _assert_same_volume(
            read_volume(zipped, series=which), read_volume(two_series, series=which)
        )
    assert len(read_medical(str(zipped))) == 2  # napari: one layer per series, as a folder


def test_predict_takes_a_zip(two_series, tmp_path, tiny_checkpoint, capsys):
    one = tmp_path / "one"
    one.mkdir()
    for f in sorted(two_series.glob("s0_*.dcm")):
        (one / f.name).write_bytes(f.read_bytes())
    zipped = _zip_folder(one, tmp_path / "scan.zip")
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    out_zip, out_dir = tmp_path / "from_zip.nii.gz", tmp_path / "from_dir.nii.gz"
    assert (
        main(["predict", str(zipped), "-w", str(ckpt), "-o", str(out_zip), "--device", "cpu"]) == 0
    )
    assert main(["predict", str(one), "-w", str(ckpt), "-o", str(out_dir), "--device", "cpu"]) == 0
    capsys.readouterr()
    _assert_same_volume(read_volume(out_zip), read_volume(out_dir))


def _member(zf, name, data=b"x", **attrs):
    info = zipfile.ZipInfo(name)
    for k, v in attrs.items():
        setattr(info, k, v)
    zf.writestr(info, data)


def _mark_encrypted(path, name):
    """Set the "encrypted" flag of member ``name`` in its local and central headers
    (zipfile writes no encrypted members)."""
    raw = bytearray(path.read_bytes())
    for sig, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        start = raw.find(sig)
        while start >= 0:
            if raw[start + name_at : start + name_at + len(name)] == name.encode():
                raw[start + flag_at] |= 0x1
            start = raw.find(sig, start + 4)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("name", "attrs", "words"),
    [
        ("../evil.dcm", {}, "outside"),
        ("a/../../evil.dcm", {}, "outside"),
        ("/etc/evil.dcm", {}, "absolute"),
        ("C:/evil.dcm", {}, "absolute"),
        ("link.dcm", {"external_attr": (stat.S_IFLNK | 0o777) << 16}, "symbolic link"),
        ("secret.dcm", {}, "encrypted"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path, name, attrs, words):
    zipped = tmp_path / "bad.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        _member(zf, "ok/IM0001.dcm", b"\0" * 200)
        _member(zf, name, b"\0" * 200, **attrs)
    if words == "encrypted":
        _mark_encrypted(zipped, name)
    with pytest.raises(VolumeReadError) as info:
        read_volume(zipped)
    assert str(zipped) in str(info.value) and words in str(info.value)
    assert not (tmp_path / "evil.dcm").exists() and not (tmp_path.parent / "evil.dcm").exists()


def test_zip_bomb_and_non_dicom_zips(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("IM0001.dcm", b"\0" * (8 << 20))  # 8 MiB of zeros: ~8 kB packed
    assert bomb.stat().st_size < 100_000
    monkeypatch.setenv("NAPARI_VNET_MEMORY_LIMIT", "1M")
    with pytest.raises(VolumeReadError) as info:
        read_volume(bomb)
    assert str(bomb) in str(info.value) and "zip bomb" in str(info.value)
    monkeypatch.delenv("NAPARI_VNET_MEMORY_LIMIT")

    plain = tmp_path / "notes.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("readme.txt", "no images here")
    assert napari_get_reader(str(plain)) is None  # napari's own readers get it
    with pytest.raises(VolumeReadError, match="no DICOM image series found in the zip"):
        read_volume(plain)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    assert napari_get_reader(str(broken)) is None
    with pytest.raises(VolumeReadError, match="not a readable zip"):
        read_volume(broken)
