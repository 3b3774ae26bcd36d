#!/usr/bin/env bash
# GPU acceptance check for a fresh node: does dist_face train correctly and how fast?
#
#   bash tools/gpu_check.sh [--wheels DIR] [--python PYTHON] [--skip-tests] [--skip-bench]
#
# Setting: one NVIDIA GPU, a preinstalled CUDA torch (e.g. 2.11 on Python 3.12), no network,
# no DALI or DeepSpeed unless installed. The preinstalled torch is used as is. Other Python
# dependencies come from the wheel directory DIR (pip --no-index) when one is given, into a
# virtual environment that sees the system's packages; without DIR, whatever is missing is
# reported and the parts needing it are skipped.
#
# Stages (docs/performance.md, "GPU acceptance check", explains how to read the output):
#   1. environment: GPU, driver, torch/CUDA versions, which optional packages are present;
#   2. the GPU test tier (pytest tests/gpu): NCCL rules, fp16 through the trainer's step,
#      DALI's mixed decoder, DeepSpeed fp16, ranks sharing a GPU, no host sync per step;
#   3. tools/bench_train.py on synthetic data in fp16, batch 128, for iresnet50 and
#      iresnet100 at Partial FC r = 1 and 0.1: images/s per GPU and the phase shares, each
#      followed by tools/audit_step.py's projection of the same step (AUDIT lines).
# Every stage runs under a time limit; the whole check stops within 8 minutes.
# Exit status: 0 when every stage that ran passed, 1 otherwise.

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS=""
RUN_TESTS=1
RUN_BENCH=1
BUDGET_S=470 # leaves margin under 8 minutes for start-up and the summary
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --skip-tests) RUN_TESTS=0; shift ;;
        --skip-bench) RUN_BENCH=0; shift ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

START=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dist_face_gpu_check.XXXXXX")"
SUMMARY=()
FAILED=0

left() { echo $((BUDGET_S - ($(date +%s) - START))); }
note() { SUMMARY+=("$1"); echo "== $1"; }
# run_for SECONDS CMD...: the command under a limit that never passes the overall budget
run_for() {
    local want="$1" have
    shift
    have=$(left)
    [ "$have" -lt "$want" ] && want="$have"
    if [ "$want" -le 5 ]; then
        echo "gpu_check: out of time before: $*" >&2
        return 124
    fi
    timeout --kill-after=10 "$want" "$@"
}

# -- 1. environment ------------------------------------------------------------------------------
echo "== dist_face GPU check, $(date -u +%Y-%m-%dT%H:%MZ), $ROOT"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: $PYTHON has no CUDA-enabled torch (or sees no GPU); nothing to check" >&2
    exit 1
fi
"$PYTHON" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {\".\".join(map(str, torch.cuda.nccl.version()))}, {torch.cuda.get_device_name(0)}")'

# A virtual environment that sees the preinstalled torch; pip installs only from DIR.
PY="$PYTHON"
if [ -n "$WHEELS" ]; then
    if [ ! -d "$WHEELS" ]; then
        echo "gpu_check: --wheels $WHEELS is not a directory" >&2
        exit 2
    fi
    if "$PYTHON" -m venv --system-site-packages "$WORK/venv"; then
        PY="$WORK/venv/bin/python"
    else
        echo "gpu_check: cannot create a virtual environment; installing with pip --user" >&2
    fi
fi

# import name -> distribution name; core ones are needed to import dist_face at all
CORE="numpy:numpy PIL:pillow pyarrow:pyarrow prometheus_client:prometheus-client omegaconf:omegaconf tqdm:tqdm"
TESTING="pytest:pytest"
OPTIONAL="pytest_timeout:pytest-timeout nvidia.dali:nvidia-dali-cuda120 deepspeed:deepspeed>=0.19,<0.20"
MISSING_CORE=0
MISSING_TEST=0
ensure() { # ensure KIND import:dist ...
    local kind="$1" pair mod dist_name
    shift
    for pair in "$@"; do
        mod="${pair%%:*}"
        dist_name="${pair#*:}"
        "$PY" -c "import $mod" > /dev/null 2>&1 && continue
        if [ -n "$WHEELS" ]; then
            local user=()
            [ "$PY" = "$PYTHON" ] && user=(--user)
            if run_for 120 "$PY" -m pip install -q --no-index --find-links "$WHEELS" "${user[@]}" "$dist_name"; then
                "$PY" -c "import $mod" > /dev/null 2>&1 && { echo "installed $dist_name from $WHEELS"; continue; }
            fi
        fi
        echo "gpu_check: $kind package $dist_name is missing${WHEELS:+ (not in $WHEELS)}"
        case "$kind" in
            core) MISSING_CORE=1 ;;
            testing) MISSING_TEST=1 ;;
            optional) echo "           what needs it is skipped" ;;
        esac
    done
}
ensure core $CORE
ensure testing $TESTING
ensure optional $OPTIONAL
if [ "$MISSING_CORE" = 1 ]; then
    note "FAIL environment: core packages missing (give --wheels DIR with their wheels)"
    exit 1
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT" || exit 1

# -- 2. the GPU test tier -------------------------------------------------------------------------
if [ "$RUN_TESTS" = 1 ] && [ "$MISSING_TEST" = 0 ]; then
    echo "== GPU test tier (tests/gpu)"
    if run_for 270 "$PY" -m pytest tests/gpu -q -rs -p no:cacheprovider; then
        note "PASS GPU test tier"
    else
        note "FAIL GPU test tier (see the pytest output above)"
        FAILED=1
    fi
elif [ "$RUN_TESTS" = 1 ]; then
    note "SKIP GPU test tier: pytest missing (give --wheels DIR with pytest)"
fi

# -- 3. throughput ----------------------------------------------------------------------------------
if [ "$RUN_BENCH" = 1 ]; then
    for model in iresnet50 iresnet100; do
        for rate in 1.0 0.1; do
            echo "== bench_train: $model, fp16, batch 128, r=$rate"
            out="$WORK/bench_${model}_${rate}.txt"
            if run_for 60 "$PY" tools/bench_train.py --synthetic-classes 93431 --config ms1mv3_r50 \
                --batch-size 128 --steps 20 --workers 1 "--model.name=$model" \
                --train.precision=fp16 "--head.sample_rate=$rate" \
                "--output_root=$WORK/runs" > "$out" 2>&1; then
                rate_line=$(grep '^images/s per rank' "$out" | sed 's/images\/s per rank: //')
                phase_line=$(grep '^phase shares' "$out" | sed 's/phase shares: //')
                note "BENCH $model r=$rate: $rate_line images/s per GPU; $phase_line"
                # the step audit's projection of the same step, next to the measured one
                gpu_kind=h100
                case "$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null)" in
                    *H200*) gpu_kind=h200 ;;
                esac
                if run_for 60 "$PY" tools/audit_step.py --config ms1mv3_r50 --world-size 1 \
                    --batch-size 128 --precision fp16 --gpu "$gpu_kind" \
                    --json "$WORK/audit_${model}_${rate}.json" "--model.name=$model" \
                    "--head.sample_rate=$rate" > /dev/null 2>&1; then
                    proj=$("$PY" - "$WORK/audit_${model}_${rate}.json" "$rate_line" <<'PYEOF'
import json, sys
ms = json.load(open(sys.argv[1]))["projected_ms"]
try:
    measured = f"measured {1000 * 128 / float(sys.argv[2].split()[0]):.1f} ms"
except (ValueError, IndexError):
    measured = "measured ? ms"
parts = ", ".join(f"{k} {v:.2f}" for k, v in ms.items() if k != "step")
print(f"step {measured}, projected {ms['step']:.1f} ms ({parts})")
PYEOF
                    )
                    note "AUDIT $model r=$rate ($gpu_kind): $proj"
                else
                    note "SKIP audit $model r=$rate: tools/audit_step.py failed"
                fi
            else
                tail -20 "$out"
                note "FAIL bench_train $model r=$rate (output above)"
                FAILED=1
            fi
        done
    done
fi

# -- summary -----------------------------------------------------------------------------------------
echo
echo "== summary ($(($(date +%s) - START)) s; published anchor: arcface_torch r50 fp16 ~740 images/s per V100)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
rm -rf "$WORK"
exit "$FAILED"
