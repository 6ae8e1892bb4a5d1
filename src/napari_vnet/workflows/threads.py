"""How many threads a run computes with: the cores this process really has (no Qt, no
torch import).

On a machine that other work keeps busy, or in a container with fewer CPUs than the
machine, torch's default (one OpenMP thread per physical core) oversubscribes the cores:
OpenMP threads wait for each other at every layer, so one thread that another process
preempts stalls them all (a small CT on a busy 2-core machine: 26.9 s with the default
threads, 2.4 s with one).

* :func:`choose_threads` (pure): the count from the affinity mask, the cgroup CPU quota,
  the threads this process runs beside the work, the cores kept for a GUI and the load;
* :func:`thread_choice`: the same with this machine's facts now;
* :func:`use_threads`: a block run with that many torch and SimpleITK threads (logged).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "ThreadChoice",
    "busy_now",
    "choose_threads",
    "cpu_quota",
    "parse_cpu_max",
    "thread_choice",
    "use_threads",
]


@dataclass(frozen=True)
class ThreadChoice:
    """How many intra-op threads a run uses, and the facts that chose it."""

    threads: int
    cores: int  # usable: affinity, capped by the cgroup quota
    affinity: int
    quota: float | None = None  # CPUs the cgroup grants (None: no quota)
    helpers: int = 0  # threads of this process busy beside the run (read-ahead, writer)
    helpers_note: str = "helper threads"
    reserve: int = 0  # cores kept free (the GUI's)
    load: float | None = None  # 1-minute load average (None: unknown)
    busy_now: float | None = None  # cores other processes kept busy just now (None: unknown)
    own_load: float = 0.0  # this process's share of it
    ceiling: int | None = None  # torch's thread count before (OMP_NUM_THREADS, the caller's)
    share: int = 1  # processes sharing the cores (torchrun's ranks on this machine)
    requested: int | None = None

    def reason(self) -> str:
        """One line: the facts, then the choice."""
        quota = "none" if self.quota is None else f"{self.quota:g} CPUs"
        ranks = f", {self.share} processes" if self.share > 1 else ""
        parts = [f"{self.cores} cores available (affinity {self.affinity}, "
                 f"cgroup quota {quota}{ranks})"]  # fmt: skip
        if self.requested:
            return f"{parts[0]}, requested -> {_threads(self.threads)}"
        if self.helpers:
            parts.append(f"{self.helpers} {self.helpers_note}")
        if self.reserve:
            parts.append(f"{self.reserve} kept for the GUI")
        if self.load is not None:
            parts.append(f"load {self.load:.1f} ({self.own_load:.1f} of it this process)")
        if self.busy_now is not None:
            parts.append(f"other processes busy now {self.busy_now:.1f} cores")
        if self.ceiling is not None:
            parts.append(f"at most {self.ceiling} (torch's setting)")
        return f"{', '.join(parts)} -> {_threads(self.threads)}"


def _threads(n: int) -> str:
    return f"{n} thread{'s' * (n != 1)}"


def choose_threads(
    requested: int | None = None,
    *,
    affinity: int,
    quota: float | None = None,
    load: float | None = None,
    own_load: float = 0.0,
    helpers: int = 0,
    helpers_note: str = "helper threads",
    reserve: int = 0,
    ceiling: int | None = None,
    share: int = 1,
    helper_weight: float = 0.5,
    busy_now: float | None = None,
) -> ThreadChoice:
    """The intra-op thread count for a run (pure: every fact is an argument).

    ``requested`` > 0 is taken as it is. Otherwise: the usable cores are the CPUs of the
    affinity mask, capped by the cgroup ``quota`` (rounded down, at least 1) and divided
    among the ``share`` processes that run alike on this machine; from them go
    the ``reserve`` (cores kept for a GUI), ``helper_weight`` of a core for each of the
    ``helpers`` (niced read-ahead and writer threads, busy part of the time) and the
    runnable threads of *other* processes (the 1-minute ``load`` less ``own_load``, this
    process's share of it; the 1-minute average lags, so when ``busy_now`` - the cores
    other processes kept busy over the last fraction of a second - is known and lower, it
    counts instead: a machine whose earlier jobs just ended is idle). What is left, rounded, between 1 and the usable cores less the
    reserve, and at most ``ceiling`` (torch's thread count before, e.g. set by
    ``OMP_NUM_THREADS``). OpenMP threads wait for each other at every layer, so one thread
    that another process preempts stalls them all: on a busy machine fewer threads win.
    """
    affinity = max(1, int(affinity))
    share = max(1, int(share))
    cores = affinity if quota is None else max(1, min(affinity, int(quota)))
    cores = max(1, cores // share)
    facts: dict[str, Any] = dict(cores=cores, affinity=affinity, quota=quota, helpers=helpers,
                 helpers_note=helpers_note, reserve=reserve, load=load, own_load=own_load,
                 ceiling=ceiling, share=share, busy_now=busy_now)  # fmt: skip
    if requested is not None and requested > 0:
        return ThreadChoice(threads=int(requested), requested=int(requested), **facts)
    # the other ranks' load is theirs to share, not more: each rank counts its share
    others = max(0.0, (load or 0.0) - own_load)
    if busy_now is not None:
        others = min(others, max(0.0, busy_now))
    others /= share
    free = cores - reserve - helper_weight * helpers - others
    threads = min(max(1, cores - reserve), int(free + 0.5))
    if ceiling is not None:
        threads = min(threads, ceiling)
    return ThreadChoice(threads=max(1, threads), **facts)


def parse_cpu_max(text: str) -> float | None:
    """CPUs granted by a cgroup v2 ``cpu.max`` line (``"200000 100000"`` -> 2.0;
    ``"max 100000"`` -> None)."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    period = float(fields[1]) if len(fields) > 1 else 100000.0
    return float(fields[0]) / period if period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup",
              proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> float | None:  # fmt: skip
    """CPUs this process's cgroup may use (v2 ``cpu.max`` or v1 CFS quota, the smallest
    along the cgroup's path up to the root), or None when there is no quota (or no cgroup)."""
    quotas: list[float] = []
    for line in (_read(Path(proc_cgroup)) or "").splitlines():
        _, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        parts = [p for p in rel.strip().split("/") if p]
        for depth in range(len(parts), -1, -1):  # the cgroup, then its parents
            if controllers == "":  # cgroup v2
                q = _v2_quota(Path(root, *parts[:depth], "cpu.max"))
            elif "cpu" in controllers.split(","):
                q = _v1_quota(Path(root, controllers, *parts[:depth]))
            else:
                break
            quotas += [q] if q else []
    return min(quotas) if quotas else None


def _v2_quota(path: Path) -> float | None:
    text = _read(path)
    return parse_cpu_max(text) if text else None


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int(quota or -1), int(period or 0)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _own_load() -> float:
    """This process's share of the 1-minute load average, roughly: its CPU time over its
    life, per second, for a life of at least a minute (a process started seconds ago has
    hardly entered the average yet)."""
    times = os.times()  # this process's CPU time (all its threads)
    cpu = times.user + times.system
    life = 60.0
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        life = max(life, float(Path("/proc/uptime").read_text().split()[0]) - start)
    except (OSError, ValueError, IndexError):
        pass
    return cpu / life


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from ``/proc/stat``."""
    line = (_read(Path("/proc/stat")) or "").split("\n", 1)[0].split()
    if len(line) < 5 or line[0] != "cpu":
        return None
    try:
        values = [int(v) for v in line[1:9]]
    except ValueError:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_now(interval: float = 0.1) -> float | None:
    """Cores that *other* processes kept busy over the next ``interval`` seconds (the
    machine's busy CPU time less this process's, per second), or None where
    ``/proc/stat`` is missing. Unlike the load average it does not lag."""
    import time

    before, own_before = _cpu_jiffies(), os.times()
    if before is None:
        return None
    time.sleep(interval)
    after, own_after = _cpu_jiffies(), os.times()
    if after is None or after[1] <= before[1]:
        return None
    ncpu = os.cpu_count() or 1
    busy = (after[0] - before[0]) / (after[1] - before[1]) * ncpu  # busy cores
    elapsed = own_after.elapsed - own_before.elapsed
    own_cpu = (own_after.user + own_after.system) - (own_before.user + own_before.system)
    own = own_cpu / elapsed if elapsed > 0 else 0.0
    return max(0.0, busy - own)


def thread_choice(
    requested: int | None = None, *, helpers: int = 0, helpers_note: str = "helper threads",
    reserve: int = 0,
) -> ThreadChoice:  # fmt: skip
    """:func:`choose_threads` with this machine's facts now: the affinity mask, the cgroup
    quota, the load average, torchrun's ranks on this machine (``LOCAL_WORLD_SIZE``) and,
    once torch is imported, its current thread count as the ceiling; what other processes
    use right now (:func:`busy_now`, a 0.1 s sample) only when the load average would cost
    threads (it can only give some back)."""
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        load = None
    torch = sys.modules.get("torch")
    try:
        share = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    except ValueError:
        share = 1
    facts: dict[str, Any] = dict(
        affinity=_affinity(), quota=cpu_quota(), load=load, own_load=_own_load(),
        helpers=helpers, helpers_note=helpers_note, reserve=reserve, share=share,
        ceiling=torch.get_num_threads() if torch is not None else None,
    )  # fmt: skip
    choice = choose_threads(requested, **facts)
    if choice.requested or choice.threads >= choose_threads(**{**facts, "load": None}).threads:
        return choice  # asked for, or the load average took nothing
    return choose_threads(requested, **facts, busy_now=busy_now())


def _sitk_threads(n: int | None) -> int | None:
    """Set SimpleITK's default thread count (its resampling) to ``n``; the one before."""
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - a dependency
        return None
    before = int(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    if n is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(n))
    return before


@contextlib.contextmanager
def use_threads(choice: ThreadChoice | int | None = None, **facts: Any) -> Iterator[ThreadChoice]:
    """Run the block with ``choice``'s thread count in torch (when imported: a run that
    never imports it leaves it alone) and SimpleITK (an int or None: :func:`thread_choice`
    of it with ``facts``); logs the choice and why; restores the counts before
    afterwards. Call it in the thread that runs the work."""
    if not isinstance(choice, ThreadChoice):
        choice = thread_choice(choice, **facts)
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    sitk_before = _sitk_threads(choice.threads)
    if torch is not None:
        torch.set_num_threads(choice.threads)
    log.info("threads: %s", choice.reason())
    try:
        yield choice
    finally:
        if torch is not None:
            torch.set_num_threads(before)
        _sitk_threads(sitk_before)
