"""Names of a package imported on first use (PEP 562), so that importing the package
does not import torch (no Qt)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, table: dict[str, str], namespace: dict[str, Any]) -> Callable:
    """A module ``__getattr__`` for ``package``: ``name`` is imported from the submodule
    ``table[name]`` on first use and kept in ``namespace`` (the package's globals())."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    return __getattr__
