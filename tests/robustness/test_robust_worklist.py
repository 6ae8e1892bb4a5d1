"""The scans project: one scans folder per project, no lost updates between sessions or
processes, one autosave file per layer, and folder discovery that survives symbolic
link loops and huge trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import small_volume, write_image
from napari_vnet.io import Volume, read_volume
from napari_vnet.workflows.worklist import PROJECT_FILENAME, ProjectError, ScanProject
from napari_vnet.workflows.worklist_scan import discover_scans


def _labels(value: int) -> Volume:
    a = np.zeros((4, 6, 8), np.uint8)
    a[1:3, 2:4, 2:6] = value
    return Volume(a, spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))


def test_project_belongs_to_one_scans_folder(tmp_path):
    first, second, work = tmp_path / "patient-a", tmp_path / "patient-b", tmp_path / "work"
    for folder in (first, second):
        folder.mkdir()
        write_image(folder / "ct0.nii.gz", small_volume())
    project = ScanProject(work, first)
    (entry,) = list(discover_scans(first))
    project.save_labels(entry.key, "liver", _labels(1), entry=entry)
    project.mark(entry.key, "reviewed", entry=entry)
    # the same relative name in another folder never receives patient A's labels
    with pytest.raises(ProjectError, match="patient-a") as err:
        ScanProject(work, second)
    assert "patient-b" in str(err.value) and "choose another work folder" in str(err.value)
    with pytest.raises(ProjectError, match="patient-a"):
        ScanProject(work).bind(second)
    stored = json.loads((work / PROJECT_FILENAME).read_text())
    assert stored["scans_root"] == str(first.resolve())
    # the owner still opens it
    again = ScanProject(work, first)
    assert again.status("ct0.nii.gz") == "reviewed" and again.saved_labels("ct0.nii.gz")


_MARKER = """
import sys
from napari_vnet.workflows.worklist import ScanProject
work, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
project = ScanProject(work)
sys.stdin.readline()  # start together
for i in range(n):
    project.mark(f"{who}-{i:03d}.nii.gz", "opened")
print("done", who)
"""


def test_two_processes_marking_lose_nothing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MARKER, str(work), who, "300"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for who in ("a", "b")
    ]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out
    records = json.loads((work / PROJECT_FILENAME).read_text())["scans"]
    assert len(records) == 600, f"{600 - len(records)} of 600 updates lost"
    assert {r["status"] for r in records.values()} == {"opened"}


def test_second_session_keeps_status_and_labels_and_is_told(tmp_path):
    work = tmp_path / "work"
    first = ScanProject(work, tmp_path)
    second = ScanProject(work, tmp_path)  # opened before the first did anything
    assert first.acquire_session("viewer 1") is None
    notice = second.acquire_session("viewer 2")
    assert notice and "Another napari-vnet session" in notice and "viewer 1" in notice
    first.mark("ct0.nii.gz", "reviewed")
    first.save_labels("ct0.nii.gz", "liver", _labels(1))
    # the second session's stale view must not undo the first's work
    second.mark("ct0.nii.gz", "opened")
    second.save_labels("ct0.nii.gz", "spleen", _labels(2))
    fresh = ScanProject(work, tmp_path)
    assert fresh.status("ct0.nii.gz") == "reviewed"
    assert sorted(fresh.record("ct0.nii.gz")["labels"]) == ["liver", "spleen"]
    first.release_session()
    assert second.acquire_session("viewer 2") is None


@pytest.mark.parametrize(
    "names",
    [("肝臓", "脾臓"), ("Leber (K)", "Leber [K]"), ("x" * 80 + " liver", "x" * 80 + " spleen")],
)
def test_autosave_file_names_unique_per_layer(tmp_path, names):
    project = ScanProject(tmp_path / "work", tmp_path)
    paths = [
        project.save_labels("sub/ct0.nii.gz", name, _labels(v))
        for v, name in enumerate(names, start=1)
    ]
    assert paths[0] != paths[1]
    for v, (name, path) in enumerate(zip(names, paths, strict=True), start=1):
        assert path.name.startswith("ct0_") and path.name.endswith(".nii.gz"), path.name
        assert len(os.fsencode(path.name)) < 200
        assert int(np.asarray(read_volume(path).array).max()) == v  # nothing overwritten
        assert project.saved_labels("sub/ct0.nii.gz")[v - 1]["name"] == name


def test_damaged_project_is_set_aside(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / PROJECT_FILENAME).write_text('{"scans": {"ct0.nii.gz": 3}}')
    project = ScanProject(work, tmp_path)
    assert project.notice and "set aside" in project.notice
    project.mark("ct0.nii.gz", "opened")
    assert ScanProject(work, tmp_path).status("ct0.nii.gz") == "opened"
    assert len(list(work.glob(PROJECT_FILENAME + ".damaged-*"))) == 1


def test_orphan_temporary_files_are_removed(tmp_path):
    work = tmp_path / "work"
    labels = ScanProject(work, tmp_path).labels_dir("ct0.nii.gz")
    labels.mkdir(parents=True)
    orphan_dir = labels / ".napari-vnet-write-999999999-abc"  # no such process
    orphan_dir.mkdir()
    (orphan_dir / "ct0_liver.nii.gz").write_bytes(b"\0" * 1000)
    old_tmp = work / ".napari-vnet-scans.x1y2z3.tmp.json"  # a killed project write
    old_tmp.write_text("{")
    old_label = labels / ".ct0_liver-1a2b3c4d.q9w8e7.tmp.nii.gz"  # a killed label write
    old_label.write_bytes(b"\0" * 1000)
    recent = labels / ".ct0_spleen-1a2b3c4d.a1b2c3.tmp.nii.gz"  # maybe being written now
    recent.write_bytes(b"\0" * 10)
    for p in (old_tmp, old_label):
        os.utime(p, (1, 1))
    project = ScanProject(work, tmp_path)  # opening cleans the project's own temp files
    project.save_labels("ct0.nii.gz", "liver", _labels(1))  # a write cleans its folder
    assert not old_tmp.exists() and not old_label.exists() and recent.exists()
    leftovers = [p for p in (work / "labels").rglob(".napari-vnet-write-*")]
    assert leftovers == [], leftovers


def test_discovery_follows_each_real_folder_once(tmp_path):
    root = tmp_path / "scans"
    (root / "sub").mkdir(parents=True)
    write_image(root / "sub" / "ct0.nii.gz", small_volume())
    os.symlink(root, root / "sub" / "self")  # a loop back to the top
    os.symlink(root / "sub", root / "again")  # a second way into sub
    os.symlink(root / "sub" / "ct0.nii.gz", root / "link.nii.gz")  # a second way to ct0
    keys = _discover_in_child(root).split()
    assert len(keys) == 1, keys


def test_discovery_of_two_loops_ends(tmp_path):
    root = tmp_path / "scans"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    write_image(root / "a" / "ct0.nii.gz", small_volume())
    os.symlink(root / "b", root / "a" / "to_b")
    os.symlink(root / "a", root / "b" / "to_a")
    assert _discover_in_child(root).split() == ["a/ct0.nii.gz"]


def _discover_in_child(root: Path, seconds: float = 60) -> str:
    """The keys discovery lists, from a child process killed after ``seconds``."""
    code = textwrap.dedent(
        """
        import sys
        from napari_vnet.workflows.worklist_scan import discover_scans
        print(" ".join(e.key for e in discover_scans(sys.argv[1])))
        """
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(root)],
            capture_output=True,
            text=True,
            timeout=seconds,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"discovery of {root} did not finish in {seconds} s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_discovery_bounds_depth_and_entries(tmp_path):
    root = tmp_path / "scans"
    deep = root
    for i in range(12):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    write_image(deep / "ct.nii.gz", small_volume())
    entries = list(discover_scans(root, max_depth=5))
    assert [e.key for e in entries] == ["<listing stopped>"]
    assert "deeper than 5 levels" in entries[0].error and str(root.resolve()) in entries[0].error
    wide = tmp_path / "wide"
    wide.mkdir()
    for i in range(30):
        (wide / f"notes{i}.txt").write_text("x")
    entries = list(discover_scans(wide, max_entries=20))
    assert entries[-1].broken and "more than 20 files and folders" in entries[-1].error


def test_unreadable_file_says_permission_not_missing(tmp_path):
    """As an unprivileged user (root reads everything, so a child drops to 'nobody')."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start a child as another user")
    folder = tmp_path / "locked"
    folder.mkdir()
    path = write_image(folder / "ct.nii.gz", small_volume())
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o600)
    code = textwrap.dedent(
        """
        import os, sys
        import SimpleITK
        from napari_vnet.io import VolumeReadError, read_volume
        os.setgid(65534); os.setuid(65534)  # after the imports: the tree may be root's
        try:
            read_volume(sys.argv[1])
        except VolumeReadError as exc:
            print(exc)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert "permission denied" in proc.stdout and str(path) in proc.stdout, (
        proc.stdout + proc.stderr
    )
    assert "no such file" not in proc.stdout


def test_long_file_name_is_a_clear_error(tmp_path):
    from napari_vnet.io import VolumeReadError

    with pytest.raises(VolumeReadError, match="too long"):
        read_volume(tmp_path / ("x" * 300 + ".nii.gz"))


def test_project_mark_from_stale_copy_does_not_undo(tmp_path):
    """Two ScanProject objects in one process (an old and a new dock)."""
    a, b = ScanProject(tmp_path / "w", tmp_path), ScanProject(tmp_path / "w", tmp_path)
    b.mark("x", "opened")
    a.mark("x", "reviewed")
    b.mark("x", "predicted")
    assert ScanProject(tmp_path / "w").status("x") == "reviewed"
    assert Path(tmp_path / "w" / PROJECT_FILENAME).exists()
