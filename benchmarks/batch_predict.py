"""Folder prediction: ``napari-vnet predict IN_DIR --out OUT_DIR`` vs a shell loop over
the single-case CLI, on N synthetic torso CT phantoms of 128 x 256 x 256 (.nii.gz).

* ``loop``: ``for f in IN/*.nii.gz; do napari-vnet predict "$f" -w W -o OUT/...; done``
  in bash: one process per case (Python, torch and the weights loaded each time; reading,
  inference and writing one after the other);
* ``batch``: one ``napari-vnet predict IN_DIR --out OUT_DIR --workers K`` process: the
  model loaded once, the next cases read while one is segmented, writing in the
  background;
* ``serial``: the same with ``--workers 0`` (model loaded once, but reading, segmenting
  and writing one after the other): the difference to ``batch`` is the overlap's gain.
  From each run's ``summary.json``: seconds spent reading and writing, and how long the
  segmenting thread waited for them (all of it with ``--workers 0``; with overlap only
  what inference did not hide).

Both use the same weights, device and settings; the label maps must be identical (the
``identical`` column). Peak RSS is the largest resident set of the run's process tree,
sampled every 0.1 s with psutil. Cases per minute = cases / wall time; CPU s/case (user +
system time of every process of the run, from ``getrusage``) is less disturbed by other
load on a shared machine than wall time.

    python benchmarks/batch_predict.py                 # 20 cases, shipped vnet-phantom
    python benchmarks/batch_predict.py --cases 6 --weights unet3d-phantom

Prints a table and writes ``benchmarks/results/batch_predict.json`` (with the machine
load before and after). Timings on a shared machine are disturbed by other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (128, 256, 256)


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def make_cases(folder: Path, n: int, shape) -> list[Path]:
    from napari_vnet.io import write_volume
    from napari_vnet.phantoms import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(n):
        path = folder / f"case_{seed:03d}.nii.gz"
        if not path.exists():
            image, _labels, _classes = make_phantom(1000 + seed, shape=shape)
            write_volume(image, path)
        paths.append(path)
    return paths


def run_measured(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall time and peak RSS (sum over the process tree, sampled) of one command."""
    import resource

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every descendant waited for
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.stderr.write(err.decode(errors="replace")[-3000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd[:6])} ...")
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": peak / 2**20,
        "stdout": out.decode(errors="replace"),
        "load_after": load(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--weights", default="vnet-phantom")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=list(SHAPE))
    parser.add_argument(
        "--work", default=None, help="folder for the cases and outputs (default: a temp dir)"
    )
    parser.add_argument(
        "--reverse",
        action="store_true",
        help="run the modes in the opposite order (batch first): on a shared machine whose "
        "load drifts, the two orders bound the bias",
    )
    parser.add_argument("--out", default=str(RESULTS / "batch_predict.json"))
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="napari-vnet-batch-bench-"))
    in_dir = work / "in"
    print(f"making {args.cases} phantoms of {tuple(args.shape)} in {in_dir} ...", flush=True)
    cases = make_cases(in_dir, args.cases, tuple(args.shape))
    for extra in sorted(in_dir.glob("*.nii.gz"))[args.cases :]:
        extra.unlink()
    exe = [sys.executable, "-m", "napari_vnet.cli"]
    env = dict(os.environ)
    common = ["-w", args.weights, "--device", args.device]
    load_before = load()

    # sequential shell loop over the single-case CLI
    loop_out = work / "loop"
    script = (
        f'for f in "{in_dir}"/*.nii.gz; do '
        f'{" ".join(exe)} predict "$f" {" ".join(common)} -o "{loop_out}/$(basename "$f")" '
        "|| exit 1; done"
    )
    modes = [("loop", None), ("serial", 0), ("batch", args.workers)]
    if args.reverse:
        modes.reverse()
    runs = {}
    for name, workers in modes:
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        if workers is None:
            folder.mkdir()
            print("shell loop ...", flush=True)
            runs[name] = run_measured(["bash", "-c", script], env)
            continue
        print(f"{name} (--workers {workers}) ...", flush=True)
        runs[name] = run_measured(
            [*exe, "predict", str(in_dir), *common, "--out", str(folder),
             "--workers", str(workers)],
            env,
        )  # fmt: skip
    loop = runs["loop"]
    load_after = load()
    batch_out = work / "batch"

    from napari_vnet.io import read_volume

    identical = all(
        np.array_equal(read_volume(loop_out / c.name).array, read_volume(folder / c.name).array)
        for c in cases
        for folder in (batch_out, work / "serial")
    )
    n = len(cases)
    rows = []
    batch = runs["batch"]
    labels = (
        ("loop", "shell loop (single-case CLI)"),
        ("serial", "predict DIR --workers 0"),
        ("batch", f"predict DIR --workers {args.workers}"),
    )
    waits = {}
    for key in ("serial", "batch"):
        totals = json.loads((work / key / "summary.json").read_text())["timing_totals_s"]
        waits[key] = {k: round(v, 2) for k, v in totals.items()}
    for key, name in labels:
        r = runs[key]
        rows.append(
            {
                "mode": name,
                "cases": n,
                "wall_s": round(r["wall_s"], 1),
                "cases_per_min": round(n / r["wall_s"] * 60.0, 2),
                "cpu_s": round(r["cpu_s"], 1),
                "cpu_s_per_case": round(r["cpu_s"] / n, 2),
                "peak_rss_mb": round(r["peak_rss_mb"], 0),
                "load_after": r["load_after"],
            }
        )
    speedup = loop["wall_s"] / batch["wall_s"]
    overlap_gain = runs["serial"]["wall_s"] / batch["wall_s"]
    print()
    print(
        f"{'mode':<30} {'cases':>5} {'wall s':>8} {'cases/min':>10} {'CPU s/case':>11} "
        f"{'peak RSS MB':>12}"
    )
    for r in rows:
        print(
            f"{r['mode']:<30} {r['cases']:>5} {r['wall_s']:>8.1f} {r['cases_per_min']:>10.2f} "
            f"{r['cpu_s_per_case']:>11.2f} {r['peak_rss_mb']:>12.0f}"
        )
    print(
        f"speed-up vs the loop {speedup:.2f}x, vs --workers 0 {overlap_gain:.2f}x; "
        f"label maps identical: {identical}"
    )
    for key in ("serial", "batch"):
        w = waits[key]
        print(
            f"{key}: reading {w['read_s']:.1f} s (segmenting thread waited {w['read_wait_s']:.1f}),"
            f" writing {w['write_s']:.1f} s (waited {w['write_wait_s']:.1f})"
        )
    print(f"load average before {load_before}, after {load_after}")
    result = {
        "benchmark": "batch_predict",
        "shape": list(args.shape),
        "weights": args.weights,
        "device": args.device,
        "workers": args.workers,
        "order": [name for name, _ in modes],
        "rows": rows,
        "speedup": round(speedup, 3),
        "speedup_vs_workers0": round(overlap_gain, 3),
        "io_seconds": waits,
        "identical_labels": identical,
        "load_before": load_before,
        "load_after": load_after,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
