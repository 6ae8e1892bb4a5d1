"""Run a long generator job (fine-tuning) in a child Python process; stream its events.

Why a child process: a job run in a thread of the napari process shares that process's
GIL and CPU cores with the GUI thread. Any stretch of the job that holds the GIL (an
import compiling modules, a numpy or SimpleITK call on a large volume, pickling a
checkpoint) freezes the viewer for that long. A child process has its own interpreter,
so nothing it does can hold the GUI's GIL; it also runs at a lower CPU priority
(``os.nice``) so the GUI thread wins the cores when both want them.

    for event in run_in_child("pkg.module:generator_fn", *args, stop=event, **kwargs):
        ...                                  # each value the child's generator yielded
    # the generator's return value is the StopIteration value of run_in_child

The target is named as ``"module:function"`` (imported in the child); it must be a
generator function taking a keyword ``should_stop`` (a callable returning True once a
stop was asked for). Arguments and yielded values must be picklable.

Protocol: the child is ``python -m napari_vnet.workflows.child_process``; the parent writes the
job (one pickle) and later, to cancel, ``"stop"`` (another pickle) to the child's stdin;
the child writes one pickle per message to its original stdout (its fd 1 then points at
stderr, so stray prints cannot corrupt the stream): ``("event", value)``, then
``("return", value)`` or ``("error", pickled_exception_or_None, type_name, message,
traceback)``.
When the parent goes away the child's stdin ends, which also counts as a stop (the job
keeps what it saved and ends). Pickles only travel between this process and its own
child, never from files.

A ``subprocess`` with ``-m`` is used rather than ``multiprocessing``'s "spawn" start
method because spawn re-imports the user's ``__main__`` script in the child (a script
that opens a napari viewer without an ``if __name__ == "__main__"`` guard would open a
second one), and because the end of stdin is a dependable "parent is gone" signal.

This module is part of the core: it imports neither napari nor Qt.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator
from typing import IO, Any

from napari_vnet.errors import NapariVnetError

log = logging.getLogger(__name__)

STOP = "stop"
DEFAULT_NICE = 10  # below the GUI: under CFS a nice-0 thread weighs ~9x a nice-10 one


class ChildJobError(NapariVnetError, RuntimeError):
    """The child process failed without a picklable exception (crash, killed, bad exit)."""


def child_threads() -> int:
    """Cores this process may use, minus one left for the GUI (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 2
    return max(1, n - 1)


def run_in_child(
    target: str,
    *args: Any,
    stop: threading.Event | None = None,
    nice: int = DEFAULT_NICE,
    stop_grace_s: float = 120.0,
    **kwargs: Any,
) -> Generator[Any, None, Any]:
    """Start ``target(*args, should_stop=..., **kwargs)`` in a child process now.

    Returns a generator that yields what the child's generator yields and returns what
    it returns. Setting ``stop`` asks the child to stop (its ``should_stop()`` turns
    True); the job's own end-of-run code still runs (e.g. keeping the best checkpoint).
    An exception in the child is raised by the generator: the same exception object
    when it can be pickled (with the child's traceback attached as a note), else
    :class:`ChildJobError` with its type and message. Closing the generator
    (``GeneratorExit``) also asks the child to stop and waits up to ``stop_grace_s`` for
    it to finish before killing it. Raises OSError at once when no child can be started.
    """
    job = {"target": target, "args": args, "kwargs": kwargs, "nice": int(nice)}
    env = dict(os.environ)
    # the child imports this very package, also when it runs from a source checkout
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_vnet.workflows.child_process"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        close_fds=True,
    )
    return _relay(proc, job, stop, stop_grace_s)


def _pipes(proc: subprocess.Popen) -> tuple[IO[bytes], IO[bytes]]:
    """The child's stdin and stdout (:func:`run_in_child` starts it with both piped)."""
    if proc.stdin is None or proc.stdout is None:
        raise ValueError("the child process was started without stdin and stdout pipes")
    return proc.stdin, proc.stdout


def _relay(proc: subprocess.Popen, job: dict, stop, stop_grace_s: float):
    sent_stop = threading.Event()
    lock = threading.Lock()
    to_child, from_child = _pipes(proc)

    def send(obj) -> None:
        with lock:
            try:
                pickle.dump(obj, to_child, protocol=pickle.HIGHEST_PROTOCOL)
                to_child.flush()
            except (BrokenPipeError, OSError, ValueError):  # child gone: its exit says why
                pass

    def ask_stop() -> None:
        if not sent_stop.is_set():
            sent_stop.set()
            send(STOP)

    finished = threading.Event()

    def watch_stop() -> None:  # the dock's Cancel sets `stop` from the GUI thread
        while stop is not None and not finished.is_set():
            if stop.wait(0.1):
                ask_stop()
                return

    # the job (possibly large arrays) is written by a helper thread: the child reads it
    # while we already wait for its first message, and a pipe write releases the GIL
    threading.Thread(target=send, args=(job,), name="child-job-writer", daemon=True).start()
    threading.Thread(target=watch_stop, name="child-stop-watch", daemon=True).start()
    result: Any = None
    try:
        while True:
            try:
                msg = pickle.load(from_child)
            except EOFError:
                rc = proc.wait()
                raise ChildJobError(
                    f"the training process ended unexpectedly (exit code {rc}); "
                    "see the terminal for its messages"
                ) from None
            kind = msg[0]
            if kind == "event":
                yield msg[1]
            elif kind == "return":
                result = msg[1]
                break
            elif kind == "error":
                _, blob, type_name, message, tb = msg
                try:
                    exc = pickle.loads(blob) if blob is not None else None
                except Exception:  # noqa: BLE001 - its class is not importable here
                    exc = None
                if isinstance(exc, BaseException):
                    _add_note(exc, f"in the training process:\n{tb}")
                    raise exc
                raise ChildJobError(f"{type_name}: {message}")
            else:  # pragma: no cover - protocol error
                raise ChildJobError(f"unexpected message from the child: {kind!r}")
    except GeneratorExit:
        ask_stop()
        _drain(proc, stop_grace_s)
        raise
    finally:
        finished.set()
        _close(proc)
    return result


def _add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` (PEP 678); Python 3.10 has no add_note, so there the
    ``__notes__`` list it would fill is filled by hand."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:
        exc.__dict__.setdefault("__notes__", []).append(note)


def _drain(proc: subprocess.Popen, timeout_s: float) -> None:
    """Read (and drop) the child's remaining messages until it exits or time is up."""
    deadline = time.monotonic() + timeout_s
    from_child = _pipes(proc)[1]

    def reader():
        try:
            while True:
                pickle.load(from_child)
        except Exception:  # noqa: BLE001 - EOF or a broken stream: the child is done
            pass

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(max(0.0, deadline - time.monotonic()))


def _close(proc: subprocess.Popen) -> None:
    to_child, from_child = _pipes(proc)
    try:
        to_child.close()  # end of stdin: a child still running stops
    except OSError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        log.warning("training process %d did not stop; killing it", proc.pid)
        proc.kill()
        proc.wait()
    from_child.close()


# ------------------------------------------------------------------ the child's side


def _child_main() -> int:
    out = os.fdopen(os.dup(1), "wb")  # the message stream: the original stdout
    os.dup2(2, 1)  # anything printed (Python or C) goes to stderr instead
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    logging.basicConfig(level=logging.WARNING, format="napari-vnet training: %(message)s")

    def send(obj) -> None:
        pickle.dump(obj, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()

    try:
        job = pickle.load(inp)
    except EOFError:
        return 0
    stop = threading.Event()

    def read_stop() -> None:
        try:
            while pickle.load(inp) != STOP:
                pass
        except Exception:  # noqa: BLE001 - EOF: the parent closed stdin or is gone
            pass
        stop.set()

    threading.Thread(target=read_stop, name="stop-reader", daemon=True).start()
    if job.get("nice"):
        try:
            os.nice(int(job["nice"]))
        except OSError:  # pragma: no cover - not permitted: run at normal priority
            pass
    try:
        module, _, name = job["target"].partition(":")
        fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
        gen = fn(*job["args"], should_stop=stop.is_set, **job["kwargs"])
        while True:
            try:
                value = next(gen)
            except StopIteration as done:
                send(("return", done.value))
                break
            send(("event", value))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        tb = traceback.format_exc()
        payload: bytes | None
        try:
            payload = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(payload)
        except Exception:  # noqa: BLE001 - unpicklable exception: type and message only
            payload = None
        try:
            send(("error", payload, type(exc).__name__, str(exc), tb))
        except (BrokenPipeError, OSError):
            pass
        return 1
    return 0


def _exit(code: int) -> None:
    """End the child without interpreter finalisation.

    The stop-reader thread may be blocked in a buffered read of stdin; finalising the
    interpreter then takes that buffer's lock and can abort the process with "Fatal Python
    error: _enter_buffered_busy". Everything the parent needs has been sent and flushed, so
    the child flushes what remains and leaves at once.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # pragma: no cover - stream already gone
            pass
    os._exit(code)


if __name__ == "__main__":
    _exit(_child_main())
