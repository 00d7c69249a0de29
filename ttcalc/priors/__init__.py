"""Cheap reference models ("priors") that label structures with energies (eV) and forces (eV/Å).

- :class:`XTBPrior`: GFN-xTB via xtb-python or tblite.
- :class:`SGDMLPrior`: sGDML fitted to a few labelled frames of one molecule.
- :class:`EMTPrior`, :class:`LJPrior`: classical potentials from ASE.
- :class:`CalculatorPrior`: any ASE calculator.
- :func:`make_prior`: build one from a name.
- Reference calculators for relaxations and labels: :func:`xtb_reference`, :func:`pyscf_calculator`.
"""
from ttcalc.priors.base import Prior, PriorCalculator, PriorError
from ttcalc.priors.classical import EMTPrior, LJPrior
from ttcalc.priors.references import PySCFCalculator, pyscf_calculator, xtb_reference
from ttcalc.priors.registry import make_prior
from ttcalc.priors.sgdml import SGDMLPrior
from ttcalc.priors.wrapped import CalculatorPrior
from ttcalc.priors.xtb import XTBPrior

__all__ = [
    "Prior",
    "PriorError",
    "PriorCalculator",
    "XTBPrior",
    "SGDMLPrior",
    "EMTPrior",
    "LJPrior",
    "CalculatorPrior",
    "make_prior",
    "xtb_reference",
    "pyscf_calculator",
    "PySCFCalculator",
]
