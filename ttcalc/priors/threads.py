"""Capping the threads of native OpenMP/BLAS libraries while a prior evaluates.

xTB, tblite and sGDML spend their time in OpenMP/OpenBLAS code. For molecules of a few dozen atoms
the parallel regions are far too small to pay off, and on a shared 2-core machine OpenMP's
spin-waiting threads compete with other processes, so a small GFN2-xTB single point is many times
slower with two OpenMP threads on a busy machine than with one. The limit is applied only
around the prior's own native calls (via ``threadpoolctl``) and restored afterwards, so torch and
the rest of the process keep their thread settings.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from threadpoolctl import ThreadpoolController


class NativeThreadLimit:
    """Context-manager factory: ``with limit(): ...`` runs the block with at most ``num_threads``
    threads in every OpenMP/BLAS library loaded in the process.

    The ``threadpoolctl`` controller is created on first use, i.e. after the backend's shared
    libraries have been imported (a controller only sees libraries loaded before it was built), and
    then reused because building one scans all loaded libraries, a cost comparable to an xTB call.
    ``num_threads=None`` disables the limit.
    """

    def __init__(self, num_threads: int | None = 1) -> None:
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        self.num_threads = num_threads
        self._controller: ThreadpoolController | None = None

    def __call__(self) -> AbstractContextManager:
        if self.num_threads is None:
            return nullcontext()
        if self._controller is None:
            self._controller = ThreadpoolController()
        return self._controller.limit(limits=self.num_threads)

    def __getstate__(self) -> dict:
        # the controller holds ctypes handles to loaded libraries: rebuild it after unpickling
        return {"num_threads": self.num_threads, "_controller": None}
