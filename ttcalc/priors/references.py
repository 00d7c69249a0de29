"""Reference calculators for relaxations and labels: GFN2-xTB (xtb-python) and PySCF Kohn–Sham DFT.

Both are plain ASE calculators in eV and Å (PySCF works in Hartree and Bohr inside), for
:func:`md_protocols.relax_extra_steps` or as label sources. PySCF is an optional extra
(``pip install ttcalc[dft]``).
"""
from __future__ import annotations

import numpy as np
from ase import units
from ase.calculators.calculator import Calculator, all_changes

__all__ = ["xtb_reference", "pyscf_calculator", "PySCFCalculator"]


def xtb_reference(method: str = "GFN2-xTB") -> Calculator:
    """GFN2-xTB ASE calculator (xtb-python): the cheap default reference."""
    try:
        from xtb.ase.calculator import XTB
    except ImportError as exc:
        raise ImportError("xtb_reference needs xtb-python: `pip install xtb`") from exc
    return XTB(method=method)


class PySCFCalculator(Calculator):
    """Kohn–Sham DFT with PySCF as an ASE calculator (energy in eV, forces in eV/Å).

    Restricted KS for closed shells (``spin=0``, the number of unpaired electrons), unrestricted
    otherwise. ``density_fit=True`` fits the Coulomb term with PySCF's default auxiliary basis
    (RI-J): for PBE/def2-SVP on rMD17 frames the forces stay within a meV/Å of the exact-integral
    ones at a lower cost (measured in ``benchmarks/online``). The settings are ASE ``parameters``, so
    label caches keyed on them see any change. Raises ``RuntimeError`` if the SCF does not converge.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    discard_results_on_any_change = True  # every setting changes the energy
    default_parameters = {"xc": "PBE", "basis": "def2-SVP", "charge": 0, "spin": 0, "conv_tol": 1e-9,
                          "density_fit": False}

    def __init__(self, xc: str = "PBE", basis: str = "def2-SVP", charge: int = 0, spin: int = 0,
                 conv_tol: float = 1e-9, density_fit: bool = False, **kwargs):
        # the settings live in ``self.parameters`` only, so ``set()`` and label caches see every change
        super().__init__(xc=xc, basis=basis, charge=charge, spin=spin, conv_tol=conv_tol,
                         density_fit=density_fit, **kwargs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        from pyscf import dft, gto

        p = self.parameters
        mol = gto.M(
            atom=[(sym, tuple(r)) for sym, r in zip(self.atoms.get_chemical_symbols(), self.atoms.positions)],
            basis=p.basis, unit="Angstrom", charge=p.charge, spin=p.spin, verbose=0,
        )
        mf = dft.RKS(mol) if p.spin == 0 else dft.UKS(mol)
        if p.density_fit:
            mf = mf.density_fit()
        mf.xc = p.xc
        mf.conv_tol = p.conv_tol
        energy = mf.kernel()
        if not mf.converged:
            raise RuntimeError(f"PySCF {p.xc}/{p.basis} SCF did not converge for {self.atoms.get_chemical_formula()}")
        gradient = mf.nuc_grad_method().kernel()  # Hartree/Bohr
        energy_ev = float(energy) * units.Hartree
        self.results = {
            "energy": energy_ev,
            "free_energy": energy_ev,
            "forces": -np.asarray(gradient) * units.Hartree / units.Bohr,
        }


def pyscf_calculator(xc: str = "PBE", basis: str = "def2-SVP", charge: int = 0, spin: int = 0,
                     density_fit: bool = False) -> PySCFCalculator:
    """A :class:`PySCFCalculator` (PBE/def2-SVP by default, the rMD17 level of theory).

    Raises ``ImportError`` with the install hint if PySCF is missing.
    """
    try:
        import pyscf  # noqa: F401
    except ImportError as exc:
        raise ImportError("pyscf_calculator needs PySCF, an optional extra: `pip install ttcalc[dft]` "
                          "(or `pip install pyscf`)") from exc
    return PySCFCalculator(xc=xc, basis=basis, charge=charge, spin=spin, density_fit=density_fit)
