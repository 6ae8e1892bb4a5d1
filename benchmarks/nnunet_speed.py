"""An nnU-Net v2 folder: napari-vnet's engine vs ``nnUNetPredictor``, alternating, same threads.

Both run the same trained-model folder (by default the small one the tests use, made by
nnU-Net's own planner and trainer; ``--folder`` for another) on the same scans, each run
in a fresh subprocess with ``torch.set_num_threads(N)`` (``--threads``, 2 by default),
the two engines alternating (nnU-Net, napari-vnet, nnU-Net, ...) so that both see the
same machine load; the load average is recorded before and after every run.

* ``nnunet``: ``nnUNetPredictor(use_mirroring=M)`` on the CPU through
  ``predict_single_npy_array`` (preprocessing, sliding window, export to the input grid);
* ``napari-vnet``: :func:`napari_vnet.inference.predict` with the folder (fp32,
  ``tta=M``: nnU-Net's mirror axes).

Cases: ``ct`` the shared 20-slice abdominal CT (``../shared/data``, 512 x 512, resampled to
the plan's spacing and back), ``clinical`` a synthetic torso CT of 300 x 512 x 512 at
1.0 x 0.8 x 0.8 mm (resampled too), ``phantom`` the test model's own kind of scan (a
phantom at the plan's spacing, no resampling). Seconds cover preprocessing, windows and
the way back; imports and loading the weights happen before the clock starts in both.
Agreement: per-class Dice of napari-vnet's labels with nnU-Net's, per case and mirroring.

    python benchmarks/nnunet_speed.py                       # ct and clinical, mirroring off/on
    python benchmarks/nnunet_speed.py --cases ct --repeats 2

Prints a table and writes ``benchmarks/results/nnunet_speed.json``.
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
SHARED_CT = ROOT.parent / "shared" / "data" / "ct-dicom-patient-a" / "dicom"
CACHE = Path(os.environ.get("NAPARI_VNET_BENCH_CACHE", "/tmp/napari_vnet_bench"))
ENGINES = ("nnunet", "napari-vnet")
CASES = ("ct", "clinical", "phantom")


def case_volume(case: str, folder: Path) -> tuple[Path, list[float]]:
    """``(cached .npy of the scan, its spacing (z, y, x))`` for ``case``."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"nnunet_speed_{case}.npy"
    if case == "ct":
        from napari_vnet.io import read_volume

        vol = read_volume(SHARED_CT)
        if not path.exists():
            np.save(path, np.asarray(vol.array, np.int16))
        return path, [float(s) for s in vol.spacing]
    if case == "phantom":
        plans = json.loads((folder / "plans.json").read_text())
        spacing = plans["configurations"][folder.name.split("__")[-1]]["spacing"]
        shape, spacing = (64, 128, 128), [float(s) for s in spacing]
    else:
        shape, spacing = (300, 512, 512), [1.0, 0.8, 0.8]
    if not path.exists():
        from scipy.ndimage import zoom

        from napari_vnet.phantoms import make_phantom

        image, _, _ = make_phantom(3, shape=(48, 96, 96))
        factors = [s / o for s, o in zip(shape, image.array.shape, strict=True)]
        np.save(path, zoom(image.array.astype(np.float32), factors, order=1).astype(np.int16))
    return path, spacing


def worker(engine: str, folder: Path, image: Path, spacing, mirror: bool, out: Path, threads: int):
    """One timed run in this process; labels to ``out.npy``, seconds to ``out``."""
    import torch

    torch.set_num_threads(threads)
    array = np.load(image)
    if engine == "nnunet":
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        pred = nnUNetPredictor(use_mirroring=mirror, device=torch.device("cpu"), allow_tqdm=False)
        pred.initialize_from_trained_model_folder(str(folder), use_folds=None)

        def run():
            return pred.predict_single_npy_array(array[None].astype(np.float32), {"spacing": spacing})
    else:
        import nnunetv2.preprocessing.preprocessors.default_preprocessor  # noqa: F401 - not timed

        from napari_vnet.inference import predict
        from napari_vnet.weights import load_weights

        model, card = load_weights(folder)

        def run():
            return predict(array, model, card, spacing=spacing, device="cpu", amp=False, tta=mirror)

    t0 = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - t0
    labels = result if engine == "nnunet" else result.labels
    np.save(out.with_suffix(".npy"), np.asarray(labels, np.uint8))
    info = {"seconds": seconds, "threads": torch.get_num_threads()}
    if engine != "nnunet":
        info.update(windows=result.windows, batch_size=result.batch_size)
    out.write_text(json.dumps(info))


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 2.0 * float((x & y).sum()) / max(1, int(x.sum() + y.sum()))


def one_run(args, engine: str, case: str, image: Path, spacing, mirror: bool, rep: int) -> dict:
    out = CACHE / f"nnunet_speed_{case}_{engine}_m{int(mirror)}_{rep}.json"
    load0 = os.getloadavg()
    cmd = [sys.executable, __file__, "--folder", str(args.folder), "--threads", str(args.threads),
           "--worker", engine, str(image), json.dumps(spacing), str(int(mirror)), str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    row = json.loads(out.read_text())
    row.update(engine=engine, case=case, mirror=mirror, repeat=rep,
               load_before=list(load0), load_after=list(os.getloadavg()))  # fmt: skip
    print(f"{case:>9} mirror={int(mirror)} {engine:>12}: {row['seconds']:7.1f} s "
          f"(load {load0[0]:.1f} -> {row['load_after'][0]:.1f})", flush=True)  # fmt: skip
    return row


def summary(rows: list[dict], labels: dict) -> list[dict]:
    """Per (case, mirroring): median seconds of each engine, speed-up, Dice per class."""
    out = []
    for case, mirror in dict.fromkeys((r["case"], r["mirror"]) for r in rows):
        sec = {e: float(np.median([r["seconds"] for r in rows if (r["case"], r["mirror"],
               r["engine"]) == (case, mirror, e)])) for e in ENGINES}  # fmt: skip
        ref, ours = labels[(case, mirror, "nnunet")], labels[(case, mirror, "napari-vnet")]
        values = sorted(set(np.unique(ref)) | set(np.unique(ours)) - {0})
        out.append({
            "case": case, "mirror": mirror, "nnunet_s": sec["nnunet"],
            "napari_vnet_s": sec["napari-vnet"], "speedup": sec["nnunet"] / sec["napari-vnet"],
            "dice": {str(int(v)): round(dice(ours, ref, int(v)), 5) for v in values if v},
            "voxels_differing": int((ours != ref).sum()), "voxels": int(ref.size),
        })  # fmt: skip
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=FOLDER)
    p.add_argument("--cases", nargs="+", default=["ct", "clinical"], choices=CASES)
    p.add_argument("--mirror", nargs="+", type=int, default=[0, 1], choices=[0, 1])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads in both engines")
    p.add_argument("--worker", nargs=5, metavar=("ENGINE", "IMAGE", "SPACING", "MIRROR", "OUT"))
    args = p.parse_args()
    if args.worker:
        engine, image, spacing, mirror, out = args.worker
        worker(engine, args.folder, Path(image), json.loads(spacing), mirror == "1", Path(out),
               args.threads)  # fmt: skip
        return 0
    rows, labels = [], {}
    for case in args.cases:
        image, spacing = case_volume(case, args.folder)
        for mirror in (bool(m) for m in args.mirror):
            for rep in range(args.repeats):
                order = ENGINES if rep % 2 == 0 else ENGINES[::-1]
                for engine in order:
                    row = one_run(args, engine, case, image, spacing, mirror, rep)
                    rows.append(row)
                    out = CACHE / f"nnunet_speed_{case}_{engine}_m{int(mirror)}_{rep}.npy"
                    labels[(case, mirror, engine)] = np.load(out)
    table = summary(rows, labels)
    print(f"\n{'case':>9} {'mirror':>6} {'nnU-Net s':>9} {'ours s':>8} {'speed-up':>8}  Dice per class")
    for t in table:
        print(f"{t['case']:>9} {int(t['mirror']):>6} {t['nnunet_s']:9.1f} {t['napari_vnet_s']:8.1f}"
              f" {t['speedup']:8.2f}  {t['dice']}")  # fmt: skip
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
            "python": platform.python_version(), "cases": args.cases, "repeats": args.repeats,
            "folder": str(args.folder.relative_to(ROOT) if args.folder.is_relative_to(ROOT)
                          else args.folder)}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "nnunet_speed.json").write_text(
        json.dumps({"meta": meta, "summary": table, "runs": rows}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
