"""ONNX and safetensors export: onnxruntime parity per backbone family, model_zoo, checker rules."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dist_face.cli.export import main as export_main  # noqa: E402
from dist_face.data.synthetic.faces import identity_params, render_sample  # noqa: E402
from dist_face.export.onnx_export import (  # noqa: E402
    ExportError,
    check_parity,
    export_onnx,
    submission_problems,
)
from dist_face.export.safetensors_export import load_safetensors, save_safetensors  # noqa: E402
from dist_face.models import create, save_backbone  # noqa: E402
from dist_face.models.convnext import ConvNeXt  # noqa: E402
from dist_face.models.iresnet import IResNet  # noqa: E402
from dist_face.models.mobilefacenet import MobileFaceNet  # noqa: E402
from dist_face.models.vit import VisionTransformer  # noqa: E402

D = 32
# one shallow member of each family: the same modules and export path as the registered
# networks, at a size that exports in about a second
FAMILIES = {
    "iresnet": lambda: IResNet((1, 1, 1, 1), embedding_size=D),
    "iresnet_se": lambda: IResNet((1, 1, 1, 1), se=True, embedding_size=D),
    "mobilefacenet": lambda: MobileFaceNet((1, 1, 1, 1), 1, embedding_size=D),
    "convnext": lambda: ConvNeXt((1, 1, 1, 1), (16, 16, 32, 32), embedding_size=D),
    "vit": lambda: VisionTransformer(64, 2, 4, embedding_size=D),
}


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Give the BatchNorms non-trivial running statistics, then switch to eval mode."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 112, 112))
    return model.eval()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = _trained_like(FAMILIES[request.param]())
    path = export_onnx(model, tmp_path_factory.mktemp(request.param) / "model.onnx")
    return request.param, model, path


def test_onnxruntime_matches_torch_for_every_family(exported) -> None:
    _, model, path = exported
    report = check_parity(path, model, batch_sizes=(3, 5))
    assert report.max_relative_error <= 1e-4


def test_graph_interface_follows_the_conventions(exported) -> None:
    _, _, path = exported
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = [
        i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}
    ]
    dims = inp.type.tensor_type.shape.dim
    assert (
        inp.name == "data"
        and dims[0].dim_param
        and [d.dim_value for d in dims[1:]] == [3, 112, 112]
    )
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    (out,) = proto.graph.output
    assert (
        out.type.tensor_type.shape.dim[0].dim_param
        and out.type.tensor_type.shape.dim[1].dim_value == D
    )
    assert submission_problems(path) == []


def _aligned_face_bgr() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    rgb = np.asarray(render_sample(identity_params(0, 7), rng))
    return rgb, np.ascontiguousarray(rgb[:, :, ::-1])


def _torch_embedding(model: torch.nn.Module, rgb: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    with torch.no_grad():
        return model(x)[0].numpy()


def test_model_zoo_loads_the_file_and_gives_the_same_embedding(exported) -> None:
    pytest.importorskip("insightface")
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    _, model, path = exported
    zoo = get_model(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(zoo, ArcFaceONNX)
    assert (zoo.input_mean, zoo.input_std) == (127.5, 127.5)
    rgb, bgr = _aligned_face_bgr()
    got = zoo.get_feat(bgr)[0]
    want = _torch_embedding(model, rgb)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_baked_normalisation_takes_raw_pixels_and_model_zoo_sees_it(tmp_path: Path) -> None:
    pytest.importorskip("insightface")
    from insightface.model_zoo import get_model

    torch.manual_seed(0)
    model = _trained_like(create("tiny", embedding_size=D))
    path = export_onnx(model, tmp_path / "baked.onnx", bake_normalization=True)
    assert check_parity(path, model, bake_normalization=True).max_relative_error <= 1e-4
    zoo = get_model(str(path), providers=["CPUExecutionProvider"])
    assert (zoo.input_mean, zoo.input_std) == (0.0, 1.0)  # found the Sub and Mul up front
    rgb, bgr = _aligned_face_bgr()
    want = _torch_embedding(model, rgb)
    np.testing.assert_allclose(
        zoo.get_feat(bgr)[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max()
    )
    # without baking, raw pixels would be wrong: the check is not vacuous
    plain = export_onnx(model, tmp_path / "plain.onnx")
    with pytest.raises(ExportError, match="differs from torch"):
        check_parity(plain, model, bake_normalization=True)


def test_parity_check_catches_a_different_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _trained_like(create("tiny", embedding_size=D))
    path = export_onnx(model, tmp_path / "m.onnx")
    with torch.no_grad():
        model.fc.weight.mul_(1.01)
    with pytest.raises(ExportError, match="differs from torch"):
        check_parity(path, model)


def test_submission_rules_reject_fp16_weights_static_batch_and_tiny_graphs(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((3, 4), np.float16), name="w16")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w16"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])],
        [w],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph), str(path))
    problems = " | ".join(submission_problems(path))
    assert "rank 2" in problems and "at least 8" in problems and "w16" in problems


def test_safetensors_round_trip_keeps_name_options_and_outputs(tmp_path: Path) -> None:
    from safetensors import safe_open

    torch.manual_seed(0)
    model = _trained_like(create("tiny", embedding_size=D))
    path = save_safetensors(model, tmp_path / "model.safetensors", "tiny", embedding_size=D)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["name"] == "tiny" and json.loads(meta["kwargs"]) == {"embedding_size": D}
    back = load_safetensors(path).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)


def test_the_safetensors_file_gets_the_usual_mode_under_the_umask(tmp_path: Path) -> None:
    model = create("tiny", embedding_size=D)
    old = os.umask(0o022)
    try:
        path = save_safetensors(model, tmp_path / "model.safetensors", "tiny", embedding_size=D)
        torch.save({}, tmp_path / "model.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # was 0600, unreadable to the group
    assert stat.S_IMODE((tmp_path / "model.pt").stat().st_mode) == 0o644


def test_cli_writes_onnx_and_safetensors_and_rejects_a_missing_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    torch.manual_seed(0)
    ckpt = save_backbone(
        create("tiny", embedding_size=D), tmp_path / "run" / "model.pt", "tiny", embedding_size=D
    )
    out = tmp_path / "export" / "model.onnx"
    assert export_main(["--run", str(ckpt.parent), "--out", str(out), "--safetensors"]) == 0
    assert out.is_file() and out.with_suffix(".safetensors").is_file()
    assert load_safetensors(out.with_suffix(".safetensors")).embedding_size == D
    capsys.readouterr()
    assert export_main(["--backbone", str(tmp_path / "nope.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.pt does not exist" in err[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iresnet18", "iresnet_se50", "mbf", "convnext_t", "vit_t"])
def test_registered_backbones_export_with_parity(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create(name, embedding_size=128).eval()
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    assert check_parity(path, model).max_relative_error <= 1e-4
    assert submission_problems(path) == []
