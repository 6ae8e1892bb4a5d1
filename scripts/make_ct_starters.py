"""Finish real-CT starter weights for shipping: an honest card, class names and colours,
an evaluation on synthetic second patients.

The networks themselves are trained by ``napari-vnet train`` with every default (the
context plan and the recipe) on the whole shared CT, exactly as the generalisation
benchmark's next-patient protocol trains them
(``python benchmarks/generalisation.py --protocols next-patient --archs unet3d vnet
--keep-weights DIR``). This script then:

* names and colours the classes (TotalSegmentator's label values are kept, so a label
  map of theirs fine-tunes it without renumbering; the vertebrae are merged as 200);
* evaluates on synthetic second patients (``benchmarks/second_patient.py`` seeds 11-14,
  not the benchmark's 1-4) with napari-vnet predict and records Dice per class;
* writes a description that says where the weights come from and what to expect;
* saves into ``src/napari_vnet/weights/<arch>-ct-starter.pt``.

    python scripts/make_ct_starters.py DIR_WITH_TRAINED_WEIGHTS [--seeds 11 12 13 14]
"""

# ruff: noqa: T201  (a command-line tool: it reports on stdout)
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

#: display colours (RGBA in [0, 1]) of the starter classes, close to anatomy atlases'
COLORS = {
    "liver": (0.86, 0.35, 0.25, 1.0), "spleen": (0.62, 0.30, 0.75, 1.0),
    "stomach": (0.95, 0.80, 0.35, 1.0), "aorta": (0.90, 0.10, 0.10, 1.0),
    "inferior_vena_cava": (0.20, 0.35, 0.90, 1.0), "vertebrae": (0.95, 0.95, 0.85, 1.0),
    "spinal_cord": (1.00, 0.95, 0.45, 1.0), "autochthon_left": (0.70, 0.45, 0.40, 1.0),
    "autochthon_right": (0.55, 0.40, 0.35, 1.0), "colon": (0.55, 0.75, 0.35, 1.0),
}  # fmt: skip
ARCH_NAME = {"unet3d": "3D U-Net", "vnet": "V-Net"}


def evaluate(weights: Path, seeds) -> dict:
    import second_patient as sp

    from napari_vnet.inference import predict
    from napari_vnet.metrics import dice_per_class
    from napari_vnet.models import load_checkpoint

    model, card = load_checkpoint(weights, map_location="cpu")
    vol, lab = sp.load_shared_ct()
    merged = np.asarray(lab.array).astype(np.uint8)
    merged[np.isin(merged, sorted(sp.VERTEBRAE))] = 200
    from napari_vnet.io import Volume

    lab = Volume(merged, spacing=vol.spacing, origin=vol.origin, direction=vol.direction)
    values = [c.value for c in card.classes if c.value]
    per_case = {}
    for s in seeds:
        img2, lab2, _ = sp.make_second_patient(vol, lab, s)
        pred = predict(img2, model, card).labels
        d = dice_per_class(pred, np.asarray(lab2.array), values)
        per_case[f"synthetic patient {s}"] = {card.class_names[v]: round(float(d[v]), 3) for v in values}
    classes = list(next(iter(per_case.values())))
    mean = {c: round(float(np.mean([p[c] for p in per_case.values()])), 3) for c in classes}
    return {"data": "synthetic second patients from the shared CT (benchmarks/second_patient.py)",
            "seeds": list(seeds), "dice_per_class": mean, "dice_per_case": per_case,
            "tool": "napari-vnet predict + napari_vnet.metrics.dice_per_class"}  # fmt: skip


def finish(src: Path, arch: str, seeds) -> Path:
    from napari_vnet.models import load_checkpoint, save_checkpoint
    from napari_vnet.models.card import ClassInfo

    model, card = load_checkpoint(src, map_location="cpu")
    card.classes = [
        ClassInfo(c.value, c.name, COLORS.get(c.name) if c.value else None) for c in card.classes
    ]
    ev = evaluate(src, seeds)
    run = card.history.get("run", {})
    card.history["training_data"] = {
        "scan": "one public abdominal CT (20 slices of 2 mm, 512 x 512, contrast-enhanced), "
        "the test reference files of TotalSegmentator (Wasserthal et al., Apache-2.0); "
        "labels are TotalSegmentator's own output, vertebrae merged as 200",
        "script": "benchmarks/generalisation.py --protocols next-patient; "
        "scripts/make_ct_starters.py",
    }
    card.history["evaluation"] = ev
    dice = ", ".join(f"{k} {v:.2f}" for k, v in ev["dice_per_class"].items())
    card.description = (
        f"{ARCH_NAME[arch]} real-CT starter: trained with `napari-vnet train` (default plan: "
        f"{card.spacing[0]:.2g} mm, window {'x'.join(str(p) for p in card.patch_size)}; "
        f"{run.get('iterations', card.history.get('iterations', '?'))} iterations on a CPU) "
        "on ONE public abdominal CT (TotalSegmentator's test scan; its labels). Expect to "
        "fine-tune on your own scans. Dice on synthetic second patients made from that scan "
        f"(another pose, size, slices, field of view, contrast phase): {dice}. Not for "
        "clinical use."
    )
    card.source = {**(card.source or {}), "kind": "real-ct-starter"}
    out = ROOT / "src" / "napari_vnet" / "weights" / f"{arch}-ct-starter.pt"
    save_checkpoint(model, card, out)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB; {dice}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="holds unet3d-ct-starter.pt / vnet-ct-starter.pt")
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14])
    args = ap.parse_args(argv)
    for arch in ("unet3d", "vnet"):
        src = args.folder / f"{arch}-ct-starter.pt"
        if src.exists():
            finish(src, arch, args.seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
