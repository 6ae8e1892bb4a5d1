"""`napari-vnet train`: train or fine-tune a network on (image, labels) pairs.

Runs unchanged under ``torchrun --nproc_per_node N -m napari_vnet.cli train ...``
(DistributedDataParallel; only rank 0 prints and writes checkpoints). The run itself is
:mod:`napari_vnet.workflows.finetune`'s, as for the Fine-tune dock; every default below
is :class:`~napari_vnet.training.config.TrainConfig`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from napari_vnet.commands import add_threads_argument
from napari_vnet.models.names import DISPLAY_NAMES
from napari_vnet.workflows.options import train_defaults

HELP = "train or fine-tune a model on (image, labels) pairs; runs under torchrun for DDP"

ARCHES = tuple(DISPLAY_NAMES)

#: switches that turn a TrainConfig setting off: (group, flag, TrainConfig field, help)
_OFF_SWITCHES = (
    ("optimisation", "--no-augment", "augment", "no flips/rotations/intensity changes"),
    ("recipe", "--no-intensity-stats", "intensity_from_data",
     "from scratch: z-score per volume instead of CT foreground statistics"),
    ("recipe", "--no-plan-spacing", "plan_spacing",
     "from scratch: the first image's spacing instead of the median spacing"),
    ("recipe", "--no-context-plan", "plan_context",
     "from scratch without --spacing/--patch-size: nnU-Net's rule (median spacing, patch "
     "from --patch-memory) instead of the context plan (spacing, patch and width chosen so "
     "that the patch sees the body's in-plane extent)"),
    ("recipe", "--no-spatial-aug", "augment_spatial", "no rotation/scaling augmentation"),
    ("recipe", "--no-intensity-aug", "augment_intensity",
     "no gamma/brightness/contrast/noise/blur/low-resolution augmentation"),
    ("recipe", "--no-mirror", "augment_mirror", "no mirroring augmentation"),
    ("recipe", "--no-phase-aug", "augment_phase",
     "no contrast-phase augmentation (each labelled structure's intensity shifted on its "
     "own, as organs enhance differently between phases and scanners)"),
    ("recipe", "--no-deep-supervision", "deep_supervision",
     "no auxiliary decoder losses (U-Net, V-Net)"),
    ("recipe", "--no-batch-dice", "batch_dice", "Dice per patch instead of over the batch"),
)  # fmt: skip

#: options stored under their TrainConfig field name and passed on as they are
_AS_GIVEN = (
    "ignore_index", "val_fraction", "batch_size", "lr", "schedule", "gan_lambda",
    "gan_ce_weight", "device", "seed", "resume", "augment_elastic", "postprocess",
    "classes", "minutes", "uncorrected_weight",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = train_defaults()
    groups = {
        "data": parser.add_argument_group("data"),
        "model": parser.add_argument_group("model (one of --arch / --weights)"),
        "optimisation": parser.add_argument_group("optimisation"),
        "recipe": parser.add_argument_group(
            "recipe (nnU-Net's defaults; each can be switched off)"
        ),
    }
    _data_arguments(groups["data"], d)
    _model_arguments(groups["model"])
    _optimisation_arguments(groups["optimisation"], d)
    _recipe_arguments(groups["recipe"], d)
    for group, flag, field, text in _OFF_SWITCHES:
        groups[group].add_argument(
            flag, dest=field, action="store_false", default=d[field], help=text
        )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="only read the data and print the training plan (classes, patch, window, "
        "spacing); nothing is trained or written",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON summary object last")


def _data_arguments(data, d: dict) -> None:
    data.add_argument(
        "--image", action="append", required=True, metavar="PATH",
        help="image file or DICOM folder; repeat for several cases (pairs with --labels in order)",
    )  # fmt: skip
    data.add_argument(
        "--labels", action="append", required=True, metavar="PATH",
        help="label map for the preceding --image (resampled onto the image grid if needed)",
    )  # fmt: skip
    data.add_argument(
        "--annotated-slices", action="append", metavar="Z,Z,...|RECORD.json",
        help="sparse annotation: only these z slices of the pair (one option per pair, in "
        "order; 'all' for a fully labelled pair) count; others contribute nothing. A .json "
        "file holding the docks' edit record (axis, slices, edits, reviewed) counts what "
        "was corrected per label and region, reviewed slices whole",
    )  # fmt: skip
    data.add_argument(
        "--uncorrected-weight", type=float, default=d["uncorrected_weight"], metavar="W",
        help="with an edit record: loss weight of the voxels of its slices left as "
        "predicted (corrected or reviewed ones weigh 1; 0: corrections only, 1: the "
        f"edited slices whole; default {d['uncorrected_weight']:g})",
    )  # fmt: skip
    data.add_argument(
        "--classes", metavar="V=NAME,...",
        help="label values to learn and their names, e.g. 5=liver,1=spleen (other values "
        "become background); default: every value found (fine-tuning: the base classes)",
    )  # fmt: skip
    data.add_argument(
        "--class-names", metavar="V=NAME,...",
        help="names for label values the base weights do not know (they become new "
        "classes), e.g. 3=kidney; the Fine-tune dock's 'Class names' field",
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
        "--val-fraction", type=float, default=d["val_fraction"], metavar="F",
        help="hold out this fraction for validation Dice (whole cases, or the last z slab "
        "of a single case); the best validation checkpoint is kept",
    )  # fmt: skip


def _model_arguments(model) -> None:
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


def _optimisation_arguments(run_, d: dict) -> None:
    run_.add_argument(
        "--iterations", type=int, metavar="N",
        help=f"iterations (default {d['iterations']} unless --minutes)",
    )  # fmt: skip
    run_.add_argument(
        "--minutes", type=float, metavar="M", help="time budget; stops at the first of N / M"
    )
    run_.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"))
    run_.add_argument(
        "--batch-size", type=int, default=d["batch_size"], metavar="N",
        help="per process (default %(default)s)",
    )  # fmt: skip
    run_.add_argument(
        "--lr", type=float, metavar="F",
        help="peak learning rate (default 1e-3 scratch, 3e-4 fine-tune)",
    )  # fmt: skip
    run_.add_argument("--schedule", choices=("poly", "cosine", "constant"), default=d["schedule"])
    run_.add_argument(
        "--gan-lambda", type=float, default=d["gan_lambda"], metavar="L",
        help="Vox2Vox: weight of the generalized Dice term against the adversarial loss "
        "(default %(default)s, as in the paper)",
    )  # fmt: skip
    run_.add_argument(
        "--gan-ce-weight", type=float, default=d["gan_ce_weight"], metavar="W",
        help="Vox2Vox: weight of a cross-entropy term beside the generalized Dice term "
        "(default %(default)s; 0 gives the paper's loss, which can lose whole classes)",
    )  # fmt: skip
    run_.add_argument("--device", default=d["device"], help="auto, cpu, cuda, cuda:1, mps")
    run_.add_argument("--amp", choices=("auto", "on", "off"), default="auto")
    add_threads_argument(run_)
    run_.add_argument("--seed", type=int, default=d["seed"])
    run_.add_argument(
        "--resume", action="store_true", help="continue an interrupted run writing --out"
    )
    run_.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing --out file (never the base --weights themselves)",
    )  # fmt: skip


def _recipe_arguments(recipe, d: dict) -> None:
    recipe.add_argument(
        "--patch-memory", dest="patch_memory_mb", type=float, default=d["patch_memory_mb"],
        metavar="MB",
        help="from scratch without --patch-size: plan the patch from the data's median shape "
        "to fit this activation memory per batch (default %(default)s; 0: the fixed default "
        "patch)",
    )  # fmt: skip
    recipe.add_argument(
        "--patch-voxels", dest="context_voxels", type=int, default=d["context_voxels"],
        metavar="N", help="context plan: voxels of the patch (default %(default)s)",
    )  # fmt: skip
    recipe.add_argument(
        "--fov", dest="context_fov_mm", type=float, default=d["context_fov_mm"], metavar="MM",
        help="context plan: in-plane field of view the patch should cover, up to the body's "
        "extent (default %(default)s mm)",
    )  # fmt: skip
    recipe.add_argument(
        "--elastic", dest="augment_elastic", action="store_true",
        help="add elastic deformation (slow on a CPU)",
    )  # fmt: skip
    recipe.add_argument(
        "--postprocess", choices=("auto", "none"), default=d["postprocess"],
        help="auto: keep each class's largest component when it raises the validation Dice "
        "(needs --val-fraction); recorded in the card and applied by predict",
    )  # fmt: skip


# ------------------------------------------------------------------------------ run


def _config(args: argparse.Namespace):
    """The TrainConfig the options ask for (``ValueError`` names a bad option)."""
    from napari_vnet.training.config import TrainConfig, width_kwargs
    from napari_vnet.workflows.options import parse_class_names, parse_normalization

    d = train_defaults()
    arch_kwargs = json.loads(args.arch_kwargs) if args.arch_kwargs else {}
    if args.width:
        if not args.arch:
            raise ValueError("--width only applies with --arch (the base fixes the width)")
        arch_kwargs = {**width_kwargs(args.arch, args.width), **arch_kwargs}
    iterations = args.iterations
    if iterations is None and not args.minutes:
        iterations = d["iterations"]
    switches = {field: getattr(args, field) for _, _, field, _ in _OFF_SWITCHES}
    return TrainConfig(
        arch=args.arch,
        arch_kwargs=arch_kwargs,
        class_names=parse_class_names(args.class_names, "--class-names") or None,
        iterations=iterations,
        patch_size=tuple(args.patch_size) if args.patch_size else None,
        spacing=tuple(args.spacing) if args.spacing else None,
        normalization=parse_normalization(args.normalization),
        patch_memory_mb=args.patch_memory_mb or None,
        context_voxels=args.context_voxels or d["context_voxels"],
        context_fov_mm=args.context_fov_mm or d["context_fov_mm"],
        amp={"auto": "auto", "on": True, "off": False}[args.amp],
        **{field: getattr(args, field) for field in _AS_GIVEN},
        **switches,
    )


def _pairs(args: argparse.Namespace):
    """The training pairs (``ValueError`` says which options do not pair up)."""
    from napari_vnet.workflows.finetune import pairs_from_files
    from napari_vnet.workflows.options import parse_slices

    if len(args.image) != len(args.labels):
        raise ValueError(
            f"{len(args.image)} --image but {len(args.labels)} --labels; give them in pairs"
        )
    slices = args.annotated_slices or []
    if slices and len(slices) != len(args.image):
        raise ValueError(
            "give one --annotated-slices per pair (use 'all' for fully labelled pairs)"
        )
    return pairs_from_files(args.image, args.labels, [parse_slices(s) for s in slices])


def _out_problem(args: argparse.Namespace) -> str | None:
    """Why ``--out`` must not be written: it is the base weights, or it exists and
    neither ``--overwrite`` nor ``--resume`` was given."""
    from pathlib import Path

    from napari_vnet.workflows.finetune import is_base_weights

    out = Path(args.out)
    if getattr(args, "dry_run", False):
        return None  # nothing is written
    if args.weights and is_base_weights(out, args.weights):
        return f"--out {out} is the base --weights file; choose another file name"
    if out.exists() and not (args.overwrite or args.resume):
        return f"--out {out} exists; pass --overwrite to replace it (or choose another name)"
    return None


def _print_plan(pairs, config, args, say) -> int:
    """``--dry-run``: the training plan, as the Fine-tune dock would get it."""
    from napari_vnet.training.plan import plan_training
    from napari_vnet.workflows.finetune import INPUT_ERRORS

    try:
        plan = plan_training(pairs, config, base=args.weights)
    except INPUT_ERRORS as exc:
        say(f"error: {exc}")
        return 1
    data = plan.to_dict()
    if args.json:
        print(json.dumps(data))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")
    return 0


def _event_printer(say):
    """Prints the first iteration, every tenth, the last and each validation point."""

    def show(event) -> None:
        it, total, val = event.iteration, event.total, event.val_dice
        if it == 1 or it % 10 == 0 or it == total or val is not None:
            parts = " ".join(f"{k} {v:.4f}" for k, v in event.losses.items())
            shown = f" val_dice {val:.4f}" if val is not None else ""
            say(
                f"[{it}/{total}] loss {event.loss:.4f} ({parts}){shown} "
                f"lr {event.lr:.2e} {event.seconds:.1f}s"
            )

    return show


def _print_summary(summary, as_json: bool) -> None:
    result = {
        "iterations": summary.iterations,
        "final_loss": summary.final_loss,
        "val_dice": summary.val_dice,
        "seconds": round(summary.seconds, 2),
        "out": summary.out,
        "best_iteration": summary.best_iteration,
        "world_size": summary.world_size,
        "device": summary.device,
        "classes": {c["value"]: c["name"] for c in summary.classes},
        "spacing": summary.spacing,
        "patch_size": summary.patch_size,
        "selection": summary.selection,
        "voxels": summary.voxels,
    }
    if as_json:
        print(json.dumps(result))
        return
    kept = (result["selection"] or {}).get("message")
    print(
        f"trained {result['iterations']} iterations in {result['seconds']:.1f}s "
        f"(loss {result['final_loss']:.4f}); wrote {result['out']}" + (f"; {kept}" if kept else "")
    )
    if summary.voxels:
        print(summary.voxels["message"])


def run(args: argparse.Namespace) -> int:
    from napari_vnet.workflows.finetune import INPUT_ERRORS, train

    rank = int(os.environ.get("RANK", "0"))

    def say(msg: str) -> None:
        if rank == 0:
            print(msg, file=sys.stderr, flush=True)

    try:
        pairs = _pairs(args)
        problem = _out_problem(args)
        if problem:
            raise ValueError(problem)
        config = _config(args)
    except ValueError as exc:
        say(f"error: {exc}")
        return 2
    if args.dry_run:
        return _print_plan(pairs, config, args, say)
    try:
        summary = train(
            pairs, config, base=args.weights, out=args.out,
            on_event=_event_printer(say) if rank == 0 else None, threads=args.threads,
        )  # fmt: skip
    except KeyboardInterrupt:  # the engine wrote the best checkpoint and the resume file
        say(f"interrupted; continue with --resume (state in {args.out})")
        return 130
    except INPUT_ERRORS as exc:
        say(f"error: {exc}")
        return 1
    if rank == 0:
        _print_summary(summary, args.json)
    return 0
