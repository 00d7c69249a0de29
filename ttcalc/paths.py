"""Where ttcalc finds reference data and keeps its caches.

``TTCALC_DATA`` points at the shared data folder (default ``../shared/data`` relative to the
current working directory, which is the project root in a checkout). ``TTCALC_CACHE`` points at
the cache for prior labels and fitted priors (default ``~/.cache/ttcalc``).
"""
from __future__ import annotations

import os
from pathlib import Path

PUBLIC_SOURCES = {
    "rmd17": "rMD17: https://doi.org/10.6084/m9.figshare.12672038 (rmd17.tar.bz2, CC0)",
    "qm9": "QM9: https://doi.org/10.6084/m9.figshare.c.978904 (or `pip install qm9pack`)",
    "3bpa": "3BPA: https://doi.org/10.1021/acs.jctc.1c00647 (supporting information, MIT)",
    "acac": "acac: https://github.com/davkovacs/BOTNet-datasets (MIT)",
    "mlearn": "mlearn: https://github.com/materialsvirtuallab/mlearn (BSD-3)",
}


def _default_data_dirs() -> list[Path]:
    # ../shared/data of the working directory (the project root), then of the source checkout
    checkout = Path(__file__).resolve().parent.parent
    return [Path("../shared/data"), checkout.parent / "shared" / "data"]


def data_dir() -> Path:
    """The reference-data root: ``$TTCALC_DATA``, else ``../shared/data`` (from the working
    directory, then from the source checkout)."""
    if "TTCALC_DATA" in os.environ:
        return Path(os.environ["TTCALC_DATA"]).expanduser()
    candidates = _default_data_dirs()
    return next((c for c in candidates if c.is_dir()), candidates[0])


def dataset_path(*parts: str) -> Path:
    """Path of a file or folder below :func:`data_dir`, with a helpful error if it is missing."""
    path = data_dir().joinpath(*parts)
    if not path.exists():
        source = PUBLIC_SOURCES.get(parts[0], "see ../shared/data/README.md")
        where = (str(path.resolve()) if "TTCALC_DATA" in os.environ else
                 " and ".join(str(c.joinpath(*parts).resolve()) for c in _default_data_dirs()))
        raise FileNotFoundError(
            f"ttcalc data not found: looked for {where} "
            f"(TTCALC_DATA={os.environ.get('TTCALC_DATA', '<unset, default ../shared/data>')}). "
            f"Set TTCALC_DATA to the folder that holds '{parts[0]}/', or download the public "
            f"original: {source}"
        )
    return path


def cache_dir(*parts: str) -> Path:
    """A cache folder (created on demand): ``$TTCALC_CACHE`` or ``~/.cache/ttcalc``."""
    root = Path(os.environ.get("TTCALC_CACHE", Path.home() / ".cache" / "ttcalc")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
