"""Radius refinement (Kreiman & Krishnapriyan 2025, sec. 4): move a model's cutoff to the radius whose
Laplacian spectrum of the new structure best matches the training spectrum stored in its checkpoint
(the metric is :func:`ttcalc.diagnostics.spectral.refine_radius`)."""
from __future__ import annotations

import logging
from typing import Sequence

from ase import Atoms

from ttcalc.diagnostics.spectral import TrainingSpectrum, refine_radius
from ttcalc.model.potential import MultiHeadPotential

log = logging.getLogger(__name__)


def refine_cutoff(model: MultiHeadPotential, atoms: Atoms,
                  radii: Sequence[float] | None = None) -> tuple[float, dict[float, float]]:
    """Choose the cutoff for ``atoms`` and set it on ``model``; returns (radius, {radius: distance})."""
    if not model.stats.spectrum:
        raise ValueError("this model's checkpoint stores no training spectrum; radius refinement is unavailable")
    radius, scan = refine_radius(atoms, TrainingSpectrum.from_dict(model.stats.spectrum), radii=radii)
    if radius != model.cutoff:
        log.info("radius refinement: cutoff %.3f -> %.3f Å", model.cutoff, radius)
        model.set_cutoff(radius)
    return radius, scan
