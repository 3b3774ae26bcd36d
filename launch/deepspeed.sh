#!/usr/bin/env bash
# Launch dist_face training with the deepspeed launcher: the backbone in a DeepSpeed engine
# (ZeRO stage, fp16/bf16 from the recipe), the sharded head outside it.
#
#   bash launch/deepspeed.sh [--section.field=value ...]       # extra arguments go to the trainer
#   HOSTFILE=launch/hostfile.example bash launch/deepspeed.sh --dist.zero_stage=2
#
# Trainer flags: dist-face-train --help; config fields: dist-face-train --help-config [SECTION].
# Relative paths (arguments, HOSTFILE, RESUME) are relative to the directory this script is
# started in: it never changes directory.
# Every setting comes from the environment (defaults in brackets):
#   CONFIG              recipe name or path                             [debug_cpu]
#   HOSTFILE            DeepSpeed hostfile ("host slots=N" per line); the launcher reaches
#                       every host over passwordless ssh (pdsh)          [one node, no ssh]
#   NPROC_PER_NODE      processes per node without a hostfile            [GPUs, else 2]
#   MASTER_ADDR/PORT    rendezvous of the process group                  [first host, 29500]
#   ZERO_STAGE          dist.zero_stage: 0, 1 or 2                       [the recipe's]
#   RESUME              auto, a checkpoint directory, or none            [auto]
#   TORCH_EXTENSIONS_DIR where DeepSpeed caches the C++ ops it compiles on first use (about
#                       30 s once per machine)           [~/.cache/dist_face/torch_extensions]
#   PREFLIGHT=0         skip the configuration check before the ranks start
#   CHECK_ONLY=1        run that check only: exit 0, or 2 with one line naming the bad key
#   DRY_RUN=1           print the deepspeed command instead of running it
# On CPUs DeepSpeed trains in fp32 or bf16 (it refuses fp16 without CUDA).
set -euo pipefail
# Python puts the working directory first on sys.path for `python -m`/`-c`; started in the
# parent of a clone named dist_face, the clone itself would be imported as a namespace package
# `dist_face` ahead of an editable install (No module named 'dist_face.train'). Every python
# this script and its workers start leaves the working directory off sys.path.
export PYTHONSAFEPATH=1
case "${1:-}" in -h | --help)  # the comment block above is the usage
  sed -n '2,/^set -/{/^#SBATCH/d;s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;; esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="${CONFIG:-debug_cpu}"
RESUME="${RESUME:-auto}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/dist_face/torch_extensions}"

cmd=(deepspeed)
if [ -n "${HOSTFILE:-}" ]; then
  cmd+=(--hostfile "$HOSTFILE")
else
  if [ -z "${NPROC_PER_NODE:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      NPROC_PER_NODE="$(nvidia-smi -L | wc -l)"
    else
      NPROC_PER_NODE=2
    fi
  fi
  cmd+=(--num_gpus "$NPROC_PER_NODE")
fi
[ -n "${MASTER_ADDR:-}" ] && cmd+=(--master_addr "$MASTER_ADDR")
cmd+=(--master_port "${MASTER_PORT:-29500}")
# the trainer reads LOCAL_RANK from the environment, not a --local_rank argument
train=(--config "$CONFIG" --engine deepspeed)
[ -n "${ZERO_STAGE:-}" ] && train+=("--dist.zero_stage=$ZERO_STAGE")
[ "$RESUME" != none ] && train+=(--resume "$RESUME")
train+=("$@")
cmd+=(--no_local_rank --module dist_face.train "${train[@]}")

if [ -n "${DRY_RUN:-}" ]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
# No change of directory: relative paths are relative to where this script was started (the
# deepspeed launcher starts its workers there, on other hosts too).
# finding the modules, without importing deepspeed and torch, takes 0.1 s instead of 10
if ! python -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('torch', 'deepspeed', 'dist_face.train')))" >/dev/null 2>&1; then
  # shellcheck source=launch/setup_env.sh
  source "$root/launch/setup_env.sh" "${DIST_FACE_EXTRAS:-dev,deepspeed}" >&2
fi
# The configuration, paths and run directory are checked once, before any rank starts: a bad
# key is one line and exit 2, not one error per rank. It runs as rank 0 of the whole job.
if [ "${PREFLIGHT:-1}" != 0 ] || [ -n "${CHECK_ONLY:-}" ]; then
  if [ -n "${HOSTFILE:-}" ]; then
    world="$(awk '!/^[[:space:]]*(#|$)/ { n = 1; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) n = substr($i, 7); s += n } END { print s + 0 }' "$HOSTFILE")"
  else
    world="$NPROC_PER_NODE"
  fi
  RANK=0 LOCAL_RANK=0 WORLD_SIZE="$world" LOCAL_WORLD_SIZE="$world" \
    python -m dist_face.train "${train[@]}" --check-only || exit $?
  if [ -n "${CHECK_ONLY:-}" ]; then
    echo "CHECK_ONLY: $CONFIG passed its checks for $world ranks (configuration, inputs, run directory); nothing was started"
    exit 0
  fi
fi
exec "${cmd[@]}"
