"""GPU readiness check: one JSON from any machine with a CUDA GPU, in under 8 minutes.

Steps, each in its own subprocess with its own time cap (a step that fails, times out or
lacks a package is recorded as ``"skipped: why"`` or ``"failed: why"``; the others run):

* ``device``: GPU name, memory, torch / CUDA / cuDNN versions (always recorded);
* ``cuda_tests``: the tests that take the CUDA path when a GPU is present
  (``pytest tests -k "cuda or device or amp"`` over the inference, runtime and Segment
  dock device tests);
* ``inference``: a 300 x 512 x 512 synthetic CT (a phantom, repeated to that size) with
  each shipped network (``src/napari_vnet/weights/*.pt``): napari-vnet's engine (amp
  auto, batch size auto) vs MONAI's ``sliding_window_inference`` (fp16 autocast,
  ``sw_batch_size=4``, gaussian blending of softmax outputs) on the same network and
  input - seconds, peak GPU memory (``torch.cuda.max_memory_allocated``) and the label
  agreement (mean foreground Dice);
* ``training``: iterations per second of the fine-tuning engine and a bare loop
  (``benchmarks/training.py --device cuda``);
* ``segment_dock``: napari's viewer with the Segment dock, device cuda, run on a 128^3
  phantom until the Labels layer appears (under Xvfb when there is no display).

    bash benchmarks/gpu_check.sh                       # -> benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --out /tmp/gpu.json
    python benchmarks/gpu_check.py --dry-run           # every GPU step skipped, seconds

Without a CUDA device (or with ``--dry-run``) every GPU step is "skipped: no CUDA device"
and the script exits 0.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# step -> seconds it may take (the whole run stays under --budget-s)
CAPS = {"cuda_tests": 100, "inference": 210, "training": 75, "segment_dock": 75}
CUDA_TESTS = ["tests/test_inference.py", "tests/test_runtime_mps.py",
              "tests/test_widget_segment_choices.py"]  # fmt: skip


partial_fn = functools.partial


def missing(*names: str) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


# ------------------------------------------------------------------------------ steps


def step_device() -> dict:
    if missing("torch"):
        return {"status": "skipped: torch is not installed"}
    import torch

    info = {"torch": torch.__version__, "cuda_build": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count()}  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(name=torch.cuda.get_device_name(0), memory_gib=props.total_memory / 2**30,
                    capability=list(torch.cuda.get_device_capability(0)),
                    device_count=torch.cuda.device_count(),
                    cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported())  # fmt: skip
    return {"status": "ok", **info}


def step_cuda_tests() -> dict:
    if missing("pytest"):
        return {"status": "skipped: pytest is not installed"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS,
           "-k", "cuda or device or amp"]  # fmt: skip
    if not os.environ.get("DISPLAY") and shutil.which("xvfb-run"):
        cmd = ["xvfb-run", "-a", *cmd]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 5:
        return {"status": "skipped: no test selected"}
    return {"status": "ok" if proc.returncode == 0 else "failed: tests failed",
            "returncode": proc.returncode, "summary": lines[-1] if lines else "",
            "tail": proc.stdout[-2000:] if proc.returncode else ""}  # fmt: skip


def synthetic_ct(shape=(300, 512, 512)):
    """A phantom torso CT (int16 HU) of 100 x 128 x 128 repeated up to ``shape``."""
    import numpy as np

    from napari_vnet.phantoms import make_phantom

    small = np.asarray(make_phantom(0, shape=(100, 128, 128))[0].array)
    reps = [s // t for s, t in zip(shape, small.shape, strict=True)]
    big = small.repeat(reps[0], 0).repeat(reps[1], 1).repeat(reps[2], 2)
    noise = np.random.default_rng(0).normal(0, 8, size=big.shape[1:]).astype(np.int16)
    return (big + noise).astype(np.int16)


def dice_foreground(a, b) -> float:
    import numpy as np

    same = np.count_nonzero((a == b) & (a != 0))
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 2.0 * same / total if total else 1.0


def timed_cuda(fn):
    """``fn()``'s result, seconds and peak GPU memory (GiB)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**30


def run_monai(model, card, raw):
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from napari_vnet.transforms import normalize_intensity

    x = torch.from_numpy(normalize_intensity(raw, card.normalization))[None, None].cuda()
    values = np.asarray(card.label_values, np.uint8)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        out = sliding_window_inference(x, card.patch_size, 4,
                                       lambda t: torch.softmax(model(t), 1), overlap=0.5,
                                       mode="gaussian")  # fmt: skip
    return values[torch.argmax(out[0], 0).cpu().numpy()]


def step_inference(partial: Path) -> dict:
    gone = missing("torch", "SimpleITK", "scipy")
    if gone:
        return {"status": f"skipped: missing {', '.join(gone)}"}
    import torch

    from napari_vnet.inference import predict
    from napari_vnet.weights import load_weights

    raw = synthetic_ct()
    no_monai = missing("monai")
    out: dict = {"status": "ok", "shape": list(raw.shape), "networks": {},
                 "monai": "skipped: monai is not installed" if no_monai else "ok"}  # fmt: skip
    for path in sorted((ROOT / "src" / "napari_vnet" / "weights").glob("*.pt")):
        model, card = load_weights(path, map_location="cpu")
        model = model.cuda().eval()
        predict(raw[:64, :128, :128], model, card, device="cuda")  # warm-up (cuDNN, kernels)
        pred, s, mem = timed_cuda(partial_fn(predict, raw, model, card, device="cuda"))
        row = {"napari_vnet": {"seconds": s, "peak_gib": mem, "amp": pred.amp,
                               "batch_size": pred.batch_size, "windows": pred.windows}}  # fmt: skip
        if not no_monai:
            try:
                labels, s2, mem2 = timed_cuda(partial_fn(run_monai, model, card, raw))
                row["monai"] = {"seconds": s2, "peak_gib": mem2, "amp": "fp16",
                                "sw_batch_size": 4}  # fmt: skip
                row["speed_vs_monai"] = s2 / s
                row["dice_vs_monai"] = dice_foreground(pred.labels, labels)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: recorded
                row["monai"] = f"failed: {type(exc).__name__}: {exc}"[:500]
        out["networks"][path.name] = row
        del model
        torch.cuda.empty_cache()
        partial.write_text(json.dumps(out))  # what is done survives a time-out
    return out


def step_training(partial: Path) -> dict:
    if missing("torch", "SimpleITK"):
        return {"status": "skipped: missing torch or SimpleITK"}
    out_json = partial.with_suffix(".training.json")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "training.py"), "--device", "cuda",
           "--steps", "10", "--warmup", "3", "--out", str(out_json)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        return {"status": "failed: training.py", "tail": proc.stderr[-2000:]}
    rows = json.loads(out_json.read_text())["results"]
    for r in rows:
        r["engine_it_per_s"] = 1.0 / r["engine_s_per_it"]
        r["bare_it_per_s"] = 1.0 / r["bare_s_per_it"]
    return {"status": "ok", "results": rows}


DOCK_SCRIPT = r"""
import json, sys, time
import napari, numpy as np
from napari.qt import get_qapp
from napari_vnet._widgets.segment import SegmentWidget
from napari_vnet.phantoms import make_phantom
from napari_vnet.weights import resolve_weights
image, _, _ = make_phantom(0, shape=(128, 128, 128))
app = get_qapp()
viewer = napari.Viewer(show=False)
layer = viewer.add_image(np.asarray(image.array), name="phantom", scale=image.spacing)
widget = SegmentWidget(viewer)
viewer.window.add_dock_widget(widget, name="Segment volume", area="right")
widget.select_weights(resolve_weights("vnet-phantom"))
widget.set_image_layer(layer)
widget.device.value = "cuda"
done = {}
widget.prediction_added.connect(lambda lab: done.setdefault("layer", lab))
t0 = time.perf_counter()
widget.run()
while "layer" not in done and time.perf_counter() - t0 < float(sys.argv[1]):
    app.processEvents()
    time.sleep(0.02)
lab = done.get("layer")
print(json.dumps({"status": "ok" if lab is not None else "failed: no Labels layer in time",
                  "seconds": time.perf_counter() - t0,
                  "labels_layer": None if lab is None else lab.name,
                  "labels_present": None if lab is None else sorted(
                      int(v) for v in np.unique(np.asarray(lab.data)))}))
viewer.close()
"""


def step_segment_dock(partial: Path, cap: float) -> dict:
    gone = missing("napari", "qtpy", "SimpleITK")
    if gone:
        return {"status": f"skipped: missing {', '.join(gone)}"}
    cmd = [sys.executable, "-c", DOCK_SCRIPT, str(max(10.0, cap - 25))]
    if not os.environ.get("DISPLAY"):
        if not shutil.which("xvfb-run"):
            return {"status": "skipped: no display and no xvfb-run"}
        cmd = ["xvfb-run", "-a", *cmd]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"status": "failed: the dock script", "tail": proc.stderr[-2000:]}
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------ driver


def run_step(name: str, cap: float) -> dict:
    """Run one step in a subprocess capped at ``cap`` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        result, partial = Path(tmp) / "result.json", Path(tmp) / "partial.json"
        cmd = [sys.executable, __file__, "--step", name, "--step-out", str(result),
               "--step-cap", str(cap)]  # fmt: skip
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=cap)
        except subprocess.TimeoutExpired:
            out = {"status": f"failed: timed out after {cap:.0f} s"}
            if partial.exists():
                out["partial"] = json.loads(partial.read_text())
            return {**out, "seconds": round(time.perf_counter() - t0, 1)}
        if result.exists():
            out = json.loads(result.read_text())
        else:
            out = {"status": f"failed: exit {proc.returncode}", "tail": proc.stderr[-2000:]}
        return {**out, "seconds": round(time.perf_counter() - t0, 1)}


def child_step(args) -> int:
    partial = Path(args.step_out).with_name("partial.json")
    steps = {
        "cuda_tests": step_cuda_tests,
        "inference": lambda: step_inference(partial),
        "training": lambda: step_training(partial),
        "segment_dock": lambda: step_segment_dock(partial, args.step_cap),
    }
    Path(args.step_out).write_text(json.dumps(steps[args.step]()))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    p.add_argument("--dry-run", action="store_true", help="skip every GPU step")
    p.add_argument("--budget-s", type=float, default=450.0, help="the whole run's limit")
    p.add_argument("--steps", default=",".join(CAPS), help="which GPU steps to run")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--step-out", help=argparse.SUPPRESS)
    p.add_argument("--step-cap", type=float, default=60.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step:
        return child_step(args)
    t0 = time.perf_counter()
    device = step_device()
    record = {"benchmark": "gpu_check",
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "python_executable": sys.executable, "dry_run": bool(args.dry_run),
              "device": device, "steps": {}}  # fmt: skip
    why = None
    if device["status"].startswith("skipped"):
        why = device["status"]
    elif args.dry_run or not device.get("cuda_available"):
        why = "skipped: no CUDA device" + (" (dry run)" if args.dry_run else "")
    wanted = [s for s in args.steps.split(",") if s]
    for name in CAPS:
        left = args.budget_s - (time.perf_counter() - t0)
        if why or name not in wanted:
            record["steps"][name] = {"status": why or "skipped: not asked for"}
        elif left < 15:
            record["steps"][name] = {"status": "skipped: out of time"}
        else:
            record["steps"][name] = run_step(name, min(CAPS[name], left))
        print(f"{name}: {record['steps'][name]['status']}", file=sys.stderr)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    write_record(record, args.out)
    return 0


def write_record(record: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path} ({record['seconds']} s)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
