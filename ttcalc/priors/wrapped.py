"""Any ASE calculator used as a prior."""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator, CalculatorError

from ttcalc.priors.base import Prior, PriorError


class CalculatorPrior(Prior):
    """Energy and forces of an ASE calculator, evaluated on a copy of each structure.

    The structure is copied (so the caller's ``atoms.calc`` is left alone) and the wrapped
    calculator is attached to the copy. Forces are read with ``apply_constraint=False``: a prior
    labels the raw potential-energy surface, whatever constraints the structure carries. Errors the
    calculator reports through ASE's :class:`CalculatorError` become :class:`PriorError`.
    """

    def __init__(self, calc: BaseCalculator, name: str | None = None) -> None:
        self.calc = calc
        self.name = name if name is not None else type(calc).__name__.lower()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.calc).__name__}, name={self.name!r})"

    def fingerprint(self) -> str:
        """Name, calculator class and the calculator's parameters (sorted, so the order is stable)."""
        params = getattr(self.calc, "parameters", {}) or {}
        items = ",".join(f"{k}={params[k]!r}" for k in sorted(params))
        return f"{self.name}:{type(self.calc).__module__}.{type(self.calc).__name__}({items})"

    def _energy_forces(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        work = atoms.copy()
        work.calc = self.calc
        try:
            energy = work.get_potential_energy()
            forces = work.get_forces(apply_constraint=False)
        except (CalculatorError, NotImplementedError) as exc:
            raise PriorError(f"{self.name}: calculation failed for {atoms.get_chemical_formula()}: {exc}") from exc
        return float(energy), np.array(forces, dtype=np.float64)
