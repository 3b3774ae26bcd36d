"""``model.safetensors``: the backbone's weights with its name and options in the metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from dist_face.models import create
from dist_face.models.checkpoint import load_state_strict, unwrap

FORMAT = "dist_face.backbone"


def save_safetensors(
    model: nn.Module, path: str | os.PathLike[str], name: str, **create_kwargs: Any
) -> Path:
    """Write the weights (fp32 as trained) with ``format``, ``name`` and ``kwargs`` metadata.

    Args:
        model: the backbone (wrappers are removed).
        path: the ``.safetensors`` file.
        name: the registered backbone name.
        **create_kwargs: the options that rebuild it (JSON-encoded into the metadata).
    """
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share storage
    state = {
        k: v.detach().cpu().clone().contiguous() for k, v in unwrap(model).state_dict().items()
    }
    meta = {"format": FORMAT, "name": name, "kwargs": json.dumps(create_kwargs, sort_keys=True)}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    # safetensors creates its file 0600; give it the mode any other file gets (0644 under the
    # usual umask 022), as torch.save's model.pt and the ONNX file have
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp.replace(path)
    return path


def load_safetensors(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the backbone a :func:`save_safetensors` file describes.

    Raises:
        ValueError: the metadata does not describe a dist_face backbone, or the tensors do not
            fit (the message names the file).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: metadata does not describe a dist_face backbone")
    model = create(meta["name"], **json.loads(meta.get("kwargs", "{}")))
    load_state_strict(model, load_file(str(path)), source=str(path))
    return model
