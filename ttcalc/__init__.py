"""ttcalc: machine-learned interatomic potentials that adapt to new systems before MD.

Public entry points:

* :class:`ttcalc.TTTCalculator`: the ASE calculator (test-time training, radius refinement).
* :func:`ttcalc.load_model` / :class:`ttcalc.MultiHeadPotential`: the multi-head torchmd-net model.
* :func:`ttcalc.load_pretrained`: models shipped inside the package.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:  # pragma: no cover
    from .calculator import TTTCalculator
    from .model import ModelConfig, MultiHeadPotential

_LAZY = {
    "TTTCalculator": ("ttcalc.calculator", "TTTCalculator"),
    "MultiHeadPotential": ("ttcalc.model", "MultiHeadPotential"),
    "ModelConfig": ("ttcalc.model", "ModelConfig"),
    "load_model": ("ttcalc.checkpoint", "load_checkpoint"),
    "load_pretrained": ("ttcalc.pretrained", "load_pretrained"),
}


def __getattr__(name: str):
    # lazy so that `import ttcalc.data` does not pay for torch/torchmd-net start-up
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ttcalc' has no attribute {name!r}")
