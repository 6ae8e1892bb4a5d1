"""`napari-vnet predict`: segment a volume, or a folder of scans, headless.

    napari-vnet predict CT.nii.gz --weights vnet-phantom --out mask.nii.gz --json
    napari-vnet predict dicom_folder/ --weights my.pt --out mask.nrrd --tta --postprocess
    napari-vnet predict scans/ --weights vnet-phantom --out masks/ --statistics
    torchrun --nproc_per_node 2 -m napari_vnet.cli predict scans/ -w my.pt --out masks/

Single case (OUT names a file): the mask is written with the input's geometry. With
``--json`` the last line of stdout is one JSON object: ``seconds`` (inference, incl.
pre/post-processing, excluding file reading/writing), ``total_seconds``, ``voxels``,
``device``, ``output``, ``amp``, ``windows``, ``labels`` (value -> voxel count).

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

from napari_vnet.workflows.batch import FORMATS

HELP = (
    "segment a volume (file or DICOM folder) or a whole folder of scans, writing masks "
    "with each input's geometry"
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", metavar="INPUT", help="image file, DICOM folder, or a folder of scans"
    )
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
        "--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps"
    )
    parser.add_argument(
        "--overlap", type=float, default=0.5, help="window overlap in [0, 1) (default 0.5)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="windows per forward pass (default: auto)"
    )
    parser.add_argument("--tta", action="store_true", help="average the 8 axis-flipped passes")
    parser.add_argument(
        "--no-amp", action="store_true", help="plain fp32 (default: mixed precision where fast)"
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
        "default), an extension, or 'dicom-seg' (DICOM inputs; needs highdicom)",
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
        "(<case>_statistics.json and OUT/statistics.csv)",
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


def _fail(message: str) -> int:
    print(f"napari-vnet predict: {message}", file=sys.stderr)
    return 1


_BATCH_ONLY = {
    "pattern": None,
    "fmt": "same",
    "statistics": False,
    "save_probabilities": False,
    "num_parts": 1,
    "part_id": 0,
}


def _is_batch(args: argparse.Namespace) -> bool:
    """A folder of scans: INPUT is a folder and OUT is a folder (no volume extension)."""
    from napari_vnet.io.writing import write_extension

    out = Path(args.out)
    return Path(args.input).is_dir() and (out.is_dir() or write_extension(out) is None)


def run(args: argparse.Namespace) -> int:
    if _is_batch(args):
        return run_folder(args)
    given = [k for k, default in _BATCH_ONLY.items() if getattr(args, k, default) != default]
    if given:
        flags = ", ".join("--" + ("format" if k == "fmt" else k.replace("_", "-")) for k in given)
        return _fail(f"{flags}: only for a folder of scans (INPUT and --out folders)")
    return run_single(args)


def _input_refused(name, vol, card) -> bool:
    """Print model/image mismatches (see napari_vnet.input_check); True when refused."""
    from napari_vnet.input_check import check_input, format_issues, value_sample

    n = vol.ndim
    issues = check_input(
        card,
        shape=tuple(vol.array.shape[:n]),
        spacing=tuple(vol.spacing),
        values=value_sample(vol.array),
        channels=int(vol.array.shape[-1]) if vol.array.ndim > n else 1,
        modality=str(vol.metadata.get("modality", "")),
    )
    for line in format_issues(issues):
        print(f"napari-vnet predict: {name}: {line}", file=sys.stderr)
    return any(i.refuses for i in issues)


def run_single(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_vnet.inference import InferenceMemoryError, predict
    from napari_vnet.io import VolumeReadError, VolumeWriteError, read_volume, write_volume
    from napari_vnet.models import CheckpointError, load_checkpoint
    from napari_vnet.postprocess import parse_operations
    from napari_vnet.weights import resolve_weights
    from napari_vnet.workflows.batch import write_class_sidecar

    t_start = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        return _fail(f"{out}: exists (use --overwrite to replace it)")
    try:
        post = parse_operations(args.postprocess) if args.postprocess else None
    except ValueError as exc:
        return _fail(str(exc))
    try:
        weights = resolve_weights(args.weights)
        model, card = load_checkpoint(weights, map_location="cpu")
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    try:
        vol = read_volume(args.input)
    except (VolumeReadError, FileNotFoundError) as exc:
        return _fail(str(exc))
    log.info("read %s: shape %s, spacing %s mm", args.input, vol.shape, vol.spacing)
    if _input_refused(args.input, vol, card):
        return 1

    last = {"t": 0.0}

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last["t"] > 2.0:
            last["t"] = now
            log.info("windows %d/%d", done, total)

    try:
        pred = predict(
            vol.array,
            model,
            card,
            spacing=vol.spacing,
            device=args.device,
            overlap=args.overlap,
            batch_size=args.batch_size,
            amp=False if args.no_amp else "auto",
            tta=args.tta,
            postprocess=post,
            progress=progress,
        )
    except (ValueError, InferenceMemoryError) as exc:
        return _fail(f"{args.input}: {exc}")
    try:
        written = write_volume(pred.labels, out, like=vol, is_label=True)
        write_class_sidecar(written, card)  # names and colours when reopened
    except (VolumeWriteError, OSError, ValueError) as exc:
        return _fail(str(exc))

    values, counts = np.unique(pred.labels, return_counts=True)
    summary = {
        "input": str(args.input),
        "output": str(written),
        "weights": str(weights),
        "arch": card.arch,
        "seconds": round(pred.seconds, 3),
        "total_seconds": round(time.perf_counter() - t_start, 3),
        "voxels": int(np.prod(vol.shape)),
        "shape": list(vol.shape),
        "spacing": [float(s) for s in vol.spacing],
        "device": pred.device,
        "amp": pred.amp,
        "windows": pred.windows,
        "tta": bool(args.tta),
        "postprocess": post or [],
        "labels": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
    }
    names = card.class_names
    print(
        f"{written}: {vol.shape} in {pred.seconds:.1f} s on {pred.device}"
        f" ({pred.windows} windows, amp {pred.amp or 'off'})"
    )
    for v, c in zip(values, counts, strict=True):
        print(f"  {int(v):>5} {names.get(int(v), '?'):<20} {int(c):>12} voxels")
    if args.json:
        print(json.dumps(summary))
    return 0


# ------------------------------------------------------------------ folder of scans


def _clock(seconds: float) -> str:
    seconds = int(round(max(seconds, 0.0)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _folder_cases(args: argparse.Namespace, in_dir: Path, out_dir: Path) -> list:
    """The cases under ``in_dir``, named for ``out_dir``: an OUT inside INPUT is not
    walked, outputs of earlier runs written into INPUT are not inputs, and no output
    is named after an input (in place: ``<name>_seg``; see napari_vnet.workflows.batch_records)."""
    from napari_vnet.workflows.batch import discover_cases
    from napari_vnet.workflows.batch_records import place_outputs

    exclude = [out_dir] if out_dir.is_relative_to(in_dir) and out_dir != in_dir else []
    outputs_in = in_dir if in_dir.is_relative_to(out_dir) else None
    cases = discover_cases(in_dir, pattern=args.pattern, exclude=exclude, outputs_in=outputs_in)
    place_outputs(cases, in_dir, out_dir, args.fmt)
    return cases


def _outputs_conflict(cases, out_dir: Path, args: argparse.Namespace, model, card) -> bool:
    """Print one line and return True when OUT holds outputs of these cases made by
    other weights (or not by napari-vnet predict); nothing is written then."""
    from napari_vnet.workflows.batch import plan_outputs
    from napari_vnet.workflows.batch_records import output_conflicts, weights_fingerprint

    plans = [
        (c, plan_outputs(c, out_dir, args.fmt, statistics=args.statistics,
                         probabilities=args.save_probabilities))
        for c in cases
    ]  # fmt: skip
    found = output_conflicts(plans, weights_fingerprint(model, card))
    if not found:
        return False
    stem, why = found[0]
    more = f" (and {len(found) - 1} more case(s))" if len(found) > 1 else ""
    _fail(
        f"{out_dir}: outputs of {len(found)} case(s) exist and were not made by "
        f"{args.weights}: {why}{more}; use --overwrite to replace them, or another --out"
    )
    return True


def run_folder(args: argparse.Namespace) -> int:
    """Segment every scan under INPUT into OUT (see the module docstring)."""
    from napari_vnet.models import CheckpointError, load_checkpoint
    from napari_vnet.postprocess import parse_operations
    from napari_vnet.weights import resolve_weights
    from napari_vnet.workflows.batch import (
        DicomSegUnavailableError,
        distributed_context,
        predict_cases,
        require_highdicom,
        shard,
        write_run_summary,
    )

    t_start = time.perf_counter()
    in_dir = Path(args.input).expanduser().resolve()
    out_dir = Path(args.out).expanduser().resolve()
    if args.workers < 0:
        return _fail(f"--workers must be >= 0, got {args.workers}")
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        return _fail(
            f"--part-id must be in [0, {args.num_parts - 1}] for --num-parts {args.num_parts}"
        )
    if out_dir.exists() and not out_dir.is_dir():
        return _fail(f"{out_dir}: exists and is not a folder")
    if args.fmt == "dicom-seg":
        try:
            require_highdicom()
        except DicomSegUnavailableError as exc:
            return _fail(str(exc))
    try:
        post = parse_operations(args.postprocess) if args.postprocess else None
    except ValueError as exc:
        return _fail(str(exc))
    try:
        weights = resolve_weights(args.weights)
        model, card = load_checkpoint(weights, map_location="cpu")
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))

    ctx = distributed_context(args.device)
    try:
        device = args.device
        if ctx.active and ctx.backend == "nccl" and device in ("auto", "cuda"):
            device = f"cuda:{ctx.local_rank}"  # one GPU per rank
        cases = _folder_cases(args, in_dir, out_dir)
        part = shard(cases, args.num_parts, args.part_id)
        mine = shard(part, ctx.world_size, ctx.rank)
        who = f"[rank {ctx.rank}/{ctx.world_size}] " if ctx.active else ""
        where = (
            f" (part {args.part_id + 1} of {args.num_parts}: {len(part)})"
            if args.num_parts > 1
            else ""
        )
        print(f"{who}{len(cases)} case(s) under {in_dir}{where}; this process: {len(mine)}")
        if not args.overwrite and _outputs_conflict(part, out_dir, args, model, card):
            return 1
        out_dir.mkdir(parents=True, exist_ok=True)

        last = {"t": 0.0}

        def window_progress(done: int, total: int) -> None:
            now = time.perf_counter()
            if done == total or now - last["t"] > 2.0:
                last["t"] = now
                log.info("windows %d/%d", done, total)

        state = {"done": 0, "t0": None, "n_todo": 0}

        def on_start(case, i: int, n: int) -> None:
            state["n_todo"] = n
            if state["t0"] is None:
                state["t0"] = time.perf_counter()
            log.info("case %d/%d: %s", i, n, case.path)

        results = []
        n_mine = len(mine)
        for k, res in enumerate(
            predict_cases(
                mine,
                model,
                card,
                out_dir,
                fmt=args.fmt,
                overwrite=args.overwrite,
                statistics=args.statistics,
                save_probabilities=args.save_probabilities,
                workers=args.workers,
                rank=ctx.rank,
                on_start=on_start,
                weights=weights,
                predict_kwargs={
                    "device": device,
                    "overlap": args.overlap,
                    "batch_size": args.batch_size,
                    "amp": False if args.no_amp else "auto",
                    "tta": args.tta,
                    "postprocess": post,
                    "progress": window_progress,
                },
            ),
            start=1,
        ):
            results.append(res)
            eta = ""
            if res.status != "skipped" and state["t0"] is not None:
                state["done"] += 1
                elapsed = time.perf_counter() - state["t0"]
                left = max(state["n_todo"] - state["done"], 0)
                eta = (
                    f" | elapsed {_clock(elapsed)}, ~{_clock(elapsed / state['done'] * left)} left"
                )
            if res.status == "written":
                what = f"-> {res.outputs[-1]} ({res.total_seconds:.1f} s)"
            elif res.status == "skipped":
                what = "outputs exist (--overwrite to redo)"
            else:
                what = res.error
            line = f"{who}[{k}/{n_mine}] {res.status:<7} {res.stem}: {what}{eta}"
            print(line, file=sys.stderr if res.status == "failed" else sys.stdout, flush=True)

        gathered = ctx.gather([r.to_dict() for r in results])
        if ctx.rank != 0:
            return 1 if any(r.status == "failed" for r in results) else 0
        from napari_vnet.workflows.batch import CaseResult

        every = [CaseResult(**d) for part_results in gathered for d in part_results]
        suffix = f".part-{args.part_id}-of-{args.num_parts}" if args.num_parts > 1 else ""
        info = {
            "input_dir": str(in_dir),
            "output_dir": str(out_dir),
            "weights": str(weights),
            "arch": card.arch,
            "format": args.fmt,
            "num_parts": args.num_parts,
            "part_id": args.part_id,
            "world_size": ctx.world_size,
            "total_seconds": round(time.perf_counter() - t_start, 3),
        }
        files = write_run_summary(
            every, out_dir, suffix=suffix, info=info, statistics=args.statistics
        )
        n = {s: sum(r.status == s for r in every) for s in ("written", "skipped", "failed")}
        print(
            f"{len(every)} case(s): {n['written']} written, {n['skipped']} skipped, "
            f"{n['failed']} failed in {_clock(time.perf_counter() - t_start)}; "
            + ", ".join(str(p) for p in files.values())
        )
        for r in every:
            if r.status == "failed":
                print(f"  failed: {r.error}", file=sys.stderr)
        if args.json:
            print(
                json.dumps(
                    {**info, **n, "cases": len(every), **{k: str(v) for k, v in files.items()}}
                )
            )
        return 1 if n["failed"] else 0
    finally:
        ctx.close()
