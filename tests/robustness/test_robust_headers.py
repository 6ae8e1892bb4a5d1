"""``.mhd``/``.nhdr`` headers name their data files; a dataset from elsewhere must not
make the reader open anything but regular files inside the header's folder: no absolute
paths, no ``../``, no devices (``/dev/zero`` as a memory bomb), no FIFOs (a hang), no
``/proc/self/environ``. Each case runs the reader, the header reader and worklist
discovery in a child process with a time limit (a FIFO would block forever)."""

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

_CHILD = textwrap.dedent(
    """
    import json, sys
    from napari_vnet.io import VolumeReadError, read_header, read_volume
    from napari_vnet.workflows.worklist_scan import discover_scans
    out = {}
    path = sys.argv[1]
    for name, call in (("read_volume", read_volume), ("read_header", read_header)):
        try:
            result = call(path)
            arr = getattr(result, "array", None)
            out[name] = "read " + (repr(bytes(arr.tobytes()[:64])) if arr is not None else "")
        except VolumeReadError as exc:
            out[name] = "refused " + str(exc)
    (entry,) = [e for e in discover_scans(sys.argv[2]) if e.key.endswith(sys.argv[3])]
    out["discover"] = "refused " + entry.error if entry.broken else "listed"
    print(json.dumps(out))
    """
)


def _mhd(folder: Path, data_file: str, name="evil.mhd") -> Path:
    write_image(folder / "template.mhd", small_volume((2, 4, 4), np.uint8))
    text = (folder / "template.mhd").read_text()
    (folder / "template.mhd").unlink()
    (folder / "template.raw").unlink()
    lines = [ln for ln in text.splitlines() if not ln.startswith("ElementDataFile")]
    path = folder / name
    path.write_text("\n".join(lines + [f"ElementDataFile = {data_file}"]) + "\n")
    return path


def _nhdr(folder: Path, data_file: str, name="evil.nhdr") -> Path:
    path = folder / name
    path.write_text(
        "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 2\nencoding: raw\n"
        f"data file: {data_file}\n\n"
    )
    return path


def _run(path: Path, folder: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(folder), path.name],
        capture_output=True,
        text=True,
        timeout=60,  # a FIFO read would hang: the timeout fails the test
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _targets(tmp_path: Path) -> dict[str, str]:
    secret = tmp_path / "secret.key"
    secret.write_bytes(b"PRIVATE KEY " * 3)
    fifo = tmp_path / "dataset" / "pipe.raw"
    return {
        "absolute": str(secret),
        "parent": "../secret.key",
        "device": "/dev/zero",
        "environ": "/proc/self/environ",
        "fifo": "pipe.raw",
        "link-out": "link.raw",
        "_fifo_path": str(fifo),
    }


@pytest.mark.parametrize("kind", ["absolute", "parent", "device", "environ", "fifo", "link-out"])
@pytest.mark.parametrize("fmt", ["mhd", "nhdr"])
def test_header_data_files_outside_or_special_are_refused(tmp_path, kind, fmt):
    folder = tmp_path / "dataset"
    folder.mkdir()
    targets = _targets(tmp_path)
    os.mkfifo(targets["_fifo_path"])
    os.symlink(tmp_path / "secret.key", folder / "link.raw")
    path = (_mhd if fmt == "mhd" else _nhdr)(folder, targets[kind])
    out = _run(path, folder)
    for where in ("read_volume", "read_header", "discover"):
        assert out[where].startswith("refused"), (where, out)
        assert str(path) in out[where], out[where]
        assert "PRIVATE" not in out[where]
    message = out["read_volume"]
    if kind == "fifo":
        assert "not a regular file" in message, message
    else:
        assert "outside the header's folder" in message or "not a regular file" in message


@pytest.mark.parametrize("fmt", ["mhd", "nhdr"])
def test_header_data_files_in_a_subfolder_still_read(tmp_path, fmt):
    folder = tmp_path / "dataset"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "v.raw").write_bytes(bytes(range(32)))
    path = (_mhd if fmt == "mhd" else _nhdr)(folder, "data/v.raw")
    out = _run(path, folder)
    assert out["read_volume"].startswith("read") and out["discover"] == "listed", out


def test_fifo_as_an_image_is_refused(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    os.mkfifo(folder / "scan.nii.gz")
    out = _run(folder / "scan.nii.gz", folder)
    assert "not a regular file" in out["read_volume"] and "not a regular file" in out["discover"]
