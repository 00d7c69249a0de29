"""Classical force-field priors: effective-medium theory and Lennard-Jones (ASE implementations)."""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.emt import parameters as EMT_PARAMETERS
from ase.calculators.lj import LennardJones

from ttcalc.priors.base import PriorError
from ttcalc.priors.wrapped import CalculatorPrior

#: elements ASE's EMT has parameters for (Al, Cu, Ag, Au, Ni, Pd, Pt; H, C, N, O only qualitatively)
EMT_ELEMENTS: frozenset[str] = frozenset(EMT_PARAMETERS)


class EMTPrior(CalculatorPrior):
    """Effective-medium theory (Jacobsen, Stoltze, Nørskov, Surf. Sci. 366, 394 (1996)) via ASE's EMT.

    ASE's EMT has parameters for :data:`EMT_ELEMENTS` only; a structure with any other element
    raises :class:`PriorError` naming the unsupported elements (before ASE would raise a bare
    NotImplementedError).
    """

    def __init__(self) -> None:
        super().__init__(EMT(), name="emt")

    def _energy_forces(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        unsupported = sorted(set(atoms.get_chemical_symbols()) - EMT_ELEMENTS)
        if unsupported:
            raise PriorError(
                f"emt: no EMT parameters for {', '.join(unsupported)} in {atoms.get_chemical_formula()}; "
                f"EMT supports {', '.join(sorted(EMT_ELEMENTS))}"
            )
        return super()._energy_forces(atoms)


class LJPrior(CalculatorPrior):
    """Pairwise Lennard-Jones, E = Σ_{i<j} 4ε[(σ/r_ij)^12 - (σ/r_ij)^6], via ASE's LennardJones.

    ``rc`` is the cutoff (ASE's default 3σ when None). With ``smooth=True`` (default) ASE multiplies
    the pair energy by a cutoff function that goes smoothly to zero between 0.66·rc and rc, so
    energy and forces are continuous at the cutoff (what MD and finite differences need); with
    ``smooth=False`` the pair energy is shifted to zero at rc and the forces jump there.
    σ in Å, ε in eV; defaults are ASE's (σ = ε = 1).
    """

    def __init__(self, sigma: float = 1.0, epsilon: float = 1.0, rc: float | None = None, smooth: bool = True) -> None:
        if sigma <= 0 or epsilon < 0:
            raise ValueError(f"need sigma > 0 and epsilon >= 0, got sigma={sigma}, epsilon={epsilon}")
        if rc is not None and rc <= 0:
            raise ValueError(f"need rc > 0, got {rc}")
        self.sigma, self.epsilon, self.rc, self.smooth = float(sigma), float(epsilon), rc, bool(smooth)
        super().__init__(LennardJones(sigma=self.sigma, epsilon=self.epsilon, rc=rc, smooth=self.smooth), name="lj")
