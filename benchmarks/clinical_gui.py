"""Clinical-size scans in the GUI: 300 x 512 x 512 through Scans, autosave and Segment.

A real napari viewer (run under ``xvfb-run -a``) with the Scans and Segment docks; a
QTimer ticks every 10 ms and the longest gap between ticks is the longest freeze the
user would feel (:func:`gui_responsiveness.measure_stalls`). For each action the table
gives that gap, the time the GUI thread spent in our handlers (including the napari
calls they make), and beside it napari's own cost for the same layers: constructing and
adding a plain ``Image``/``Labels`` of that size in the same viewer.

Scans are synthetic int16 CT-like volumes (body ellipse, organs, noise), written as
``.nii.gz`` and ``.mha`` into a temporary folder. Steps:

* open: the first scan through the dock (no layers yet);
* next (edited): a stroke painted on the scan's Labels layer, then Next (the layers are
  reused; the labels are autosaved in the background; the scan was prefetched);
* next (cold): Next to a scan that was not prefetched;
* autosave: a stroke, then "Save labels now" (snapshot on the GUI thread, write in the
  background);
* segment result: a finished prediction (a precomputed label volume delivered to the
  Segment dock's ``returned`` handler exactly as its worker would) added as a new layer,
  then a second run of the same model replacing it in place;
* RSS: 30 Next steps (one stroke on each scan's labels), RSS after each.

    xvfb-run -a .venv/bin/python benchmarks/clinical_gui.py            # ~5 min
    xvfb-run -a .venv/bin/python benchmarks/clinical_gui.py --shape 100 256 256

Prints a table and writes ``benchmarks/results/clinical_gui.json`` (with ``uptime``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gui_responsiveness import measure_stalls  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GAP_BUDGET_MS = 100.0
AUTOSAVE_BUDGET_MS = 100.0
RSS_BUDGET_MB = 50.0


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return os.getloadavg().__repr__()


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _ct_like(shape, seed: int) -> np.ndarray:
    """An int16 CT-like volume: air, a body ellipse, a few organs, mild noise."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    body = (yy / 0.7) ** 2 + (xx / 0.85) ** 2 < 1
    out = np.full(shape, -1000, np.int16)
    out[:, body] = 40
    for _ in range(4):
        cy, cx, r = rng.uniform(-0.4, 0.4), rng.uniform(-0.5, 0.5), rng.uniform(0.1, 0.25)
        organ = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        lo, hi = sorted(rng.integers(0, shape[0], 2))
        out[lo : hi + 1, organ] = rng.integers(60, 250)
    noise = rng.integers(-20, 21, size=shape[1:], dtype=np.int16)
    out += noise[None]
    del z
    return out


def write_scans(folder: Path, shape, n: int) -> list[Path]:
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = sitk.GetImageFromArray(_ct_like(shape, i))
        img.SetSpacing((0.8, 0.8, 1.5))
        path = folder / (f"case{i:02d}.nii.gz" if i % 2 == 0 else f"case{i:02d}.mha")
        sitk.WriteImage(img, str(path), useCompression=path.suffix == ".gz")
        paths.append(path)
    return paths


def _at(shape, i: int) -> tuple[int, int, int]:
    """A brush position inside the volume, a little different for each ``i``."""
    return (shape[0] // 2, shape[1] // 3 + i % 40, shape[2] // 3 + i % 40)


class _Timed:
    """Adds up the wall time of calls to some methods of one object (GUI thread)."""

    def __init__(self, obj, names):
        self.total = 0.0
        self.depth = 0  # only the outermost of nested timed calls counts
        for name in names:
            original = getattr(obj, name)

            def wrapper(*a, _f=original, **k):
                t0 = time.perf_counter()
                self.depth += 1
                try:
                    return _f(*a, **k)
                finally:
                    self.depth -= 1
                    if self.depth == 0:
                        self.total += time.perf_counter() - t0

            setattr(obj, name, wrapper)

    def take(self) -> float:
        ms, self.total = self.total * 1000.0, 0.0
        return ms


def _settle(app, seconds: float = 0.3) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def _median_run(runs: list[dict]) -> dict:
    """The run with the median longest gap."""
    return sorted(runs, key=lambda r: r["max_stall_ms"])[len(runs) // 2]


def _row(name, res, gui_ms=None, baseline=None, extra=None):
    row = {
        "step": name,
        "max_gap_ms": round(res["max_stall_ms"], 1),
        "p99_ms": round(res["p99_ms"], 1),
        "gui_thread_ms": None if gui_ms is None else round(gui_ms, 1),
        "napari_baseline_ms": None if baseline is None else round(baseline, 1),
        "stall_samples": res.get("stall_samples"),
    }
    if baseline is not None:
        row["over_baseline_ms"] = round(res["max_stall_ms"] - baseline, 1)
    row.update(extra or {})
    return row


def run(
    shape=(300, 512, 512), n_scans: int = 6, steps: int = 30, repeats: int = 3, leak_cycles: int = 8
) -> dict:
    import napari
    from napari.layers import Image, Labels
    from qtpy.QtWidgets import QApplication

    from napari_vnet._widgets.scans import ScansWidget
    from napari_vnet._widgets.segment import SegmentWidget
    from napari_vnet.models import ClassInfo, ModelCard
    from napari_vnet.workflows.segment import JobDone

    tmp = Path(tempfile.mkdtemp(prefix="napari-vnet-clinical-"))
    os.environ["NAPARI_VNET_CONFIG_DIR"] = str(tmp / "config")
    t0 = time.perf_counter()
    write_scans(tmp / "scans", shape, n_scans)
    print(f"wrote {n_scans} scans of {shape} in {time.perf_counter() - t0:.0f} s", flush=True)

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    rows = []
    done = lambda: True  # noqa: E731

    # ---------------------------------------------------------------- napari baseline
    img = _ct_like(shape, 99)
    lab = np.zeros(shape, np.uint8)
    lab[100:200, 150:300, 150:300] = 1
    _settle(app, 1.0)
    # warm-up (first-use imports, shader compilation), not measured
    viewer.add_layer(Image(img, contrast_limits=(-200, 300)))
    viewer.add_layer(Labels(lab))
    _settle(app, 1.0)
    viewer.layers.clear()
    _settle(app, 1.0)
    runs: dict[str, list] = {"img": [], "lab": [], "both": []}
    for _ in range(repeats):
        runs["img"].append(
            measure_stalls(lambda: viewer.add_layer(Image(img, contrast_limits=(-200, 300))), done)
        )
        runs["lab"].append(measure_stalls(lambda: viewer.add_layer(Labels(lab)), done))
        viewer.layers.clear()
        _settle(app)
        runs["both"].append(
            measure_stalls(
                lambda: (
                    viewer.add_layer(Image(img, contrast_limits=(-200, 300))),
                    viewer.add_layer(Labels(lab)),
                ),
                done,
            )
        )
        viewer.layers.clear()
        _settle(app)
    img = None  # noqa: F841 - frees the baseline volume
    base_img, base_lab, base_both = (_median_run(runs[k]) for k in ("img", "lab", "both"))
    b_img, b_lab, b_both = (r["max_stall_ms"] for r in (base_img, base_lab, base_both))
    extra = {"repeats": [round(r["max_stall_ms"], 1) for r in runs["img"]]}
    rows.append(_row("napari: construct + add Image", base_img, extra=extra))
    extra = {"repeats": [round(r["max_stall_ms"], 1) for r in runs["lab"]]}
    rows.append(_row("napari: construct + add Labels", base_lab, extra=extra))
    extra = {"repeats": [round(r["max_stall_ms"], 1) for r in runs["both"]]}
    rows.append(_row("napari: construct + add Image + Labels", base_both, extra=extra))

    # ---------------------------------------------------------------- the docks
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment volume")
    scans = ScansWidget(viewer)
    viewer.window.add_dock_widget(scans, name="Scans")
    scans.set_work_folder(tmp / "work")
    scans.set_scans_folder(tmp / "scans")
    while len(scans.entries) < n_scans:
        app.processEvents()
        time.sleep(0.01)
    timed = _Timed(
        scans,
        ["load_scan", "_show", "_on_saved", "autosave", "_on_loaded", "_on_inserted"],
    )

    def loaded_and_quiet():
        return scans._requested is None and not scans.saver.busy() and _prefetched()

    def _prefetched():
        pre = scans._prefetch
        return pre is None or not hasattr(pre[1], "is_running")  # a LoadedScan, or none

    # open: the first scan, no layers before
    res = measure_stalls(lambda: scans.load_scan(0), loaded_and_quiet)
    rows.append(_row("Scans: open first scan", res, timed.take(), b_img))
    _settle(app)

    # an edited Labels layer on it (as after a correction), then Next (prefetched); the
    # Labels layer stays (emptied) on a scan without labels: paint, Next, again
    image = scans._image_layer
    viewer.add_labels(np.zeros(shape, np.uint8), name="liver", scale=image.scale)
    for rep in range(repeats):
        (labels,) = [lay for lay in viewer.layers if isinstance(lay, Labels)]
        labels.paint(_at(shape, rep), 1)
        _settle(app)
        timed.take()
        res = measure_stalls(scans.next_scan, loaded_and_quiet)
        rows.append(
            _row(f"Scans: Next, edited labels, prefetched #{rep + 1}", res, timed.take(), b_both)
        )
        _settle(app)

    # not prefetched: read while the user waits (back to scans with saved labels)
    for rep in range(repeats):
        (labels,) = [lay for lay in viewer.layers if isinstance(lay, Labels)]
        labels.paint(_at(shape, 10 + rep), 2)
        _settle(app)
        timed.take()
        scans._prefetch = None
        res = measure_stalls(scans.previous_scan, loaded_and_quiet)
        rows.append(
            _row(f"Scans: Previous, edited labels, cold #{rep + 1}", res, timed.take(), b_both)
        )
        _settle(app)
    print("shown:", scans.current.name, [lay.name for lay in viewer.layers], flush=True)

    # autosave of an edit
    (labels,) = [lay for lay in viewer.layers if isinstance(lay, Labels)]
    labels.paint(_at(shape, 2), 3)
    _settle(app)
    timed.take()
    t_call = {}

    def save():
        t = time.perf_counter()
        scans.autosave()
        t_call["ms"] = (time.perf_counter() - t) * 1000

    res = measure_stalls(save, lambda: not scans.saver.busy())
    gui = timed.take()
    rows.append(
        _row("Scans: autosave (Save labels now)", res, gui, None, {"call_ms": t_call["ms"]})
    )
    _settle(app)

    # a Segment result: new layer, then the same model again (replaced in place)
    card = ModelCard(
        arch="vnet",
        arch_kwargs={},
        classes=[ClassInfo(0, "background"), ClassInfo(1, "liver"), ClassInfo(2, "spleen")],
    )
    weights = tmp / "w.pt"
    image = scans._image_layer
    pred = np.zeros(shape, np.uint8)
    pred[80:220, 100:300, 120:320] = 1
    pred[120:180, 300:400, 300:420] = 2
    preds = [pred.copy() for _ in range(2)]  # what the worker returns, made beforehand

    def deliver():
        seg._run_ctx = {
            "layer": image,
            "geometry": __import__(
                "napari_vnet._widgets._result_layer", fromlist=["x"]
            ).geometry_kwargs(image),
            "data": image.data,
            "weights": weights,
            "arch": "vnet",
            "settings": seg.settings(),
            "spacing": (1.5, 0.8, 0.8),
        }
        seg._on_outcome(JobDone(preds.pop(), card, 1.0, "cpu", None, 1, 1))

    seg_timed = _Timed(seg, ["_on_outcome"])
    res = measure_stalls(deliver, done)
    rows.append(_row("Segment: result added (new layer)", res, seg_timed.take(), b_lab))
    _settle(app)
    n_layers = len(viewer.layers)
    res = measure_stalls(deliver, done)
    replaced = len(viewer.layers) == n_layers
    rows.append(
        _row(
            "Segment: same model again (replaced)",
            res,
            seg_timed.take(),
            b_lab,
            {"replaced": replaced},
        )
    )
    _settle(app)

    # RSS over Next steps, one stroke per scan
    rss = []
    direction = 1
    gc.collect()
    rss0 = _rss_mb()
    for i in range(steps):
        labels = [lay for lay in viewer.layers if isinstance(lay, Labels)]
        if not labels:
            labels = [
                viewer.add_labels(
                    np.zeros(shape, np.uint8), name="liver", scale=scans._image_layer.scale
                )
            ]
        labels[0].paint(_at(shape, i), 1 + i % 3)
        if scans.table.step_target(scans.current.key, direction) is None:
            direction = -direction
        (scans.next_scan if direction > 0 else scans.previous_scan)()
        t = time.perf_counter()
        while not loaded_and_quiet() and time.perf_counter() - t < 120:
            app.processEvents()
            time.sleep(0.01)
        _settle(app, 0.2)
        gc.collect()
        rss.append(round(_rss_mb(), 1))
        print(f"step {i + 1}: {scans.current.name} RSS {rss[-1]:.0f} MB", flush=True)
    scans.save_now()
    # stepping to the end and back, the scans repeat with a period of 2 * (n - 1) steps;
    # what is held at a step depends on where it is (the scan, its labels, the prefetched
    # neighbour), so RSS is compared per round trip: the median over each period
    period = 2 * (n_scans - 1)
    starts = range(0, len(rss) - period + 1, period)
    trips = [round(float(np.median(rss[i : i + period])), 1) for i in starts]
    growth = trips[-1] - trips[0] if len(trips) > 1 else rss[-1] - rss[0]
    same_place = [rss[i + period] - rss[i] for i in range(len(rss) - period)]
    rows.append(
        {
            "step": f"RSS over {steps} Next steps",
            "rss_start_mb": round(rss0, 1),
            "rss_after_first_mb": rss[0],
            "rss_end_mb": rss[-1],
            "round_trip_median_mb": trips,
            "growth_mb": round(growth, 1),
            "worst_same_scan_diff_mb": round(max(same_place), 1) if same_place else None,
            "rss_mb": rss,
        }
    )

    # where the old "+4 MB per scan" came from: napari itself, per added and removed pair
    # of layers of this size (the dock no longer adds or removes layers per step)
    scans._close_current()
    scans.saver.flush()
    _settle(app)
    vol = _ct_like(shape, 7)
    cycle_rss = []
    for _ in range(leak_cycles):
        a, lab2 = vol.copy(), np.zeros(shape, np.uint8)
        lab2[: shape[0] // 2] = 1
        layers = [Image(a, contrast_limits=(-200, 300)), Labels(lab2)]
        for layer in layers:
            viewer.add_layer(layer)
        _settle(app)
        for layer in layers:
            viewer.layers.remove(layer)
        del a, lab2, layers
        _settle(app)
        gc.collect()
        cycle_rss.append(round(_rss_mb(), 1))
    if len(cycle_rss) > 3:
        per_cycle = (cycle_rss[-1] - cycle_rss[2]) / (len(cycle_rss) - 3)
        rows.append(
            {
                "step": "napari: add + remove Image + Labels, RSS per cycle",
                "rss_mb": cycle_rss,
                "mb_per_cycle": round(per_cycle, 2),
            }
        )

    result = {
        "benchmark": "clinical_gui",
        "shape": list(shape),
        "scans": n_scans,
        "machine": {
            "uptime_end": _uptime(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "napari": napari.__version__,
        },
        "rows": rows,
        "acceptance": _acceptance(rows),
    }
    viewer.close()
    return result


def _acceptance(rows) -> dict:
    out = {}
    a = [r for r in rows if r["step"].startswith("Scans: autosave")][0]
    out["autosave GUI-thread <= 100 ms"] = a["gui_thread_ms"] <= AUTOSAVE_BUDGET_MS
    for prefix in (
        "Scans: Next, edited labels, prefetched",
        "Scans: Previous, edited labels, cold",
        "Segment: result added (new layer)",
        "Segment: same model again (replaced)",
    ):
        worst = max(r["over_baseline_ms"] for r in rows if r["step"].startswith(prefix))
        out[f"{prefix}: worst gap - napari <= 100 ms"] = worst <= GAP_BUDGET_MS
    rss = [r for r in rows if r["step"].startswith("RSS")][0]
    out["RSS growth <= 50 MB"] = rss["growth_mb"] <= RSS_BUDGET_MB
    return out


def table(res: dict) -> str:
    lines = [
        f"clinical_gui {tuple(res['shape'])}  ({res['machine']['uptime_end']})",
        f"{'step':44s} {'max gap':>9s} {'p99':>7s} {'GUI ours':>9s} {'napari':>8s} {'over':>7s}",
    ]

    def f(v):
        return "—" if v is None else f"{v:.0f}"

    for r in res["rows"]:
        if "max_gap_ms" not in r:
            continue
        lines.append(
            f"{r['step']:44s} {f(r['max_gap_ms']):>9s} {f(r['p99_ms']):>7s} "
            f"{f(r['gui_thread_ms']):>9s} {f(r['napari_baseline_ms']):>8s} "
            f"{f(r.get('over_baseline_ms')):>7s}"
        )
    rss = [r for r in res["rows"] if r["step"].startswith("RSS")][0]
    lines.append(
        f"{rss['step']}: median per round trip {rss['round_trip_median_mb']} MB, growth "
        f"{rss['growth_mb']:+.1f} MB (RSS before the first step {rss['rss_start_mb']:.0f}; "
        f"worst difference at the same scan one round trip later "
        f"{rss['worst_same_scan_diff_mb'] or 0:+.0f} MB)"
    )
    leak = [r for r in res["rows"] if r["step"].startswith("napari: add + remove")]
    if leak:
        lines.append(f"{leak[0]['step']}: {leak[0]['mb_per_cycle']:+.1f} MB ({leak[0]['rss_mb']})")
    lines.append(
        "acceptance: "
        + ", ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in res["acceptance"].items())
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    parser.add_argument("--scans", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "clinical_gui.json"))
    args = parser.parse_args(argv)
    start = _uptime()
    res = run(tuple(args.shape), args.scans, args.steps, args.repeats)
    res["machine"]["uptime_start"] = start
    text = table(res)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
