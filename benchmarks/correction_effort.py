"""A simulated user corrects a model's prediction until Dice reaches a target: how much work?

Starting from the prediction of ``--weights`` for one class (``--class``, default liver),
a scripted user repeats: pick a slice (the one with the largest error, or with
``--pick uncertain`` the most uncertain one not yet reviewed, from the prediction's
uncertainty map), correct it with one strategy, until the class Dice against the reference
``--labels`` reaches ``--target`` (0.95) or ``--max-steps`` slices were corrected:

* ``brush``: paint the reference on that slice (the voxels that differ are painted);
* ``brush+fill``: first brush the first and last slice of the organ and every ``--every``-th
  slice between, then "Fill between slices" over the organ's extent; each later
  correction is a key slice and the fill is run again;
* ``scribble+grow``: scribble inside the organ on that slice (its skeleton: the voxels
  painted), "Grow from seeds" within ``--lo..--hi`` HU, fill holes, then brush what is
  still wrong there (a grow that made the slice worse is undone and the slice brushed);
* ``scribble+grow+fill``: the key slices of ``brush+fill`` corrected by scribble + grow;
* ``brush+propagate``: brush the worst slice; every ``--propagate-every``-th slice,
  "Propagate corrections" (a short fine-tune of ``--weights`` on the brushed slices, the
  other slices re-predicted; :mod:`napari_vnet.workflows.propagate`).

Each strategy reports the slices touched, voxels painted, actions (a brushed slice costs
one stroke per connected error region; each tool use one action) and the seconds the
tools computed. Results go to ``--out`` (JSON); the last line printed is one JSON object
with ``strategies`` and ``best_vs_brush`` (``{"voxels": ratio, "slices": ratio}``: the
brush's effort divided by that of the strategy with the fewest painted voxels among
those reaching the target).

    python benchmarks/correction_effort.py            # the shared CT, vnet-phantom, liver
    python benchmarks/correction_effort.py --image I --labels REF --weights W --class spleen
"""

# ruff: noqa: T201  (a command-line tool: it reports on stdout)
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = Path(os.environ.get("NAPARI_VNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
CT = DATA / "ct-dicom-patient-a"
RESULTS = ROOT / "benchmarks" / "results"
#: TotalSegmentator v2 values of the classes the shipped models know
TOTALSEG = {"spleen": 1, "liver": 5, "stomach": 6, "pancreas": 7, "kidneys": (2, 3)}
STRATEGIES = ("brush", "brush+fill", "scribble+grow", "scribble+grow+fill", "brush+propagate")

from napari_vnet.correct import Scope, fill_between, fill_holes, grow_from_seeds  # noqa: E402
from napari_vnet.correct.uncertainty import SliceQueue, slice_scores  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


class User:
    """The state of one simulated correction session (binary masks of the class)."""

    def __init__(self, start, ref, image, spacing, args, uncertainty):
        self.cur = start.astype(np.uint8).copy()
        self.ref = ref
        self.image = image
        self.spacing = spacing
        self.args = args
        self.painted = self.actions = 0
        self.touched: set[int] = set()
        self.keys: set[int] = set()
        self.seconds = 0.0
        self.queue = SliceQueue(slice_scores(uncertainty)) if uncertainty is not None else None

    def dice(self) -> float:
        return dice(self.cur == 1, self.ref)

    def errors(self) -> np.ndarray:
        return ((self.cur == 1) != self.ref).sum(axis=(1, 2))

    def pick(self) -> int | None:
        err = self.errors()
        if self.args.pick == "uncertain" and self.queue is not None:
            while (z := self.queue.next(self.touched)) is not None:
                if err[z] > 0:
                    return z
                self.touched.add(z)  # looked at, nothing wrong: reviewed
        if err.max() == 0:
            return None
        return int(np.argmax(err))

    # ---------------------------------------------------------------- actions
    def brush(self, z: int) -> None:
        wrong = (self.cur[z] == 1) != self.ref[z]
        if wrong.any():
            self.painted += int(wrong.sum())
            self.actions += int(ndimage.label(wrong)[1])
            self.cur[z] = self.ref[z]
        self.touched.add(z)

    def grow(self, z: int) -> None:
        from skimage.morphology import skeletonize

        before = int(((self.cur[z] == 1) != self.ref[z]).sum())
        if not self.ref[z].any():  # nothing to scribble in: erase with the brush
            self.brush(z)
            return
        scribble = np.zeros(self.cur.shape, bool)
        scribble[z] = skeletonize(self.ref[z])
        saved = self.cur[z].copy()
        t0 = time.perf_counter()
        lo, hi, op = self.args.lo, self.args.hi, self.args.opening
        s = Scope.slice_(z)
        grow_from_seeds(self.cur, self.image, 1, s, lo=lo, hi=hi, seeds=scribble, opening=op,
                        replace=True, overwrite=True).apply(self.cur)  # fmt: skip
        fill_holes(self.cur, 1, s).apply(self.cur)
        self.seconds += time.perf_counter() - t0
        self.painted += int(scribble.sum())
        self.actions += 3  # scribble, grow, fill holes
        after = int(((self.cur[z] == 1) != self.ref[z]).sum())
        if after >= before:  # worse than before: undo, then brush
            self.cur[z] = saved
            self.actions += 1
        self.brush(z)

    def propagate(self) -> None:
        """Fine-tune on the slices touched so far (kept as they are), re-predict the rest."""
        from napari_vnet.workflows.propagate import propagate, propagate_config

        t0 = time.perf_counter()
        value = np.uint8(self.args.model_value)
        labels = self.cur.astype(np.uint8) * value
        config = propagate_config(self.args.propagate_iterations, None)
        change, _ = propagate(self.image, labels, sorted(self.touched), config=config,
                              weights=self.args.weights_path, spacing=self.spacing)  # fmt: skip
        change.apply(labels)
        self.cur = (labels == value).astype(np.uint8)
        self.seconds += time.perf_counter() - t0
        self.actions += 1

    def fill(self) -> None:
        zs = np.flatnonzero(self.ref.any(axis=(1, 2)))
        keys = sorted(k for k in self.keys if zs[0] <= k <= zs[-1])
        if len(keys) < 2:
            return
        t0 = time.perf_counter()
        scope = Scope(0, int(zs[0]), int(zs[-1]) + 1)
        fill_between(self.cur, 1, scope, keys=keys, spacing=self.spacing, overwrite=True).apply(
            self.cur
        )
        self.seconds += time.perf_counter() - t0
        self.actions += 1


def run_strategy(name: str, start, ref, image, spacing, args, uncertainty) -> dict:
    user = User(start, ref, image, spacing, args, uncertainty)
    correct = user.grow if "grow" in name else user.brush
    interpolate = "fill" in name
    every = args.propagate_every if "propagate" in name else 0
    d0 = user.dice()
    steps = 0
    if interpolate and user.dice() < args.target:
        zs = np.flatnonzero(ref.any(axis=(1, 2)))
        first, last = int(zs[0]), int(zs[-1])
        for z in sorted({*range(first, last + 1, args.every), last}):
            correct(z)
            user.keys.add(z)
            steps += 1
        user.fill()
    while user.dice() < args.target and steps < args.max_steps:
        z = user.pick()
        if z is None:
            break
        correct(z)
        user.keys.add(z)
        steps += 1
        if interpolate:
            user.fill()
        if every and steps % every == 0 and user.dice() < args.target:
            user.propagate()
    return {
        "slices_touched": len(user.touched),
        "voxels_painted": user.painted,
        "actions": user.actions,
        "compute_seconds": round(user.seconds, 3),
        "dice_start": round(d0, 4),
        "dice_end": round(user.dice(), 4),
        "reached_target": user.dice() >= args.target,
        "steps": steps,
    }


def class_values(args, card) -> tuple[int, tuple[int, ...]]:
    """(the class's value in the model's card, its value(s) in the reference)."""
    name = args.class_name
    hits = [c.value for c in card.classes if c.name.lower() == name.lower()]
    if not hits:
        names = ", ".join(c.name for c in card.classes)
        raise SystemExit(f"the model knows no class {name!r} (it has: {names})")
    if args.ref_value:
        ref = tuple(args.ref_value)
    else:
        table = Path(args.labels).with_name("labels.json")
        found = ()
        if table.is_file():
            names = json.loads(table.read_text())
            found = tuple(int(k) for k, v in names.items() if v == name)
        ref = found or TOTALSEG.get(name)
        ref = (ref,) if isinstance(ref, int) else ref
    if not ref:
        raise SystemExit(f"no reference value for {name!r}: pass --ref-value")
    return int(hits[0]), tuple(int(v) for v in ref)


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--image", default=str(CT / "dicom"))
    ap.add_argument("--labels", default=str(CT / "labels.nii.gz"))
    ap.add_argument("--weights", default="vnet-phantom")
    ap.add_argument("--class", dest="class_name", default="liver")
    ap.add_argument("--ref-value", type=int, nargs="+", help="the class's value(s) in REF")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--max-steps", type=int, default=None, help="default: 3 x slices")
    ap.add_argument("--every", type=int, default=4, help="key slice spacing (brush+fill)")
    ap.add_argument("--pick", choices=("error", "uncertain"), default="error")
    ap.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    ap.add_argument(
        "--propagate-every",
        type=int,
        default=3,
        help="brush+propagate: propagate after every N-th brushed slice",
    )
    ap.add_argument(
        "--propagate-iterations",
        type=int,
        default=None,
        help="brush+propagate: fine-tune iterations (default: the dock's)",
    )
    ap.add_argument("--lo", type=float, default=40.0, help="grow: lowest HU")
    ap.add_argument("--hi", type=float, default=200.0, help="grow: highest HU")
    ap.add_argument("--opening", type=int, default=2, help="grow: leak barrier (voxels)")
    ap.add_argument("--out", default=str(RESULTS / "correction_effort.json"))
    return ap.parse_args(argv)


def read_case(args):
    """``--image`` and its reference ``--labels`` on the image's grid."""
    from napari_vnet.io import read_volume
    from napari_vnet.training import labels_on_image_grid

    image = read_volume(args.image)
    return image, labels_on_image_grid(image, read_volume(args.labels))


def main(argv=None) -> int:
    args = parse(argv)
    from napari_vnet.inference import predict
    from napari_vnet.weights import load_weights, resolve_weights

    image, ref_all = read_case(args)
    args.weights_path = str(resolve_weights(args.weights))
    model, card = load_weights(args.weights_path, map_location="cpu")
    model_value, ref_values = class_values(args, card)
    args.model_value = model_value
    if args.propagate_iterations is None:
        from napari_vnet.workflows.propagate import ITERATIONS

        args.propagate_iterations = ITERATIONS
    ref = np.isin(ref_all, ref_values)
    args.max_steps = args.max_steps or 3 * image.shape[0]
    t0 = time.perf_counter()
    pred = predict(image, model, card, device="cpu", return_uncertainty=True)
    predict_seconds = time.perf_counter() - t0
    start = pred.labels == model_value
    arr = np.asarray(image.array)
    spacing = tuple(float(s) for s in image.spacing)
    strategies = {}
    for name in args.strategies:
        strategies[name] = run_strategy(name, start, ref, arr, spacing, args, pred.uncertainty)
        print(f"{name}: {json.dumps(strategies[name])}", flush=True)
    summary = summarise(strategies)
    result = {
        "data": {"image": str(args.image), "labels": str(args.labels), "shape": list(arr.shape),
                 "spacing": list(spacing), "class": args.class_name,
                 "reference_voxels": int(ref.sum()),
                 "reference_slices": int(ref.any(axis=(1, 2)).sum())},
        "model": {"weights": str(args.weights), "arch": card.arch,
                  "predict_seconds": round(predict_seconds, 2),
                  "dice_start": round(dice(start, ref), 4)},
        "settings": {k: v for k, v in vars(args).items() if k not in ("image", "labels")},
        "strategies": strategies,
        "best_vs_brush": summary,
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"strategies": strategies, "best_vs_brush": summary}))
    return 0


def summarise(strategies: dict) -> dict:
    brush = strategies.get("brush")
    ok = {k: v for k, v in strategies.items() if v["reached_target"] and k != "brush"}
    if not ok or not brush or not brush["reached_target"]:
        return {"voxels": None, "slices": None, "best": None}
    best = min(ok, key=lambda k: ok[k]["voxels_painted"])
    b = ok[best]
    return {
        "voxels": round(brush["voxels_painted"] / max(1, b["voxels_painted"]), 2),
        "slices": round(brush["slices_touched"] / max(1, b["slices_touched"]), 2),
        "best": best,
    }


if __name__ == "__main__":
    raise SystemExit(main())
