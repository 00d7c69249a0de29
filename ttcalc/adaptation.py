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
from typing import ClassVar, Literal

import numpy as np
import torch
from ase import Atoms, units

from .batch import collate
from .losses import LossWeights, energy_force_loss
from .model import MultiHeadPotential, restore, snapshot
from .system import system_key

log = logging.getLogger(__name__)


@dataclass
class FitSettings:
    """Optimiser and stopping settings shared by test-time training and fine-tuning on labels."""

    label: ClassVar[str] = "fit"

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-3
    grad_clip: float = 10.0
    max_steps: int = 200
    batch_size: int = 8
    energy_weight: float = 1.0
    force_weight: float = 10.0
    #: fit energies up to a constant (the new molecule's energy zero is not the references')
    energy_offset_free: bool = True
    val_fraction: float = 0.25
    seed: int = 0
    # stopping
    eval_every: int = 10
    patience: int = 5
    min_rel_improvement: float = 1e-3
    divergence_factor: float = 10.0

    def __post_init__(self):
        # fail before the frames (prior MD, labels) are paid for, not after
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use 'sgd' or 'adam'")
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

    #: what TTT updates: "adaptable", the model's adaptable group (by default the embedding and first
    #: interaction layer, paper sec. 5.2), or "representation", all of θR (heads stay fixed either way)
    parameters: Literal["adaptable", "representation"] = "adaptable"
    # frames
    frames: Literal["md", "rattle", "normal_modes"] = "md"
    n_frames: int = 48
    temperature_K: float = 500.0
    md_timestep_fs: float = 0.5
    md_interval: int = 10
    md_friction_per_fs: float = 0.01
    rattle_stdev: float = 0.05
    stop_at_id_loss: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.parameters not in ("adaptable", "representation"):
            raise ValueError(f"unknown TTT parameters {self.parameters!r}; use 'adaptable' or 'representation'")
        if self.frames not in ("md", "rattle", "normal_modes"):
            raise ValueError(f"unknown frame source {self.frames!r}; use 'md', 'rattle' or 'normal_modes'")
        if self.n_frames < 2:
            raise ValueError(f"n_frames must be at least 2 (train and validation), got {self.n_frames}")


#: what fine-tuning on labels may update: θM alone, with θR's adaptable layers, or with all of θR
FINETUNE_GROUPS = {"main": ("main",), "main+adaptable": ("main", "adaptable"),
                   "main+representation": ("main", "representation")}


@dataclass
class FinetuneLabelsConfig(FitSettings):
    """Settings of fine-tuning on labelled frames of a new system (``calc.finetune``).

    Defaults: Adam, lr 5e-4, force weight 100, batches of 10, θM and all of θR, a fifth of the
    frames held out for early stopping (the project's few-shot calibration on 40 + 10 frames).
    """

    label: ClassVar[str] = "fine-tuning"

    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 5e-4
    weight_decay: float = 0.0
    max_steps: int = 300
    batch_size: int = 10
    force_weight: float = 100.0
    val_fraction: float = 0.2
    patience: int = 5
    parameters: Literal["main", "main+adaptable", "main+representation"] = "main+representation"

    def __post_init__(self):
        super().__post_init__()
        if self.parameters not in FINETUNE_GROUPS:
            raise ValueError(f"unknown fine-tuning parameters {self.parameters!r}; use one of {list(FINETUNE_GROUPS)}")


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
    #: "ttt" (prior loss L_P, prior labels) or "finetune" (main loss L_M, reference labels); for
    #: "finetune" the ``prior_loss_*`` fields hold L_M and the disagreement is |F_main − F_ref|
    kind: str = "ttt"
    #: what has run on this system's weights so far, in order (e.g. ["ttt", "finetune"])
    ran: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """A short JSON-able summary (goes into ``calc.results`` and ``atoms.info``)."""
        return {"steps": self.steps, "seconds": round(self.seconds, 3),
                "prior_loss_start": self.prior_loss_start, "prior_loss_end": self.prior_loss_end,
                "stop_reason": self.stop_reason, "cached": self.cached,
                "force_disagreement_before": self.force_disagreement_before,
                "force_disagreement_after": self.force_disagreement_after, "kind": self.kind,
                "ran": list(self.ran)}

    def to_dict(self) -> dict:
        return asdict(self)


class AdaptationState:
    """Pre-adaptation weights, the per-system cache of adapted weights, and which system's weights
    the model holds now (``current``; None for the shipped ones) with what ran on them (``ran``)."""

    def __init__(self, model: MultiHeadPotential):
        self.model = model
        groups = model.parameter_groups()
        # everything TTT or fine-tuning may change (θR, θM), so restore() is always exact
        self.names = sorted(set(groups["adaptable"]) | set(groups["representation"]) | set(groups["main"]))
        self.base = snapshot(model, self.names)
        self.cache: dict[str, dict[str, torch.Tensor]] = {}
        self.reports: dict[str, AdaptationReport] = {}
        self.ran: dict[str, list[str]] = {}
        self.current: str | None = None

    def restore(self) -> None:
        restore(self.model, self.base)
        self.current = None

    def apply(self, key: str) -> None:
        # base first: the cached system may have adapted fewer parameters than the current weights hold
        restore(self.model, self.base)
        restore(self.model, self.cache[key])
        self.current = key

    def save(self, path: str | Path) -> Path:
        """Save the adapted weights of every system (atomic write)."""
        from .checkpoint import atomic_torch_save

        payload = {"format": "ttcalc-ttt-cache", "names": self.names,
                   "cache": {k: {n: t.cpu() for n, t in v.items()} for k, v in self.cache.items()},
                   "reports": {k: r.to_dict() for k, r in self.reports.items()}, "ran": self.ran}
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
        self.ran.update({k: list(v) for k, v in payload.get("ran", {}).items()})


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
    _check_one_system(frames, "TTT")
    return frames, "user"


def _check_one_system(frames: list[Atoms], what: str) -> None:
    numbers = frames[0].numbers
    if any(len(f) != len(numbers) or np.any(f.numbers != numbers) for f in frames):
        raise ValueError(f"all {what} frames must be the same system (same atoms in the same order)")


# --- the adaptation loop ------------------------------------------------------------------------------
def _loss(model, batch, weights: LossWeights, create_graph: bool, offset_free: bool = True, head: str = "prior"):
    """Loss of one head (:func:`ttcalc.losses.energy_force_loss`) on a labelled batch of one system:
    L_P for TTT (prior labels), L_M for fine-tuning (reference labels)."""
    pred = model(batch, heads=(head,), create_graph=create_graph)[head]
    return energy_force_loss(pred, batch.energy, batch.forces, batch.n_atoms, weights, offset_free=offset_free)


def _mean_disagreement(model, batch) -> float:
    """Mean per-atom |F_main − F_label| (eV/Å) over a labelled batch."""
    f = model(batch, heads=("main",))["main"]["forces"].detach()
    return float(torch.linalg.vector_norm(f - batch.forces, dim=-1).mean())


@dataclass
class _Fit:
    """What :func:`_fit` did: updates, why it stopped, losses and curves."""

    steps: int
    reason: str
    start: float
    end: float
    curve: list
    val_curve: list


def _split(labelled: list[Atoms], cfg: FitSettings) -> tuple[list[Atoms], list[Atoms]]:
    order = np.random.default_rng(cfg.seed).permutation(len(labelled))
    n_val = max(1, int(round(cfg.val_fraction * len(labelled))))
    val = [labelled[i] for i in order[:n_val]]
    return [labelled[i] for i in order[n_val:]] or val, val


def _fit(model: MultiHeadPotential, names: list[str], train: list[Atoms], val_batch, cfg: FitSettings,
         head: str, target: float | None) -> _Fit:
    """Minimise ``head``'s loss over the parameters ``names`` on ``train``; keep the best validated
    weights (the start weights if nothing helped). Stops at ``cfg.max_steps``, on a stalled
    validation loss, at ``target`` (TTT's in-distribution prior loss), or rolls back on divergence."""
    weights = LossWeights(cfg.energy_weight, cfg.force_weight)
    params = [dict(model.named_parameters())[n] for n in names]
    rng = np.random.default_rng(cfg.seed)

    def val_loss() -> float:
        return float(_loss(model, val_batch, weights, False, cfg.energy_offset_free, head)[0].detach())

    start = val_loss()
    if not math.isfinite(start):
        raise FloatingPointError(f"the {head} loss of the unadapted model is {start}; cannot adapt")
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # best: the lowest validated loss and its weights (restored at the end); ref: the loss that
    # counts as progress for patience (must improve by min_rel_improvement)
    best, best_state, ref, stale = start, snapshot(model, names), start, 0
    curve, val_curve = [], [(0, start)]
    reason, n_updates = f"max_steps ({cfg.max_steps})", 0
    # already at the in-distribution loss: training further would only overfit the prior
    steps = range(1, cfg.max_steps + 1) if target is None or start > target else range(0)
    if target is not None and start <= target:
        reason = f"reached the in-distribution prior loss ({target:.4g}) before any step"
    dtype, device = model.dtype, model.device
    for step in steps:
        idx = rng.choice(len(train), size=min(cfg.batch_size, len(train)), replace=False)
        batch = collate([train[i] for i in idx], model.cutoff, dtype=dtype, device=device, labels=True)
        opt.zero_grad(set_to_none=True)
        loss, _ = _loss(model, batch, weights, True, cfg.energy_offset_free, head)
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
                reason = f"{head} loss stalled ({cfg.patience} checks without improvement)"
                break
    restore(model, best_state)
    return _Fit(n_updates, reason, start, val_loss(), curve, val_curve)


def _run_on_system(state: "AdaptationState", key: str, kind: str, labelled: list[Atoms], cfg: FitSettings,
                   groups: tuple[str, ...], head: str, target: float | None, source: str, t0: float,
                   carry_on: bool) -> "AdaptationReport":
    """Fit ``groups`` of ``state.model`` on one system's labelled frames and record the result.

    With ``carry_on`` the weights continue from this system's current ones (so TTT and fine-tuning
    combine, in either order); otherwise, and always when the model holds another system's weights,
    from the pre-adaptation ones. Any error puts back the weights the call started from."""
    model = state.model
    carry_on = carry_on and state.current == key
    if not carry_on:
        state.restore()  # never on top of another system's adaptation
    before = snapshot(model, state.names)
    train, val = _split(labelled, cfg)
    val_batch = collate(val, model.cutoff, dtype=model.dtype, device=model.device, labels=True)
    names = sorted({n for g in groups for n in model.parameter_groups()[g]})
    model.set_trainable(*groups)
    try:
        disagreement_before = _mean_disagreement(model, val_batch)
        fit = _fit(model, names, train, val_batch, cfg, head, target)
        disagreement_after = _mean_disagreement(model, val_batch)
    except BaseException:
        restore(model, before)
        raise
    finally:
        model.requires_grad_(False)
    ran = state.ran.get(key, []) + [kind] if carry_on else [kind]
    state.cache[key], state.current, state.ran[key] = snapshot(model, state.names), key, ran
    report = AdaptationReport(
        steps=fit.steps, seconds=time.perf_counter() - t0, prior_loss_start=fit.start, prior_loss_end=fit.end,
        stop_reason=fit.reason, parameters=names,
        n_parameters=int(sum(dict(model.named_parameters())[n].numel() for n in names)),
        force_disagreement_before=disagreement_before, force_disagreement_after=disagreement_after,
        n_frames=len(labelled), frame_source=source, system=key, loss_curve=fit.curve,
        val_curve=fit.val_curve, id_prior_loss=target, kind=kind, ran=list(ran))
    state.reports[key] = report
    log.info("%s on %s: %d steps, %s loss %.4g -> %.4g (%s) in %.1f s", kind, labelled[0].get_chemical_formula(),
             fit.steps, head, fit.start, fit.end, fit.reason, report.seconds)
    return report


def _system_of(atoms_or_frames) -> tuple[Atoms | list[Atoms], str]:
    if not isinstance(atoms_or_frames, Atoms):
        atoms_or_frames = list(atoms_or_frames)  # once: a generator must not be consumed twice
        if len(atoms_or_frames) < 2:
            raise ValueError("give one Atoms (frames are generated) or at least two frames")
    first = atoms_or_frames if isinstance(atoms_or_frames, Atoms) else atoms_or_frames[0]
    return atoms_or_frames, system_key(first)


def adapt(calc, atoms_or_frames, force: bool = False, **overrides) -> AdaptationReport:
    """Run test-time training for ``calc`` (a :class:`~ttcalc.calculator.TTTCalculator`)."""
    from .data import label_with_prior

    cfg = calc.ttt_config.updated(**overrides) if overrides else calc.ttt_config
    state: AdaptationState = calc.adaptation
    atoms_or_frames, key = _system_of(atoms_or_frames)
    t0 = time.perf_counter()
    # this system was adapted before (and perhaps fine-tuned after): its weights, not another TTT
    if key in state.cache and not force and "ttt" in state.ran.get(key, []):
        state.apply(key)
        old = state.reports[key]
        return replace(old, cached=True, seconds=time.perf_counter() - t0)
    frames, source = make_frames(atoms_or_frames, calc.prior, cfg)  # bad frames raise before any change
    labelled = label_with_prior(frames, calc.prior)
    target = calc.model.stats.prior_loss if cfg.stop_at_id_loss else None
    # TTT starts afresh from the shipped weights, unless this system's were fine-tuned on labels
    fine_tuned = "finetune" in state.ran.get(key, [])
    return _run_on_system(state, key, "ttt", labelled, cfg, (cfg.parameters,), "prior", target, source, t0,
                          carry_on=fine_tuned)


def finetune(state: "AdaptationState", frames, cfg: FinetuneLabelsConfig) -> AdaptationReport:
    """Fine-tune on labelled frames of one system: the main head's loss L_M against the reference
    energies and forces each frame carries (e.g. a ``SinglePointCalculator``), over
    ``cfg.parameters``; energies up to a constant by default (the element references of a new
    composition are not pinned). A fifth of the frames (``val_fraction``) is held out for early
    stopping and the best validated weights are kept; divergence rolls back."""
    frames, key = _system_of(frames)
    if isinstance(frames, Atoms):
        raise ValueError("finetune needs labelled frames (a list of at least two Atoms), not one structure")
    _check_one_system(frames, "fine-tuning")
    missing = [i for i, f in enumerate(frames) if f.calc is None or "forces" not in f.calc.results]
    if missing:
        raise ValueError(f"frames {missing[:5]} carry no reference energy and forces (attach a "
                         f"SinglePointCalculator, as load_rmd17 and read_frames do)")
    return _run_on_system(state, key, "finetune", frames, cfg, FINETUNE_GROUPS[cfg.parameters], "main", None,
                          "labelled", time.perf_counter(), carry_on=True)
