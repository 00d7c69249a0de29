"""sGDML prior: a symmetrized gradient-domain kernel force field fitted to a few labelled frames.

sGDML: Chmiela et al., Nat. Commun. 9, 3887 (2018); the ``sgdml`` package (1.0.3):
Chmiela et al., Comput. Phys. Commun. 240, 38 (2019). The force field is
F(x) = Σ_i Σ_q α_i · Hess_x k(x, P_q x_i) with a Matérn-5/2 kernel k on inverse-distance
descriptors, symmetrized over the molecule's permutations P_q; the energy is its integral plus a
constant fitted to the training energies.

Training follows sGDML's protocol: fit with each kernel length scale σ of a small grid, pick the σ
with the lowest force MAE on held-out validation frames taken from the *given* frames, never from
a test set. The model is kept in sgdml's default units (kcal/mol, Å; a saved ``.npz`` is a valid
sgdml model) and converted to eV and eV/Å at the boundary with ``KCAL_MOL_TO_EV``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms

from ttcalc.paths import cache_dir
from ttcalc.priors.base import Prior, PriorError
from ttcalc.priors.sgdml_compat import (SGDML_ENERGY_UNIT, SGDML_LENGTH_UNIT, gdml_trainer, import_sgdml,
                                        make_dataset)
from ttcalc.priors.threads import NativeThreadLimit
from ttcalc.units import KCAL_MOL_TO_EV

logger = logging.getLogger(__name__)

#: kernel length scales tried by default (sgdml's CLI default is 10:10:90; a geometric grid covers
#: the same range with 4 fits instead of 9)
DEFAULT_SIGMA_GRID: tuple[int, ...] = (10, 20, 40, 80)
#: bump when the fitting procedure changes, so cached models are not reused
_CACHE_FORMAT = "ttcalc-sgdml-1"
#: energy units a model may use, in eV
_ENERGY_UNITS_EV = {"kcal/mol": KCAL_MOL_TO_EV, "eV": 1.0}
#: the parts of an sgdml model needed to predict (plus provenance); all plain (non-object) arrays
_MODEL_KEYS = (
    "type", "code_version", "dataset_name", "dataset_theory", "solver_name", "z", "idxs_train",
    "md5_train", "idxs_valid", "md5_valid", "R_desc", "R_d_desc_alpha", "c", "std", "sig", "lam",
    "alphas_F", "alphas_E", "perms", "tril_perms_lin", "use_E", "lattice", "r_unit", "e_unit",
)  # fmt: skip
_SEARCH_PREFIX = "ttcalc_"


@dataclass(frozen=True)
class SigmaSearch:
    """Outcome of the length-scale search: validation errors per σ (eV/Å and eV)."""

    sigmas: tuple[float, ...]
    valid_force_mae: tuple[float, ...]
    valid_energy_mae: tuple[float, ...]
    n_train: int
    n_valid: int
    fit_seconds: float

    @property
    def best_sigma(self) -> float:
        """The σ with the lowest validation force MAE (sGDML's selection criterion)."""
        return self.sigmas[int(np.argmin(self.valid_force_mae))]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            f"{_SEARCH_PREFIX}{name}": np.asarray(getattr(self, name))
            for name in ("sigmas", "valid_force_mae", "valid_energy_mae", "n_train", "n_valid", "fit_seconds")
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "SigmaSearch | None":
        if f"{_SEARCH_PREFIX}sigmas" not in arrays:
            return None
        get = lambda name: arrays[f"{_SEARCH_PREFIX}{name}"]  # noqa: E731
        return cls(
            sigmas=tuple(get("sigmas").tolist()),
            valid_force_mae=tuple(get("valid_force_mae").tolist()),
            valid_energy_mae=tuple(get("valid_energy_mae").tolist()),
            n_train=int(get("n_train")),
            n_valid=int(get("n_valid")),
            fit_seconds=float(get("fit_seconds")),
        )


class SGDMLPrior(Prior):
    """Energies (eV) and forces (eV/Å) of a trained sGDML model.

    sGDML descriptors are tied to the atom order of the training data: :attr:`numbers` holds the
    atomic numbers in training order, and a structure whose atomic numbers differ in order or count
    raises :class:`PriorError` that states the expected order.
    """

    name = "sgdml"

    def __init__(
        self, model: Mapping[str, np.ndarray], search: SigmaSearch | None = None, num_threads: int | None = 1
    ) -> None:
        required = ("type", "z", "R_desc", "R_d_desc_alpha", "c", "sig", "perms", "tril_perms_lin")
        missing = [k for k in required if k not in model]
        if missing:
            raise ValueError(f"not an sgdml model: missing {missing}")
        self._model = {k: np.asarray(model[k]) for k in _MODEL_KEYS if k in model}
        e_unit = str(self._model.get("e_unit", SGDML_ENERGY_UNIT))
        r_unit = str(self._model.get("r_unit", SGDML_LENGTH_UNIT))
        if e_unit not in _ENERGY_UNITS_EV or r_unit != SGDML_LENGTH_UNIT:
            raise ValueError(
                f"sgdml model in unsupported units (energy {e_unit!r}, length {r_unit!r}); "
                f"supported: energy {sorted(_ENERGY_UNITS_EV)}, length {SGDML_LENGTH_UNIT!r}"
            )
        self._energy_to_ev = _ENERGY_UNITS_EV[e_unit]
        self.numbers = self._model["z"].astype(int)
        self.search = search
        self._threads = NativeThreadLimit(num_threads)
        self._predictor = None  # sgdml.predict.GDMLPredict, built on first use
        digest = hashlib.sha256()
        for key in ("z", "R_desc", "R_d_desc_alpha", "c", "std", "sig", "perms", "e_unit"):
            if key in self._model:
                digest.update(np.ascontiguousarray(self._model[key]).tobytes())
        self._digest = digest.hexdigest()[:16]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_frames(
        cls,
        frames: Sequence[Atoms],
        n_train: int = 50,
        n_valid: int | None = None,
        seed: int = 0,
        sigma_grid: Sequence[float] | None = None,
        cache: bool = True,
        num_threads: int | None = 1,
    ) -> "SGDMLPrior":
        """Fit sGDML to labelled frames (energy in eV, forces in eV/Å, e.g. SinglePointCalculator).

        A seeded permutation of the frames gives ``n_train`` training frames. If more frames are
        given, the next ``n_valid`` (default: all the rest) validate the σ search and the best
        model is kept. If exactly ``n_train`` frames are given, one fifth of them is held out for
        the σ search and the model is then refitted on all ``n_train`` with the chosen σ.
        With ``cache=True`` the fitted model is stored under ``cache_dir("sgdml")``, keyed by a
        hash of the frames' numbers, positions and labels and of the settings; a repeated call
        loads it instead of training.
        """
        z, R, E, F = _frames_to_arrays(frames)
        sigmas = tuple(DEFAULT_SIGMA_GRID if sigma_grid is None else sigma_grid)
        if not sigmas or any(s <= 0 for s in sigmas):
            raise ValueError(f"sigma_grid must hold positive length scales, got {sigmas}")
        n_frames = len(R)
        if not 2 <= n_train <= n_frames:
            raise ValueError(f"n_train must be between 2 and the number of frames ({n_frames}), got {n_train}")
        if n_valid is not None and (n_valid < 1 or n_valid > n_frames - n_train):
            raise ValueError(
                f"n_valid={n_valid} but only {n_frames - n_train} frames are left after {n_train} training frames "
                "(pass more frames, or n_valid=None to hold out part of the training frames for the σ search)"
            )

        key = _cache_key(z, R, E, F, n_train=n_train, n_valid=n_valid, seed=seed, sigmas=sigmas)
        path = cache_dir("sgdml") / f"{key}.npz"
        if cache and path.exists():
            try:
                prior = cls.load(path, num_threads=num_threads)
                logger.info("sgdml: loaded cached model %s", path)
                return prior
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("sgdml: ignoring unreadable cached model %s (%s)", path, exc)

        order = np.random.default_rng(seed).permutation(n_frames)
        with NativeThreadLimit(num_threads)():
            model, search = _fit(z, R, E, F, order, n_train, n_valid, sigmas)
        prior = cls(model, search, num_threads=num_threads)
        logger.info(
            "sgdml: fitted %d frames in %.1f s; sigma=%s, validation force MAE %.1f meV/Å on %d frames",
            n_train, search.fit_seconds, prior.sigma, 1e3 * min(search.valid_force_mae), search.n_valid,
        )  # fmt: skip
        if cache:
            prior.save(path)
        return prior

    @classmethod
    def load(cls, path: str | os.PathLike, num_threads: int | None = 1) -> "SGDMLPrior":
        """Load a model written by :meth:`save` (or an sgdml model ``.npz``; only plain arrays are read)."""
        with np.load(path, allow_pickle=False) as data:
            model = {k: data[k] for k in _MODEL_KEYS if k in data.files}
            search = SigmaSearch.from_arrays({k: data[k] for k in data.files if k.startswith(_SEARCH_PREFIX)})
        return cls(model, search, num_threads=num_threads)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model (an sgdml-compatible ``.npz``) to exactly ``path``, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = dict(self._model)
        if self.search is not None:
            arrays.update(self.search.to_arrays())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:  # a file handle keeps numpy from appending ".npz"
            np.savez(fh, **arrays)
        os.replace(tmp, path)  # readers never see a half-written file
        return path

    # ------------------------------------------------------------------ prior interface
    @property
    def sigma(self) -> float:
        """Kernel length scale of the model."""
        return float(self._model["sig"])

    def __repr__(self) -> str:
        return f"SGDMLPrior(n_atoms={len(self.numbers)}, sigma={self.sigma:g}, model={self._digest})"

    def fingerprint(self) -> str:
        """Hash of the fitted model's arrays."""
        return f"sgdml:{self._digest}"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_predictor"] = None  # holds sgdml's per-process shared arrays; rebuilt on demand
        return state

    def _energy_forces(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        if len(atoms) != len(self.numbers) or not np.array_equal(atoms.numbers, self.numbers):
            raise PriorError(
                f"sgdml: atom order mismatch for {atoms.get_chemical_formula()}: got atomic numbers "
                f"{atoms.numbers.tolist()}, but the model was trained on {self.numbers.tolist()} in this order "
                "(sGDML descriptors depend on the atom order; reorder the atoms to match)"
            )
        if atoms.pbc.any() and "lattice" not in self._model:
            formula = atoms.get_chemical_formula()
            raise PriorError(f"sgdml: model was trained on isolated molecules but {formula} is periodic")
        if self._predictor is None:
            self._predictor = import_sgdml().predict.GDMLPredict(self._model, max_processes=1)
        with self._threads():
            energy, forces = self._predictor.predict(np.asarray(atoms.positions, dtype=np.float64).reshape(1, -1))
        # model units: e_unit and e_unit/Å
        return float(energy[0]) * self._energy_to_ev, forces.reshape(-1, 3) * self._energy_to_ev


def _frames_to_arrays(frames: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """z, R [Å], E [kcal/mol], F [kcal/mol/Å] from frames labelled in eV and eV/Å."""
    if len(frames) == 0:
        raise ValueError("no frames given")
    z = np.asarray(frames[0].numbers)
    R, E, F = [], [], []
    for i, atoms in enumerate(frames):
        if not np.array_equal(atoms.numbers, z):
            raise ValueError(f"frame {i} has atomic numbers {atoms.numbers.tolist()}, frame 0 has {z.tolist()}")
        if atoms.pbc.any():
            raise ValueError(f"frame {i} is periodic; SGDMLPrior fits isolated molecules")
        if atoms.calc is None:
            raise ValueError(f"frame {i} carries no energy/forces labels (attach a SinglePointCalculator)")
        R.append(atoms.positions)
        E.append(atoms.get_potential_energy())
        F.append(atoms.get_forces(apply_constraint=False))
    E_arr, F_arr = np.asarray(E, dtype=np.float64), np.asarray(F, dtype=np.float64)
    if not (np.all(np.isfinite(E_arr)) and np.all(np.isfinite(F_arr))):
        raise ValueError("non-finite energy or force labels in the frames")
    return z, np.asarray(R, dtype=np.float64), E_arr / KCAL_MOL_TO_EV, F_arr / KCAL_MOL_TO_EV


def _cache_key(z, R, E, F, **settings) -> str:
    """Content hash of the training data and every setting that changes the fitted model."""
    version = import_sgdml().__version__
    digest = hashlib.sha256(f"{_CACHE_FORMAT};sgdml={version};{sorted(settings.items())!r}".encode())
    for array in (z.astype(np.int64), R, E, F):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:32]


def _fit(
    z: np.ndarray,
    R: np.ndarray,
    E: np.ndarray,
    F: np.ndarray,
    order: np.ndarray,
    n_train: int,
    n_valid: int | None,
    sigmas: tuple[float, ...],
) -> tuple[dict, SigmaSearch]:
    """σ search on held-out frames, then the final model (see :meth:`SGDMLPrior.from_frames`)."""
    GDMLPredict = import_sgdml().predict.GDMLPredict

    start = time.perf_counter()
    refit = len(order) == n_train  # no spare frames: hold out a fifth of the training frames
    if refit:
        n_hold = max(1, n_train // 5)
        search_idx, valid_idx = order[: n_train - n_hold], order[n_train - n_hold :]
    else:
        search_idx = order[:n_train]
        valid_idx = order[n_train:] if n_valid is None else order[n_train : n_train + n_valid]

    def dataset(idx: np.ndarray) -> dict:
        return make_dataset(z, R[idx], E[idx], F[idx], name="ttcalc-frames", theory="reference labels")

    with gdml_trainer() as trainer:
        perms = None  # the molecule's symmetries are found once and reused for every σ

        def train(idx: np.ndarray, sigma: float) -> dict:
            nonlocal perms
            data = dataset(idx)
            # validation set = training set with n_valid=0: sgdml then draws no indices (and uses
            # no global RNG); validation is done below on our own held-out frames
            task = trainer.create_task(data, len(idx), data, 0, sig=sigma, perms=perms)
            perms = task["perms"]
            return trainer.train(task)

        models, f_mae, e_mae = [], [], []
        R_valid = R[valid_idx].reshape(len(valid_idx), -1)
        for sigma in sigmas:
            model = train(search_idx, sigma)
            E_pred, F_pred = GDMLPredict(model, max_processes=1).predict(R_valid)
            f_mae.append(float(np.mean(np.abs(F_pred - F[valid_idx].reshape(len(valid_idx), -1)))) * KCAL_MOL_TO_EV)
            e_mae.append(float(np.mean(np.abs(E_pred - E[valid_idx]))) * KCAL_MOL_TO_EV)
            models.append(model)
            logger.debug("sgdml: sigma=%s validation force MAE %.4f eV/Å", sigma, f_mae[-1])
        best = int(np.argmin(f_mae))
        final = train(order[:n_train], sigmas[best]) if refit else models[best]

    search = SigmaSearch(
        sigmas=tuple(float(s) for s in sigmas),
        valid_force_mae=tuple(f_mae),
        valid_energy_mae=tuple(e_mae),
        n_train=n_train,
        n_valid=len(valid_idx),
        fit_seconds=time.perf_counter() - start,
    )
    return final, search
