"""The base of every error napari-vnet raises on purpose.

``except NapariVnetError`` catches any of them (a weights file that cannot be used, a
volume that cannot be read, training inputs that do not fit...), while each keeps its
built-in base too (``ValueError``, ``OSError``, ``ImportError``...), so existing
``except`` clauses still work. Cancellations (``PredictionCancelled``,
``TrainingCancelled``) are control flow, not errors, and do not derive from it.

This module imports nothing of the package: every layer may use it.
"""

from __future__ import annotations

__all__ = ["NapariVnetError"]


class NapariVnetError(Exception):
    """An input, file or setting napari-vnet cannot use; the message says which and why."""
