"""Finish a shipped weights file: set its inference patch, then record its evaluation.

Used by ``scripts/train_shipped_weights.sh`` after ``napari-vnet train``:

    python scripts/shipped_weights_card.py prepare W.pt --patch-size 48 96 96
    napari-vnet predict ... / napari-vnet evaluate ... --json > EVAL.json   (per phantom)
    python scripts/shipped_weights_card.py record W.pt --eval EVAL*.json \
        --train-seeds 0-15 --test-seeds 100-104 --name "V-Net"

``prepare`` sets the card's recommended sliding-window patch (the networks accept any
size; a larger window means fewer, cheaper passes) and drops the optimiser/resume extras.
``record`` writes the training data, classes and the per-class Dice on unseen phantoms
into the card's description and history. Both re-save atomically through
:func:`napari_vnet.models.save_checkpoint` (weights are loaded with ``weights_only``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _say(text: str, stream=None) -> None:
    (stream or sys.stdout).write(text + "\n")


def _resave(path: Path, card_change) -> None:
    from napari_vnet.models import load_checkpoint, load_discriminator, save_checkpoint

    model, card = load_checkpoint(path)
    disc = load_discriminator(path)
    card_change(card)
    save_checkpoint(model, card, path, discriminator=disc)


def _last_json(path: Path) -> dict:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip().startswith("{")]
    if not lines:
        raise SystemExit(f"{path}: no JSON summary line (run evaluate with --json)")
    return json.loads(lines[-1])


def prepare(args) -> int:
    def change(card):
        card.patch_size = tuple(args.patch_size)

    _resave(args.weights, change)
    _say(f"{args.weights}: inference patch {tuple(args.patch_size)}")
    return 0


def record(args) -> int:
    evals = [_last_json(p) for p in args.eval]
    per_class: dict[str, list[float]] = {}
    for ev in evals:
        for value, dice in ev["dice"].items():
            per_class.setdefault(value, []).append(float(dice))
    mean_class = {
        v: sum(d) / len(d) for v, d in sorted(per_class.items(), key=lambda kv: int(kv[0]))
    }
    per_case = [sum(ev["dice"].values()) / len(ev["dice"]) for ev in evals]
    mean_fg = sum(per_case) / len(per_case)

    def change(card):
        names = card.class_names
        dice_text = ", ".join(f"{names.get(int(v), v)} {d:.3f}" for v, d in mean_class.items())
        card.description = (
            f"{args.name} trained with `napari-vnet train` on {args.n_train} synthetic torso CT "
            f"phantoms (napari_vnet.phantoms.make_phantom seeds {args.train_seeds}; "
            "contrast-enhanced HU, anisotropic voxels); classes "
            + ", ".join(c.name for c in card.classes[1:])
            + f". Mean foreground Dice {mean_fg:.3f} on {len(evals)} unseen phantoms "
            f"(seeds {args.test_seeds}; napari-vnet predict + evaluate): {dice_text}. "
            "For demonstration on synthetic data only, not for clinical use."
        )
        card.history["training_data"] = {
            "generator": "napari_vnet.phantoms.make_phantom",
            "seeds": args.train_seeds,
            "cases": args.n_train,
            "script": "scripts/train_shipped_weights.sh",
        }
        card.history["evaluation"] = {
            "data": "unseen synthetic phantoms",
            "seeds": args.test_seeds,
            "cases": len(evals),
            "mean_foreground_dice": round(mean_fg, 4),
            "dice_per_class": {
                names.get(int(v), str(v)): round(d, 4) for v, d in mean_class.items()
            },
            "dice_per_case": [round(d, 4) for d in per_case],
            "tool": "napari-vnet predict + napari-vnet evaluate",
        }

    _resave(args.weights, change)
    _say(f"{args.weights}: mean foreground Dice {mean_fg:.4f} ({len(evals)} phantoms)")
    for v, d in mean_class.items():
        _say(f"  label {v}: {d:.4f}")
    if args.min_dice is not None and mean_fg < args.min_dice:
        _say(f"below the target {args.min_dice}", sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="set the inference patch, drop training extras")
    p.add_argument("weights", type=Path)
    p.add_argument("--patch-size", type=int, nargs=3, required=True, metavar=("Z", "Y", "X"))
    p.set_defaults(func=prepare)
    r = sub.add_parser("record", help="write training data and Dice into the card")
    r.add_argument("weights", type=Path)
    r.add_argument("--eval", type=Path, nargs="+", required=True, help="evaluate --json outputs")
    r.add_argument("--name", required=True, help="architecture name for the description")
    r.add_argument("--train-seeds", required=True)
    r.add_argument("--n-train", type=int, required=True)
    r.add_argument("--test-seeds", required=True)
    r.add_argument("--min-dice", type=float, help="exit 1 when the mean is below this")
    r.set_defaults(func=record)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
