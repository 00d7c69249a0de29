"""Energy conservation of NVE runs.

For total energies E(t_k) = E_pot + E_kin of the logged frames:

* drift: the slope a of the least-squares line E(t) ≈ a t + b (eV/ps, and meV/atom/ps = 1000 a / N);
* max deviation: max_k |E(t_k) - E(t_0)| (eV and meV/atom);
* fluctuation: the standard deviation of E(t_k) (eV and meV/atom).
"""
from __future__ import annotations

import numpy as np

__all__ = ["nve_drift"]


def nve_drift(times_ps, total_energies_eV=None, n_atoms: int | None = None) -> dict:
    """Drift, maximum deviation and std of the total energy; also accepts an ``MDResult``.

    ``nve_drift(result)`` uses ``result.times_ps``, ``result.energies["total"]`` and ``result.n_atoms``.
    Returns keys ``slope_eV_per_ps``, ``slope_meV_per_atom_per_ps``, ``max_abs_dev_eV``,
    ``max_abs_dev_meV_per_atom``, ``std_eV``, ``std_meV_per_atom``, ``n_frames``, ``duration_ps``.
    """
    if hasattr(times_ps, "energies") and hasattr(times_ps, "times_ps"):
        result = times_ps
        if getattr(result, "ensemble", "nve") != "nve":
            raise ValueError(f"nve_drift: the run is {result.ensemble!r}; energy drift is meaningful for NVE only")
        times_ps, total_energies_eV, n_atoms = result.times_ps, result.energies["total"], result.n_atoms
    if total_energies_eV is None or n_atoms is None:
        raise ValueError("nve_drift: pass (times_ps, total_energies_eV, n_atoms) or an MDResult")
    t = np.asarray(times_ps, dtype=np.float64)
    e = np.asarray(total_energies_eV, dtype=np.float64)
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError(f"nve_drift: times {t.shape} and energies {e.shape} must be equal 1-D shapes")
    if t.size < 2:
        raise ValueError(f"nve_drift: need at least 2 frames, got {t.size}")
    if n_atoms < 1:
        raise ValueError(f"nve_drift: n_atoms must be >= 1, got {n_atoms}")
    slope, _ = np.polyfit(t, e, 1)
    max_dev = float(np.max(np.abs(e - e[0])))
    std = float(np.std(e))
    to_meV_atom = 1000.0 / n_atoms
    return {
        "slope_eV_per_ps": float(slope),
        "slope_meV_per_atom_per_ps": float(slope) * to_meV_atom,
        "max_abs_dev_eV": max_dev,
        "max_abs_dev_meV_per_atom": max_dev * to_meV_atom,
        "std_eV": std,
        "std_meV_per_atom": std * to_meV_atom,
        "n_frames": int(t.size),
        "duration_ps": float(t[-1] - t[0]),
    }
