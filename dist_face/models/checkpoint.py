"""Backbone-only checkpoints: a self-describing file for fine-tuning, evaluation and export.

The file is a ``torch.save`` of a plain dict, readable with ``torch.load(weights_only=True)``::

    {"format": "dist_face.backbone", "version": 1, "name": "iresnet50",
     "kwargs": {"embedding_size": 512, ...}, "state_dict": {...}}

:func:`load_backbone` rebuilds the network from the stored name and options. It also accepts a
raw state dict, such as InsightFace's ``model.pt``, when the caller names the backbone.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dist_face.models.factory import create

FORMAT = "dist_face.backbone"
VERSION = 1
# Wrappers add these to every key: DDP's ``module.``, torch.compile's ``_orig_mod.``.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_PLAIN = (bool, int, float, str, type(None))


def unwrap(model: nn.Module) -> nn.Module:
    """The bare backbone inside DDP / ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save_backbone(
    model: nn.Module,
    path: str | os.PathLike[str],
    name: str,
    state: Mapping[str, torch.Tensor] | None = None,
    **create_kwargs: Any,
) -> Path:
    """Write a backbone-only checkpoint (atomically).

    Args:
        model: the backbone, possibly wrapped by DDP or ``torch.compile``.
        path: destination file.
        name: the registered name that rebuilds it (``dist_face.models.create(name, ...)``).
        state: the weights to write instead of ``model.state_dict()`` (e.g. fp32 masters of
            a model that trains in bf16).
        **create_kwargs: the ``create`` options it was built with (plain bool/int/float/str
            values), e.g. ``embedding_size=128``.

    Returns:
        The path written.

    Raises:
        TypeError: an option value is not a plain scalar (it could not be loaded back with
            ``weights_only=True``).
    """
    for key, value in create_kwargs.items():
        if not isinstance(value, _PLAIN):
            raise TypeError(f"save_backbone: option {key}={value!r} is not a bool/int/float/str")
    if state is None:
        state = unwrap(model).state_dict()
    state = {k: v.detach().cpu() for k, v in state.items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "kwargs": dict(create_kwargs),
        "state_dict": state,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(payload, tmp)
        tmp.replace(path)
    except BaseException:  # a full disk: no partial file stays behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_backbone(
    path: str | os.PathLike[str], name: str | None = None, **kwargs: Any
) -> nn.Module:
    """Rebuild a backbone from a checkpoint written by :func:`save_backbone` or a raw state dict.

    Args:
        path: the checkpoint file.
        name: the backbone name. Optional for a :func:`save_backbone` file (if given it must
            match the stored one); required for a raw state dict (InsightFace ``model.pt``).
        **kwargs: ``create`` options; they override the stored ones (e.g. ``dropout``,
            ``grad_checkpointing``). Options that change tensor shapes make loading fail.

    Returns:
        The backbone with the checkpoint's weights, in training mode, on the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a backbone checkpoint, the names disagree, or keys are
            missing, unexpected or of the wrong shape (the message names them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: not a loadable backbone checkpoint ({reason})") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict, found {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        stored = obj.get("name")
        if name is not None and name != stored:
            raise ValueError(f"{path}: holds backbone {stored!r}, but {name!r} was asked for")
        name, state = stored, obj["state_dict"]
        kwargs = {**obj.get("kwargs", {}), **kwargs}
    else:
        if name is None:
            raise ValueError(f"{path}: a raw state dict does not say its backbone; pass name=")
        state = obj.get("state_dict", obj)
    model = create(name, **kwargs)
    load_state_strict(model, _strip_prefixes(state), source=str(path))
    return model


def load_state_strict(model: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """``model.load_state_dict(state)`` with errors that name every bad key.

    Raises:
        ValueError: missing keys, unexpected keys or shape mismatches (listed, with ``source``).
    """
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"missing keys: {_brief(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_brief(unexpected)}")
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            problems.append(f"{key}: not a tensor ({type(tensor).__name__})")
        elif key in expected and tensor.shape != expected[key].shape:
            problems.append(
                f"{key}: shape {list(tensor.shape)} in the checkpoint, "
                f"{list(expected[key].shape)} in the model"
            )
    if problems:
        kind = type(model).__name__
        raise ValueError(f"{source}: does not fit {kind}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a wrapper prefix shared by every key (``module.``, ``_orig_mod.``)."""
    out = dict(state)
    for prefix in _WRAPPER_PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def _brief(keys: list[str], limit: int = 8) -> str:
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
