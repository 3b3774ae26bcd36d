"""A margin's options are the keyword parameters of its class: names, types and paper defaults.

The config names a margin (``head.margin``) and may set some of its options
(``head.margin_args``, e.g. ``--head.margin_args.scale=32``). Everything else about an option
is read from the registered class's ``__init__`` signature: its name, its type (the
annotation) and its paper default (the default value); its one-line documentation comes from
the class docstring's ``Args:`` section. So a new margin is one module with a registered class
and nothing else to edit.

Parameters named in :data:`RUN_ARGS` are not options: the builder passes them from the run
(the number of classes, the head's sample rate, the run's seed) when the signature has them.

A margin validates its option values in ``__init__`` with
:func:`~dist_face.config.base.require`; :func:`check_margin_args` builds the margin once so that
a bad value is a config error at load time, naming ``head.margin_args.<name>``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import re
import typing
from collections.abc import Mapping
from typing import Any

from dist_face.config.base import FieldError
from dist_face.heads.margins.common import MARGINS, Margin

logger = logging.getLogger(__name__)

RUN_ARGS = frozenset({"num_classes", "sample_rate", "seed"})
"""Constructor parameters the builder fills from the run; never options of ``margin_args``."""


SHARED_ARGS = frozenset({"scale"})
"""Options that mean the same for every margin that has them (the logit scale ``s``). Only
these survive a switch of ``head.margin`` on the command line: another margin's ``margin``
is another quantity (radians for ArcFace, a cosine for CosFace)."""


@dataclasses.dataclass(frozen=True)
class MarginArg:
    """One option of a margin."""

    name: str
    """Keyword of the class's ``__init__`` (``scale``)."""
    type: type
    """float, int or bool (the annotation)."""
    default: Any
    """The paper default (the signature's default)."""
    doc: str
    """The class docstring's ``Args:`` line for it, or ``""``."""


@functools.cache
def margin_args(name: str) -> dict[str, MarginArg]:
    """The options of the registered margin ``name``, in signature order.

    Raises:
        KeyError: no such margin (the message lists the known ones).
    """
    cls = MARGINS.get(name)
    hints = typing.get_type_hints(cls.__init__)
    docs = _arg_docs(cls)
    out = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.name in RUN_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"margin {name!r}: option {p.name!r} needs a default (its paper's)")
        out[p.name] = MarginArg(
            p.name, hints.get(p.name, type(p.default)), p.default, docs.get(p.name, "")
        )
    return out


def default_args(name: str) -> dict[str, Any]:
    """``{option: paper default}`` of the margin ``name``."""
    return {k: a.default for k, a in margin_args(name).items()}


def unknown_arg(margin: str, key: str) -> FieldError:
    """The one-line error for an option ``key`` that ``margin`` does not have."""
    known = ", ".join(margin_args(margin)) or "none"
    return FieldError(
        f"margin_args.{key}",
        f"margin {margin!r} has no argument {key!r} (its arguments: {known})",
    )


def resolve_margin_args(margin: str, given: Mapping[str, Any], warn: bool = True) -> dict[str, Any]:
    """Every option of ``margin``: the paper defaults updated with ``given``, typed.

    A given key that ``margin`` does not have is dropped (with a warning when ``warn``): a
    recipe's ``scale`` when the command line switches to ``softmax``. The command line's own
    keys are checked strictly by :func:`check_overridden_args`. Idempotent.

    Raises:
        FieldError: a value of the wrong type (``margin_args.<key>``).
    """
    args = margin_args(margin)
    out = default_args(margin)
    for key, value in given.items():
        if key not in args:
            if warn:
                logger.warning(
                    "head.margin_args.%s=%s is not an argument of margin %r; ignored",
                    key,
                    value,
                    margin,
                )
            continue
        out[key] = _typed(args[key], value)
    return out


def build_from_args(
    margin: str,
    given: Mapping[str, Any],
    *,
    num_classes: int = 10_000,
    sample_rate: float = 1.0,
    seed: int = 0,
    warn: bool = True,
) -> Margin:
    """The margin ``margin`` built from its options and the run's values it asks for.

    Raises:
        FieldError: a bad option value (``margin_args.<key>: ...``).
    """
    cls = MARGINS.get(margin)
    kwargs = resolve_margin_args(margin, given, warn=warn)
    params = inspect.signature(cls.__init__).parameters
    run = {"num_classes": num_classes, "sample_rate": sample_rate, "seed": seed}
    kwargs.update({k: v for k, v in run.items() if k in params})
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise FieldError(f"margin_args.{exc.field}", exc.message) from None


def check_margin_args(margin: str, given: Mapping[str, Any]) -> None:
    """Check ``head.margin_args`` when the config is built (unknown margins: left to the caller).

    A key that no registered margin has is refused (a typo); a key of another margin is left
    for :func:`resolve_margin_args` to drop, so that a recipe's options survive a switch of
    margin on the command line. Values are checked by building the margin once.

    Raises:
        FieldError: naming ``margin_args.<key>``, the margin and its arguments.
    """
    if margin not in MARGINS:
        return
    anywhere = {k for name in MARGINS.names() for k in margin_args(name)}
    for key in given:
        if key not in anywhere:
            raise unknown_arg(margin, key)
    build_from_args(margin, given, warn=False)


def keep_on_switch(
    before: str, after: str, given: Mapping[str, Any], overridden: list[str]
) -> dict[str, Any]:
    """``head.margin_args`` after the command line switched ``head.margin`` from ``before``.

    The arguments a recipe set for its own margin are dropped, with a warning naming them,
    except those given on the command line and :data:`SHARED_ARGS`.
    """
    kept = {k: v for k, v in given.items() if k in overridden or k in SHARED_ARGS}
    dropped = sorted(set(given) - set(kept))
    if dropped:
        logger.warning(
            "head.margin_args %s of margin %r dropped: the command line chose margin %r",
            ", ".join(f"{k}={given[k]}" for k in dropped),
            before,
            after,
        )
    return kept


def check_overridden_args(margin: str, keys: list[str]) -> None:
    """Refuse command-line options that ``margin`` does not have.

    Raises:
        FieldError: naming the first such key, the margin and its arguments.
    """
    if margin not in MARGINS:
        return
    for key in keys:
        if key not in margin_args(margin):
            raise unknown_arg(margin, key)


def _typed(arg: MarginArg, value: Any) -> Any:
    """``value`` as ``arg.type``: an int where a float is expected is widened, nothing else."""
    t = arg.type
    if t is bool:
        ok = isinstance(value, bool)
    elif t is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif t is int:
        ok = not isinstance(value, bool) and (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        )
        value = int(value) if ok else value
    else:
        ok = True
    if not ok:
        raise FieldError(f"margin_args.{arg.name}", f"must be {t.__name__}, got {value!r}")
    return value


def _arg_docs(cls: type) -> dict[str, str]:
    """``{option: text}`` from the ``Args:`` sections of the class and its bases' docstrings."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = inspect.cleandoc(klass.__dict__.get("__doc__") or "")
        section = re.search(r"^Args:\n((?:[ \t]+.*\n?|\n)+)", text, re.M)
        if not section:
            continue
        for m in re.finditer(r"^\s{4}(\w[\w, ]*):\s*(.*(?:\n\s{8,}.*)*)", section.group(1), re.M):
            for name in m.group(1).split(","):
                docs[name.strip()] = " ".join(m.group(2).split())
    return docs
