"""Batch prediction and evaluation neither mislead nor crash: outputs written into the
input folder are neither confused with the inputs nor taken for new ones; a rerun with
other weights does not skip cases and then name weights that made none of them; file
names that are not UTF-8 reach the CSVs; evaluate stays small with label values near
2^32, gives no Dice for a label in neither map, names a missing GT as GT, and replaces
no file that is not its own output. Also: a training run removes the temporary files
that killed runs of the same output left, and no one else's."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import small_volume, tiny_card, write_dicom_series, write_image
from napari_vnet.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in tests/conftest.py


def _scan(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 20, (12, 16, 16)).astype(np.int16)
    image[4:8, 5:11, 5:11] += 200
    return write_image(path, image)


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _other_weights(tmp_path: Path) -> Path:
    import torch

    from napari_vnet.models import build_model, save_checkpoint

    torch.manual_seed(1)
    card = tiny_card()
    return save_checkpoint(build_model(card), card, tmp_path / "weights" / "other.pt")


def _predict(capsys, src, out, weights, *extra):
    argv = ["predict", str(src), "-w", str(weights), "-o", str(out), "--device", "cpu"]
    rc = main([*argv, "--workers", "0", "--json", *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


# ------------------------------------------------------------------- predict in place


def test_predict_into_its_input_folder_keeps_inputs_and_outputs_apart(
    tmp_path, tiny_weights, capsys
):
    folder = tmp_path / "scans"
    folder.mkdir()
    a, b = _scan(folder / "a.nii.gz", 0), _scan(folder / "b.nrrd", 1)
    gt = write_image(folder / "b_seg.nrrd", np.ones((12, 16, 16), np.uint8))  # the user's own
    series = write_dicom_series(
        folder / "ser",
        small_volume((3, 8, 10)),
        uid="1.2.826.0.1.3680043.8.498.5",
        description="CT",
    )
    inputs = {p: _digest(p) for p in (a, b, gt, *series)}

    rc, out, err = _predict(capsys, folder, folder, tiny_weights)
    assert rc == 0, err
    summary = _last_json(out)
    assert (summary["cases"], summary["written"], summary["skipped"]) == (3, 3, 0), out
    assert "outputs exist" not in out
    assert (folder / "a_seg.nii.gz").is_file()
    assert (folder / "b_seg_seg.nrrd").is_file()  # b_seg.nrrd is the user's: not replaced
    assert (folder / "ser_seg.nii.gz").is_file()  # a series' mask: named after its folder
    assert {p: _digest(p) for p in inputs} == inputs

    # a rerun sees the same inputs (its outputs are not new cases) and skips them
    rc, out, err = _predict(capsys, folder, folder, tiny_weights)
    assert rc == 0, err
    summary = _last_json(out)
    assert (summary["cases"], summary["written"], summary["skipped"]) == (3, 0, 3), out
    # --overwrite redoes the outputs and still never touches an input
    rc, out, err = _predict(capsys, folder, folder, tiny_weights, "--overwrite")
    assert rc == 0, err
    assert _last_json(out)["written"] == 3
    assert {p: _digest(p) for p in inputs} == inputs
    assert not (folder / "a_seg_seg.nii.gz").exists()


# --------------------------------------------------------------- weights of a rerun


def test_rerun_with_other_weights_neither_skips_nor_misnames(tmp_path, tiny_weights, capsys):
    src, out_dir = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _scan(src / "a.nii.gz", 0), _scan(src / "b.nii.gz", 1)
    other = _other_weights(tmp_path)

    rc, out, err = _predict(capsys, src, out_dir, tiny_weights)
    assert rc == 0, err
    first = json.loads((out_dir / "summary.json").read_text())
    made = {p: p.stat().st_mtime_ns for p in out_dir.glob("*.nii.gz")}
    assert len(made) == 2

    rc, out, err = _predict(capsys, src, out_dir, other)
    assert rc == 1
    lines = [ln for ln in err.splitlines() if "napari-vnet predict" in ln]
    assert len(lines) == 1, err
    assert "other weights" in lines[0] and "tiny.pt" in lines[0] and "--overwrite" in lines[0]
    assert {p: p.stat().st_mtime_ns for p in made} == made  # nothing replaced
    assert json.loads((out_dir / "summary.json").read_text()) == first

    rc, out, err = _predict(capsys, src, out_dir, other, "--overwrite")
    assert rc == 0, err
    results = json.loads((out_dir / "summary.json").read_text())["results"]
    assert [r["status"] for r in results] == ["written", "written"]
    assert {r["weights"] for r in results} == {str(other)}
    old_hash = {r["weights_sha256"] for r in first["results"]}
    assert len(old_hash) == 1 and not old_hash & {r["weights_sha256"] for r in results}

    # a rerun with the same weights skips, and its summary names them per case
    rc, out, err = _predict(capsys, src, out_dir, other)
    assert rc == 0, err
    results = json.loads((out_dir / "summary.json").read_text())["results"]
    assert [r["status"] for r in results] == ["skipped", "skipped"]
    assert {r["weights"] for r in results} == {str(other)}


def test_outputs_not_written_by_predict_are_not_skipped(tmp_path, tiny_weights, capsys):
    src, out_dir = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _scan(src / "a.nii.gz", 0)
    out_dir.mkdir()
    theirs = write_image(out_dir / "a.nii.gz", np.ones((12, 16, 16), np.uint8))
    before = _digest(theirs)
    rc, out, err = _predict(capsys, src, out_dir, tiny_weights)
    assert rc == 1 and "not written by napari-vnet predict" in err and "--overwrite" in err
    assert _digest(theirs) == before


# ----------------------------------------------------------------- non-UTF-8 names


def _run_child(code: str, *args: bytes, timeout: float = 240) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (a crash fails the test, not pytest); ``args``
    (raw bytes paths) arrive decoded as Python decodes real names, in ``ARGS``."""
    prelude = "import os, sys\nARGS = [os.fsdecode(bytes.fromhex(a)) for a in sys.argv[1:]]\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *(a.hex() for a in args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def _utf8_rows(path: Path) -> list[dict]:
    text = path.read_bytes().decode("utf-8")  # strict: the file is valid UTF-8
    return list(csv.DictReader(text.splitlines()))


def test_statistics_csv_with_a_non_utf8_name(tmp_path, tiny_weights):
    src, out_dir = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    os.rename(_scan(src / "x.nii.gz"), os.path.join(os.fsencode(src), b"case_\xff.nii.gz"))
    code = """
        from napari_vnet.cli import main
        src, out, weights = ARGS
        argv = ["predict", src, "-w", weights, "-o", out, "--device", "cpu", "--statistics"]
        for _ in range(2):  # the rerun (skipping the case) writes the CSV too
            rc = main(argv)
            print("rc", rc)
    """
    proc = _run_child(code, os.fsencode(src), os.fsencode(out_dir), os.fsencode(tiny_weights))
    assert proc.stdout.count("rc 0") == 2, proc.stdout + proc.stderr[-3000:]
    rows = _utf8_rows(out_dir / "statistics.csv")
    assert rows and {r["case"] for r in rows} == {"case_\\xff"}
    assert all(r["input"].endswith("case_\\xff.nii.gz") for r in rows)


def test_evaluate_folder_csv_with_a_non_utf8_name(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[2:4, 3:7, 3:9] = 1
    for folder in (pred, gt):
        folder.mkdir()
        write_image(folder / "x.nii.gz", labels)
        os.rename(folder / "x.nii.gz", os.path.join(os.fsencode(folder), b"case_\xff.nii.gz"))
    code = """
        from napari_vnet.cli import main
        print("rc", main(["evaluate", ARGS[0], ARGS[1]]))
    """
    proc = _run_child(code, os.fsencode(pred), os.fsencode(gt))
    assert "rc 0" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    rows = _utf8_rows(pred / "evaluation.csv")
    assert [(r["case"], r["dice"]) for r in rows] == [("case_\\xff", "1.0")]
    summary = json.loads((pred / "evaluation.json").read_text())
    assert summary["cases"] == 1


# ---------------------------------------------------------------------- evaluate


_MEMORY_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from napari_vnet.cli import main
rc = main(["evaluate", *sys.argv[1:], "--json"])
with open("/proc/self/status") as fh:
    hwm = [int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:")][0]
print("RESULT " + json.dumps({"rc": rc, "peak_mib": hwm / 1024}))
"""


def _evaluate_small(*args: str) -> tuple[dict, dict]:
    """Run evaluate in a child limited to 4 GB of address space (a table sized by the
    largest label value would take 32 GiB); (its JSON, its exit status and peak)."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, *args], capture_output=True, text=True, timeout=300
    )
    lines = proc.stdout.strip().splitlines()
    result = [ln for ln in lines if ln.startswith("RESULT ")]
    assert result, proc.stdout[-2000:] + proc.stderr[-3000:]
    memory = json.loads(result[0][len("RESULT ") :])
    assert memory["rc"] == 0, proc.stderr[-3000:]
    return json.loads(lines[-2]), memory


@pytest.mark.parametrize(
    "pred_value, gt_value, flags",
    [
        (1, 4_000_000_000, ["--map", "1=4000000000"]),
        (4_294_967_290, 3, ["--map", "4294967290=3"]),
        (4_294_967_290, 4_294_967_290, []),
    ],
)
def test_evaluate_label_values_near_2_32_stay_small(tmp_path, pred_value, gt_value, flags):
    mask = np.zeros((6, 10, 12), bool)
    mask[2:4, 3:7, 3:9] = True
    pred = write_image(tmp_path / "pred.nrrd", np.where(mask, pred_value, 0).astype(np.uint32))
    gt = write_image(tmp_path / "gt.nrrd", np.where(mask, gt_value, 0).astype(np.uint32))
    out, memory = _evaluate_small(str(pred), str(gt), *flags)
    assert out["dice"] == {str(gt_value): 1.0}
    assert memory["peak_mib"] < 1500, memory


def test_label_in_neither_map_has_no_dice(tmp_path, capsys, caplog):
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[2:4, 3:7, 3:9] = 1
    pred = write_image(tmp_path / "pred.nii.gz", labels)
    gt = write_image(tmp_path / "gt.nii.gz", labels)
    with caplog.at_level(logging.WARNING, logger="napari_vnet"):
        rc = main(["evaluate", str(pred), str(gt), "--labels", "1,7", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    out = _last_json(captured.out)
    assert out["dice"] == {"1": 1.0, "7": None} and out["hd95_mm"]["7"] is None
    assert out["mean_dice"] == 1.0 and out["absent_from_both"] == [7]
    row = next(ln for ln in captured.out.splitlines() if ln.split()[:1] == ["7"])
    assert "n/a" in row and "1.0000" not in row
    assert "neither PRED nor GT" in caplog.text and "not 1.0" in caplog.text

    # folders: the label is not averaged in as a perfect score
    (tmp_path / "p").mkdir(), (tmp_path / "g").mkdir()
    write_image(tmp_path / "p" / "c.nii.gz", labels)
    write_image(tmp_path / "g" / "c.nii.gz", labels)
    rc = main(["evaluate", str(tmp_path / "p"), str(tmp_path / "g"), "--labels", "1,7"])
    assert rc == 0
    per_label = json.loads((tmp_path / "p" / "evaluation.json").read_text())["per_label"]
    assert per_label["7"]["dice_mean"] is None and per_label["7"]["cases"] == 0
    assert per_label["7"]["absent_from_both"] == 1 and per_label["1"]["dice_mean"] == 1.0
    assert "n/a" in capsys.readouterr().out


def test_missing_gt_folder_is_named_as_gt(tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    write_image(pred / "c.nii.gz", np.ones((4, 6, 6), np.uint8))
    missing = tmp_path / "no_such_gt"
    assert main(["evaluate", str(pred), str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"GT {missing}" in err and "no such" in err and f"{pred}:" not in err, err
    assert main(["evaluate", str(tmp_path / "no_pred"), str(pred)]) == 1
    assert f"PRED {tmp_path / 'no_pred'}" in capsys.readouterr().err
    # a file as GT for a folder of predictions: GT is what is wrong
    gt_file = write_image(tmp_path / "gt.nii.gz", np.ones((4, 6, 6), np.uint8))
    assert main(["evaluate", str(pred), str(gt_file)]) == 1
    err = capsys.readouterr().err
    assert f"GT {gt_file}" in err and "folder" in err, err


def test_out_json_replaces_only_its_own_earlier_output(tmp_path, capsys):
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[2:4, 3:7, 3:9] = 1
    pred = write_image(tmp_path / "pred.nii.gz", labels)
    gt = write_image(tmp_path / "gt.nii.gz", labels)
    theirs = tmp_path / "notes.json"
    theirs.write_text('{"my": "notes"}')
    folder = tmp_path / "a_folder.json"
    folder.mkdir()
    for target in (gt, pred, theirs, folder):
        before = None if target.is_dir() else _digest(target)
        assert main(["evaluate", str(pred), str(gt), "--out-json", str(target)]) == 1
        err = capsys.readouterr().err
        assert str(target) in err and "--out-json" in err, err
        assert before is None or _digest(target) == before
    assert main(["evaluate", str(pred), str(gt), "--out-csv", str(gt)]) == 1
    assert "--out-csv" in capsys.readouterr().err
    # its own output is replaced on a rerun
    mine = tmp_path / "scores.json"
    for _ in range(2):
        assert main(["evaluate", str(pred), str(gt), "--out-json", str(mine)]) == 0
        assert json.loads(mine.read_text())["dice"] == {"1": 1.0}
    # folders: a user's own evaluation.json in PRED_DIR is not replaced
    p, g = tmp_path / "p", tmp_path / "g"
    p.mkdir(), g.mkdir()
    write_image(p / "c.nii.gz", labels), write_image(g / "c.nii.gz", labels)
    (p / "evaluation.json").write_text("[1, 2, 3]")
    assert main(["evaluate", str(p), str(g)]) == 1
    assert "evaluation.json" in capsys.readouterr().err
    assert (p / "evaluation.json").read_text() == "[1, 2, 3]"


# ------------------------------------------------------------------------ training


def test_training_removes_its_outputs_orphaned_temporary_files(tmp_path, tiny_weights, capsys):
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[2:6, 4:12, 4:12] = 1
    rng = np.random.default_rng(0)
    image = (labels * 100 + rng.normal(0, 5, labels.shape)).astype(np.int16)
    image_path = write_image(tmp_path / "ct.nii.gz", image)
    labels_path = write_image(tmp_path / "seg.nii.gz", labels)
    out = tmp_path / "runs" / "tuned.pt"
    out.parent.mkdir()
    ours = [".tuned.resume.k3x9_q2a.tmp.pt", ".tuned.ab12cd34.tmp.pt"]
    others = [
        ".other.resume.k3x9_q2a.tmp.pt",  # another output's
        ".tuned.v2.resume.k3x9_q2a.tmp.pt",  # tuned.v2.pt's, not tuned.pt's
        ".tuned.v2.ab12cd34.tmp.pt",
        "tuned.resume.notes.txt",
    ]
    for name in ours + others:
        (out.parent / name).write_bytes(b"half a checkpoint")
    rc = main(
        ["train", "--image", str(image_path), "--labels", str(labels_path), "--iterations", "2",
         "--patch-size", "8", "16", "16", "--batch-size", "1", "--device", "cpu",
         "--weights", str(tiny_weights), "--out", str(out)]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    left = sorted(p.name for p in out.parent.iterdir())
    assert not set(ours) & set(left), left
    assert set(others) <= set(left), left
    assert "tuned.pt" in left
