"""Models shipped inside the package (work offline: no network, no ../shared data).

=============  ==============================================================================
name           what it is
=============  ==============================================================================
``md17-abu``   TensorNet trained on rMD17 aspirin, benzene and uracil (main head: PBE/def2-SVP,
               prior head: GFN2-xTB, so TTT needs no labels); version 4; model card: ``md17-abu.md``.
``md17-abu-sgdml``  the same architecture and data with an sGDML prior head (TTT on a new molecule
               needs an sGDML model fitted to a few labelled frames of it); version 4; same model card.
=============  ==============================================================================
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

PRETRAINED = {"md17-abu": "md17-abu.pt", "md17-abu-sgdml": "md17-abu-sgdml.pt"}
#: the configs that rebuild each shipped model, run in this order: each later one warm-starts from
#: the checkpoint the one before it wrote. They live in a source checkout of ttcalc (an installed
#: package has the weights and model card only); every checkpoint also stores the config of its
#: last run (``metadata["train_config"]``), which ``tests/test_model.py`` compares with the chain's end.
CONFIGS = {"md17-abu": tuple(f"benchmarks/md17_unseen/train_xtb{v}.toml" for v in ("", "_v2", "_v3", "_v4")),
           "md17-abu-sgdml": tuple(f"benchmarks/md17_unseen/train_sgdml{v}.toml" for v in ("", "_v4", "_v4r"))}


def pretrained_path(name: str) -> Path:
    """Path of a shipped checkpoint; raises with the list of names or how to build it."""
    if name not in PRETRAINED:
        raise KeyError(f"unknown pretrained model {name!r}; available: {sorted(PRETRAINED)}")
    path = Path(str(resources.files(__package__).joinpath(PRETRAINED[name])))
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained model {name!r} is not in this installation ({path}); reinstall ttcalc, or "
            f"rebuild it in a source checkout of ttcalc (model card: md17-abu.md) with "
            + ", then ".join(f"`ttcalc train --config {c}`" for c in CONFIGS[name])
        )
    return path


def load_pretrained(name: str = "md17-abu", dtype=None, device="cpu"):
    """Load a shipped :class:`~ttcalc.model.potential.MultiHeadPotential` by name."""
    from ttcalc.model.potential import load_model

    return load_model(pretrained_path(name), dtype=dtype, device=device)
