"""A full disk while writing ``.nrrd``: SimpleITK's NRRD writer reports success when the
disk fills up just as it closes the gzip stream (the last block and the checksum are
lost), so the truncated file replaced the old one and could not be read back. The
written data is now inflated to its end before the rename.

The disk fills at the worst moment in two ways: a small tmpfs filled to a few pages short
of the compressed size (when mounting is allowed), and RLIMIT_FSIZE a few bytes short
of it in a child process (always).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.io import VolumeWriteError, read_volume, write_volume

PAGE = 4096


def _noise() -> np.ndarray:
    """Incompressible labels: 1 MiB of random bytes."""
    return np.random.default_rng(0).integers(0, 255, size=(64, 128, 128), dtype=np.uint8)


def _old_labels() -> np.ndarray:
    old = np.zeros((8, 16, 16), np.uint8)
    old[2:5, 3:9, 4:10] = 2
    return old


def _written_size(tmp_path: Path, ext: str) -> int:
    """Bytes the new file takes when the disk has room (same data, same writer)."""
    probe = tmp_path / f"probe{ext}"
    write_volume(_noise(), probe, is_label=True)
    size = probe.stat().st_size
    probe.unlink()
    return size


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


def _fill_leaving(disk: Path, leave: int) -> None:
    filler = disk / "filler.bin"
    filler.unlink(missing_ok=True)
    st = os.statvfs(disk)
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


@pytest.mark.parametrize("pages_short", [0, 1, 2])
def test_nrrd_on_a_full_disk_keeps_the_old_file(small_disk, tmp_path, pages_short):
    need = _written_size(tmp_path, ".nrrd")
    path = small_disk / "labels.nrrd"
    old = _old_labels()
    write_volume(old, path, is_label=True)
    before = path.read_bytes()
    # room for every page of the new file but the last one(s): the writer's final flush
    # (gzip's last block and trailer) is what the disk refuses
    _fill_leaving(small_disk, (need // PAGE - pages_short) * PAGE)
    with pytest.raises(VolumeWriteError) as err:
        write_volume(_noise(), path, is_label=True)
    message = str(err.value)
    assert str(path) in message and "disk may be full" in message, message
    assert path.read_bytes() == before  # the old file survives, byte for byte
    np.testing.assert_array_equal(np.asarray(read_volume(path).array), old)
    assert [p.name for p in small_disk.iterdir() if p.name.startswith(".")] == []


_CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    from napari_vnet.io import VolumeWriteError, write_volume
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    noise = np.random.default_rng(0).integers(0, 255, (64, 128, 128), dtype=np.uint8)
    try:
        write_volume(noise, sys.argv[1], is_label=True)
        print("WROTE")
    except VolumeWriteError as exc:
        print("ERROR", exc)
    """
)


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
@pytest.mark.parametrize("short_by", [1, 100, 5000])
def test_file_size_limit_short_of_the_end_keeps_the_old_file(tmp_path, ext, short_by):
    """RLIMIT_FSIZE (SIGXFSZ ignored, so the writes past it come back short) a few bytes
    below the new file's size: the end of the compressed stream is what is lost."""
    need = _written_size(tmp_path, ext)
    path = tmp_path / f"labels{ext}"
    old = _old_labels()
    write_volume(old, path, is_label=True)
    before = path.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(need - short_by)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout.startswith("ERROR"), proc.stdout + proc.stderr[-2000:]
    assert str(path) in proc.stdout and "disk may be full" in proc.stdout, proc.stdout
    assert path.read_bytes() == before
    np.testing.assert_array_equal(np.asarray(read_volume(path).array), old)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_complete_nrrd_still_verifies(tmp_path):
    """The check reads a complete file (gzip and raw NRRD, compressed and raw MHA) as
    complete: a normal write works and reads back the same voxels."""
    data = _noise()[:8]
    for ext in (".nrrd", ".mha", ".nii.gz"):
        path = write_volume(data, tmp_path / f"labels{ext}", is_label=True)
        np.testing.assert_array_equal(np.asarray(read_volume(path).array), data)
    from napari_vnet.io.writing import verify_written

    image = sitk.GetImageFromArray(data)
    for ext, compress in ((".nrrd", False), (".mha", False)):
        raw = tmp_path / f"raw{ext}"
        sitk.WriteImage(image, str(raw), useCompression=compress)
        verify_written(raw, image)  # no error
        cut = tmp_path / f"cut{ext}"
        cut.write_bytes(raw.read_bytes()[:-10])
        with pytest.raises(VolumeWriteError, match="incomplete"):
            verify_written(cut, image)
