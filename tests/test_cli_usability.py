"""The command line and its errors: every option has a help string; clear device errors."""
from __future__ import annotations

import argparse

from ttcalc.app.cli import build_parser


def _parsers(p: argparse.ArgumentParser):
    yield p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_cli_option_has_help():
    missing = [f"{p.prog} {'/'.join(a.option_strings) or a.dest}" for p in _parsers(build_parser())
               for a in p._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
               and not a.help]
    assert not missing, missing


def test_cuda_on_a_cpu_only_torch_is_a_clear_value_error():
    import pytest
    import torch

    from ttcalc.model.potential import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ValueError, match="install a CUDA build of torch"):
        resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"
