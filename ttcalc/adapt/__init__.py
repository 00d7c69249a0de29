"""Adaptation of a model to a new system, as functions of (model, prior or frames, settings).

- :func:`adapt`: test-time training on the prior loss (Kreiman & Krishnapriyan 2025, sec. 5);
- :func:`finetune`: fine-tuning on labelled frames;
- :func:`refine_cutoff`: radius refinement (sec. 4);
- :mod:`ttcalc.adapt.frames`: the frames to adapt on;
- :class:`AdaptationState`: pre-adaptation weights (exact restore) and the per-system cache.

The calculator only decides *when* these run.
"""
from ttcalc.adapt.finetune import finetune
from ttcalc.adapt.fitting import AdaptationReport, AdaptationState
from ttcalc.adapt.frames import make_frames, normal_mode_frames, prior_md_frames, rattled_frames
from ttcalc.adapt.radius import refine_cutoff
from ttcalc.adapt.settings import FINETUNE_GROUPS, FinetuneLabelsConfig, FitSettings, TTTConfig
from ttcalc.adapt.ttt import adapt

__all__ = ["adapt", "finetune", "refine_cutoff", "AdaptationReport", "AdaptationState", "FitSettings", "TTTConfig",
           "FinetuneLabelsConfig", "FINETUNE_GROUPS", "make_frames", "prior_md_frames", "rattled_frames",
           "normal_mode_frames"]
