"""Print parameters and FLOPs per 112×112 image of registered backbones.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on a one-image forward in
eval mode: matmuls, convolutions and attention, 2 FLOPs per multiply-add; normalization and
activations are not counted (as in most published tables).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import dist_face.models as M
from dist_face.cli.common import closed_pipe_is_quiet, progress_off


def flops_per_image(model: torch.nn.Module) -> int:
    """FLOPs of one forward pass on a ``[1, 3, 112, 112]`` input (eval mode)."""
    model.eval()
    x = torch.zeros(1, 3, M.INPUT_SIZE, M.INPUT_SIZE)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops()


def describe(name: str, embedding_size: int) -> tuple[int, int]:
    """``(parameters, FLOPs per image)`` of backbone ``name`` at embedding size D."""
    model = M.create(name, embedding_size=embedding_size)
    return M.count_parameters(model), flops_per_image(model)


@closed_pipe_is_quiet
def main(argv: Sequence[str] | None = None) -> int:
    """Print a Markdown table: name, parameters (M), GFLOPs per image."""
    parser = argparse.ArgumentParser(prog="dist-face-model-info", description=__doc__)
    parser.add_argument("names", nargs="*", help="backbones (default: every registered one)")
    parser.add_argument("--embedding-size", type=int, default=512, help="embedding dim D")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    names = args.names or M.names()
    unknown = [n for n in names if n not in M.BACKBONES]
    if unknown:
        parser.error(f"unknown backbone(s) {', '.join(unknown)}; known: {', '.join(M.names())}")
    torch.manual_seed(0)
    print(f"| backbone | parameters | params (M) | GFLOPs / image (D = {args.embedding_size}) |")
    print("|---|---:|---:|---:|")
    # building and counting a large backbone takes seconds: a bar on stderr (terminal only)
    bar = tqdm(names, unit="model", desc="model-info", disable=progress_off(args.quiet))
    for name in bar:
        bar.set_postfix_str(name)
        params, flops = describe(name, args.embedding_size)
        bar.write(f"| {name} | {params:,} | {params / 1e6:.2f} | {flops / 1e9:.3f} |", sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
