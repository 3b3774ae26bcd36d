"""Typed run configuration: schema, recipes and overrides."""

from dist_face.config.base import ConfigError, FieldError, require, require_choice
from dist_face.config.loader import (
    apply_overrides,
    list_recipes,
    load_config,
    recipe,
    save_config,
    to_yaml,
)
from dist_face.config.schema import (
    AuxLossConfig,
    CheckpointConfig,
    DataConfig,
    DistConfig,
    EvalConfig,
    HeadConfig,
    MetricsConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)

__all__ = [
    "AuxLossConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DistConfig",
    "EvalConfig",
    "FieldError",
    "HeadConfig",
    "MetricsConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "list_recipes",
    "load_config",
    "recipe",
    "require",
    "require_choice",
    "save_config",
    "to_yaml",
]
