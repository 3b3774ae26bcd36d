#!/usr/bin/env bash
# GPU check for a fresh node: does dist_face train correctly on it, and how fast, against the
# projection?
#
#   bash tools/gpu_check.sh --wheels DIR --out DIR [--python PYTHON] [--skip-tests] [--skip-bench]
#   bash tools/gpu_check.sh --dry-run [--out DIR]      # on a CPU: check the plan (the CI does)
#
# Setting: one NVIDIA GPU (H100/H200), Python 3.12 with a CUDA torch (2.11 + CUDA 13), numpy
# and pillow preinstalled; no network, no DALI, no DeepSpeed. DIR holds the wheels of
# tools/gpu_wheels.txt (made where pip works: bash tools/gpu_wheels.sh DIR); they are
# installed with pip --no-index into a folder under --out, put first on PYTHONPATH.
#
# Stages (budgets: python tools/gpu_check.py --budget STAGE; 7 minutes in all; docs/performance.md,
# "GPU acceptance check", explains how to read the report):
#   1. environment: GPU, driver, torch/CUDA/NCCL versions, the wheels;
#   2. the GPU test tier (pytest tests/gpu): log and JUnit XML in --out;
#   3. iresnet50 and mbf at batch 128 in bf16 and fp16: the audit's phases timed with CUDA
#      events against tools/audit_step.py's projection of the same step, images/s, peak
#      memory, host syncs of the trainer's step under torch.cuda.set_sync_debug_mode("error"),
#      an attempted CUDA-graph capture of that step;
#   4. the report: gpu_check.json and gpu_check.md in --out (kept).
# Exit status: 0 when every stage passed, 1 otherwise, 2 for bad arguments.

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS=""
OUT=""
DRY=0
SKIP=()
TOTAL_S=420 # the whole check; tools/gpu_check.py's TOTAL_S (--dry-run checks they agree)
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --skip-tests) SKIP+=(--skip tests); shift ;;
        --skip-bench) SKIP+=(--skip bench); shift ;;
        --dry-run) DRY=1; shift ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT" || exit 1

if [ "$DRY" = 1 ]; then
    [ -z "$OUT" ] && OUT="$(mktemp -d "${TMPDIR:-/tmp}/dist_face_gpu_check.XXXXXX")"
    exec "$PYTHON" tools/gpu_check.py --dry-run --out "$OUT"
fi
if [ -z "$OUT" ]; then
    echo "gpu_check: --out DIR is required (the report and logs are kept there)" >&2
    exit 2
fi
START=$(date +%s)
DEADLINE=$((START + TOTAL_S))
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
ENV_S=$("$PYTHON" tools/gpu_check.py --budget environment) || exit 1
left() { echo $((DEADLINE - $(date +%s))); }

# -- 1. environment ------------------------------------------------------------------------------
{
    echo "== dist_face GPU check, $(date -u +%Y-%m-%dT%H:%MZ), $ROOT"
    command -v nvidia-smi > /dev/null \
        && timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
} 2>&1 | tee "$OUT/environment.log"
if ! timeout 60 "$PYTHON" -c 'import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: $PYTHON has no CUDA-enabled torch (or sees no GPU); nothing to check" \
        | tee -a "$OUT/environment.log" >&2
    exit 1
fi
"$PYTHON" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {".".join(map(str, torch.cuda.nccl.version()))}, {torch.cuda.get_device_name(0)}")' \
    2>&1 | tee -a "$OUT/environment.log"
if [ -n "$WHEELS" ]; then
    if [ ! -d "$WHEELS" ]; then
        echo "gpu_check: --wheels $WHEELS is not a directory" >&2
        exit 2
    fi
    # the folder's wheels only, into a folder of their own: the image's packages stay as they are
    want=$((ENV_S - ($(date +%s) - START)))
    [ "$want" -lt 10 ] && want=10
    if ! timeout "$want" "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" \
        --target "$OUT/site" -r tools/gpu_wheels.txt >> "$OUT/environment.log" 2>&1; then
        echo "gpu_check: installing the wheels of $WHEELS failed (environment.log)" >&2
        exit 1
    fi
    export PYTHONPATH="$OUT/site:$PYTHONPATH"
fi
if ! "$PYTHON" -c 'import omegaconf, yaml, tqdm, prometheus_client, pytest, dist_face.train' \
    >> "$OUT/environment.log" 2>&1; then
    echo "gpu_check: dist_face or pytest does not import (environment.log); give --wheels DIR" >&2
    exit 1
fi
echo "== environment ready in $(($(date +%s) - START)) s" | tee -a "$OUT/environment.log"

# -- 2-4. the test tier, the benchmarks, the report -----------------------------------------------
timeout --kill-after=10 "$(left)" "$PYTHON" tools/gpu_check.py --out "$OUT" \
    --deadline "$DEADLINE" "${SKIP[@]}"
rc=$?
[ -f "$OUT/gpu_check.md" ] && cat "$OUT/gpu_check.md"
echo "== gpu_check: exit $rc after $(($(date +%s) - START)) s; report and logs in $OUT"
exit "$rc"
