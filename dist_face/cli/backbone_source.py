"""The ``--run``/``--backbone`` arguments every model command shares, and loading from them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dist_face.models import create, load_backbone


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    """Add ``--run RUN | --backbone FILE`` (one required) and ``--name``."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory holding model.pt (written by the trainer)")
    src.add_argument("--backbone", help="backbone-only checkpoint (model.pt)")
    p.add_argument("--name", help="backbone name, needed for a raw InsightFace state dict")


def backbone_path(args: argparse.Namespace) -> Path:
    """The checkpoint file the arguments point at."""
    return Path(args.run) / "model.pt" if args.run else Path(args.backbone)


def load_from_args(args: argparse.Namespace) -> tuple[nn.Module, str, dict[str, Any]]:
    """Load the backbone; returns ``(model, name, create options)``.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: not a loadable backbone checkpoint (the message names the file).
    """
    path = backbone_path(args)
    model = load_backbone(path, name=args.name)
    stored = torch.load(path, map_location="cpu", weights_only=True)
    name = stored.get("name", args.name) if isinstance(stored, dict) else args.name
    kwargs = stored.get("kwargs", {}) if isinstance(stored, dict) else {}
    return model, str(name), dict(kwargs)


def untrained_like(name: str, kwargs: dict[str, Any], seed: int = 0) -> nn.Module:
    """A freshly initialised backbone of the same architecture (the baseline to beat)."""
    torch.manual_seed(seed)
    return create(name, **kwargs)
