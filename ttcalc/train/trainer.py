"""One optimization stage: Adam, plateau LR schedule, early stopping, best checkpoint, CSV log.

A stage trains some parameter groups of a :class:`~ttcalc.model.potential.MultiHeadPotential` on targets
for some heads. Targets of different heads share geometries (the same frames labelled by DFT and
by the prior), so one forward pass serves every head.

Multi-process data parallelism: launched under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes
a shard of every batch and gradients are averaged with ``torch.distributed`` (gloo on CPU, nccl
on GPUs); rank 0 alone writes logs and checkpoints. The single-process path is the same code
with a world of one.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from ase import Atoms
from tqdm.auto import tqdm

from ttcalc.model.batch import Batch, collate
from ttcalc.train.losses import LossWeights, energy_force_loss
from ttcalc.model.checkpoint import atomic_torch_save
from md_protocols.files import atomic_write
from ttcalc.model.potential import MultiHeadPotential, restore, snapshot
from ttcalc.train.config import StageConfig, make_optimizer
from ttcalc.model.compiled import quiet_inductor
from ttcalc.train.force_step import ForceStep

log = logging.getLogger(__name__)

#: the auto-compile rule of :func:`use_compiled_step`: a trace and an inductor compile per batch
#: shape cost minutes on 2 CPU cores, and the compiled step saves a few ms per frame
COMPILE_MIN_STEPS = 2000


@dataclass
class Targets:
    """Energies (M,) and forces (list of (N_m, 3)) of one head for M aligned frames."""

    energy: np.ndarray
    forces: list[np.ndarray]

    @classmethod
    def from_frames(cls, frames: Sequence[Atoms]) -> "Targets":
        return cls(np.array([a.get_potential_energy() for a in frames]),
                   [np.asarray(a.get_forces()) for a in frames])

    def subset(self, idx: Sequence[int]) -> "Targets":
        return Targets(self.energy[list(idx)], [self.forces[i] for i in idx])


@dataclass
class StageResult:
    best_val_loss: float
    epochs: int
    seconds: float
    stop_reason: str
    history: list[dict] = field(default_factory=list)


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside ``torchrun``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def average_gradients(params: list[torch.nn.Parameter], world: int, share: float | None = None) -> None:
    """Sum of ``share``-weighted gradients over ranks (``share`` = this rank's fraction of the global
    batch, default 1/world): each rank's loss is a mean over its shard, so this makes the update
    that of one process on the whole batch, also for shards of unequal size."""
    if world == 1:
        return
    share = 1.0 / world if share is None else share
    for p in params:
        if p.grad is not None:
            p.grad *= share
            torch.distributed.all_reduce(p.grad)


def size_bucketed_batches(sizes: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled mini-batches in which every structure has the same atom count.

    The dense kernel costs O(B·N_max²); mixing a 12-atom and a 21-atom molecule in one batch
    pads the small one to 21 atoms, so equal-size batches do the same epoch with less work.
    """
    batches = []
    for size in np.unique(sizes):
        members = rng.permutation(np.nonzero(sizes == size)[0])
        batches += [members[i:i + batch_size] for i in range(0, len(members), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def evaluate_loss(model: MultiHeadPotential, frames: Sequence[Atoms], targets: dict[str, Targets],
                  head_weights: dict[str, float], weights: LossWeights, batch_size: int = 64) -> dict:
    """Mean loss per head over ``frames`` (no gradient w.r.t. parameters), the weighted total, and
    each head's force MAE in meV/Å (``"<head>_force_mae_meV"``: the learning curve's unit)."""
    totals = {h: 0.0 for h in targets}
    abs_err = {h: 0.0 for h in targets}
    n, n_components = len(frames), 0
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        batch = collate([frames[i] for i in idx], model.cutoff, model.dtype, model.device)
        pred = model(batch, heads=tuple(targets))
        for h, t in targets.items():
            e, f = _label_tensors(t, idx, batch)
            p = {k: v.detach() for k, v in pred[h].items()}
            loss, _ = energy_force_loss(p, e, f, batch.n_atoms, weights)
            totals[h] += float(loss) * len(idx)
            abs_err[h] += float((p["forces"] - f).abs().sum())
        n_components += 3 * int(batch.n_atoms.sum())
    out = {h: v / n for h, v in totals.items()}
    out["total"] = sum(head_weights[h] * out[h] for h in targets)
    out.update({f"{h}_force_mae_meV": 1000 * abs_err[h] / n_components for h in targets})
    return out


def _label_tensors(t: Targets, idx: Sequence[int], batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    dtype, device = batch.pos.dtype, batch.pos.device
    e = torch.as_tensor(t.energy[list(idx)], dtype=dtype, device=device)
    f = torch.as_tensor(np.concatenate([t.forces[i] for i in idx]), dtype=dtype, device=device)
    return e, f


class LRSchedule:
    """The learning rate of a stage: a plateau schedule (lr × ``lr_factor`` after ``lr_patience``
    epochs without a lower validation loss), then, when ``cfg.anneal_epochs`` > 0, a cosine anneal
    (Loshchilov & Hutter 2017, SGDR without restarts) from epoch e₀ = ``cfg.anneal_from`` over
    T = ``cfg.anneal_epochs`` epochs:

        lr_e = min_lr + (lr₀ − min_lr) · ½ (1 + cos(π (e − e₀ + 1) / T)),

    lr₀ being the plateau's rate when the anneal begins. lr₀ is kept in the optimizer's parameter
    groups, so a resumed stage anneals from the same rate; the state dict is the plateau's."""

    def __init__(self, opt: torch.optim.Optimizer, cfg: StageConfig):
        self.opt, self.cfg = opt, cfg
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.lr_factor,
                                                                  patience=cfg.lr_patience, min_lr=cfg.min_lr)

    def annealing(self, epoch: int) -> bool:
        return self.cfg.anneal_epochs > 0 and epoch >= self.cfg.anneal_from

    def begin_epoch(self, epoch: int) -> None:
        """Set the rate of ``epoch`` (called before its first batch)."""
        if not self.annealing(epoch):
            return
        cfg = self.cfg
        t = min(1.0, (epoch - cfg.anneal_from + 1) / cfg.anneal_epochs)
        for group in self.opt.param_groups:
            lr0 = group.setdefault("anneal_lr0", group["lr"])
            group["lr"] = cfg.min_lr + (lr0 - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def end_epoch(self, epoch: int, val_loss: float) -> None:
        if not self.annealing(epoch):
            self.plateau.step(val_loss)

    def state_dict(self) -> dict:
        return self.plateau.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.plateau.load_state_dict(state)


def make_stage_optimizer(model: MultiHeadPotential, groups: Sequence[str], cfg: StageConfig, name: str):
    """Make exactly ``groups`` trainable; the optimizer of ``cfg`` on them and its :class:`LRSchedule`."""
    model.set_trainable(*groups)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{name}: no trainable parameters in groups {groups}")
    opt = make_optimizer(params, cfg)
    return params, opt, LRSchedule(opt, cfg)


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, params: list, grad_clip: float,
                   name: str, epoch: int, world: int = 1, share: float | None = None) -> None:
    """Backward, (data-parallel gradient average), global-norm clipping and one optimizer step."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{name}: non-finite training loss at epoch {epoch}")
    loss.backward()
    average_gradients(params, world, share)
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


class StageMonitor:
    """Per-epoch bookkeeping shared by every training loop: CSV log, progress bar, best weights
    (saved atomically to ``checkpoint_path`` on each improvement, restored at the end) and the stop
    rules of :class:`StageConfig` (patience, min_lr, time budget).

    ``state_dict``/``load_state_dict`` carry what a resumed stage needs (best loss and weights,
    patience counter, history, elapsed time)."""

    def __init__(self, model: MultiHeadPotential, cfg: StageConfig, name: str, initial_val: float,
                 extra_columns: Sequence[str] = (), log_path: str | Path | None = None,
                 checkpoint_path: str | Path | None = None, progress: bool = True):
        self.model, self.cfg, self.name = model, cfg, name
        self.checkpoint_path = checkpoint_path
        self.initial_val = initial_val
        self.best, self.best_state, self.stale = initial_val, snapshot(model), 0
        self.history: list[dict] = []
        self.reason = f"max_epochs ({cfg.max_epochs})"
        self.epoch = 0
        self.t0 = time.perf_counter()
        self.log_path, self.extra_columns = log_path, list(extra_columns)
        self.writer, self.fh = None, None
        if log_path is not None:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(log_path, "a", newline="")
            self.writer = csv.writer(self.fh)
            if self.fh.tell() == 0:
                self.writer.writerow(["stage", "epoch", "lr", "train_loss", "val_loss", "seconds"]
                                     + self.extra_columns)
        self.bar = tqdm(total=cfg.max_epochs, desc=name, disable=not progress, unit="epoch")

    def __enter__(self) -> "StageMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.fh is not None:
            self.fh.close()

    def state_dict(self) -> dict:
        return {"initial_val": self.initial_val, "best": self.best, "best_state": self.best_state,
                "stale": self.stale, "history": self.history, "epoch": self.epoch,
                "elapsed": time.perf_counter() - self.t0}

    def load_state_dict(self, state: dict) -> None:
        self.initial_val, self.best, self.stale = state["initial_val"], state["best"], state["stale"]
        self.best_state, self.history, self.epoch = state["best_state"], list(state["history"]), state["epoch"]
        self.t0 = time.perf_counter() - state["elapsed"]
        self.bar.update(self.epoch)
        if self.fh is not None:
            self._truncate_log()

    def _truncate_log(self) -> None:
        # a hard kill after the last saved state leaves rows of epochs the resumed stage will redo
        self.fh.close()
        with open(self.log_path, newline="") as fh:
            rows = list(csv.reader(fh))
        keep = [r for r in rows[1:] if r[0] != self.name or int(r[1]) <= self.epoch]
        header = ["stage", "epoch", "lr", "train_loss", "val_loss", "seconds"] + self.extra_columns
        header = rows[0] if len(rows[0]) >= len(header) else header  # a log from before a new column
        with atomic_write(self.log_path, "w") as fh:
            csv.writer(fh).writerows([header] + keep)
        self.fh = open(self.log_path, "a", newline="")
        self.writer = csv.writer(self.fh)

    def end_epoch(self, epoch: int, lr: float, train_loss: float, val_loss: float,
                  extra: Sequence[float] = ()) -> bool:
        """Record one epoch; True when training should stop."""
        cfg = self.cfg
        self.epoch = epoch
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_loss": val_loss,
               "seconds": time.perf_counter() - self.t0}
        self.history.append(row)
        if self.writer is not None:
            self.writer.writerow([self.name, epoch, f"{lr:.3g}", f"{train_loss:.6g}", f"{val_loss:.6g}",
                                  f"{row['seconds']:.1f}"] + [f"{v:.6g}" for v in extra])
            self.fh.flush()
        self.bar.update(1)
        self.bar.set_postfix(val=f"{val_loss:.4g}", lr=f"{lr:.1e}")
        if val_loss < self.best:
            self.best, self.best_state, self.stale = val_loss, snapshot(self.model), 0
            if self.checkpoint_path is not None:
                self.model.save(self.checkpoint_path, metadata={"stage": self.name, "epoch": epoch,
                                                                "val_loss": val_loss})
        else:
            self.stale += 1
        if self.stale >= cfg.patience:
            self.reason = f"early stopping ({cfg.patience} epochs without improvement)"
        elif cfg.anneal_end() is not None and epoch >= cfg.anneal_end():
            self.reason = f"end of the cosine anneal (epochs {cfg.anneal_from}-{cfg.anneal_end()})"
        elif lr <= cfg.min_lr * (1 + 1e-9) and self.stale > 0:
            self.reason = "learning rate reached min_lr"
        elif row["seconds"] > cfg.max_minutes * 60:
            self.reason = f"time budget ({cfg.max_minutes} min)"
        else:
            return False
        return True

    def result(self) -> "StageResult":
        """Restore the best weights, freeze the model and summarise the stage."""
        restore(self.model, self.best_state)
        self.model.requires_grad_(False)
        log.info("%s: best val loss %.5g after %d epochs (%s)", self.name, self.best, self.epoch, self.reason)
        return StageResult(self.best, self.epoch, time.perf_counter() - self.t0, self.reason, self.history)


class ParameterEMA:
    """Exponential moving average of the trainable parameters, θ̄ ← d·θ̄ + (1 − d)·θ after every
    optimizer step (Polyak averaging, as MACE and nequip evaluate with). ``applied()`` swaps θ̄ in
    for validation and checkpoints and swaps θ back for training."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.params, self.decay = params, float(decay)
        self.average = {n: p.detach().clone() for n, p in params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.params.items():
            self.average[n].lerp_(p.detach(), 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        live = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.average[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(live[n])


class TrainingInterrupted(RuntimeError):
    """A stage was stopped on request (SIGTERM/SIGINT); its state is saved at ``state_path``."""

    def __init__(self, name: str, state_path: Path | None):
        self.state_path = state_path
        where = f"; state saved to {state_path}, continue with --resume" if state_path else ""
        super().__init__(f"{name}: stopped on request{where}")


class StopSignal:
    """Turns SIGTERM and SIGINT into a request that the loop honours at the next batch boundary,
    so a stopped stage always leaves a consistent state file. Handlers are installed only in the
    main thread and restored on exit; ``request()`` is the same for code, and ``after_batches=N``
    requests the stop after N batches of this process (a batch budget, or a stop at a chosen point)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, after_batches: int | None = None):
        self.requested = False
        self.after_batches = after_batches
        self._old: dict = {}

    def request(self, *_args) -> None:
        self.requested = True

    def after_batch(self, done: int) -> None:
        """Called after every batch with the number of batches this process has run."""
        if self.after_batches is not None and done >= self.after_batches:
            self.request()

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self.request) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def epoch_batches(sizes: np.ndarray, cfg: StageConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's mini-batches: ``cfg.epoch_frames`` frames drawn afresh each epoch (all when 0),
    size-bucketed, without the incomplete batch of each size when ``cfg.drop_last``."""
    chosen = np.arange(len(sizes))
    if 0 < cfg.epoch_frames < len(sizes):
        chosen = np.sort(rng.choice(len(sizes), cfg.epoch_frames, replace=False))
    batches = [chosen[b] for b in size_bucketed_batches(sizes[chosen], cfg.batch_size, rng)]
    if cfg.drop_last:
        batches = [b for b in batches if len(b) == cfg.batch_size] or batches
    return batches


def use_compiled_step(cfg: StageConfig, n_frames: int) -> bool:
    """``cfg.compile``, or with ``None`` the rule: compile when the stage plans at least
    :data:`COMPILE_MIN_STEPS` optimizer steps, where one trace+compile per batch shape pays off."""
    if cfg.compile is not None:
        return bool(cfg.compile)
    per_epoch = (cfg.epoch_frames or n_frames) / cfg.batch_size
    return per_epoch * cfg.max_epochs >= COMPILE_MIN_STEPS


@dataclass
class EpochPosition:
    """Where a stage is inside its epochs: the current epoch's batches and how many are done."""

    epoch: int = 1
    batches: list | None = None
    next_batch: int = 0
    running: float = 0.0


def stage_state(model, opt, sched, ema, rng, monitor, pos, done=False, result=None) -> dict:
    return {"format": "ttcalc-stage-state", "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimiser": opt.state_dict(), "scheduler": sched.state_dict(),
            "ema": None if ema is None else ema.average, "np_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "monitor": monitor.state_dict() if monitor else None,
            "position": vars(pos) if pos else None, "done": done, "result": result}


def load_stage_state(saved: dict, model, opt, sched, ema, rng) -> EpochPosition:
    """Put a saved stage state back (the inverse of :func:`stage_state`, bar the monitor)."""
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimiser"])  # the file format's key; committed states use it
    sched.load_state_dict(saved["scheduler"])
    if ema is not None:
        ema.average = {n: saved["ema"][n].clone() for n in ema.params}
    rng.bit_generator.state = saved["np_rng"]
    torch.set_rng_state(saved["torch_rng"])
    return EpochPosition(**saved["position"])


def _released(model: MultiHeadPotential, saved: dict | None, name: str, state_path) -> StageResult:
    """The best weights of an unfinished stage (validated, EMA where the stage keeps one)."""
    if saved is None or saved.get("monitor") is None:
        raise ValueError(f"{name}: nothing to release: no saved training state at {state_path}")
    monitor = saved["monitor"]
    restore(model, monitor["best_state"])
    model.requires_grad_(False)
    log.info("%s: released the best weights of epoch <= %d (val loss %.6g); the state stays for --resume",
             name, monitor["epoch"], monitor["best"])
    return StageResult(best_val_loss=float(monitor["best"]), epochs=int(monitor["epoch"]),
                       seconds=float(monitor["elapsed"]), stop_reason=f"released at epoch {monitor['epoch']}",
                       history=list(monitor["history"]))


def read_stage_state(path: str | Path) -> dict:
    """A stage state written by :func:`train_stage` (our own file: full unpickling is safe)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != "ttcalc-stage-state":
        raise ValueError(f"{path} is not a ttcalc training-state file")
    return state


def _batch_loss(step: ForceStep, batch: Batch, idx, targets: dict[str, Targets], head_weights: dict[str, float],
                weights: LossWeights) -> torch.Tensor:
    pred = step(batch)
    loss = 0.0
    for h, t in targets.items():
        e, f = _label_tensors(t, idx, batch)
        loss_h, _ = energy_force_loss(pred[h], e, f, batch.n_atoms, weights)
        loss = loss + head_weights[h] * loss_h
    return loss


def _train_batch(whole: np.ndarray, frames: Sequence[Atoms], targets: dict[str, Targets], step: ForceStep,
                 opt: torch.optim.Optimizer, params: list, ema: "ParameterEMA | None", cfg: StageConfig,
                 head_weights: dict[str, float], weights: LossWeights, name: str, epoch: int) -> float:
    """One optimizer step on this rank's shard of the batch ``whole``; returns the shard's loss."""
    rank, world_size = world()
    idx = whole[rank::world_size]  # all of it in one process
    if len(idx) == 0:
        raise ValueError(f"{name}: a batch of {len(whole)} frames cannot be split over {world_size} "
                         f"processes; use batch_size >= world size and drop_last")
    model = step.model
    batch = collate([frames[i] for i in idx], model.cutoff, model.dtype, model.device)
    opt.zero_grad(set_to_none=True)
    loss = _batch_loss(step, batch, idx, targets, head_weights, weights)
    optimizer_step(loss, opt, params, cfg.grad_clip, name, epoch, world_size, len(idx) / len(whole))
    if ema is not None:
        ema.update()
    return float(loss.detach())


def saved_outcome(model: MultiHeadPotential, state_path: Path | None, *, resume: bool, release: bool,
                  name: str) -> tuple[dict | None, StageResult | None]:
    """The saved state a stage starts from (``resume``/``release`` and a state file) and, when
    nothing is left to train (a finished stage, or ``release``), the result to return at once."""
    saved = read_stage_state(state_path) if (resume or release) and state_path and state_path.exists() else None
    if saved is not None and saved["done"]:
        model.load_state_dict(saved["model"])
        model.requires_grad_(False)
        log.info("%s: already finished in %s", name, state_path)
        return saved, StageResult(**saved["result"])
    if release:
        return saved, _released(model, saved, name, state_path)
    return saved, None


def run_epochs(pos: EpochPosition, cfg: StageConfig, sched: LRSchedule, stop: StopSignal, save: Callable[[], None],
               name: str, state_path: Path | None, new_epoch: Callable[[], list],
               train_batch: Callable[[object, int], float], end_epoch: Callable[[int, float], bool]) -> None:
    """The resumable epoch loop every stage shares.

    ``sched.begin_epoch`` sets each epoch's rate before ``new_epoch()`` gives its batches,
    ``train_batch(batch, epoch)`` takes one optimizer step and returns its loss,
    ``end_epoch(epoch, mean_train_loss)`` validates and says whether to stop.
    ``pos`` (updated in place) is where a saved state resumes; ``save()`` is called every
    ``cfg.checkpoint_minutes`` and when ``stop`` is requested, which then raises
    :class:`TrainingInterrupted`.
    """
    last_save, n_done = time.monotonic(), 0
    while pos.epoch <= cfg.max_epochs:
        if pos.batches is None:
            sched.begin_epoch(pos.epoch)
            pos.batches, pos.next_batch, pos.running = new_epoch(), 0, 0.0
        while pos.next_batch < len(pos.batches):
            pos.running += train_batch(pos.batches[pos.next_batch], pos.epoch)
            pos.next_batch += 1
            n_done += 1
            stop.after_batch(n_done)
            if stop.requested or time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
                save()
                last_save = time.monotonic()
                if stop.requested:
                    raise TrainingInterrupted(name, state_path)
        finished = end_epoch(pos.epoch, pos.running / len(pos.batches))
        pos.epoch, pos.batches, pos.next_batch, pos.running = pos.epoch + 1, None, 0, 0.0
        if finished:
            return


def train_stage(model: MultiHeadPotential, train_frames: Sequence[Atoms], train_targets: dict[str, Targets],
                val_frames: Sequence[Atoms], val_targets: dict[str, Targets], groups: Sequence[str],
                cfg: StageConfig, head_weights: dict[str, float] | None = None, name: str = "stage",
                log_path: str | Path | None = None, checkpoint_path: str | Path | None = None,
                seed: int = 0, progress: bool = True, state_path: str | Path | None = None,
                resume: bool = False, stop: StopSignal | None = None, release: bool = False) -> StageResult:
    """Train parameter ``groups`` on the heads in ``train_targets``; keep the best validation
    weights (restored into ``model`` at the end) and save them to ``checkpoint_path``.

    With ``state_path`` the whole stage state (weights, Adam moments, LR schedule, EMA, RNG,
    epoch and batch position, best weights and patience) is written there atomically every
    ``cfg.checkpoint_minutes``, on SIGTERM/SIGINT (then :class:`TrainingInterrupted` is raised)
    and at the end; ``resume=True`` continues from it, and the continuation takes the same batches
    in the same order as an uninterrupted run. ``release=True`` trains nothing: it puts the best
    weights a saved, unfinished stage has reached into ``model`` and leaves the state as it is.
    """
    rank, _ = world()
    head_weights = head_weights or {h: 1.0 for h in train_targets}
    weights = LossWeights(cfg.energy_weight, cfg.force_weight)
    state_path = Path(state_path) if state_path is not None else None
    saved, done = saved_outcome(model, state_path, resume=resume, release=release, name=name)
    if done is not None:
        return done
    params, opt, sched = make_stage_optimizer(model, groups, cfg, name)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    ema = ParameterEMA(trainable, cfg.ema_decay) if cfg.ema_decay else None
    averaged = ema.applied if ema is not None else nullcontext
    rng = np.random.default_rng(seed)
    sizes = np.array([len(a) for a in train_frames])
    step = ForceStep(model, tuple(train_targets), compile=use_compiled_step(cfg, len(train_frames)))

    def evaluate() -> dict:
        return evaluate_loss(model, val_frames, val_targets, head_weights, weights)

    pos = EpochPosition()
    if saved is not None:
        pos = load_stage_state(saved, model, opt, sched, ema, rng)
        initial = saved["monitor"]["initial_val"]
        log.info("%s: resuming at epoch %d, batch %d from %s", name, pos.epoch, pos.next_batch, state_path)
    else:
        with averaged():
            initial = evaluate()["total"]
    columns = [f"val_{h}" for h in val_targets] + [f"val_{h}_force_mae_meV" for h in val_targets]
    monitor = StageMonitor(model, cfg, name, initial, columns,
                           log_path if rank == 0 else None,
                           checkpoint_path if rank == 0 else None, progress and rank == 0)
    stop = stop or StopSignal()

    def save(done: bool = False, result: dict | None = None) -> None:
        if state_path is not None and rank == 0:
            atomic_torch_save(stage_state(model, opt, sched, ema, rng, monitor, None if done else pos, done,
                                           result), state_path)

    def train_batch(whole: np.ndarray, epoch: int) -> float:
        return _train_batch(whole, train_frames, train_targets, step, opt, params, ema, cfg, head_weights,
                            weights, name, epoch)

    def end_epoch(epoch: int, train_loss: float) -> bool:
        with averaged():
            val = evaluate()
            sched.end_epoch(epoch, val["total"])
            return monitor.end_epoch(epoch, opt.param_groups[0]["lr"], train_loss, val["total"],
                                     [val[h] for h in val_targets]
                                     + [val[f"{h}_force_mae_meV"] for h in val_targets])

    with monitor, stop, quiet_inductor():  # the compiled step's backward lowers inside the loop
        if saved is not None:
            monitor.load_state_dict(saved["monitor"])
        run_epochs(pos, cfg, sched, stop, save, name, state_path, lambda: epoch_batches(sizes, cfg, rng),
                   train_batch, end_epoch)
        result = monitor.result()
    save(done=True, result=asdict(result))
    return result


def init_distributed_from_env() -> bool:
    """Join a ``torchrun`` process group if one is described by the environment."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":  # one GPU per rank: device "cuda" is then this rank's own
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)
        return True
    return False
