#!/usr/bin/env bash
# The main job, from a fresh clone: environment, embedded dataset, record shards, distributed
# training (every local GPU, or 2 gloo CPU processes), verification on held-out identities,
# IJB-C-style 1:1 and 1:N evaluation on a synthetic IJB set of other held-out identities (official
# file layout), and ONNX + safetensors export.
# Each step says whether it ran; a step whose component is not available is reported as SKIPPED.
#
# Environment: QUICKSTART_DIR (default data/quickstart), QUICKSTART_IDENTITIES (300),
# QUICKSTART_IMAGES (24 per identity), QUICKSTART_IJB_IDENTITIES (60), NPROC (GPUs, else 2),
# plus launch/setup_env.sh's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=launch/setup_env.sh
source launch/setup_env.sh dev

DATA="${QUICKSTART_DIR:-data/quickstart}"
IDS="${QUICKSTART_IDENTITIES:-300}"
PER_ID="${QUICKSTART_IMAGES:-24}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  NPROC="${NPROC:-$(nvidia-smi -L | wc -l)}"
else
  NPROC="${NPROC:-2}"
fi
ran=()
skipped=()

echo "== 1/6 embedded dataset: $IDS identities x $PER_ID images -> $DATA"
if [ -f "$DATA/dataset.json" ] && grep -q "\"identities\": $IDS," "$DATA/dataset.json" \
  && grep -q "\"images_per_identity\": $PER_ID," "$DATA/dataset.json"; then
  echo "   reusing $DATA (dataset.json matches)"
else
  rm -rf "$DATA"
  python tools/make_dataset.py "$DATA" --identities "$IDS" --images-per-identity "$PER_ID"
fi
ran+=("dataset: $DATA/train (images), $DATA/val.bin (held-out pairs)")

echo "== 2/6 pack into record shards"
rm -rf "$DATA/shards"
python tools/pack.py "$DATA/train" "$DATA/shards" --shards 4 --shuffle --seed 0
python tools/verify.py "$DATA/shards"
ran+=("shards: $DATA/shards (packed, verified)")

RUN="${QUICKSTART_RUN:-runs/quickstart}"
echo "== 3/6 train on $NPROC processes with torchrun"
rm -rf "$RUN"
CONFIG=quickstart NPROC_PER_NODE="$NPROC" RESUME=none LOG_RANKS=0 bash launch/torchrun.sh \
  --output_root="$(dirname "$RUN")" --name="$(basename "$RUN")" \
  --data.root="$DATA/shards" --eval.targets="[$DATA/val.bin]"
ran+=("training: $RUN (config.yaml, checkpoints/, model.pt, metrics-rank*.jsonl)")

echo "== 4/6 verification on held-out identities (trained vs untrained backbone)"
python tools/evaluate.py --run "$RUN" --bin "$DATA/val.bin" --untrained-baseline
ran+=("evaluation: $RUN/eval_report.json (and $RUN/eval.json, written during training)")

IJB="$DATA/ijbc"
IJB_IDS="${QUICKSTART_IJB_IDENTITIES:-60}"
echo "== 5/6 IJB-C-style 1:1 and 1:N on $IJB_IDS held-out identities (trained vs untrained)"
if [ -f "$IJB/synthetic_ijb.json" ] && grep -q "\"identities\": $IJB_IDS," "$IJB/synthetic_ijb.json"; then
  echo "   reusing $IJB (synthetic_ijb.json matches)"
else
  rm -rf "$IJB"
  python tools/make_ijb.py "$IJB" --identities "$IJB_IDS"
fi
python tools/ijb.py --run "$RUN" --image-path "$IJB" --target IJBC --out "$RUN/ijbc" \
  --untrained-baseline --no-progress
ran+=("IJB-C 1:1 + 1:N: $RUN/ijbc/report.json, ROC $RUN/ijbc/roc.png, DET $RUN/ijbc/det.png")

echo "== 6/6 export: ONNX (checked against torch with onnxruntime) and safetensors"
if python -c "import onnx, onnxruntime, safetensors" 2>/dev/null; then
  python tools/export.py --run "$RUN" --out "$RUN/model.onnx" --safetensors
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
