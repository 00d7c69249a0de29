"""Checks of a setting against its declared choices, so that a ``Literal[...]`` annotation is the
one place that lists them (the error names them all)."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal


def check_choice(name: str, value: Any, choices: typing.Iterable) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (a ``Literal`` alias works too)."""
    if typing.get_origin(choices) is Literal:
        choices = typing.get_args(choices)
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_literal_fields(settings: Any) -> None:
    """:func:`check_choice` for every field of the dataclass ``settings`` annotated ``Literal[...]``
    (annotations resolved as :func:`typing.get_type_hints` does, subclasses' overrides first)."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        if typing.get_origin(hints.get(f.name)) is Literal:
            check_choice(f.name, getattr(settings, f.name), hints[f.name])
