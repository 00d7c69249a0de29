"""ttcalc: machine-learned interatomic potentials that adapt to new systems before MD.

Public entry points:

* :class:`ttcalc.TTTCalculator`: the ASE calculator (test-time training, radius refinement).
* :func:`ttcalc.load_model` / :class:`ttcalc.MultiHeadPotential`: the multi-head torchmd-net model.
* :func:`ttcalc.load_pretrained`: models shipped inside the package.
* :mod:`ttcalc.spectral`, :mod:`ttcalc.shifts` (``diagnose``): shift diagnostics.

The subpackages follow the data flow: data → priors → model → diagnostics → train → adapt →
calculator → app (command line, demo, benchmark runner, plots).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
from typing import TYPE_CHECKING

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:  # pragma: no cover
    from ttcalc.calculator import MDLearner, TTTCalculator
    from ttcalc.model.potential import ModelConfig, MultiHeadPotential

_LAZY = {
    "TTTCalculator": ("ttcalc.calculator", "TTTCalculator"),
    "MDLearner": ("ttcalc.calculator", "MDLearner"),
    "MultiHeadPotential": ("ttcalc.model.potential", "MultiHeadPotential"),
    "ModelConfig": ("ttcalc.model.potential", "ModelConfig"),
    "load_model": ("ttcalc.model.potential", "load_model"),
    "load_pretrained": ("ttcalc.model.pretrained", "load_pretrained"),
}
#: public module names kept from the flat layout: ``ttcalc.spectral`` and ``ttcalc.shifts`` are the
#: diagnostics modules of those names (``import ttcalc.spectral`` works too)
_MODULES = {"ttcalc.spectral": "ttcalc.diagnostics.spectral", "ttcalc.shifts": "ttcalc.diagnostics.shifts"}


class _PublicModules(importlib.abc.MetaPathFinder):
    """Finds ``ttcalc.spectral``/``ttcalc.shifts`` as the diagnostics modules themselves (one module
    object under two names, so their state and ``isinstance`` checks are shared)."""

    def find_spec(self, name, path=None, target=None):
        if name not in _MODULES:
            return None
        return importlib.util.spec_from_loader(name, _Alias(_MODULES[name]))


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.spec = module.__spec__  # the import system stamps the alias's spec on the module
        return module

    def exec_module(self, module):
        module.__spec__ = self.spec  # already executed under its own name: keep its own identity


if not any(isinstance(f, _PublicModules) for f in sys.meta_path):
    sys.meta_path.append(_PublicModules())


def __getattr__(name: str):
    # lazy so that `import ttcalc.data` does not pay for torch/torchmd-net start-up
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if f"ttcalc.{name}" in _MODULES:
        return importlib.import_module(f"ttcalc.{name}")
    raise AttributeError(f"module 'ttcalc' has no attribute {name!r}")
