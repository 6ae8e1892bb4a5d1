"""Fine-tune an nnU-Net v2 folder on 5 corrected slices of the shared real CT.

The base is an nnU-Net v2 trained-model folder (default: the small test one, made by
nnU-Net's planner and trainer on synthetic phantoms: liver 1, spine 2). The shared CT's
reference labels (TotalSegmentator scheme) are mapped onto those classes (liver 5 -> 1,
every vertebra -> 2); 5 evenly spread axial slices count as the corrected ones
(``annotated``), the network is fine-tuned with nnU-Net's own preprocessing
(``finetune(..., base=FOLDER)``), and the Dice on the *other* slices is measured before
and after, on the CT's own grid (the 5 training slices are scored too: they show whether
the network learnt at all, the others whether it generalises).

    python benchmarks/foreign_finetune_real_ct.py [--iterations 600] [--lr 3e-4] [--folder FOLDER]

Prints the figures and records them in ``benchmarks/results/foreign_finetune_real_ct.json``
(one entry per iterations/learning-rate setting; a new run of a setting replaces its entry).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ct-dicom-patient-a"
FOLDER = ROOT / "tests/data/nnunet/Dataset901_TinyPhantom/nnUNetTrainer__nnUNetPlans__3d_fullres"
CLASSES = {1: "liver", 2: "spine"}


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float | None:
    x, y = a == value, b == value
    total = int(x.sum() + y.sum())
    return None if total == 0 else 2.0 * float((x & y).sum()) / total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=FOLDER)
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--lr", type=float, default=None, help="default: the fine-tuning one")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA}: the shared real CT is not there")
    import torch

    torch.set_num_threads(args.threads)
    from napari_vnet.inference import predict
    from napari_vnet.io import read_volume
    from napari_vnet.training import TrainConfig, TrainingPair, finetune
    from napari_vnet.training.data import labels_on_image_grid
    from napari_vnet.weights import load_weights

    ct = read_volume(DATA / "dicom")
    ref_all = labels_on_image_grid(ct, read_volume(DATA / "labels.nii.gz"))
    names = json.loads((DATA / "labels.json").read_text())
    vertebrae = [int(k) for k, v in names.items() if str(v).startswith("vertebrae")]
    ref = np.zeros(ref_all.shape, np.uint8)
    ref[ref_all == 5] = 1
    ref[np.isin(ref_all, vertebrae)] = 2
    n = ct.array.shape[0]
    annotated = sorted({int(round(i)) for i in np.linspace(1, n - 2, 5)})
    others = [k for k in range(n) if k not in annotated]

    def scores(labels: np.ndarray, where: list[int]) -> dict[str, float | None]:
        return {name: dice(labels[where], ref[where], v) for v, name in CLASSES.items()}

    model, card = load_weights(args.folder)
    load_before = os.getloadavg()[0]
    labels = predict(ct, model, card, device="cpu", amp=False).labels
    before, before_train = scores(labels, others), scores(labels, annotated)
    out = Path(tempfile.mkdtemp(prefix="ft-ct-")) / "finetuned.pt"
    config = TrainConfig(iterations=args.iterations, batch_size=2, seed=0, lr=args.lr)
    pair = TrainingPair(ct, ref, annotated=annotated, name="shared CT, 5 slices")
    t0 = time.perf_counter()
    for _ in finetune([pair], config, base=args.folder, out=out):
        pass
    seconds = time.perf_counter() - t0
    model2, card2 = load_weights(out)
    labels = predict(ct, model2, card2, device="cpu", amp=False).labels
    after, after_train = scores(labels, others), scores(labels, annotated)
    result = {
        "base": card.origin(),
        "fine_tuned": card2.origin(),
        "annotated_slices": annotated,
        "iterations": args.iterations,
        "lr": args.lr if args.lr is not None else "default (3e-4)",
        "threads": args.threads,
        "train_seconds": round(seconds, 1),
        "dice_other_slices_before": before,
        "dice_other_slices_after": after,
        "dice_training_slices_before": before_train,
        "dice_training_slices_after": after_train,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    path = ROOT / "benchmarks" / "results" / "foreign_finetune_real_ct.json"
    try:
        runs = json.loads(path.read_text()).get("runs", [])
    except (OSError, ValueError, AttributeError):
        runs = []
    same = ("iterations", "lr", "base")
    runs = [r for r in runs if [r.get(k) for k in same] != [result[k] for k in same]]
    runs.append(result)
    runs.sort(key=lambda r: (r["iterations"], str(r["lr"])))
    path.write_text(json.dumps({"runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
