"""Static type check that runs with the tests: mypy on io, models, inference and workflows.

What mypy checks (the packages, the target Python, how strictly) is ``[tool.mypy]`` in
pyproject.toml; its ``mypy_path`` makes it read this checkout's ``src``.
"""

from __future__ import annotations

import subprocess

from test_import_contracts import ROOT, _tool


def test_mypy_finds_no_type_errors():
    result = subprocess.run(
        [_tool("mypy")], cwd=ROOT, capture_output=True, encoding="utf-8", errors="replace"
    )  # (UTF-8, not the locale's encoding: a test before may have left the C locale)
    assert result.returncode == 0, result.stdout + result.stderr
