r"""What one training step asks of a GPU and its calibrated projection (see --help).

    python tools/audit_step.py --config NAME --world-size W --batch-size B \\
        --precision bf16|fp16|fp32 --gpu v100|a100|h100|h200 [--json PATH] [--table]
    python tools/audit_step.py --calibration
"""

from dist_face.cli.audit_step import main

if __name__ == "__main__":
    raise SystemExit(main())
