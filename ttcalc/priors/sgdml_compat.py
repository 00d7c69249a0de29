"""What sgdml 1.0.3 needs from its callers and from NumPy, in one place.

sgdml 1.0.3 predates NumPy 2.4, reads its dataset/model dictionaries the way its own ``.npz``
files store them, and reconfigures logging process-wide on import. Four things follow; each is
handled here and nowhere else (every sgdml import goes through :func:`import_sgdml`):

1. ``np.in1d`` was deprecated in NumPy 2.0 and removed in 2.4. sgdml calls it in
   ``GDMLTrain.draw_strat_sample`` (``sgdml/train.py``, when a subset smaller than the dataset is
   drawn). :func:`ensure_numpy_compat` installs ``np.in1d`` as an alias of ``np.isin`` (its
   documented replacement, same semantics for 1-D input) *only if* NumPy lacks it, and is
   idempotent. It touches nothing when ``np.in1d`` exists (NumPy < 2.4), so it never replaces a
   real implementation. This is the least invasive fix: sgdml's source stays untouched and no
   other name is added or changed.
2. Metadata fields are NumPy arrays, not Python strings: ``create_task`` calls
   ``train_dataset['name'].astype(str)``. :func:`make_dataset` builds the dataset dictionary
   with ``np.array`` metadata, the units fields and the MD5 fingerprint sgdml computes itself
   (``sgdml.utils.io.dataset_md5``), so the dict is exactly what ``np.load`` of an sgdml dataset
   file would give.
3. ``GDMLTrain`` allows one live instance per process (a module-level ``sgdml.train.glob``
   dict created in ``__init__`` and removed by ``__del__`` whenever the object is collected).
   :func:`gdml_trainer` yields a trainer whose ``__del__`` is inert and removes that state itself
   when the block exits, also when training raises, so a failed fit never blocks the next one and
   a late garbage collection never removes a newer trainer's state.
4. ``import sgdml`` calls ``logging.setLoggerClass(ColoredLogger)``: every logger created later in
   the process, by any library, then has level DEBUG and its own stderr handler. torch creates its
   inductor loggers lazily, so after an sGDML fit one ``torch.compile`` printed ~100,000 debug
   lines (13 MB). :func:`import_sgdml` imports the sgdml modules ttcalc uses, puts the standard
   logger class back, and turns sgdml's own loggers into plain ones (no private handler, level
   unset), so their messages follow the application's logging configuration like any library's.
"""
from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from typing import Iterator

import numpy as np

logger = logging.getLogger(__name__)

#: sgdml's default units (what its ASE calculator assumes): kcal/mol and Å
SGDML_ENERGY_UNIT = "kcal/mol"
SGDML_LENGTH_UNIT = "Ang"


def ensure_numpy_compat() -> bool:
    """Make ``np.in1d`` available for sgdml if this NumPy removed it (NumPy >= 2.4).

    Installs ``np.in1d = np.isin`` only when ``np.in1d`` is missing. Idempotent: a second call
    finds the alias and does nothing. Returns True if this call installed the alias.
    """
    if hasattr(np, "in1d"):
        return False
    np.in1d = np.isin  # type: ignore[attr-defined]
    logger.debug("numpy %s has no in1d: aliased np.in1d to np.isin for sgdml", np.__version__)
    return True


@functools.cache
def import_sgdml():
    """Import sgdml (train, predict, utils.io) once, undoing its process-wide logging change.

    Returns the ``sgdml`` package. Also installs the NumPy shim (:func:`ensure_numpy_compat`).
    """
    before = logging.getLoggerClass()
    ensure_numpy_compat()
    import sgdml
    import sgdml.predict
    import sgdml.train
    import sgdml.utils.io

    # the class in place before sgdml's import (the standard one if sgdml was imported earlier)
    logging.setLoggerClass(logging.Logger if before.__module__ == "sgdml" else before)
    for obj in list(logging.root.manager.loggerDict.values()):
        if isinstance(obj, logging.Logger) and type(obj).__module__ == "sgdml":
            for handler in list(obj.handlers):
                obj.removeHandler(handler)
            obj.setLevel(logging.NOTSET)
    return sgdml


def make_dataset(
    z: np.ndarray,
    R: np.ndarray,
    E: np.ndarray,
    F: np.ndarray,
    *,
    name: str,
    theory: str = "unknown",
    r_unit: str = SGDML_LENGTH_UNIT,
    e_unit: str = SGDML_ENERGY_UNIT,
) -> dict[str, np.ndarray]:
    """An in-memory sgdml dataset: z (N,), R (M, N, 3), E (M,), F (M, N, 3) in ``e_unit``/``r_unit``.

    Metadata are 0-d NumPy arrays like in sgdml's dataset files; ``md5`` is sgdml's own
    fingerprint of (z, R, E, F).
    """
    sgdml = import_sgdml()
    sgdml_version, dataset_md5 = sgdml.__version__, sgdml.utils.io.dataset_md5

    R = np.ascontiguousarray(R, dtype=np.float64)
    F = np.ascontiguousarray(F, dtype=np.float64)
    E = np.ascontiguousarray(E, dtype=np.float64).reshape(-1)
    z = np.ascontiguousarray(z, dtype=np.int64).reshape(-1)
    if R.ndim != 3 or R.shape[1:] != (len(z), 3) or F.shape != R.shape or E.shape != (len(R),):
        raise ValueError(
            f"inconsistent dataset shapes: z {z.shape}, R {R.shape}, E {E.shape}, F {F.shape} "
            "(expected z (N,), R (M, N, 3), E (M,), F (M, N, 3))"
        )
    dataset = {
        "type": np.array("d"),
        "code_version": np.array(sgdml_version),
        "name": np.array(name),
        "theory": np.array(theory),
        "z": z,
        "R": R,
        "E": E,
        "F": F,
        "r_unit": np.array(r_unit),
        "e_unit": np.array(e_unit),
    }
    dataset["md5"] = np.array(dataset_md5(dataset))
    return dataset


@functools.cache
def _managed_trainer_class() -> type:
    """GDMLTrain whose ``__del__`` leaves sgdml's module state alone (:func:`gdml_trainer` owns it)."""
    class ManagedGDMLTrain(import_sgdml().train.GDMLTrain):
        def __del__(self) -> None:
            # GDMLTrain.__del__ deletes sgdml.train.glob whenever the object is collected, which
            # could be in the middle of a later trainer's fit (e.g. when a traceback that holds a
            # failed trainer is freed); gdml_trainer removes the state deterministically instead.
            pass

    return ManagedGDMLTrain


@contextmanager
def gdml_trainer(max_processes: int = 1) -> Iterator[object]:
    """A ``sgdml.train.GDMLTrain`` whose process-wide state is released on exit, also on error.

    sgdml allows one live GDMLTrain per process (module-level ``sgdml.train.glob``, created in
    ``__init__`` and deleted in ``__del__``). Here the state is removed when the block exits, so a
    failed fit never blocks the next one, whatever still references the trainer.
    ``max_processes=1`` keeps sgdml from forking worker pools (forking after torch/OpenMP threads
    exist is unsafe, and on 2 cores pools do not pay off for ~50 training frames).
    """
    sgdml = import_sgdml()
    try:
        trainer = _managed_trainer_class()(max_processes=max_processes)
    except Exception as exc:  # sgdml raises a bare Exception for a second live instance
        raise RuntimeError(
            "sgdml refused to create a GDMLTrain: another GDMLTrain instance is alive in this process "
            f"(sgdml allows one at a time); release it first ({exc})"
        ) from exc
    try:
        yield trainer
    finally:
        vars(sgdml.train).pop("glob", None)
