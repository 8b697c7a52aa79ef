"""One-shot import hooks: run code around the first import of a module, whoever imports it.

on_import("keras", register)   # register(load, module) runs instead of load(module)
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType

Around = Callable[[Callable[[ModuleType], None], ModuleType], None]


class _AroundImport(importlib.abc.MetaPathFinder):
    """Finds ``name`` once (then leaves ``sys.meta_path``) and wraps its loader."""

    def __init__(self, name: str, around: Around):
        self.name, self.around = name, around

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            self.around(load, module)

        spec.loader.exec_module = exec_module
        return spec


def on_import(name: str, around: Around) -> None:
    """Make the first import of ``name`` call ``around(load, module)``, which must call
    ``load(module)``. Does nothing if that hook is already waiting."""
    waiting = (
        isinstance(f, _AroundImport) and f.name == name and f.around is around
        for f in sys.meta_path
    )
    if not any(waiting):
        sys.meta_path.insert(0, _AroundImport(name, around))
