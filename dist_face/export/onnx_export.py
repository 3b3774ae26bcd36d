"""ONNX export of a backbone, checked against torch with onnxruntime.

The graph has one input ``data`` ``float32 [N, 3, 112, 112]`` with a symbolic batch ``N``
and one output ``embedding`` ``float32 [N, D]`` (not L2-normalised), opset 17, fp32
initializers. The input is RGB normalised as ``(x/255 − 0.5)/0.5`` (the InsightFace
convention: ``model_zoo`` feeds BGR images with ``swapRB``, mean = std = 127.5); with
``bake_normalization`` it is raw 0–255 RGB and the graph starts with the ``Sub`` and ``Mul`` by
which ``model_zoo`` recognises an in-graph normalisation.

The exporter's own check (:func:`check_parity`) runs the file with onnxruntime on random
batches of 3 and 5 and compares with the torch model. :func:`submission_problems` applies the
MFR submission checker's rules.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dist_face.models import INPUT_SIZE

INPUT_NAME = "data"
OUTPUT_NAME = "embedding"
OPSET = 17
#: Element types of 4 bytes or more (FLOAT, INT32, INT64, DOUBLE, UINT32, UINT64).
_WIDE_TYPES = {1, 6, 7, 11, 12, 13}


class ExportError(RuntimeError):
    """The exported file fails its own check; the message says which and by how much."""


class _Deployable(nn.Module):
    """The backbone in eval mode, optionally preceded by the pixel normalisation."""

    def __init__(self, backbone: nn.Module, bake_normalization: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.bake = bake_normalization

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bake:
            # (x/255 - 0.5)/0.5 written as a Sub then a Mul, the pattern model_zoo looks for
            x = (x - 127.5) * (1.0 / 127.5)
        return self.backbone(x)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    bake_normalization: bool = False,
    opset: int = OPSET,
) -> Path:
    """Write ``model`` as ONNX (see the module docstring for the graph's interface).

    Args:
        model: a backbone taking ``[B, 3, 112, 112]`` inputs in [-1, 1]; it is put in eval mode.
        path: the ``.onnx`` file to write (atomically).
        bake_normalization: take raw 0–255 RGB pixels instead of normalised ones.
        opset: ONNX opset (≥ 17).

    Returns:
        The path written.
    """
    import onnx

    model = model.float().eval()
    wrapper = _Deployable(model, bake_normalization).eval()
    dummy = torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE) * (255.0 if bake_normalization else 1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(tmp))
    if bake_normalization:
        _normalisation_first(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def _normalisation_first(proto: object) -> None:
    """Name the input's Sub and Mul ``Sub_normalize``/``Mul_normalize`` and put them first.

    They read only the input and constants, so moving them to the front keeps the node list
    topologically sorted; ``model_zoo`` inspects the first 8 nodes.
    """
    nodes = list(proto.graph.node)  # type: ignore[attr-defined]
    sub = next(n for n in nodes if n.op_type == "Sub" and INPUT_NAME in n.input)
    mul = next(n for n in nodes if n.op_type == "Mul" and sub.output[0] in n.input)
    # constants they read (Constant nodes) must stay before them
    needed = {i for n in (sub, mul) for i in n.input}
    consts = [n for n in nodes if n.op_type == "Constant" and set(n.output) & needed]
    sub.name, mul.name = "Sub_normalize", "Mul_normalize"
    head = [*consts, sub, mul]
    rest = [n for n in nodes if all(n is not h for h in head)]
    del proto.graph.node[:]  # type: ignore[attr-defined]
    proto.graph.node.extend(head + rest)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ParityReport:
    """onnxruntime against torch on random batches."""

    batch_sizes: tuple[int, ...]
    """Batch sizes run."""
    max_relative_error: float
    """``max |onnx − torch| / max |torch|`` over every batch."""


def check_parity(
    path: str | os.PathLike[str],
    model: nn.Module,
    bake_normalization: bool = False,
    batch_sizes: tuple[int, ...] = (3, 5),
    rtol: float = 1e-4,
    seed: int = 0,
) -> ParityReport:
    """Run the ONNX file with onnxruntime and compare with ``model`` (dynamic batch included).

    Raises:
        ExportError: an output's shape differs or the relative error exceeds ``rtol``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    model = model.float().eval()
    worst = 0.0
    for b in batch_sizes:
        pixels = torch.randint(0, 256, (b, 3, INPUT_SIZE, INPUT_SIZE), generator=gen).float()
        normalised = pixels / 127.5 - 1.0
        fed = pixels if bake_normalization else normalised
        (got,) = session.run(None, {INPUT_NAME: fed.numpy()})
        with torch.no_grad():
            want = model(normalised).numpy()
        if got.shape != want.shape:
            raise ExportError(f"{path}: batch {b} gives {got.shape}, torch {want.shape}")
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
        worst = max(worst, err)
    if worst > rtol:
        raise ExportError(f"{path}: onnxruntime differs from torch by {worst:.2e} (> {rtol:g})")
    return ParityReport(batch_sizes=tuple(batch_sizes), max_relative_error=worst)


def submission_problems(
    path: str | os.PathLike[str], max_dim: int = 1024, max_bytes: int = 1 << 30
) -> list[str]:
    """The MFR submission checker's rules that the file breaks (empty when it passes).

    Rules: a rank-4 input whose batch dimension is symbolic, exactly one output, at least 8
    nodes, every initializer at least 4 bytes per element, feature dimension ≤ ``max_dim``,
    file size ≤ ``max_bytes``.
    """
    import onnx

    proto = onnx.load(str(path))
    problems = []
    inputs = [
        i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}
    ]
    if len(inputs) != 1:
        problems.append(f"{len(inputs)} inputs, expected 1")
    else:
        dims = inputs[0].type.tensor_type.shape.dim
        if len(dims) != 4:
            problems.append(f"input has rank {len(dims)}, expected 4")
        elif not dims[0].dim_param:
            problems.append("input batch dimension is not symbolic")
    if len(proto.graph.output) != 1:
        problems.append(f"{len(proto.graph.output)} outputs, expected 1")
    else:
        dims = proto.graph.output[0].type.tensor_type.shape.dim
        if dims and dims[-1].dim_value > max_dim:
            problems.append(f"feature dimension {dims[-1].dim_value} > {max_dim}")
    if len(proto.graph.node) < 8:
        problems.append(f"{len(proto.graph.node)} nodes, expected at least 8")
    narrow = [t.name for t in proto.graph.initializer if t.data_type not in _WIDE_TYPES]
    if narrow:
        problems.append(f"initializers narrower than 4 bytes: {', '.join(narrow[:5])}")
    size = Path(path).stat().st_size
    if size > max_bytes:
        problems.append(f"file is {size} bytes > {max_bytes}")
    return problems
