"""Backbone-only checkpoints: round trip, raw InsightFace-style state dicts, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import dist_face.models as M
from dist_face.config.schema import ModelConfig


def _trained_tiny(d: int = 64) -> nn.Module:
    torch.manual_seed(0)
    model = M.create("tiny", embedding_size=d)
    model(torch.randn(4, 3, 112, 112))  # move the BN statistics away from their defaults
    return model.eval()


def _same_outputs(a: nn.Module, b: nn.Module) -> None:
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def test_round_trip_rebuilds_by_stored_name(tmp_path: Path) -> None:
    model = _trained_tiny()
    path = M.save_backbone(model, tmp_path / "bb.pt", "tiny", embedding_size=64)
    raw = torch.load(path, weights_only=True)  # the file is readable without pickle code
    assert raw["format"] == "dist_face.backbone" and raw["name"] == "tiny"
    assert raw["kwargs"] == {"embedding_size": 64}
    loaded = M.load_backbone(path)
    assert type(loaded).__name__ == "TinyNet" and loaded.embedding_size == 64
    _same_outputs(model, loaded)
    # Non-shape options may be overridden at load time.
    assert M.load_backbone(path, dropout=0.3, grad_checkpointing=True).grad_checkpointing


def test_wrappers_are_unwrapped_on_save_and_prefixes_stripped_on_load(tmp_path: Path) -> None:
    model = _trained_tiny()

    class Wrapper(nn.Module):  # stands in for DDP, which keeps the network as ``.module``
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    M.save_backbone(Wrapper(model), tmp_path / "a.pt", "tiny", embedding_size=64)
    _same_outputs(model, M.load_backbone(tmp_path / "a.pt"))
    prefixed = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(prefixed, tmp_path / "ddp.pt")
    _same_outputs(model, M.load_backbone(tmp_path / "ddp.pt", "tiny", embedding_size=64))


def test_raw_state_dict_needs_a_name(tmp_path: Path) -> None:
    model = M.create("mbf")  # InsightFace's model.pt is exactly a bare state dict
    torch.save(model.state_dict(), tmp_path / "model.pt")
    _same_outputs(model, M.load_backbone(tmp_path / "model.pt", "mbf"))
    with pytest.raises(ValueError, match=r"model.pt: a raw state dict .* pass name="):
        M.load_backbone(tmp_path / "model.pt")


def test_errors_name_the_keys(tmp_path: Path) -> None:
    state = _trained_tiny().state_dict()
    broken = dict(state)
    del broken["fc.bias"]
    broken["head.extra"] = torch.zeros(3)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"broken.pt: does not fit TinyNet") as err:
        M.load_backbone(tmp_path / "broken.pt", "tiny", embedding_size=64)
    assert "missing keys: fc.bias" in str(err.value)
    assert "unexpected keys: head.extra" in str(err.value)

    M.save_backbone(_trained_tiny(), tmp_path / "d64.pt", "tiny", embedding_size=64)
    with pytest.raises(ValueError, match=r"fc.weight: shape \[64, 3136\] in the checkpoint, "):
        M.load_backbone(tmp_path / "d64.pt", embedding_size=128)
    with pytest.raises(ValueError, match=r"holds backbone 'tiny', but 'mbf' was asked for"):
        M.load_backbone(tmp_path / "d64.pt", "mbf")


def test_bad_files_and_options(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope.pt does not exist"):
        M.load_backbone(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pt: not a loadable backbone checkpoint"):
        M.load_backbone(tmp_path / "junk.pt", "tiny")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list.pt: expected a dict, found list"):
        M.load_backbone(tmp_path / "list.pt", "tiny")
    with pytest.raises(TypeError, match=r"option blocks=\[1, 2\] is not a bool/int/float/str"):
        M.save_backbone(_trained_tiny(), tmp_path / "x.pt", "tiny", blocks=[1, 2])


def test_build_backbone_starts_from_init_backbone(tmp_path: Path) -> None:
    model = _trained_tiny(d=32)
    path = M.save_backbone(model, tmp_path / "bb.pt", "tiny", embedding_size=32)
    built = M.build_backbone(ModelConfig(name="tiny", embedding_size=32, init_backbone=str(path)))
    _same_outputs(model, built)
    with pytest.raises(ValueError, match=r"fc.weight: shape"):
        M.build_backbone(ModelConfig(name="tiny", embedding_size=64, init_backbone=str(path)))


def test_the_factory_does_not_import_the_checkpoint_module() -> None:
    """``models.checkpoint`` imports ``models.factory``; the reverse would be a cycle."""
    import ast
    import inspect

    from dist_face.models import factory

    tree = ast.parse(inspect.getsource(factory))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("dist_face.models.checkpoint")}
