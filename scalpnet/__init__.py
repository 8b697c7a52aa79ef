"""ScalpNet: classify scalp conditions from photos.

Importing the package is cheap: TensorFlow is imported only by the modules
that need it. Saved models still reload after a bare ``import scalpnet``
because the package registers its Keras layers the moment Keras itself is
imported (see ``_register_layers_with_keras``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"


class _RegisterLayersOnKerasImport(importlib.abc.MetaPathFinder):
    """One-shot import hook: after ``keras`` finishes importing, import
    ``scalpnet.learn.layers`` so ``keras.saving.load_model`` can find our layers."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def load_then_register(module):
            load(module)
            importlib.import_module("scalpnet.learn.layers")

        spec.loader.exec_module = load_then_register
        return spec


def _register_layers_with_keras() -> None:
    if "keras" in sys.modules:
        importlib.import_module("scalpnet.learn.layers")
    elif not any(isinstance(f, _RegisterLayersOnKerasImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterLayersOnKerasImport())


_register_layers_with_keras()
