"""The fit shared by test-time training and fine-tuning on labels, the per-system adaptation state
and the report of one adaptation.

A fit minimises one head's energy+force loss (:func:`ttcalc.train.losses.energy_force_loss`) over a
group of parameters on one system's labelled frames, validates on a held-out part, keeps the best
validated weights and rolls back on divergence. :class:`AdaptationState` keeps the pre-adaptation
weights, so :meth:`AdaptationState.restore` is exact, and caches the adapted weights per system
(:func:`ttcalc.data.systems.system_key`).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from ttcalc.adapt.settings import FitSettings
from ttcalc.data.systems import system_key
from ttcalc.model.batch import collate
from ttcalc.model.checkpoint import atomic_torch_save
from ttcalc.model.potential import MultiHeadPotential, restore, snapshot
from ttcalc.train.config import make_optimizer
from ttcalc.train.force_step import ForceStep
from ttcalc.train.losses import LossWeights, energy_force_loss

log = logging.getLogger(__name__)


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
        self._steps: dict[tuple[str, bool], ForceStep] = {}

    def force_step(self, head: str, *, compile: bool) -> ForceStep:
        """The training step of ``head`` (:class:`ttcalc.train.force_step.ForceStep`), kept across
        fits so that a compiled graph is traced once per batch shape, not once per call."""
        key = (head, bool(compile))
        if key not in self._steps:
            self._steps[key] = ForceStep(self.model, (head,), compile=compile)
        return self._steps[key]

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


class _Stopping:
    """Early stopping of a fit on its validation checks: the best loss and weights (restored at the
    end), patience against a relative improvement, a target loss, and divergence."""

    def __init__(self, model, names: list[str], start: float, cfg: FitSettings, head: str, target: float | None):
        self.model, self.names, self.start, self.cfg, self.head, self.target = model, names, start, cfg, head, target
        self.best, self.best_state = start, snapshot(model, names)
        self.ref, self.stale = start, 0  # the loss that counts as progress for patience

    def check(self, v: float) -> str | None:
        """Record one validation loss; the reason to stop, or None to go on."""
        cfg = self.cfg
        if not math.isfinite(v) or v > cfg.divergence_factor * self.start:
            return "diverged: rolled back"
        if v < self.best:
            self.best, self.best_state = v, snapshot(self.model, self.names)
        if v < self.ref * (1 - cfg.min_rel_improvement):
            self.ref, self.stale = v, 0
        else:
            self.stale += 1
        if self.target is not None and v <= self.target:
            return f"reached the in-distribution prior loss ({self.target:.4g})"
        if self.stale >= cfg.patience:
            return f"{self.head} loss stalled ({cfg.patience} checks without improvement)"
        return None


def _update(opt: torch.optim.Optimizer, params: list, loss_fn, grad_clip: float) -> float | None:
    """One optimizer step on ``loss_fn()``, its gradient clipped to global norm ``grad_clip``; the
    loss, or None (and no step) when it is not finite."""
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    if not torch.isfinite(loss):
        return None
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    return float(loss.detach())


def _fit(force_step: ForceStep, names: list[str], train: list[Atoms], val_batch, cfg: FitSettings,
         target: float | None) -> _Fit:
    """Minimise the loss of ``force_step``'s head (L_P for TTT on prior labels, L_M for fine-tuning on
    reference labels; :func:`ttcalc.train.losses.energy_force_loss`) over the parameters ``names``
    on ``train``; keep the best validated weights (the start weights if nothing helped). Stops at
    ``cfg.max_steps``, on a stalled validation loss, at ``target`` (TTT's in-distribution prior
    loss), or rolls back on divergence. Validation runs the eager model: no parameter gradient."""
    model, (head,) = force_step.model, force_step.heads
    weights = LossWeights(cfg.energy_weight, cfg.force_weight)
    params = [dict(model.named_parameters())[n] for n in names]
    rng = np.random.default_rng(cfg.seed)

    def loss_of(batch, create_graph: bool):
        pred = force_step(batch)[head] if create_graph else model(batch, heads=(head,))[head]
        return energy_force_loss(pred, batch.energy, batch.forces, batch.n_atoms, weights,
                                 offset_free=cfg.energy_offset_free)[0]

    def val_loss() -> float:
        return float(loss_of(val_batch, create_graph=False).detach())

    start = val_loss()
    if not math.isfinite(start):
        raise FloatingPointError(f"the {head} loss of the unadapted model is {start}; cannot adapt")
    opt = make_optimizer(params, cfg)
    stopping = _Stopping(model, names, start, cfg, head, target)
    curve, val_curve = [], [(0, start)]
    reason, n_updates = f"max_steps ({cfg.max_steps})", 0
    if target is not None and start <= target:
        # already at the in-distribution loss: training further would only overfit the prior
        return _Fit(0, f"reached the in-distribution prior loss ({target:.4g}) before any step", start, start,
                    curve, val_curve)
    for step in range(1, cfg.max_steps + 1):
        idx = rng.choice(len(train), size=min(cfg.batch_size, len(train)), replace=False)
        batch = collate([train[i] for i in idx], model.cutoff, dtype=model.dtype, device=model.device, labels=True)
        loss = _update(opt, params, lambda: loss_of(batch, create_graph=True), cfg.grad_clip)
        if loss is None:
            reason = "non-finite loss: rolled back"
            break
        n_updates = step
        curve.append(loss)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            v = val_loss()
            val_curve.append((step, v))
            stop = stopping.check(v)
            if stop is not None:
                reason = stop
                break
    restore(model, stopping.best_state)
    return _Fit(n_updates, reason, start, val_loss(), curve, val_curve)


def fit_on_system(state: "AdaptationState", key: str, kind: str, labelled: list[Atoms], cfg: FitSettings, *,
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
        fit = _fit(state.force_step(head, compile=cfg.compile), names, train, val_batch, cfg, target)
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


def system_of(atoms_or_frames) -> tuple[Atoms | list[Atoms], str]:
    if not isinstance(atoms_or_frames, Atoms):
        atoms_or_frames = list(atoms_or_frames)  # once: a generator must not be consumed twice
        if len(atoms_or_frames) < 2:
            raise ValueError("give one Atoms (frames are generated) or at least two frames")
    first = atoms_or_frames if isinstance(atoms_or_frames, Atoms) else atoms_or_frames[0]
    return atoms_or_frames, system_key(first)
