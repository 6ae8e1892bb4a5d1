"""fp32 CPU runtimes behind the same engine: torch, torch's oneDNN options, ONNX Runtime, OpenVINO.

Every backend runs the *same network* in napari-vnet's own sliding window
(:func:`napari_vnet.inference.predict`, amp off: float32 forced, also on a CPU with
native bf16; no test-time augmentation; overlap 0.5) on the same volume, so the seconds
differ only by what runs the network:

* ``torch``: the engine as shipped (eager, oneDNN convolutions, channels-last 3-D);
* ``torch-contiguous``: the same with channels-last off (``NAPARI_VNET_CHANNELS_LAST=0``);
* ``torch-jit-frozen``: the network traced, ``torch.jit.freeze`` and
  ``torch.jit.optimize_for_inference`` (oneDNN weight prepacking, conv+relu fusion);
* ``torch-compile``: ``torch.compile`` (inductor, C++ on the CPU; opt-in with
  ``--backends``: its first call compiles for a minute or more per batch shape here);
* ``onnxruntime`` / ``openvino``: ``predict --backend`` 's conversion
  (:func:`napari_vnet.inference.backends.runtime_model`: the network as ONNX, fp32, the
  runtime's intra-op threads = torch's).

Networks: the shipped ``vnet-phantom``, ``unet3d-phantom``, ``vox2vox-phantom`` and
``unet3d-ct-starter`` and the tiny nnU-Net test folder (two folds). Volume: ``ct``
(default) the shared 20 x 512 x 512 abdominal CT (``../shared/data``), resampled to each
card's spacing as in use; ``synthetic`` the shipped phantom CT zoomed to 128 x 256 x 256
with CT noise (as ``benchmarks/inference.py`` makes it), given at each card's own spacing
so that no resampling hides the network's time (many more windows).

Each backend is converted/built and run once before the clock (that time is recorded as
``setup_s``); then ``--repeats`` rounds run every backend once, in an order rotated each
round, with the load average before and after each run. Agreement: per-class Dice of each
backend's labels with torch's (minimum over the classes present).

    python benchmarks/backends.py                          # all networks, default backends
    python benchmarks/backends.py --networks unet3d-phantom --backends torch,torch-compile

Prints a table and writes ``benchmarks/results/backends.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NNUNET = ROOT / "tests/data/nnunet/Dataset901_TinyPhantom/nnUNetTrainer__nnUNetPlans__3d_fullres"
SHARED_CT = ROOT.parent / "shared" / "data" / "ct-dicom-patient-a" / "dicom"
NETWORKS = ("vnet-phantom", "unet3d-phantom", "vox2vox-phantom", "unet3d-ct-starter", "nnunet")
DEFAULT_BACKENDS = ("torch", "torch-contiguous", "torch-jit-frozen", "onnxruntime", "openvino")
BACKENDS = (*DEFAULT_BACKENDS, "torch-compile")
SYNTHETIC_SHAPE = (128, 256, 256)


def volume(case: str):
    """``(array (z, y, x), spacing or None)``: None = each card's own spacing."""
    if case == "ct":
        from napari_vnet.io import read_volume

        vol = read_volume(SHARED_CT)
        return np.asarray(vol.array), tuple(float(s) for s in vol.spacing)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inference import volume_path

    return np.load(volume_path(SYNTHETIC_SHAPE)), None


@contextlib.contextmanager
def channels_last(on: bool):
    before = os.environ.get("NAPARI_VNET_CHANNELS_LAST")
    os.environ["NAPARI_VNET_CHANNELS_LAST"] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("NAPARI_VNET_CHANNELS_LAST", None)
        else:
            os.environ["NAPARI_VNET_CHANNELS_LAST"] = before


class Called:
    """A frozen TorchScript function where the engine expects a module (eval/to are no-ops:
    it holds no parameters any more)."""

    training = False

    def __init__(self, fn) -> None:
        self.fn = fn

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def to(self, *args, **kwargs):
        return self

    def __call__(self, x):
        return self.fn(x)


def prepare_backend(name: str, model, card):
    """The network as backend ``name`` runs it (a module for the engine)."""
    import torch

    if name in ("onnxruntime", "openvino"):
        from napari_vnet.inference.backends import runtime_model

        return runtime_model(model, card, name, torch.device("cpu"))
    if name == "torch-jit-frozen":
        from napari_vnet.inference.backend_export import torchscript_module

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            frozen = torch.jit.freeze(torchscript_module(model, card).eval())
            return Called(torch.jit.optimize_for_inference(frozen))
    if name == "torch-compile":
        return torch.compile(model.eval(), dynamic=False)
    return model


def run_once(name: str, runnable, card, image, spacing) -> tuple[float, np.ndarray]:
    from napari_vnet.inference import predict

    with channels_last(name != "torch-contiguous"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        t0 = time.perf_counter()
        pred = predict(image, runnable, card, spacing=spacing or card.spacing, device="cpu",
                       amp=False, tta=False, overlap=0.5)  # fmt: skip
        return time.perf_counter() - t0, pred.labels


def min_dice(labels: np.ndarray, ref: np.ndarray) -> float:
    from napari_vnet.metrics import dice_per_class

    values = [int(v) for v in np.unique(ref)]
    return float(min(dice_per_class(labels, ref, values).values()))


def bench_network(net: str, backends, image, spacing, repeats: int) -> list[dict]:
    from napari_vnet.weights import load_weights, resolve_weights

    model, card = load_weights(NNUNET if net == "nnunet" else resolve_weights(net))
    model.eval()
    ready, rows = {}, {}
    for name in backends:  # convert / build, and one run before the clock
        t0 = time.perf_counter()
        try:
            runnable = prepare_backend(name, model, card)
            _, labels = run_once(name, runnable, card, image, spacing)
        except Exception as exc:  # noqa: BLE001 - a backend that fails is a result
            rows[name] = {"network": net, "backend": name, "error": f"{type(exc).__name__}: {exc}"}
            print(f"  {net} {name}: failed ({exc})", file=sys.stderr)
            continue
        ready[name] = runnable
        rows[name] = {"network": net, "backend": name, "setup_s": time.perf_counter() - t0,
                      "seconds": [], "load": [], "labels": labels}  # fmt: skip
    order = list(ready)
    for rep in range(repeats):
        k = rep % max(1, len(order))
        for name in order[k:] + order[:k]:
            load0 = os.getloadavg()[0]
            seconds, labels = run_once(name, ready[name], card, image, spacing)
            rows[name]["seconds"].append(seconds)
            rows[name]["load"].append([load0, os.getloadavg()[0]])
            rows[name]["labels"] = labels
            print(f"  {net} {name} round {rep + 1}: {seconds:.2f} s", file=sys.stderr)
    return _summarise(list(rows.values()), card)


def _summarise(rows: list[dict], card) -> list[dict]:
    ref = next((r["labels"] for r in rows if r["backend"] == "torch" and "labels" in r), None)
    torch_s = next((min(r["seconds"]) for r in rows if r["backend"] == "torch" and r.get("seconds")), None)  # fmt: skip
    for row in rows:
        labels = row.pop("labels", None)
        if not row.get("seconds"):
            continue
        row["best_s"] = min(row["seconds"])
        row["median_s"] = float(np.median(row["seconds"]))
        row["patch"] = [int(p) for p in card.patch_size]
        if ref is not None and labels is not None:
            row["min_class_dice_vs_torch"] = min_dice(labels, ref)
            row["voxels_differing"] = int(np.count_nonzero(labels != ref))
            row["voxels"] = int(ref.size)
        if torch_s:
            row["speed_vs_torch"] = torch_s / row["best_s"]
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'network':<20} {'backend':<18} {'best s':>8} {'median s':>9} {'x torch':>8} "
          f"{'min Dice':>9} {'differ':>7} {'setup s':>8}  load")  # fmt: skip
    for r in rows:
        if "error" in r:
            print(f"{r['network']:<20} {r['backend']:<18} failed: {r['error'][:60]}")
            continue
        load = max(max(pair) for pair in r["load"]) if r["load"] else float("nan")
        print(f"{r['network']:<20} {r['backend']:<18} {r['best_s']:>8.2f} {r['median_s']:>9.2f} "
              f"{r.get('speed_vs_torch', float('nan')):>8.2f} "
              f"{r.get('min_class_dice_vs_torch', float('nan')):>9.5f} "
              f"{r.get('voxels_differing', -1):>7} {r['setup_s']:>8.1f}  "
              f"<= {load:.1f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS))
    parser.add_argument("--case", choices=("synthetic", "ct"), default="ct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "backends.json")
    args = parser.parse_args()
    import torch

    from napari_vnet.runtime import cpu_has_native_bf16

    torch.set_num_threads(args.threads)
    backends = args.backends.split(",")
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    image, spacing = volume(args.case)
    load_start = os.getloadavg()
    rows = []
    for net in args.networks.split(","):
        rows += bench_network(net, backends, image, spacing, args.repeats)
    print_table(rows)
    versions = {}
    for pkg in ("onnxruntime", "openvino", "onnx"):
        with contextlib.suppress(ImportError):
            versions[pkg] = __import__(pkg).__version__
    record = {
        "benchmark": "backends",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "meta": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            **versions,
            "native_bf16": cpu_has_native_bf16(),
            "precision": "fp32 forced (amp off, OpenVINO INFERENCE_PRECISION_HINT=f32)",
            "case": args.case,
            "shape": list(image.shape),
            "repeats": args.repeats,
            "load_average_at_start": list(load_start),
            "load_average_at_end": list(os.getloadavg()),
            "note": os.environ.get("BENCH_NOTE", "shared 2-core machine: other jobs ran at the same time"),
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
