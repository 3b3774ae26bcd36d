"""Export a trained backbone to ONNX (checked against torch with onnxruntime) and safetensors."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dist_face.cli.backbone_source import add_backbone_args, load_from_args
from dist_face.cli.common import closed_pipe_is_quiet
from dist_face.extras import require
from dist_face.log import init_logging

logger = logging.getLogger("dist_face.export")


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Export; returns the exit code (2 for bad input, 1 when the file fails its check)."""
    p = argparse.ArgumentParser(prog="dist-face-export", description=__doc__)
    add_backbone_args(p)
    p.add_argument("--out", required=True, help="ONNX file to write, e.g. model.onnx")
    p.add_argument(
        "--bake-normalization",
        action="store_true",
        help="the graph takes raw 0-255 RGB pixels (default: (x/255 - 0.5)/0.5 normalised)",
    )
    p.add_argument(
        "--safetensors",
        action="store_true",
        help="also write model.safetensors (name and options in its metadata) beside it",
    )
    args = p.parse_args(argv)
    init_logging()
    # everything the export needs, before anything is written
    require("onnx", "onnxruntime", purpose="dist-face-export")
    if args.safetensors:
        require("safetensors", purpose="--safetensors")
    from dist_face.export.onnx_export import (
        ExportError,
        check_parity,
        export_onnx,
        submission_problems,
    )
    from dist_face.export.safetensors_export import save_safetensors

    try:
        model, name, kwargs = load_from_args(args)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    out = Path(args.out)
    model.eval()
    export_onnx(model, out, args.bake_normalization)
    try:
        parity = check_parity(out, model, args.bake_normalization)
    except ExportError as exc:
        logger.error("%s", exc)
        return 1
    logger.info(
        "wrote %s (%s, input %s): onnxruntime matches torch to %.1e on batches %s",
        out,
        name,
        "raw 0-255 RGB" if args.bake_normalization else "(x/255-0.5)/0.5 RGB",
        parity.max_relative_error,
        parity.batch_sizes,
    )
    problems = submission_problems(out)
    for problem in problems:
        logger.warning("MFR submission rule broken: %s", problem)
    if args.safetensors:
        path = save_safetensors(model, out.with_suffix(".safetensors"), name, **kwargs)
        logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
