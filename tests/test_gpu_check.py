"""benchmarks/gpu_check.py without a GPU (or with --dry-run): one JSON, every GPU step
skipped with its reason, exit status 0, in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_writes_every_step_skipped(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["benchmark"] == "gpu_check" and record["dry_run"] is True
    assert record["device"]["status"] == "ok" and "torch" in record["device"]
    assert set(record["steps"]) == {"cuda_tests", "inference", "training", "segment_dock"}
    for step in record["steps"].values():
        assert step["status"].startswith("skipped: no CUDA device")
