"""Does napari stay responsive while the "Fine-tune model" dock trains on the CPU?

Same method as ``gui_responsiveness.py`` (inference): a real napari viewer (under Xvfb
when there is no display) fine-tunes from the dock for ``--seconds`` while a QTimer ticks
every 10 ms and the viewer steps through z slices every 100 ms; the longest gap between
two ticks is the longest event-loop stall the user would feel. Target: <= 100 ms.
The dock meanwhile redraws its loss curve (coalesced to 4 Hz) and progress on every
training event. The training runs in a child process (the dock's default);
``--in-thread`` trains in the napari process's worker thread instead, for comparison;
``--control S`` first runs S seconds of the same dock updates without any training, to
show the stalls that painting alone causes at the machine's current load. For each long
gap the GUI thread's own CPU time, its run-queue wait (runnable, no free core) and the
rest (asleep: waiting for the GIL or for X / OpenGL) are reported.

    xvfb-run -a python benchmarks/gui_responsiveness_training.py              # ~1.5 min
    python benchmarks/gui_responsiveness_training.py --seconds 20 --no-idle     # quicker

Prints a table and writes ``benchmarks/results/gui_responsiveness_training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gui_responsiveness import TARGET_MS, ensure_display, measure_stalls  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class GapProbe:
    """Where the GUI thread's time went in each long gap between 10 ms timer ticks.

    Reads the thread's ``/proc/thread-self/schedstat`` (Linux) at every tick: CPU time
    it ran, and time it waited on a run queue (runnable, but the cores were busy with
    other threads or processes). The rest of a gap it was asleep: waiting for the GIL
    (held by another thread of this process) or for X / OpenGL.
    """

    def __init__(self):
        from qtpy.QtCore import Qt, QTimer

        self.rows: list[tuple[float, int, int]] = []
        self.ok = Path("/proc/thread-self/schedstat").exists()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self.tick)

    def tick(self):
        if self.ok:
            cpu, wait, _ = Path("/proc/thread-self/schedstat").read_text().split()
            self.rows.append((time.perf_counter(), int(cpu), int(wait)))

    def start(self):
        self.tick()
        self.timer.start()

    def stop(self):
        self.timer.stop()

    def long_gaps(self, over_ms: float = 50.0) -> dict:
        if len(self.rows) < 2:
            return {}
        r = np.asarray(self.rows, dtype=float)
        d = np.diff(r, axis=0)
        gap, cpu, rq = 1000 * d[:, 0], d[:, 1] / 1e6, d[:, 2] / 1e6
        sel = np.flatnonzero(gap > over_ms)
        worst = sel[np.argsort(gap[sel])[::-1][:8]]
        gaps = [
            {
                "at_s": round(float(r[i, 0] - r[0, 0]), 2),
                "gap_ms": round(float(gap[i]), 1),
                "gui_cpu_ms": round(float(cpu[i]), 1),
                "runqueue_wait_ms": round(float(rq[i]), 1),
                "asleep_ms": round(float(gap[i] - cpu[i] - rq[i]), 1),
            }
            for i in worst
        ]
        return {
            "over_ms": over_ms,
            "count": int(len(sel)),
            "total_gap_ms": round(float(gap[sel].sum()), 1),
            "total_gui_cpu_ms": round(float(cpu[sel].sum()), 1),
            "total_runqueue_wait_ms": round(float(rq[sel].sum()), 1),
            "worst": gaps,
        }


def run_benchmark(
    seconds: float,
    idle_s: float,
    interact: bool,
    seed: int,
    in_thread: bool = False,
    control_s: float = 0.0,
) -> dict:
    if in_thread:
        os.environ["NAPARI_VNET_TRAIN_IN_THREAD"] = "1"
    load_start = os.getloadavg()[0]
    display = ensure_display()
    import napari
    import torch
    from napari.qt import get_qapp

    from napari_vnet._widgets.finetune import FinetuneWidget
    from napari_vnet.io import volume_to_layer_kwargs
    from napari_vnet.phantoms import make_phantom

    get_qapp()
    tmpdir = Path(tempfile.mkdtemp(prefix="napari-vnet-bench-ft-"))
    os.environ.setdefault("NAPARI_VNET_CONFIG_DIR", str(tmpdir / "config"))
    image_vol, truth_vol, classes = make_phantom(seed)
    truth = truth_vol.array
    kw = volume_to_layer_kwargs(image_vol)

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    image = viewer.add_image(image_vol.array, name="phantom", colormap="gray", **kw)
    labels = viewer.add_labels(
        np.zeros_like(truth), name="annotation", **{k: v for k, v in kw.items() if k != "metadata"}
    )
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune model", area="right")
    zs = np.flatnonzero(truth.reshape(truth.shape[0], -1).any(1))
    for z in np.linspace(zs[0], zs[-1], 8).round().astype(int):  # corrections, via paint API
        yy, xx = np.nonzero(truth[z])
        labels.data_setitem((np.full(yy.shape, z), yy, xx), truth[z, yy, xx])
    widget.add_pair(image, labels)
    widget.new_model_radio.setChecked(True)
    widget.arch_combo.setCurrentText("unet3d")
    widget.stop_combo.setCurrentText("minutes")
    widget.minutes_spin.setValue(seconds / 60.0)
    widget.device_combo.setCurrentText("cpu")
    widget.set_output_path(tmpdir / "bench-ft.pt")

    n_z = truth.shape[0]
    step = {"i": 0}

    def step_slice():
        step["i"] = (step["i"] + 1) % n_z
        viewer.dims.set_current_step(0, step["i"])

    idle = None
    if idle_s > 0:
        deadline = {"t": 0.0}
        idle = measure_stalls(
            lambda: deadline.update(t=time.perf_counter() + idle_s),
            lambda: time.perf_counter() >= deadline["t"],
            every_100ms=step_slice if interact else None,
        )

    control = None
    if control_s > 0:
        # the dock's GUI work without any training: made-up events at about the real
        # rate, through the same handler; the floor that painting alone sets on this
        # machine at this load (software OpenGL under Xvfb composes the whole window)
        fake = {"i": 0, "t": 0.0}

        def fake_event():
            if time.perf_counter() - fake["t"] >= 1.2:
                fake["t"] = time.perf_counter()
                fake["i"] += 1
                i = fake["i"]
                ev = {"iteration": i, "total": 40, "loss": 2.0 - 0.02 * i, "seconds": 1.2 * i}
                if i % 8 == 0:
                    ev["val_dice"] = 0.1 * (i // 8)
                widget._on_event(ev)
            if interact:
                step_slice()

        deadline = {"t": 0.0}
        control_probe = GapProbe()
        control = measure_stalls(
            lambda: (deadline.update(t=time.perf_counter() + control_s), control_probe.start()),
            lambda: time.perf_counter() >= deadline["t"],
            every_100ms=fake_event,
        )
        control_probe.stop()
        control["gui_thread_in_gaps_over_50ms"] = control_probe.long_gaps()
        widget._progress_timer.stop()
        widget._pending_event = None
        widget.curve.clear()

    # GUI-thread cost of the dock's own handlers, in thread CPU time (independent of how
    # busy the other processes keep the machine) and wall time
    handler_cpu_ms: list[float] = []
    handler_wall_ms: list[float] = []

    def timed(fn):
        def wrapper(*a, **k):
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                handler_cpu_ms.append(1000 * (time.thread_time() - c0))
                handler_wall_ms.append(1000 * (time.perf_counter() - w0))

        return wrapper

    widget._on_event = timed(widget._on_event)  # connected in train(), after this
    widget.curve.redraw = timed(widget.curve.redraw)
    # the end of the run: status, recent-weights list, hand-over to Segment, notification
    done_cpu_ms: list[float] = []
    done_wall_ms: list[float] = []
    on_done = widget._on_done

    def timed_done(summary):
        c0, w0 = time.thread_time(), time.perf_counter()
        try:
            return on_done(summary)
        finally:
            done_cpu_ms.append(1000 * (time.thread_time() - c0))
            done_wall_ms.append(1000 * (time.perf_counter() - w0))

    widget._on_done = timed_done  # connected in train(), after this
    # the paced progress refresh (status text, bar, curve layout), via its timer too
    widget._show_pending_progress = timed(widget._show_pending_progress)
    widget._progress_timer.timeout.disconnect()
    widget._progress_timer.timeout.connect(widget._show_pending_progress)

    marks: dict[str, float] = {}
    first = {}
    widget.weights_saved.connect(lambda p: marks.setdefault("saved", time.perf_counter()))
    started = {}
    marks_gui: dict[str, float] = {}

    def start():
        c0, w0 = time.thread_time(), time.perf_counter()
        started["worker"] = widget.train()
        marks_gui["train_call_cpu_ms"] = 1000 * (time.thread_time() - c0)
        marks_gui["train_call_wall_ms"] = 1000 * (time.perf_counter() - w0)
        if started["worker"] is None:
            raise SystemExit("training was refused")
        started["worker"].yielded.connect(lambda ev: first.setdefault("event", time.perf_counter()))

    probe = GapProbe()
    probe_start = start

    def start():
        probe.start()
        probe_start()

    run = measure_stalls(
        start,
        lambda: "worker" in started and widget._worker is None,
        every_100ms=step_slice if interact else None,
        marks=marks,
        timeout_s=seconds + 900,
    )
    probe.stop()
    iterations = len(widget.curve.losses)
    losses = list(widget.curve.losses)
    val = list(widget.curve.val_dice)
    viewer.close()
    if display is not None:
        display.stop()
    stall = run.get("max_stall_before_saved_ms", run["max_stall_ms"])
    return {
        "benchmark": "gui_responsiveness_training",
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "napari": napari.__version__,
            "python": sys.version.split()[0],
            "load_avg_1min": os.getloadavg()[0],
            "load_avg_1min_at_start": load_start,
        },
        "training_runs_in": "napari worker thread" if in_thread else "child process",
        "model": "new 3D U-Net, width 8 (channels 8-16-32-64)",
        "volume_shape": list(truth.shape),
        "annotated_slices": 8,
        "time_budget_s": seconds,
        "iterations": iterations,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "val_dice": val,
        "interaction": "z slice stepped every 100 ms" if interact else "none",
        "target_ms": TARGET_MS,
        "idle": idle,
        "control_dock_updates_without_training": control,
        "training": run,
        "max_stall_while_training_ms": stall,
        "gui_handler_calls": len(handler_cpu_ms),
        "gui_handler_cpu_ms_max": max(handler_cpu_ms, default=0.0),
        "gui_handler_cpu_ms_mean": float(np.mean(handler_cpu_ms)) if handler_cpu_ms else 0.0,
        "gui_handler_wall_ms_max": max(handler_wall_ms, default=0.0),
        "done_handler_cpu_ms": max(done_cpu_ms, default=None),
        "done_handler_wall_ms": max(done_wall_ms, default=None),
        "curve_paints": widget.curve.paints,
        "curve_paint_ms_max": widget.curve.paint_ms_max,
        "train_call_cpu_ms": marks_gui.get("train_call_cpu_ms"),
        "train_call_wall_ms": marks_gui.get("train_call_wall_ms"),
        "gui_thread_in_gaps_over_50ms": probe.long_gaps(),
        "passed": stall <= TARGET_MS,
    }


def _table(res: dict) -> str:
    rows = [("phase", "seconds", "ticks", "max stall ms", "p99 ms", "p50 ms", ">100 ms", ">50 ms")]
    for name in ("idle", "control_dock_updates_without_training", "training"):
        r = res.get(name)
        if not r:
            continue
        rows.append(
            (
                name.replace("control_dock_updates_without_training", "dock updates, no training"),
                f"{r['seconds']:.1f}",
                str(r["ticks"]),
                f"{r['max_stall_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['p50_ms']:.1f}",
                str(r["over_100ms"]),
                str(r["over_50ms"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    tr = res["training"]
    lines += [
        "",
        f"training in a {res['training_runs_in']}; "
        f"{res['model']} on {tuple(res['volume_shape'])}, {res['annotated_slices']} annotated "
        f"slices, {res['iterations']} iterations in {res['time_budget_s']:.0f} s budget; "
        f"{res['interaction']}",
        f"longest stall while training (before the weights were saved): "
        f"{res['max_stall_while_training_ms']:.1f} ms; worst gaps: {tr['worst']}",
        f"the dock's GUI-thread work per training event / progress refresh / curve layout "
        f"({res['gui_handler_calls']} calls): max {res['gui_handler_cpu_ms_max']:.1f} ms CPU, "
        f"mean {res['gui_handler_cpu_ms_mean']:.1f} ms CPU, max {res['gui_handler_wall_ms_max']:.1f} ms wall; "
        f"curve paints: {res['curve_paints']}, longest {res['curve_paint_ms_max']:.1f} ms; "
        f"Train click: {res['train_call_wall_ms']:.1f} ms; end-of-run handler: "
        f"{res['done_handler_cpu_ms'] or 0:.1f} ms CPU, {res['done_handler_wall_ms'] or 0:.1f} ms wall",
        f"target <= {res['target_ms']:.0f} ms: {'PASS' if res['passed'] else 'FAIL'}"
        f" (load average {res['machine']['load_avg_1min_at_start']:.1f} at the start, "
        f"{res['machine']['load_avg_1min']:.1f} at the end, on "
        f"{res['machine']['cpu_count']} cores)",
    ]
    for label, g in (
        ("without training", (res.get("control_dock_updates_without_training") or {}).get(
            "gui_thread_in_gaps_over_50ms")),
        ("training", res.get("gui_thread_in_gaps_over_50ms")),
    ):  # fmt: skip
        if not g:
            continue
        lines.append(
            f"{label}: GUI thread in the {g['count']} gaps > {g['over_ms']:.0f} ms ({g['total_gap_ms']:.0f} ms): "
            f"running {g['total_gui_cpu_ms']:.0f} ms, runnable but no free core "
            f"{g['total_runqueue_wait_ms']:.0f} ms, the rest asleep (GIL / X); worst: "
            + ", ".join(
                f"{w['gap_ms']:.0f} ms at {w['at_s']:.1f} s = cpu {w['gui_cpu_ms']:.0f} + "
                f"queue {w['runqueue_wait_ms']:.0f} + asleep {w['asleep_ms']:.0f}"
                for w in g["worst"][:3]
            )
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="training time budget")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle baseline")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle baseline")
    ap.add_argument("--no-interact", action="store_true", help="do not step slices meanwhile")
    ap.add_argument("--seed", type=int, default=3, help="phantom seed")
    ap.add_argument(
        "--in-thread", action="store_true", help="train in a worker thread of this process"
    )
    ap.add_argument(
        "--control",
        type=float,
        default=0.0,
        metavar="S",
        help="first S seconds of the dock's progress updates without training (made-up "
        "events at the training rate): the stalls painting alone causes here",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "gui_responsiveness_training.json")
    args = ap.parse_args(argv)
    res = run_benchmark(
        args.seconds, 0 if args.no_idle else args.idle, not args.no_interact, args.seed,
        args.in_thread, args.control,
    )  # fmt: skip
    print(_table(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
