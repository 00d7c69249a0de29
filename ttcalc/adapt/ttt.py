"""Test-time training (TTT): adapt the representation to a new system with prior labels only.

Kreiman & Krishnapriyan, "Understanding and mitigating distribution shifts for universal MLIPs",
Digital Discovery 2025, sec. 5 and appendix A. Given a new structure and no reference labels:

1. make frames around it (:mod:`ttcalc.adapt.frames`), labelled by the prior;
2. minimise the prior loss L_P (energy + forces of the prior head θP) over the *adaptable* early
   layers of θR only; θP and θM stay frozen;
3. stop when L_P stalls, or when it reaches the in-distribution prior loss stored in the
   checkpoint (going below it overfits the prior, which the paper warns hurts the main head);
   roll back if the loss diverges or becomes non-finite.
"""
from __future__ import annotations

import time
from dataclasses import replace

from ase import Atoms

from ttcalc.adapt.fitting import AdaptationReport, AdaptationState, fit_on_system, system_of
from ttcalc.adapt.frames import make_frames
from ttcalc.adapt.settings import TTTConfig
from ttcalc.data import label_with_prior
from ttcalc.model.potential import MultiHeadPotential
from ttcalc.priors.base import Prior


def adapt(model: MultiHeadPotential | AdaptationState, prior: Prior, atoms_or_frames: Atoms | list[Atoms],
          cfg: TTTConfig | None = None, *, force: bool = False) -> AdaptationReport:
    """Test-time training of ``model`` (in place) on one system with ``prior``'s labels.

    ``model``: a model, or the :class:`AdaptationState` that wraps one (it keeps the pre-adaptation
    weights and the per-system cache; a bare model gets a fresh state). ``atoms_or_frames``: one
    structure (frames are generated, ``cfg.frames``) or at least two frames of one system. A system
    adapted before reuses its cached weights unless ``force``; one fine-tuned on labels before is
    adapted on top of those weights.
    """
    state = model if isinstance(model, AdaptationState) else AdaptationState(model)
    cfg = TTTConfig.coerce(cfg)
    atoms_or_frames, key = system_of(atoms_or_frames)
    t0 = time.perf_counter()
    # this system was adapted before (and perhaps fine-tuned after): its weights, not another TTT
    if key in state.cache and not force and "ttt" in state.ran.get(key, []):
        state.apply(key)
        return replace(state.reports[key], cached=True, seconds=time.perf_counter() - t0)
    frames, source = make_frames(atoms_or_frames, prior, cfg)  # bad frames raise before any change
    labelled = label_with_prior(frames, prior)
    target = state.model.stats.prior_loss if cfg.stop_at_id_loss else None
    # TTT starts afresh from the shipped weights, unless this system's were fine-tuned on labels
    fine_tuned = "finetune" in state.ran.get(key, [])
    return fit_on_system(state, key, "ttt", labelled, cfg, groups=(cfg.parameters,), head="prior", target=target,
                         source=source, t0=t0, carry_on=fine_tuned)
