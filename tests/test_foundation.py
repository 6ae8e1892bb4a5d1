"""The plugin installs, its manifest validates, its CLI answers, napari finds and docks it."""

from __future__ import annotations

import subprocess
import sys

import pytest

import napari_vnet
from napari_vnet.cli import main
from napari_vnet.commands import COMMANDS


def test_version_is_installed_metadata():
    assert napari_vnet.__version__ != "0.0.0+unknown"


def test_cli_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_cli_version_console_script():
    out = subprocess.run(
        [sys.executable, "-m", "napari_vnet.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == f"napari-vnet {napari_vnet.__version__}"


def test_manifest_validates():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-vnet")
    manifest.validate_imports()  # every python_name resolves to a callable
    ids = {c.id for c in manifest.contributions.commands}
    assert {"napari-vnet.get_reader", "napari-vnet.segment_widget"} <= ids


def test_core_does_not_import_qt():
    """The Qt-free core can be imported in a process where Qt/napari are absent."""
    code = (
        "import sys\n"
        "import napari_vnet.io, napari_vnet.models, napari_vnet.cli\n"
        "bad = [m for m in ('napari', 'qtpy', 'magicgui', 'PyQt6') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gui
def test_napari_discovers_and_docks_the_plugin(make_napari_viewer, qtbot):
    import npe2

    viewer = make_napari_viewer(show=True)
    pm = npe2.PluginManager.instance()
    assert "napari-vnet" in {m.name for m in pm.iter_manifests()}
    dock, widget = viewer.window.add_plugin_dock_widget("napari-vnet", "Segment volume")
    assert widget is not None
    assert dock.isVisible() or qtbot.waitUntil(dock.isVisible, timeout=2000) is None
