"""Validation helpers shared by every config section.

A section validates itself in ``__post_init__`` with :func:`require`. The loader builds the
tree section by section, so it knows the dotted path of the section and turns a
:class:`FieldError` into a :class:`ConfigError` that names the full key
(``data.batch_size: must be > 0, got -1``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A run configuration is invalid; the message names the dotted key."""


class FieldError(ValueError):
    """A single field of one section is invalid (raised inside ``__post_init__``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def require(condition: bool, field: str, message: str) -> None:
    """Raise :class:`FieldError` for ``field`` unless ``condition`` holds."""
    if not condition:
        raise FieldError(field, message)


def require_choice(value: Any, field: str, choices: Iterable[Any]) -> None:
    """Raise :class:`FieldError` unless ``value`` is one of ``choices``."""
    options = list(choices)
    if value not in options:
        hint = did_you_mean(str(value), [str(o) for o in options])
        raise FieldError(field, f"must be one of {options}, got {value!r}{hint}")


def did_you_mean(name: str, known: list[str]) -> str:
    """``"; did you mean 'arcface'?"`` for the closest of ``known``, or ``""``."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
