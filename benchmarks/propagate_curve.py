"""How far do a few corrected slices carry? Dice on the untouched slices after "Propagate".

For each of ``--weights`` (default: the shipped phantom V-Net and the real-CT starter), the
model segments the shared CT; a simulated user then corrects the ``k`` worst slices of
one class (``--class``, default liver: the slices where the prediction differs most from
the reference; the reference is painted there, so those slices are exactly right for the
class) and presses Propagate (:func:`napari_vnet.workflows.propagate.propagate`: a short
fine-tune on the corrected slices, then the rest re-predicted). The label map the user
corrects is the class alone (its model value, background elsewhere), so the corrected
slices count whole and the model's other classes are partial labels.

Reported per ``k`` in ``--slices`` (default 1 2 3 5): the class Dice on the slices the
user did not touch before and after propagating, the Dice of the whole volume after, the
fine-tune iterations and the seconds. Results go to ``--out`` (JSON) and a table is
printed.

    python benchmarks/propagate_curve.py
    python benchmarks/propagate_curve.py --weights unet3d-ct-starter --slices 1 3
"""

# ruff: noqa: T201  (a command-line tool: it reports on stdout)
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from correction_effort import CT, RESULTS, class_values, dice, read_case  # noqa: E402

WEIGHTS = ("vnet-phantom", "unet3d-ct-starter")


def worst_slices(start: np.ndarray, ref: np.ndarray, k: int) -> list[int]:
    """The ``k`` slices where ``start`` differs most from ``ref`` (ties: lower index)."""
    err = (start != ref).sum(axis=(1, 2))
    return sorted(int(z) for z in np.argsort(-err, kind="stable")[:k])


def corrected(start: np.ndarray, ref: np.ndarray, slices: list[int]) -> np.ndarray:
    """``start`` with the reference painted on ``slices`` (binary maps)."""
    out = start.copy()
    out[slices] = ref[slices]
    return out


def one_point(k, image, start, ref, spacing, weights, value, args) -> dict:
    from napari_vnet.workflows.propagate import propagate, propagate_config

    slices = worst_slices(start, ref, k)
    cur = corrected(start, ref, slices)
    untouched = np.ones(ref.shape[0], bool)
    untouched[slices] = False
    labels = cur.astype(np.uint8) * np.uint8(value)
    lr = {"lr": args.lr} if args.lr else {}
    config = propagate_config(args.iterations, args.minutes or None, seed=args.seed, **lr)
    t0, c0 = time.perf_counter(), time.process_time()
    change, result = propagate(
        image, labels, {"axis": 0, "slices": slices}, weights=weights, spacing=spacing,
        config=config, predict_settings={"overlap": args.overlap},
    )  # fmt: skip
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    change.apply(labels)
    after = labels == value
    assert np.array_equal(after[slices], ref[slices]), "a corrected slice changed"
    return {
        "corrected_slices": slices,
        "dice_untouched_before": round(dice(cur[untouched], ref[untouched]), 4),
        "dice_untouched_after": round(dice(after[untouched], ref[untouched]), 4),
        "dice_volume_before": round(dice(cur, ref), 4),
        "dice_volume_after": round(dice(after, ref), 4),
        "iterations": result.iterations,
        "train_seconds": round(result.train_seconds, 1),
        "predict_seconds": round(result.predict_seconds, 1),
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "voxels_changed": change.size,
    }


def run_weights(weights: str, image, ref_all, args) -> dict:
    from napari_vnet.inference import predict
    from napari_vnet.models import load_checkpoint
    from napari_vnet.weights import resolve_weights

    path = resolve_weights(weights)
    model, card = load_checkpoint(path, map_location="cpu")
    value, ref_values = class_values(args, card)
    ref = np.isin(ref_all, ref_values)
    arr = np.asarray(image.array)
    spacing = tuple(float(s) for s in image.spacing)
    t0 = time.perf_counter()
    start = predict(arr, model, card, spacing=spacing, device="cpu",
                    overlap=args.overlap).labels == value  # fmt: skip
    predict_seconds = time.perf_counter() - t0
    points = {}
    for k in args.slices:
        points[str(k)] = one_point(k, arr, start, ref, spacing, str(path), value, args)
        print(f"{weights} k={k}: {json.dumps(points[str(k)])}", flush=True)
    return {"arch": card.arch, "model_value": value, "dice_start": round(dice(start, ref), 4),
            "predict_seconds": round(predict_seconds, 1), "points": points}  # fmt: skip


def table(results: dict) -> str:
    rows = ["| weights | corrected slices | Dice untouched before | after | volume after | "
            "iterations | seconds | CPU seconds |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for weights, r in results.items():
        rows.append(
            f"| {weights} | 0 | {r['dice_start']:.3f} | - | {r['dice_start']:.3f} | - | - | - |"
        )
        for k, p in r["points"].items():
            rows.append(
                f"| {weights} | {k} | {p['dice_untouched_before']:.3f} | "
                f"{p['dice_untouched_after']:.3f} | {p['dice_volume_after']:.3f} | "
                f"{p['iterations']} | {p['seconds']:.0f} | {p['cpu_seconds']:.0f} |"
            )
    return "\n".join(rows)


def parse(argv=None) -> argparse.Namespace:
    from napari_vnet.workflows.propagate import ITERATIONS, MINUTES

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--image", default=str(CT / "dicom"))
    ap.add_argument("--labels", default=str(CT / "labels.nii.gz"))
    ap.add_argument("--weights", nargs="+", default=list(WEIGHTS))
    ap.add_argument("--class", dest="class_name", default="liver")
    ap.add_argument("--ref-value", type=int, nargs="+", help="the class's value(s) in REF")
    ap.add_argument("--slices", type=int, nargs="+", default=[1, 2, 3, 5])
    ap.add_argument("--iterations", type=int, default=ITERATIONS)
    ap.add_argument(
        "--minutes",
        type=float,
        default=MINUTES,
        help="fine-tune time cap (0: none, the iterations alone end it)",
    )
    ap.add_argument("--lr", type=float, default=None, help="default: the dock's")
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "propagate_curve.json"))
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    image, ref_all = read_case(args)
    results = {w: run_weights(w, image, ref_all, args) for w in args.weights}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("image", "labels")}
    out.write_text(json.dumps({
        "data": {"image": str(args.image), "labels": str(args.labels),
                 "shape": list(image.shape), "spacing": list(image.spacing),
                 "class": args.class_name},
        "settings": {**settings, "torch_threads": torch.get_num_threads()},
        "results": results,
    }, indent=2) + "\n")  # fmt: skip
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
