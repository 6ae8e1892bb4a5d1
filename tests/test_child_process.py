"""The child-process runner that keeps fine-tuning off the napari process's GIL."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time

import pytest

from napari_vnet.workflows.child_process import ChildJobError, child_threads, run_in_child

JOBS = """
import os, sys, time

class Refused(ValueError):
    pass

def count(n, *, should_stop, sleep=0.0):
    for i in range(n):
        if should_stop():
            return {"stopped_at": i, "pid": os.getpid()}
        yield {"i": i, "pid": os.getpid()}
        time.sleep(sleep)
    return {"stopped_at": None, "pid": os.getpid(), "nice": os.nice(0)}

def fail(*, should_stop):
    yield 1
    raise Refused("labels.nii.gz holds no foreground voxel")

def unpicklable(*, should_stop):
    class Local(Exception):
        pass
    yield 1
    raise Local("a local class cannot be pickled")

def modules(*, should_stop):
    print("stray output must not break the stream")
    os.write(1, b"nor C-level output on fd 1")
    import napari_vnet.workflows.finetune  # the fine-tune job module the child runs
    yield sorted(m for m in ("napari", "qtpy", "PyQt6", "PyQt5", "PySide6", "matplotlib")
                 if m in sys.modules)
    return None

def crash(*, should_stop):
    yield 1
    os._exit(3)
"""


@pytest.fixture(autouse=True)
def jobs_module(tmp_path, monkeypatch):
    (tmp_path / "fake_jobs.py").write_text(textwrap.dedent(JOBS))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))  # the parent can rebuild its exceptions


def test_events_and_return_value_come_from_another_process(drain):
    events, result = drain(run_in_child("fake_jobs:count", 4, nice=3))
    assert [e["i"] for e in events] == [0, 1, 2, 3]
    assert {e["pid"] for e in events} == {result["pid"]} and result["pid"] != os.getpid()
    assert result["stopped_at"] is None
    assert result["nice"] >= os.nice(0) + 3  # the child runs at a lower priority


def test_stop_event_reaches_the_child_and_the_job_ends_its_own_way(drain):
    stop = threading.Event()
    gen = run_in_child("fake_jobs:count", 10_000, stop=stop, sleep=0.01)
    first = next(gen)
    assert first["i"] == 0
    stop.set()
    t0 = time.perf_counter()
    events, result = drain(gen)
    assert time.perf_counter() - t0 < 20
    assert result["stopped_at"] is not None and result["stopped_at"] < 10_000


def test_exception_is_raised_here_with_its_type_and_message():
    gen = run_in_child("fake_jobs:fail")
    assert next(gen) == 1
    with pytest.raises(ValueError, match="labels.nii.gz holds no foreground") as err:
        next(gen)
    assert type(err.value).__name__ == "Refused"
    assert any("in the training process" in n for n in err.value.__notes__)


def test_unpicklable_exception_and_crash_give_a_clear_error():
    gen = run_in_child("fake_jobs:unpicklable")
    next(gen)
    with pytest.raises(ChildJobError, match="Local: a local class cannot be pickled"):
        next(gen)
    gen = run_in_child("fake_jobs:crash")
    next(gen)
    with pytest.raises(ChildJobError, match="exit code 3"):
        next(gen)


def test_the_child_stays_free_of_qt_and_napari_and_stdout_noise_is_harmless(drain):
    events, _ = drain(run_in_child("fake_jobs:modules"))
    assert events == [[]]


def test_closing_the_generator_stops_the_child():
    gen = run_in_child("fake_jobs:count", 10_000, sleep=0.01, stop_grace_s=20)
    pid = next(gen)["pid"]
    gen.close()  # a napari worker quitting closes its generator
    with pytest.raises(OSError):
        os.kill(pid, 0)  # reaped: no such process


def test_child_threads_leaves_a_core():
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert child_threads() == max(1, n - 1)


def test_runner_module_imports_no_gui():
    import subprocess

    code = (
        "import sys, napari_vnet.workflows.child_process; "
        "print([m for m in ('napari', 'qtpy', 'PyQt6', 'magicgui') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


QT_BLOCKER = """
import sys

BLOCKED = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui")


class _NoGui:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (a Qt-less interpreter)", name=name)
        return None


sys.meta_path.insert(0, _NoGui())
"""


def test_scans_file_pair_training_runs_in_an_interpreter_without_qt(drain, tmp_path, monkeypatch):
    """The Scans dock's "Fine-tune on corrected scans" hands file pairs with their
    annotated-slice records to the Fine-tune dock, whose job trains them in a child
    process. That child must never import Qt or napari: here it runs in an interpreter
    where importing them fails (a meta-path blocker in sitecustomize)."""
    import subprocess

    import numpy as np
    import SimpleITK as sitk

    from napari_vnet._widgets._finetune_pairs import _file_item, _Pair
    from napari_vnet.models import load_checkpoint
    from napari_vnet.training import TrainConfig
    from napari_vnet.workflows.finetune import training_job

    blocker = tmp_path / "noqt"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(QT_BLOCKER)
    monkeypatch.setenv("PYTHONPATH", str(blocker))
    probe = subprocess.run(
        [sys.executable, "-c", "import qtpy"], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode != 0 and "Qt-less interpreter" in probe.stderr

    z, y, x = np.indices((12, 24, 24))
    labels = (((z - 6) ** 2 + (y - 12) ** 2 + (x - 12) ** 2) < 20).astype(np.uint8) * 3
    image = np.random.default_rng(0).normal(0, 0.2, labels.shape).astype(np.float32) + labels
    paths = []
    for arr, name in ((image, "scan.nii.gz"), (labels, "scan.seg.nii.gz")):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(img, str(tmp_path / name))
        paths.append(tmp_path / name)
    # the record the scan browser saves with a corrected scan's labels
    record = {"axis": 0, "slices": [5, 6, 7]}
    spec = _file_item(_Pair(image_path=paths[0], labels_path=paths[1], annotated=record), True)
    config = TrainConfig(
        arch="unet3d", arch_kwargs={"channels": [4, 8]}, iterations=2, patch_size=(8, 16, 16),
        batch_size=1, amp=False, class_names={3: "lesion"},
    )  # fmt: skip
    out = tmp_path / "scans-ft.pt"
    # what training_job starts (run_in_child directly: no in-thread fallback here)
    assert training_job.__module__ == "napari_vnet.workflows.finetune"
    events, summary = drain(
        run_in_child(
            "napari_vnet.workflows.finetune:finetune_job", [spec], config, None, out,
            stop=threading.Event(),
        )
    )  # fmt: skip
    assert [e["iteration"] for e in events] == [1, 2]
    assert summary["iterations"] == 2 and not summary["cancelled"]
    _, card = load_checkpoint(out)
    assert [(c.value, c.name) for c in card.classes] == [(0, "background"), (3, "lesion")]
    assert card.history["run"]["config"]["class_names"] == {"3": "lesion"}


def test_child_exits_cleanly_while_its_stop_reader_waits_on_stdin(tmp_path):
    """The parent keeps stdin open after the job ends: the child's stop-reader thread is
    still blocked in a read when the child exits. Ending through interpreter
    finalisation could then abort with "Fatal Python error: _enter_buffered_busy"."""
    import pickle
    import subprocess

    env = dict(os.environ)
    job = {"target": "fake_jobs:count", "args": (3,), "kwargs": {}, "nice": 0}
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "napari_vnet.workflows.child_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        pickle.dump(job, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.flush()
        kinds = []
        while True:
            message = pickle.load(proc.stdout)
            kinds.append(message[0])
            if message[0] != "event":
                break
        code = proc.wait(timeout=60)  # stdin still open: the reader thread is blocked
        err = proc.stderr.read().decode(errors="replace")
        proc.stdin.close()
        assert kinds == ["event"] * 3 + ["return"]
        assert code == 0, err
        assert "Fatal Python error" not in err
