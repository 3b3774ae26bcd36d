r"""Command line of the step audit: one recipe's projected step, or the calibration table.

    python tools/audit_step.py --config NAME --world-size W --batch-size B \\
        --precision bf16|fp16|fp32 --gpu v100|a100|h100|h200 [--json PATH] [--table]
    python tools/audit_step.py --calibration   # the published anchors against the projection

What is counted and how it is projected: :mod:`dist_face.audit`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dist_face.audit import PHASES, audit_step
from dist_face.calibration import calibration_table
from dist_face.config import ConfigError
from dist_face.projection import CALIBRATED, GPUS


def _table(reports: list[dict[str, Any]]) -> str:
    head = (
        "| recipe | W | B | precision | GPU | r kept | data | backbone | head | comm | optim "
        "| step (band) | img/s/GPU (band) | labels: gather + sample (exposed) | syncs |"
    )
    rows = [head, "|" + "---|" * 15]
    for r in reports:
        ms, (lo, hi) = r["projected_ms"], r["projected_band_ms"]
        ips, (ilo, ihi) = r["images_per_s"], r["images_per_s_band"]
        lp = r["label_path"]
        labels = "—"
        if lp is not None:
            labels = (
                f"{lp['gather_ms']:.2f} ({lp['gather_low_ms']:.2f}–{lp['gather_high_ms']:.2f})"
                f" + {lp['sample_ms']:.1f} ({lp['exposed_ms']:.2f})"
            )
        rows.append(
            f"| {r['config']} | {r['world_size']} | {r['batch_size']} | {r['precision']} | "
            f"{r['gpu']} | {r['sampled_fraction']:.3f} | "
            + " | ".join(f"{ms[p]:.2f}" for p in PHASES)
            + f" | {ms['step']:.1f} ({lo:.0f}–{hi:.0f}) | {ips:.0f} ({ilo:.0f}–{ihi:.0f}) | "
            f"{labels} | {r['host_syncs']} |"
        )
    rows.append(
        f"\nProjected, not measured; efficiencies calibrated {reports[0]['calibrated']} "
        f"({reports[0]['basis']}). Times in ms."
    )
    return "\n".join(rows)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Command line (module doc); ``--table`` also prints docs/performance.md's table row(s)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config")
    ap.add_argument("--world-size", type=_positive)
    ap.add_argument("--batch-size", type=_positive)
    ap.add_argument("--precision", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--table", action="store_true", help="also print a markdown table row")
    ap.add_argument(
        "--calibration",
        action="store_true",
        help="print the published anchors against their projection, then exit",
    )
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. --head.chunk_size=4096")
    args, rest = ap.parse_known_args(argv)
    if args.calibration:
        print(calibration_table())
        print(f"\nefficiencies calibrated {CALIBRATED}; projected, not measured")
        return 0
    missing = [
        f"--{k.replace('_', '-')}"
        for k in ("config", "world_size", "batch_size", "precision")
        if getattr(args, k) is None
    ]
    if missing:
        ap.error(f"the following arguments are required: {', '.join(missing)}")
    overrides = tuple(args.overrides) + tuple(rest)
    try:
        report = audit_step(
            args.config, args.world_size, args.batch_size, args.precision, args.gpu, overrides
        )
    except ConfigError as exc:  # an unknown recipe or a bad override: one line, exit 2
        ap.error(str(exc))
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    if args.table:
        print(_table([report]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
