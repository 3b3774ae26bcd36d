"""What the trainer's ``--print-config`` and ``--help-config [SECTION]`` print.

Field documentation is the docstring written under each field in
:mod:`dist_face.config.schema`, read from the source with :mod:`ast`, so the schema stays the
single place where a field is explained.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import sys
import textwrap
import types
import typing
from collections.abc import Sequence
from typing import Any, get_type_hints

from dist_face.config.base import ConfigError
from dist_face.config.loader import load_config, to_yaml
from dist_face.config.resolve import check_names, resolve_run
from dist_face.config.schema import RunConfig


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """One config field as ``--help-config`` lists it."""

    key: str
    """Dotted key, as overrides spell it (``train.max_steps``)."""
    type: str
    """The annotated type (``int``, ``float | None``, ``list[str]``)."""
    default: Any
    """The schema's default value."""
    doc: str
    """The field's docstring, on one line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--print-config`` and ``--help-config [SECTION]`` to the trainer's parser."""
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (recipe + overrides) as YAML and exit",
    )
    parser.add_argument(
        "--help-config",
        nargs="?",
        const="",
        default=None,
        metavar="SECTION",
        help=f"list the config fields (of one section: run, {', '.join(sections())}) with their "
        "types, defaults and documentation, and exit; with --config, also each value it sets",
    )


def wants_info(args: argparse.Namespace) -> bool:
    """True when the command line asks for ``--print-config`` or ``--help-config``."""
    return bool(args.print_config) or args.help_config is not None


def run_info(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """Print what ``--print-config`` / ``--help-config`` ask for; returns the exit code.

    Nothing is built and nothing is written besides standard output. A reader that closes
    the pipe early (``| head``) ends the output quietly.
    """
    try:
        cfg = load_config(args.config, overrides) if args.config else None
        if cfg is not None:
            check_names(cfg)  # as training does: an unknown name is no config to print
        if args.print_config:
            if cfg is None:
                raise ConfigError("--print-config needs --config RECIPE")
            text = to_yaml(resolve_run(cfg))
        else:
            text = format_fields(args.help_config or None, cfg)
    except ConfigError as exc:
        print(f"dist-face-train: error: bad configuration: {exc}", file=sys.stderr)
        return 2
    return write_stdout(text)


def write_stdout(text: str) -> int:
    """Write ``text`` to standard output; 0, also when the reader closed the pipe early."""
    from dist_face.cli.common import silence_stdout

    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
    return 0


def sections() -> list[str]:
    """Names of the config sections, in schema order."""
    hints = get_type_hints(RunConfig)
    return [
        f.name for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(hints[f.name])
    ]


def fields(section: str | None = None) -> list[FieldDoc]:
    """Every field (of ``section``, or of the whole config) with type, default and docs.

    Raises:
        ConfigError: ``section`` is not a section of the config.
    """
    known = sections()
    if section is not None and section not in (*known, "run"):
        raise ConfigError(
            f"unknown config section {section!r}; sections: run (top-level fields), "
            f"{', '.join(known)}"
        )
    out = []
    if section in (None, "run"):
        out += _fields_of(RunConfig, "", skip=frozenset(known))
    hints = get_type_hints(RunConfig)
    for name in known if section is None else [s for s in known if s == section]:
        out += _fields_of(hints[name], f"{name}.")
    return out


def format_fields(section: str | None, cfg: RunConfig | None = None) -> str:
    """The ``--help-config`` text: one block per field, ``key (type) = default`` then docs.

    Args:
        section: One section, or None for all.
        cfg: A resolved config; its value is shown where it differs from the default.
    """
    lines = []
    for f in fields(section):
        head = f"{f.key} ({f.type}) = {_show(f.default)}"
        if cfg is not None:
            value = _lookup(cfg, f.key)
            if value != f.default:
                head += f"   [this config: {_show(value)}]"
        lines.append(head)
        lines += textwrap.wrap(f.doc, 92, initial_indent="    ", subsequent_indent="    ")
    if section in (None, "head"):
        lines += _margin_args_text(cfg)
    lines.append("")
    lines.append(
        "Override any field with --section.field=value (lists in YAML: --eval.targets=[a,b])."
    )
    return "\n".join(lines) + "\n"


def _margin_args_text(cfg: RunConfig | None) -> list[str]:
    """Each margin's arguments (``head.margin_args``) with type, paper default and docs."""
    from dist_face.heads.margins.common import MARGINS
    from dist_face.heads.margins.margin_args import margin_args  # lazy: the margins import torch

    lines = ["", "head.margin_args of each margin (--head.margin_args.NAME=VALUE):"]
    for name in MARGINS.names():
        lines.append(f"  {name}:" + ("" if margin_args(name) else " (no arguments)"))
        for arg in margin_args(name).values():
            head = f"    {arg.name} ({_type_name(arg.type)}) = {_show(arg.default)}"
            if cfg is not None and cfg.head.margin == name and arg.name in cfg.head.margin_args:
                value = cfg.head.margin_args[arg.name]
                if value != arg.default:
                    head += f"   [this config: {_show(value)}]"
            lines.append(head)
            lines += textwrap.wrap(arg.doc, 92, initial_indent=" " * 8, subsequent_indent=" " * 8)
    return lines


def _fields_of(cls: type, prefix: str, skip: frozenset[str] = frozenset()) -> list[FieldDoc]:
    hints = get_type_hints(cls)
    docs = _attribute_docs(cls)
    default = cls()
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        out.append(
            FieldDoc(
                f"{prefix}{f.name}",
                _type_name(hints[f.name]),
                getattr(default, f.name),
                docs.get(f.name, ""),
            )
        )
    return out


@functools.cache
def _attribute_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` from the string literal under each annotated field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return str(hint)


def _lookup(cfg: RunConfig, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, tuple):
        return str(list(value))
    return str(value)
