"""`napari-vnet evaluate`: per-class Dice and HD95 (mm) of predictions against references.

    napari-vnet evaluate pred.nii.gz labels.nii.gz --labels 5,1 --json
    napari-vnet evaluate pred.nii.gz labels.nii.gz --map 1=5,2=1
    napari-vnet evaluate PRED_DIR GT_DIR --out-csv scores.csv

Both label maps of a pair must lie on the same voxel grid (shape, spacing, origin,
direction); otherwise the pair is refused with what differs, unless ``--resample`` puts
the prediction on the reference grid (nearest neighbour, in physical space - so a mask
stored with a flipped direction matrix still lands on the right anatomy).

``--map PRED=GT[,...]`` says which reference value each predicted value stands for
(``--map 1=5`` scores predicted 1 against reference 5); predicted values not named keep
their value. Labels (``--labels`` or, by default, every non-zero value present) are
reference values. A scored label absent from the prediction or from the reference is
warned about (on stderr), since its Dice of 0 often means the two use other values for
the same structure.

Single pair: with ``--json`` the last line is ``{"dice": {"5": ...}, "hd95_mm": {"5":
...}, "absent": {"pred": [...], "gt": [...]}, ...}`` (label values as strings; an HD95
that does not exist because one side is empty is ``null``). A label in neither map has
no score: Dice and HD95 ``null`` (``n/a`` in the table), listed in
``"absent_from_both"`` and left out of the means.

``--out-json``/``--out-csv`` replace an existing file only when it is an earlier output
of evaluate (the JSON's ``"napari_vnet": "evaluate"`` key, the CSV's header).

Folders: every label map in PRED_DIR is paired with the one in GT_DIR of the same name
without extension (relative path first, then file name; ``ct.nii.gz`` pairs with
``ct.nrrd``). Per case and class Dice and HD95, mean and std per class over the cases
where the class was scored; written as JSON and CSV (default ``PRED_DIR/evaluation.json``
and ``evaluation.csv``). Unpaired and unreadable files are listed, not fatal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from napari_vnet.workflows.batch_records import csv_text
from napari_vnet.workflows.evaluate import (
    EvaluationError,
    FolderScores,
    holds_many,
    own_csv,
    own_json,
    parse_labels,
    parse_map,
    refuse_output,
    rows,
    score_folders,
    score_pair,
    write_csv,
    write_text,
)

HELP = "per-class Dice and 95% Hausdorff distance (mm) between predictions and references"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pred", metavar="PRED", help="predicted label file (or DICOM folder), or a folder of them"
    )
    parser.add_argument("gt", metavar="GT", help="reference label file, or a folder of them")
    parser.add_argument(
        "--labels",
        default=None,
        help="comma-separated (reference) label values to score "
        "(default: all non-zero values present)",
    )
    parser.add_argument(
        "--map",
        dest="value_map",
        default=None,
        metavar="PRED=GT[,...]",
        help="predicted value -> reference value, e.g. 1=5,2=1 (unnamed values unchanged)",
    )
    parser.add_argument(
        "--resample",
        action="store_true",
        help="resample PRED onto GT's grid (nearest) when the grids differ",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary as last line")
    parser.add_argument(
        "--out-json", default=None, help="write the results as JSON here (folders: default "
        "PRED_DIR/evaluation.json)"
    )  # fmt: skip
    parser.add_argument(
        "--out-csv", default=None, help="write one row per case and label here (folders: "
        "default PRED_DIR/evaluation.csv)"
    )  # fmt: skip


def _fail(message: str) -> int:
    print(f"napari-vnet evaluate: {message}", file=sys.stderr)
    return 1


def _warn_absent(result: dict[str, Any], mapping: dict[int, int]) -> None:
    hint = " (check --map)" if mapping else "; if the files use other values, use --map PRED=GT"
    for side, name in (("pred", "PRED"), ("gt", "GT")):
        for v in result["absent"][side]:
            log.warning(
                "label %d is absent from %s %s%s",
                v,
                name,
                result[side],
                " (after --map)" if side == "pred" and mapping else "",
            )
    neither = result.get("absent_from_both", [])
    if set(result["absent"]["pred"]) ^ set(result["absent"]["gt"]):
        log.warning("an absent label scores Dice 0 / HD95 inf%s", hint)
    for v in neither:
        log.warning(
            "label %d is in neither PRED nor GT: its Dice and HD95 are undefined (n/a, null "
            "in JSON), not 1.0, and left out of the mean%s",
            v,
            hint,
        )


def _fmt(x: float | None, spec: str, none: str) -> str:
    return none if x is None else format(x, spec)


def _print_table(result: dict[str, Any]) -> None:
    print(f"{'label':>6} {'Dice':>8} {'HD95 mm':>9}  name")
    both = set(result.get("absent_from_both", []))
    for v in result["labels"]:
        d, h = result["dice"][str(v)], result["hd95_mm"][str(v)]
        hd = _fmt(h, ".2f", "n/a" if v in both else "inf")
        name = result["names"].get(str(v), "")
        print(f"{v:>6} {_fmt(d, '.4f', 'n/a'):>8} {hd:>9}  {name}".rstrip())


def _missing_input(args: argparse.Namespace) -> str | None:
    """A PRED or GT that does not exist, or a folder of predictions scored against a
    file, named as what it is."""
    for role, path in (("PRED", args.pred), ("GT", args.gt)):
        if not os.path.lexists(path):
            return f"{role} {csv_text(str(path))}: no such file or folder"
    pred_many = Path(args.pred).is_dir() and holds_many(args.pred)
    if pred_many and not Path(args.gt).is_dir():
        return (
            f"GT {csv_text(str(args.gt))}: not a folder; PRED {csv_text(str(args.pred))} is a "
            "folder of label maps, so GT must be a folder of references"
        )
    return None


def run(args: argparse.Namespace) -> int:
    from napari_vnet.io import VolumeReadError

    try:
        labels = parse_labels(args.labels)
        mapping = parse_map(args.value_map)
    except EvaluationError as exc:
        return _fail(str(exc))
    missing = _missing_input(args)
    if missing:
        return _fail(missing)
    if Path(args.pred).is_dir() and Path(args.gt).is_dir() and holds_many(args.pred):
        return run_folders(args, labels, mapping)
    for flag, path, own in (("--out-json", args.out_json, own_json),
                            ("--out-csv", args.out_csv, own_csv)):  # fmt: skip
        why = path and refuse_output(Path(path), flag, own)
        if why:
            return _fail(why)
    try:
        result = score_pair(
            args.pred, args.gt, labels=labels, mapping=mapping, resample=args.resample
        )
    except (EvaluationError, VolumeReadError, FileNotFoundError) as exc:
        return _fail(str(exc))
    _warn_absent(result, mapping)
    _print_table(result)
    result["map"] = {str(k): v for k, v in mapping.items()}
    if args.out_json:
        write_text(Path(args.out_json), json.dumps(result, indent=1))
    if args.out_csv:
        write_csv(Path(args.out_csv), rows([("case", result)]))
    if args.json:
        print(json.dumps(result))
    return 0


# ------------------------------------------------------------------------- folders


def run_folders(args: argparse.Namespace, labels, mapping) -> int:
    out_json = Path(args.out_json or Path(args.pred) / "evaluation.json")
    out_csv = Path(args.out_csv or Path(args.pred) / "evaluation.csv")
    for flag, path, own in (("--out-json", out_json, own_json),
                            ("--out-csv", out_csv, own_csv)):  # fmt: skip
        why = refuse_output(path, flag, own)
        if why:
            return _fail(why)
    scores = score_folders(
        args.pred, args.gt, labels=labels, mapping=mapping, resample=args.resample,
        on_case=_print_case,
    )  # fmt: skip
    if not scores.results and not scores.failed:
        return _fail(f"no prediction in {args.pred} has a reference of the same name in {args.gt}")
    _warn_folder(scores, mapping)
    summary = scores.summary(args.pred, args.gt, mapping)
    _print_per_label(summary["per_label"])
    write_text(out_json, json.dumps(summary, indent=1))
    write_csv(out_csv, rows(scores.results))
    print(f"wrote {out_json} and {out_csv}")
    if args.json:
        print(json.dumps({k: summary[k] for k in ("cases", "per_label", "failed")}))
    return 1 if scores.failed else 0


def _print_case(case: str, result: dict[str, Any] | None, error: Exception | None) -> None:
    if result is None:
        print(f"napari-vnet evaluate: {error}", file=sys.stderr)
        return
    dice = "  ".join(
        f"{v}: {_fmt(result['dice'][str(v)], '.4f', 'n/a')}" for v in result["labels"]
    )
    print(f"{case}: Dice {dice}")


def _warn_folder(scores: FolderScores, mapping: dict[int, int]) -> None:
    for p in scores.unpaired_pred:
        log.warning("no reference for %s", p)
    for g in scores.unpaired_gt:
        log.warning("no prediction for %s", g)
    n = len(scores.results)
    for side, name in (("pred", "PRED"), ("gt", "GT")):
        for v, k in sorted(scores.absent[side].items()):
            log.warning("label %d is absent from %s in %d of %d case(s)", v, name, k, n)
    if scores.absent["pred"] or scores.absent["gt"]:
        log.warning(
            "an absent label scores Dice 0 / HD95 inf%s",
            " (check --map)" if mapping else "; if the files use other values, use --map PRED=GT",
        )


def _print_per_label(per_label: dict[str, dict[str, Any]]) -> None:
    print(
        f"\n{'label':>6} {'cases':>6} {'Dice mean':>10} {'std':>7} {'HD95 mean':>10} {'std':>7}"
        "  name"
    )
    for v, s in per_label.items():
        hm = "-" if s["hd95_mm_mean"] is None else f"{s['hd95_mm_mean']:.2f}"
        hs = "-" if s["hd95_mm_std"] is None else f"{s['hd95_mm_std']:.2f}"
        dm, ds = _fmt(s["dice_mean"], ".4f", "n/a"), _fmt(s["dice_std"], ".4f", "n/a")
        print(f"{v:>6} {s['cases']:>6} {dm:>10} {ds:>7} {hm:>10} {hs:>7}  {s['name']}".rstrip())
