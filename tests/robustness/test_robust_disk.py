"""A full disk during a write: ITK's NIfTI writer ignores short writes, so every written
file is checked before it replaces the old one. A real size-limited file system (a
2 MiB tmpfs, mounted when the tests run as root) and, without root, RLIMIT_FSIZE in a
child process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from napari_vnet.io import VolumeWriteError, read_volume, write_volume
from napari_vnet.workflows.worklist import ScanProject


def _noise(shape=(64, 128, 128)) -> np.ndarray:
    """Incompressible labels: 1 MiB of random bytes, 2 MiB as 16-bit."""
    return np.random.default_rng(0).integers(0, 255, size=shape, dtype=np.uint8)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs; skipped where mounting is not allowed (not root, a container)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {proc.stderr.decode(errors='replace')}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_disk_full_keeps_the_old_file_and_says_so(small_disk, ext):
    path = small_disk / f"labels{ext}"
    old = np.zeros((8, 16, 16), np.uint8)
    old[2:5, 3:9, 4:10] = 2
    write_volume(old, path, is_label=True)
    before = path.read_bytes()
    filler = small_disk / "filler.bin"
    # leave ~600 kB: the new file (1 MiB of noise) cannot fit
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * max(0, free - 600_000))
    with pytest.raises(VolumeWriteError) as err:
        write_volume(_noise(), path, is_label=True)
    message = str(err.value)
    assert str(path) in message and "disk may be full" in message, message
    assert path.read_bytes() == before  # the old file survives, byte for byte
    np.testing.assert_array_equal(np.asarray(read_volume(path).array), old)
    assert [p.name for p in small_disk.iterdir() if p.name.startswith(".")] == []


def test_disk_full_during_autosave_keeps_the_previous_autosave(small_disk, tmp_path):
    from napari_vnet.io import Volume

    project = ScanProject(small_disk / "work", tmp_path)
    first = np.zeros((8, 16, 16), np.uint8)
    first[1:4] = 1
    vol = Volume(first, spacing=(1.0,) * 3, origin=(0.0,) * 3, direction=np.eye(3))
    path = project.save_labels("ct0.nii.gz", "liver", vol)
    before = path.read_bytes()
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler.bin").write_bytes(b"\0" * max(0, free - 400_000))
    big = Volume(_noise(), spacing=(1.0,) * 3, origin=(0.0,) * 3, direction=np.eye(3))
    with pytest.raises(VolumeWriteError, match="disk may be full"):
        project.save_labels("ct0.nii.gz", "liver", big)
    assert path.read_bytes() == before


def test_file_size_limit_in_a_child_keeps_the_old_file(tmp_path):
    """Without root: RLIMIT_FSIZE (SIGXFSZ ignored, so writes past it come back short)."""
    path = tmp_path / "labels.nii"
    old = np.ones((8, 16, 16), np.uint8)
    write_volume(old, path, is_label=True)
    before = path.read_bytes()
    code = textwrap.dedent(
        """
        import resource, signal, sys
        import numpy as np
        from napari_vnet.io import VolumeWriteError, write_volume
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
        noise = np.random.default_rng(0).integers(0, 255, (64, 128, 128), dtype=np.uint8)
        try:
            write_volume(noise, sys.argv[1], is_label=True)
            print("WROTE")
        except VolumeWriteError as exc:
            print("ERROR", exc)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.startswith("ERROR"), proc.stdout + proc.stderr[-2000:]
    assert str(path) in proc.stdout and "disk may be full" in proc.stdout, proc.stdout
    assert path.read_bytes() == before
    assert not [p for p in Path(tmp_path).iterdir() if p.name.startswith(".")]
