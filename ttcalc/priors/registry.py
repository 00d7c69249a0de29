"""Building a prior from a short name (configuration files, command line)."""
from __future__ import annotations

from typing import Callable

from ttcalc.priors.base import Prior
from ttcalc.priors.classical import EMTPrior, LJPrior
from ttcalc.priors.xtb import XTBPrior

#: name -> factory; the xTB names build GFN2-xTB with default settings
PRIOR_FACTORIES: dict[str, Callable[[], Prior]] = {
    "xtb": lambda: XTBPrior(backend="xtb"),
    "gfn2": lambda: XTBPrior(backend="xtb"),
    "gfn2-xtb": lambda: XTBPrior(backend="xtb"),
    "tblite": lambda: XTBPrior(backend="tblite"),
    "emt": EMTPrior,
    "lj": LJPrior,
}
#: names that mean "no prior"
NO_PRIOR_NAMES = ("none",)


def make_prior(spec: str | Prior | None) -> Prior | None:
    """A prior from a name ("xtb", "gfn2", "gfn2-xtb", "tblite", "emt", "lj", "none"), a Prior, or None.

    Names are case-insensitive. A :class:`Prior` is returned as is; None and "none" give None.
    An sGDML prior needs training data and is built with ``SGDMLPrior.from_frames`` instead.
    """
    if spec is None or isinstance(spec, Prior):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a prior spec is a name, a Prior or None, not {type(spec).__name__}")
    key = spec.strip().lower()
    if key in NO_PRIOR_NAMES:
        return None
    if key not in PRIOR_FACTORIES:
        valid = ", ".join(repr(n) for n in (*PRIOR_FACTORIES, *NO_PRIOR_NAMES))
        raise ValueError(
            f"unknown prior {spec!r}; valid names: {valid} (or None; an sGDML prior is built with "
            "SGDMLPrior.from_frames)"
        )
    return PRIOR_FACTORIES[key]()
