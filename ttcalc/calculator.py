"""`TTTCalculator`: an ASE calculator around a :class:`~ttcalc.model.potential.MultiHeadPotential`.

ASE contract: one pass computes energy, free energy, forces, per-atom energies and (for 3-D periodic
cells) stress; ``implemented_properties`` is set per instance; ``reset()`` is called whenever the
weights or the cutoff change; parameters are JSON-serialisable; outputs are float64 NumPy.

Adaptation (test-time training, fine-tuning on labels, radius refinement) lives in
:mod:`ttcalc.adapt`; this module only decides *when* it runs (once per new system).
"""
from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from scipy.spatial.distance import pdist
from ase import Atoms
from ase.calculators.calculator import Calculator, InputError, PropertyNotImplementedError, all_changes

from md_protocols.choices import check_choice
from ttcalc.adapt import (AdaptationReport, AdaptationState, FinetuneLabelsConfig, TTTConfig, adapt, finetune,
                          refine_cutoff)
from ttcalc.diagnostics.uncertainty import QResidual
from ttcalc.model.batch import collate
from ttcalc.model.compiled import FastEvaluator
from ttcalc.model.graph import DENSE_MAX_ATOMS
from ttcalc.model.potential import MultiHeadPotential, load_model, resolve_device, resolve_dtype, restore, snapshot
from ttcalc.model.pretrained import PRETRAINED, load_pretrained
from ttcalc.priors import make_prior
from ttcalc.priors.base import Prior

log = logging.getLogger(__name__)

TTTMode = Literal["off", "auto", "always"]
UnseenElements = Literal["warn", "raise"]
LearnerMode = Literal["finetune", "adapt"]


def resolve_model(model, dtype, device) -> tuple[MultiHeadPotential, str]:
    """A model object and a JSON-able description from a path, pretrained name, model or None."""
    if model is None:
        model = "md17-abu"
    if isinstance(model, MultiHeadPotential):
        # a private copy: adaptation changes weights, the caller's model must not change under them
        return copy.deepcopy(model).to(device=device, dtype=dtype).eval(), "<MultiHeadPotential>"
    if isinstance(model, (str, Path)):
        if str(model) in PRETRAINED:
            return load_pretrained(str(model), dtype=dtype, device=device), str(model)
        return load_model(model, dtype=dtype, device=device), str(Path(model).resolve())
    raise TypeError(f"model must be a checkpoint path, a pretrained name or a MultiHeadPotential, "
                    f"not {type(model).__name__}")


class TTTCalculator(Calculator):
    """ASE calculator for a multi-head MLIP, with optional test-time adaptation.

    Parameters
    ----------
    model: checkpoint path, pretrained name (default ``"md17-abu"``) or a MultiHeadPotential.
    prior: a :class:`~ttcalc.priors.Prior`, a prior name (``"xtb"``, ``"tblite"``, ``"emt"``, ...)
        or None. Needed for test-time training and for the prior-disagreement signal.
    device, dtype: where and in which precision the model runs (``"float32"``/``"float64"``).
    head: which head gives the energy (``"main"``; ``"prior"`` evaluates the prior head).
    compile: use the compiled dense kernel for molecules (falls back to eager when it can't).
    unseen_elements: ``"warn"`` or ``"raise"`` for elements absent from the training set.
    min_distance: interatomic distance (Å) below which a structure is rejected as overlapping.
    ttt: ``"off"``, ``"auto"`` (adapt once per new system on its first calculation) or ``"always"``
        (adapt again whenever the system changes, even to one seen before).
    ttt_config: a :class:`~ttcalc.adapt.TTTConfig` (or dict) for test-time training.
    finetune_config: a :class:`~ttcalc.adapt.FinetuneLabelsConfig` (or dict) for
        :meth:`finetune` on labelled frames.
    radius_refinement: choose the cutoff per new system by spectral matching (paper sec. 4; the
        Laplacian eigenvalue distributions are compared, see :mod:`ttcalc.diagnostics.spectral`).
    disagreement_every: evaluate the prior every k-th calculation to report the main-vs-prior
        force disagreement (0 disables it; 1 = every call).
    q_residual: report Q-residual uncertainty (Wong & Yang 2026; :mod:`ttcalc.diagnostics.uncertainty`)
        from the features of the same forward pass, when the model stores its training PCA:
        ``results["q_residual"]`` (the largest atom Q), ``results["q_residual_limit"]`` (the
        training structures' α-quantile), ``results["q_residual_atoms"]`` and
        ``results["q_residual_atom_limit"]`` (Jackson–Mudholkar); the first two also go to ``atoms.info``.

    A model with property heads (:class:`~ttcalc.model.heads.PropertyHead`) adds one property per head:
    ``calc.get_property("gap", atoms)``; asking for any of them also fills ``results["properties"]``.
    """

    def __init__(self, model=None, prior: Prior | str | None = None, device: str = "cpu",
                 dtype: str = "float32", head: str = "main", compile: bool = True,
                 unseen_elements: UnseenElements = "warn", min_distance: float = 0.5,
                 ttt: TTTMode = "off", ttt_config=None, radius_refinement: bool = False,
                 radii: Sequence[float] | None = None, disagreement_every: int = 1, finetune_config=None,
                 q_residual: bool = True, **kwargs):
        check_choice("ttt", ttt, TTTMode)
        check_choice("unseen_elements", unseen_elements, UnseenElements)
        self.device = resolve_device(device)
        self.torch_dtype = resolve_dtype(dtype)
        self.model, model_name = resolve_model(model, self.torch_dtype, self.device)
        if head not in self.model.heads:
            raise ValueError(f"model has no head {head!r}; heads: {list(self.model.heads)}")
        self.model.requires_grad_(False)
        self.prior = make_prior(prior)
        if ttt != "off" and self.prior is None:
            raise ValueError("test-time training needs a prior (e.g. prior='xtb')")
        self.ttt_config = TTTConfig.coerce(ttt_config)
        self.finetune_config = FinetuneLabelsConfig.coerce(finetune_config)
        self.training_cutoff = float(self.model.stats.cutoff or self.model.cutoff)
        super().__init__(
            model=model_name, prior=None if self.prior is None else self.prior.fingerprint(),
            device=str(self.device), dtype=str(dtype), head=head, compile=bool(compile),
            unseen_elements=unseen_elements, min_distance=float(min_distance), ttt=ttt,
            radius_refinement=bool(radius_refinement),
            radii=None if radii is None else [float(r) for r in radii],
            disagreement_every=int(disagreement_every), q_residual=bool(q_residual), **kwargs,
        )
        stored = self.model.stats.q_residual
        self.q_model = QResidual.from_dict(stored) if (q_residual and stored) else None
        self.implemented_properties = ["energy", "free_energy", "forces", "energies", "stress",
                                       *self.model.property_heads]
        self._evaluators: dict[tuple, FastEvaluator] = {}
        self._system: str | None = None  # key of the system the current weights/cutoff are for
        self._calls = 0
        self.adaptation = AdaptationState(self.model)
        self.last_adaptation = None
        self.last_radius_scan: dict[float, float] | None = None

    # --- public state -----------------------------------------------------------------------------
    @property
    def cutoff(self) -> float:
        """The radius in use (changed by radius refinement)."""
        return self.model.cutoff

    def set_cutoff(self, radius: float) -> None:
        self.model.set_cutoff(radius)
        self.reset()

    # --- ASE entry point ---------------------------------------------------------------------------
    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's check_state, with a fast path for the MD case (only positions moved).

        ASE's version runs ``np.allclose`` on every array on each call, a measurable part of a
        compiled MD step; exact equality gives the same answer for the positions-only case.
        """
        old = self.atoms
        if old is not None and len(old) == len(atoms):
            keys = set(all_changes) - set(self.ignored_changes) - {"positions", "cell", "pbc"}
            shared = keys & set(old.arrays)
            if (np.array_equal(old.cell.array, atoms.cell.array) and np.array_equal(old.pbc, atoms.pbc)
                    and shared == keys & set(atoms.arrays)
                    and all(np.array_equal(old.arrays[k], atoms.arrays[k]) for k in shared)):
                return [] if np.array_equal(old.positions, atoms.positions) else ["positions"]
        return super().check_state(atoms, tol)


    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes):
        user_atoms = atoms  # ASE keeps a copy in self.atoms; info must reach the caller's object
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        self._validate(atoms)
        if "stress" in properties and not (atoms.pbc.all() and atoms.cell.rank == 3):
            raise PropertyNotImplementedError("stress needs a 3-D periodic cell")
        self._prepare_system(atoms)
        self.results = self._evaluate(atoms, stress="stress" in properties)
        features = self.results.pop("features")
        if self.q_model is not None:
            self.results.update(self._q_residual(features))
        if any(p in self.model.property_heads for p in properties):
            self.results.update(self._properties(atoms))
        self._calls += 1
        every = self.parameters.disagreement_every
        if self.prior is not None and every and (self._calls - 1) % every == 0:
            _, f_prior = self.prior.energy_forces(atoms)
            diff = np.linalg.norm(self.results["forces"] - f_prior, axis=1)
            self.results["prior_force_disagreement"] = float(diff.mean())
        if self.last_adaptation is not None:
            self.results["ttt_summary"] = self.last_adaptation.summary()
        for target in (atoms, user_atoms):
            for key in ("prior_force_disagreement", "ttt_summary", "q_residual", "q_residual_limit"):
                if target is not None and key in self.results:
                    target.info[key] = self.results[key]

    # --- evaluation --------------------------------------------------------------------------------
    def _evaluate(self, atoms: Atoms, stress: bool = False) -> dict:
        head = self.parameters.head
        if self._dense_ok(atoms) and not stress:
            ev = self._evaluator(atoms.numbers)
            pos = torch.as_tensor(atoms.positions, dtype=self.torch_dtype, device=self.device)[None]
            energy, e_atom, forces = ev(pos)
            e = float(energy[0])
            return {"energy": e, "free_energy": e,
                    "forces": forces[0].to(torch.float64).cpu().numpy(),
                    "energies": e_atom[0].to(torch.float64).cpu().numpy(), "features": ev.features[0]}
        batch = collate([atoms], self.model.cutoff, dtype=self.torch_dtype, device=self.device)
        out = self.model(batch, heads=(head,), stress=stress)[head]
        e = float(out["energy"][0].detach())
        res = {"energy": e, "free_energy": e,
               "forces": out["forces"].detach().to(torch.float64).cpu().numpy(),
               "energies": out["energies"].detach().to(torch.float64).cpu().numpy(), "features": out["features"]}
        if stress:
            from ase.stress import full_3x3_to_voigt_6_stress

            res["stress"] = full_3x3_to_voigt_6_stress(out["stress"][0].detach().double().cpu().numpy())
        return res

    def _q_residual(self, features: torch.Tensor) -> dict:
        q_atoms = self.q_model.atom_q(features.to(torch.float64).cpu().numpy())
        return {"q_residual": float(q_atoms.max()), "q_residual_limit": self.q_model.structure_limit,
                "q_residual_atoms": q_atoms, "q_residual_atom_limit": self.q_model.atom_limit}

    def _properties(self, atoms: Atoms) -> dict:
        """Every property head's prediction: ``results[name]`` (a float, or an array for d > 1)
        and all of them together in ``results["properties"]``."""
        batch = collate([atoms], self.model.cutoff, dtype=self.torch_dtype, device=self.device)
        with torch.no_grad():
            pred = self.model.predict_properties(batch)
        values = {}
        for name, v in pred.items():
            v = v[0].double().cpu().numpy()
            values[name] = float(v[0]) if v.size == 1 else v
        return {**values, "properties": dict(values)}

    def _dense_ok(self, atoms: Atoms) -> bool:
        return (self.model.uses_dense_kernel and not atoms.pbc.any()
                and len(atoms) <= DENSE_MAX_ATOMS)

    def _evaluator(self, numbers: np.ndarray) -> FastEvaluator:
        key = (tuple(int(z) for z in numbers), self.parameters.head)
        ev = self._evaluators.get(key)
        if ev is None:
            ev = FastEvaluator(self.model, numbers, head=self.parameters.head,
                               compile=self.parameters.compile)
            pos = torch.as_tensor(self.atoms.positions, dtype=self.torch_dtype, device=self.device)[None]
            ev.check(pos)
            self._evaluators[key] = ev
        return ev

    # --- input validation ----------------------------------------------------------------------------
    def _validate(self, atoms: Atoms) -> None:
        if len(atoms) == 0:
            raise InputError("TTTCalculator: the Atoms object is empty")
        pos = atoms.positions
        if not np.all(np.isfinite(pos)):
            raise InputError("TTTCalculator: positions contain NaN or infinite values")
        if atoms.pbc.any():
            if atoms.cell.rank == 0 or abs(atoms.cell.volume) < 1e-12 and atoms.pbc.all():
                raise InputError("TTTCalculator: periodic boundary conditions with a zero cell")
            for k in np.nonzero(atoms.pbc)[0]:
                if np.linalg.norm(atoms.cell[k]) < 1e-12:
                    raise InputError(f"TTTCalculator: pbc along axis {k} but the cell vector is zero")
        if len(atoms) > 1:
            if atoms.pbc.any() or len(atoms) > 2000:
                from ase.neighborlist import neighbor_list

                d = neighbor_list("d", atoms, self.parameters.min_distance)
                dmin = d.min() if len(d) else np.inf
            else:
                dmin = pdist(pos).min()
            if dmin < self.parameters.min_distance:
                raise InputError(
                    f"TTTCalculator: atoms overlap (closest pair {dmin:.3f} Å < min_distance="
                    f"{self.parameters.min_distance} Å)"
                )
        seen = set(self.model.stats.elements or [])
        if seen:
            unseen = sorted(set(int(z) for z in atoms.numbers) - seen)
            if unseen:
                from ase.data import chemical_symbols

                msg = (f"TTTCalculator: elements {[chemical_symbols[z] for z in unseen]} were not in "
                       f"the training set ({[chemical_symbols[z] for z in sorted(seen)]}); "
                       f"predictions for them are extrapolations")
                if self.parameters.unseen_elements == "raise":
                    raise InputError(msg)
                warnings.warn(msg, stacklevel=3)

    # --- adaptation hooks ----------------------------------------------------------------------------
    def _prepare_system(self, atoms: Atoms) -> None:
        """Adapt once per new system (radius refinement, then TTT), never mid-trajectory.

        A new system is a change of the atomic numbers (in order) or of the periodicity since the
        last preparation; moving atoms is not, even when a bond stretches past the covalent-radius
        criterion of :func:`~ttcalc.data.systems.system_key` (C–H bonds cross it at 300–500 K), which would
        otherwise re-adapt and change the potential in the middle of an MD run.
        """
        p = self.parameters
        if p.ttt == "off" and not p.radius_refinement:
            return
        identity = (tuple(int(z) for z in atoms.numbers), tuple(bool(b) for b in atoms.pbc))
        if identity == self._system:
            return
        current = self.atoms  # refine_radius/adapt call reset(), which drops ASE's copy of the atoms
        if p.radius_refinement:
            self.refine_radius(atoms)
        if p.ttt != "off":
            self.adapt(atoms, force=(p.ttt == "always"))
        self.atoms = current
        self._system = identity  # only once preparation succeeded: a failure is retried next call

    def refine_radius(self, atoms: Atoms, radii: Sequence[float] | None = None) -> float:
        """Choose and apply the cutoff whose Laplacian spectrum best matches training (sec. 4;
        :func:`ttcalc.adapt.refine_cutoff`)."""
        radius, self.last_radius_scan = refine_cutoff(self.model, atoms,
                                                      self.parameters.radii if radii is None else radii)
        self.reset()
        return radius

    def adapt(self, atoms_or_frames, force: bool = False, **overrides) -> AdaptationReport:
        """Test-time training on the prior loss (Kreiman & Krishnapriyan 2025, sec. 5;
        :func:`ttcalc.adapt.adapt`), with ``ttt_config`` updated by ``overrides``."""
        if self.prior is None:
            raise ValueError("test-time training needs a prior")
        cfg = self.ttt_config.updated(**overrides) if overrides else self.ttt_config
        return self._adapted(adapt(self.adaptation, self.prior, atoms_or_frames, cfg, force=force))

    def finetune(self, frames, **overrides) -> AdaptationReport:
        """Fine-tune on labelled frames of one system (reference energies and forces in each
        frame's calculator): θM and, by default, θR on the main loss, with a held-out part for early
        stopping; combines with :meth:`adapt` in either order (the report's ``ran`` says what ran).
        Settings: :class:`~ttcalc.adapt.FinetuneLabelsConfig` (``finetune_config``) and
        ``overrides``; :meth:`reset_adaptation` restores the shipped weights exactly."""
        cfg = self.finetune_config.updated(**overrides) if overrides else self.finetune_config
        return self._adapted(finetune(self.adaptation, frames, cfg))

    def _adapted(self, report: AdaptationReport) -> AdaptationReport:
        self.last_adaptation = report
        self.reset()  # the weights changed
        return report

    def reset_adaptation(self) -> None:
        """Restore the pre-TTT weights and the training cutoff exactly."""
        self.adaptation.restore()
        self.model.set_cutoff(self.training_cutoff)
        self.last_adaptation = None
        self._system = None
        self.reset()


class MDLearner:
    """A :class:`md_protocols.online.Learner` for learning during MD with a :class:`TTTCalculator`
    (Wong & Yang 2026): every update fits all frames given so far, ``mode="finetune"`` on their
    reference labels (:meth:`TTTCalculator.finetune`, continuing from the current weights) or
    ``mode="adapt"`` by test-time training on the calculator's prior (:meth:`TTTCalculator.adapt`,
    label-free). ``overrides`` go to every call; Q-residuals are the uncertainty."""

    def __init__(self, calc: TTTCalculator, mode: LearnerMode = "finetune", **overrides):
        check_choice("mode", mode, LearnerMode)
        if mode == "adapt" and calc.prior is None:
            raise ValueError("mode='adapt' (label-free TTT) needs a calculator with a prior")
        self.calc, self.mode, self.overrides = calc, mode, overrides
        self.frames: list[Atoms] = []

    def update(self, frames: list[Atoms]) -> dict:
        self.frames = self.frames + list(frames)
        if self.mode == "finetune":
            report = self.calc.finetune(self.frames, **self.overrides)
        else:
            report = self.calc.adapt(self.frames, force=True, **self.overrides)
        return report.summary()

    def get_state(self) -> dict:
        a = self.calc.adaptation
        return {"weights": snapshot(self.calc.model, a.names), "frames": list(self.frames),
                "adaptation": copy.deepcopy((a.cache, a.reports, a.ran, a.current)),
                "last": self.calc.last_adaptation}

    def set_state(self, state: dict) -> None:
        a = self.calc.adaptation
        restore(self.calc.model, state["weights"])
        self.frames = list(state["frames"])
        a.cache, a.reports, a.ran, a.current = copy.deepcopy(state["adaptation"])
        self.calc.last_adaptation = state["last"]
        self.calc.reset()

    def uncertainty(self, atoms: Atoms) -> tuple[float, float]:
        results = self.calc.results
        if "q_residual" not in results:
            raise ValueError("the calculator reports no Q-residual (a model without a stored PCA, or q_residual=False)")
        return float(results["q_residual"]), float(results["q_residual_limit"])
