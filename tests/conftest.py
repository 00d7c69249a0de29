"""Shared fixtures: real rMD17 frames and a small model trained on them with xTB labels.

The suite reads only the fixtures in ``tests/data/`` (seeded subsets of the real data in the
layout of the full files; ``tests/data/build_fixtures.py`` builds them and names sources and
licences), so it runs in a fresh clone with nothing beside it. Tests against the full data live in
``tests_full/``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "data"
# before ttcalc reads it: the suite is about the code, so it always sees the same small data
os.environ["TTCALC_DATA"] = str(FIXTURES)

from ttcalc.data import load_rmd17  # noqa: E402

# the caller's cache (CI sets a fresh one per run); read before the fixture below replaces it
_MODEL_CACHE = Path(os.environ.get("TTCALC_CACHE", Path.home() / ".cache" / "ttcalc")) / "test-models"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # labels and fitted priors go to a throwaway cache unless the caller chose one (CI does)
    if "TTCALC_CACHE" not in os.environ:
        os.environ["TTCALC_CACHE"] = str(tmp_path_factory.mktemp("ttcalc_cache"))
    yield


@pytest.fixture(scope="session")
def benzene_frames():
    return load_rmd17("benzene", "train_01", n=96, seed=0)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A 32-channel, 1-layer TensorNet trained for a few epochs on 80 rMD17 benzene frames
    (prior head on GFN2-xTB labels, then the main head on PBE labels), saved as a checkpoint."""
    from ttcalc.model.potential import ModelConfig
    from ttcalc.model.representation import RepresentationConfig
    from ttcalc.train import DataConfig, StageConfig, TrainConfig, train_model

    cfg = TrainConfig(
        regime="pretrain-freeze-finetune",
        model=ModelConfig(RepresentationConfig(hidden_channels=32, num_layers=1, num_rbf=16)),
        data=DataConfig(molecules=["benzene"], n_train=64, n_val=16),
        pretrain=StageConfig(max_epochs=6, batch_size=16, lr=3e-3),
        finetune=StageConfig(max_epochs=6, batch_size=16, lr=3e-3),
        spectrum_frames=64,
    )
    # reuse the checkpoint across pytest runs that share a cache (CI starts with a fresh one)
    key = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    _MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    out = _MODEL_CACHE / f"tiny-{key}.pt"
    if not out.exists():
        cfg.output = str(out)
        train_model(cfg, progress=False)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def prior():
    """GFN2-xTB through xtb-python (the default prior)."""
    from ttcalc.priors import XTBPrior

    return XTBPrior()


@pytest.fixture(scope="session")
def benzene():
    """A typical rMD17 benzene test frame (labelled, eV and Å): the test_01 frame whose mean DFT
    force norm is the median of the split's, so "in distribution" holds by construction."""
    frames = load_rmd17("benzene", "test_01")
    norms = [np.linalg.norm(a.get_forces(), axis=1).mean() for a in frames]
    return frames[int(np.argsort(norms)[len(norms) // 2])]


@pytest.fixture(scope="session")
def naphthalene():
    """One rMD17 naphthalene test frame: a molecule the benzene test model never saw."""
    return load_rmd17("naphthalene", "test_01", n=1, seed=0)[0]


def scaled(atoms, factor: float):
    """A copy scaled by ``factor`` about its centroid (labels dropped)."""
    out = atoms.copy()
    out.calc = None
    c = out.positions.mean(axis=0)
    out.positions = c + factor * (out.positions - c)
    return out
