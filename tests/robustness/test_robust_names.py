"""File names that are not valid UTF-8 (Latin-1 bytes from Windows shares or old zip
archives) at every entry point. SimpleITK used to abort the whole process on them
(SIGABRT), so each case runs in a child process: a crash fails the test instead of
killing pytest. The child prints OK and what it found; the parent checks both."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import small_volume, write_dicom_series, write_image

LATIN1 = b"Patient M\xfcller caf\xe9"  # "Müller café" in Latin-1: not valid UTF-8


def _bytes_path(base: Path, *parts: bytes) -> bytes:
    return os.path.join(os.fsencode(base), *parts)


def _run_child(code: str, *args: bytes, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; ``args`` (raw bytes paths) arrive as hex in
    ``ARGS`` (decoded with the file system encoding, as Python decodes real names)."""
    prelude = "import os, sys\nARGS = [os.fsdecode(bytes.fromhex(a)) for a in sys.argv[1:]]\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *(a.hex() for a in args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (
        f"child exited with {proc.returncode} (negative = killed by signal "
        f"{-proc.returncode})\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    assert "OK" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture
def latin1_folder(tmp_path) -> bytes:
    """A folder whose name and files' names are Latin-1 bytes: a NIfTI, an MHD+RAW pair,
    an Analyze pair, and a DICOM series (3 slices)."""
    folder = _bytes_path(tmp_path, LATIN1)
    os.mkdir(folder)
    staging = tmp_path / "staging"
    staging.mkdir()
    array = small_volume()
    write_image(staging / "a.nii.gz", array)
    write_image(staging / "m.mhd", array)
    write_image(staging / "an.hdr", array)
    os.rename(staging / "a.nii.gz", os.path.join(folder, b"scan \xe9t\xe9.nii.gz"))
    # the header names its data file; both carry a Latin-1 name
    header = (staging / "m.mhd").read_bytes().replace(b"m.raw", b"d\xe9j\xe0.raw")
    with open(os.path.join(folder, b"d\xe9j\xe0.mhd"), "wb") as fh:
        fh.write(header)
    os.rename(staging / "m.raw", os.path.join(folder, b"d\xe9j\xe0.raw"))
    os.rename(staging / "an.hdr", os.path.join(folder, b"\xe9tude.hdr"))
    os.rename(staging / "an.img", os.path.join(folder, b"\xe9tude.img"))
    dicom = staging / "dicom"
    files = write_dicom_series(
        dicom, small_volume((3, 8, 10)), uid="1.2.826.0.1.3680043.8.498.77", description="CT"
    )
    os.mkdir(os.path.join(folder, b"s\xe9rie"))
    for i, f in enumerate(files):
        os.rename(f, os.path.join(folder, b"s\xe9rie", b"coupe\xe9%d.dcm" % i))
    return folder


def test_read_volume_and_read_header_with_latin1_names(latin1_folder):
    out = _ok(
        _run_child(
            """
            from napari_vnet.io import read_header, read_volume
            folder = ARGS[0]
            for name in sorted(os.listdir(folder)):
                if name.endswith((".raw", ".img")):
                    continue  # data files, read through their headers
                path = os.path.join(folder, name)
                vol = read_volume(path)
                head = read_header(path)
                assert tuple(head["shape"][:3]) == vol.array.shape[:3], (head, vol.array.shape)
                print("read", ascii(name), vol.array.shape, int(vol.array.sum()))
            print("OK")
            """,
            latin1_folder,
        )
    )
    expected = int(small_volume().sum())
    for name in ("scan", "j\\udce0.mhd", "tude.hdr"):
        line = next(ln for ln in out.splitlines() if name in ln)
        assert f"(6, 10, 12) {expected}" in line, out
    assert "(3, 8, 10)" in next(ln for ln in out.splitlines() if "rie" in ln), out


def test_reader_entry_point_with_latin1_names(latin1_folder):
    _ok(
        _run_child(
            """
            from napari_vnet._reader import napari_get_reader
            folder = ARGS[0]
            for name in sorted(os.listdir(folder)):
                if name.endswith((".raw", ".img")):
                    continue
                path = os.path.join(folder, name)
                reader = napari_get_reader(path)
                assert reader is not None, ascii(path)
                layers = reader(path)
                assert layers and layers[0][0].shape[-3:] in ((6, 10, 12), (3, 8, 10))
                print("layer", ascii(layers[0][1].get("name")))
            print("OK")
            """,
            latin1_folder,
        )
    )


def test_worklist_discovery_with_latin1_names(latin1_folder):
    out = _ok(
        _run_child(
            """
            import json
            from napari_vnet.workflows.worklist import ScanProject
            from napari_vnet.workflows.worklist_scan import discover_scans, read_scan
            entries = list(discover_scans(ARGS[0]))
            for e in entries:
                assert not e.broken, e.error
                e.name.encode("utf-8")  # printable: Qt can show it
                assert read_scan(e).array.size > 0
            project = ScanProject(ARGS[1], ARGS[0])
            for e in entries:
                project.mark(e.key, "opened", entry=e)
            print(len(entries), "entries", json.dumps(sorted(e.name for e in entries)))
            print("OK")
            """,
            latin1_folder,
            latin1_folder + b"-work",
        )
    )
    assert "4 entries" in out, out
    assert "d\\\\xe9j\\\\xe0.mhd" in out  # the undecodable bytes shown as escapes


def test_predict_cli_with_latin1_names(latin1_folder, tiny_weights):
    out_name = _bytes_path(Path(os.fsdecode(latin1_folder)), b"masque \xe9.nii.gz")
    out = _ok(
        _run_child(
            """
            from napari_vnet.cli import main
            import SimpleITK as sitk
            folder, weights, out = ARGS
            image = os.path.join(folder, [n for n in os.listdir(folder) if n.endswith(".nii.gz")][0])
            rc = main(["predict", image, "--weights", weights, "--out", out])
            assert rc == 0, rc
            assert os.path.getsize(out) > 0
            print("OK")
            """,
            latin1_folder,
            os.fsencode(tiny_weights),
            out_name,
        )
    )
    assert os.path.exists(out_name), out


def test_write_volume_with_latin1_names(latin1_folder):
    _ok(
        _run_child(
            """
            import numpy as np
            from napari_vnet.io import read_volume, write_volume
            folder = ARGS[0]
            array = (np.arange(6 * 10 * 12).reshape(6, 10, 12) % 5).astype(np.uint8)
            for ext in (".nii.gz", ".nii", ".mha", ".nrrd", ".mhd"):
                path = os.path.join(folder, "\\udce9tiquette" + ext)  # b"\\xe9tiquette"
                write_volume(array, path, is_label=True)
                np.testing.assert_array_equal(np.asarray(read_volume(path).array), array)
            print("OK")
            """,
            latin1_folder,
        )
    )
    names = os.listdir(latin1_folder)
    assert b"\xe9tiquette.nii.gz" in names and b"\xe9tiquette.mhd" in names, names


def test_error_message_names_a_latin1_file_printably(tmp_path):
    bad = _bytes_path(tmp_path, b"cass\xe9.nii.gz")
    with open(bad, "wb") as fh:
        fh.write(b"\x1f\x8b not an image" * 20)
    out = _ok(
        _run_child(
            """
            from napari_vnet.io import VolumeReadError, read_volume
            try:
                read_volume(ARGS[0])
            except VolumeReadError as exc:
                print("message:", exc)  # must print: no UnicodeEncodeError
            print("OK")
            """,
            bad,
        )
    )
    assert "cass\\xe9.nii.gz" in out, out


@pytest.mark.gui
def test_scans_dock_lists_and_opens_latin1_names(latin1_folder, tmp_path):
    """The Scans dock in a real napari viewer, remembered on a Latin-1 folder: a second
    opening of the dock (which re-lists the remembered folder) must not crash napari."""
    import napari  # noqa: F401

    config = tmp_path / "config"
    code = """
        import numpy as np
        import napari
        from qtpy.QtWidgets import QApplication
        from napari_vnet._widgets.scans import ScansWidget

        def wait(pred, seconds=60):
            import time
            end = time.monotonic() + seconds
            while not pred() and time.monotonic() < end:
                QApplication.processEvents()
                time.sleep(0.02)
            assert pred()

        import json
        from napari_vnet._widgets.scans import SETTINGS_FILE, _config_dir
        # remembered from an earlier session: the dock lists the folder when it opens
        (_config_dir() / SETTINGS_FILE).parent.mkdir(parents=True, exist_ok=True)
        (_config_dir() / SETTINGS_FILE).write_text(
            json.dumps({"scans_folder": ARGS[0], "work_folder": ARGS[0] + "-work"})
        )
        for round in range(2):  # each opening restores the remembered folder
            viewer = napari.Viewer(show=False)
            widget = ScansWidget(viewer)
            viewer.window.add_dock_widget(widget, name="Scans")
            wait(lambda: widget._discovery is None and widget.table.rowCount() == 4)
            texts = [widget.table.item(r, 0).text() for r in range(4)]
            assert all(widget.table.item(r, 1).text() != "broken" for r in range(4)), texts
            entry = [e for e in widget.entries if e.key.endswith(".mhd")][0]
            widget.load_scan(entry)
            wait(lambda: any(layer.data.shape == (6, 10, 12) for layer in viewer.layers))
            print("round", round, ascii(texts))
            viewer.close()
        print("OK")
    """
    proc = subprocess.run(
        [
            "xvfb-run",
            "-a",
            sys.executable,
            "-c",
            "import os, sys\nARGS = [os.fsdecode(bytes.fromhex(a)) for a in sys.argv[1:]]\n"
            + textwrap.dedent(code),
            latin1_folder.hex(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NAPARI_VNET_CONFIG_DIR": str(config), "PYTHONIOENCODING": "utf-8"},
    )
    _ok(proc)
