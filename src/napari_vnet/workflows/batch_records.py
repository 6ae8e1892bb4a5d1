"""What a batch run wrote, and with which weights: per-case records beside the outputs.

Each case of ``napari-vnet predict INPUT_DIR --out OUT_DIR`` gets a small JSON record,
``<stem>_provenance.json`` beside its label map, written before the label map
(``"complete": false``) and again after it (``"complete": true``). It names the weights
that made the outputs (path and :func:`weights_fingerprint`, a SHA-256 of the network's
tensors and of the card fields that shape a prediction) and the output files. It is
what lets a rerun

* skip a case only when its outputs were made by the same weights, and refuse (unless
  ``--overwrite``) outputs made by other weights or not by napari-vnet at all
  (:func:`output_conflicts`);
* tell its own outputs from inputs when OUT is (or lies inside) INPUT
  (:func:`recorded_outputs`), and never name an output after an input
  (:func:`place_outputs`: in place, every output name ends in ``_seg``).

:func:`csv_text` makes any text - file names that are not valid UTF-8 included - safe
for a UTF-8 CSV file (undecodable bytes become ``\\xNN``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "IN_PLACE_SUFFIX",
    "RECORD_SUFFIX",
    "csv_text",
    "output_conflicts",
    "place_outputs",
    "read_record",
    "record_path",
    "recorded_outputs",
    "weights_fingerprint",
    "write_record",
]

RECORD_SUFFIX = "_provenance.json"
RECORD_MARKER = "napari-vnet predict output record"
IN_PLACE_SUFFIX = "_seg"
_MAX_RECORD_BYTES = 1 << 20
# card fields that do not change a prediction (where the weights came from, notes)
_CARD_NOT_HASHED = ("history", "description", "source")


def csv_text(value: Any) -> Any:
    """``value`` unchanged unless it is text that does not encode as UTF-8 (a file name
    with undecodable bytes, PEP 383): then those bytes are written as ``\\xNN``."""
    if not isinstance(value, str):
        return value
    from napari_vnet.io.paths import printable

    try:
        return printable(value)
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return value.encode("utf-8", "backslashreplace").decode("ascii")


def weights_fingerprint(model, card) -> str:
    """SHA-256 of the network's state (names, dtypes, shapes, bytes) and of the card
    fields that shape a prediction; the same weights copied elsewhere keep it."""
    import torch

    h = hashlib.sha256()
    fields = {k: v for k, v in card.to_dict().items() if k not in _CARD_NOT_HASHED}
    h.update(json.dumps(fields, sort_keys=True, default=str).encode("utf-8", "backslashreplace"))
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode("utf-8", "backslashreplace"))
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


# ------------------------------------------------------------------------- records


def record_path(labels: Path) -> Path:
    """The record of the case whose label map is ``labels``."""
    from napari_vnet.io.headers import VOLUME_SUFFIXES, known_suffix

    ext = known_suffix(labels.name, VOLUME_SUFFIXES)
    stem = labels.name[: len(labels.name) - len(ext)] if ext else labels.name
    return labels.with_name(stem + RECORD_SUFFIX)


def write_record(plan, case, weights: dict[str, Any], *, complete: bool, **extra) -> Path:
    """Write (atomically) the record of ``case``'s outputs ``plan``."""
    from napari_vnet._atomic import atomic_open

    path = record_path(plan.labels)
    data = {
        "napari_vnet": RECORD_MARKER,
        "version": 1,
        "case": case.stem,
        "key": case.key,
        "input": case.path,
        **({"channel_files": list(case.channels)} if len(case.channels) > 1 else {}),
        **weights,
        "outputs": [p.name for p in plan.files()],
        "complete": bool(complete),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as fh:
        json.dump(data, fh, indent=1)
    return path


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path`` (a dict carrying the marker), or None."""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_RECORD_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("napari_vnet") != RECORD_MARKER:
        return None
    return data


def _norm(path: str | os.PathLike) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(os.fspath(path)))).lower()


def recorded_outputs(folder: str | os.PathLike[str]) -> tuple[set[str], set[str]]:
    """``(output files, DICOM-SEG series UIDs)`` named by the records under ``folder``
    (normalised paths): outputs of earlier runs, never inputs."""
    files: set[str] = set()
    uids: set[str] = set()
    for dirpath, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.endswith(RECORD_SUFFIX):
                continue
            record = read_record(Path(dirpath) / name)
            if record is None:
                continue
            for out in record.get("outputs") or []:
                if isinstance(out, str) and out and os.path.basename(out) == out:
                    files.add(_norm(os.path.join(dirpath, out)))
            if isinstance(record.get("series_uid"), str):
                uids.add(record["series_uid"])
    return files, uids


# ------------------------------------------------------------------- output names


def place_outputs(cases: Sequence, in_dir: Path, out_dir: Path, fmt: str) -> None:
    """Give each case an output name (``case.stem``, changed in place) whose label map
    is neither an input of the run nor another case's output. Writing into the input
    folder itself, every name ends in ``_seg`` (``ct.nii.gz`` -> ``ct_seg.nii.gz``);
    there a name held by an existing file that is no output of an earlier run (say the
    user's own ``ct_seg.nii.gz``) gets another ``_seg``."""
    from napari_vnet.workflows.batch import plan_outputs

    in_place = _norm(in_dir) == _norm(out_dir)
    ours = recorded_outputs(out_dir)[0] if in_place else set()
    taken = {_norm(f) for c in cases for f in c.files}
    for case in cases:
        if case.error:
            continue
        if in_place:
            case.stem += IN_PLACE_SUFFIX
        while True:
            labels = plan_outputs(case, out_dir, fmt).labels
            key = _norm(labels)
            foreign = in_place and key not in ours and os.path.lexists(labels)
            if key not in taken and not foreign:
                break
            case.stem += IN_PLACE_SUFFIX
        taken.add(key)


def output_conflicts(plans: Iterable[tuple[Any, Any]], fingerprint: str) -> list[tuple[str, str]]:
    """``(case, why)`` for the cases whose label map exists but was made by other
    weights, or not by napari-vnet predict (no record): a rerun without ``--overwrite``
    must neither skip them (the summary would name the wrong weights) nor replace them."""
    out = []
    for case, plan in plans:
        if case.error or not plan.labels.exists():
            continue
        why = record_mismatch(plan, fingerprint)
        if why:
            out.append((case.stem, why))
    return out


def record_mismatch(plan, fingerprint: str) -> str | None:
    """Why ``plan``'s existing outputs cannot count as made by ``fingerprint``; None
    when they can."""
    from napari_vnet.io.paths import printable

    record = read_record(record_path(plan.labels))
    if record is None:
        return f"{printable(plan.labels)} exists and was not written by napari-vnet predict"
    if record.get("weights_sha256") != fingerprint:
        return (
            f"{printable(plan.labels)} was made by other weights "
            f"({printable(str(record.get('weights', '?')))})"
        )
    return None
