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
import csv
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from napari_vnet.workflows.batch_records import csv_text

HELP = "per-class Dice and 95% Hausdorff distance (mm) between predictions and references"

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """A pair of label maps cannot be scored (the message names the files)."""


#: every JSON written by evaluate carries this key: an existing ``--out-json`` file is
#: replaced only when it is such an earlier output
MARKER_KEY = "napari_vnet"
MARKER = "evaluate"
_CSV_FIELDS = (
    "case",
    "label",
    "name",
    "dice",
    "hd95_mm",
    "absent_in_pred",
    "absent_in_gt",
    "pred",
    "gt",
)
_MAX_OWN_OUTPUT_BYTES = 256 << 20


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


def grid_differences(a, b) -> list[str]:
    """What differs between the voxel grids of two Volumes (empty when they match)."""
    import numpy as np

    diffs = []
    if tuple(a.shape) != tuple(b.shape):
        diffs.append(f"shape {tuple(a.shape)} vs {tuple(b.shape)}")
    if not np.allclose(a.spacing, b.spacing, rtol=1e-4, atol=1e-6):
        diffs.append(f"spacing {tuple(a.spacing)} vs {tuple(b.spacing)} mm")
    tol = 0.01 * float(min(min(a.spacing), min(b.spacing)))
    if not np.allclose(a.origin, b.origin, rtol=0, atol=tol):
        diffs.append(f"origin {tuple(a.origin)} vs {tuple(b.origin)} mm")
    if not np.allclose(np.asarray(a.direction), np.asarray(b.direction), atol=1e-4):
        da = np.round(np.asarray(a.direction), 4).tolist()
        db = np.round(np.asarray(b.direction), 4).tolist()
        diffs.append(f"direction {da} vs {db}")
    return diffs


def resample_like(vol, reference):
    """``vol`` (labels) resampled onto ``reference``'s grid, nearest neighbour, physical."""
    import numpy as np
    import SimpleITK as sitk

    from napari_vnet.io import Volume, volume_to_image

    moving = volume_to_image(Volume(vol.array, vol.spacing, vol.origin, vol.direction))
    ref = volume_to_image(
        Volume(
            np.zeros(reference.shape, np.uint8),
            reference.spacing,
            reference.origin,
            reference.direction,
        )
    )
    out = sitk.Resample(
        moving, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, moving.GetPixelID()
    )
    return reference.with_array(sitk.GetArrayFromImage(out))


def _number(x: float) -> float | None:
    return None if not math.isfinite(x) else round(float(x), 6)


def parse_labels(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise EvaluationError(
            f"--labels {text!r}: expected comma-separated integers, e.g. 5,1"
        ) from None


def parse_map(text: str | None) -> dict[int, int]:
    """``"1=5,2=1"`` -> ``{1: 5, 2: 1}`` (predicted value -> reference value)."""
    if not text:
        return {}
    mapping: dict[int, int] = {}
    for item in str(text).split(","):
        if not item.strip():
            continue
        left, sep, right = item.partition("=")
        try:
            if not sep:
                raise ValueError
            p, g = int(left), int(right)
        except ValueError:
            raise EvaluationError(
                f"--map {text!r}: expected PRED=GT pairs of integers, e.g. 1=5,2=1"
            ) from None
        if p < 0 or g < 0:
            raise EvaluationError(f"--map {text!r}: label values must be >= 0")
        if p in mapping and mapping[p] != g:
            raise EvaluationError(f"--map {text!r}: predicted value {p} mapped twice")
        mapping[p] = g
    return mapping


def _map_dtype(array, hi: int):
    """The smallest integer type holding ``array``'s values and ``hi``."""
    import numpy as np

    if array.size and int(array.min()) < 0:
        return np.result_type(array.dtype, np.min_scalar_type(hi))
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if hi <= np.iinfo(dtype).max:
            return dtype
    raise EvaluationError(f"--map: label value {hi} does not fit a 64-bit label map")


def apply_map(array, mapping: dict[int, int]):
    """``array`` with each predicted value replaced as ``mapping`` says (all at once).

    One comparison per mapped value: the memory is that of the result and one mask,
    whatever the label values (no lookup table sized by the largest one)."""
    import numpy as np

    if not mapping:
        return array
    array = np.asarray(array)
    hi = max([int(array.max(initial=0)), *mapping.values()])
    out = array.astype(_map_dtype(array, hi), copy=True)
    for p, g in mapping.items():
        out[array == p] = g
    return out


def _read_label_map(path, role: str):
    from napari_vnet.io import read_volume

    vol = read_volume(path)
    if vol.array.ndim != 3:
        raise EvaluationError(f"{vol.path}: {role} must be a 3-D label map, got shape {vol.shape}")
    if vol.array.dtype.kind not in "uib":
        raise EvaluationError(f"{vol.path}: {role} holds {vol.array.dtype} values, not labels")
    return vol


def class_names(label_path) -> dict[int, str]:
    """Value -> name from the reference's sidecar (labels.json, ITK-SNAP, .ctbl, ...)."""
    from napari_vnet.label_names import LabelSidecarError, read_label_classes

    try:
        found = read_label_classes(label_path)
    except (LabelSidecarError, OSError, ValueError) as exc:
        log.warning("class names not read: %s", exc)
        return {}
    if not found:
        return {}
    return {int(c["value"]): str(c["name"]) for c in found[0]}


def score_pair(
    pred_path,
    gt_path,
    *,
    labels: list[int] | None = None,
    mapping: dict[int, int] | None = None,
    resample: bool = False,
) -> dict[str, Any]:
    """Dice and HD95 (mm) per label of one prediction against its reference.

    Raises :class:`EvaluationError` (or the reader's errors) naming the files."""
    import numpy as np

    from napari_vnet.metrics import dice_per_class, hd95_per_class, label_values

    pred = _read_label_map(pred_path, "PRED")
    gt = _read_label_map(gt_path, "GT")
    diffs = grid_differences(pred, gt)
    resampled = False
    if diffs:
        if not resample:
            raise EvaluationError(
                f"{pred_path} and {gt_path} are not on the same voxel grid ("
                + "; ".join(diffs)
                + "); pass --resample to resample PRED onto GT's grid"
            )
        pred = resample_like(pred, gt)
        resampled = True
    pred_array = apply_map(np.asarray(pred.array), mapping or {})
    gt_array = np.asarray(gt.array)
    in_pred = set(np.unique(pred_array).tolist())
    in_gt = set(np.unique(gt_array).tolist())
    if labels is None:
        labels = label_values(gt_array, pred_array)
    if not labels:
        raise EvaluationError(
            f"{pred_path}, {gt_path}: no non-zero labels in either file and none given with "
            "--labels"
        )
    # a label in neither map has no Dice (the metrics module's 1.0 would read as perfect)
    neither = [int(v) for v in labels if v not in in_pred and v not in in_gt]
    scored = [v for v in labels if v not in neither]
    dice = dice_per_class(pred_array, gt_array, scored)
    hd95 = hd95_per_class(pred_array, gt_array, gt.spacing, scored)
    names = class_names(gt_path) or {
        int(c["value"]): str(c["name"]) for c in gt.metadata.get("classes") or ()
    }  # a DICOM-SEG names its segments itself
    return {
        MARKER_KEY: MARKER,
        "pred": str(pred_path),
        "gt": str(gt_path),
        "labels": [int(v) for v in labels],
        "names": {str(v): names[v] for v in labels if v in names},
        "dice": {str(v): _number(dice[v]) if v in dice else None for v in labels},
        "hd95_mm": {str(v): _number(hd95[v]) if v in hd95 else None for v in labels},
        "mean_dice": _number(float(np.mean([dice[v] for v in scored]))) if scored else None,
        "absent": {
            "pred": [int(v) for v in labels if v not in in_pred],
            "gt": [int(v) for v in labels if v not in in_gt],
        },
        "absent_from_both": neither,
        "resampled": resampled,
    }


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


def _own_json(path: Path) -> bool:
    """True when ``path`` holds a JSON object written by evaluate (its marker key, or the
    shape of one written before the marker existed)."""
    try:
        if path.stat().st_size > _MAX_OWN_OUTPUT_BYTES:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    keys = set(data)
    return (
        data.get(MARKER_KEY) == MARKER
        or {"pred", "gt", "labels", "dice", "hd95_mm"} <= keys
        or {"pred_dir", "gt_dir", "per_label", "per_case"} <= keys
    )


def _own_csv(path: Path) -> bool:
    """True when ``path`` starts with the header of evaluate's CSV."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(200).split(b"\n", 1)[0].strip()
    except OSError:
        return False
    return head == ",".join(_CSV_FIELDS).encode()


def refuse_output(path: Path, flag: str, own) -> str | None:
    """Why ``path`` must not be replaced (it exists and is not an earlier output of
    evaluate: an image, a folder, someone's file); None when it may be written."""
    if not os.path.lexists(path):
        return None
    shown = csv_text(str(path))
    if not path.is_file():
        return f"{flag} {shown}: exists and is not a file"
    if not own(path):
        return (
            f"{flag} {shown}: exists and is not an earlier output of napari-vnet evaluate; "
            "it is left alone - choose another file name or remove it"
        )
    return None


def _missing_input(args: argparse.Namespace) -> str | None:
    """A PRED or GT that does not exist, or a folder of predictions scored against a
    file, named as what it is."""
    for role, path in (("PRED", args.pred), ("GT", args.gt)):
        if not os.path.lexists(path):
            return f"{role} {csv_text(str(path))}: no such file or folder"
    pred_many = Path(args.pred).is_dir() and _holds_many(args.pred)
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
    if Path(args.pred).is_dir() and Path(args.gt).is_dir() and _holds_many(args.pred):
        return run_folders(args, labels, mapping)
    for flag, path, own in (("--out-json", args.out_json, _own_json),
                            ("--out-csv", args.out_csv, _own_csv)):  # fmt: skip
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
        _write_text(Path(args.out_json), json.dumps(result, indent=1))
    if args.out_csv:
        _write_csv(Path(args.out_csv), _rows([("case", result)]))
    if args.json:
        print(json.dumps(result))
    return 0


# ------------------------------------------------------------------------- folders


def _holds_many(folder) -> bool:
    """A folder of label files (not one DICOM series): any volume file directly or below."""
    from napari_vnet.workflows.worklist_scan import VOLUME_SUFFIXES

    for dirpath, _dirs, files in os.walk(folder):
        if any(f.lower().endswith(VOLUME_SUFFIXES) for f in files):
            return True
        if any(_is_seg(Path(dirpath) / f) for f in files):
            return True
    return False


def _is_seg(path: Path) -> bool:
    """A DICOM-SEG file (``predict --format dicom-seg`` writes ``<case>.dcm``)."""
    from napari_vnet.io.dicom_seg import is_dicom_seg

    return path.name.lower().endswith(".dcm") and is_dicom_seg(path)


def label_files(folder) -> dict[str, str]:
    """``{relative path without extension: path}`` of the volume files under ``folder``.

    A plain walk (hidden entries skipped): every volume file here is a label map, also
    in an nnU-Net ``labelsTr`` folder whose images the scans discovery would pair it with.
    """
    from napari_vnet.workflows.worklist_scan import VOLUME_SUFFIXES

    root = Path(folder)
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            low = name.lower()
            ext = next((e for e in VOLUME_SUFFIXES if low.endswith(e)), None)
            if ext is None and _is_seg(Path(dirpath) / name):
                ext = ".dcm"
            if ext is None or name.startswith(".") or low.endswith(".hdr"):
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            out.setdefault(rel[: len(rel) - len(ext)], str(Path(dirpath) / name))
    return out


def pair_cases(pred_dir, gt_dir) -> tuple[list[tuple[str, str, str]], list[str], list[str]]:
    """(case, pred path, gt path) by name without extension (relative path first, then
    file name when that is unique); and the unpaired prediction and reference files."""
    preds, gts = label_files(pred_dir), label_files(gt_dir)
    by_name: dict[str, list[str]] = {}
    for stem in gts:
        by_name.setdefault(Path(stem).name, []).append(stem)
    pairs, unpaired_pred, used = [], [], set()
    for stem, path in preds.items():
        g = stem if stem in gts else None
        if g is None:
            same = by_name.get(Path(stem).name, [])
            g = same[0] if len(same) == 1 else None
        if g is None or g in used:
            unpaired_pred.append(path)
            continue
        used.add(g)
        pairs.append((stem, path, gts[g]))
    unpaired_gt = [path for stem, path in gts.items() if stem not in used]
    return pairs, unpaired_pred, unpaired_gt


def _rows(results: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for case, r in results:
        for v in r["labels"]:
            rows.append(
                {
                    "case": case,
                    "label": v,
                    "name": r.get("names", {}).get(str(v), ""),
                    "dice": r["dice"][str(v)],
                    "hd95_mm": r["hd95_mm"][str(v)],
                    "absent_in_pred": v in r["absent"]["pred"],
                    "absent_in_gt": v in r["absent"]["gt"],
                    "pred": r["pred"],
                    "gt": r["gt"],
                }
            )
    return rows


def _write_text(path: Path, text: str) -> None:
    from napari_vnet._atomic import atomic_write_text

    atomic_write_text(path, text, newline="")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per case and label; names that are not valid UTF-8 (undecodable bytes of
    a file name) are written with those bytes as ``\\xNN``, so the file is UTF-8."""
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if row[k] is None else csv_text(row[k]) for k in _CSV_FIELDS})
    _write_text(path, buf.getvalue())


def summarize(results: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per label: number of cases scored, mean/std Dice, mean/std HD95 over finite values."""
    import numpy as np

    out: dict[str, dict[str, Any]] = {}
    labels = sorted({v for _, r in results for v in r["labels"]})
    for v in labels:
        # cases where the label is in neither map have no score: not counted
        scored = [r for _, r in results if v in r["labels"]]
        neither = sum(v in r.get("absent_from_both", []) for r in scored)
        scored = [r for r in scored if v not in r.get("absent_from_both", [])]
        dice = [r["dice"][str(v)] for r in scored]
        hd = [r["hd95_mm"][str(v)] for r in scored]
        finite = [h for h in hd if h is not None]
        names = {r["names"][str(v)] for _, r in results if str(v) in r.get("names", {})}
        out[str(v)] = {
            "name": names.pop() if len(names) == 1 else "",
            "cases": len(dice),
            "dice_mean": _number(float(np.mean(dice))) if dice else None,
            "dice_std": _number(float(np.std(dice))) if dice else None,
            "hd95_mm_mean": _number(float(np.mean(finite))) if finite else None,
            "hd95_mm_std": _number(float(np.std(finite))) if finite else None,
            "hd95_undefined": len(hd) - len(finite),
            "absent_from_both": neither,
        }
    return out


def run_folders(args: argparse.Namespace, labels, mapping) -> int:
    from napari_vnet.io import VolumeReadError

    out_json = Path(args.out_json or Path(args.pred) / "evaluation.json")
    out_csv = Path(args.out_csv or Path(args.pred) / "evaluation.csv")
    for flag, path, own in (("--out-json", out_json, _own_json),
                            ("--out-csv", out_csv, _own_csv)):  # fmt: skip
        why = refuse_output(path, flag, own)
        if why:
            return _fail(why)
    pairs, unpaired_pred, unpaired_gt = pair_cases(args.pred, args.gt)
    if not pairs:
        return _fail(f"no prediction in {args.pred} has a reference of the same name in {args.gt}")
    for p in unpaired_pred:
        log.warning("no reference for %s", p)
    for g in unpaired_gt:
        log.warning("no prediction for %s", g)
    results: list[tuple[str, dict[str, Any]]] = []
    failed: dict[str, str] = {}
    absent: dict[str, dict[int, int]] = {"pred": {}, "gt": {}}
    for case, pred_path, gt_path in pairs:
        try:
            r = score_pair(
                pred_path, gt_path, labels=labels, mapping=mapping, resample=args.resample
            )
        except (EvaluationError, VolumeReadError, FileNotFoundError, OSError) as exc:
            failed[case] = str(exc)
            print(f"napari-vnet evaluate: {exc}", file=sys.stderr)
            continue
        for side in ("pred", "gt"):
            for v in r["absent"][side]:
                absent[side][v] = absent[side].get(v, 0) + 1
        results.append((case, r))
        dice = "  ".join(f"{v}: {_fmt(r['dice'][str(v)], '.4f', 'n/a')}" for v in r["labels"])
        print(f"{case}: Dice {dice}")
    n = len(results)
    for side, name in (("pred", "PRED"), ("gt", "GT")):
        for v, k in sorted(absent[side].items()):
            log.warning("label %d is absent from %s in %d of %d case(s)", v, name, k, n)
    if absent["pred"] or absent["gt"]:
        log.warning(
            "an absent label scores Dice 0 / HD95 inf%s",
            " (check --map)" if mapping else "; if the files use other values, use --map PRED=GT",
        )
    per_label = summarize(results)
    print(
        f"\n{'label':>6} {'cases':>6} {'Dice mean':>10} {'std':>7} {'HD95 mean':>10} {'std':>7}"
        "  name"
    )
    for v, s in per_label.items():
        hm = "-" if s["hd95_mm_mean"] is None else f"{s['hd95_mm_mean']:.2f}"
        hs = "-" if s["hd95_mm_std"] is None else f"{s['hd95_mm_std']:.2f}"
        dm, ds = _fmt(s["dice_mean"], ".4f", "n/a"), _fmt(s["dice_std"], ".4f", "n/a")
        print(f"{v:>6} {s['cases']:>6} {dm:>10} {ds:>7} {hm:>10} {hs:>7}  {s['name']}".rstrip())
    summary = {
        MARKER_KEY: MARKER,
        "pred_dir": str(args.pred),
        "gt_dir": str(args.gt),
        "map": {str(k): v for k, v in mapping.items()},
        "cases": n,
        "per_label": per_label,
        "per_case": {case: r for case, r in results},
        "failed": failed,
        "unpaired_pred": unpaired_pred,
        "unpaired_gt": unpaired_gt,
    }
    _write_text(out_json, json.dumps(summary, indent=1))
    _write_csv(out_csv, _rows(results))
    print(f"wrote {out_json} and {out_csv}")
    if args.json:
        print(json.dumps({k: summary[k] for k in ("cases", "per_label", "failed")}))
    return 1 if failed else 0
