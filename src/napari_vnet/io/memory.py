"""How much memory a new allocation may take, checked before sizes that an input file
decides are allocated (image voxels, checkpoint tensors, networks, resampled grids).

:func:`available_memory` is the smallest of: the kernel's ``MemAvailable``, what the
process's address-space limit (``RLIMIT_AS``, e.g. set by a batch system) still allows,
a cgroup memory limit, and ``NAPARI_VNET_MEMORY_LIMIT`` (bytes, or with a ``K``/``M``/``G``
suffix) when set.
"""

from __future__ import annotations

import os

ENV_LIMIT = "NAPARI_VNET_MEMORY_LIMIT"


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def _address_space_left() -> int | None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - used)


def _cgroup_left() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as fh:
            text = fh.read().strip()
        if text == "max":
            return None
        limit = int(text)
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as fh:
            current = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    return max(0, limit - current)


def parse_size(text: str) -> int:
    """``"1G"`` -> 1073741824; plain numbers are bytes."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    return int(float(number) * scale)


def available_memory() -> int | None:
    """Bytes a new allocation may take now (see the module text), or None when unknown."""
    figures = [_meminfo_available(), _address_space_left(), _cgroup_left()]
    env = os.environ.get(ENV_LIMIT)
    if env:
        try:
            figures.append(parse_size(env))
        except ValueError:
            pass
    known = [f for f in figures if f is not None]
    return min(known) if known else None


def human_bytes(n: float) -> str:
    """``3221225472`` -> ``"3.0 GiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def memory_problem(nbytes: int, what: str) -> str | None:
    """None when ``nbytes`` fit in the available memory, else the reason, e.g.
    ``"the image needs 3.0 GiB of memory but only 1.0 GiB is available"``."""
    free = available_memory()
    if free is None or nbytes <= free:
        return None
    return (
        f"{what} needs {human_bytes(nbytes)} of memory but only {human_bytes(free)} is "
        "available; refused before allocating"
    )
