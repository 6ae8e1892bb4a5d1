"""The docks' halves (mixins) declare what they use of the dock they are mixed into, and
the dock provides it: every ``self.<name>`` a half reads or writes is defined by the half
or declared in its annotations (or those of its contract base), and every declared name is
an attribute of the dock class or is set on ``self`` in the dock's module."""

from __future__ import annotations

import ast
import importlib
import inspect

import pytest

W = "napari_vnet._widgets"
HALVES = [  # (module of the half, the half, module of the dock, the dock)
    (f"{W}._scan_loading", "ScanLoadingMixin", f"{W}.scans", "ScansWidget"),
    (f"{W}._scan_edits", "ScanEditsMixin", f"{W}.scans", "ScansWidget"),
    (f"{W}._finetune_pairs", "FinetunePairsMixin", f"{W}.finetune", "FinetuneWidget"),
    (f"{W}._finetune_export", "FinetuneExportMixin", f"{W}.finetune", "FinetuneWidget"),
    (f"{W}._finetune_run", "FinetuneRunMixin", f"{W}.finetune", "FinetuneWidget"),
]


def _class_node(module, name: str) -> ast.ClassDef:
    tree = ast.parse(inspect.getsource(module))
    return next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)


def _self_names(node: ast.AST, *, stored: bool = False) -> set[str]:
    """``self.<name>`` in ``node`` (``stored``: only those assigned)."""
    return {
        n.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id == "self"
        and (not stored or isinstance(n.ctx, ast.Store))
    }


def _declared(cls: type) -> set[str]:
    names: set[str] = set()
    for base in cls.__mro__[:-1]:  # not object
        names |= set(vars(base).get("__annotations__", {}))
    return names


@pytest.mark.parametrize(("half_mod", "half", "dock_mod", "dock"), HALVES)
def test_half_declares_what_it_uses_and_the_dock_provides_it(half_mod, half, dock_mod, dock):
    module = importlib.import_module(half_mod)
    cls = getattr(module, half)
    own = {name for name in vars(cls) if not name.startswith("__")}
    declared = _declared(cls)
    undeclared = _self_names(_class_node(module, half)) - own - declared
    assert not undeclared, f"{half} uses undeclared fields of {dock}: {sorted(undeclared)}"

    host_module = importlib.import_module(dock_mod)
    host = getattr(host_module, dock)
    set_by_host = _self_names(_class_node(host_module, dock), stored=True)
    missing = {name for name in declared if not hasattr(host, name)} - set_by_host
    assert not missing, f"{dock} lacks what {half} declares: {sorted(missing)}"
