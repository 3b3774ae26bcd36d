"""Building backbones by name, from keyword options or from the run config."""

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


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """Build the backbone of a run, starting from ``cfg.init_backbone`` when it is set.

    Args:
        cfg: the ``model`` section of the run config.

    Returns:
        The backbone (see :func:`create`), with the checkpoint's weights when
        ``cfg.init_backbone`` names one.

    Raises:
        ValueError: the checkpoint holds another backbone, or its tensors do not fit.
    """
    kwargs = model_kwargs(cfg)
    if cfg.init_backbone:
        from dist_face.models.checkpoint import load_backbone

        return load_backbone(cfg.init_backbone, cfg.name, **kwargs)
    return create(cfg.name, **kwargs)
