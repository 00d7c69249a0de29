"""Settings of adaptation to a new system: test-time training (:class:`TTTConfig`) and fine-tuning on
labelled frames (:class:`FinetuneLabelsConfig`), both :class:`FitSettings`."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar, Literal

from ttcalc.train.config import OptimizerSettings


@dataclass
class FitSettings(OptimizerSettings):
    """Optimizer and stopping settings shared by test-time training and fine-tuning on labels; each
    of them sets its own optimizer defaults.

    Stopping: the validation loss is checked every ``eval_every`` updates; the fit stops after
    ``patience`` checks that do not improve it by ``min_rel_improvement`` and rolls back above
    ``divergence_factor`` × the loss it started from.
    """

    label: ClassVar[str] = "fit"

    max_steps: int = 200
    """Optimizer updates at most, each on ``batch_size`` frames drawn from the training part."""
    batch_size: int = 8
    energy_offset_free: bool = True
    """Fit energies up to a constant (a new molecule's energy zero is not the references')."""
    val_fraction: float = 0.25
    """Share of the frames held out for validation and early stopping."""
    seed: int = 0
    """Seeds the train/validation split, the batches and generated frames."""
    eval_every: int = 10
    patience: int = 5
    min_rel_improvement: float = 1e-3
    divergence_factor: float = 10.0
    compile: bool = False
    """Trace the training step's force graph with ``make_fx`` and compile it with inductor
    (:class:`ttcalc.train.force_step.ForceStep`, as long training stages do; molecules only). Each
    step is then cheaper, but each new batch shape costs a compile first, which inductor's on-disk
    cache shortens on later runs: it pays off for repeated fits of one molecule size
    (``benchmarks/adaptation_cost.py`` measures both)."""

    def __post_init__(self):
        super().__post_init__()  # fail before the frames (prior MD, labels) are paid for, not after
        if self.max_steps < 0 or self.eval_every < 1 or self.patience < 1 or self.batch_size < 1:
            raise ValueError("max_steps must be >= 0 and eval_every, patience, batch_size >= 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @classmethod
    def coerce(cls, value):
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls().updated(**value)
        raise TypeError(f"{cls.__name__} settings must be a {cls.__name__} or dict, not {type(value).__name__}")

    def updated(self, **overrides):
        valid = {f.name for f in fields(self)}
        bad = set(overrides) - valid
        if bad:
            raise TypeError(f"unknown {self.label} settings {sorted(bad)}; valid: {sorted(valid)}")
        return replace(self, **overrides)


@dataclass
class TTTConfig(FitSettings):
    """Settings of test-time training (defaults follow the paper's MD17 setting, A.4.3)."""

    label: ClassVar[str] = "TTT"

    optimizer: Literal["sgd", "adam"] = "sgd"
    """SGD with momentum, as the paper's TTT (A.4.3)."""
    weight_decay: float = 1e-3
    """Keeps the adapted weights near the shipped ones: no labels anchor a TTT fit."""
    grad_clip: float = 10.0
    #: what TTT updates: "adaptable", the model's adaptable group (by default the embedding and first
    #: interaction layer, paper sec. 5.2), or "representation", all of θR (heads stay fixed either way)
    parameters: Literal["adaptable", "representation"] = "adaptable"
    frames: Literal["md", "rattle", "normal_modes"] = "md"
    """Where the unlabelled frames come from: Langevin MD on the prior, Gaussian rattles, or harmonic
    samples along the prior's normal modes (:mod:`ttcalc.adapt.frames`)."""
    n_frames: int = 48
    temperature_K: float = 500.0
    """Temperature of the prior MD and of the normal-mode samples (the MD17 protocol's 500 K)."""
    md_timestep_fs: float = 0.5
    md_interval: int = 10
    """MD steps between two kept frames, so consecutive frames are less correlated."""
    md_friction_per_fs: float = 0.01
    rattle_stdev: float = 0.05
    """Å, per Cartesian component."""
    stop_at_id_loss: bool = True
    """Stop once the prior loss reaches the one on the training data (``model.stats.prior_loss``):
    going lower would fit the prior's own errors, which the main head should not inherit."""

    def __post_init__(self):
        super().__post_init__()
        if self.n_frames < 2:
            raise ValueError(f"n_frames must be at least 2 (train and validation), got {self.n_frames}")


#: what fine-tuning on labels may update: θM alone, with θR's adaptable layers, or with all of θR
FINETUNE_GROUPS = {"main": ("main",), "main+adaptable": ("main", "adaptable"),
                   "main+representation": ("main", "representation")}


@dataclass
class FinetuneLabelsConfig(FitSettings):
    """Settings of fine-tuning on labelled frames of a new system (``calc.finetune``).

    Adam without weight decay, as in training: labels anchor the fit, where TTT's decay keeps it
    near the shipped weights. Where it departs from the training defaults, and why:

    - lr 5e-4, batches of 10, a fifth of the frames held out for early stopping, gradients clipped
      at norm 10 (as TTT's): the project's few-shot calibration on 40 + 10 frames;
    - force weight 100: reference forces carry the information a few frames have, the energy is
      one number a frame;
    - up to 1000 steps with a patience of 20 checks, chosen on acac by the rule fixed in advance in
      ``benchmarks/md17_unseen/results/few_shot/acac_rule.md`` (mean force MAE over 3 draws of 50
      frames, TTT then fine-tuning: 33.4 meV/Å with 300 steps / patience 5, 31.5 with patience 20,
      24.9 with 1000 steps / patience 20): 5 checks stopped fits that still improved.
    """

    label: ClassVar[str] = "fine-tuning"

    lr: float = 5e-4
    batch_size: int = 10
    val_fraction: float = 0.2
    grad_clip: float = 10.0
    force_weight: float = 100.0
    max_steps: int = 1000
    patience: int = 20
    parameters: Literal["main", "main+adaptable", "main+representation"] = "main+representation"
    """What is trained (:data:`FINETUNE_GROUPS`)."""
