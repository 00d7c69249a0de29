"""One optimisation stage: Adam, plateau LR schedule, early stopping, best checkpoint, CSV log.

A stage trains some parameter groups of a :class:`~ttcalc.model.MultiHeadPotential` on targets
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
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from tqdm.auto import tqdm

from ..batch import Batch, collate
from ..losses import LossWeights, energy_force_loss
from ..model import MultiHeadPotential, restore, snapshot
from .config import StageConfig

log = logging.getLogger(__name__)


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


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


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
    """Mean loss per head over ``frames`` (no gradient w.r.t. parameters)."""
    totals = {h: 0.0 for h in targets}
    n = len(frames)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        batch = collate([frames[i] for i in idx], model.cutoff, model.dtype, model.device)
        pred = model(batch, heads=tuple(targets))
        for h, t in targets.items():
            e, f = _label_tensors(t, idx, batch)
            loss, _ = energy_force_loss({k: v.detach() for k, v in pred[h].items()}, e, f,
                                        batch.n_atoms, weights)
            totals[h] += float(loss) * len(idx)
    out = {h: v / n for h, v in totals.items()}
    out["total"] = sum(head_weights[h] * out[h] for h in targets)
    return out


def _label_tensors(t: Targets, idx: Sequence[int], batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    dtype, device = batch.pos.dtype, batch.pos.device
    e = torch.as_tensor(t.energy[list(idx)], dtype=dtype, device=device)
    f = torch.as_tensor(np.concatenate([t.forces[i] for i in idx]), dtype=dtype, device=device)
    return e, f


def make_optimiser(model: MultiHeadPotential, groups: Sequence[str], cfg: StageConfig, name: str):
    """Make exactly ``groups`` trainable; Adam on them and the plateau schedule of ``cfg``."""
    model.set_trainable(*groups)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{name}: no trainable parameters in groups {groups}")
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.lr_factor, patience=cfg.lr_patience,
                                                       min_lr=cfg.min_lr)
    return params, opt, sched


def optimiser_step(loss: torch.Tensor, opt: torch.optim.Optimizer, params: list, grad_clip: float,
                   name: str, epoch: int, world: int = 1) -> None:
    """Backward, (data-parallel gradient average), global-norm clipping and one optimiser step."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{name}: non-finite training loss at epoch {epoch}")
    loss.backward()
    _average_gradients(params, world)
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


class StageMonitor:
    """Per-epoch bookkeeping shared by every training loop: CSV log, progress bar, best weights
    (saved atomically to ``checkpoint_path`` on each improvement, restored at the end) and the stop
    rules of :class:`StageConfig` (patience, min_lr, time budget)."""

    def __init__(self, model: MultiHeadPotential, cfg: StageConfig, name: str, initial_val: float,
                 extra_columns: Sequence[str] = (), log_path: str | Path | None = None,
                 checkpoint_path: str | Path | None = None, progress: bool = True):
        self.model, self.cfg, self.name = model, cfg, name
        self.checkpoint_path = checkpoint_path
        self.best, self.best_state, self.stale = initial_val, snapshot(model), 0
        self.history: list[dict] = []
        self.reason = f"max_epochs ({cfg.max_epochs})"
        self.epoch = 0
        self.t0 = time.perf_counter()
        self.writer, self.fh = None, None
        if log_path is not None:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(log_path, "a", newline="")
            self.writer = csv.writer(self.fh)
            if self.fh.tell() == 0:
                self.writer.writerow(["stage", "epoch", "lr", "train_loss", "val_loss", "seconds"]
                                     + list(extra_columns))
        self.bar = tqdm(total=cfg.max_epochs, desc=name, disable=not progress, unit="epoch")

    def __enter__(self) -> "StageMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.fh is not None:
            self.fh.close()

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


def train_stage(model: MultiHeadPotential, train_frames: Sequence[Atoms], train_targets: dict[str, Targets],
                val_frames: Sequence[Atoms], val_targets: dict[str, Targets], groups: Sequence[str],
                cfg: StageConfig, head_weights: dict[str, float] | None = None, name: str = "stage",
                log_path: str | Path | None = None, checkpoint_path: str | Path | None = None,
                seed: int = 0, progress: bool = True) -> StageResult:
    """Train parameter ``groups`` on the heads in ``train_targets``; keep the best validation
    weights (restored into ``model`` at the end) and save them to ``checkpoint_path``."""
    rank, world = _world()
    head_weights = head_weights or {h: 1.0 for h in train_targets}
    weights = LossWeights(cfg.energy_weight, cfg.force_weight)
    params, opt, sched = make_optimiser(model, groups, cfg, name)
    rng = np.random.default_rng(seed)
    sizes = np.array([len(a) for a in train_frames])
    evaluate = lambda: evaluate_loss(model, val_frames, val_targets, head_weights, weights)  # noqa: E731
    monitor = StageMonitor(model, cfg, name, evaluate()["total"], [f"val_{h}" for h in val_targets],
                           log_path if rank == 0 else None,
                           checkpoint_path if rank == 0 else None, progress and rank == 0)
    with monitor:
        for epoch in range(1, cfg.max_epochs + 1):
            batches = size_bucketed_batches(sizes, cfg.batch_size, rng)
            running = 0.0
            for idx in batches:
                idx = idx[rank::world] if world > 1 else idx
                if len(idx) == 0:
                    continue
                batch = collate([train_frames[i] for i in idx], model.cutoff, model.dtype, model.device)
                opt.zero_grad(set_to_none=True)
                pred = model(batch, heads=tuple(train_targets), create_graph=True)
                loss = 0.0
                for h, t in train_targets.items():
                    e, f = _label_tensors(t, idx, batch)
                    loss_h, _ = energy_force_loss(pred[h], e, f, batch.n_atoms, weights)
                    loss = loss + head_weights[h] * loss_h
                optimiser_step(loss, opt, params, cfg.grad_clip, name, epoch, world)
                running += float(loss.detach())
            val = evaluate()
            sched.step(val["total"])
            if monitor.end_epoch(epoch, opt.param_groups[0]["lr"], running / len(batches), val["total"],
                                 [val[h] for h in val_targets]):
                break
    return monitor.result()


def init_distributed_from_env() -> bool:
    """Join a ``torchrun`` process group if one is described by the environment."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        return True
    return False
