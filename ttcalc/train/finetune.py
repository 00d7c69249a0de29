"""Fine-tuning a (pretrained) potential for a downstream property: Scratch, FT, LP and MFT.

Peng et al. 2026, "Multi-Task Fine-Tuning Enables Robust Out-of-Distribution Generalization in
Atomistic Models", sec. 3:

* ``scratch``: random backbone and random property head, both trained;
* ``ft``: pretrained backbone, random head, everything trained on the property loss only;
* ``lp`` (linear probing): backbone frozen, only the head trained;
* ``mft``: pretrained backbone, inherited energy/force head and a random property head, all
  trained on L = L_task + λ_reg · L_reg, L_reg being the pretraining force-field loss on a batch of
  the force-field corpus drawn at every step (:mod:`ttcalc.train.multitask`).

Model selection uses the in-distribution validation set of the property only.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from ttcalc.data.references import element_constant_design, fit_element_constants
from ttcalc.model.heads import PropertyHeadConfig
from ttcalc.train.losses import LossWeights
from ttcalc.model.potential import MultiHeadPotential
from ttcalc.train.config import StageConfig
from ttcalc.train.multitask import PrefactorSchedule, force_field_task, property_task, train_multitask
from ttcalc.train.trainer import StageResult

log = logging.getLogger(__name__)

REGIMES = ("scratch", "ft", "lp", "mft")


@dataclass
class FinetuneConfig:
    """Settings of one property fine-tuning run."""

    regime: str = "mft"
    stage: StageConfig = field(default_factory=lambda: StageConfig(lr=5e-4, batch_size=32, max_epochs=30,
                                                                   max_minutes=30, patience=6, lr_patience=2))
    lambda_reg: float = 1.0
    ff_head: str = "main"
    ff_batch_size: int = 16
    ff_weights: LossWeights = field(default_factory=LossWeights)
    #: DeePMD-style prefactors tied to the learning rate instead of ``ff_weights``
    prefactor_schedule: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(f"unknown fine-tuning regime {self.regime!r}; choose from {REGIMES}")
        if self.lambda_reg < 0:
            raise ValueError(f"lambda_reg must be >= 0, got {self.lambda_reg}")


def install_property_statistics(model: MultiHeadPotential, name: str, frames: Sequence[Atoms],
                                values: np.ndarray) -> None:
    """Fit the head's per-element bias p(Z) by least squares (or one global constant when
    ``element_bias=False``) and set its scale to the residual standard deviation."""
    head = model.property_heads[name]
    cfg = head.config
    y = np.asarray(values, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    max_z = head.element_bias.shape[0]
    table = np.zeros((max_z, y.shape[1]))
    if cfg.kind != "atomwise":
        head.set_statistics(table, np.ones(y.shape[1]))
        return
    if cfg.element_bias:
        elements, p = fit_element_constants(frames, y, intensive=cfg.intensive)
        table[elements] = p
        resid = y - element_constant_design(frames, elements, cfg.intensive) @ p
    else:
        n = np.array([len(a) for a in frames], dtype=np.float64)[:, None]
        const = y.mean(0) if cfg.intensive else (y / n).mean(0)
        table[:] = const
        resid = y - (const if cfg.intensive else n * const)
    scale = resid.std(0)
    if not cfg.intensive:  # per-atom contributions of an extensive property
        scale = scale / np.sqrt(np.mean([len(a) for a in frames]))
    head.set_statistics(table, np.where(scale > 0, scale, 1.0))


def build_model(pretrained: MultiHeadPotential, regime: str, head: PropertyHeadConfig,
                seed: int) -> MultiHeadPotential:
    """The starting model of a regime: a copy of ``pretrained`` (random weights for ``scratch``)
    with a freshly initialised property head (seeded)."""
    torch.manual_seed(seed)
    if regime == "scratch":
        cfg = replace(pretrained.config, properties=())
        model = MultiHeadPotential(cfg, dtype=pretrained.dtype).to(pretrained.device)
    else:
        model = copy.deepcopy(pretrained)
    model.add_property_head(head)
    return model


def finetune_tasks(model: MultiHeadPotential, head: PropertyHeadConfig, train_frames: Sequence[Atoms],
                   train_values: np.ndarray, cfg: FinetuneConfig,
                   ff_frames: Sequence[Atoms] | None = None) -> tuple[list, list[str]]:
    """Install the head's statistics and return the regime's training tasks and trainable groups:
    the property loss (in units of the label spread), plus λ_reg × the force-field loss for MFT."""
    install_property_statistics(model, head.name, train_frames, train_values)
    tasks = [property_task(head.name, train_frames, train_values, head.name, batch_size=cfg.stage.batch_size)]
    groups = {"scratch": ["representation", head.name], "ft": ["representation", head.name],
              "lp": [head.name], "mft": ["representation", head.name, cfg.ff_head]}[cfg.regime]
    if cfg.regime == "mft":
        weights = PrefactorSchedule() if cfg.prefactor_schedule else cfg.ff_weights
        tasks.append(force_field_task("force_field", ff_frames, cfg.ff_head, weights, weight=cfg.lambda_reg,
                                      batch_size=cfg.ff_batch_size))
    return tasks, groups


def finetune_property(pretrained: MultiHeadPotential, head: PropertyHeadConfig, train_frames: Sequence[Atoms],
                      train_values: np.ndarray, val_frames: Sequence[Atoms], val_values: np.ndarray,
                      cfg: FinetuneConfig, ff_frames: Sequence[Atoms] | None = None,
                      log_path: str | Path | None = None,
                      progress: bool = True) -> tuple[MultiHeadPotential, StageResult]:
    """Train a property head under ``cfg.regime``; returns the selected model and the stage result.

    ``ff_frames`` (labelled with energies and forces of ``cfg.ff_head``'s level of theory) are
    required for ``mft``.
    """
    if cfg.regime == "mft":
        if not ff_frames:
            raise ValueError("MFT needs force-field frames (ff_frames) for the auxiliary loss")
        if cfg.ff_head not in pretrained.heads:
            raise ValueError(f"MFT auxiliary head {cfg.ff_head!r} is not in the model (heads: "
                             f"{list(pretrained.heads)})")
    model = build_model(pretrained, cfg.regime, head, cfg.seed)
    tasks, groups = finetune_tasks(model, head, train_frames, train_values, cfg, ff_frames)
    # validation in the same units as training: the spread of the training labels
    val = property_task(head.name, val_frames, val_values, head.name, scale=tasks[0].scale)
    result = train_multitask(model, tasks, [val], groups, cfg.stage, name=f"{cfg.regime}:{head.name}",
                             log_path=log_path, seed=cfg.seed, progress=progress)
    return model, result
