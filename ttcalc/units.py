"""Unit conversions used at the package boundaries.

Everything inside ttcalc and md_protocols is in ASE units: eV, Å, fs-based ASE time.
Datasets and backends that use other units are converted where they are read.
"""
from ase import units

#: 1 kcal/mol in eV (rMD17 energies, sGDML's default unit).
KCAL_MOL_TO_EV: float = units.kcal / units.mol
#: 1 Hartree in eV (xTB's internal energy unit).
HARTREE_TO_EV: float = units.Hartree
#: 1 Bohr in Å (xTB's internal length unit).
BOHR_TO_ANGSTROM: float = units.Bohr
