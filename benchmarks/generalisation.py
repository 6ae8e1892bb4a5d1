"""Learn from one patient, work on the next: napari-vnet's default training against nnU-Net
v2's own plan, scored on data that is not the training scan's neighbouring slices.

Protocols (the shared real CT is the only labelled scan; see ``second_patient.py``):

* ``next-patient``: train on the whole shared CT; test on synthetic second patients made
  from it (rotated up to 15 degrees, scaled 0.85-1.15, 3-5 mm slices, another field of
  view, organ-wise contrast-phase offsets of -30 to -60 HU, another kernel, noise).
* ``lower-slab``: train on z slices 0-13 of the shared CT; both tools segment the whole
  image and are scored on slices 14-19.

Tools, trained at the same time (``--threads`` torch threads each, so that the machine's
load falls on all alike) for ``--minutes``:

* ``napari-vnet`` (and ``--archs``): ``napari-vnet train --arch A --classes ...
  --minutes M`` with every other setting at its default (the context plan, the recipe);
* ``nnU-Net (same time)``: nnU-Net v2's own planner, preprocessing and ``nnUNetTrainer``
  with its own patch and topology, features shrunk to 8, 16, 32, 64, 64, ... (``--width``);
* ``nnU-Net (same samples)``: the same, afterwards, for as many training samples
  (iterations x batch) as napari-vnet's U-Net saw, capped at ``--max-minutes``.

Classes: liver, spleen, stomach, aorta, inferior vena cava, vertebrae (merged), spinal
cord, autochthon muscles left/right, colon (``--classes`` for fewer); Dice and HD95 (mm)
per class, means over the test cases. ``--keep-weights DIR`` keeps napari-vnet's
next-patient models (the real-CT starter weights are trained this way).

    python benchmarks/generalisation.py [--minutes 15] [--protocols next-patient lower-slab]
        [--archs unet3d vnet] [--threads 1] [--seeds 1 2 3 4] [--no-nnunet]
        [--variant LABEL ARCH OPTIONS ...]

Writes ``benchmarks/results/generalisation.json`` (after each protocol) and prints a table.
"""

# ruff: noqa: T201  (a command-line benchmark: it reports on stdout)
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import second_patient as sp  # noqa: E402
import training_vs_nnunet as tvn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VERTEBRAE_VALUE = 200
#: the structures of the shared CT with enough voxels (TotalSegmentator values; the
#: vertebrae merged into one class)
CLASSES = {
    5: "liver", 1: "spleen", 6: "stomach", 52: "aorta", 63: "inferior_vena_cava",
    VERTEBRAE_VALUE: "vertebrae", 79: "spinal_cord", 86: "autochthon_left",
    87: "autochthon_right", 20: "colon",
}  # fmt: skip
SCORED = ["liver", "spleen", "stomach", "aorta", "vertebrae"]
TRAIN_SLAB = (0, 14)
TEST_SLAB = (14, 20)


def stage(work: Path, seeds, classes: dict) -> dict:
    """The CT and its labels (vertebrae merged, other values kept for the phase
    augmentation) as NIfTI, its slabs, and the synthetic patients."""
    from napari_vnet.io import Volume, write_volume

    vol, lab = sp.load_shared_ct()
    a = np.asarray(lab.array).astype(np.uint8)
    a[np.isin(a, sorted(sp.VERTEBRAE))] = VERTEBRAE_VALUE
    merged = Volume(a, spacing=vol.spacing, origin=vol.origin, direction=vol.direction)
    d = work / "data"
    d.mkdir(parents=True, exist_ok=True)
    img16 = Volume(np.asarray(vol.array, np.int16), spacing=vol.spacing, origin=vol.origin,
                   direction=vol.direction)  # fmt: skip
    write_volume(img16, d / "ct.nii.gz")
    write_volume(merged, d / "ct_labels.nii.gz")
    tvn._slab(d / "ct.nii.gz", d / "ct_labels.nii.gz", *TRAIN_SLAB, d / "upper.nii.gz",
              d / "upper_labels.nii.gz")  # fmt: skip
    patients, params = [], {}
    for s in seeds:
        img2, lab2, p = sp.make_second_patient(vol, merged, s)
        write_volume(img2, d / f"patient{s}.nii.gz")
        write_volume(lab2, d / f"patient{s}_labels.nii.gz")
        patients.append((d / f"patient{s}.nii.gz", d / f"patient{s}_labels.nii.gz"))
        params[str(s)] = {k: v for k, v in p.items() if k != "phase_offsets_hu"}
        params[str(s)]["shape"] = list(img2.shape)
        params[str(s)]["spacing"] = [round(v, 3) for v in img2.spacing]
    return {
        "next-patient": {"train": [(d / "ct.nii.gz", d / "ct_labels.nii.gz")],
                         "test": patients, "valid_z": None},
        "lower-slab": {"train": [(d / "upper.nii.gz", d / "upper_labels.nii.gz")],
                       "test": [(d / "ct.nii.gz", d / "ct_labels.nii.gz")],
                       "valid_z": np.arange(*TEST_SLAB)},
        "patients": params,
    }  # fmt: skip


def predict_timed(weights: Path, image: Path):
    """Labels of ``image`` by napari-vnet's ``predict`` and its seconds and windows."""
    from napari_vnet.inference import predict
    from napari_vnet.io import read_volume
    from napari_vnet.weights import load_weights

    model, card = load_weights(weights, map_location="cpu")
    vol = read_volume(image)
    t = time.perf_counter()
    result = predict(vol, model, card)
    seconds = time.perf_counter() - t
    return result.labels, {"seconds": round(seconds, 2), "windows": int(result.windows)}


def clinical_size_timing(weights: Path) -> dict:
    """Seconds and windows of ``predict`` on a 300 x 512 x 512 CT (the shared CT's slices
    repeated along z at 1 mm; the engine's cost depends on the grid, not the anatomy)."""
    from napari_vnet.inference import predict
    from napari_vnet.io import Volume
    from napari_vnet.weights import load_weights

    vol, _ = sp.load_shared_ct()
    reps = np.resize(np.arange(vol.shape[0]), 300)
    big = Volume(np.asarray(vol.array)[reps], spacing=(1.0, *vol.spacing[1:]),
                 origin=vol.origin, direction=vol.direction)  # fmt: skip
    model, card = load_weights(weights, map_location="cpu")
    t = time.perf_counter()
    result = predict(big, model, card)
    return {"shape": list(big.shape), "seconds": round(time.perf_counter() - t, 1),
            "windows": int(result.windows), "model_spacing": list(card.spacing),
            "window": list(card.patch_size)}  # fmt: skip


def run_protocol(key, data, args, work, env, did) -> dict:
    classes = {v: n for v, n in CLASSES.items() if n in args.classes}
    train, tests, valid_z = data["train"], data["test"], data["valid_z"]
    record = {"runs": {}, "minutes": args.minutes, "threads": args.threads,
              "load_before": os.getloadavg(), "classes": classes}  # fmt: skip
    started = {}
    if not args.no_nnunet:
        name = tvn.nnunet_dataset(env, did, key.replace("-", ""), train, classes)
        prepared = tvn.prepare_nnunet(env, did, name, width=args.width, patch=None)
        started["nnU-Net (same time)"] = tvn.start_nnunet(
            env, did, name, args.minutes, [t[0] for t in tests], work, threads=args.threads,
            tag="_time",
        )  # fmt: skip
    variants = [(arch, arch, []) for arch in args.archs]
    variants += [(label, arch, extra.split()) for label, arch, extra in args.variant or []]
    for label, arch, extra in variants:
        out = work / f"{key}_{label}.pt"
        started[f"napari-vnet {label}"] = tvn.start_ours(
            arch, None, train, args.minutes, out, classes, threads=args.threads,
            val_fraction=args.val_fraction, extra=extra,
        )  # fmt: skip
    preds, timing = {}, {}
    for tool, handle in started.items():
        if tool.startswith("nnU-Net"):
            nn = tvn.finish_nnunet(handle, prepared)
            preds[tool] = [tvn.read_nnunet_pred(p, classes) for p in nn["predictions"]]
            record["runs"][tool] = {k: nn[k] for k in ("iterations", "seconds", "plans")}
            continue
        summary = tvn.finish_ours(handle)
        label = tool.split()[-1]
        weights = work / f"{key}_{label}.pt"
        outs = [predict_timed(weights, t[0]) for t in tests]
        preds[tool] = [o[0] for o in outs]
        timing[tool] = [o[1] for o in outs]
        record["runs"][tool] = {
            "iterations": summary.get("iterations"), "seconds": summary.get("seconds"),
            "batch_size": 2, "patch_size": summary.get("patch_size"),
            "spacing": summary.get("spacing"), "predict": timing[tool],
            "options": next((v[2] for v in variants if v[0] == label), []),
        }  # fmt: skip
        if key == "next-patient" and not args.no_big:
            record["runs"][tool]["predict_300x512x512"] = clinical_size_timing(weights)
        if args.keep_weights and key == "next-patient" and label in args.archs:
            dest = Path(args.keep_weights)
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(weights, dest / f"{label}-ct-starter.pt")
    ours = record["runs"].get("napari-vnet unet3d")
    if not args.no_nnunet and ours:
        samples = int(ours["iterations"]) * 2
        nn_batch = int(prepared["plans"].get("batch_size") or 2)
        cap_its = max(1, samples // nn_batch)
        handle = tvn.start_nnunet(
            env, did, name, args.max_minutes, [t[0] for t in tests], work,
            threads=args.threads, max_iterations=cap_its, tag="_samples",
        )  # fmt: skip
        nn = tvn.finish_nnunet(handle, prepared)
        tool = "nnU-Net (same samples)"
        preds[tool] = [tvn.read_nnunet_pred(p, classes) for p in nn["predictions"]]
        record["runs"][tool] = {k: nn[k] for k in ("iterations", "seconds", "plans")}
        record["runs"][tool]["samples_wanted"] = samples
        record["runs"][tool]["capped_at_minutes"] = nn["iterations"] < cap_its
    record["load_after"] = os.getloadavg()
    scored = {v: n for v, n in classes.items() if n in SCORED}
    from napari_vnet.io import read_volume

    refs = [read_volume(t[1]) for t in tests]  # each reference read once
    record["per_case"] = {
        tool: [
            tvn.score(p, np.asarray(ref.array), ref.spacing, scored, valid_z)
            for p, ref in zip(maps, refs, strict=True)
        ]
        for tool, maps in preds.items()
    }
    record["scores"] = {tool: tvn.pooled(sc) for tool, sc in record["per_case"].items()}
    return record


def table(results: dict) -> str:
    lines = ["| protocol | tool | iterations | " + " | ".join(SCORED) + " |",
             "|---|---|---|" + "---|" * len(SCORED)]  # fmt: skip
    for key, rec in results["protocols"].items():
        for tool, sc in rec["scores"].items():
            cells = []
            for cls in SCORED:
                v = sc.get(cls) or {}
                d, h = v.get("dice"), v.get("hd95")
                cells.append("-" if d is None else f"{d:.3f} / {'-' if h is None else h}")
            its = rec["runs"][tool]["iterations"]
            lines.append(f"| {key} | {tool} | {its} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--max-minutes", type=float, default=30.0,
                   help="cap of the same-samples nnU-Net run")  # fmt: skip
    p.add_argument("--protocols", nargs="+", default=["next-patient", "lower-slab"])
    p.add_argument("--archs", nargs="+", default=["unet3d"])
    p.add_argument("--classes", nargs="+", default=list(CLASSES.values()))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width", type=int, default=8, help="nnU-Net's features (W, 2W, ...)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--no-nnunet", action="store_true")
    p.add_argument("--no-big", action="store_true", help="skip the 300 x 512 x 512 timing")
    p.add_argument(
        "--variant", nargs=3, action="append", metavar=("LABEL", "ARCH", "OPTIONS"),
        help="one more napari-vnet training with other train options in one string, e.g. "
        "s3 unet3d '--spacing 3 3 3 --patch-size 8 128 128' (the sweep); repeatable",
    )  # fmt: skip
    p.add_argument("--keep-weights", default=None)
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=str(RESULTS / "generalisation.json"))
    p.add_argument("--keep", action="store_true", help="keep other protocols already in --out")
    args = p.parse_args(argv)
    if not sp.CT.exists():
        print(f"skipped: {sp.CT} is not there (the shared data)")
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="vnet_generalisation_"))
    env = tvn.nnunet_env(work)
    data = stage(work, args.seeds, CLASSES)
    results = {"minutes_per_run": args.minutes, "threads": args.threads, "cpus": os.cpu_count(),
               "archs": args.archs, "patients": data["patients"], "protocols": {},
               "native_bf16": _native_bf16()}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.keep and out.exists():  # protocols run separately, one file
        results["protocols"] = json.loads(out.read_text()).get("protocols", {})
    for key in args.protocols:
        print(f"protocol {key}", flush=True)
        did = 701 + args.protocols.index(key) + (10 if key == "lower-slab" else 0)
        results["protocols"][key] = run_protocol(key, data[key], args, work, env, did)
        results["table"] = table(results)
        out.write_text(json.dumps(results, indent=2, default=str))
        print(table(results), flush=True)
    print(f"wrote {out} (work folder {work})")
    return 0


def _native_bf16() -> bool:
    try:
        from napari_vnet.runtime import cpu_has_native_bf16

        return bool(cpu_has_native_bf16())
    except Exception:  # noqa: BLE001 - informative only
        return False


if __name__ == "__main__":
    sys.exit(main())
