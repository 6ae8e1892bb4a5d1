"""Score predicted label maps against references: per-class Dice and HD95 (mm) (no Qt).

What ``napari-vnet evaluate`` runs (:mod:`napari_vnet.commands.evaluate` parses the
options and prints):

* :func:`score_pair`: one prediction against its reference. Both must lie on one voxel
  grid (:func:`napari_vnet.io.grid.grid_differences`), unless ``resample`` puts the
  prediction on the reference's grid (:func:`napari_vnet.io.grid.resample_onto`). A
  predicted value can stand for another reference value (``mapping``, :func:`apply_map`);
  a label in neither map has no score (``None``), listed in ``absent_from_both``;
* :func:`pair_cases` / :func:`score_folders`: every label map of a folder of predictions
  paired with the reference of the same name without extension, and :func:`summarize`
  per label over the cases;
* the outputs: JSON and CSV (:func:`write_csv`, :func:`write_text`), which replace an
  existing file only when it is an earlier output of evaluate (:func:`refuse_output`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_vnet.errors import NapariVnetError
from napari_vnet.io.grid import grid_differences, resample_onto
from napari_vnet.workflows.batch_records import csv_text

log = logging.getLogger(__name__)

__all__ = [
    "MARKER",
    "MARKER_KEY",
    "EvaluationError",
    "FolderScores",
    "apply_map",
    "holds_many",
    "own_csv",
    "own_json",
    "pair_cases",
    "parse_labels",
    "parse_map",
    "refuse_output",
    "rows",
    "score_folders",
    "score_pair",
    "summarize",
    "write_csv",
    "write_text",
]


class EvaluationError(NapariVnetError, ValueError):
    """A pair of label maps cannot be scored (the message names the files)."""


#: every JSON written by evaluate carries this key: an existing ``--out-json`` file is
#: replaced only when it is such an earlier output
MARKER_KEY = "napari_vnet"
MARKER = "evaluate"
CSV_FIELDS = (
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


def read_label_map(path, role: str):
    from napari_vnet.io import read_volume

    vol = read_volume(path)
    if vol.array.ndim != 3:
        raise EvaluationError(f"{vol.path}: {role} must be a 3-D label map, got shape {vol.shape}")
    if vol.array.dtype.kind not in "uib":
        raise EvaluationError(f"{vol.path}: {role} holds {vol.array.dtype} values, not labels")
    return vol


def class_names(label_path) -> dict[int, str]:
    """Value -> name from the reference's sidecar (labels.json, ITK-SNAP, .ctbl, ...)."""
    from napari_vnet.io.label_names import LabelSidecarError, read_label_classes

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
    threads: int | None = None,
) -> dict[str, Any]:
    """Dice and HD95 (mm) per label of one prediction against its reference.

    ``threads``: SimpleITK's threads (resampling; 0/None: chosen for this machine,
    :func:`napari_vnet.workflows.threads.use_threads`). Raises :class:`EvaluationError` (or the
    reader's errors) naming the files."""
    from napari_vnet.workflows.threads import use_threads

    with use_threads(threads):
        return _score_pair(pred_path, gt_path, labels=labels, mapping=mapping, resample=resample)


def _score_pair(pred_path, gt_path, *, labels, mapping, resample) -> dict[str, Any]:
    import numpy as np

    from napari_vnet.metrics import dice_per_class, hd95_per_class, label_values

    pred = read_label_map(pred_path, "PRED")
    gt = read_label_map(gt_path, "GT")
    diffs = grid_differences(pred, gt)
    resampled = False
    if diffs:
        if not resample:
            raise EvaluationError(
                f"{pred_path} and {gt_path} are not on the same voxel grid ("
                + "; ".join(str(d) for d in diffs)
                + "); pass --resample to resample PRED onto GT's grid"
            )
        pred = resample_onto(pred, gt)
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


def own_json(path: Path) -> bool:
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


def own_csv(path: Path) -> bool:
    """True when ``path`` starts with the header of evaluate's CSV."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(200).split(b"\n", 1)[0].strip()
    except OSError:
        return False
    return head == ",".join(CSV_FIELDS).encode()


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


def holds_many(folder) -> bool:
    """A folder of label files (not one DICOM series): any volume file directly or below."""
    from napari_vnet.io.headers import VOLUME_SUFFIXES

    for dirpath, _dirs, files in os.walk(folder):
        if any(f.lower().endswith(VOLUME_SUFFIXES) for f in files):
            return True
        if any(is_dicom_seg_file(Path(dirpath) / f) for f in files):
            return True
    return False


def is_dicom_seg_file(path: Path) -> bool:
    """A DICOM-SEG file (``predict --format dicom-seg`` writes ``<case>.dcm``)."""
    from napari_vnet.io.dicom_seg import is_dicom_seg

    return path.name.lower().endswith(".dcm") and is_dicom_seg(path)


def label_files(folder) -> dict[str, str]:
    """``{relative path without extension: path}`` of the volume files under ``folder``.

    A plain walk (hidden entries skipped): every volume file here is a label map, also
    in an nnU-Net ``labelsTr`` folder whose images the scans discovery would pair it with.
    """
    from napari_vnet.io.headers import VOLUME_SUFFIXES

    root = Path(folder)
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            low = name.lower()
            ext = next((e for e in VOLUME_SUFFIXES if low.endswith(e)), None)
            if ext is None and is_dicom_seg_file(Path(dirpath) / name):
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


def rows(results: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
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


def write_text(path: Path, text: str) -> None:
    from napari_vnet._atomic import atomic_write_text

    atomic_write_text(path, text, newline="")


def write_csv(path: Path, table: list[dict[str, Any]]) -> None:
    """One row per case and label; names that are not valid UTF-8 (undecodable bytes of
    a file name) are written with those bytes as ``\\xNN``, so the file is UTF-8."""
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in table:
        w.writerow({k: "" if row[k] is None else csv_text(row[k]) for k in CSV_FIELDS})
    write_text(path, buf.getvalue())


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


@dataclass
class FolderScores:
    """The scores of a folder of predictions (:func:`score_folders`)."""

    results: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # case -> why it was not scored
    unpaired_pred: list[str] = field(default_factory=list)
    unpaired_gt: list[str] = field(default_factory=list)
    # label -> number of cases it is absent from, per side ("pred", "gt")
    absent: dict[str, dict[int, int]] = field(default_factory=lambda: {"pred": {}, "gt": {}})

    def summary(self, pred_dir, gt_dir, mapping: dict[int, int]) -> dict[str, Any]:
        """The JSON written for the folder (per label, per case, failed, unpaired)."""
        return {
            MARKER_KEY: MARKER,
            "pred_dir": str(pred_dir),
            "gt_dir": str(gt_dir),
            "map": {str(k): v for k, v in mapping.items()},
            "cases": len(self.results),
            "per_label": summarize(self.results),
            "per_case": {case: r for case, r in self.results},
            "failed": self.failed,
            "unpaired_pred": self.unpaired_pred,
            "unpaired_gt": self.unpaired_gt,
        }


def score_folders(
    pred_dir, gt_dir, *, labels=None, mapping=None, resample=False, on_case=None, threads=None
) -> FolderScores:
    """Score every prediction under ``pred_dir`` that has a reference of the same name
    under ``gt_dir`` (:func:`pair_cases`). A pair that cannot be scored is recorded in
    ``failed``, not fatal; ``on_case(case, result_or_None, error_or_None)`` hears of each.
    ``threads`` as for :func:`score_pair`."""
    from napari_vnet.workflows.threads import use_threads

    pairs, unpaired_pred, unpaired_gt = pair_cases(pred_dir, gt_dir)
    scores = FolderScores(unpaired_pred=unpaired_pred, unpaired_gt=unpaired_gt)
    with use_threads(threads):
        for case, pred_path, gt_path in pairs:
            _score_case(scores, case, pred_path, gt_path, on_case,
                        labels=labels, mapping=mapping, resample=resample)  # fmt: skip
    return scores


def _score_case(scores: FolderScores, case, pred_path, gt_path, on_case, **how) -> None:
    """Score one pair of a folder into ``scores``."""
    from napari_vnet.io import VolumeReadError

    try:
        r = _score_pair(pred_path, gt_path, **how)
    except (EvaluationError, VolumeReadError, FileNotFoundError, OSError) as exc:
        scores.failed[case] = str(exc)
        if on_case is not None:
            on_case(case, None, exc)
        return
    for side in ("pred", "gt"):
        for v in r["absent"][side]:
            scores.absent[side][v] = scores.absent[side].get(v, 0) + 1
    scores.results.append((case, r))
    if on_case is not None:
        on_case(case, r, None)
