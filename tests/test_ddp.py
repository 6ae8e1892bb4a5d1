"""DistributedDataParallel: `torchrun --nproc_per_node 2 -m napari_vnet.cli train` on CPU/gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.models import load_checkpoint


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_gloo_run_writes_one_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    z, y, x = np.indices((12, 20, 20))
    labels = (((z - 6) ** 2 + (y - 10) ** 2 + (x - 9) ** 2) < 20).astype(np.uint8)
    image = (rng.normal(0, 0.2, labels.shape) + labels).astype(np.float32)
    for arr, name in ((image, "img.nii.gz"), (labels, "lab.nii.gz")):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / name))
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "ddp.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "napari_vnet.cli", "train",
        "--image", str(tmp_path / "img.nii.gz"), "--labels", str(tmp_path / "lab.nii.gz"),
        "--arch", "unet3d", "--arch-kwargs", '{"channels": [2, 4, 8]}',
        "--iterations", "4", "--patch-size", "8", "8", "8", "--batch-size", "1",
        "--device", "cpu", "--val-fraction", "0.3", "--out", str(out), "--json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # exactly one JSON summary (rank 0 only) reporting both processes
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])
    assert result["world_size"] == 2 and result["iterations"] == 4
    assert 0.0 <= result["val_dice"] <= 1.0  # rank 0 validated, broadcast to rank 1
    # exactly one checkpoint written (rank 0), resume file removed, no temp files
    assert sorted(p.name for p in outdir.iterdir()) == ["ddp.pt"]
    model, card = load_checkpoint(out)
    assert card.history["run"]["world_size"] == 2
