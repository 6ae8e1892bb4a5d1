"""An nnU-Net v2 model folder: nnU-Net's own predictor vs napari-vnet's engine.

Both run the *same trained-model folder* (by default the small one the tests use,
``tests/data/nnunet/...``, made by nnU-Net's planner and trainer; ``--folder`` for
another) on the same synthetic torso CT at the plan's spacing, each engine in its own
subprocess so that peak RSS (``VmHWM``) is its own:

* ``nnunet``: ``nnUNetPredictor`` with its defaults (tile step 0.5, Gaussian, all folds
  present) on the CPU with mirroring off, through ``predict_single_npy_array``
  (preprocessing, sliding window, export to the input grid);
* ``napari-vnet``: :func:`napari_vnet.inference.predict` on the same folder (same
  preprocessing by nnU-Net's functions, logits blended as nnU-Net does), fp32, no TTA;
* ``napari-vnet-auto``: the same with the engine's defaults (``amp="auto"``: bf16 on a
  CPU with native bf16, fp32 otherwise).

Seconds include preprocessing and the way back, not loading the weights. Label agreement
is the per-class Dice of each engine's labels with nnU-Net's.

    python benchmarks/foreign_weights.py                     # 128x256x256 and 300x512x512
    python benchmarks/foreign_weights.py --shapes 64x128x128 # quicker

Prints a table and writes ``benchmarks/results/foreign_weights.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FOLDER = ROOT / "tests/data/nnunet/Dataset901_TinyPhantom/nnUNetTrainer__nnUNetPlans__3d_fullres"
CACHE = Path(os.environ.get("NAPARI_VNET_BENCH_CACHE", "/tmp/napari_vnet_bench"))
ENGINES = ("nnunet", "napari-vnet", "napari-vnet-auto")


def peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")  # pragma: no cover


def volume(shape: tuple[int, int, int], spacing: list[float]) -> Path:
    """A phantom CT zoomed to ``shape`` (int16 HU), cached as .npy."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"foreign_ct_{'x'.join(map(str, shape))}.npy"
    if not path.exists():
        from scipy.ndimage import zoom

        from napari_vnet.phantoms import make_phantom

        image, _, _ = make_phantom(3, shape=(48, 96, 96))
        factors = [s / o for s, o in zip(shape, image.array.shape, strict=True)]
        big = zoom(image.array.astype(np.float32), factors, order=1)
        np.save(path, big.astype(np.int16))
    return path


def worker(
    engine: str, folder: Path, image_path: Path, spacing: list[float], out: Path, threads: int
) -> None:
    import torch

    if threads > 0:  # both engines alike (nnU-Net keeps min(8, this) during its run)
        torch.set_num_threads(threads)
    image = np.load(image_path)
    if engine == "nnunet":
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        pred = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
        pred.initialize_from_trained_model_folder(str(folder), use_folds=None)
        t0 = time.perf_counter()
        labels = pred.predict_single_npy_array(image[None].astype(np.float32), {"spacing": spacing})
        seconds = time.perf_counter() - t0
    else:
        from napari_vnet.inference import predict
        from napari_vnet.weights import load_weights

        model, card = load_weights(folder)
        amp = False if engine == "napari-vnet" else "auto"
        t0 = time.perf_counter()
        result = predict(image, model, card, spacing=spacing, device="cpu", amp=amp)
        seconds = time.perf_counter() - t0
        labels = result.labels
        extra = {"windows": result.windows, "stats": result.stats}
    np.save(out.with_suffix(".npy"), np.asarray(labels, np.uint8))
    info = {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}
    if engine != "nnunet":
        info.update(extra)
    out.write_text(json.dumps(info))


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 2.0 * float((x & y).sum()) / max(1, int(x.sum() + y.sum()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=FOLDER)
    p.add_argument("--shapes", nargs="+", default=["128x256x256", "300x512x512"])
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument(
        "--threads", type=int, default=0,
        help="torch threads in both engines (0: torch's default); on a loaded 2-core "
        "machine 1 avoids OpenMP oversubscription stalls that swamp both engines",
    )  # fmt: skip
    p.add_argument("--worker", nargs=4, metavar=("ENGINE", "IMAGE", "SPACING", "OUT"))
    args = p.parse_args()
    if args.worker:
        engine, image, spacing, out = args.worker
        worker(engine, args.folder, Path(image), json.loads(spacing), Path(out), args.threads)
        return 0

    plans = json.loads((args.folder / "plans.json").read_text())
    config = args.folder.name.split("__")[-1]
    spacing = plans["configurations"][config]["spacing"]
    rows = []
    for text in args.shapes:
        shape = tuple(int(s) for s in text.split("x"))
        image = volume(shape, spacing)
        labels = {}
        for engine in args.engines:
            out = CACHE / f"foreign_{engine}_{text}.json"
            load0 = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "--folder", str(args.folder), "--threads",
                   str(args.threads), "--worker", engine, str(image), json.dumps(spacing),
                   str(out)]  # fmt: skip
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            res = json.loads(out.read_text())
            labels[engine] = np.load(out.with_suffix(".npy"))
            res.update(engine=engine, shape=text, load_before=load0, load_after=os.getloadavg()[0])
            rows.append(res)
            print(f"{text:>12} {engine:>17}: {res['seconds']:8.1f} s  {res['peak_rss_mb']:8.0f} MB"
                  f"  (load {load0:.1f} -> {res['load_after']:.1f})", flush=True)  # fmt: skip
        if "nnunet" in labels:
            ref = labels["nnunet"]
            for row in rows:
                if row["shape"] == text and row["engine"] != "nnunet":
                    row["dice_vs_nnunet"] = {
                        str(v): round(dice(labels[row["engine"]], ref, v), 4)
                        for v in np.unique(ref) if v > 0
                    }  # fmt: skip
    print()
    print(
        f"{'shape':>12} {'engine':>17} {'seconds':>8} {'speed-up':>8} {'peak MB':>8} {'RSS ratio':>9}  Dice vs nnU-Net"
    )
    for row in rows:
        ref = next(r for r in rows if r["shape"] == row["shape"] and r["engine"] == "nnunet") \
            if "nnunet" in args.engines else row  # fmt: skip
        print(f"{row['shape']:>12} {row['engine']:>17} {row['seconds']:8.1f} "
              f"{ref['seconds'] / row['seconds']:8.2f} {row['peak_rss_mb']:8.0f} "
              f"{row['peak_rss_mb'] / ref['peak_rss_mb']:9.2f}  {row.get('dice_vs_nnunet', '')}")  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "threads": args.threads, "shapes": args.shapes,
            "folder": str(args.folder.relative_to(ROOT) if args.folder.is_relative_to(ROOT) else args.folder)}  # fmt: skip
    (RESULTS / "foreign_weights.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
