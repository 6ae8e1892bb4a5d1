"""Clean messages instead of tracebacks: `demo` without a Qt binding or a display, and a
command whose reader goes away (`napari-vnet info x | head -1`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NO_QT = r"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("PyQt6", "PyQt5", "PySide6", "PySide2"):
            raise ImportError(f"No module named {name!r} (blocked for the test)")
        return None
sys.meta_path.insert(0, Block())
from napari_vnet.cli import main
sys.exit(main(["demo"]))
"""


def _env(**extra):
    env = dict(os.environ)
    env.update(extra)
    return env


def test_demo_without_qt_says_what_to_install():
    proc = subprocess.run(
        [sys.executable, "-c", NO_QT], capture_output=True, text=True, timeout=120,
        env=_env(DISPLAY=":99"),
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "no Qt binding" in proc.stderr and "napari-vnet[qt]" in proc.stderr


def test_demo_without_display_says_how_to_run_it():
    if not sys.platform.startswith("linux"):
        return
    env = _env()
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "napari_vnet.cli", "demo"], capture_output=True, text=True,
        timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "xvfb-run" in proc.stderr


def test_output_reader_going_away_is_quiet():
    """stdout is a pipe whose reader has gone: the command ends without a traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_vnet.cli", "info", "vnet-phantom"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    proc.stdout.close()  # like `| head -0`: nobody reads
    err = proc.stderr.read()
    rc = proc.wait(timeout=120)
    assert "BrokenPipeError" not in err and "Traceback" not in err, err
    assert rc == 141


def test_info_piped_to_head_prints_one_line():
    cmd = f"{sys.executable} -m napari_vnet.cli info vnet-phantom | head -1"
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
