"""The training step's forward pass: energies and forces F = −∂E/∂r with a graph to the parameters.

Training on forces needs the parameter gradient of a loss that already contains ∂E/∂r, i.e. a
double backward. AOTAutograd refuses ``create_graph=True`` inside a compiled region, so, as
nequip ≥ 0.7 does, the force computation is first *traced* with ``make_fx``: the trace holds the
forward and the position-backward as plain aten ops, one graph whose outputs are (E, F). That
graph is then compiled by inductor, and the loss's parameter gradient is an ordinary first-order
backward through it. Shapes are static per (B, N) on the dense molecular kernel, so a trace and a
compile are made once per batch shape and reused.

Every parameter and buffer is a graph *input* (never a baked-in constant), so frozen weights that
change later (a later stage, TTT, ``load_state_dict``) are read at call time; the cutoff is a
Python float inside the trace and is part of the cache key. Periodic or large (flat-layout)
batches fall back to the eager model.
"""
from __future__ import annotations

import logging
import time
from typing import Sequence

import torch
from torch import Tensor, nn

from ttcalc.model.batch import Batch
from ttcalc.model.compiled import quiet_inductor
from ttcalc.model.potential import MultiHeadPotential
from ttcalc.model.representation import tensornet_features_dense

log = logging.getLogger(__name__)


class _DenseEnergies(nn.Module):
    """Per-atom energies of each named head on the dense kernel: (B, N) per head."""

    def __init__(self, model: MultiHeadPotential, heads: Sequence[str]):
        super().__init__()
        self.model, self.heads = model, tuple(heads)

    def forward(self, pos: Tensor, z: Tensor, mask: Tensor) -> list[Tensor]:
        x = tensornet_features_dense(self.model.representation.net, z, pos, mask, for_inductor=True)
        return [self.model.heads[h](x, z) * mask for h in self.heads]


class ForceStep:
    """``step(batch)`` -> ``{head: {"energy": (B,), "forces": (n, 3)}}``, differentiable in the
    parameters; the same numbers as ``model(batch, heads, create_graph=True)``.

    ``compile=False`` is the eager model (the reference the compiled path is tested against).
    """

    def __init__(self, model: MultiHeadPotential, heads: Sequence[str], compile: bool = True):
        self.model, self.heads, self.compile = model, tuple(heads), bool(compile)
        self._module = _DenseEnergies(model, self.heads)
        self._graphs: dict[tuple, object] = {}
        self.compile_seconds = 0.0

    def _key(self, batch: Batch) -> tuple:
        return tuple(batch.pos.shape), batch.pos.dtype, str(batch.pos.device), float(self.model.cutoff)

    def _state(self) -> dict[str, Tensor]:
        named = dict(self._module.named_parameters())
        named.update(dict(self._module.named_buffers()))
        return named

    def _energies_and_forces(self, state: dict[str, Tensor], pos: Tensor, z: Tensor, mask: Tensor):
        pos = pos if pos.requires_grad else pos.requires_grad_(True)
        per_atom = torch.func.functional_call(self._module, state, (pos, z, mask))
        out = []
        for k, e_atom in enumerate(per_atom):
            energy = e_atom.sum(-1)
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=True,
                                          retain_graph=k < len(per_atom) - 1)
            out += [energy, -grad]
        return out

    def _graph(self, batch: Batch):
        key = self._key(batch)
        if key not in self._graphs:
            from torch.fx.experimental.proxy_tensor import make_fx

            t0 = time.perf_counter()
            state = {k: v.detach() for k, v in self._state().items()}
            def fn(state, pos, z, mask):  # make_fx traces a plain function, not a bound method
                return self._energies_and_forces(state, pos, z, mask)

            traced = make_fx(fn)(state, batch.pos.detach().clone(), batch.z_dense, batch.mask)
            self._graphs[key] = torch.compile(traced, dynamic=False)
            log.info("traced the force graph for batch shape %s in %.1f s", key[0], time.perf_counter() - t0)
        return self._graphs[key]

    def __call__(self, batch: Batch) -> dict[str, dict[str, Tensor]]:
        if not (self.compile and batch.dense and self.model.uses_dense_kernel):
            return self.model(batch, heads=self.heads, create_graph=True)
        new = self._key(batch) not in self._graphs
        t0 = time.perf_counter()
        graph = self._graph(batch)
        with quiet_inductor():
            flat = graph(self._state(), batch.pos.detach(), batch.z_dense, batch.mask)
        if new:
            self.compile_seconds += time.perf_counter() - t0
        return {h: {"energy": flat[2 * k], "forces": flat[2 * k + 1][batch.mask]}
                for k, h in enumerate(self.heads)}
