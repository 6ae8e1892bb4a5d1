"""`napari-vnet predict INPUT_DIR --out OUT_DIR`: a folder of real files in five formats
(NIfTI gz/plain, MetaImage, NRRD, a DICOM series written by SimpleITK/GDCM) through a
real (tiny, untrained) V-Net checkpoint; statistics, probabilities, DICOM-SEG,
partitioning and a 2-process gloo torchrun run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.cli import main
from napari_vnet.io import Volume, read_volume, write_volume
from napari_vnet.models import ClassInfo, ModelCard, build_model, save_checkpoint
from napari_vnet.workflows.batch import discover_cases
from napari_vnet.workflows.batch_folder import shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py

# name -> (shape z y x, spacing, origin, direction)
ROT = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
FILES = {
    "a.nii.gz": ((9, 20, 18), (2.5, 0.9, 0.7), (-40.0, 12.5, -7.25), np.eye(3)),
    "b.mha": ((10, 17, 21), (1.5, 1.1, 1.2), (3.0, -2.0, 5.0), ROT),
    "c.nrrd": ((8, 22, 16), (3.0, 0.8, 0.8), (0.0, 0.0, 0.0), np.eye(3)),
    "sub/d.nii": ((11, 16, 19), (2.0, 1.0, 1.0), (7.0, 8.0, -9.0), np.eye(3)),
}
DICOM_SHAPE = (6, 18, 20)
DICOM_SPACING = (2.5, 0.8, 0.7)  # z y x
DICOM_ORIGIN = (30.0, -20.0, 10.0)  # z y x


def blob_image(shape, seed):
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 20, size=shape).astype(np.float32)
    z, y, x = (s // 2 for s in shape)
    image[z - 2 : z + 2, y - 4 : y + 4, x - 4 : x + 4] += 200.0
    return image


def write_dicom_series(folder, arr, *, spacing_zyx, origin_zyx, uid="1.2.826.0.1.3680043.99.1"):
    """One CT DICOM file per slice (int16), as a scanner folder would hold."""
    os.makedirs(folder, exist_ok=True)
    vol = sitk.GetImageFromArray(arr.astype(np.int16))
    vol.SetSpacing(spacing_zyx[::-1])
    vol.SetOrigin(origin_zyx[::-1])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    for k in range(arr.shape[0]):
        sl = vol[:, :, k]
        tags = {
            "0020|000e": uid,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": f"{uid}.{k + 1}",
            "0008|103e": "synthetic abdomen",
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.99",
            "0020|0052": "1.2.826.0.1.3680043.99.2",  # frame of reference
            "0010|0010": "Doe^Jane",
            "0010|0020": "PAT-1",
            "0020|0011": "3",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(
                f"{v:.6f}" for v in vol.TransformIndexToPhysicalPoint((0, 0, k))
            ),
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(os.path.join(folder, f"IM{(k * 7) % 11:04d}.dcm"))  # scrambled
        writer.Execute(sl)


def make_card(patch=(8, 8, 8)):
    return ModelCard(
        arch="vnet",
        arch_kwargs={"channels": [2, 4], "kernel_size": 3},
        classes=[
            ClassInfo(0, "background"),
            ClassInfo(5, "liver", (0.8, 0.3, 0.2, 1.0)),
            ClassInfo(1, "spleen", (0.2, 0.3, 0.8, 1.0)),
        ],
        normalization={"kind": "zscore"},
        spacing=None,  # no resampling: fast
        patch_size=patch,
    )


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """A folder with 4 volume files of different formats and a DICOM series, and a
    tiny untrained V-Net whose output is a deterministic function of the input."""
    root = tmp_path_factory.mktemp("batch")
    src = root / "in"
    for i, (name, (shape, spacing, origin, direction)) in enumerate(FILES.items()):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        vol = Volume(blob_image(shape, i), spacing=spacing, origin=origin, direction=direction)
        write_volume(vol, src / name)
    write_dicom_series(
        src / "patient1" / "ct",
        blob_image(DICOM_SHAPE, 9),
        spacing_zyx=DICOM_SPACING,
        origin_zyx=DICOM_ORIGIN,
    )
    import torch

    torch.manual_seed(3)
    card = make_card()
    ckpt = save_checkpoint(build_model(card), card, root / "tiny.pt")
    return src, ckpt


def run_cli(argv, capsys):
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


EXPECTED = {
    "a.nii.gz": "a.nii.gz",
    "b.mha": "b.mha",
    "c.nrrd": "c.nrrd",
    "sub/d.nii": "sub/d.nii",
    "patient1/ct": "patient1/ct.nii.gz",
}


def test_discovery_names_outputs_after_inputs(scans):
    src, _ = scans
    cases = discover_cases(src)
    assert [c.stem for c in cases] == ["a", "b", "c", "patient1/ct", "sub/d"]
    assert {c.kind for c in cases} == {"file", "dicom"}
    assert [c.stem for c in discover_cases(src, pattern="*.n*")] == ["a", "c", "sub/d"]
    assert shard(list(range(5)), 2, 1) == [1, 3]


def test_folder_predict_keeps_geometry_statistics_and_rerun_skips(scans, tmp_path, capsys):
    src, ckpt = scans
    out = tmp_path / "out"
    argv = ["predict", str(src), "-w", str(ckpt), "--out", str(out), "--device", "cpu"]
    rc, stdout, err = run_cli([*argv, "--statistics", "--save-probabilities", "--json"], capsys)
    assert rc == 0, err
    summary = last_json(stdout)
    assert summary["written"] == 5 and summary["failed"] == 0 and summary["skipped"] == 0
    assert "left" in stdout  # overall progress with time left
    rows = list(csv.DictReader(open(out / "statistics.csv", encoding="utf-8")))
    assert len(rows) == 5 * 2  # 5 cases x 2 foreground classes, with names
    assert {r["name"] for r in rows} == {"liver", "spleen"}
    for rel, out_rel in EXPECTED.items():
        mask = read_volume(out / out_rel)
        source = read_volume(src / rel)
        assert mask.shape == source.shape, rel
        np.testing.assert_allclose(mask.spacing, source.spacing, rtol=1e-5)
        np.testing.assert_allclose(mask.origin, source.origin, atol=1e-4)
        np.testing.assert_allclose(mask.direction, source.direction, atol=1e-6)
        assert set(np.unique(mask.array)) <= {0, 1, 5}
        stem = out_rel.split(".")[0]
        stats = json.loads((out / f"{stem}_statistics.json").read_text())
        voxel_ml = float(np.prod(source.spacing)) / 1000.0
        assert stats["voxel_volume_ml"] == pytest.approx(voxel_ml)
        for cls in stats["classes"]:
            count = int(np.count_nonzero(mask.array == cls["label"]))
            assert cls["voxels"] == count
            assert cls["volume_ml"] == pytest.approx(count * voxel_ml, rel=1e-6, abs=1e-6)
            if count:
                inside = source.array[mask.array == cls["label"]].astype(np.float64)
                mean = inside.mean()
                assert cls["intensity_mean"] == pytest.approx(mean, rel=1e-5, abs=1e-4), rel
                assert cls["intensity_std"] == pytest.approx(inside.std(), rel=1e-4, abs=1e-3)
            else:
                assert cls["intensity_mean"] is None
        with np.load(out / f"{stem}_probabilities.npz") as npz:
            probs = npz["probabilities"]
            assert probs.dtype == np.float16 and probs.shape == (3, *source.shape)
            assert list(npz["label_values"]) == [0, 5, 1]
            np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=1e-2)
            # the label map is the arg-max of the probabilities (ties aside)
            agree = np.mean(np.asarray([0, 5, 1])[probs.argmax(0)] == mask.array)
            assert agree > 0.99
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp files left
    assert any(int(r["voxels"]) > 0 for r in rows)  # the intensity branch was exercised
    # a case in a folder is segmented exactly as the single-file command does it
    single = tmp_path / "single.mha"
    assert main(["predict", str(src / "b.mha"), "-w", str(ckpt), "-o", str(single)]) == 0
    np.testing.assert_array_equal(read_volume(single).array, read_volume(out / "b.mha").array)
    capsys.readouterr()

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    rc, stdout, err = run_cli([*argv, "--statistics", "--save-probabilities", "--json"], capsys)
    assert rc == 0, err
    summary = last_json(stdout)
    assert summary["skipped"] == 5 and summary["written"] == 0
    for p, t in mtimes.items():
        if p.name not in ("summary.json", "statistics.csv"):
            assert p.stat().st_mtime_ns == t, p  # nothing rewritten
    # the summary CSV of the rerun still lists every case (from the per-case JSON)
    assert len(list(csv.DictReader(open(out / "statistics.csv", encoding="utf-8")))) == 10
    # --overwrite redoes them; a missing output redoes only that case
    (out / "b.mha").unlink()
    rc, stdout, _ = run_cli([*argv, "--json"], capsys)
    assert last_json(stdout)["written"] == 1 and last_json(stdout)["skipped"] == 4
    rc, stdout, _ = run_cli([*argv, "--overwrite", "--json"], capsys)
    assert last_json(stdout)["written"] == 5


def test_corrupt_file_is_reported_and_the_others_written(scans, tmp_path, capsys):
    src, ckpt = scans
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.nii.gz", "c.nrrd"):
        (folder / name).write_bytes((src / name).read_bytes())
    good = (src / "b.mha").read_bytes()
    (folder / "broken.mha").write_bytes(good[: len(good) // 2])  # truncated pixel data
    (folder / "garbage.nii.gz").write_bytes(b"this is not a NIfTI file at all" * 20)
    out = folder / "masks"  # inside the input folder: never taken for inputs
    argv = ["predict", str(folder), "-w", str(ckpt), "-o", str(out), "--json", "--workers", "1"]
    rc, stdout, err = run_cli(argv, capsys)
    assert rc == 1  # a case failed ...
    summary = last_json(stdout)
    assert summary["written"] == 2 and summary["failed"] == 2
    assert "broken.mha" in err and "garbage.nii.gz" in err  # ... and is named
    assert (out / "a.nii.gz").is_file() and (out / "c.nrrd").is_file()
    assert not (out / "broken.mha").exists() and not (out / "garbage.nii.gz").exists()
    results = json.loads((out / "summary.json").read_text())["results"]
    failed = {r["stem"]: r["error"] for r in results if r["status"] == "failed"}
    assert set(failed) == {"broken", "garbage"}
    assert all(msg for msg in failed.values())
    rc, stdout, err = run_cli(argv, capsys)  # the rerun skips the written, retries the failed
    summary = last_json(stdout)
    assert (summary["cases"], summary["skipped"], summary["failed"]) == (4, 2, 2)


def test_parts_agree_with_a_single_run(scans, tmp_path, capsys):
    src, ckpt = scans
    base = ["predict", str(src), "-w", str(ckpt), "--device", "cpu", "--statistics"]
    single, halves = tmp_path / "single", tmp_path / "halves"
    assert run_cli([*base, "-o", str(single)], capsys)[0] == 0
    per_part = []
    for k in (0, 1):
        rc, stdout, err = run_cli(
            [
                *base,
                "-o",
                str(halves),
                "--num-parts",
                "2",
                "--part-id",
                str(k),
                "--json",
                "--workers",
                str(k),
            ],  # part 1 without threads: same results
            capsys,
        )
        assert rc == 0, err
        per_part.append(last_json(stdout)["written"])
    assert per_part == [3, 2]
    # part 0 ran with --workers 0: the segmenting thread waited for every read in full
    serial = json.loads((halves / "summary.part-0-of-2.json").read_text())
    assert serial["timing_totals_s"]["read_s"] > 0
    for r in serial["results"]:
        assert r["read_wait_s"] >= 0.9 * r["read_s"] and r["write_s"] > 0
    assert (halves / "statistics.part-1-of-2.csv").is_file()
    for out_rel in EXPECTED.values():
        a, b = read_volume(single / out_rel), read_volume(halves / out_rel)
        np.testing.assert_array_equal(a.array, b.array)
    rows = []
    for k in (0, 1):
        rows += list(csv.DictReader(open(halves / f"statistics.part-{k}-of-2.csv")))
    whole = list(csv.DictReader(open(single / "statistics.csv")))

    def order(r):
        return (r["case"], r["label"])

    assert sorted(rows, key=order) == sorted(whole, key=order)


def test_batch_only_flags_are_refused_for_one_file(scans, tmp_path, capsys):
    src, ckpt = scans
    rc, _, err = run_cli(
        ["predict", str(src / "a.nii.gz"), "-w", str(ckpt), "-o", str(tmp_path / "m.nii.gz"),
         "--save-probabilities"],
        capsys,
    )  # fmt: skip  (--statistics is for one file too since issue 29)
    assert rc == 1 and "--save-probabilities" in err and "folder" in err


def test_dicom_seg_reads_back_as_the_same_mask(scans, tmp_path, capsys):
    import highdicom as hd  # testing extra
    import pydicom

    src, ckpt = scans
    out = tmp_path / "seg"
    rc, stdout, err = run_cli(
        ["predict", str(src), "-w", str(ckpt), "-o", str(out), "--format", "dicom-seg",
         "--pattern", "patient*", "--json"],
        capsys,
    )  # fmt: skip
    assert rc == 0, err
    assert last_json(stdout)["written"] == 1
    seg_path = out / "patient1" / "ct.dcm"
    # the same case as a label volume, for reference
    ref_out = tmp_path / "ref"
    assert main(["predict", str(src), "-w", str(ckpt), "-o", str(ref_out), "--pattern",
                 "patient*"]) == 0  # fmt: skip
    mask = read_volume(ref_out / "patient1" / "ct.nii.gz").array
    assert np.count_nonzero(mask), "the test model should segment something"

    ds = pydicom.dcmread(seg_path)
    assert ds.Modality == "SEG" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    labels = [s.SegmentLabel for s in ds.SegmentSequence]
    assert labels == ["liver", "spleen"]
    seg = hd.seg.segread(seg_path)
    # source images, by position along z: the same slice order as the volume
    sources = [pydicom.dcmread(p) for p in (src / "patient1" / "ct").iterdir()]
    sources.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    uids = [d.SOPInstanceUID for d in sources]
    (ref_series,) = ds.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in ref_series.ReferencedInstanceSequence} <= set(uids)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
    )
    assert pixels.shape == mask.shape
    back = np.asarray([0, 5, 1])[pixels]  # segment number -> label value
    np.testing.assert_array_equal(back, mask)


def test_predict_leaves_the_callers_plain_nifti_array_alone(scans):
    """float32 read from a plain .nii: numpy's asarray gives a new *view* of it, which
    normalisation once modified in place (the statistics then saw z-scores)."""
    from napari_vnet.inference import predict
    from napari_vnet.models import load_checkpoint

    src, ckpt = scans
    vol = read_volume(src / "sub" / "d.nii")
    before = vol.array.copy()
    model, card = load_checkpoint(ckpt)
    predict(vol, model, card, device="cpu")
    np.testing.assert_array_equal(vol.array, before)


def test_dicom_seg_on_the_real_ct_series(shared_data, tmp_path):
    """The shared 20-slice CT: a threshold mask written as DICOM-SEG comes back the same
    on every source frame (matched by SOP Instance UID), with names and colours."""
    import highdicom as hd  # testing extra
    import pydicom

    from napari_vnet.io.dicom_seg import write_dicom_seg

    ct = read_volume(shared_data / "ct-dicom-patient-a" / "dicom")
    mask = np.zeros(ct.shape, np.uint8)
    mask[ct.array > 200] = 5  # bone-ish
    mask[(ct.array > 20) & (ct.array < 80)] = 1  # soft tissue
    mask[:, :, :100] = 0
    card = make_card()
    path = write_dicom_seg(mask, ct, card, tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    # this anonymised series has blank SOP Instance UIDs; the file meta keeps them
    uids = [pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
            for f in ct.metadata["source_files"]]  # fmt: skip
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
    )
    np.testing.assert_array_equal(np.asarray([0, 5, 1])[pixels], mask)
    ds = pydicom.dcmread(path)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["liver", "spleen"]
    lab = hd.color.CIELabColor.from_dicom_value(ds.SegmentSequence[0].RecommendedDisplayCIELabValue)
    assert np.allclose(lab.to_rgb(), (204, 76, 51), atol=2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_gloo_torchrun_writes_each_case_once(scans, tmp_path):
    src, ckpt = scans
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "napari_vnet.cli", "predict", str(src), "-w", str(ckpt), "--out", str(out),
        "--device", "cpu", "--statistics", "--json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one summary, by rank 0, covering both ranks' cases
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout
    summary = json.loads(lines[0])
    assert summary["world_size"] == 2 and summary["written"] == 5
    assert sorted(p.name for p in out.glob("summary*")) == ["summary.json"]
    results = json.loads((out / "summary.json").read_text())["results"]
    assert sorted(r["stem"] for r in results) == sorted(s.split(".")[0] for s in EXPECTED.values())
    assert {r["rank"] for r in results} == {0, 1}
    # each case written exactly once: every rank announced its own share, no overlap
    written = [ln for ln in proc.stdout.splitlines() if "] written" in ln]
    stems = [ln.split("] written", 1)[1].split(":", 1)[0].strip() for ln in written]
    assert sorted(stems) == sorted(r["stem"] for r in results)
    for out_rel in EXPECTED.values():
        assert (out / out_rel).is_file()
    assert len(list(csv.DictReader(open(out / "statistics.csv")))) == 10
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_dicom_seg_without_highdicom_says_what_to_install(scans, tmp_path, capsys, monkeypatch):
    src, ckpt = scans
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if not installed
    out = tmp_path / "seg"
    rc, _, err = run_cli(
        ["predict", str(src), "-w", str(ckpt), "-o", str(out), "--format", "dicom-seg"], capsys
    )
    assert rc == 1 and "napari-vnet[dicom-seg]" in err
    assert not out.exists()  # refused before anything was done
