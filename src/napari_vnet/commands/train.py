"""`napari-vnet train`: train or fine-tune a network on (image, labels) pairs.

Runs unchanged under ``torchrun --nproc_per_node N -m napari_vnet.cli train ...``
(DistributedDataParallel; only rank 0 prints and writes checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HELP = "train or fine-tune a model on (image, labels) pairs; runs under torchrun for DDP"

ARCHES = ("vnet", "unet3d", "vox2vox")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--image", action="append", required=True, metavar="PATH",
        help="image file or DICOM folder; repeat for several cases (pairs with --labels in order)",
    )  # fmt: skip
    data.add_argument(
        "--labels", action="append", required=True, metavar="PATH",
        help="label map for the preceding --image (resampled onto the image grid if needed)",
    )  # fmt: skip
    data.add_argument(
        "--annotated-slices", action="append", metavar="Z,Z,...",
        help="sparse annotation: only these z slices of the pair (one option per pair, in "
        "order; 'all' for a fully labelled pair) count; others contribute nothing",
    )  # fmt: skip
    data.add_argument(
        "--classes", metavar="V=NAME,...",
        help="label values to learn and their names, e.g. 5=liver,1=spleen (other values "
        "become background); default: every value found (fine-tuning: the base classes)",
    )  # fmt: skip
    data.add_argument(
        "--ignore-index", type=int, metavar="K",
        help="label value meaning 'not annotated' (contributes nothing to the loss)",
    )  # fmt: skip
    data.add_argument(
        "--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
        help="training voxel spacing in mm (default: the base model's, else the images' "
        "median spacing)",
    )  # fmt: skip
    data.add_argument(
        "--normalization", metavar="KIND[:LOW:HIGH]",
        help="intensity normalisation: zscore, window:-200:300 (CT HU), percentile:0.5:99.5, "
        "none, or a JSON object (default: the base model's, else planned from the data: CT "
        "gets the training foreground's 0.5/99.5 percentiles, mean and std, other data zscore)",
    )  # fmt: skip
    data.add_argument(
        "--val-fraction", type=float, default=0.0, metavar="F",
        help="hold out this fraction for validation Dice (whole cases, or the last z slab "
        "of a single case); the best validation checkpoint is kept",
    )  # fmt: skip

    model = parser.add_argument_group("model (one of --arch / --weights)")
    src = model.add_mutually_exclusive_group(required=True)
    src.add_argument("--arch", choices=ARCHES, help="train this architecture from scratch")
    src.add_argument(
        "--weights", metavar="BASE",
        help="fine-tune these weights (a .pt file or a shipped name, e.g. unet3d-phantom)",
    )  # fmt: skip
    model.add_argument("--width", type=int, metavar="W", help="base width (channels W,2W,4W,...)")
    model.add_argument("--arch-kwargs", metavar="JSON", help="e.g. '{\"channels\": [8,16,32,64]}'")
    model.add_argument(
        "--out", required=True, metavar="NEW.pt", help="best checkpoint written here"
    )

    run_ = parser.add_argument_group("optimisation")
    run_.add_argument(
        "--iterations", type=int, metavar="N", help="iterations (default 200 unless --minutes)"
    )
    run_.add_argument(
        "--minutes", type=float, metavar="M", help="time budget; stops at the first of N / M"
    )
    run_.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"))
    run_.add_argument(
        "--batch-size", type=int, default=2, metavar="N", help="per process (default 2)"
    )
    run_.add_argument(
        "--lr",
        type=float,
        metavar="F",
        help="peak learning rate (default 1e-3 scratch, 3e-4 fine-tune)",
    )
    run_.add_argument("--schedule", choices=("poly", "cosine", "constant"), default="poly")
    run_.add_argument(
        "--gan-lambda", type=float, metavar="L",
        help="Vox2Vox: weight of the generalized Dice term against the adversarial loss "
        "(default 5, as in the paper)",
    )  # fmt: skip
    run_.add_argument(
        "--gan-ce-weight", type=float, metavar="W",
        help="Vox2Vox: weight of a cross-entropy term beside the generalized Dice term "
        "(default 1; 0 gives the paper's loss, which can lose whole classes)",
    )  # fmt: skip
    run_.add_argument(
        "--no-augment", action="store_true", help="no flips/rotations/intensity changes"
    )
    run_.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    run_.add_argument("--amp", choices=("auto", "on", "off"), default="auto")
    run_.add_argument("--seed", type=int, default=0)
    run_.add_argument(
        "--resume", action="store_true", help="continue an interrupted run writing --out"
    )
    run_.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing --out file (never the base --weights themselves)",
    )  # fmt: skip
    recipe = parser.add_argument_group("recipe (nnU-Net's defaults; each can be switched off)")
    recipe.add_argument(
        "--no-intensity-stats", action="store_true",
        help="from scratch: z-score per volume instead of CT foreground statistics",
    )  # fmt: skip
    recipe.add_argument(
        "--no-plan-spacing", action="store_true",
        help="from scratch: the first image's spacing instead of the median spacing",
    )  # fmt: skip
    recipe.add_argument(
        "--patch-memory", type=float, default=128.0, metavar="MB",
        help="from scratch without --patch-size: plan the patch from the data's median shape "
        "to fit this activation memory per batch (default 128; 0: the fixed default patch)",
    )  # fmt: skip
    recipe.add_argument(
        "--no-context-plan", action="store_true",
        help="from scratch without --spacing/--patch-size: nnU-Net's rule (median spacing, "
        "patch from --patch-memory) instead of the context plan (spacing, patch and width "
        "chosen so that the patch sees the body's in-plane extent)",
    )  # fmt: skip
    recipe.add_argument(
        "--patch-voxels", type=int, default=None, metavar="N",
        help="context plan: voxels of the patch (default: TrainConfig.context_voxels, 80,000)",
    )  # fmt: skip
    recipe.add_argument(
        "--fov", type=float, default=None, metavar="MM",
        help="context plan: in-plane field of view the patch should cover, up to the body's "
        "extent (default: TrainConfig.context_fov_mm, 380 mm)",
    )  # fmt: skip
    recipe.add_argument(
        "--no-spatial-aug", action="store_true", help="no rotation/scaling augmentation"
    )
    recipe.add_argument(
        "--elastic", action="store_true", help="add elastic deformation (slow on a CPU)"
    )
    recipe.add_argument(
        "--no-intensity-aug", action="store_true",
        help="no gamma/brightness/contrast/noise/blur/low-resolution augmentation",
    )  # fmt: skip
    recipe.add_argument("--no-mirror", action="store_true", help="no mirroring augmentation")
    recipe.add_argument(
        "--no-phase-aug", action="store_true",
        help="no contrast-phase augmentation (each labelled structure's intensity shifted "
        "on its own, as organs enhance differently between phases and scanners)",
    )  # fmt: skip
    recipe.add_argument(
        "--no-deep-supervision", action="store_true",
        help="no auxiliary decoder losses (U-Net, V-Net)",
    )  # fmt: skip
    recipe.add_argument(
        "--no-batch-dice", action="store_true", help="Dice per patch instead of over the batch"
    )
    recipe.add_argument(
        "--postprocess", choices=("auto", "none"), default="auto",
        help="auto: keep each class's largest component when it raises the validation Dice "
        "(needs --val-fraction); recorded in the card and applied by predict",
    )  # fmt: skip
    data.add_argument(
        "--class-names", metavar="V=NAME,...",
        help="names for label values the base weights do not know (they become new "
        "classes), e.g. 3=kidney; the Fine-tune dock's 'Class names' field",
    )  # fmt: skip
    parser.add_argument(
        "--dry-run", action="store_true",
        help="only read the data and print the training plan (classes, patch, window, "
        "spacing); nothing is trained or written",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON summary object last")


def _normalization(text: str | None):
    if text is None:
        return None
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    kind, *vals = text.split(":")
    norm: dict = {"kind": kind}
    if vals:
        if len(vals) != 2:
            raise ValueError(f"--normalization {text!r}: expected KIND:LOW:HIGH")
        norm["low"], norm["high"] = float(vals[0]), float(vals[1])
    return norm


def _slices(text: str | None):
    if text is None or text.strip().lower() in ("", "all"):
        return None
    return [int(v) for v in text.replace(" ", "").split(",") if v]


def _class_names(text: str | None) -> dict[int, str] | None:
    if not text:
        return None
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        value, sep, name = part.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise ValueError(f"--class-names entry {part!r} is not of the form VALUE=NAME")
        out[int(value)] = name.strip()
    return out


def _print_plan(pairs, config, args, say) -> int:
    """``--dry-run``: the training plan, as the Fine-tune dock would get it."""
    from napari_vnet.io import VolumeReadError
    from napari_vnet.models import CheckpointError
    from napari_vnet.training import TrainingError, plan_training

    try:
        plan = plan_training(pairs, config, base=args.weights)
    except (TrainingError, FileNotFoundError, VolumeReadError, CheckpointError) as exc:
        say(f"error: {exc}")
        return 1
    data = plan.to_dict()
    if args.json:
        print(json.dumps(data))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")
    return 0


def _out_problem(args: argparse.Namespace) -> str | None:
    """Why ``--out`` must not be written: it is the base weights, or it exists and
    neither ``--overwrite`` nor ``--resume`` was given."""
    out = Path(args.out)
    if getattr(args, "dry_run", False):
        return None  # nothing is written
    if args.weights:
        try:
            from napari_vnet.weights import resolve_weights

            base = resolve_weights(args.weights)
        except Exception:  # noqa: BLE001 - the engine words a bad --weights later
            base = Path(args.weights)
        same = out.exists() and base.exists() and os.path.samefile(out, base)
        if same or out.resolve() == base.resolve():
            return f"--out {out} is the base --weights file; choose another file name"
    if out.exists() and not (args.overwrite or args.resume):
        return f"--out {out} exists; pass --overwrite to replace it (or choose another name)"
    return None


def run(args: argparse.Namespace) -> int:
    from napari_vnet.training import (
        TrainConfig,
        TrainingError,
        TrainingPair,
        finetune,
        width_kwargs,
    )

    rank = int(os.environ.get("RANK", "0"))

    def say(msg: str) -> None:
        if rank == 0:
            print(msg, file=sys.stderr, flush=True)

    if len(args.image) != len(args.labels):
        say(f"error: {len(args.image)} --image but {len(args.labels)} --labels; give them in pairs")
        return 2
    slices = args.annotated_slices or []
    if slices and len(slices) != len(args.image):
        say("error: give one --annotated-slices per pair (use 'all' for fully labelled pairs)")
        return 2
    problem = _out_problem(args)
    if problem:
        say(f"error: {problem}")
        return 2
    try:
        arch_kwargs = json.loads(args.arch_kwargs) if args.arch_kwargs else {}
        if args.width:
            if not args.arch:
                raise ValueError("--width only applies with --arch (the base fixes the width)")
            arch_kwargs = {**width_kwargs(args.arch, args.width), **arch_kwargs}
        normalization = _normalization(args.normalization)
        pairs = [
            TrainingPair(img, lab, annotated=_slices(slices[i]) if slices else None, name=str(img))
            for i, (img, lab) in enumerate(zip(args.image, args.labels, strict=True))
        ]
    except ValueError as exc:
        say(f"error: {exc}")
        return 2
    try:
        class_names = _class_names(args.class_names)
    except ValueError as exc:
        say(f"error: {exc}")
        return 2
    iterations = args.iterations if args.iterations is not None else (None if args.minutes else 200)
    config = TrainConfig(
        arch=args.arch,
        arch_kwargs=arch_kwargs,
        classes=args.classes,
        class_names=class_names,
        iterations=iterations,
        minutes=args.minutes,
        patch_size=tuple(args.patch_size) if args.patch_size else None,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        spacing=tuple(args.spacing) if args.spacing else None,
        normalization=normalization,
        ignore_index=args.ignore_index,
        augment=not args.no_augment,
        intensity_from_data=not args.no_intensity_stats,
        plan_spacing=not args.no_plan_spacing,
        patch_memory_mb=args.patch_memory or None,
        plan_context=not args.no_context_plan,
        context_voxels=args.patch_voxels or TrainConfig.context_voxels,
        context_fov_mm=args.fov or TrainConfig.context_fov_mm,
        augment_spatial=not args.no_spatial_aug,
        augment_elastic=args.elastic,
        augment_intensity=not args.no_intensity_aug,
        augment_mirror=not args.no_mirror,
        augment_phase=not args.no_phase_aug,
        deep_supervision=not args.no_deep_supervision,
        batch_dice=not args.no_batch_dice,
        postprocess=args.postprocess,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=args.device,
        **({"gan_lambda": args.gan_lambda} if args.gan_lambda is not None else {}),
        **({"gan_ce_weight": args.gan_ce_weight} if args.gan_ce_weight is not None else {}),
        amp={"auto": "auto", "on": True, "off": False}[args.amp],
        resume=args.resume,
    )
    if args.dry_run:
        return _print_plan(pairs, config, args, say)
    gen = finetune(pairs, config, base=args.weights, out=args.out)
    summary = None
    try:
        while True:
            event = next(gen)
            it, total = event["iteration"], event["total"]
            if rank == 0 and (it == 1 or it % 10 == 0 or it == total or "val_dice" in event):
                parts = " ".join(f"{k} {v:.4f}" for k, v in event["losses"].items())
                val = f" val_dice {event['val_dice']:.4f}" if "val_dice" in event else ""
                say(
                    f"[{it}/{total}] loss {event['loss']:.4f} ({parts}){val} "
                    f"lr {event['lr']:.2e} {event['seconds']:.1f}s"
                )
    except StopIteration as stop:
        summary = stop.value
    except KeyboardInterrupt:  # the engine wrote the best checkpoint and the resume file
        gen.close()
        say(f"interrupted; continue with --resume (state in {args.out})")
        return 130
    except (TrainingError, FileNotFoundError) as exc:
        say(f"error: {exc}")
        return 1
    except Exception as exc:
        from napari_vnet.io import VolumeReadError
        from napari_vnet.models import CheckpointError

        if isinstance(exc, (VolumeReadError, CheckpointError)):
            say(f"error: {exc}")
            return 1
        raise
    if rank == 0:
        result = {
            "iterations": summary["iterations"],
            "final_loss": summary["final_loss"],
            "val_dice": summary["val_dice"],
            "seconds": round(summary["seconds"], 2),
            "out": summary["out"],
            "best_iteration": summary["best_iteration"],
            "world_size": summary["world_size"],
            "device": summary["device"],
            "classes": {c["value"]: c["name"] for c in summary["classes"]},
            "spacing": summary["spacing"],
            "patch_size": summary["patch_size"],
            "selection": summary.get("selection"),
        }
        if args.json:
            print(json.dumps(result))
        else:
            kept = (result["selection"] or {}).get("message")
            print(
                f"trained {result['iterations']} iterations in {result['seconds']:.1f}s "
                f"(loss {result['final_loss']:.4f}); wrote {result['out']}"
                + (f"; {kept}" if kept else "")
            )
    return 0
