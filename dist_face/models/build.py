"""The backbone of a run: built by name, or from the checkpoint ``model.init_backbone`` names."""

from __future__ import annotations

from torch import nn

from dist_face.config.schema import ModelConfig
from dist_face.models.checkpoint import load_backbone
from dist_face.models.factory import create, model_kwargs


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
        return load_backbone(cfg.init_backbone, cfg.name, **kwargs)
    return create(cfg.name, **kwargs)
