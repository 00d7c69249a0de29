"""Test-time training (TTT): adapt the representation to a new system with prior labels only.

Kreiman & Krishnapriyan, "Understanding and mitigating distribution shifts for universal MLIPs",
Digital Discovery 2025, sec. 5 and appendix A. Given a new structure and no reference labels:

1. make frames around it (a short MD with the prior at 500 K by default; or rattled or
   normal-mode-displaced copies; or frames the user supplies), labelled by the prior;
2. minimise the prior loss L_P (energy + forces of the prior head θP, :mod:`ttcalc.losses`) over
   the *adaptable* early layers of θR only; θP and θM stay frozen;
3. stop when L_P stalls, or when it reaches the in-distribution prior loss stored in the
   checkpoint (going below it overfits the prior, which the paper warns hurts the main head);
   roll back if the loss diverges or becomes non-finite.

The pre-TTT weights are kept so :meth:`AdaptationState.restore` is exact, and adapted weights
are cached per system (:func:`ttcalc.system.system_key`), so re-adapting a system costs nothing.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from ase import Atoms, units

from .batch import collate
from .losses import LossWeights, energy_force_loss
from .model import MultiHeadPotential, restore, snapshot
from .system import system_key

log = logging.getLogger(__name__)


@dataclass
class TTTConfig:
    """Settings of test-time training (defaults follow the paper's MD17 setting, A.4.3)."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-3
    grad_clip: float = 10.0
    #: what TTT updates: "adaptable", the model's adaptable group (by default the embedding and first
    #: interaction layer, paper sec. 5.2), or "representation", all of θR (heads stay fixed either way)
    parameters: Literal["adaptable", "representation"] = "adaptable"
    max_steps: int = 200
    batch_size: int = 8
    energy_weight: float = 1.0
    force_weight: float = 10.0
    #: fit energies up to a constant (the new molecule's energy zero is not the references')
    energy_offset_free: bool = True
    # frames
    frames: Literal["md", "rattle", "normal_modes"] = "md"
    n_frames: int = 48
    temperature_K: float = 500.0
    md_timestep_fs: float = 0.5
    md_interval: int = 10
    md_friction_per_fs: float = 0.01
    rattle_stdev: float = 0.05
    val_fraction: float = 0.25
    seed: int = 0
    # stopping
    eval_every: int = 10
    patience: int = 5
    min_rel_improvement: float = 1e-3
    stop_at_id_loss: bool = True
    divergence_factor: float = 10.0

    def __post_init__(self):
        # fail before the frames (prior MD, labels) are paid for, not after
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use 'sgd' or 'adam'")
        if self.parameters not in ("adaptable", "representation"):
            raise ValueError(f"unknown TTT parameters {self.parameters!r}; use 'adaptable' or 'representation'")
        if self.frames not in ("md", "rattle", "normal_modes"):
            raise ValueError(f"unknown frame source {self.frames!r}; use 'md', 'rattle' or 'normal_modes'")
        if self.n_frames < 2:
            raise ValueError(f"n_frames must be at least 2 (train and validation), got {self.n_frames}")
        if self.max_steps < 0 or self.eval_every < 1 or self.patience < 1 or self.batch_size < 1:
            raise ValueError("max_steps must be >= 0 and eval_every, patience, batch_size >= 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @classmethod
    def coerce(cls, value) -> "TTTConfig":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls().updated(**value)
        raise TypeError(f"ttt_config must be a TTTConfig or dict, not {type(value).__name__}")

    def updated(self, **overrides) -> "TTTConfig":
        valid = {f.name for f in fields(self)}
        bad = set(overrides) - valid
        if bad:
            raise TypeError(f"unknown TTT settings {sorted(bad)}; valid: {sorted(valid)}")
        return replace(self, **overrides)


@dataclass
class AdaptationReport:
    """What one test-time training run did.

    ``steps`` counts optimizer updates; ``prior_loss_*`` and ``force_disagreement_*`` (mean per-atom
    |F_main − F_prior| in eV/Å) are measured on the held-out TTT validation frames; ``prior_loss_end``
    is that of the weights kept (the best validated ones, or the start weights after a roll-back).
    """

    steps: int
    seconds: float
    prior_loss_start: float
    prior_loss_end: float
    stop_reason: str
    parameters: list[str]
    n_parameters: int
    force_disagreement_before: float
    force_disagreement_after: float
    n_frames: int
    frame_source: str
    system: str
    cached: bool = False
    loss_curve: list[float] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    id_prior_loss: float | None = None

    def summary(self) -> dict:
        """A short JSON-able summary (goes into ``calc.results`` and ``atoms.info``)."""
        return {"steps": self.steps, "seconds": round(self.seconds, 3),
                "prior_loss_start": self.prior_loss_start, "prior_loss_end": self.prior_loss_end,
                "stop_reason": self.stop_reason, "cached": self.cached,
                "force_disagreement_before": self.force_disagreement_before,
                "force_disagreement_after": self.force_disagreement_after}

    def to_dict(self) -> dict:
        return asdict(self)


class AdaptationState:
    """Pre-TTT weights and the per-system cache of adapted weights."""

    def __init__(self, model: MultiHeadPotential):
        self.model = model
        groups = model.parameter_groups()
        # everything any TTT setting may change (TTTConfig.parameters), so restore() is always exact
        self.names = sorted(set(groups["adaptable"]) | set(groups["representation"]))
        self.base = snapshot(model, self.names)
        self.cache: dict[str, dict[str, torch.Tensor]] = {}
        self.reports: dict[str, AdaptationReport] = {}

    def restore(self) -> None:
        restore(self.model, self.base)

    def apply(self, key: str) -> None:
        # base first: the cached system may have adapted fewer parameters than the current weights hold
        restore(self.model, self.base)
        restore(self.model, self.cache[key])

    def save(self, path: str | Path) -> Path:
        """Save the adapted weights of every system (atomic write)."""
        from .checkpoint import atomic_torch_save

        payload = {"format": "ttcalc-ttt-cache", "names": self.names,
                   "cache": {k: {n: t.cpu() for n, t in v.items()} for k, v in self.cache.items()},
                   "reports": {k: r.to_dict() for k, r in self.reports.items()}}
        return atomic_torch_save(payload, path)

    def load(self, path: str | Path) -> None:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != "ttcalc-ttt-cache" or payload.get("names") != self.names:
            raise ValueError(f"{path} is not a TTT cache for this model's adaptable parameters")
        device, dtype = self.model.device, self.model.dtype
        for key, params in payload["cache"].items():
            self.cache[key] = {n: t.to(device=device, dtype=dtype) for n, t in params.items()}
        for key, rep in payload["reports"].items():
            rep["val_curve"] = [tuple(x) for x in rep.get("val_curve", [])]
            self.reports[key] = AdaptationReport(**rep)


# --- frames ------------------------------------------------------------------------------------------
def prior_md_frames(atoms: Atoms, prior, n_frames: int, temperature_K: float = 500.0,
                    timestep_fs: float = 0.5, interval: int = 10, friction_per_fs: float = 0.01,
                    seed: int = 0) -> list[Atoms]:
    """Frames from Langevin MD with the prior, one every ``interval`` steps."""
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    a = atoms.copy()
    a.set_constraint(FixCom())  # ASE's replacement for Langevin(fixcm=True), deprecated since 3.28
    a.calc = prior.as_calculator()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(a, temperature_K=temperature_K, rng=rng)
    Stationary(a)
    dyn = Langevin(a, timestep_fs * units.fs, temperature_K=temperature_K,
                   friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    frames = []
    for _ in range(n_frames):
        dyn.run(interval)
        f = a.copy()
        f.calc = None
        f.set_constraint(atoms.constraints)  # hand back the caller's constraints, not our FixCom
        frames.append(f)
    return frames


def rattled_frames(atoms: Atoms, n_frames: int, stdev: float = 0.05, seed: int = 0) -> list[Atoms]:
    """Copies with Gaussian displacements of ``stdev`` Å per coordinate."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_frames):
        f = atoms.copy()
        f.calc = None
        f.positions = f.positions + rng.normal(scale=stdev, size=f.positions.shape)
        out.append(f)
    return out


def normal_mode_frames(atoms: Atoms, prior, n_frames: int, temperature_K: float = 500.0,
                       seed: int = 0, delta: float = 0.005) -> list[Atoms]:
    """Classical harmonic samples at ``temperature_K`` from the prior's Hessian.

    Each mode k with mass-weighted eigenvalue ω_k² > 0 gets a Gaussian amplitude of variance
    k_B T / ω_k² (equipartition); translations, rotations and unstable modes are skipped.
    """
    n = len(atoms)
    x0 = atoms.positions.copy()
    hess = np.zeros((3 * n, 3 * n))
    probe = atoms.copy()
    for k in range(3 * n):
        i, a = divmod(k, 3)
        grads = []
        for s in (+1, -1):
            probe.positions = x0.copy()
            probe.positions[i, a] += s * delta
            grads.append(-prior.energy_forces(probe)[1].ravel())
        hess[k] = (grads[0] - grads[1]) / (2 * delta)
    hess = 0.5 * (hess + hess.T)
    m = np.repeat(atoms.get_masses(), 3)
    w2, modes = np.linalg.eigh(hess / np.sqrt(np.outer(m, m)))
    keep = w2 > 1e-3 * w2.max()
    rng = np.random.default_rng(seed)
    kT = units.kB * temperature_K
    out = []
    for _ in range(n_frames):
        q = rng.normal(size=keep.sum()) * np.sqrt(kT / w2[keep])
        disp = (modes[:, keep] @ q) / np.sqrt(m)
        f = atoms.copy()
        f.calc = None
        f.positions = x0 + disp.reshape(n, 3)
        out.append(f)
    return out


def make_frames(atoms_or_frames, prior, cfg: TTTConfig) -> tuple[list[Atoms], str]:
    """Unlabelled TTT frames and a description of where they came from."""
    if isinstance(atoms_or_frames, Atoms):
        atoms = atoms_or_frames
        if cfg.frames == "md":
            return prior_md_frames(atoms, prior, cfg.n_frames, cfg.temperature_K, cfg.md_timestep_fs,
                                   cfg.md_interval, cfg.md_friction_per_fs, cfg.seed), "prior-md"
        if cfg.frames == "rattle":
            return rattled_frames(atoms, cfg.n_frames, cfg.rattle_stdev, cfg.seed), "rattle"
        return normal_mode_frames(atoms, prior, cfg.n_frames, cfg.temperature_K, cfg.seed), "normal-modes"
    frames = list(atoms_or_frames)
    if len(frames) < 2:
        raise ValueError("give one Atoms (frames are generated) or at least two frames")
    numbers = frames[0].numbers
    if any(len(f) != len(numbers) or np.any(f.numbers != numbers) for f in frames):
        raise ValueError("all TTT frames must be the same system (same atoms in the same order)")
    return frames, "user"


# --- the adaptation loop ------------------------------------------------------------------------------
def _loss(model, batch, weights: LossWeights, create_graph: bool, offset_free: bool = True):
    """Prior-head loss L_P (:func:`ttcalc.losses.energy_force_loss`) of a labelled batch of one system."""
    pred = model(batch, heads=("prior",), create_graph=create_graph)["prior"]
    return energy_force_loss(pred, batch.energy, batch.forces, batch.n_atoms, weights, offset_free=offset_free)


def _mean_disagreement(model, batch) -> float:
    """Mean per-atom |F_main − F_prior_label| (eV/Å) over a labelled batch."""
    f = model(batch, heads=("main",))["main"]["forces"].detach()
    return float(torch.linalg.vector_norm(f - batch.forces, dim=-1).mean())


def adapt(calc, atoms_or_frames, force: bool = False, **overrides) -> AdaptationReport:
    """Run test-time training for ``calc`` (a :class:`~ttcalc.calculator.TTTCalculator`)."""
    from .data import label_with_prior

    cfg = calc.ttt_config.updated(**overrides) if overrides else calc.ttt_config
    model: MultiHeadPotential = calc.model
    state: AdaptationState = calc.adaptation
    if not isinstance(atoms_or_frames, Atoms):
        atoms_or_frames = list(atoms_or_frames)  # once: a generator must not be consumed twice
        if len(atoms_or_frames) < 2:
            raise ValueError("give one Atoms (frames are generated) or at least two frames")
    first = atoms_or_frames if isinstance(atoms_or_frames, Atoms) else atoms_or_frames[0]
    key = system_key(first)
    t0 = time.perf_counter()
    if key in state.cache and not force:
        state.apply(key)
        old = state.reports[key]
        return replace(old, cached=True, seconds=time.perf_counter() - t0)

    frames, source = make_frames(atoms_or_frames, calc.prior, cfg)  # bad frames raise before any change
    labelled = label_with_prior(frames, calc.prior)
    state.restore()  # always adapt from the pre-TTT weights, never on top of another system's
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(labelled))
    n_val = max(1, int(round(cfg.val_fraction * len(labelled))))
    val = [labelled[i] for i in order[:n_val]]
    train = [labelled[i] for i in order[n_val:]] or val
    dtype, device = model.dtype, model.device
    val_batch = collate(val, model.cutoff, dtype=dtype, device=device, labels=True)
    weights = LossWeights(cfg.energy_weight, cfg.force_weight)

    params = model.parameters_of(cfg.parameters)
    names = model.parameter_groups()[cfg.parameters]
    model.set_trainable(cfg.parameters)
    try:
        def val_loss() -> float:
            return float(_loss(model, val_batch, weights, False, cfg.energy_offset_free)[0].detach())

        start = val_loss()
        disagreement_before = _mean_disagreement(model, val_batch)
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        target = model.stats.prior_loss if cfg.stop_at_id_loss else None
        # best: the lowest validated loss and its weights (restored at the end); ref: the loss that
        # counts as progress for patience (must improve by min_rel_improvement)
        best, best_state, ref, stale = start, snapshot(model, names), start, 0
        curve, val_curve = [], [(0, start)]
        reason, n_updates = f"max_steps ({cfg.max_steps})", 0
        if not math.isfinite(start):
            raise FloatingPointError(f"the prior loss of the unadapted model is {start}; cannot adapt")
        n_train = len(train)
        # already at the in-distribution loss: training further would only overfit the prior
        steps = range(1, cfg.max_steps + 1) if target is None or start > target else range(0)
        if target is not None and start <= target:
            reason = f"reached the in-distribution prior loss ({target:.4g}) before any step"
        for step in steps:
            idx = rng.choice(n_train, size=min(cfg.batch_size, n_train), replace=False)
            batch = collate([train[i] for i in idx], model.cutoff, dtype=dtype, device=device, labels=True)
            opt.zero_grad(set_to_none=True)
            loss, _ = _loss(model, batch, weights, True, cfg.energy_offset_free)
            if not torch.isfinite(loss):
                reason = "non-finite loss: rolled back"
                break
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            n_updates = step
            curve.append(float(loss.detach()))
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                v = val_loss()
                val_curve.append((step, v))
                if not math.isfinite(v) or v > cfg.divergence_factor * start:
                    reason = "diverged: rolled back"
                    break
                if v < best:
                    best, best_state = v, snapshot(model, names)
                if v < ref * (1 - cfg.min_rel_improvement):
                    ref, stale = v, 0
                else:
                    stale += 1
                if target is not None and v <= target:
                    reason = f"reached the in-distribution prior loss ({target:.4g})"
                    break
                if stale >= cfg.patience:
                    reason = f"prior loss stalled ({cfg.patience} checks without improvement)"
                    break
        restore(model, best_state)  # best validated weights; the start weights if nothing helped
        end = val_loss()
        disagreement_after = _mean_disagreement(model, val_batch)
    except BaseException:
        state.restore()
        raise
    finally:
        model.requires_grad_(False)
    state.cache[key] = snapshot(model, names)
    report = AdaptationReport(
        steps=n_updates, seconds=time.perf_counter() - t0, prior_loss_start=start, prior_loss_end=end,
        stop_reason=reason, parameters=names, n_parameters=int(sum(p.numel() for p in params)),
        force_disagreement_before=disagreement_before, force_disagreement_after=disagreement_after,
        n_frames=len(labelled), frame_source=source, system=key, loss_curve=curve,
        val_curve=val_curve, id_prior_loss=target,
    )
    state.reports[key] = report
    log.info("TTT on %s: %d steps, prior loss %.4g -> %.4g (%s) in %.1f s", first.get_chemical_formula(),
             n_updates, start, end, reason, report.seconds)
    return report
