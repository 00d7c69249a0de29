"""Training regimes for a multi-head potential (Kreiman & Krishnapriyan 2025, sec. 5.1):

(a) ``pretrain-freeze-finetune``: train θR + θP on prior labels, freeze θR, train θM on reference
    labels. The representation then serves both heads, so TTT on the prior loss moves features the
    main head reads.
(b) ``joint``: train θR + θM + θP on L_M + λ L_P together.
(c) ``supervised``: θR + θM on reference labels only; the no-prior baseline.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from ttcalc.data import fit_element_references, label_with_prior, load_rmd17, read_frames, split_frames
from ttcalc.model.potential import MultiHeadPotential, TrainingStats, force_norm_summary, resolve_device
from ttcalc.priors import Prior, SGDMLPrior, make_prior
from ttcalc.train.config import TrainConfig
from ttcalc.train.trainer import StopSignal, Targets, evaluate_loss, train_stage, world
from ttcalc.train.losses import LossWeights

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Aligned train/validation frames with reference labels, and prior labels when used."""

    train: list[Atoms]
    val: list[Atoms]
    train_prior: list[Atoms] | None = None
    val_prior: list[Atoms] | None = None
    molecules: list[str] | None = None


def load_training_frames(cfg: TrainConfig) -> tuple[list[Atoms], list[Atoms], list[str]]:
    """Reference-labelled train and validation frames, drawn from train splits only."""
    d = cfg.data
    train, val, groups = [], [], []
    if d.source == "rmd17":
        for mol in d.molecules:
            if d.n_train:
                frames = load_rmd17(mol, split=d.split, n=d.n_train + d.n_val, seed=d.seed, exclude=d.exclude)
            else:  # every frame of the split (outside ``exclude``), shuffled
                frames = load_rmd17(mol, split=d.split, exclude=d.exclude)
                frames = [frames[i] for i in np.random.default_rng(d.seed).permutation(len(frames))]
            val += frames[: d.n_val]
            train += frames[d.n_val:]
            groups.append(mol)
    elif d.source == "files":
        if not d.files:
            raise ValueError("data.source='files' needs data.files")
        for path in d.files:
            frames = read_frames(path)
            tr, va = split_frames(frames, (1 - d.n_val / max(len(frames), 1), d.n_val / max(len(frames), 1)),
                                  seed=d.seed) if d.n_val else (frames, [])
            train += tr[: d.n_train] if d.n_train else tr
            val += va
            groups.append(Path(path).stem)
    else:
        raise ValueError(f"unknown data source {d.source!r}")
    if not train or not val:
        raise ValueError("training needs at least one train and one validation frame")
    return train, val, groups


def priors_for(cfg: TrainConfig, train: Sequence[Atoms]) -> dict[tuple, Prior]:
    """One prior per system (sGDML is molecule-specific); keyed by atomic-number tuples."""
    systems: dict[tuple, list[Atoms]] = {}
    for a in train:
        systems.setdefault(tuple(a.numbers), []).append(a)
    if cfg.prior.name == "sgdml":
        return {k: SGDMLPrior.from_frames(v, n_train=min(cfg.prior.sgdml_frames, len(v)), seed=cfg.seed)
                for k, v in systems.items()}
    prior = make_prior(cfg.prior.name)
    if prior is None:
        raise ValueError(f"regime {cfg.regime!r} needs a prior; got {cfg.prior.name!r}")
    return {k: prior for k in systems}


def label_frames(frames: Sequence[Atoms], priors: dict[tuple, Prior], *, progress: bool) -> list[Atoms]:
    out: list[Atoms | None] = [None] * len(frames)
    by_prior: dict[int, list[int]] = {}
    for i, a in enumerate(frames):
        by_prior.setdefault(id(priors[tuple(a.numbers)]), []).append(i)
    for idx in by_prior.values():
        prior = priors[tuple(frames[idx[0]].numbers)]
        labelled = label_with_prior([frames[i] for i in idx], prior, progress=progress)
        for i, a in zip(idx, labelled):
            out[i] = a
    return out  # type: ignore[return-value]


def install_head_statistics(model: MultiHeadPotential, head: str, frames: Sequence[Atoms]) -> None:
    """Least-squares element references and the RMS force scale of ``head``'s labels."""
    refs = fit_element_references(frames)
    rms = float(np.sqrt(np.mean(np.concatenate([a.get_forces().ravel() for a in frames]) ** 2)))
    model.heads[head].set_statistics(refs, rms)


def load_pretrained_weights(model: MultiHeadPotential, path: str | Path, prefixes: Sequence[str]) -> None:
    """Copy the parameters and buffers whose names start with ``prefixes`` from a checkpoint."""
    from ttcalc.model.checkpoint import read_checkpoint

    state = read_checkpoint(path)["state_dict"]
    own = model.state_dict()
    picked = {k: v for k, v in state.items() if k.startswith(tuple(prefixes))}
    if not picked:
        raise ValueError(f"{path} holds no weights under {list(prefixes)}")
    bad = [k for k, v in picked.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path} does not match this model's architecture: {bad[:5]}")
    model.load_state_dict({**own, **picked})
    log.info("took %d tensors (%s) from %s", len(picked), ", ".join(prefixes), path)


def training_stats(cfg: TrainConfig, model: MultiHeadPotential, ds: Dataset) -> TrainingStats:
    """Statistics of the training set that TTT, RR and the shift diagnostics compare against."""
    from ttcalc.diagnostics.spectral import build_training_spectrum
    from ttcalc.diagnostics.uncertainty import fit_model_q_residual

    prior_frames = ds.train_prior or ds.train
    norms = np.concatenate([np.linalg.norm(a.get_forces(), axis=1) for a in prior_frames])
    frame_norms = np.array([np.linalg.norm(a.get_forces(), axis=1).mean() for a in prior_frames])
    spectrum = build_training_spectrum(ds.train, radius=model.cutoff, max_frames=cfg.spectrum_frames,
                                       seed=cfg.seed)
    stats = TrainingStats(
        elements=sorted({int(z) for a in ds.train for z in a.numbers}),
        n_atoms=sorted({len(a) for a in ds.train}),
        cutoff=model.cutoff,
        prior_force_norm=force_norm_summary(norms),
        prior_frame_force_norm=force_norm_summary(frame_norms),
        spectrum=spectrum.to_dict(),
        molecules=list(ds.molecules or []),
        prior=None if ds.train_prior is None else cfg.prior.name,
    )
    if cfg.q_residual_frames:
        pick = np.random.default_rng(cfg.seed).permutation(len(ds.train))[:cfg.q_residual_frames]
        stats.q_residual = fit_model_q_residual(model, [ds.train[i] for i in sorted(pick)]).to_dict()
    if ds.val_prior is not None and "prior" in model.heads:
        w = LossWeights(cfg.pretrain.energy_weight, cfg.pretrain.force_weight)
        stats.prior_loss = float(evaluate_loss(model, ds.val, {"prior": Targets.from_frames(ds.val_prior)},
                                               {"prior": 1.0}, w)["prior"])
    return stats


def stage_state_path(output: str | Path, stage: str) -> Path:
    """Where :func:`train_model` keeps the resumable state of one stage: ``<output>.<stage>.state.pt``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.{stage}.state.pt")


#: the stages each regime trains, in order
REGIME_STAGES = {"pretrain-freeze-finetune": ("pretrain", "finetune"), "joint": ("joint",),
                 "supervised": ("supervised",)}


def train_model(cfg: TrainConfig, *, progress: bool = True, resume: bool = False, stop: StopSignal | None = None,
                release: bool = False):
    """Run the configured regime; returns the trained model and a JSON-able report.

    The best model is written to ``cfg.output`` (atomically), with ``cfg`` in its metadata so
    the checkpoint says how to reproduce it. A CSV log goes beside it. Each stage keeps its full
    state in :func:`stage_state_path`; ``resume=True`` skips finished stages and continues a
    stopped one exactly (see :func:`~ttcalc.train.trainer.train_stage`; ``stop`` replaces its
    SIGTERM/SIGINT handling, e.g. to stop after some batches). Without it, old state
    files of the same output are removed and training starts over. ``release=True`` writes
    ``cfg.output`` from the best weights the stages have reached so far, with the training
    statistics, and keeps every state file so that training can continue with ``resume``.
    """
    import torch

    if cfg.continue_pretraining and not (cfg.init_checkpoint and cfg.regime == "pretrain-freeze-finetune"):
        raise ValueError("continue_pretraining needs init_checkpoint and regime='pretrain-freeze-finetune'")
    if cfg.main_head_init == "checkpoint" and not cfg.init_checkpoint:
        raise ValueError("main_head_init='checkpoint' needs init_checkpoint")
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    out_path = Path(cfg.output)
    ds, timings = _labelled_dataset(cfg, progress)
    model = _initial_model(cfg, ds)
    resume = resume or release
    if not resume and world()[0] == 0:
        for s in REGIME_STAGES[cfg.regime]:
            stage_state_path(out_path, s).unlink(missing_ok=True)
        out_path.with_suffix(".csv").unlink(missing_ok=True)
    # every improvement is saved (atomically) as it happens, so a crash loses at most one epoch
    common = dict(log_path=out_path.with_suffix(".csv"), checkpoint_path=out_path.with_suffix(".partial.pt"),
                  seed=cfg.seed, progress=progress, resume=resume, stop=stop, release=release)
    stages = _train_stages(cfg, model, ds, common)
    model.stats = training_stats(cfg, model, ds)
    timings["total_s"] = time.perf_counter() - t_start
    report = {
        "config": cfg.to_dict(),
        "n_train": len(ds.train), "n_val": len(ds.val), "molecules": ds.molecules,
        "stages": {k: {"best_val_loss": v.best_val_loss, "epochs": v.epochs, "seconds": v.seconds,
                       "stop_reason": v.stop_reason} for k, v in stages.items()},
        "timings": timings,
        "world_size": world()[1],
    }
    if world()[0] == 0:  # under torchrun every rank holds the same weights; one writes them
        model.save(out_path, metadata={"train_config": cfg.to_dict(), "report": report, "released": release})
        if not release:
            out_path.with_suffix(".partial.pt").unlink(missing_ok=True)
            for s in REGIME_STAGES[cfg.regime]:
                stage_state_path(out_path, s).unlink(missing_ok=True)
    log.info("saved %s (%.1f s)", out_path, timings["total_s"])
    return model, report


def _labelled_dataset(cfg: TrainConfig, progress: bool) -> tuple[Dataset, dict]:
    """The configured frames with reference labels and, unless supervised, prior labels."""
    train, val, groups = load_training_frames(cfg)
    ds = Dataset(train, val, molecules=groups)
    timings = {}
    if cfg.regime != "supervised":
        t = time.perf_counter()
        priors = priors_for(cfg, train)
        ds.train_prior = label_frames(train, priors, progress=progress)
        ds.val_prior = label_frames(val, priors, progress=progress)
        timings["prior_labelling_s"] = time.perf_counter() - t
    return ds, timings


def _initial_model(cfg: TrainConfig, ds: Dataset) -> MultiHeadPotential:
    """A fresh model whose heads carry the element references and force scale of their labels."""
    model_cfg = cfg.model
    if cfg.regime == "supervised" and "prior" in model_cfg.heads:
        # the no-prior baseline has no prior head to carry around
        model_cfg = replace(model_cfg, heads=tuple(h for h in model_cfg.heads if h != "prior"))
    model = MultiHeadPotential(model_cfg, dtype=cfg.dtype).to(resolve_device(cfg.device))
    install_head_statistics(model, "main", ds.train)
    if ds.train_prior is not None:
        install_head_statistics(model, "prior", ds.train_prior)
    return model


def _train_stages(cfg: TrainConfig, model: MultiHeadPotential, ds: Dataset, common: dict) -> dict:
    """The regime's stages in order (sec. 5.1); ``common`` goes to every :func:`train_stage`."""
    targets = {"main": (Targets.from_frames(ds.train), Targets.from_frames(ds.val))}
    if ds.train_prior is not None:
        targets["prior"] = (Targets.from_frames(ds.train_prior), Targets.from_frames(ds.val_prior))

    def stage(name: str, heads: Sequence[str], trained: list[str], stage_cfg, **kw):
        return train_stage(model, ds.train, {h: targets[h][0] for h in heads}, ds.val,
                           {h: targets[h][1] for h in heads}, trained, stage_cfg, name=name,
                           state_path=stage_state_path(cfg.output, name), **common, **kw)

    stages = {}
    if cfg.regime == "pretrain-freeze-finetune":
        if cfg.init_checkpoint:
            load_pretrained_weights(model, cfg.init_checkpoint, ("representation.", "heads.prior."))
        if not cfg.init_checkpoint or cfg.continue_pretraining:
            stages["pretrain"] = stage("pretrain", ["prior"], ["representation", "prior"], cfg.pretrain)
        if cfg.main_head_init == "prior":
            model.heads["main"].copy_mlp_from(model.heads["prior"])
        elif cfg.main_head_init == "checkpoint":
            load_pretrained_weights(model, cfg.init_checkpoint, ("heads.main.",))
        stages["finetune"] = stage("finetune", ["main"], ["main"], cfg.finetune)
    elif cfg.regime == "joint":
        if cfg.init_checkpoint:
            # warm start (e.g. from a pretrain-freeze-finetune model): every weight, then θR unfrozen
            load_pretrained_weights(model, cfg.init_checkpoint, ("representation.", "heads.prior.", "heads.main."))
        stages["joint"] = stage("joint", ["main", "prior"], ["representation", "main", "prior"], cfg.pretrain,
                                head_weights={"main": 1.0, "prior": cfg.joint_prior_weight})
    else:
        stages["supervised"] = stage("supervised", ["main"], ["representation", "main"], cfg.pretrain)
    return stages
