"""The first File > Open in a brand-new napari (no napari-vnet code has run, no reader
preference saved): napari's own "Choose reader" dialog preselects napari-vnet for
.nii.gz, .mha and a DICOM folder, its OK opens them with napari-vnet (physical spacing)
and the dialog does not come back; the npe2 activation hook, ``demo`` and ``setup.sh``
write the preferences; a user's preference for another reader survives all of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.reader_preferences import PLUGIN_NAME

pytestmark = pytest.mark.gui
ROOT = Path(__file__).resolve().parents[1]


def _volume(path):
    arr = (np.arange(4 * 6 * 8).reshape(4, 6, 8) * 7 - 100).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(img, str(path))
    return path


def _dicom_series(folder, n=3):
    folder.mkdir()
    for k in range(n):
        sl = sitk.GetImageFromArray((np.arange(48).reshape(6, 8) + 10 * k).astype(np.int16))
        sl.SetSpacing((0.7, 0.7))
        sl.SetOrigin((0.0, 0.0, 2.5 * k))
        for tag, value in [
            ("0008|0060", "CT"),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
            ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.2"),
            ("0020|0032", f"0\\0\\{2.5 * k}"),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0020|0013", str(k + 1)),
        ]:
            sl.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def _fresh_settings():
    from napari.settings import get_settings

    settings = get_settings()
    settings.plugins.extension2reader = {}
    return settings


def _dialog_choice(viewer, path):
    """What napari's "Choose reader" dialog preselects for ``path`` (plugin name), and
    the dialog itself (built exactly as File > Open builds it)."""
    from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog, prepare_remaining_readers

    readers = prepare_remaining_readers([str(path)])
    dialog = QtReaderDialog(pth=str(path), parent=viewer.window._qt_viewer, readers=readers)
    shown = dialog._get_plugin_choice()
    chosen = next(name for name, display in readers.items() if display == shown)
    return chosen, dialog, readers


def test_first_open_dialog_preselects_napari_vnet_and_ok_opens_it(make_napari_viewer, tmp_path):
    from napari._qt.dialogs.qt_reader_dialog import open_with_dialog_choices
    from napari.errors import MultipleReaderError

    viewer = make_napari_viewer()
    _fresh_settings()
    nii = _volume(tmp_path / "ct.nii.gz")
    mha = _volume(tmp_path / "mr.mha")
    series = _dicom_series(tmp_path / "series")
    for path in (nii, mha, series):
        with pytest.raises(MultipleReaderError):  # napari would show its dialog
            viewer.open(str(path), plugin=None)
        chosen, dialog, readers = _dialog_choice(viewer, path)
        assert "napari" in readers and len(readers) >= 2, readers  # a real choice
        assert chosen == PLUGIN_NAME, (path.name, readers)
        dialog.close()

    # the user presses OK on what was preselected ("remember" left unchecked)
    chosen, dialog, readers = _dialog_choice(viewer, nii)
    open_with_dialog_choices(
        dialog._get_plugin_choice(), dialog._get_persist_choice(), dialog._extension,
        readers, [str(nii)], False, viewer.window._qt_viewer,
    )  # fmt: skip
    dialog.close()
    (layer,) = viewer.layers
    assert layer.source.reader_plugin == PLUGIN_NAME
    assert layer.scale[-1] == pytest.approx(0.8)  # physical spacing, not pixels
    # no dialog from now on: .mha and the DICOM folder open with napari-vnet directly
    (m,) = viewer.open(str(mha), plugin=None)
    (d,) = viewer.open(str(series), plugin=None)
    assert m.source.reader_plugin == PLUGIN_NAME and d.source.reader_plugin == PLUGIN_NAME
    assert d.data.shape == (3, 6, 8) and d.scale[0] == pytest.approx(2.5)


def test_first_use_of_any_contribution_sets_preferences_keeps_users(make_napari_viewer, tmp_path):
    """npe2's activation hook: saving a layer with napari-vnet's writer (which itself
    writes no preference) is enough; the user's own choice for .nii.gz stays."""
    from npe2 import PluginManager

    viewer = make_napari_viewer()
    settings = _fresh_settings()
    settings.plugins.extension2reader = {"*.nii.gz": "napari", "*.nrrd": "someone-else"}
    pm = PluginManager.instance()
    pm.deactivate(PLUGIN_NAME)  # as in a new napari session: nothing of ours has run
    labels = viewer.add_labels(np.zeros((4, 6, 8), np.uint8), name="mask")
    labels.data[1, 2, 3] = 2
    out = viewer.layers.save(str(tmp_path / "mask.nii.gz"), selected=False, plugin=PLUGIN_NAME)
    assert out and Path(out[0]).is_file()
    prefs = dict(settings.plugins.extension2reader)
    assert prefs["*.mha"] == PLUGIN_NAME and prefs["*" + os.sep] == PLUGIN_NAME
    assert prefs["*.nii.gz"] == "napari" and prefs["*.nrrd"] == "someone-else"  # kept


def test_setup_script_runs_the_preference_step():
    text = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines() if not ln.strip().startswith("#")]
    assert any("napari-vnet napari-readers" in ln for ln in lines)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    readme = readme.split("## ")[0]  # the README's first lines
    assert "napari-readers" in readme and "napari V-Net" in readme


@pytest.mark.slow
def test_demo_sets_preferences_before_its_window_and_keeps_users(tmp_path):
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        pytest.skip("no X display (pytest-xvfb provides one)")
    config = tmp_path / "napari" / "settings.yaml"
    config.parent.mkdir()
    config.write_text("plugins:\n  extension2reader:\n    '*.mha': napari\n")
    env = dict(os.environ, NAPARI_CONFIG=str(config), NAPARI_VNET_CONFIG_DIR=str(tmp_path / "cfg"))
    proc = subprocess.run(
        [sys.executable, "-m", "napari_vnet.cli", "demo", "--quit-after", "1"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "napari opens with napari-vnet from now on" in proc.stdout
    saved = config.read_text()
    assert "'*.nii.gz': napari-vnet" in saved or "*.nii.gz: napari-vnet" in saved
    assert "'*.mha': napari\n" in saved or "*.mha: napari\n" in saved
