"""Face-embedding backbones: single-device ``nn.Module``s with no distributed code.

``create(name, **options)`` builds one by name; ``build_backbone(cfg.model)`` builds the one a
run config asks for. Importing this package registers every backbone.
"""

from dist_face.models import convnext, iresnet, mobilefacenet, tiny, vit  # noqa: F401 (register)
from dist_face.models.base import INPUT_SIZE, Backbone, count_parameters
from dist_face.models.build import build_backbone
from dist_face.models.checkpoint import load_backbone, save_backbone
from dist_face.models.factory import create, model_kwargs, names, options
from dist_face.models.registry import BACKBONES

__all__ = [
    "BACKBONES",
    "INPUT_SIZE",
    "Backbone",
    "build_backbone",
    "count_parameters",
    "create",
    "load_backbone",
    "model_kwargs",
    "names",
    "options",
    "save_backbone",
]
