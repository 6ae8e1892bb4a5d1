"""Core of the scan browser: folder discovery (headers only) and the project store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.workflows.worklist import PROJECT_FILENAME, ScanProject
from napari_vnet.workflows.worklist_scan import discover_scans, order_scans, read_scan

SPACING_XYZ = (0.5, 0.75, 2.0)


def _write(path, shape=(6, 10, 8), value=7, spacing=SPACING_XYZ):
    arr = np.full(shape, value, np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((10.0, -5.0, 3.0))
    sitk.WriteImage(img, str(path))
    return arr


@pytest.fixture
def scans(tmp_path):
    root = tmp_path / "scans"
    (root / "nested").mkdir(parents=True)
    _write(root / "a.nii.gz")
    _write(root / "b.mha", shape=(4, 9, 7))
    _write(root / "nested" / "c.nrrd")
    _write(root / "d.mhd")  # + d.raw, which must not be listed on its own
    (root / "broken.nii.gz").write_bytes(b"not a nifti at all" * 20)
    (root / "notes.txt").write_text("ignored")
    (root / ".hidden.nii.gz").write_bytes(b"x")
    return root


def test_discovery_lists_every_format_and_reports_broken_files(scans):
    entries = list(discover_scans(scans))
    by_key = {e.key: e for e in entries}
    assert set(by_key) == {"a.nii.gz", "b.mha", "broken.nii.gz", "d.mhd", "nested/c.nrrd"}
    assert by_key["b.mha"].shape == (4, 9, 7)
    assert by_key["a.nii.gz"].spacing == pytest.approx(SPACING_XYZ[::-1])
    assert not by_key["nested/c.nrrd"].broken
    bad = by_key["broken.nii.gz"]
    assert bad.broken and "broken.nii.gz" in bad.error
    assert all(not e.broken for k, e in by_key.items() if k != "broken.nii.gz")


def test_discovery_is_lazy_and_reads_headers_only(scans):
    gen = discover_scans(scans)
    first = next(gen)  # a generator: the first entry comes before the walk ends
    assert first.key == "a.nii.gz"
    # pixel data gone: the header still lists (proves no pixel data is read)
    (scans / "d.raw").unlink()
    entry = {e.key: e for e in discover_scans(scans)}["d.mhd"]
    assert not entry.broken and entry.shape == (6, 10, 8)


def test_discovery_excludes_work_folder_and_can_stop(scans):
    work = scans / "work"
    work.mkdir()
    _write(work / "autosave.nii.gz")
    keys = [e.key for e in discover_scans(scans, exclude=[work])]
    assert "work/autosave.nii.gz" not in keys
    assert list(discover_scans(scans, should_stop=lambda: True)) == []
    with pytest.raises(NotADirectoryError, match="missing"):
        list(discover_scans(scans / "missing"))


def test_dicom_series_listed_by_description(tmp_path, shared_data):
    root = tmp_path / "study"
    shutil.copytree(shared_data / "ct-dicom-patient-a" / "dicom", root / "patient-a" / "ct")
    (root / "patient-a" / "ct" / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)
    entries = list(discover_scans(root))
    series = [e for e in entries if e.kind == "dicom" and not e.broken]
    assert len(series) == 1
    s = series[0]
    assert s.name == "patient-a / CT Body 3.0"
    assert s.shape == (20, 512, 512) and s.n_files == 20
    assert s.spacing == pytest.approx((2.0, 0.977, 0.977), abs=1e-3)
    assert any(e.broken and e.key.endswith("junk.dcm") for e in entries)
    vol = read_scan(s)
    assert vol.shape == (20, 512, 512)


def test_project_statuses_labels_and_training_pairs(scans, tmp_path):
    work = tmp_path / "work"
    entry = {e.key: e for e in discover_scans(scans)}["b.mha"]
    project = ScanProject(work, scans)
    assert project.status(entry.key) == "not opened"
    assert project.mark(entry.key, "opened", entry=entry)
    assert project.mark(entry.key, "predicted", weights="w.pt")
    assert not project.mark(entry.key, "opened")  # statuses only move forward
    assert project.status(entry.key) == "predicted"
    vol = read_scan(entry)
    mask = (np.arange(vol.array.size).reshape(vol.shape) % 3).astype(np.uint8)
    ann = {"axis": 0, "slices": [1, 2]}
    path = project.save_labels(entry.key, "Labels/1", vol.with_array(mask), annotated_slices=ann)
    assert path.exists() and path.parent.parent == work / "labels"
    back = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(back), mask)
    assert back.GetSpacing() == pytest.approx(SPACING_XYZ)
    assert back.GetOrigin() == pytest.approx((10.0, -5.0, 3.0))
    assert project.training_pairs() == []  # predicted is not corrected yet
    project.mark(entry.key, "corrected")

    reopened = ScanProject(work)  # a new session: everything came from the file
    assert reopened.scans_root == str(scans.resolve())
    assert reopened.status(entry.key) == "corrected"
    assert reopened.record(entry.key)["weights"] == "w.pt"
    assert set(reopened.record(entry.key)["times"]) >= {"opened", "predicted", "corrected"}
    (pair,) = reopened.training_pairs()
    assert pair["image"] == entry.path and pair["labels"] == path
    assert pair["annotated_slices"] == ann
    with pytest.raises(ValueError, match="unknown scan status"):
        reopened.mark(entry.key, "done")


def test_project_keeps_the_uncertainty_score_of_the_newest_scored_prediction(tmp_path):
    project = ScanProject(tmp_path / "work", tmp_path)
    assert project.uncertainty("a") is None  # never predicted
    project.mark("a", "predicted", weights="w.pt", uncertainty=0.123456789)
    assert project.uncertainty("a") == pytest.approx(0.12346)
    project.mark("a", "corrected")  # no score given: the last one stays
    project.mark("b", "predicted", weights="w.pt")  # predicted without a score
    reopened = ScanProject(tmp_path / "work")
    assert reopened.uncertainty("a") == pytest.approx(0.12346)
    assert reopened.record("a")["uncertainty"] == pytest.approx(0.12346)
    assert reopened.uncertainty("b") is None
    reopened.mark("a", "predicted", uncertainty=0.5)  # a new prediction: its score
    assert ScanProject(tmp_path / "work").uncertainty("a") == 0.5


def test_order_least_certain_first_puts_unpredicted_scans_last():
    scores = {"a": 0.2, "b": None, "c": 0.7, "d": 0.2, "e": None, "f": 0.0}
    keys = list(scores)
    assert order_scans(keys, scores.get, "folder") == keys
    # highest uncertainty first; ties and unscored scans keep the listing order
    assert order_scans(keys, scores.get, "least certain first") == ["c", "a", "d", "f", "b", "e"]
    assert order_scans([], scores.get, "least certain first") == []
    with pytest.raises(ValueError, match="unknown order"):
        order_scans(keys, scores.get, "random")


def test_project_merges_per_key_and_rejects_garbage(tmp_path):
    a, b = ScanProject(tmp_path), ScanProject(tmp_path)
    a.mark("x", "opened")
    b.mark("y", "reviewed")  # b never saw x: it must not drop it
    data = json.loads((tmp_path / PROJECT_FILENAME).read_text())
    assert data["scans"]["x"]["status"] == "opened"
    assert data["scans"]["y"]["status"] == "reviewed"
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp file
    (tmp_path / PROJECT_FILENAME).write_text("{not json")
    fresh = ScanProject(tmp_path)  # a damaged file is set aside, not a dead end
    assert fresh.records == {} and "set aside" in fresh.notice
    (aside,) = tmp_path.glob(PROJECT_FILENAME + ".damaged-*")
    assert aside.read_text() == "{not json"


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_fast_nifti_header_matches_simpleitk(tmp_path, dtype, suffix):
    from napari_vnet.io import read_file_header

    path = tmp_path / f"v{suffix}"
    img = sitk.GetImageFromArray(np.zeros((5, 7, 9), dtype))
    img.SetSpacing((0.3, 0.45, 1.7))
    sitk.WriteImage(img, str(path))
    head = read_file_header(path)
    assert head["shape"] == (5, 7, 9)
    assert head["spacing"] == pytest.approx((1.7, 0.45, 0.3))
    assert head["pixel_type"] == sitk.GetPixelIDValueAsString(img.GetPixelID())


def test_fast_nifti_header_on_real_files(shared_data):
    from napari_vnet.io import read_file_header

    for path in (
        shared_data / "mr" / "mr_small.nii.gz",
        shared_data / "ct-dicom-patient-a" / "labels.nii.gz",
    ):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        head = read_file_header(path)
        assert head["shape"] == tuple(reader.GetSize())[::-1]
        assert head["spacing"] == pytest.approx(tuple(reader.GetSpacing())[::-1])
