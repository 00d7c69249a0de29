"""Typed training configuration, read from one TOML or YAML file that reproduces a run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch

from md_protocols.choices import check_literal_fields
from ttcalc.model.potential import ModelConfig
from ttcalc.model.representation import RepresentationConfig

Regime = Literal["pretrain-freeze-finetune", "joint", "supervised"]


@dataclass
class DataConfig:
    """Where labelled frames come from.

    ``source="rmd17"`` takes ``n_train``+``n_val`` frames per molecule from an official train split
    (test frames never enter training); ``split="all"`` with ``exclude=["test_01"]`` takes every
    frame outside the named splits, and ``n_train=0`` keeps all of them (after ``n_val`` for
    validation). ``source="files"`` reads extended XYZ / ASE db files.
    """

    source: Literal["rmd17", "files"] = "rmd17"
    molecules: list[str] = field(default_factory=lambda: ["benzene"])
    split: str = "train_01"
    n_train: int = 1000
    n_val: int = 100
    files: list[str] = field(default_factory=list)
    seed: int = 0
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_literal_fields(self)


@dataclass
class PriorConfig:
    """The prior that labels frames for the prior head: ``"xtb"``, ``"tblite"``, ``"emt"``,
    ``"lj"`` or ``"sgdml"`` (fitted per molecule on ``sgdml_frames`` of its own train frames)."""

    name: str = "xtb"
    sgdml_frames: int = 300


@dataclass
class OptimizerSettings:
    """The optimizer and loss weights every fit shares: training stages, test-time training and
    fine-tuning on labels (:func:`make_optimizer` builds the optimizer from them)."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    """SGD only."""
    weight_decay: float = 0.0
    """L2 penalty in the optimizer (Adam: coupled, as ``torch.optim.Adam`` does it)."""
    grad_clip: float = 100.0
    """Largest global gradient norm; larger gradients are scaled down to it."""
    energy_weight: float = 1.0
    """Weight of the energy term: MSE of the energy per atom (eV²)."""
    force_weight: float = 10.0
    """Weight of the force term: MSE of the force components ((eV/Å)²)."""

    def __post_init__(self):
        check_literal_fields(self)  # at configuration time, before any data or labels are paid for


def make_optimizer(params: list, cfg: OptimizerSettings) -> torch.optim.Optimizer:
    """Adam or SGD with momentum on ``params``, as ``cfg`` says."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass
class StageConfig(OptimizerSettings):
    """Optimization settings of one training stage. It stops at whichever comes first of
    ``max_epochs``, ``max_minutes`` and ``patience`` epochs without a better validation loss."""

    batch_size: int = 16
    max_epochs: int = 100
    max_minutes: float = 60.0
    patience: int = 10
    """Epochs without a better validation loss before the stage stops."""
    lr_factor: float = 0.5
    """The plateau schedule: lr × ``lr_factor`` after ``lr_patience`` epochs without improvement."""
    lr_patience: int = 3
    min_lr: float = 1e-6
    anneal_from: int = 0
    """> 0 with ``anneal_epochs``: from this epoch on the plateau schedule gives way to a cosine
    decay of the learning rate to ``min_lr`` over ``anneal_epochs`` epochs, after which the stage
    stops (see :class:`ttcalc.train.trainer.LRSchedule`)."""
    anneal_epochs: int = 0
    ema_decay: float = 0.0
    """> 0: validate and save an exponential moving average of the weights."""
    epoch_frames: int = 0
    """> 0: an epoch is this many frames drawn afresh, so a large training set keeps a validation,
    schedule and patience clock of a fixed size."""
    drop_last: bool = False
    """Drop incomplete batches (a compiled step then sees fewer shapes)."""
    compile: bool | None = None
    """The compiled force step; None chooses by :func:`ttcalc.train.trainer.use_compiled_step`."""
    checkpoint_minutes: float = 5.0
    """The full training state is saved this often when the stage has a state file."""

    def __post_init__(self):
        super().__post_init__()
        if self.anneal_epochs < 0 or (self.anneal_epochs > 0 and self.anneal_from < 1):
            raise ValueError(f"an anneal needs anneal_epochs >= 1 and anneal_from >= 1 (an epoch number), "
                             f"got anneal_epochs={self.anneal_epochs}, anneal_from={self.anneal_from}")

    def anneal_end(self) -> int | None:
        """The last epoch of the cosine anneal, or None without one."""
        return self.anneal_from + self.anneal_epochs - 1 if self.anneal_epochs else None


@dataclass
class TrainConfig:
    """A complete, reproducible training run."""

    regime: Regime = "pretrain-freeze-finetune"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    pretrain: StageConfig = field(default_factory=StageConfig)
    finetune: StageConfig = field(default_factory=StageConfig)
    joint_prior_weight: float = 1.0
    #: pretrain-freeze-finetune: start the main head as a copy of the pretrained prior head
    #: ("prior", so θM = θP + a learned correction and TTT's changes to the features reach θM the
    #: way they reach θP), from random weights ("random"), or from ``init_checkpoint``'s θM
    #: ("checkpoint": the fine-tuning of a budget-stopped run goes on)
    main_head_init: Literal["random", "prior", "checkpoint"] = "random"
    #: pretrain-freeze-finetune: take θR and θP from this checkpoint and skip the pretraining stage;
    #: joint: start from all of the checkpoint's weights (θR, θP, θM)
    init_checkpoint: str | None = None
    #: pretrain-freeze-finetune with ``init_checkpoint``: go on pretraining its θR+θP (warm start)
    #: instead of skipping the pretraining stage; for a model whose pretraining stopped on a budget
    continue_pretraining: bool = False
    output: str = "runs/model.pt"
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    spectrum_frames: int = 500
    #: training frames whose features the Q-residual PCA is fitted to (0: none stored)
    q_residual_frames: int = 900

    def __post_init__(self):
        check_literal_fields(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        _check_keys(cls, d, "train config")
        model = d.pop("model", {})
        rep = dict(model.get("representation", {}))
        _check_keys(RepresentationConfig, rep, "[model.representation]")
        out = cls(**{k: v for k, v in d.items() if k not in ("data", "prior", "pretrain", "finetune")})
        out.model = ModelConfig.from_dict({**model, "representation": rep})
        for name, typ in (("data", DataConfig), ("prior", PriorConfig), ("pretrain", StageConfig),
                          ("finetune", StageConfig)):
            sub = d.get(name, {})
            _check_keys(typ, sub, f"[{name}]")
            setattr(out, name, typ(**sub))
        return out


def _check_keys(cls, d: dict, where: str) -> None:
    valid = {f.name for f in fields(cls)}
    bad = set(d) - valid
    if bad:
        raise ValueError(f"unknown keys {sorted(bad)} in {where}; valid: {sorted(valid)}")


def load_config(path: str | Path) -> TrainConfig:
    """Read a :class:`TrainConfig` from a ``.toml``, ``.yaml`` or ``.yml`` file."""
    path = Path(path)
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"config must be .toml, .yaml or .yml, got {path.name}")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        raw = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text) or {}
    return TrainConfig.from_dict(raw)
