"""Threads: ``napari-vnet predict`` with its automatic thread count vs ``--threads 1`` and
``--threads 2``, on the machine as it is (other work included: the point is a busy one).

Each setting runs as its own ``napari-vnet -v predict ... --json`` process, in rounds
(default, 1, 2, default, 1, 2, ...) so that a change of the machine's load touches every
setting alike; the load average before each run, the JSON summary's ``seconds``
(inference with pre/post-processing) and ``threads``, the process's wall time and the
``threads:`` line of its ``-v`` log (the automatic choice and why) are recorded. The label
maps of all settings are compared with the automatic one's: identical voxels, and the
mean foreground Dice where they are not.

    python benchmarks/threads.py                        # the shared CT (../shared/data),
                                                        # shipped unet3d-ct-starter
    python benchmarks/threads.py --input sample_data/phantom_ct.nii.gz --weights vnet-phantom

Writes ``benchmarks/results/threads.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = Path(os.environ.get("NAPARI_VNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
SHARED_CT = DATA / "ct-dicom-patient-a" / "dicom"


def run_once(args, threads: int | None, out: Path) -> dict:
    cmd = [sys.executable, "-m", "napari_vnet.cli", "-v", "predict", str(args.input),
           "-w", args.weights, "-o", str(out), "--overwrite", "--json"]  # fmt: skip
    if threads is not None:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}  # fmt: skip
    load = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    why = [ln.rsplit("threads: ", 1)[1] for ln in proc.stderr.splitlines() if "threads: " in ln]
    return {
        "setting": "auto" if threads is None else f"--threads {threads}",
        "threads": summary.get("threads"),
        "seconds": summary["seconds"],
        "total_seconds": summary["total_seconds"],
        "wall_seconds": round(wall, 3),
        "load_before": [round(x, 2) for x in load],
        "choice": why[-1] if why else None,
    }


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    same = np.count_nonzero((a == b) & (a != 0))
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return {
        "identical": bool(np.array_equal(a, b)),
        "voxels_differing": int(np.count_nonzero(a != b)),
        "dice_foreground": 2.0 * same / total if total else 1.0,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_in = SHARED_CT if SHARED_CT.exists() else ROOT / "sample_data" / "phantom_ct.nii.gz"
    p.add_argument("--input", type=Path, default=default_in)
    p.add_argument("--weights", default=None,
                   help="default: unet3d-ct-starter for a CT folder, else vnet-phantom")  # fmt: skip
    p.add_argument("--rounds", type=int, default=2, help="runs of each setting")
    p.add_argument("--settings", default="auto,1,2", help="'auto' and thread counts")
    p.add_argument("--timeout", type=int, default=1200)
    p.add_argument("--out", type=Path, default=RESULTS / "threads.json")
    args = p.parse_args()
    if args.weights is None:
        args.weights = "unet3d-ct-starter" if args.input.is_dir() else "vnet-phantom"
    settings = [None if s == "auto" else int(s) for s in args.settings.split(",")]
    from napari_vnet.io import read_volume

    runs, labels = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for threads in settings:
                name = "auto" if threads is None else str(threads)
                out = Path(tmp) / f"mask_{name}.nii.gz"
                res = run_once(args, threads, out)
                res["round"] = r
                runs.append(res)
                print(json.dumps(res), file=sys.stderr)
                labels[res["setting"]] = np.asarray(read_volume(out).array)
    ref = labels[runs[0]["setting"]]
    per_setting = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        mine = [r for r in runs if r["setting"] == setting]
        per_setting[setting] = {
            "threads": mine[0]["threads"],
            "seconds_best": min(r["seconds"] for r in mine),
            "seconds_median": float(np.median([r["seconds"] for r in mine])),
            "wall_best": min(r["wall_seconds"] for r in mine),
            "labels_vs_first": compare(labels[setting], ref),
        }
    print(f"{'setting':>12} {'threads':>7} {'best s':>8} {'median s':>9} {'wall s':>7} "
          f"{'identical':>9} {'Dice':>7}")  # fmt: skip
    for setting, s in per_setting.items():
        c = s["labels_vs_first"]
        print(f"{setting:>12} {s['threads']!s:>7} {s['seconds_best']:>8.2f} "
              f"{s['seconds_median']:>9.2f} {s['wall_best']:>7.1f} {c['identical']!s:>9} "
              f"{c['dice_foreground']:>7.4f}")  # fmt: skip
    import torch

    record = {
        "benchmark": "threads",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "input": str(args.input),
        "weights": args.weights,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus_in_affinity": len(os.sched_getaffinity(0)),
            "torch": torch.__version__,
            "torch_default_threads": torch.get_num_threads(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "note": os.environ.get("BENCH_NOTE", "shared machine: other jobs ran at the same time (the loaded case)"),
        },
        "per_setting": per_setting,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
