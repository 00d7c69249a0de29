"""Benchmark reports: a JSON file with everything and a Markdown table for people.

``results_dict`` maps a model label to a dict that may hold any of

- ``"stability_ps"``: a list of per-seed stability times (ps), or a :func:`stability_summary` dict;
- ``"hr_mae"``: ∫|h - h_ref| dr (Fu et al. eq. 14), a float or a per-seed list (averaged);
- ``"nve_drift"``: an :func:`nve_drift` dict (``slope_meV_per_atom_per_ps`` is shown) or a float in
  meV/atom/ps;
- ``"force_mae"``: force MAE in eV/Å (shown in meV/Å);

plus anything else, which goes to the JSON only.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from md_protocols.files import atomic_write

__all__ = ["write_results", "markdown_table", "to_jsonable", "write_json_atomic"]

_MISSING = "–"


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays, dataclasses, paths and tuples to JSON types.

    Non-finite floats become None (JSON has no NaN).
    """
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON via a temporary file + ``os.replace`` (a crash never leaves half a file)."""
    with atomic_write(path, "w") as fh:
        json.dump(to_jsonable(obj), fh, indent=1)


def _stability_cell(value: Any) -> str:
    from md_protocols.stability import stability_summary

    if value is None:
        return _MISSING
    summary = value if isinstance(value, Mapping) else stability_summary(np.atleast_1d(value))
    cell = f"{summary['mean']:.2f} ± {summary['std']:.2f} (n={summary['n']})"
    if summary.get("n_stable_full") is not None:
        cell += f", {summary['n_stable_full']} full"
    return cell


def _number_cell(value: Any, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
    if value is None:
        return _MISSING
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64)) * scale
    if arr.size == 1:
        return fmt.format(arr[0])
    return (fmt + " ± " + fmt).format(arr.mean(), arr.std(ddof=1))


def _drift_cell(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("slope_meV_per_atom_per_ps")
    return _number_cell(value)


def markdown_table(results_dict: Mapping[str, Mapping[str, Any]]) -> str:
    """The Markdown table of :func:`write_results` (one row per model)."""
    header = (
        "| model | stability (ps, mean ± std) | h(r) MAE | NVE drift (meV/atom/ps) | force MAE (meV/Å) |\n"
        "|---|---|---|---|---|\n"
    )
    rows = []
    for label, res in results_dict.items():
        rows.append(
            f"| {label} | {_stability_cell(res.get('stability_ps'))} | {_number_cell(res.get('hr_mae'))} "
            f"| {_drift_cell(res.get('nve_drift'))} | {_number_cell(res.get('force_mae'), 1000.0, '{:.1f}')} |"
        )
    return header + "\n".join(rows) + "\n"


def write_results(
    results_dict: Mapping[str, Mapping[str, Any]],
    json_path: str | os.PathLike,
    markdown_path: str | os.PathLike,
) -> str:
    """Write ``results_dict`` to ``json_path`` (everything) and a Markdown table to ``markdown_path``.

    Returns the Markdown text.
    """
    if not results_dict:
        raise ValueError("write_results: no results to write")
    write_json_atomic(json_path, results_dict)
    text = markdown_table(results_dict)
    markdown_path = Path(markdown_path)
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(text)
    return text
