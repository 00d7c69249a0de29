"""Training on several tasks with their own data: one mini-batch of every task per step.

A :class:`Task` owns its frames and labels and turns a list of frame indices into a loss. The
loop sums ``weight · loss`` over tasks each step; an epoch is one pass over the first (primary)
task, the others cycle through their own size-bucketed batches. This one loop serves

* multi-head force-field pretraining on corpora with different levels of theory (one energy head
  per level of theory, as in multi-head pretraining of foundation models), and
* multi-task fine-tuning (MFT, Peng et al. 2026, eq. 1): L = L_task + λ_reg · L_reg, one property
  batch and one force-field batch per step.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from ase import Atoms

from ttcalc.model.batch import collate
from ttcalc.train.losses import LossWeights, energy_force_loss
from ttcalc.model.potential import MultiHeadPotential
from ttcalc.train.config import StageConfig
from ttcalc.model.checkpoint import atomic_torch_save
from ttcalc.train.trainer import (EpochPosition, StageMonitor, StageResult, StopSignal, Targets, _label_tensors,
                                  evaluate_loss, load_stage_state, make_stage_optimizer, optimizer_step, run_epochs,
                                  saved_outcome, size_bucketed_batches, stage_state)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefactorSchedule:
    """DeePMD-style loss prefactors tied to the learning rate (Wang et al., DeePMD-kit):

        p(t) = p_limit + (p_start − p_limit) · lr(t) / lr(0),

    energy 0.2 → 20 and force 100 → 60 by default (the MFT paper's force-field objective)."""

    energy_start: float = 0.2
    energy_limit: float = 20.0
    force_start: float = 100.0
    force_limit: float = 60.0

    def weights(self, lr_ratio: float) -> LossWeights:
        r = float(lr_ratio)
        return LossWeights(self.energy_limit + (self.energy_start - self.energy_limit) * r,
                           self.force_limit + (self.force_start - self.force_limit) * r)


class Task:
    """Frames, a loss over index batches, a weight and a batch size.

    ``loss_fn(model, frames_batch, idx, lr_ratio, train)`` returns a scalar tensor. ``metrics(model)``,
    when given, returns further numbers over all frames (named ``metric_names``) that a validation
    task logs beside its loss, e.g. a force-field task's force MAE. It may also return ``"loss"``,
    the mean loss over all frames at ``lr_ratio`` 1, when the same forward pass gives it:
    :meth:`evaluate` then does not run the model over the frames a second time.
    """

    def __init__(self, name: str, frames: Sequence[Atoms], loss_fn: Callable, weight: float = 1.0,
                 batch_size: int = 16, metrics: Callable[[MultiHeadPotential], dict[str, float]] | None = None,
                 metric_names: Sequence[str] = ()):
        if len(frames) == 0:
            raise ValueError(f"task {name!r} has no frames")
        if batch_size < 1:
            raise ValueError(f"task {name!r}: batch_size must be >= 1")
        self.name, self.frames, self.loss_fn = name, list(frames), loss_fn
        self.weight, self.batch_size = float(weight), int(batch_size)
        self.scale: np.ndarray | None = None  # the label spread of a property task (see property_task)
        self.sizes = np.array([len(a) for a in self.frames])
        self._metrics, self.metric_names = metrics, tuple(metric_names)

    def metrics(self, model: MultiHeadPotential) -> dict[str, float]:
        """The task's further numbers over all its frames (empty without a ``metrics`` function)."""
        return {} if self._metrics is None else self._metrics(model)

    def evaluate(self, model: MultiHeadPotential) -> dict[str, float]:
        """``{"loss": mean loss over all frames, **metrics}`` (validation: no parameter gradients)."""
        out = self.metrics(model)
        return {"loss": out.pop("loss") if "loss" in out else self.mean_loss(model), **out}

    def loss(self, model: MultiHeadPotential, idx: Sequence[int], lr_ratio: float = 1.0,
             train: bool = True) -> torch.Tensor:
        return self.loss_fn(model, [self.frames[i] for i in idx], list(idx), lr_ratio, train)

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return size_bucketed_batches(self.sizes, self.batch_size, rng)

    def mean_loss(self, model: MultiHeadPotential, batch_size: int = 64) -> float:
        """Frame-weighted mean loss over all frames (no parameter gradients)."""
        total, n = 0.0, len(self.frames)
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            total += float(self.loss(model, idx, 1.0, train=False).detach()) * len(idx)
        return total / n


def force_field_task(name: str, frames: Sequence[Atoms], head: str,
                     weights: LossWeights | PrefactorSchedule = LossWeights(), weight: float = 1.0,
                     batch_size: int = 16) -> Task:
    """Energy + force loss (:func:`ttcalc.train.losses.energy_force_loss`) of one energy head on labelled
    frames; ``weights`` may follow a :class:`PrefactorSchedule`."""
    targets = Targets.from_frames(frames)

    def weights_at(lr_ratio: float) -> LossWeights:
        return weights.weights(lr_ratio) if isinstance(weights, PrefactorSchedule) else weights

    def loss_fn(model, frames_b, idx, lr_ratio, train):
        batch = collate(frames_b, model.cutoff, model.dtype, model.device)
        pred = model(batch, heads=(head,), create_graph=train)[head]
        e, f = _label_tensors(targets, idx, batch)
        return energy_force_loss(pred, e, f, batch.n_atoms, weights_at(lr_ratio))[0]

    def loss_and_force_mae(model) -> dict[str, float]:
        # one pass gives both; validation loss at lr_ratio 1, as mean_loss takes it
        parts = evaluate_loss(model, frames, {head: targets}, {head: 1.0}, weights_at(1.0))
        return {"loss": parts[head], "force_mae_meV": parts[f"{head}_force_mae_meV"]}

    return Task(name, frames, loss_fn, weight, batch_size, metrics=loss_and_force_mae, metric_names=("force_mae_meV",))


def property_task(name: str, frames: Sequence[Atoms], values: np.ndarray, head: str, weight: float = 1.0,
                  batch_size: int = 32, scale: np.ndarray | float | None = None) -> Task:
    """Mean squared error of a property head in units of the label spread:
    L = mean_b,k ((ŷ_bk − y_bk) / σ_k)², σ = ``scale`` (default: the std of ``values``)."""
    y = np.asarray(values, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    if len(y) != len(frames):
        raise ValueError(f"task {name!r}: {len(y)} values for {len(frames)} frames")
    sigma = np.atleast_1d(np.std(y, axis=0) if scale is None else np.asarray(scale, dtype=np.float64))
    sigma = np.where(sigma > 0, sigma, 1.0)

    def loss_fn(model, frames_b, idx, lr_ratio, train):
        batch = collate(frames_b, model.cutoff, model.dtype, model.device)
        with torch.enable_grad() if train else torch.no_grad():
            pred = model.predict_properties(batch, [head])[head]
        target = torch.as_tensor(y[idx], dtype=pred.dtype, device=pred.device)
        s = torch.as_tensor(sigma, dtype=pred.dtype, device=pred.device)
        return (((pred - target) / s) ** 2).mean()

    task = Task(name, frames, loss_fn, weight, batch_size)
    task.scale = sigma  # a validation task can reuse it, so both losses share one unit
    return task


class TaskStream:
    """Endless size-bucketed batches of one task, drawn with the stream's own generator; its state
    (generator, current cycle, position) is saved with a stage so a resumed run sees the same batches."""

    def __init__(self, task: Task, rng: np.random.Generator):
        self.task, self.rng = task, rng
        self.batches: list[np.ndarray] = []
        self.next = 0

    def __next__(self) -> np.ndarray:
        if self.next >= len(self.batches):
            self.batches, self.next = self.task.batches(self.rng), 0
        self.next += 1
        return self.batches[self.next - 1]

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "batches": self.batches, "next": self.next}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.batches, self.next = list(state["batches"]), int(state["next"])


def train_multitask(model: MultiHeadPotential, tasks: Sequence[Task], val_tasks: Sequence[Task],
                    groups: Sequence[str], cfg: StageConfig, name: str = "multitask",
                    log_path: str | Path | None = None, checkpoint_path: str | Path | None = None,
                    seed: int = 0, progress: bool = True, state_path: str | Path | None = None,
                    resume: bool = False, stop: StopSignal | None = None, release: bool = False) -> StageResult:
    """Minimise Σ_t w_t L_t over parameter ``groups``; model selection on Σ_t w_t L_t(val_t).

    The epoch length is the number of batches of ``tasks[0]``; task t > 0 draws from its own
    :class:`TaskStream` (seeded by ``(seed, t)``). Adam, the LR schedule and the stop rules of
    :class:`StageConfig`; the best validation weights are restored at the end. ``state_path`` and
    ``resume`` work as in :func:`~ttcalc.train.trainer.train_stage`: the whole state is saved every
    ``cfg.checkpoint_minutes``, on SIGTERM/SIGINT and at the end, and a resumed stage takes the same
    batches as an uninterrupted one. ``release=True`` trains nothing: it puts the best weights of the
    saved, unfinished stage into ``model``.
    """
    if not tasks:
        raise ValueError("train_multitask needs at least one task")
    state_path = Path(state_path) if state_path is not None else None
    saved, done = saved_outcome(model, state_path, resume=resume, release=release, name=name)
    if done is not None:
        return done
    params, opt, sched = make_stage_optimizer(model, groups, cfg, name)
    rng = np.random.default_rng(seed)
    streams = [TaskStream(t, np.random.default_rng([seed, k])) for k, t in enumerate(tasks) if k > 0]

    # losses first, then metrics: a log begun before a metric existed keeps its columns on resume
    columns = [t.name for t in val_tasks] + [f"{t.name}_{m}" for t in val_tasks for m in t.metric_names]

    def evaluate() -> dict[str, float]:
        parts = {}
        for t in val_tasks:
            evaluated = t.evaluate(model)
            parts[t.name] = evaluated.pop("loss")
            parts.update({f"{t.name}_{k}": v for k, v in evaluated.items()})
        parts["total"] = sum(t.weight * parts[t.name] for t in val_tasks)
        return parts

    pos = EpochPosition()
    if saved is not None:
        if len(saved["streams"]) != len(streams):  # before the optimizer's own, less telling, check
            raise ValueError(f"{name}: {state_path} holds {len(saved['streams'])} auxiliary task streams, "
                             f"this run has {len(streams)}; resume with the same tasks")
        pos = load_stage_state(saved, model, opt, sched, None, rng)
        for stream, state in zip(streams, saved["streams"]):
            stream.load_state_dict(state)
        log.info("%s: resuming at epoch %d, batch %d from %s", name, pos.epoch, pos.next_batch, state_path)
    initial = saved["monitor"]["initial_val"] if saved is not None else evaluate()["total"]
    monitor = StageMonitor(model, cfg, name, initial, [f"val_{c}" for c in columns], log_path, checkpoint_path,
                           progress)
    stop = stop or StopSignal()

    def save(done: bool = False, result: dict | None = None) -> None:
        if state_path is not None:
            state = stage_state(model, opt, sched, None, rng, monitor, None if done else pos, done, result)
            atomic_torch_save({**state, "streams": [s.state_dict() for s in streams]}, state_path)

    def train_batch(idx: np.ndarray, epoch: int) -> float:
        lr_ratio = opt.param_groups[0]["lr"] / cfg.lr
        opt.zero_grad(set_to_none=True)
        loss = tasks[0].weight * tasks[0].loss(model, idx, lr_ratio)
        for task, stream in zip(tasks[1:], streams):
            loss = loss + task.weight * task.loss(model, next(stream), lr_ratio)
        optimizer_step(loss, opt, params, cfg.grad_clip, name, epoch)
        return float(loss.detach())

    def end_epoch(epoch: int, train_loss: float) -> bool:
        val = evaluate()
        sched.end_epoch(epoch, val["total"])
        return monitor.end_epoch(epoch, opt.param_groups[0]["lr"], train_loss, val["total"],
                                 [val[c] for c in columns])

    with monitor, stop:
        if saved is not None:
            monitor.load_state_dict(saved["monitor"])
        run_epochs(pos, cfg, sched, stop, save, name, state_path, lambda: tasks[0].batches(rng), train_batch, end_epoch)
        result = monitor.result()
    save(done=True, result=asdict(result))
    return result
