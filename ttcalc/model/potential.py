"""`MultiHeadPotential`: one shared representation θR, a main head θM and a prior head θP.

Energies are sums of per-atom head outputs; forces are −∂E/∂r and stresses (1/V) ∂E/∂ε by
autograd, so every head is a conservative potential. Parameter groups ("representation", "main",
"prior", "adaptable") make freezing for the training regimes and for test-time training one call.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ttcalc.model.batch import Batch
from ttcalc.model.compiled import BatchedForces
from ttcalc.model.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from ttcalc.model.graph import build_graph, edge_geometry
from ttcalc.model.heads import EnergyHead, PropertyHead, PropertyHeadConfig, segment_sum
from ttcalc.model.representation import Representation, RepresentationConfig, tensornet_features_dense

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"float64"`` (or a torch dtype) -> torch dtype, with a clear error."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use float32 or float64")
        return dtype
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use 'float32' or 'float64'") from None


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device, with a clear error where this torch build cannot use it."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
        raise ValueError(f"device={str(device)!r}, but this torch {torch.__version__} is {build}; install a CUDA "
                         f"build of torch (see the README's Set-up) or use device='cpu'")
    return dev


@dataclass
class ModelConfig:
    """Architecture of a :class:`MultiHeadPotential` (stored in every checkpoint)."""

    representation: RepresentationConfig = field(default_factory=RepresentationConfig)
    head_hidden: int = 32
    heads: tuple[str, ...] = ("main", "prior")
    #: parameter-name prefixes (relative to the model) that test-time training may update;
    #: empty means the representation's embedding and first interaction layer
    adaptable: tuple[str, ...] = ()
    #: downstream property heads (:class:`~ttcalc.model.heads.PropertyHeadConfig`), e.g. a HOMO-LUMO gap
    properties: tuple[PropertyHeadConfig, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["heads"] = list(self.heads)
        d["adaptable"] = list(self.adaptable)
        d["properties"] = [p.to_dict() for p in self.properties]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        d = dict(d)
        d["representation"] = RepresentationConfig(**d.get("representation", {}))
        d["heads"] = tuple(d.get("heads", ("main", "prior")))
        d["adaptable"] = tuple(d.get("adaptable", ()))
        d["properties"] = tuple(p if isinstance(p, PropertyHeadConfig) else PropertyHeadConfig(**p)
                                for p in d.get("properties", ()))
        return cls(**d)


@dataclass
class TrainingStats:
    """What the training set looked like: the reference for shift diagnostics, RR and TTT.

    ``prior_force_norm`` summarises per-atom |F| of the prior labels (mean, std, quantiles);
    ``spectrum`` is a :class:`ttcalc.diagnostics.spectral.TrainingSpectrum` as a dict; ``prior_loss`` is the
    in-distribution prior loss that test-time training must not undercut (it would overfit);
    ``q_residual`` the PCA of the training features (:class:`ttcalc.diagnostics.uncertainty.QResidual`
    as a dict) for Q-residual uncertainty.
    """

    elements: list[int] = field(default_factory=list)
    n_atoms: list[int] = field(default_factory=list)
    cutoff: float = 5.0
    prior_force_norm: dict = field(default_factory=dict)
    prior_frame_force_norm: dict = field(default_factory=dict)
    spectrum: dict | None = None
    prior_loss: float | None = None
    molecules: list[str] = field(default_factory=list)
    prior: str | None = None
    q_residual: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingStats":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def force_norm_summary(norms: np.ndarray) -> dict:
    """Mean, std and quantiles of a set of force norms (eV/Å), JSON-able."""
    norms = np.asarray(norms, dtype=float).ravel()
    q = np.quantile(norms, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    return {"mean": float(norms.mean()), "std": float(norms.std()), "n": int(norms.size),
            "quantiles": dict(zip(["0.01", "0.05", "0.25", "0.5", "0.75", "0.95", "0.99"], map(float, q)))}


class MultiHeadPotential(nn.Module):
    """Shared torchmd-net representation with several energy heads ("main", "prior", ...)."""

    def __init__(self, config: ModelConfig | None = None, stats: TrainingStats | None = None,
                 dtype: str | torch.dtype = "float32"):
        super().__init__()
        self.config = config or ModelConfig()
        torch_dtype = resolve_dtype(dtype)
        rep_cfg = self.config.representation
        self.representation = Representation(rep_cfg, dtype=torch_dtype)
        self.heads = nn.ModuleDict({
            name: EnergyHead(rep_cfg.hidden_channels, self.config.head_hidden, rep_cfg.max_z,
                             rep_cfg.activation, dtype=torch_dtype)
            for name in self.config.heads
        })
        self.property_heads = nn.ModuleDict()
        for prop in self.config.properties:
            self._build_property_head(prop, torch_dtype)
        self.stats = stats or TrainingStats(cutoff=rep_cfg.cutoff)
        self.to(torch_dtype)

    # --- basic properties -------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def cutoff(self) -> float:
        return self.representation.cutoff

    def set_cutoff(self, radius: float) -> None:
        self.representation.set_cutoff(radius)

    @property
    def uses_dense_kernel(self) -> bool:
        return self.config.representation.model == "tensornet"

    # --- property heads ---------------------------------------------------------------------------
    def _build_property_head(self, prop: PropertyHeadConfig, dtype: torch.dtype) -> PropertyHead:
        if prop.name in self.heads or prop.name in self.property_heads or prop.name in ("representation",
                                                                                      "adaptable", "properties"):
            raise ValueError(f"property head name {prop.name!r} is taken (energy heads: {list(self.heads)}, "
                             f"property heads: {list(self.property_heads)})")
        rep = self.config.representation
        head = PropertyHead(prop, rep.hidden_channels, rep.max_z, rep.activation, dtype=dtype)
        self.property_heads[prop.name] = head
        return head

    def add_property_head(self, prop: PropertyHeadConfig) -> PropertyHead:
        """Attach a new, randomly initialised property head (recorded in the config and checkpoints)."""
        head = self._build_property_head(prop, self.dtype).to(self.device)
        self.config = replace(self.config, properties=tuple(self.config.properties) + (prop,))
        return head

    def predict_properties(self, batch: Batch, names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """``{name: (B, d)}`` from the property heads (all of them by default), in each head's unit.

        Gradients flow to the parameters (training) but not to positions."""
        names = list(self.property_heads) if names is None else list(names)
        for n in names:
            if n not in self.property_heads:
                raise KeyError(f"model has no property head {n!r}; it has {list(self.property_heads)}")
        pos = batch.pos.detach()
        x = self.features(batch, pos)
        flat_pos = pos[batch.mask] if batch.dense else pos
        return {n: self.property_heads[n](x, batch.z, flat_pos, batch.batch, batch.n_structures) for n in names}

    # --- parameter groups -------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names of θR ("representation"), each head, and the TTT "adaptable" subset."""
        names = [n for n, _ in self.named_parameters()]
        groups = {"representation": [n for n in names if n.startswith("representation.")]}
        for head in self.heads:
            groups[head] = [n for n in names if n.startswith(f"heads.{head}.")]
        for head in self.property_heads:
            groups[head] = [n for n in names if n.startswith(f"property_heads.{head}.")]
        groups["properties"] = [n for n in names if n.startswith("property_heads.")]
        if self.config.adaptable:
            groups["adaptable"] = [n for n in names if n.startswith(tuple(self.config.adaptable))]
        else:
            groups["adaptable"] = ["representation." + n for n in self.representation.early_parameter_names()]
        return groups

    def parameters_of(self, *groups: str) -> list[nn.Parameter]:
        """Parameters of the named groups (unknown names raise ``KeyError`` listing the valid ones)."""
        all_groups = self.parameter_groups()
        params = dict(self.named_parameters())
        out, seen = [], set()
        for g in groups:
            if g not in all_groups:
                raise KeyError(f"unknown parameter group {g!r}; valid: {sorted(all_groups)}")
            for n in all_groups[g]:
                if n not in seen:
                    seen.add(n)
                    out.append(params[n])
        return out

    def set_trainable(self, *groups: str) -> None:
        """Make exactly the named groups trainable and freeze everything else."""
        keep = {id(p) for p in self.parameters_of(*groups)}
        for p in self.parameters():
            p.requires_grad_(id(p) in keep)

    def freeze(self, *groups: str) -> None:
        for p in self.parameters_of(*groups):
            p.requires_grad_(False)

    def unfreeze(self, *groups: str) -> None:
        for p in self.parameters_of(*groups):
            p.requires_grad_(True)

    # --- forward ---------------------------------------------------------------------------------
    def features(self, batch: Batch, pos: Tensor, strain: Tensor | None = None) -> Tensor:
        """Per-atom features (n, F) in the flat atom order of ``batch``."""
        if batch.dense:
            if self.uses_dense_kernel:
                x = tensornet_features_dense(self.representation.net, batch.z_dense, pos, batch.mask)
                return x[batch.mask]
            pos = pos[batch.mask]  # other representations run on the flat graph
            batch_graph = _dense_graph_of(batch)
            vec, w = edge_geometry(pos, batch_graph)
            return self.representation(batch.z, batch_graph, vec, w, batch.batch)
        cell = batch.cell
        if strain is not None:
            deform = torch.eye(3, dtype=pos.dtype, device=pos.device) + strain  # (B, 3, 3)
            pos = torch.einsum("ni,nij->nj", pos, deform[batch.batch])
            cell = torch.bmm(cell, deform)
        src = batch.graph.edge_index[0, : batch.graph.n_real]
        vec, w = edge_geometry(pos, batch.graph, cell[batch.batch[src]])
        return self.representation(batch.z, batch.graph, vec, w, batch.batch)

    def forward(self, batch: Batch, heads: Sequence[str] = ("main",), forces: bool = True,
                stress: bool = False, create_graph: bool = False) -> dict[str, dict[str, Tensor]]:
        """Predict with each named head: ``{"energy": (B,), "energies": (n,), "forces": (n, 3),
        "stress": (B, 3, 3)}`` in eV, eV/Å and eV/Å³ (ASE sign convention), and the per-atom
        representation the heads read, ``"features"`` (n, F), detached."""
        for h in heads:
            if h not in self.heads:
                raise KeyError(f"model has no head {h!r}; it has {list(self.heads)}")
        if stress and (batch.dense or batch.periodic is None or not bool(batch.periodic.all())):
            raise ValueError("stress needs periodic structures (3-D cells) in the flat layout")
        pos = batch.pos
        need_grad = forces or stress
        if need_grad and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        strain = None
        if stress:
            strain = torch.zeros((batch.n_structures, 3, 3), dtype=pos.dtype, device=pos.device,
                                 requires_grad=True)
        with torch.enable_grad() if need_grad else torch.no_grad():
            x = self.features(batch, pos, strain)
            out: dict[str, dict[str, Tensor]] = {}
            for k, h in enumerate(heads):
                e_atom = self.heads[h](x, batch.z)
                energy = segment_sum(e_atom, batch.batch, batch.n_structures)
                res = {"energy": energy, "energies": e_atom, "features": x.detach()}
                if need_grad:
                    inputs = [pos] + ([strain] if stress else [])
                    retain = create_graph or k < len(heads) - 1
                    grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph,
                                                retain_graph=retain)
                    if forces:
                        f = -grads[0]
                        res["forces"] = f[batch.mask] if batch.dense else f
                    if stress:
                        volume = torch.linalg.det(batch.cell).abs()
                        res["stress"] = grads[1] / volume[:, None, None]
                out[h] = res
        return out

    def batched_force_fn(self, numbers: np.ndarray, positions: Tensor, compile: bool = True,
                         head: str = "main"):
        """The force function of B replicas of one molecule for :func:`md_protocols.run_batched_md`
        (the compiled dense kernel, :class:`~ttcalc.model.compiled.BatchedForces`)."""
        return BatchedForces(self, numbers, positions, head=head, compile=compile)

    # --- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write one checkpoint file (atomic); see :mod:`ttcalc.model.checkpoint`."""
        return save_checkpoint(self, path, metadata)

    @classmethod
    def load(cls, path: str | Path, dtype: str | torch.dtype | None = None,
             device: str | torch.device = "cpu") -> "MultiHeadPotential":
        return load_model(path, dtype=dtype, device=device)


def _dense_graph_of(batch: Batch):
    sizes = batch.n_atoms.tolist()
    return build_graph(sizes, np.zeros((sum(sizes), 3)), 1.0, dense=True, device=batch.pos.device)


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def snapshot(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Detached copies of parameters (all, or the named ones), for exact restore."""
    params = dict(model.named_parameters())
    names = list(names) if names is not None else list(params)
    return {n: params[n].detach().clone() for n in names}


def restore(model: nn.Module, saved: dict[str, Tensor]) -> None:
    """Copy parameters saved by :func:`snapshot` back into ``model`` (bit-exact)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in saved.items():
            params[n].copy_(t)


def model_from_checkpoint(ckpt: dict, dtype=None, device="cpu", source: str = "checkpoint") -> MultiHeadPotential:
    """The model a validated checkpoint dict (:func:`~ttcalc.model.checkpoint.read_checkpoint`) describes."""
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
        model.to(resolve_dtype(dtype))
    return model.to(device).eval()


def load_model(path: str | Path, dtype=None, device="cpu") -> MultiHeadPotential:
    """Build a :class:`MultiHeadPotential` from a checkpoint file (``ttcalc.load_model``)."""
    return model_from_checkpoint(read_checkpoint(path), dtype=dtype, device=device, source=str(path))
