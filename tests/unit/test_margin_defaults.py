"""A margin chosen by name gets its paper's values; arguments it lacks are refused or dropped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dist_face.config import ConfigError, HeadConfig, RunConfig, apply_overrides, load_config
from dist_face.config.resolve import resolve_run
from dist_face.heads.build import build_margin
from dist_face.heads.margins.margin_args import margin_args
from tests.helpers.distributed import run_distributed

C = 100

# The papers' values, written out independently of the margin classes' signatures:
# margin -> {attribute of the built margin module: value}.
PAPER = {
    "cosface": {"scale": 64.0, "margin": 0.35},
    "arcface": {"scale": 64.0, "margin": 0.5, "easy_margin": False, "straight_through": False},
    "combined": {"scale": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2},
    "sphereface": {
        "m": 4,
        "lambda_base": 1000.0,
        "lambda_gamma": 0.12,
        "lambda_power": 1.0,
        "lambda_min": 5.0,
    },
    "lsoftmax": {
        "m": 4,
        "lambda_base": 1000.0,
        "lambda_gamma": 2.5e-5,
        "lambda_power": 35.0,
        "lambda_min": 0.0,
    },
    "curricularface": {"scale": 64.0, "margin": 0.5, "momentum": 0.01},
    "uniface": {"scale": 64.0, "margin": 0.4, "neg_weight": 1.0},
    "normface": {"scale": 64.0},
    "adaface": {"scale": 64.0, "margin": 0.4, "h": 0.333, "momentum": 0.01},
    "magface": {
        "scale": 64.0,
        "l_a": 10.0,
        "u_a": 110.0,
        "l_m": 0.45,
        "u_m": 0.8,
        "lambda_g": 35.0,
    },
    "elasticface_arc": {"scale": 64.0, "margin": 0.5, "std": 0.05},
    "elasticface_cos": {"scale": 64.0, "margin": 0.35, "std": 0.05},
    "elasticface_arc_plus": {"scale": 64.0, "margin": 0.5, "std": 0.0175},
    "elasticface_cos_plus": {"scale": 64.0, "margin": 0.35, "std": 0.02},
    "subcenter_arcface": {"scale": 64.0, "margin": 0.5, "sub_centers": 3},
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_margin_by_name_gets_its_paper_values(name: str) -> None:
    margin = build_margin(HeadConfig(margin=name), C)
    got = {k: getattr(margin, k) for k in PAPER[name]}
    assert got == pytest.approx(PAPER[name])


def test_every_registered_margin_has_typed_documented_arguments() -> None:
    from dist_face.heads import MARGINS

    assert set(MARGINS.names()) == set(PAPER) | {"softmax"}
    for name in MARGINS.names():
        for arg in margin_args(name).values():
            assert arg.type in (float, int, bool), (name, arg)
            assert arg.doc, f"{name}: argument {arg.name} has no line in the class's Args:"


def test_uniface_bias_starts_at_log_10_c_r() -> None:
    margin = build_margin(HeadConfig(margin="uniface", sample_rate=0.5), C)
    assert float(margin.bias.detach()) == pytest.approx(
        torch.log(torch.tensor(10.0 * C * 0.5)).item()
    )


def test_cosface_alone_on_the_quickstart_recipe_trains_with_m_035() -> None:
    """The recipe's scale (32) is kept; the margin is CosFace's, not ArcFace's leftover 0."""
    cfg = load_config("quickstart", ["--head.margin=cosface"])
    margin = build_margin(cfg.head, C)
    assert (margin.margin, margin.scale) == (0.35, 32.0)


def test_explicit_values_win_over_defaults() -> None:
    cfg = apply_overrides(RunConfig(), ["--head.margin=cosface", "--head.margin_args.margin=0.2"])
    assert build_margin(cfg.head, C).margin == 0.2


@pytest.mark.parametrize(
    ("margin", "field", "value", "known"),
    [
        ("cosface", "easy_margin", "true", "scale, margin"),
        ("arcface", "m3", "0.35", "scale, margin, easy_margin, straight_through"),
        ("softmax", "scale", "32", "none"),
    ],
)
def test_overriding_an_argument_the_margin_lacks_is_an_error(
    margin: str, field: str, value: str, known: str
) -> None:
    msg = (
        rf"^head\.margin_args\.{field}: margin '{margin}' has no argument '{field}' "
        rf"\(its arguments: {known}\)$"
    )
    with pytest.raises(ConfigError, match=msg):
        apply_overrides(
            RunConfig(), [f"--head.margin={margin}", f"--head.margin_args.{field}={value}"]
        )


def test_an_argument_no_margin_has_is_an_error_in_a_recipe_too() -> None:
    cfg = RunConfig()
    cfg.head.margin_args = {"scael": 32.0}  # what a recipe's typo does
    with pytest.raises(ConfigError, match=r"head\.margin_args\.scael: margin 'arcface' has no"):
        apply_overrides(cfg, [])


def test_recipe_argument_the_margin_lacks_is_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = load_config("quickstart", ["--head.margin=softmax"])  # the recipe sets scale = 32
    with caplog.at_level(logging.WARNING):
        head = resolve_run(cfg).head
    assert head.margin_args == {}
    assert "head.margin_args.scale=32.0 is not an argument of margin 'softmax'" in caplog.text


def test_switching_margin_drops_the_recipes_own_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """glint360k_r100's CosFace m = 0.4 is a cosine; ArcFace's m is radians: not carried over."""
    with caplog.at_level(logging.WARNING):
        cfg = load_config("glint360k_r100", ["--head.margin=arcface"])
    assert (build_margin(cfg.head, C).margin, build_margin(cfg.head, C).scale) == (0.5, 64.0)
    assert "margin=0.4 of margin 'cosface' dropped" in caplog.text


def test_resolution_is_idempotent_and_lists_only_the_margins_arguments() -> None:
    cfg = resolve_run(RunConfig(head=HeadConfig(margin="cosface")))
    assert resolve_run(cfg) == cfg
    assert cfg.head.margin_args == {"scale": 64.0, "margin": 0.35}


def _config_yaml(rank: int, world: int, shards: str, out: str) -> dict:
    from dist_face.dist import Topology
    from dist_face.train.build import build_trainer

    cfg = load_config(
        "debug_cpu",
        [
            f"--data.root={shards}",
            f"--output_root={out}",
            "--name=cos",
            "--eval.targets=[]",
            "--data.num_workers=0",
            "--head.margin=cosface",
        ],
    )
    trainer, plan = build_trainer(cfg, Topology.from_env(), torch.device("cpu"))
    margin = trainer.step_fn.loss_fn.margin
    saved = OmegaConf.to_container(OmegaConf.load(plan.run_dir / "config.yaml"))
    return {"margin": (margin.scale, margin.margin), "head": saved["head"]}


def test_run_config_yaml_shows_the_resolved_margin(color_shards: Path, tmp_path: Path) -> None:
    (out,) = run_distributed(_config_yaml, 1, str(color_shards), str(tmp_path))
    assert out["margin"] == (32.0, 0.35)
    head = out["head"]
    assert (head["margin"], head["margin_args"]) == ("cosface", {"scale": 32.0, "margin": 0.35})
    assert head["update"] == "sparse"  # unset resolves to what trains
