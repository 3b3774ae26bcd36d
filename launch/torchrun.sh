#!/usr/bin/env bash
# Launch dist_face training with torchrun, on one node or many (c10d rendezvous).
#
#   bash launch/torchrun.sh [--section.field=value ...]        # extra arguments go to the trainer
#
# Trainer flags: dist-face-train --help; config fields: dist-face-train --help-config [SECTION].
# Relative paths (--data.root=packed, RESUME=runs/x/checkpoints/step_00000100) are relative to
# the directory this script is started in: it never changes directory.
# Every setting comes from the environment (defaults in brackets):
#   CONFIG          recipe name or path                               [debug_cpu]
#   NNODES          number of nodes, or MIN:MAX to go on without lost
#                   nodes and take in returning ones (docs)           [1]
#   NPROC_PER_NODE  processes per node                                [GPUs on this node, else 2]
#   RDZV_ENDPOINT   host:port of the rendezvous (any node, reachable) [standalone on 1 node]
#   RDZV_ID         run id shared by all nodes of one job             [dist_face-$CONFIG]
#   MAX_RESTARTS    elastic restarts of the whole job after a failure  [0]
#   RESUME          checkpoint to resume from: auto, a path, or none  [auto]
#   LOG_RANKS       local ranks whose output is shown, e.g. 0         [all]
#   STOP_GRACE_S    seconds torchrun waits for the ranks to checkpoint and exit after SIGTERM
#                   or SIGUSR1 before it kills them                   [120]
#   PREFLIGHT=0     skip the configuration check before the ranks start
#   CHECK_ONLY=1    run that check only: exit 0, or 2 with one line naming the bad key
#   DRY_RUN=1       print the torchrun command instead of running it
# With RESUME=auto a restarted job (MAX_RESTARTS > 0, or a re-submitted one) continues from its
# latest complete checkpoint instead of starting over.
# SIGTERM or SIGUSR1 to torchrun (a scheduler's preemption or time-limit warning) reaches every
# rank: the ranks stop at the same step, write a checkpoint and exit with code 75; RESUME=auto
# continues from it.
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
NNODES="${NNODES:-1}"
if [ -z "${NPROC_PER_NODE:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    NPROC_PER_NODE="$(nvidia-smi -L | wc -l)"
  else
    NPROC_PER_NODE=2
  fi
fi
RDZV_ID="${RDZV_ID:-dist_face-$CONFIG}"
MAX_RESTARTS="${MAX_RESTARTS:-0}"
RESUME="${RESUME:-auto}"

cmd=(torchrun --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" --max_restarts="$MAX_RESTARTS")
# forward SIGUSR1 (SLURM's --signal) as well as SIGTERM to the ranks, and give them the time to
# write their checkpoint before torchrun's SIGKILL
cmd+=(--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout="${STOP_GRACE_S:-120}")
if [ "$NNODES" = 1 ] && [ -z "${RDZV_ENDPOINT:-}" ]; then
  cmd+=(--standalone)  # a private rendezvous on a free local port
else
  cmd+=(--rdzv_backend=c10d --rdzv_endpoint="${RDZV_ENDPOINT:-127.0.0.1:29400}" --rdzv_id="$RDZV_ID")
fi
[ -n "${LOG_RANKS:-}" ] && cmd+=(--local-ranks-filter="$LOG_RANKS")
train=(-m dist_face.train --config "$CONFIG")
[ "$RESUME" != none ] && train+=(--resume "$RESUME")
train+=("$@")
cmd+=("${train[@]}")

if [ -n "${DRY_RUN:-}" ]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
# No change of directory: relative paths on the command line and in the recipe are relative to
# where this script was started, and torchrun's workers start there too.
# A restarted job (MAX_RESTARTS > 0) must rendezvous on a fresh TCP store. By default torchrun
# hands its rendezvous store to the workers of every attempt (upstream pytorch#135712), so a
# restart after a killed worker re-uses keys of the failed attempt: measured 3 of 6 restarts
# failing (gloo "connectFullMesh failed ... Connection refused", or a hang) against 7 of 7
# finishing with this set. Costs one extra store per attempt.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"
# Use the active environment when it has dist_face (a cluster image, a job script that already
# activated one); otherwise build/reuse the project's. Several launchers on one machine must
# not install into the same environment at once. Finding the modules, without importing torch,
# takes 0.1 s instead of 5.
if ! python -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('torch') and u.find_spec('dist_face.train')))" >/dev/null 2>&1; then
  # shellcheck source=launch/setup_env.sh
  source "$root/launch/setup_env.sh" "${DIST_FACE_EXTRAS:-dev}" >&2
fi
# a folder of photos as data.root: one line and exit 2 here (torchrun would add a traceback);
# any other failure of this check is left to the trainer's own checks
check=0
python -m dist_face.cli.launch_check --config "$CONFIG" "$@" || check=$?
[ "$check" != 2 ] || exit 2
# The configuration, paths and run directory are checked once, before any rank starts: a bad
# key is one line and exit 2, not one error per rank followed by torchrun's traceback. It runs
# as rank 0 of the largest world the job can have (NNODES=1:2 -> 2 nodes), where each rank's
# share of the data is smallest.
if [ "${PREFLIGHT:-1}" != 0 ] || [ -n "${CHECK_ONLY:-}" ]; then
  RANK=0 LOCAL_RANK=0 WORLD_SIZE=$((${NNODES##*:} * NPROC_PER_NODE)) LOCAL_WORLD_SIZE="$NPROC_PER_NODE" \
    python "${train[@]}" --check-only || exit $?
  if [ -n "${CHECK_ONLY:-}" ]; then
    echo "CHECK_ONLY: $CONFIG passed its checks for $((${NNODES##*:} * NPROC_PER_NODE)) ranks (configuration, inputs, run directory); nothing was started"
    exit 0
  fi
fi
# torchrun's stderr passes through a filter that replaces the agent's own traceback after a stop
# signal (the ranks have already written their checkpoint and said so) by one line; every other
# line, rank logs included, passes as it comes. The filter ignores the stop signals, so the
# ranks' last lines reach the log (dist_face/cli/torchrun_stderr.py).
exec 3>&2
exec "${cmd[@]}" 2> >(trap '' INT TERM HUP QUIT USR1; exec python -u -m dist_face.cli.torchrun_stderr >&3 2>&3)
