"""Static checks that run with the tests: import-linter contracts and ruff."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:  # both are in the test group: missing is a failure, not a skip
        pytest.fail(f"{name} is not installed (pip install --group test -e .)")
    return found


def test_import_linter_contracts_hold():
    """The core (io, models, inference, training, cli) never imports napari/Qt/magicgui."""
    result = subprocess.run(
        [_tool("lint-imports")], cwd=ROOT, capture_output=True, encoding="utf-8", errors="replace"
    )  # (UTF-8, not the locale's encoding: a test before may have left the C locale)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_is_clean():
    result = subprocess.run(
        [_tool("ruff"), "check", "src", "tests", "benchmarks", "sample_data"],
        cwd=ROOT,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    assert result.returncode == 0, result.stdout + result.stderr
