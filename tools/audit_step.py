r"""What one training step asks of a GPU and its projection onto an H100/H200 (see --help).

    python tools/audit_step.py --config NAME --world-size W --batch-size B \\
        --precision bf16|fp16|fp32 --gpu h100|h200 [--json PATH]
"""

from dist_face.audit import main

if __name__ == "__main__":
    raise SystemExit(main())
