"""A bounded fuzz run over the reader entry point with mutated headers of real files
(``fuzz_reader.py``, hypothesis, derandomised so CI runs are reproducible), in a child
process with a 3 GB address-space limit and a time budget of 30 s (NAPARI_VNET_FUZZ_SECONDS)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SECONDS = float(os.environ.get("NAPARI_VNET_FUZZ_SECONDS", "30"))


@pytest.mark.slow
@pytest.mark.parametrize("capped", [True, False], ids=["3GB-cap", "no-cap"])
def test_fuzz_reader_with_mutated_headers(tmp_path, request, capped):
    """Capped: a huge allocation fails as a finding. Uncapped: the reader's memory guard
    (told 1 GiB is available) must refuse big headers before allocating, and the peak
    memory of the child is checked after every example."""
    import hypothesis  # noqa: F401  (testing extra: the fuzz child runs it)

    env = dict(os.environ)
    if not capped:
        env.update(NAPARI_VNET_FUZZ_CAP="0", NAPARI_VNET_MEMORY_LIMIT="1G")
    try:
        shared = str(request.getfixturevalue("shared_data"))
    except pytest.skip.Exception:
        shared = ""  # no DICOM seeds then; the other formats are still fuzzed
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "fuzz_reader.py"),
            str(tmp_path / "fuzz"),
            str(SECONDS),
            shared,
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        env=env,
    )
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith(("fuzz:", "FAILURE"))]
    assert proc.returncode == 0, (
        "\n".join(summary) + "\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    )
    match = re.search(r"fuzz: (\d+) examples", proc.stdout)
    assert match and int(match.group(1)) >= 30, proc.stdout[-2000:]
    # both outcomes happen: the mutations reach the readers' checks
    assert "VolumeReadError" in summary[0] and "'read'" in summary[0], summary
