"""One-file checkpoints for :class:`~ttcalc.model.MultiHeadPotential`.

A checkpoint is a ``torch.save`` dict of plain types and tensors (loadable with
``weights_only=True``):

=================  ==========================================================================
``format``         ``"ttcalc-checkpoint"``
``version``        integer format version (:data:`FORMAT_VERSION`)
``config``         :class:`~ttcalc.model.ModelConfig` as a dict
``state_dict``     weights and buffers (element references and head scales included)
``stats``          :class:`~ttcalc.model.TrainingStats` as a dict (elements, sizes, cutoff, prior
                   force-norm distribution, training spectrum, in-distribution prior loss)
``units``          ``{"energy": "eV", "length": "Angstrom"}``
``dtype``          ``"float32"`` or ``"float64"``
``metadata``       free-form JSON-able dict (training config, data, timings)
``cutoff``         the active graph radius, which differs from the config's after radius refinement
                   (the model reloads with it); absent in older checkpoints
=================  ==========================================================================

Writes are atomic (temporary file + ``os.replace``) so a crash never leaves a half-written file.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .files import atomic_write

FORMAT = "ttcalc-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "version", "config", "state_dict", "stats", "units", "dtype")
UNITS = {"energy": "eV", "length": "Angstrom"}


class CheckpointError(ValueError):
    """A checkpoint file is missing, malformed, or incompatible with this version of ttcalc."""


def atomic_torch_save(obj, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (:func:`ttcalc.files.atomic_write`)."""
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def checkpoint_dict(model, metadata: dict | None = None) -> dict:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "stats": model.stats.to_dict(),
        "units": dict(UNITS),
        "dtype": "float64" if model.dtype == torch.float64 else "float32",
        "metadata": metadata or {},
        "cutoff": float(model.cutoff),
    }


def save_checkpoint(model, path: str | Path, metadata: dict | None = None) -> Path:
    """Save ``model`` to ``path`` atomically."""
    return atomic_torch_save(checkpoint_dict(model, metadata), path)


def read_checkpoint(path: str | Path) -> dict:
    """Load and validate the raw checkpoint dict (no model is built)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(f"{path} is not a readable ttcalc checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ttcalc checkpoint (format field missing or wrong)")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks required checkpoint fields: {missing}")
    if ckpt["version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {ckpt['version']}; this ttcalc reads version "
            f"{FORMAT_VERSION}"
        )
    if ckpt["units"] != UNITS:
        raise CheckpointError(f"{path} uses units {ckpt['units']}; expected {UNITS}")
    return ckpt


def model_from_checkpoint(ckpt: dict, dtype=None, device="cpu", source: str = "checkpoint"):
    from .model import ModelConfig, MultiHeadPotential, TrainingStats

    try:
        config = ModelConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: incompatible model config: {exc}") from exc
    stats = TrainingStats.from_dict(ckpt["stats"])
    model = MultiHeadPotential(config, stats=stats, dtype=ckpt["dtype"])
    try:
        result = model.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{source}: weights do not match the config: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: weights do not match the config (missing: {result.missing_keys[:5]}, "
            f"unexpected: {result.unexpected_keys[:5]})"
        )
    model.metadata = dict(ckpt.get("metadata", {}))
    if "cutoff" in ckpt and float(ckpt["cutoff"]) != model.cutoff:
        model.set_cutoff(float(ckpt["cutoff"]))  # saved after radius refinement
    if dtype is not None:
        from .model import resolve_dtype

        model.to(resolve_dtype(dtype))
    return model.to(device).eval()


def load_checkpoint(path: str | Path, dtype=None, device="cpu"):
    """Build a :class:`~ttcalc.model.MultiHeadPotential` from a checkpoint file."""
    return model_from_checkpoint(read_checkpoint(path), dtype=dtype, device=device, source=str(path))
