"""The checkpoint file format of :class:`~ttcalc.model.potential.MultiHeadPotential` (writing, reading,
validating); the model is built from it by :func:`ttcalc.model.potential.load_model`.

A checkpoint is a ``torch.save`` dict of plain types and tensors (loadable with
``weights_only=True``):

=================  ==========================================================================
``format``         ``"ttcalc-checkpoint"``
``version``        integer format version (:data:`FORMAT_VERSION`)
``config``         :class:`~ttcalc.model.potential.ModelConfig` as a dict
``state_dict``     weights and buffers (element references and head scales included)
``stats``          :class:`~ttcalc.model.potential.TrainingStats` as a dict (elements, sizes, cutoff, prior
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

from md_protocols.files import atomic_write

FORMAT = "ttcalc-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "version", "config", "state_dict", "stats", "units", "dtype")
UNITS = {"energy": "eV", "length": "Angstrom"}


class CheckpointError(ValueError):
    """A checkpoint file is missing, malformed, or incompatible with this version of ttcalc."""


def atomic_torch_save(obj, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (:func:`md_protocols.files.atomic_write`)."""
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
