"""ScalpNet: classify scalp conditions from photos.

Importing the package is cheap: TensorFlow is imported only by the modules
that need it. Saved models still reload after a bare ``import scalpnet``
because the package registers its Keras layers the moment Keras itself is
imported (see ``_register_layers_with_keras``).
"""

from __future__ import annotations

import importlib
import sys

from scalpnet.import_hooks import on_import

__version__ = "0.1.0"


def _register_layers(load, module) -> None:
    """After ``keras`` finishes importing, import ``scalpnet.learn.layers`` so
    ``keras.saving.load_model`` can find our layers."""
    load(module)
    importlib.import_module("scalpnet.learn.layers")


def _register_layers_with_keras() -> None:
    if "keras" in sys.modules:
        importlib.import_module("scalpnet.learn.layers")
    else:
        on_import("keras", _register_layers)


_register_layers_with_keras()
