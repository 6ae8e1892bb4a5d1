"""Real CT: train a 3D U-Net from scratch on CPU for a bounded time, and fine-tune a model
on 5 annotated slices; Dice on liver (5), spleen (1) and stomach (6) of patient A.

Data: ``../shared/data/ct-dicom-patient-a`` (20-slice abdominal CT, DICOM, and its
TotalSegmentator label map, stored with flipped rows: the engine resamples the labels onto
the image grid through physical space). Nothing is copied into the project.

Experiment A (from scratch): the labels of z slices 0-14 train a 3D U-Net for
``--scratch-minutes``; slices 15-19 are held out (their labels never reach the loss).
Dice is measured with :func:`napari_vnet.inference.predict` on the original 512 x 512
grid, on the held-out slices and on all slices.

Experiment B (fine-tune on sparse corrections): a base model that has never seen this CT
- the shipped ``unet3d-phantom`` weights if present, else a 3D U-Net this script trains
on synthetic phantoms for ``--pretrain-minutes`` (the same recipe) - is fine-tuned on
5 annotated slices (2, 6, 10, 14, 18) for ``--finetune-minutes``. New classes re-use the
base's output channels by name (liver -> liver, spleen -> spleen); stomach is new. The
fine-tune runs at the base card's spacing and normalisation, on patches of the base's
inference window unless ``--finetune-patch`` is given (a patch with at least as many
voxels becomes the fine-tuned model's window): the engine trains in the windows the
model will segment with. Dice on the 15 other slices before (base, labels mapped by name)
and after, each model segmenting with its own card (spacing, window).

    python benchmarks/real_ct_finetune.py [--scratch-minutes 6] [--finetune-minutes 3]
    python benchmarks/real_ct_finetune.py --only finetune --finetune-minutes 8 \
        --finetune-lr 1e-3 --finetune-patch 16 96 96 --out benchmarks/results/X.json

Writes ``benchmarks/results/real_ct_finetune.json``. CPU time on a shared machine: the
number of iterations reached in the time budget depends on the other load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_VNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
CLASSES = "5=liver,1=spleen,6=stomach"
WINDOW = {"kind": "window", "low": -200.0, "high": 300.0}


def dice_on(pred: np.ndarray, gt: np.ndarray, slices, values=(5, 1, 6)) -> dict:
    out = {}
    for v in values:
        p, g = pred[slices] == v, gt[slices] == v
        denom = p.sum() + g.sum()
        out[str(v)] = None if denom == 0 else float(2 * (p & g).sum() / denom)
    present = [d for d in out.values() if d is not None]
    out["mean"] = float(np.mean(present)) if present else None
    return out


def train(pairs, config, *, base=None, out, label: str) -> dict:
    from napari_vnet.training import run_training

    t = time.time()

    def show(e: dict) -> None:
        if e["iteration"] == 1 or e["iteration"] % 20 == 0:
            print(
                f"  [{label}] it {e['iteration']} loss {e['loss']:.4f} {e['seconds']:.0f}s",
                flush=True,
            )

    summary = run_training(pairs, config, base=base, out=out, on_event=show)
    print(f"  [{label}] {summary['iterations']} iterations in {time.time() - t:.0f}s", flush=True)
    return summary


def segment(model, card, image) -> np.ndarray:
    from napari_vnet.inference import predict

    return predict(image, model, card, overlap=0.25).labels


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scratch-minutes", type=float, default=6.0)
    ap.add_argument("--finetune-minutes", type=float, default=3.0)
    ap.add_argument("--pretrain-minutes", type=float, default=2.0)
    ap.add_argument("--spacing", type=float, nargs=3, default=[2.0, 3.0, 3.0])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--patch", type=int, nargs=3, default=[16, 96, 96])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument(
        "--finetune-lr", type=float, default=None, help="fine-tune learning rate (default lr/2)"
    )
    ap.add_argument(
        "--finetune-patch", type=int, nargs=3, default=None,
        help="fine-tune patch (default: the base card's inference window, which the engine "
        "trains on so that the model segments in windows it was trained on)",
    )  # fmt: skip
    ap.add_argument("--finetune-iterations", type=int, default=None)
    ap.add_argument("--only", choices=("scratch", "finetune"), help="run one experiment")
    ap.add_argument("--out", default=str(RESULTS / "real_ct_finetune.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from napari_vnet.io import read_volume
    from napari_vnet.models import load_checkpoint
    from napari_vnet.training import TrainConfig, TrainingPair, labels_on_image_grid, width_kwargs

    ct_dir = DATA / "ct-dicom-patient-a"
    if not (ct_dir / "dicom").is_dir():
        print(f"real data not found at {ct_dir}", file=sys.stderr)
        return 1
    image = read_volume(ct_dir / "dicom")
    labels_vol = read_volume(ct_dir / "labels.nii.gz")
    gt = labels_on_image_grid(image, labels_vol)
    nz = image.shape[0]
    result: dict = {
        "data": {
            "image": str(ct_dir / "dicom"),
            "shape": list(image.shape),
            "spacing": list(image.spacing),
        },
        "classes": CLASSES,
        "settings": {
            "spacing": args.spacing,
            "patch": args.patch,
            "batch": args.batch,
            "width": args.width,
            "lr": args.lr,
        },  # fmt: skip
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
    }
    common = dict(
        classes=CLASSES,
        spacing=tuple(args.spacing),
        patch_size=tuple(args.patch),
        batch_size=args.batch,
        iterations=None,
        eval_seconds=60.0,
    )
    tmp = Path(tempfile.mkdtemp(prefix="napari_vnet_realct_"))

    # ---------------------------------------------------------------- A: from scratch
    if args.only != "finetune":
        train_slices = list(range(0, 15))
        held_out = slice(15, nz)
        print(
            f"A: 3D U-Net from scratch, {args.scratch_minutes} min, labels of slices 0-14",
            flush=True,
        )
        cfg = TrainConfig(
            arch="unet3d", arch_kwargs=width_kwargs("unet3d", args.width), minutes=args.scratch_minutes,
            lr=args.lr, normalization=WINDOW, **common,
        )  # fmt: skip
        summary = train([TrainingPair(image, gt, annotated=train_slices, name="patient A")], cfg,
                        out=tmp / "scratch.pt", label="scratch")  # fmt: skip
        model, card = load_checkpoint(summary["out"])
        pred = segment(model, card, image)
        result["scratch"] = {
            "arch_kwargs": card.arch_kwargs,
            "minutes": args.scratch_minutes,
            "iterations": summary["iterations"],
            "best_iteration": summary["best_iteration"],
            "seconds": summary["seconds"],
            "train_slices": "0-14",
            "dice_held_out_slices_15_19": dice_on(pred, gt, held_out),
            "dice_training_slices_0_14": dice_on(pred, gt, slice(0, 15)),
            "dice_all_slices": dice_on(pred, gt, slice(None)),
        }
        print(json.dumps(result["scratch"], indent=1), flush=True)

    if args.only == "scratch":
        return _write(result, args.out)

    # ---------------------------------------------------------------- B: 5-slice fine-tune
    annotated = [2, 6, 10, 14, 18]
    others = np.array([z for z in range(nz) if z not in annotated])
    base = None
    try:
        from napari_vnet.weights import shipped_weights

        base = shipped_weights().get("unet3d-phantom")
    except Exception:  # noqa: BLE001
        base = None
    if base is not None:
        base_desc = f"shipped weights {Path(base).name}"
    else:
        from napari_vnet.phantoms import make_phantom

        print(
            f"B: no shipped unet3d-phantom; pre-training on phantoms for {args.pretrain_minutes} min",
            flush=True,
        )
        pairs = []
        for seed in range(3):
            im, lb, phantom_classes = make_phantom(seed)
            pairs.append(TrainingPair(im, lb, name=f"phantom {seed}"))
        cfg = TrainConfig(
            arch="unet3d", arch_kwargs=width_kwargs("unet3d", args.width), classes=phantom_classes,
            minutes=args.pretrain_minutes, lr=args.lr, normalization=WINDOW,
            spacing=tuple(args.spacing), patch_size=tuple(args.patch), batch_size=args.batch,
            iterations=None,
        )  # fmt: skip
        base = train(pairs, cfg, out=tmp / "phantom_base.pt", label="phantom pre-training")["out"]
        base_desc = (
            f"3D U-Net pre-trained here on 3 synthetic phantoms for {args.pretrain_minutes} min"
        )
    base_model, base_card = load_checkpoint(base)
    pred0 = segment(base_model, base_card, image)
    # map the base's label values onto the CT's by class name (liver -> 5, spleen -> 1)
    ct_value = {"liver": 5, "spleen": 1, "stomach": 6}
    mapped = np.zeros_like(gt)
    for c in base_card.classes[1:]:
        if c.name.lower() in ct_value:
            mapped[pred0 == c.value] = ct_value[c.name.lower()]
    before = dice_on(mapped, gt, others)
    before_annotated = dice_on(mapped, gt, np.array(annotated))
    ft_lr = args.finetune_lr if args.finetune_lr is not None else args.lr / 2
    ft_patch = tuple(args.finetune_patch) if args.finetune_patch else None
    print(
        f"B: fine-tune on slices {annotated} for {args.finetune_minutes} min from {base_desc} "
        f"(lr {ft_lr:g}, patch {ft_patch or 'base window'}, base spacing and normalisation)",
        flush=True,
    )
    # spacing, normalisation and (by default) the patch come from the base card: the
    # network is fine-tuned in the geometry it was trained in and segments with.
    cfg = TrainConfig(
        minutes=args.finetune_minutes, lr=ft_lr,
        **{**common, "spacing": None, "patch_size": ft_patch,
           "iterations": args.finetune_iterations},
    )  # fmt: skip
    summary = train([TrainingPair(image, gt, annotated=annotated, name="patient A, 5 slices")], cfg,
                    base=base, out=tmp / "finetuned.pt", label="fine-tune")  # fmt: skip
    model, card = load_checkpoint(summary["out"])
    pred1 = segment(model, card, image)
    after = dice_on(pred1, gt, others)
    result["finetune"] = {
        "base": base_desc,
        "base_classes": [f"{c.value}={c.name}" for c in base_card.classes],
        "base_spacing": list(base_card.spacing) if base_card.spacing else None,
        "base_inference_window": list(base_card.patch_size),
        "organs": {"5": "liver", "1": "spleen", "6": "stomach"},
        "annotated_slices": annotated,
        "evaluated_slices": others.tolist(),
        "minutes": args.finetune_minutes,
        "lr": ft_lr,
        "training_spacing": summary["spacing"],
        "training_patch": summary["patch_size"],
        "finetuned_inference_window": list(card.patch_size),
        "iterations": summary["iterations"],
        "best_iteration": summary["best_iteration"],
        "kept_classes": card.history.get("run", {}).get("kept_classes"),
        "dice_other_slices_before": before,
        "dice_other_slices_after": after,
        "dice_annotated_slices_before": before_annotated,
        "dice_annotated_slices_after": dice_on(pred1, gt, np.array(annotated)),
    }
    print(json.dumps(result["finetune"], indent=1), flush=True)
    return _write(result, args.out)


def _write(result: dict, out: str) -> int:
    """Write (merging into an existing file, so the experiments can run separately)."""
    result["loadavg_end"] = os.getloadavg()
    path = Path(out)
    merged = json.loads(path.read_text()) if path.exists() else {}
    for key in ("scratch", "finetune"):
        if key in result:
            merged[key] = result[key]
            merged[key]["settings"] = result["settings"]
            merged[key]["loadavg_start_end"] = [result["loadavg_start"], result["loadavg_end"]]
    merged.update({k: v for k, v in result.items() if k not in ("scratch", "finetune", "settings")})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
