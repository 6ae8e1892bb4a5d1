"""`napari-vnet list`: the shipped weights and the recently used ones, with their cards.

    napari-vnet list
    napari-vnet list --json

One row per weights file: where it comes from (``shipped`` or ``recent``), its name
(what ``--weights`` accepts), architecture, classes, training spacing and patch, and
the number of training iterations its card records. The recent list is the one the
Segment and Fine-tune docks keep (``recent_weights.json`` in
:func:`napari_vnet.user_dirs.config_dir`: ``$NAPARI_VNET_CONFIG_DIR``, else the OS's
settings folder, e.g. ``~/.config/napari-vnet`` on Linux). A file whose card cannot be
read is listed with the reason, never skipped silently. Only cards are read (no network
is built).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

HELP = "list shipped and recently used weights with their model cards"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list")


def recent_weights_paths() -> list[Path]:
    """The recently used weights (newest first) that still exist; [] when none/unreadable."""
    from napari_vnet.user_dirs import read_recent_weights  # the docks' list, per OS

    out: list[Path] = []
    for item in read_recent_weights():
        p = Path(item)
        if p.exists() and p not in out:
            out.append(p)
    return out


def _row(source: str, name: str, path: Path, description: str = "") -> dict[str, Any]:
    from napari_vnet.models import display_name
    from napari_vnet.weights import read_weights_card

    row: dict[str, Any] = {"source": source, "name": name, "path": str(path)}
    try:
        card = read_weights_card(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable card is listed with its reason
        row["error"] = str(exc)
        return row
    history = card.history or {}
    row.update(
        arch=card.arch,
        architecture=display_name(card.arch) if card.arch else "",
        classes={str(c.value): c.name for c in card.classes},
        in_channels=int(card.in_channels),
        spacing=None if card.spacing is None else [float(s) for s in card.spacing],
        patch_size=[int(p) for p in card.patch_size],
        normalization=dict(card.normalization),
        iterations=history.get("iterations"),
        description=card.description or description,
    )
    return row


def list_rows() -> list[dict[str, Any]]:
    """Shipped weights first (by name), then recently used ones not shipped."""
    from napari_vnet.weights import SHIPPED_NAMES, shipped_weights

    rows = []
    shipped = shipped_weights()
    seen = set()
    for name, path in shipped.items():
        rows.append(_row("shipped", name, path, SHIPPED_NAMES.get(name, "")))
        seen.add(path.resolve())
    for path in recent_weights_paths():
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        rows.append(_row("recent", str(path), path))
    return rows


def _fmt(values) -> str:
    return "-" if values is None else "x".join(f"{v:g}" for v in values)


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("source", "name", "architecture", "classes", "spacing mm", "patch", "iters")
    body = []
    for r in rows:
        if "error" in r:
            body.append((r["source"], r["name"], "unreadable: " + r["error"], "", "", "", ""))
            continue
        classes = ", ".join(f"{v}={n}" for v, n in r["classes"].items() if v != "0")
        body.append(
            (
                r["source"],
                r["name"],
                r["architecture"],
                classes if len(classes) <= 48 else classes[:45] + "...",
                _fmt(r["spacing"]),
                _fmt(r["patch_size"]),
                "-" if r["iterations"] is None else str(r["iterations"]),
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
             for row in (head, *body)]  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = list_rows()
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no weights installed and none used recently")
        return 0
    print(_table(rows))
    for r in rows:
        if r.get("description"):
            print(f"  {r['name']}: {r['description']}")
    return 0
