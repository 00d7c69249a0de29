"""The fast inference path: a compiled dense-graph kernel per molecule.

For a fixed molecule (atomic numbers and atom count) the dense TensorNet kernel has static shapes,
so ``torch.compile`` (inductor, C++ on CPU) fuses it once and every MD step reuses it. Measured on
``benchmarks/md_speed.py``, it is several times faster than torchmd-net's eager forward+backward.
What it relies on and how it stays correct:

* weights are read at call time (parameters are graph inputs, not constants), so test-time training
  never leaves stale compiled weights;
* the cutoff is a Python attribute that dynamo guards on: radius refinement triggers one recompile;
* at construction the compiled result is checked against the eager model (relative force error
  ≤ ``tolerance``); on a mismatch or a compile failure the evaluator falls back to eager.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
import types
import warnings

import numpy as np
import torch
from ase import Atoms
from torch import Tensor

from ttcalc.model.batch import collate

from ttcalc.model.representation import tensornet_features_dense

log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_inductor():
    """Hide inductor's own FutureWarnings while it lowers a graph (nothing a user can act on);
    scoped, so the caller's warning filters are unchanged afterwards."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\._inductor")
        yield


class FastEvaluator:
    """Energy, per-atom energies and forces of B replicas of one molecule, (B, N, 3) positions.

    ``compile=False`` runs the same dense kernel eagerly (still faster than the sparse path).
    ``cpp_wrapper=True`` (default) compiles with inductor's C++ wrapper: the compiled graph launches
    its kernels from C++ instead of Python, which saves a fixed part of every call (measured in
    ``benchmarks/md_speed.py``). Results are unchanged; ``cpp_wrapper=False`` gives the Python wrapper.
    ``features`` holds the per-atom representation (B, N, F) of the last call, an output of the same
    graph (what Q-residual uncertainty reads).
    """

    def __init__(self, model, numbers: np.ndarray, head: str = "main", replicas: int = 1,
                 compile: bool = True, tolerance: float | None = None, cpp_wrapper: bool = True):
        if not model.uses_dense_kernel:
            raise ValueError("the fast path needs the TensorNet representation")
        self.model = model
        self.head = head
        self.numbers = np.asarray(numbers).copy()
        self.replicas = int(replicas)
        device = model.device
        self._z = torch.as_tensor(self.numbers, dtype=torch.long, device=device).expand(self.replicas, -1).contiguous()
        self._mask = torch.ones_like(self._z, dtype=torch.bool)
        self.cpp_wrapper = bool(cpp_wrapper)
        self.n_compiles = 0
        self.compile_seconds = 0.0
        self.tolerance = tolerance if tolerance is not None else (1e-4 if model.dtype == torch.float32 else 1e-9)
        self.compiled = False
        self.features: Tensor | None = None
        self._fn = self._per_atom_energy
        if compile:
            self._fn = torch.compile(self._own_code(), backend=self._backend, dynamic=False)
            self.compiled = True

    # the counting backend delegates to inductor; it runs once per (re)compilation of the graph
    def _backend(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.n_compiles += 1
        with quiet_inductor():  # once per lowering
            patches = {"cpp_wrapper": True} if self.cpp_wrapper else None
            return compile_fx(gm, example_inputs, config_patches=patches)

    def _own_code(self):
        """``_per_atom_energy`` bound to this evaluator with a private code object.

        Dynamo caches compiled graphs per code object, with a limit (8) on entries; evaluators
        sharing the method's code would, from the 9th system in one process, silently run eager.
        """
        fn = FastEvaluator._per_atom_energy
        private = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__)
        return types.MethodType(private, self)

    def _per_atom_energy(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        x = tensornet_features_dense(self.model.representation.net, self._z, pos, self._mask, for_inductor=True)
        return self.model.heads[self.head](x, self._z), x

    def __call__(self, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(energy (B,), per-atom energies (B, N), forces (B, N, 3)) for positions (B, N, 3)."""
        pos = positions.detach().requires_grad_(True)
        t0 = time.perf_counter()
        n_before = self.n_compiles
        with torch.enable_grad(), quiet_inductor():  # the backward graph compiles lazily here
            e_atom, features = self._fn(pos)
            energy = e_atom.sum(-1)
            (grad,) = torch.autograd.grad(energy.sum(), pos)
        if self.n_compiles != n_before:
            self.compile_seconds += time.perf_counter() - t0
            log.info("compiled the dense kernel for %d atoms x %d replicas in %.1f s",
                     pos.shape[1], pos.shape[0], time.perf_counter() - t0)
        self.features = features.detach()
        return energy.detach(), e_atom.detach(), -grad

    def check(self, positions: Tensor) -> float:
        """Relative force error of this path against the eager model; falls back on failure."""
        frames = [Atoms(numbers=self.numbers, positions=p) for p in positions.detach().cpu().double().numpy()]
        batch = collate(frames, self.model.cutoff, dtype=self.model.dtype, device=self.model.device)
        ref = {k: v.detach() for k, v in self.model(batch, heads=(self.head,))[self.head].items()}
        try:
            energy, _, forces = self(positions)
        except Exception as exc:  # compile errors surface here: fall back, never crash MD
            log.warning("compiled path failed (%s); using the eager dense kernel", exc)
            self._fn, self.compiled = self._per_atom_energy, False
            energy, _, forces = self(positions)
        f_ref = ref["forces"].reshape(forces.shape)
        err = float((forces - f_ref).abs().max() / f_ref.abs().max().clamp_min(1e-12))
        e_err = float((energy - ref["energy"]).abs().max() / ref["energy"].abs().max().clamp_min(1.0))
        if err > self.tolerance or e_err > self.tolerance:
            log.warning("fast path disagrees with eager (force rel. err %.2e, energy %.2e); "
                        "falling back to eager", err, e_err)
            self._fn, self.compiled = self._per_atom_energy, False
        return err


class BatchedForces:
    """The force function of B replicas for :func:`md_protocols.run_batched_md`: float64 positions
    (B, N, 3) -> float64 (energy (B,), forces (B, N, 3)), evaluated by a :class:`FastEvaluator` on a
    frozen private copy of the model (the caller's model keeps its weights and ``requires_grad``)."""

    def __init__(self, model, numbers: np.ndarray, positions: Tensor, head: str = "main", compile: bool = True):
        # weight gradients are never needed: without them the backward is only d/dr
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.evaluator = FastEvaluator(self.model, numbers, head=head, replicas=positions.shape[0], compile=compile)
        if compile:
            self.evaluator.check(positions.to(self.model.dtype))  # the correctness guard (falls back to eager)

    @property
    def compiled(self) -> bool:
        return self.evaluator.compiled

    def __call__(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        energy, _, forces = self.evaluator(positions.to(self.model.dtype))
        return energy.to(torch.float64), forces.to(torch.float64)
