"""Recipe lookup, ``--section.field=value`` overrides and the resolved-config dump.

A recipe is a Python file in ``configs/`` that defines ``config() -> RunConfig``; variants call
:func:`recipe` on their base and edit a few fields. A YAML file written by :func:`save_config`
(every run directory has one) is accepted in place of a recipe, so a run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_type_hints

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dist_face.config.base import ConfigError, FieldError
from dist_face.config.paths import absolute_paths
from dist_face.config.schema import RunConfig

#: The repository's recipe directory; ``DIST_FACE_CONFIGS`` points elsewhere.
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def config_dir() -> Path:
    """Return the directory searched for recipe names."""
    return Path(os.environ.get("DIST_FACE_CONFIGS", DEFAULT_CONFIG_DIR))


def list_recipes() -> list[str]:
    """Return the names of the recipes in :func:`config_dir`."""
    return sorted(p.stem for p in config_dir().glob("*.py") if not p.stem.startswith("_"))


def recipe(name_or_path: str) -> RunConfig:
    """Build the ``RunConfig`` of a recipe.

    Args:
        name_or_path: a recipe name (``debug_cpu``), a ``.py`` file defining ``config()``, or a
            ``.yaml`` file written by :func:`save_config`.

    Returns:
        A fresh, validated ``RunConfig``.

    Raises:
        ConfigError: the recipe does not exist or does not return a ``RunConfig``.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return _build(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(path)))
    if path.suffix != ".py":
        path = config_dir() / f"{name_or_path}.py"
    if not path.is_file():
        known = ", ".join(list_recipes()) or "none"
        raise ConfigError(f"unknown recipe {name_or_path!r} ({path} not found); known: {known}")
    module = _recipe_module(path)
    factory = getattr(module, "config", None)
    if not callable(factory):
        raise ConfigError(f"recipe {path} defines no config() function")
    cfg = factory()
    if not isinstance(cfg, RunConfig):
        raise ConfigError(f"recipe {path}: config() returned {type(cfg).__name__}, not RunConfig")
    return cfg


def apply_overrides(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """Return a new config with ``section.field=value`` overrides applied and validated.

    Args:
        cfg: the base config (left unchanged).
        overrides: items like ``--head.margin_args.scale=32`` or ``data.batch_size=64``; the
            leading dashes are optional. Lists use YAML syntax: ``--eval.targets=[a.bin,b.bin]``.

    Raises:
        ConfigError: an override is malformed, names an unknown key, has a value of the wrong
            type, fails a section's validation, or sets an argument (``head.margin_args.*``)
            that the chosen margin does not have. The message names the dotted key.
    """
    dotlist, keys = [], []
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        key, sep, _ = text.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form --section.field=value")
        dotlist.append(text)
        keys.append(key)
    base = OmegaConf.structured(cfg)
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"{key}: {reason}") from None
    out = _build(merged)
    args = [k.removeprefix("head.margin_args.") for k in keys if k.startswith("head.margin_args.")]
    if "head.margin_args" in keys:
        args += list(out.head.margin_args)
    from dist_face.heads.margins.margin_args import check_overridden_args, keep_on_switch

    try:
        check_overridden_args(out.head.margin, args)
    except FieldError as exc:
        raise ConfigError(f"head.{exc.field}: {exc.message}") from None
    if out.head.margin != cfg.head.margin:
        kept = keep_on_switch(cfg.head.margin, out.head.margin, out.head.margin_args, args)
        out = dataclasses.replace(out, head=dataclasses.replace(out.head, margin_args=kept))
    return out


def load_config(
    name_or_path: str, overrides: Sequence[str] = (), prepare: bool = False
) -> RunConfig:
    """Build a recipe and apply overrides: the one call entry points make.

    Relative file paths come back absolute, anchored at the working directory
    (:func:`~dist_face.config.paths.absolute_paths`). A recipe may define
    ``prepare(cfg) -> None``, which makes data the config needs and a fresh clone lacks
    (``debug_cpu`` makes its small dataset); it runs with ``prepare=True``, which the trainer
    passes (printing or inspecting a config writes nothing).
    """
    cfg = absolute_paths(apply_overrides(recipe(name_or_path), overrides))
    path = Path(name_or_path)
    if prepare and path.suffix not in (".yaml", ".yml"):
        module = _recipe_module(path if path.suffix == ".py" else config_dir() / f"{path}.py")
        hook = getattr(module, "prepare", None)
        if callable(hook):
            hook(cfg)
    return cfg


def _recipe_module(path: Path) -> Any:
    """Import the recipe file ``path`` (once per process)."""
    key = str(path.resolve())
    if key not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"dist_face_recipe_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[key] = module
    return _MODULES[key]


_MODULES: dict[str, Any] = {}


def to_yaml(cfg: RunConfig) -> str:
    """Render a config as YAML (the format :func:`recipe` reads back)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: RunConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(to_yaml(cfg))
    tmp.replace(path)
    return path


def _build(node: Any) -> RunConfig:
    """Turn a merged OmegaConf node into validated dataclasses, naming the failing key."""
    try:
        container = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{getattr(exc, 'full_key', '?')}: {str(exc).splitlines()[0]}") from None
    return _instantiate(RunConfig, container, prefix="")


def _instantiate(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Construct ``cls`` from a plain dict, children first, so errors carry their full path."""
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = values[f.name]
        child = hints[f.name]
        if dataclasses.is_dataclass(child) and isinstance(value, dict):
            value = _instantiate(child, value, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif isinstance(value, list) and getattr(child, "__origin__", None) is tuple:
            value = tuple(value)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise ConfigError(f"{prefix}{exc.field}: {exc.message}") from None
