"""Recipes, overrides and their errors."""

from __future__ import annotations

import pytest

from dist_face.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    list_recipes,
    load_config,
    recipe,
    save_config,
)


def test_good_override_changes_only_that_field() -> None:
    base = RunConfig()
    cfg = apply_overrides(
        base, ["--head.margin_args.scale=32", "--data.batch_size=64", "optim.name=adamw"]
    )
    assert (cfg.head.margin_args, cfg.data.batch_size, cfg.optim.name) == (
        {"scale": 32},
        64,
        "adamw",
    )
    assert base.head.margin_args == {}  # the base is not mutated (unset: the margin's default)
    assert cfg.model == base.model


def test_list_override_uses_yaml_syntax() -> None:
    cfg = apply_overrides(RunConfig(), ["--eval.targets=[a.bin,b.bin]"])
    assert cfg.eval.targets == ["a.bin", "b.bin"]


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"head\.scael"):
        apply_overrides(RunConfig(), ["--head.scael=32"])
    with pytest.raises(ConfigError, match=r"nosection"):
        apply_overrides(RunConfig(), ["--nosection.x=1"])


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"data\.batch_size"):
        apply_overrides(RunConfig(), ["--data.batch_size=lots"])


def test_bad_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^head\.sample_rate: must be in \[0, 1\]"):
        apply_overrides(RunConfig(), ["--head.sample_rate=1.5"])
    with pytest.raises(ConfigError, match=r"^data\.backend: must be one of"):
        apply_overrides(RunConfig(), ["--data.backend=mxnet"])
    with pytest.raises(ConfigError, match=r"^head\.keep_projections_mb: must be >= 0, got -1"):
        apply_overrides(RunConfig(), ["--head.keep_projections_mb=-1"])


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides(RunConfig(), ["--head.margin_args.scale"])


def test_every_recipe_builds() -> None:
    names = list_recipes()
    assert {"debug_cpu", "quickstart"} <= set(names)
    for name in names:
        assert isinstance(recipe(name), RunConfig)


def test_unknown_recipe_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="debug_cpu"):
        recipe("no_such_recipe")


def test_resolved_config_round_trips_through_yaml(tmp_path) -> None:
    cfg = load_config("debug_cpu", ["--head.margin_args.scale=16"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert recipe(str(path)) == cfg
