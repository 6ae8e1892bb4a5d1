"""Write napari-vnet's synthetic torso CT phantoms as NIfTI files.

Without arguments this (re)writes the ready-made sample shipped with the package, next to
this script: ``phantom_ct.nii.gz`` (int16 HU), ``phantom_labels.nii.gz`` (uint8) and
``phantom_classes.json`` (label value -> class name and colour). The phantom comes from
:func:`napari_vnet.phantoms.make_phantom` and is deterministic, so re-running it gives
the same voxels.

With ``--out DIR --seeds 0-7,12`` it writes a data set instead (one
``phantom_SEED_ct.nii.gz`` / ``phantom_SEED_labels.nii.gz`` pair per seed, plus
``classes.json``), which is how the shipped weights' training and test phantoms are
made (see ``scripts/train_shipped_weights.sh``).

    python sample_data/make_sample.py
    python sample_data/make_sample.py --out /tmp/phantoms/train --seeds 0-15
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: seed of the ready-made sample; never used to train the shipped weights (0-99)
SAMPLE_SEED = 2026
HERE = Path(__file__).resolve().parent


def parse_seeds(text: str) -> list[int]:
    """``"0-3,10"`` -> ``[0, 1, 2, 3, 10]``."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (int(v) for v in part.split("-", 1))
            if hi < lo:
                raise argparse.ArgumentTypeError(f"empty seed range {part!r}")
            seeds.extend(range(lo, hi + 1))
        else:
            seeds.append(int(part))
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}")
    return seeds


def write_sample(out_dir: Path = HERE, seed: int = SAMPLE_SEED) -> list[Path]:
    """Write the ready-made sample phantom into ``out_dir``; returns the written paths."""
    from napari_vnet.io import write_volume
    from napari_vnet.phantoms import classes_to_json, make_phantom

    image, labels, classes = make_phantom(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    ct = write_volume(image, out_dir / "phantom_ct.nii.gz")
    lab = write_volume(labels, out_dir / "phantom_labels.nii.gz", is_label=True)
    doc = classes_to_json(classes)
    doc.update(
        seed=seed,
        generator="napari_vnet.phantoms.make_phantom",
        shape_zyx=list(image.shape),
        spacing_zyx_mm=[round(float(s), 6) for s in image.spacing],
    )
    js = out_dir / "phantom_classes.json"
    js.write_text(json.dumps(doc, indent=2) + "\n")
    return [Path(ct), Path(lab), js]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write a data set into this folder")
    parser.add_argument("--seeds", type=parse_seeds, help="seeds for --out, e.g. 0-7,12")
    parser.add_argument(
        "--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="grid size (default 48 96 96)"
    )
    args = parser.parse_args(argv)
    if args.out is None:
        if args.seeds or args.shape:
            parser.error("--seeds/--shape need --out (the shipped sample is fixed)")
        for p in write_sample():
            print(p)
        return 0
    if not args.seeds:
        parser.error("--out needs --seeds")
    from napari_vnet.phantoms import write_phantoms

    for ct, lab in write_phantoms(args.out, args.seeds, shape=args.shape):
        print(ct, lab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
