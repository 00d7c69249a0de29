"""MD evaluation protocols for any ASE calculator.

- :func:`run_md` / :func:`run_md_parallel`: NVT Langevin or NVE MD with early-stop checks and exact resume.
- :func:`run_batched_md`: N replicas of one molecule with one model call per step (ttcalc models).
- Stability (Fu et al., "Forces are not enough", TMLR 2023): :func:`bonds_stability` and helpers.
- h(r) (Fu et al. eq. 13-14): :func:`hr`, :func:`hr_mae`.
- NVE energy conservation: :func:`nve_drift`.
- Relaxation and the extra-steps protocol (Kreiman & Krishnapriyan 2025, A.3.1): :mod:`md_protocols.relax`.
- Learning during MD (Wong & Yang 2026): :class:`PeriodicLearning` (a :func:`run_md` observer) and
  the naive baseline :func:`naive_update`, for any learner and any ASE calculator as label source.
- PES along Hessian directions: :mod:`md_protocols.pes`; reports: :mod:`md_protocols.report`;
  figures: :mod:`md_protocols.plots`.

Everything but :func:`run_batched_md` works with any ASE calculator and needs no ttcalc model.
"""
from md_protocols.batched import run_batched_md
from md_protocols.checks import BondCollapseCheck, CheckFailure, ExplosionCheck, FiniteCheck
from md_protocols.conservation import nve_drift
from md_protocols.observables import hr, hr_mae, hr_reference_from_dataset
from md_protocols.online import OnlineSettings, PeriodicLearning, label_frames, naive_update
from md_protocols.parallel import MDJob, run_md_parallel
from md_protocols.pes import PESGrid, pes_along_hessian
from md_protocols.protocol import MDProtocol
from md_protocols.relax import (
    ExtraStepsResult,
    RelaxResult,
    kabsch_rmsd,
    relax,
    relax_extra_steps,
)
from md_protocols.report import write_results
from md_protocols.simulate import MDResult, run_md
from md_protocols.stability import (
    bond_lengths,
    bonds_from_atoms,
    bonds_stability,
    max_bond_deviation,
    stability_summary,
)

__all__ = [
    "run_md",
    "run_batched_md",
    "MDProtocol",
    "MDResult",
    "run_md_parallel",
    "MDJob",
    "BondCollapseCheck",
    "ExplosionCheck",
    "FiniteCheck",
    "CheckFailure",
    "bonds_from_atoms",
    "bond_lengths",
    "bonds_stability",
    "max_bond_deviation",
    "stability_summary",
    "hr",
    "hr_mae",
    "hr_reference_from_dataset",
    "nve_drift",
    "relax",
    "relax_extra_steps",
    "RelaxResult",
    "ExtraStepsResult",
    "kabsch_rmsd",
    "pes_along_hessian",
    "PESGrid",
    "write_results",
    "PeriodicLearning",
    "OnlineSettings",
    "naive_update",
    "label_frames",
]
