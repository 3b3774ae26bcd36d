#!/usr/bin/env bash
# The main job, from a fresh clone: environment, embedded dataset, record shards, distributed
# training (every local GPU, or 2 gloo CPU processes), verification on held-out identities.
# Each step says whether it ran; a step whose component is not available is reported as SKIPPED.
#
# Environment: QUICKSTART_DIR (default data/quickstart), QUICKSTART_IDENTITIES (300),
# QUICKSTART_IMAGES (24 per identity), NPROC (GPUs, else 2), plus launch/setup_env.sh's.
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
has() { python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"; }

echo "== 1/4 embedded dataset: $IDS identities x $PER_ID images -> $DATA"
if [ -f "$DATA/dataset.json" ] && grep -q "\"identities\": $IDS," "$DATA/dataset.json" \
  && grep -q "\"images_per_identity\": $PER_ID," "$DATA/dataset.json"; then
  echo "   reusing $DATA (dataset.json matches)"
else
  rm -rf "$DATA"
  python tools/make_dataset.py "$DATA" --identities "$IDS" --images-per-identity "$PER_ID"
fi
ran+=("dataset: $DATA/train (images), $DATA/val.bin (held-out pairs)")

echo "== 2/4 pack into record shards"
if has dist_face.cli.pack; then
  python tools/pack.py "$DATA/train" "$DATA/shards" --shards 4 --shuffle --seed 0
  ran+=("shards: $DATA/shards")
else
  skipped+=("packing into record shards (tools/pack.py is not part of this build yet)")
fi

echo "== 3/4 train on $NPROC processes"
if has dist_face.train; then
  torchrun --standalone --nproc_per_node="$NPROC" -m dist_face.train --config quickstart \
    --data.root="$DATA/shards" --eval.targets="[$DATA/val.bin]"
  ran+=("training: runs/quickstart (checkpoints, config.yaml, metrics)")
else
  skipped+=("distributed training (dist_face.train is not part of this build yet)")
fi

echo "== 4/4 verification on held-out identities"
if has dist_face.cli.evaluate; then
  python -m dist_face.cli.evaluate --bin "$DATA/val.bin" --run runs/quickstart
  ran+=("evaluation: runs/quickstart/eval.json")
else
  skipped+=("verification of a trained model (the evaluation CLI is not part of this build yet)")
fi

echo
echo "== quickstart summary"
for r in "${ran[@]}"; do echo "   RAN      $r"; done
for s in "${skipped[@]}"; do echo "   SKIPPED  $s"; done
