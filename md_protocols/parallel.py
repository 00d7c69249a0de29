"""Several MD runs (seeds, molecules) in a process pool.

Workers are started with the ``"spawn"`` method (or ``"forkserver"``): torch, OpenMP and xtb are not
fork-safe. Each worker limits OpenMP/BLAS/torch threads to ``max(1, cores // processes)`` so that the
pool does not oversubscribe the machine (on 2 shared cores, xtb with its default thread count is
several times slower than with one thread per process).

Every job yields an :class:`~md_protocols.simulate.MDResult`: an exception in the calculator factory
or the run, or a worker that died, gives ``status="error"`` with the reason in ``message``.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from md_protocols.protocol import MDProtocol, resolve_protocol
from md_protocols.simulate import MDResult, run_md

_PROTOCOL_FIELDS = {f.name for f in fields(MDProtocol)}

logger = logging.getLogger(__name__)

__all__ = ["MDJob", "run_md_parallel"]

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class MDJob:
    """One MD run: ``run_md(atoms, calc_factory(), **kwargs)`` in a worker.

    ``calc_factory`` must be picklable (a module-level function, a class, or ``functools.partial`` of
    one); the calculator is built inside the worker.
    """

    atoms: Atoms
    calc_factory: Callable[[], Calculator]
    kwargs: dict[str, Any] = field(default_factory=dict)


def _init_worker(threads: int) -> None:
    # libraries loaded after this (torch, xtb via the factory) read these at load time
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)  # libraries already loaded (numpy's BLAS)
    except ImportError:
        pass
    if "torch" in sys.modules:  # otherwise torch reads OMP_NUM_THREADS when it is first imported
        sys.modules["torch"].set_num_threads(threads)


def _error_result(job: MDJob, message: str) -> MDResult:
    kw = dict(job.kwargs)
    try:
        protocol = resolve_protocol("run_md", kw.pop("protocol", None),
                                    {k: kw.pop(k) for k in list(kw) if k in _PROTOCOL_FIELDS})
    except (TypeError, ValueError):  # the job's settings themselves failed: report the defaults
        protocol = MDProtocol()
    trajectory = kw.get("trajectory")
    return MDResult(
        status="error",
        time_ps=0.0,
        steps=0,
        n_atoms=len(job.atoms),
        trajectory=None if trajectory is None else str(trajectory),
        times_ps=np.zeros(0),
        energies={"potential": np.zeros(0), "kinetic": np.zeros(0), "total": np.zeros(0)},
        temperatures=np.zeros(0),
        message=message,
        ensemble=protocol.ensemble,
        temperature_K=protocol.temperature_K,
        timestep_fs=protocol.timestep_fs,
        seed=kw.get("seed", 0),
        log_interval=protocol.log_interval,
    )


def _run_job(job: MDJob) -> MDResult:
    try:
        calc = job.calc_factory()
        kwargs = {"progress": False, **job.kwargs}
        return run_md(job.atoms, calc, **kwargs)
    except Exception as exc:  # the job's failure is its result; the pool goes on
        return _error_result(job, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")


def run_md_parallel(
    jobs: Sequence[MDJob],
    processes: int = 2,
    start_method: str = "spawn",
) -> list[MDResult]:
    """Run ``jobs`` in a ``ProcessPoolExecutor`` of ``processes`` workers; results in job order."""
    if processes < 1:
        raise ValueError(f"run_md_parallel: processes must be >= 1, got {processes}")
    if start_method not in ("spawn", "forkserver"):
        raise ValueError(f"run_md_parallel: start_method must be 'spawn' or 'forkserver', got {start_method!r}")
    if not jobs:
        return []
    threads = max(1, (os.cpu_count() or 1) // processes)
    context = multiprocessing.get_context(start_method)
    results: list[MDResult] = []
    with ProcessPoolExecutor(max_workers=min(processes, len(jobs)), mp_context=context,
                             initializer=_init_worker, initargs=(threads,)) as pool:
        # Atoms.copy() drops an attached calculator, which may not pickle (torch models, xtb handles)
        futures = [pool.submit(_run_job, replace(job, atoms=job.atoms.copy())) for job in jobs]
        for job, future in zip(jobs, futures):
            try:
                results.append(future.result())
            except Exception as exc:  # BrokenProcessPool (a worker died) or an unpicklable job
                logger.warning("run_md_parallel: job failed outside run_md: %s", exc)
                results.append(_error_result(job, f"{type(exc).__name__}: {exc}"))
    return results
