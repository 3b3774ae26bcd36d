#!/usr/bin/env bash
# The main job, from a fresh clone: environment, embedded dataset, record shards, distributed
# training (every local GPU, or 2 gloo CPU processes), verification on held-out identities,
# IJB-C-style 1:1 and 1:N evaluation on a synthetic IJB set of other held-out identities (official
# file layout), and ONNX + safetensors export.
# Each step says whether it ran; a step whose component is not available is reported as SKIPPED.
#
#   bash launch/quickstart.sh [--replace] [--dry-run]
#
#   --replace   start over in the run directory of an earlier quickstart (default: keep that
#               run and write this one to <run>-2, <run>-3, ...)
#   --dry-run   say what would run and where, then stop (nothing is installed or written)
#   -h, --help  this text
#
# Environment: QUICKSTART_DIR (default ~/.cache/dist_face/quickstart), QUICKSTART_RUN
# (runs/quickstart where it is started); relative values are relative to the current directory;
# QUICKSTART_IDENTITIES (300), QUICKSTART_IMAGES (24 per identity),
# QUICKSTART_IJB_IDENTITIES (60), NPROC (GPUs, else 2),
# plus launch/setup_env.sh's.
set -euo pipefail
# Python puts the working directory first on sys.path for `python -m`/`-c`; started in the
# parent of a clone named dist_face, the clone itself would be imported as a namespace package
# `dist_face` ahead of an editable install (No module named 'dist_face.train'). Every python
# this script and its workers start leaves the working directory off sys.path.
export PYTHONSAFEPATH=1
replace=0
dry_run=0
for arg in "$@"; do
  case "$arg" in
    -h | --help) sed -n '2,/^set -/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    --replace) replace=1 ;;
    --dry-run) dry_run=1 ;;
    *) echo "quickstart.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
# no change of directory: QUICKSTART_DIR and QUICKSTART_RUN, when set, are relative to where
# this script is started; the default data lives in the cache directory ($DIST_FACE_CACHE, else
# $XDG_CACHE_HOME/dist_face, else ~/.cache/dist_face), never inside the checkout
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

cache="${DIST_FACE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dist_face}"
DATA="${QUICKSTART_DIR:-$cache/quickstart}"
IDS="${QUICKSTART_IDENTITIES:-300}"
PER_ID="${QUICKSTART_IMAGES:-24}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  NPROC="${NPROC:-$(nvidia-smi -L | wc -l)}"
else
  NPROC="${NPROC:-2}"
fi
# an earlier run is kept unless --replace: this one takes the first free <run>-N
RUN="${QUICKSTART_RUN:-$PWD/runs/quickstart}"
if [ -e "$RUN" ] && [ "$replace" = 0 ]; then
  n=2
  while [ -e "$RUN-$n" ]; do n=$((n + 1)); done
  echo "== $RUN holds an earlier run: kept; this run writes $RUN-$n (--replace starts over)"
  RUN="$RUN-$n"
elif [ -e "$RUN" ]; then
  echo "== --replace: the earlier run in $RUN is deleted before training"
fi
if [ "$dry_run" = 1 ]; then
  echo "== dry run: dataset $DATA ($IDS identities x $PER_ID images), shards $DATA/shards,"
  echo "   training on $NPROC processes into $RUN, evaluation on $DATA/val.bin and an"
  echo "   IJB-C-style set in $DATA/ijbc, export next to the model"
  exit 0
fi
# shellcheck source=launch/setup_env.sh
source "$root/launch/setup_env.sh" dev
ran=()
skipped=()

echo "== 1/6 embedded dataset: $IDS identities x $PER_ID images -> $DATA"
if [ -f "$DATA/dataset.json" ] && grep -q "\"identities\": $IDS," "$DATA/dataset.json" \
  && grep -q "\"images_per_identity\": $PER_ID," "$DATA/dataset.json"; then
  echo "   reusing $DATA (dataset.json matches)"
else
  if [ -e "$DATA" ] && [ ! -f "$DATA/dataset.json" ] && [ -n "$(ls -A "$DATA")" ]; then
    echo "quickstart.sh: $DATA holds files the quickstart did not write; set QUICKSTART_DIR" >&2
    exit 2
  fi
  rm -rf "$DATA"  # an embedded dataset of other sizes: regenerated
  python "$root/tools/make_dataset.py" "$DATA" --identities "$IDS" --images-per-identity "$PER_ID"
fi
ran+=("dataset: $DATA/train (images), $DATA/val.bin (held-out pairs)")

echo "== 2/6 pack into record shards"
rm -rf "$DATA/shards"
python "$root/tools/pack.py" "$DATA/train" "$DATA/shards" --shards 4 --shuffle --seed 0
python "$root/tools/verify.py" "$DATA/shards"
ran+=("shards: $DATA/shards (packed, verified)")

echo "== 3/6 train on $NPROC processes with torchrun"
if [ "$replace" = 1 ]; then rm -rf "$RUN"; fi
CONFIG=quickstart NPROC_PER_NODE="$NPROC" RESUME=none LOG_RANKS=0 bash "$root/launch/torchrun.sh" \
  --output_root="$(dirname "$RUN")" --name="$(basename "$RUN")" \
  --data.root="$DATA/shards" --eval.targets="[$DATA/val.bin]"
ran+=("training: $RUN (config.yaml, checkpoints/, model.pt, metrics-rank*.jsonl)")

echo "== 4/6 verification on held-out identities (trained vs untrained backbone)"
python "$root/tools/evaluate.py" --run "$RUN" --bin "$DATA/val.bin" --untrained-baseline
ran+=("evaluation: $RUN/eval_report.json (and $RUN/eval.json, written during training)")

IJB="$DATA/ijbc"
IJB_IDS="${QUICKSTART_IJB_IDENTITIES:-60}"
echo "== 5/6 IJB-C-style 1:1 and 1:N on $IJB_IDS held-out identities (trained vs untrained)"
if [ -f "$IJB/synthetic_ijb.json" ] && grep -q "\"identities\": $IJB_IDS," "$IJB/synthetic_ijb.json"; then
  echo "   reusing $IJB (synthetic_ijb.json matches)"
else
  rm -rf "$IJB"
  python "$root/tools/make_ijb.py" "$IJB" --identities "$IJB_IDS"
fi
python "$root/tools/ijb.py" --run "$RUN" --image-path "$IJB" --target IJBC --out "$RUN/ijbc" \
  --untrained-baseline --no-progress
ran+=("IJB-C 1:1 + 1:N: $RUN/ijbc/report.json, ROC $RUN/ijbc/roc.png, DET $RUN/ijbc/det.png")

echo "== 6/6 export: ONNX (checked against torch with onnxruntime) and safetensors"
if python -c "import onnx, onnxruntime, safetensors" 2>/dev/null; then
  python "$root/tools/export.py" --run "$RUN" --out "$RUN/model.onnx" --safetensors
  ran+=("export: $RUN/model.onnx, $RUN/model.safetensors")
else
  skipped+=("export: onnx/onnxruntime/safetensors not installed (pip install .[export])")
fi

ran+=("metrics: Prometheus at http://127.0.0.1:$((9400))/metrics for local rank 0 (9400 + r for rank r) while training; every log record in $RUN/metrics-rank*.jsonl")

echo
echo "== quickstart summary"
for r in "${ran[@]}"; do echo "   RAN      $r"; done
for s in "${skipped[@]}"; do echo "   SKIPPED  $s"; done
echo "   checkpoint: $(ls -d "$RUN"/checkpoints/step_* 2>/dev/null | tail -n 1)"
