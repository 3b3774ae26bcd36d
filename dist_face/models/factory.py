"""Building backbones by name from keyword options, and the options a run config sets.

Building a run's backbone, which may start from a checkpoint, is :mod:`dist_face.models.build`:
this module imports no checkpoint code, so the checkpoint module can import it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from dist_face.config.schema import ModelConfig
from dist_face.models.registry import BACKBONES


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone.

    Args:
        name: a registered name (``dist_face.models.names()``), e.g. ``iresnet50``.
        **kwargs: options of that backbone. Every backbone takes ``embedding_size`` (D, default
            512), ``dropout`` (before the embedding FC), ``channels_last`` and
            ``grad_checkpointing``; ViTs also take ``mask_ratio`` and ``drop_path``, ConvNeXts
            ``drop_path``.

    Returns:
        An ``nn.Module`` mapping ``[B, 3, 112, 112]`` images in [-1, 1] to ``[B, D]`` fp32
        embeddings, in training mode, on the CPU.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        TypeError: an option the backbone does not take (the message lists the ones it takes).
    """
    factory = BACKBONES.get(name)
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise TypeError(f"backbone {name!r}: {exc}; it takes {options(name)}") from None
    if kwargs.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model


def options(name: str) -> list[str]:
    """Keyword options the backbone ``name`` accepts, sorted."""
    model_cls = inspect.signature(BACKBONES.get(name)).return_annotation
    if isinstance(model_cls, str):  # postponed annotations: resolve against the factory's module
        model_cls = getattr(inspect.getmodule(BACKBONES.get(name)), model_cls)
    params = inspect.signature(model_cls.__init__).parameters.values()
    return sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def names() -> list[str]:
    """Registered backbone names, sorted."""
    return BACKBONES.names()


def model_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """The ``create`` options a :class:`ModelConfig` sets (unset optional ones are left out)."""
    kwargs: dict[str, Any] = {
        "embedding_size": cfg.embedding_size,
        "dropout": cfg.dropout,
        "channels_last": cfg.channels_last,
        "grad_checkpointing": cfg.grad_checkpointing,
    }
    if cfg.drop_path is not None:
        kwargs["drop_path"] = cfg.drop_path
    if cfg.mask_ratio is not None:
        kwargs["mask_ratio"] = cfg.mask_ratio
    return kwargs
