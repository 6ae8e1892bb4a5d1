"""Fine-tuning on what the user corrected, kept as the user watched it: old vs new.

A user corrects only the liver on a few slices of a model's prediction of the shared CT
(the spleen, stomach and spine predicted on those slices stay as predicted, right or
wrong), then fine-tunes with the Fine-tune dock's settings (validation 20 %, a time
budget, the dock's validation pace). The variants:

* **old**: the corrected slices count whole (the uncorrected spleen, stomach and spine
  predictions on them are learnt as if corrected), and the checkpoint of the highest
  raw validation Dice is kept (``keep="best-raw"``);
* **wW** (e.g. ``w0.25``; the dock's *what I corrected*): the slices weigh per label
  and region - the liver the user painted or erased, the changed voxels and a band
  around them weigh 1 (:func:`napari_vnet.training.annotation_regions.training_weights` of the
  record the real edit recorder writes), the labels left as predicted on those slices
  weigh ``W`` (``TrainConfig.uncorrected_weight``: ``w0`` is the corrections only, whose
  classes no counted voxel shows are kept by the marginal loss, ``partial_labels``;
  ``w1`` the slices whole); the weights are chosen by the smoothed validation Dice, or
  the final ones when validation is too small to decide (``keep="auto"``).

Where a run keeps an earlier checkpoint, the final weights are scored too.

The base model is a 3D U-Net trained from scratch for ``--base-minutes`` on slices 0-9
of the CT (the context-first plan of a new model); the user corrects slices of the
other half. Dice (liver 5, spleen 1, stomach 6, spine = every vertebra) before and after,
on the uncorrected slices of that half and on another scan
(:func:`benchmarks.second_patient.make_second_patient`, seed 1: pose, size, spacing,
contrast phase and kernel changed).

    nice python benchmarks/finetune_selection.py [--base-minutes 3] [--minutes 2.5]
        [--variants w0,w0.1,w0.25,w1]

Writes ``benchmarks/results/finetune_selection.json`` and prints a table. CPU times on a
shared machine: the iterations reached in a time budget depend on the other load.
"""

# ruff: noqa: T201  (a benchmark: it reports on stdout)
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"
SPINE = 100  # every TotalSegmentator vertebra, merged
CLASSES = {5: "liver", 1: "spleen", 6: "stomach", SPINE: "spine"}
LIVER = 5


def to_classes(ts_labels: np.ndarray) -> np.ndarray:
    """TotalSegmentator values -> the benchmark's classes (others background)."""
    out = np.zeros(ts_labels.shape, np.uint8)
    for v in (5, 1, 6):
        out[ts_labels == v] = v
    out[(ts_labels >= 25) & (ts_labels <= 50)] = SPINE
    return out


def dice(pred: np.ndarray, ref: np.ndarray, where=slice(None)) -> dict:
    out = {}
    for v, name in CLASSES.items():
        p, g = pred[where] == v, ref[where] == v
        denom = int(p.sum() + g.sum())
        out[name] = None if denom == 0 else round(2.0 * float((p & g).sum()) / denom, 4)
    present = [d for d in out.values() if d is not None]
    out["mean"] = round(float(np.mean(present)), 4) if present else None
    return out


def segment(weights: Path, volume) -> np.ndarray:
    from napari_vnet.inference import predict
    from napari_vnet.weights import load_weights

    model, card = load_weights(weights)
    return np.asarray(predict(volume, model, card, device="cpu", amp=False).labels)


def correct_liver(predicted: np.ndarray, ref: np.ndarray, slices) -> tuple[np.ndarray, dict]:
    """The user's corrections: on ``slices``, missing liver painted, false liver erased,
    with napari's own Labels layer and the plugin's edit recorder (the record the
    Fine-tune dock trains from). Returns the corrected labels and the record."""
    from napari.layers import Labels

    from napari_vnet.training.annotation_regions import EditRecorder
    from napari_vnet.training.annotations import KEY

    layer = Labels(predicted.copy())
    recorder = EditRecorder(layer)

    def on_paint(event):
        recorder.take(event.value or [], 0)
        recorder.update()

    layer.events.paint.connect(on_paint)
    for s in slices:
        plane = layer.data[s]
        add = (ref[s] == LIVER) & (plane != LIVER)
        erase = (ref[s] != LIVER) & (plane == LIVER)
        for where, value in ((add, LIVER), (erase, 0)):
            yx = np.nonzero(where)
            if yx[0].size:
                layer.data_setitem((np.full(yx[0].size, s), *yx), value)
    return np.array(layer.data), json.loads(json.dumps(layer.metadata[KEY]))


def variant_settings(variant: str, record, slices) -> tuple[object, float, str]:
    """``(annotated, uncorrected_weight, keep)`` of a variant: ``old`` or ``w<weight>``
    (``new``: ``w0``, the corrections only, as earlier runs of this benchmark named it)."""
    if variant == "old":
        return list(slices), 1.0, "best-raw"
    weight = 0.0 if variant == "new" else float(variant.removeprefix("w"))
    return record, weight, "auto"


def fine_tune(variant: str, ct, corrected, record, slices, base: Path, args, workdir) -> dict:
    from napari_vnet.training import TrainConfig, TrainingPair, run_training

    annotated, weight, keep = variant_settings(variant, record, slices)
    config = TrainConfig(
        iterations=None, minutes=args.minutes, val_fraction=0.2, seed=args.seed,
        eval_seconds=min(60.0, max(15.0, 60.0 * args.minutes / 8)),
        keep=keep, keep_resume=True, uncorrected_weight=weight,
    )  # fmt: skip
    out = workdir / f"{variant}.pt"
    vals = []
    t = time.time()
    summary = run_training(
        [TrainingPair(ct, corrected, annotated=annotated, name=f"CT, liver corrected ({variant})")],
        config, base=base, out=out,
        on_event=lambda e: vals.append([e["iteration"], round(e["val_dice"], 4)])
        if e.get("val_dice") is not None else None,
    )  # fmt: skip
    print(f"  [{variant}] {summary['iterations']} iterations in {time.time() - t:.0f}s; "
          f"{(summary.get('selection') or {}).get('message')}", flush=True)  # fmt: skip
    sel = summary.get("selection") or {}
    from napari_vnet.training import resume_path

    return {
        "out": out,
        "final": resume_path(out),  # the weights of the last iteration
        "uncorrected_weight": weight,
        "voxels": (summary.get("voxels") or {}).get("message"),
        "iterations": summary["iterations"],
        "seconds": round(summary["seconds"], 1),
        "kept_iteration": summary["best_iteration"],
        "kept": sel.get("kept"),
        "selection_message": sel.get("message"),
        "validation_dice": vals,
        "validation_voxels": sel.get("validation_voxels"),
    }


def train_base(ct, ref, args, workdir) -> Path:
    from napari_vnet.training import TrainConfig, TrainingPair, run_training

    out = workdir / "base.pt"
    config = TrainConfig(
        arch="unet3d", iterations=None, minutes=args.base_minutes, seed=args.seed,
        classes={v: n for v, n in CLASSES.items()},
    )  # fmt: skip
    t = time.time()
    summary = run_training(
        [TrainingPair(ct, ref, annotated=list(range(10)), name="CT slices 0-9")], config, out=out
    )
    print(f"  [base] {summary['iterations']} iterations in {time.time() - t:.0f}s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-minutes", type=float, default=3.0)
    ap.add_argument("--minutes", type=float, default=2.5, help="each fine-tune")
    ap.add_argument("--slices", type=int, nargs="+", default=[11, 13, 15, 17, 19])
    ap.add_argument("--variants", default="w0,w0.1,w0.25,w1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "finetune_selection.json"))
    ap.add_argument(
        "--base", help="the base weights of an earlier run (not trained again: its "
        "'before' scores must match those in --out, whose variants are kept and added to)",
    )  # fmt: skip
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    from second_patient import CT, load_shared_ct, make_second_patient

    if not (CT / "dicom").is_dir():
        print(f"the shared CT is not at {CT}", file=sys.stderr)
        return 1
    ct, ts = load_shared_ct()
    ref = to_classes(np.asarray(ts.array))
    other_img, other_ts, params = make_second_patient(ct, ts, seed=1)
    other_ref = to_classes(np.asarray(other_ts.array))
    workdir = Path(tempfile.mkdtemp(prefix="ft-selection-"))
    base = Path(args.base) if args.base else train_base(ct, ref, args, workdir)
    predicted = segment(base, ct)
    corrected, record = correct_liver(predicted, ref, args.slices)
    uncorrected = [z for z in range(10, ct.shape[0]) if z not in args.slices]
    print(f"  user: liver corrected on slices {args.slices}; scored on {uncorrected}")

    def scores(weights: Path) -> dict:
        return {
            "uncorrected_slices": dice(segment(weights, ct), ref, uncorrected),
            "other_scan": dice(segment(weights, other_img), other_ref),
        }

    result = {
        "setup": {
            "base": f"3D U-Net from scratch, {args.base_minutes} min on CT slices 0-9",
            "corrected_slices": args.slices, "uncorrected_slices": uncorrected,
            "fine_tune_minutes": args.minutes, "validation": "20 % (the dock's default)",
            "other_scan": {"seed": 1, **{k: v for k, v in params.items() if k != "seed"}},
            "classes": {str(v): n for v, n in CLASSES.items()},
            "record_labels_per_slice": {k: e["labels"] for k, e in record["edits"].items()},
        },
        "before": scores(base),
    }  # fmt: skip
    variants = args.variants.split(",")
    if args.base:  # add to the runs of that base
        earlier = json.loads(Path(args.out).read_text())
        if earlier["before"] != result["before"]:
            print(f"{args.base} is not the base of {args.out}", file=sys.stderr)
            return 1
        result = {**earlier, **{k: v for k, v in result.items() if k != "setup"}}
        result["setup"]["added_with_the_same_base"] = variants
        variants = [k for k in earlier if k not in ("setup", "before")] + variants
    for variant in args.variants.split(","):
        run = fine_tune(variant, ct, corrected, record, args.slices, base, args, workdir)
        run["after"] = scores(run.pop("out"))
        final = run.pop("final")
        if run["kept_iteration"] != run["iterations"]:  # what the final weights scored
            run["final_weights"] = scores(final)
        result[variant] = run
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print_table(result, list(dict.fromkeys(variants)))
    print(f"wrote {args.out}")
    return 0


def print_table(result: dict, variants) -> None:
    rows = [("before (base)", result["before"])]
    for v in variants:
        rows.append((f"after, {v}", result[v]["after"]))
        if "final_weights" in result[v]:
            rows.append((f"  {v}, final", result[v]["final_weights"]))
    names = [*CLASSES.values(), "mean"]
    for where in ("uncorrected_slices", "other_scan"):
        print(f"\nDice on {where.replace('_', ' ')}")
        print(f"{'':18s}" + "".join(f"{n:>9s}" for n in names))
        for label, s in rows:
            cells = "".join(f"{'-' if s[where][n] is None else s[where][n]:>9}" for n in names)
            print(f"{label:18s}{cells}")
    for v in variants:
        r = result[v]
        print(f"{v}: {r['iterations']} it, kept {r['kept_iteration']} ({r['selection_message']})")


if __name__ == "__main__":
    raise SystemExit(main())
