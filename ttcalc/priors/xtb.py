"""GFN-xTB tight-binding prior through xtb-python or tblite.

GFN2-xTB: Bannwarth, Ehlert, Grimme, J. Chem. Theory Comput. 15, 1652 (2019). Both backends are
called through their library interfaces (``xtb.interface.Calculator``,
``tblite.interface.Calculator``), which work in atomic units:

    E [eV]    = E [Hartree] * HARTREE_TO_EV
    F [eV/Å]  = -∂E/∂R [Hartree/Bohr] * HARTREE_TO_EV / BOHR_TO_ANGSTROM
    R [Bohr]  = R [Å] / BOHR_TO_ANGSTROM
"""
from __future__ import annotations

import logging
from importlib.metadata import version

import numpy as np
from ase import Atoms, units

from ttcalc.priors.base import Prior, PriorError
from ttcalc.priors.threads import NativeThreadLimit
from ttcalc.units import BOHR_TO_ANGSTROM, HARTREE_TO_EV

logger = logging.getLogger(__name__)

BACKENDS = ("xtb", "tblite")
#: methods tblite's library interface can load, keyed by lower-case name
_TBLITE_METHODS = {"gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB", "ipea1-xtb": "IPEA1-xTB"}
#: Boltzmann constant in Hartree/K (tblite takes the electronic temperature in Hartree)
_KB_HARTREE_PER_K = units.kB / units.Hartree


class XTBPrior(Prior):
    """Energies and forces from a GFN-xTB Hamiltonian (default GFN2-xTB).

    ``backend="xtb"`` uses xtb-python, ``backend="tblite"`` the tblite library. Periodic cells are
    passed on as lattice and periodicity flags (tblite supports them; xtb-python's GFN2-xTB does
    not and raises, which surfaces as :class:`PriorError`).

    The backend calculator object is kept and only its positions (and lattice) are updated while
    the atomic numbers and periodicity stay the same, which saves the parameter set-up on every MD
    step. Each single point starts from a fresh guess (no wavefunction restart), so the labels are
    a function of the geometry alone and do not depend on the order of calls. Native threads are
    capped at ``num_threads`` during each call (see :mod:`ttcalc.priors.threads`).

    An SCF failure or non-convergence raises :class:`PriorError` with the formula and the
    backend's reason; it never yields NaN.
    """

    def __init__(
        self,
        method: str = "GFN2-xTB",
        backend: str = "xtb",
        accuracy: float = 1.0,
        electronic_temperature: float = 300.0,
        charge: int = 0,
        uhf: int = 0,
        max_iterations: int = 250,
        num_threads: int | None = 1,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown xTB backend {backend!r}; choose one of {BACKENDS}")
        if backend == "xtb":
            from xtb.utils import get_method

            if get_method(method) is None:
                raise ValueError(f"xtb-python does not know the method {method!r}")
        elif method.lower() not in _TBLITE_METHODS:
            raise ValueError(
                f"tblite does not know the method {method!r}; choose one of {sorted(_TBLITE_METHODS.values())}"
            )
        else:
            method = _TBLITE_METHODS[method.lower()]
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        self.method = method
        self.backend = backend
        self.accuracy = float(accuracy)
        self.electronic_temperature = float(electronic_temperature)
        self.charge = int(charge)
        self.uhf = int(uhf)
        self.max_iterations = int(max_iterations)
        self.name = f"{method}[{backend}]"
        self.backend_version = version(backend)  # labels can change between backend releases
        self._threads = NativeThreadLimit(num_threads)
        self._calc = None  # backend calculator, reused while numbers and periodicity are unchanged
        self._calc_key: tuple | None = None

    def __repr__(self) -> str:
        return (
            f"XTBPrior(method={self.method!r}, backend={self.backend!r}, accuracy={self.accuracy}, "
            f"electronic_temperature={self.electronic_temperature}, charge={self.charge}, uhf={self.uhf}, "
            f"max_iterations={self.max_iterations})"
        )

    def fingerprint(self) -> str:
        """Method, backend and its version, accuracy, electronic temperature, charge and uhf."""
        return (
            f"xtb(method={self.method},backend={self.backend}-{self.backend_version},"
            f"accuracy={self.accuracy!r},electronic_temperature={self.electronic_temperature!r},"
            f"charge={self.charge},uhf={self.uhf})"
        )

    def __getstate__(self) -> dict:
        # the backend calculator wraps C pointers: drop it, it is rebuilt on the next call
        state = dict(self.__dict__)
        state["_calc"] = None
        state["_calc_key"] = None
        return state

    def _energy_forces(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        numbers = np.asarray(atoms.numbers, dtype=np.int32)
        positions = np.ascontiguousarray(atoms.positions, dtype=np.float64) / BOHR_TO_ANGSTROM
        periodic = np.asarray(atoms.pbc, dtype=bool)
        lattice = None
        if periodic.any():
            lattice = np.ascontiguousarray(atoms.cell.array, dtype=np.float64) / BOHR_TO_ANGSTROM
        key = (numbers.tobytes(), periodic.tobytes())
        errors = self._backend_errors()
        try:
            with self._threads():
                if self._calc is not None and key == self._calc_key:
                    self._calc.update(positions, lattice)
                else:
                    self._calc = None
                    self._calc = self._new_calculator(numbers, positions, lattice, periodic)
                    self._calc_key = key
                energy, gradient = self._singlepoint()
        except errors as exc:
            # drop the calculator: the next call starts from a clean backend state
            self._calc, self._calc_key = None, None
            reason = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            formula = atoms.get_chemical_formula()
            raise PriorError(f"{self.name}: calculation failed for {formula}: {reason}") from exc
        forces = -np.asarray(gradient, dtype=np.float64) * (HARTREE_TO_EV / BOHR_TO_ANGSTROM)
        return float(energy) * HARTREE_TO_EV, forces

    def _backend_errors(self) -> tuple[type[BaseException], ...]:
        if self.backend == "xtb":
            from xtb.interface import XTBException

            # ValueError: xtb-python's own shape checks
            return (XTBException, ValueError)
        from tblite.exceptions import TBLiteRuntimeError, TBLiteTypeError, TBLiteValueError

        return (TBLiteRuntimeError, TBLiteTypeError, TBLiteValueError)

    def _new_calculator(
        self, numbers: np.ndarray, positions: np.ndarray, lattice: np.ndarray | None, periodic: np.ndarray
    ):
        pbc = periodic if periodic.any() else None
        if self.backend == "xtb":
            from xtb.interface import Calculator
            from xtb.libxtb import VERBOSITY_MUTED
            from xtb.utils import get_method

            calc = Calculator(get_method(self.method), numbers, positions, self.charge, self.uhf, lattice, pbc)
            calc.set_verbosity(VERBOSITY_MUTED)
            calc.set_accuracy(self.accuracy)
            calc.set_electronic_temperature(self.electronic_temperature)
            calc.set_max_iterations(self.max_iterations)
            return calc
        from tblite.interface import Calculator

        # the context logger would print to stdout: route anything it says to our debug log
        calc = Calculator(
            self.method, numbers, positions, self.charge, self.uhf, lattice, pbc, color=False, logger=logger.debug
        )
        calc.set("verbosity", 0)
        calc.set("accuracy", self.accuracy)
        calc.set("temperature", self.electronic_temperature * _KB_HARTREE_PER_K)
        calc.set("max-iter", self.max_iterations)
        return calc

    def _singlepoint(self) -> tuple[float, np.ndarray]:
        """Energy (Hartree) and gradient (Hartree/Bohr) at the calculator's current geometry."""
        res = self._calc.singlepoint()
        if self.backend == "xtb":
            return res.get_energy(), res.get_gradient()
        return res.get("energy"), res.get("gradient")
