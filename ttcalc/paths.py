"""Where ttcalc finds reference data and keeps its caches.

Reference data are looked up in this order: ``$TTCALC_DATA`` (when set, it alone: an explicit
choice is never overridden), the user cache's ``data/`` folder (where ``ttcalc data download``
puts them), then ``../shared/data`` (from the working directory, then from the source checkout).
``TTCALC_CACHE`` points at the cache for prior labels, fitted priors and downloaded data (default:
the platform's user cache directory, ``~/.cache/ttcalc`` on Linux, via ``platformdirs``).
"""
from __future__ import annotations

import os
from pathlib import Path

PUBLIC_SOURCES = {
    "rmd17": "rMD17: https://doi.org/10.6084/m9.figshare.12672038 (rmd17.tar.bz2, CC0)",
    "qm9": "QM9: https://doi.org/10.6084/m9.figshare.c.978904 (or `pip install qm9pack`)",
    "3bpa": "3BPA: https://github.com/davkovacs/BOTNet-datasets (dataset_3BPA, MIT; doi:10.1021/acs.jctc.1c00647)",
    "acac": "acac: https://github.com/davkovacs/BOTNet-datasets (MIT)",
    "mlearn": "mlearn: https://github.com/materialsvirtuallab/mlearn (BSD-3)",
}


def cache_root() -> Path:
    """``$TTCALC_CACHE``, else the platform's user cache directory for ttcalc."""
    if "TTCALC_CACHE" in os.environ:
        return Path(os.environ["TTCALC_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ttcalc", appauthor=False))


def data_roots() -> list[tuple[str, Path]]:
    """The places reference data are looked for, in order, each with a label."""
    if "TTCALC_DATA" in os.environ:
        return [("TTCALC_DATA", Path(os.environ["TTCALC_DATA"]).expanduser())]
    checkout = Path(__file__).resolve().parent.parent
    return [("cache", cache_root() / "data"), ("../shared/data", Path("../shared/data")),
            ("../shared/data of the checkout", checkout.parent / "shared" / "data")]


def data_dir() -> Path:
    """The first data root that exists (the first candidate when none does)."""
    roots = [p for _, p in data_roots()]
    return next((p for p in roots if p.is_dir()), roots[0])


def find_dataset(*parts: str) -> Path | None:
    """``parts`` below the first data root that has them, or None."""
    return next((p.joinpath(*parts) for _, p in data_roots() if p.joinpath(*parts).exists()), None)


def dataset_path(*parts: str) -> Path:
    """Path of a file or folder below the data roots, with an error naming every place looked."""
    path = find_dataset(*parts)
    if path is None:
        source = PUBLIC_SOURCES.get(parts[0], "see ../shared/data/README.md")
        where = "; ".join(f"{label}: {root.joinpath(*parts).resolve()}" for label, root in data_roots())
        unset = "" if "TTCALC_DATA" in os.environ else " (TTCALC_DATA is unset)"
        raise FileNotFoundError(
            f"ttcalc data not found: looked for {'/'.join(parts)} in {where}{unset}. Set TTCALC_DATA to "
            f"the folder that holds '{parts[0]}/', run `ttcalc data download {parts[0]}`, or get the "
            f"public original: {source}"
        )
    return path


def cache_dir(*parts: str) -> Path:
    """A cache folder (created on demand) below :func:`cache_root`."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
