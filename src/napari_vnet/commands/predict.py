"""`napari-vnet predict`: segment a volume, or a folder of scans, headless.

    napari-vnet predict CT.nii.gz --weights vnet-phantom --out mask.nii.gz --json
    napari-vnet predict dicom_folder/ --weights my.pt --out mask.nrrd --tta --postprocess
    napari-vnet predict scans/ --weights vnet-phantom --out masks/ --statistics
    torchrun --nproc_per_node 2 -m napari_vnet.cli predict scans/ -w my.pt --out masks/

Single case (OUT names a file): the mask is written with the input's geometry. With
``--json`` the last line of stdout is one JSON object: ``seconds`` (inference, incl.
pre/post-processing, excluding file reading/writing), ``total_seconds``, ``voxels``,
``device``, ``output``, ``amp``, ``windows``, ``threads`` (torch's intra-op threads),
``labels`` (value -> voxel count).

Foreign weights run by default as their own tool runs them (an nnU-Net folder mirrored,
float32 on a CPU: :mod:`napari_vnet.workflows.producer`); ``--disable-tta``, ``--fast`` and
``--no-amp`` change that. ``--folds``/``--checkpoint`` choose inside an nnU-Net folder.
``--roi-subset``, ``--remove-small`` (also for a folder), ``--split-masks``,
``--statistics`` and ``--preview`` are TotalSegmentator's conveniences
(:mod:`napari_vnet.workflows.outputs`).

Folder (INPUT is a folder and OUT is a folder, i.e. has no volume file extension):
every volume file and DICOM series under INPUT (recursively; ``--pattern``) is
segmented, outputs named after the inputs (:mod:`napari_vnet.workflows.batch` states the rule),
existing outputs skipped unless ``--overwrite`` - only when made by the same weights
(``<name>_provenance.json`` beside each mask names them; outputs made by other weights,
or not by napari-vnet, make the run refuse without ``--overwrite``) - failed cases
reported and skipped. OUT may be INPUT itself: outputs are then named ``<name>_seg``
and are never taken for inputs (:mod:`napari_vnet.workflows.batch_records`).
``summary.json`` (and ``statistics.csv`` with ``--statistics``) are written into OUT;
with ``--num-parts N --part-id K`` their names end in ``.part-K-of-N``. Under
``torchrun`` each rank takes its share of the cases and rank 0 writes the summary.
The exit status is 1 when a case failed (the others are written).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from napari_vnet.commands import add_threads_argument
from napari_vnet.workflows.batch import FORMATS

log = logging.getLogger(__name__)

HELP = (
    "segment a volume (file or DICOM folder) or a whole folder of scans, writing masks "
    "with each input's geometry"
)
INPUT_HELP = "image file, DICOM folder, or a folder of scans"
#: napari_vnet.inference.backends.BACKENDS, without importing torch to build the parser
BACKEND_CHOICES = ("torch", "onnxruntime", "openvino")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _run_arguments(parser)
    _nnunet_arguments(parser)
    _output_arguments(parser)
    _folder_arguments(parser)


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", help=INPUT_HELP)
    parser.add_argument(
        "--weights",
        "-w",
        required=True,
        help="checkpoint path or the name of shipped weights (e.g. vnet-phantom)",
    )
    parser.add_argument(
        "--out",
        "-o",
        required=True,
        help="output label file (.nii.gz, .nii, .nrrd, .mha, .mhd), or an output folder "
        "when INPUT is a folder of scans",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (cuda > mps > cpu), cpu, cuda, cuda:N (gpu, gpu:N alike), mps",
    )
    add_threads_argument(parser)
    parser.add_argument(
        "--backend",
        default="torch",
        choices=BACKEND_CHOICES,
        help="what runs the network: torch (default), or onnxruntime / openvino (the network "
        "converted once, float32 on the CPU; napari-vnet[onnx] / napari-vnet[openvino])",
    )
    parser.add_argument(
        "--overlap", type=float, default=0.5, help="window overlap in [0, 1) (default 0.5)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="windows per forward pass (default: auto)"
    )
    mirror = parser.add_mutually_exclusive_group()
    mirror.add_argument(
        "--tta",
        action="store_const",
        const=True,
        default=None,
        help="average the axis-flipped passes (8; an nnU-Net model: its mirroring axes). "
        "Default: on for an nnU-Net folder (as nnUNetv2_predict), off otherwise",
    )
    mirror.add_argument(
        "--disable-tta",
        "--disable_tta",
        dest="tta",
        action="store_const",
        const=False,
        help="no flipped passes, also for an nnU-Net folder (nnUNetv2_predict's --disable_tta)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="napari-vnet's fast defaults for foreign weights too: no mirroring, mixed "
        "precision where fast (default for an nnU-Net folder or MONAI bundle: their own, "
        "e.g. nnU-Net mirrors and runs float32 on a CPU)",
    )
    parser.add_argument(
        "--no-amp",
        action="store_true",
        help="plain fp32 (default: mixed precision where fast; foreign weights: as their "
        "own tool runs them)",
    )
    parser.add_argument(
        "--postprocess",
        nargs="?",
        const="all",
        default=None,
        metavar="OPS",
        help="clean the mask: 'all' (default when given) or comma list of "
        "largest_component, fill_holes",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT file (folder: redo cases whose outputs exist)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary as last line")


def _nnunet_arguments(parser: argparse.ArgumentParser) -> None:
    nnunet = parser.add_argument_group("nnU-Net folder (--weights names one)")
    nnunet.add_argument(
        "--folds", "-f", nargs="+", default=None, metavar="FOLD",
        help="folds to ensemble, e.g. 0 1 2 or all (default: every fold_* present)",
    )  # fmt: skip
    nnunet.add_argument(
        "--checkpoint", "-chk", choices=("final", "best"), default=None,
        help="checkpoint_final.pth or checkpoint_best.pth of each fold (default: final, "
        "else best)",
    )  # fmt: skip


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    extra = parser.add_argument_group("outputs (TotalSegmentator style)")
    extra.add_argument(
        "--roi-subset", "--roi_subset", nargs="+", default=None, metavar="NAME",
        help="predict all classes, keep only these (class names of the model card)",
    )  # fmt: skip
    extra.add_argument(
        "--remove-small", "--remove_small", type=float, default=None, metavar="MM3",
        help="drop each class's connected components smaller than MM3 cubic millimetres",
    )  # fmt: skip
    extra.add_argument(
        "--split-masks", action="store_true",
        help="also one 0/1 mask per class, named after it, in <OUT stem>_masks/",
    )  # fmt: skip
    extra.add_argument(
        "--preview", nargs="?", const=True, default=None, metavar="PNG",
        help="also a PNG of three orthogonal slices through the mask with it overlaid "
        "(default file: <OUT stem>_preview.png)",
    )  # fmt: skip


def _folder_arguments(parser: argparse.ArgumentParser) -> None:
    batch = parser.add_argument_group("folder of scans (INPUT and OUT are folders)")
    batch.add_argument(
        "--pattern",
        default=None,
        help="only inputs whose relative path or file name matches (shell wildcards, "
        "e.g. '*.nii.gz', 'patient*/*')",
    )
    batch.add_argument(
        "--format",
        dest="fmt",
        default="same",
        choices=FORMATS,
        help="output format: 'same' (the input's format when writable, else .nii.gz; "
        "default), an extension, 'dicom-seg' or 'dicom-rtstruct' (DICOM inputs; needs "
        "highdicom)",
    )
    batch.add_argument(
        "--workers",
        type=int,
        default=2,
        help="cases read and preprocessed ahead in parallel while one is segmented, writing in the "
        "background (default 2; 0: one step after the other in one thread)",
    )
    batch.add_argument(
        "--statistics",
        action="store_true",
        help="per case and class: voxels, volume (ml), mean/std intensity "
        "(<case>_statistics.json, and OUT/statistics.csv for a folder; a single file too)",
    )
    batch.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write <case>_probabilities.npz (float16, one channel per class)",
    )
    batch.add_argument(
        "--num-parts", type=int, default=1, help="split the cases into N parts (default 1)"
    )
    batch.add_argument(
        "--part-id", type=int, default=0, help="which part this process runs (0..N-1)"
    )


def _say(message: str) -> None:
    for line in message.splitlines():
        print(f"napari-vnet predict: {line}", file=sys.stderr)


def _fail(message: str) -> int:
    _say(message)
    return 1


_BATCH_ONLY = {
    "pattern": None,
    "fmt": "same",
    "save_probabilities": False,
    "num_parts": 1,
    "part_id": 0,
}


def _is_batch(args: argparse.Namespace) -> bool:
    """A folder of scans: INPUT is a folder and OUT is a folder (no volume extension)."""
    from napari_vnet.io.writing import write_extension

    out = Path(args.out)
    return Path(args.input).is_dir() and (out.is_dir() or write_extension(out) is None)


_SINGLE_ONLY = {"split_masks": False, "preview": None}


def run(args: argparse.Namespace) -> int:
    if _is_batch(args):
        given = [k for k, default in _SINGLE_ONLY.items() if getattr(args, k) != default]
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            return _fail(f"{flags}: only for a single file (OUT a label file)")
        return run_folder(args)
    given = [k for k, default in _BATCH_ONLY.items() if getattr(args, k, default) != default]
    if given:
        flags = ", ".join("--" + ("format" if k == "fmt" else k.replace("_", "-")) for k in given)
        return _fail(f"{flags}: only for a folder of scans (INPUT and --out folders)")
    return run_single(args)


def _window_log():
    """A ``progress(done, total)`` that logs the windows done at most every 2 s."""
    last = {"t": 0.0}

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last["t"] > 2.0:
            last["t"] = now
            log.info("windows %d/%d", done, total)

    return progress


_CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}


def _model_and_settings(args: argparse.Namespace):
    """The weights loaded and the ``predict`` settings of the options (the producer's
    defaults for foreign weights, said on stderr); raises SegmentRefused saying what is
    wrong with them."""
    from napari_vnet.inference.backends import backend_device, check_backend
    from napari_vnet.inference.postprocess import parse_operations
    from napari_vnet.runtime import resolve_device
    from napari_vnet.workflows.outputs import class_values
    from napari_vnet.workflows.producer import producer_defaults, run_defaults
    from napari_vnet.workflows.segment import Segmenter, SegmentRefused, WeightsUnusable

    try:
        if args.remove_small is not None and not args.remove_small > 0:
            raise ValueError(f"--remove-small must be > 0 mm3, got {args.remove_small:g}")
        post = parse_operations(args.postprocess) if args.postprocess else None
        check_backend(args.backend, resolve_device(backend_device(args.backend, args.device)))
        chk = _CHECKPOINTS.get(args.checkpoint) if args.checkpoint else None
        seg = Segmenter.load(args.weights, folds=args.folds, checkpoint=chk)
        keep = class_values(seg.card, args.roi_subset) if args.roi_subset else None
    except (ValueError, WeightsUnusable) as exc:
        raise SegmentRefused(str(exc)) from exc
    amp = False if args.no_amp else None
    settings = {
        "device": args.device,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        **run_defaults(seg.card, args.device, tta=args.tta, amp=amp, fast=args.fast),
        "postprocess": post,
        "threads": args.threads,
        "backend": args.backend,
        "keep_classes": keep,
        "remove_small_mm3": args.remove_small,
    }
    own = producer_defaults(seg.card, args.device)
    if own is not None and not args.fast and (args.tta is None or args.no_amp is False):
        _say(f"note: {own.describe()} (--disable-tta, --fast or --no-amp to change)")
    pp = (seg.card.source or {}).get("postprocessing")
    if pp:
        _say(f"nnU-Net postprocessing.pkl {pp}")
    return seg, settings


def run_single(args: argparse.Namespace) -> int:
    from napari_vnet.workflows.segment import SegmentRefused, segment_file

    t_start = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        return _fail(f"{out}: exists (use --overwrite to replace it)")
    try:
        seg, settings = _model_and_settings(args)
        summary = segment_file(seg, args.input, out, settings=settings, progress=_window_log(),
                               note=_say, started=t_start, extras=_extras(args, out, settings))  # fmt: skip
    except SegmentRefused as exc:
        return _fail(str(exc))
    names = seg.card.class_names
    print(
        f"{summary['output']}: {tuple(summary['shape'])} in {summary['seconds']:.1f} s on "
        f"{summary['device']} ({summary['windows']} windows, amp {summary['amp'] or 'off'})"
    )
    for v, c in summary["labels"].items():
        print(f"  {int(v):>5} {names.get(int(v), '?'):<20} {int(c):>12} voxels")
    for key in ("statistics", "preview"):
        if key in summary:
            print(f"{key}: {summary[key]}")
    if "split_masks" in summary:
        masks = summary["split_masks"]
        print(f"{len(masks)} class mask(s)" + (f" in {Path(masks[0]).parent}" if masks else ""))
    if args.json:
        print(json.dumps(summary))
    return 0


def _extras(args: argparse.Namespace, out: Path, settings: dict) -> dict:
    """What :func:`napari_vnet.workflows.outputs.write_extras` writes beside OUT."""
    from napari_vnet.workflows.outputs import beside

    preview = beside(out, "_preview.png") if args.preview is True else args.preview
    return {
        "split_masks": args.split_masks,
        "keep_classes": settings.get("keep_classes"),
        "statistics": args.statistics,
        "preview": preview,
    }


# ------------------------------------------------------------------ folder of scans


def _folder_refusal(args: argparse.Namespace, out_dir: Path) -> str | None:
    """What is wrong with the folder options, before anything is loaded."""
    from napari_vnet.io.dicom_seg import DicomSegUnavailableError, require_highdicom

    if args.workers < 0:
        return f"--workers must be >= 0, got {args.workers}"
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        return f"--part-id must be in [0, {args.num_parts - 1}] for --num-parts {args.num_parts}"
    if out_dir.exists() and not out_dir.is_dir():
        return f"{out_dir}: exists and is not a folder"
    if args.fmt in ("dicom-seg", "dicom-rtstruct"):
        try:
            require_highdicom()
        except DicomSegUnavailableError as exc:
            return str(exc)
    return None


def _conflict_message(found: list, out_dir: Path, weights: str) -> str:
    stem, why = found[0]
    more = f" (and {len(found) - 1} more case(s))" if len(found) > 1 else ""
    return (
        f"{out_dir}: outputs of {len(found)} case(s) exist and were not made by "
        f"{weights}: {why}{more}; use --overwrite to replace them, or another --out"
    )


def run_folder(args: argparse.Namespace) -> int:
    """Segment every scan under INPUT into OUT (see the module docstring)."""
    from napari_vnet.workflows.batch_folder import FolderRun, distributed_context, shard
    from napari_vnet.workflows.segment import SegmentRefused

    t_start = time.perf_counter()
    in_dir = Path(args.input).expanduser().resolve()
    out_dir = Path(args.out).expanduser().resolve()
    problem = _folder_refusal(args, out_dir)
    if problem:
        return _fail(problem)
    try:
        seg, settings = _model_and_settings(args)
    except SegmentRefused as exc:
        return _fail(str(exc))
    job = FolderRun(
        in_dir, out_dir, seg, {**settings, "progress": _window_log()}, fmt=args.fmt,
        pattern=args.pattern, overwrite=args.overwrite, statistics=args.statistics,
        save_probabilities=args.save_probabilities, workers=args.workers,
        num_parts=args.num_parts, part_id=args.part_id,
    )  # fmt: skip
    ctx = distributed_context(args.device)
    try:
        cases = job.cases()
        part = job.part(cases)
        mine = shard(part, ctx.world_size, ctx.rank)
        who = f"[rank {ctx.rank}/{ctx.world_size}] " if ctx.active else ""
        where = f" (part {args.part_id + 1} of {args.num_parts}: {len(part)})"
        where = where if args.num_parts > 1 else ""
        print(f"{who}{len(cases)} case(s) under {in_dir}{where}; this process: {len(mine)}")
        found = [] if args.overwrite else job.conflicts(part)
        if found:
            return _fail(_conflict_message(found, out_dir, args.weights))
        out_dir.mkdir(parents=True, exist_ok=True)
        results = _segment_cases(job, mine, ctx, who)
        done = job.finish(results, ctx, started=t_start)
        if done is None:  # not rank 0: rank 0 reports
            return 1 if any(r.status == "failed" for r in results) else 0
        return _report_folder(args, *done, seconds=time.perf_counter() - t_start)
    finally:
        ctx.close()


def _segment_cases(job, mine, ctx, who: str) -> list:
    """Run this process's cases, printing a line (with the time left) after each."""
    from napari_vnet.workflows.batch_folder import Eta
    from napari_vnet.workflows.options import format_seconds

    eta = Eta()

    def on_start(case, i: int, n: int) -> None:
        eta.started(n)
        log.info("case %d/%d: %s", i, n, case.path)

    results = []
    for k, res in enumerate(job.results(mine, ctx, on_start), start=1):
        results.append(res)
        times = eta.finished(res)
        left = (
            f" | elapsed {format_seconds(times[0])}, ~{format_seconds(times[1])} left" if times else ""
        )
        if res.status == "written":
            what = f"-> {res.outputs[-1]} ({res.total_seconds:.1f} s)"
        elif res.status == "skipped":
            what = "outputs exist (--overwrite to redo)"
        else:
            what = res.error
        line = f"{who}[{k}/{len(mine)}] {res.status:<7} {res.stem}: {what}{left}"
        print(line, file=sys.stderr if res.status == "failed" else sys.stdout, flush=True)
    return results


def _report_folder(args, every, files, info, *, seconds: float) -> int:
    """Print the run's counts and failures (and its JSON summary); the exit status."""
    from napari_vnet.workflows.options import format_seconds

    n = {s: sum(r.status == s for r in every) for s in ("written", "skipped", "failed")}
    print(
        f"{len(every)} case(s): {n['written']} written, {n['skipped']} skipped, "
        f"{n['failed']} failed in {format_seconds(seconds)}; "
        + ", ".join(str(p) for p in files.values())
    )
    for r in every:
        if r.status == "failed":
            print(f"  failed: {r.error}", file=sys.stderr)
    if args.json:
        paths = {k: str(v) for k, v in files.items()}
        print(json.dumps({**info, **n, "cases": len(every), **paths}))
    return 1 if n["failed"] else 0
