"""Settings checked against their ``Literal`` choices (md_protocols.choices)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from md_protocols.choices import check_choice, check_literal_fields
from ttcalc.adapt import FinetuneLabelsConfig, TTTConfig
from ttcalc.train.config import DataConfig, TrainConfig

Colour = Literal["red", "green"]


@dataclass
class _Base:
    colour: Colour = "red"
    size: int = 1

    def __post_init__(self):
        check_literal_fields(self)


@dataclass
class _Narrower(_Base):
    colour: Literal["red"] = "red"


def test_check_choice_names_every_choice():
    check_choice("colour", "green", Colour)
    check_choice("n", 2, (1, 2))
    with pytest.raises(ValueError, match=r"^colour must be one of 'red', 'green'; got 'blue'$"):
        check_choice("colour", "blue", Colour)
    with pytest.raises(ValueError, match="n must be one of 1, 2; got 3"):
        check_choice("n", 3, [1, 2])


def test_literal_fields_follow_the_subclass_annotation():
    _Base(colour="green", size=5)  # plain fields are not checked
    with pytest.raises(ValueError, match="colour must be one of 'red', 'green'"):
        _Base(colour="blue")
    with pytest.raises(ValueError, match="colour must be one of 'red'; got 'green'"):
        _Narrower(colour="green")


@pytest.mark.parametrize("make, field", [
    (lambda: DataConfig(source="web"), "source"),
    (lambda: TrainConfig(main_head_init="zeros"), "main_head_init"),
    (lambda: TTTConfig(parameters="main"), "parameters"),
    (lambda: FinetuneLabelsConfig(parameters="adaptable"), "parameters"),
    (lambda: TTTConfig().updated(optimizer="lbfgs"), "optimizer"),
])
def test_configs_reject_values_outside_their_literals(make, field):
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        make()
