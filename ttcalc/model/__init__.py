"""The model: a shared representation θR composed with output heads (torchmd-net's design).

``graph`` and ``batch`` build the inputs, ``representation`` (TensorNet or the Equivariant
Transformer) gives per-atom features, ``heads`` maps them to energies or properties, ``potential``
composes them into :class:`MultiHeadPotential`, ``compiled`` is the compiled dense kernel for
molecular MD, ``checkpoint`` the file format and ``pretrained`` the models shipped in the package.
"""
from ttcalc.model.potential import (ModelConfig, MultiHeadPotential, TrainingStats, load_model, resolve_device,
                                    resolve_dtype, restore, snapshot)
from ttcalc.model.pretrained import PRETRAINED, load_pretrained, pretrained_path

__all__ = ["ModelConfig", "MultiHeadPotential", "TrainingStats", "load_model", "load_pretrained",
           "pretrained_path", "PRETRAINED", "resolve_device", "resolve_dtype", "restore", "snapshot"]
