"""Fine-tuning on labelled frames of a new system: the main head's loss L_M against reference
energies and forces, over θM and (by default) θR, with a held-out part for early stopping."""
from __future__ import annotations

import time

from ase import Atoms

from ttcalc.adapt.fitting import AdaptationReport, AdaptationState, fit_on_system, system_of
from ttcalc.adapt.frames import check_one_system
from ttcalc.adapt.settings import FINETUNE_GROUPS, FinetuneLabelsConfig
from ttcalc.model.potential import MultiHeadPotential


def finetune(model: MultiHeadPotential | AdaptationState, frames: list[Atoms],
             cfg: FinetuneLabelsConfig | None = None) -> AdaptationReport:
    """Fine-tune ``model`` (in place; or the model of an :class:`AdaptationState`) on labelled frames
    of one system: each frame carries its reference energy and forces (e.g. a
    ``SinglePointCalculator``). Trains ``cfg.parameters``; energies up to a constant by default (the
    element references of a new composition are not pinned). A fifth of the frames
    (``val_fraction``) is held out for early stopping and the best validated weights are kept;
    divergence rolls back. Continues from this system's TTT weights if the state holds them."""
    state = model if isinstance(model, AdaptationState) else AdaptationState(model)
    cfg = FinetuneLabelsConfig.coerce(cfg)
    frames, key = system_of(frames)
    if isinstance(frames, Atoms):
        raise ValueError("finetune needs labelled frames (a list of at least two Atoms), not one structure")
    check_one_system(frames, "fine-tuning")
    missing = [i for i, f in enumerate(frames) if f.calc is None or "forces" not in f.calc.results]
    if missing:
        raise ValueError(f"frames {missing[:5]} carry no reference energy and forces (attach a "
                         f"SinglePointCalculator, as load_rmd17 and read_frames do)")
    return fit_on_system(state, key, "finetune", frames, cfg, groups=FINETUNE_GROUPS[cfg.parameters], head="main",
                         target=None, source="labelled", t0=time.perf_counter(), carry_on=True)
