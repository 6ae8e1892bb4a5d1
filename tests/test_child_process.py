"""The child-process runner that keeps fine-tuning off the napari process's GIL."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time

import pytest

from napari_vnet.child_process import ChildJobError, child_threads, run_in_child

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
    import napari_vnet._widgets._finetune_job  # the fine-tune job module
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


def drain(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as done:
            return events, done.value


def test_events_and_return_value_come_from_another_process():
    events, result = drain(run_in_child("fake_jobs:count", 4, nice=3))
    assert [e["i"] for e in events] == [0, 1, 2, 3]
    assert {e["pid"] for e in events} == {result["pid"]} and result["pid"] != os.getpid()
    assert result["stopped_at"] is None
    assert result["nice"] >= os.nice(0) + 3  # the child runs at a lower priority


def test_stop_event_reaches_the_child_and_the_job_ends_its_own_way():
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


def test_the_child_stays_free_of_qt_and_napari_and_stdout_noise_is_harmless():
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
        "import sys, napari_vnet.child_process; "
        "print([m for m in ('napari', 'qtpy', 'PyQt6', 'magicgui') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
