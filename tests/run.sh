#!/usr/bin/env bash
# The whole test suite: environment, lint, format, then every test tier this machine can run.
#   bash tests/run.sh              # lint, format and the default test run (tests/unit on
#                                  # DIST_FACE_TEST_WORKERS=2 processes, then tests/dist, tests/gpu)
#   bash tests/run.sh -m unit      # extra arguments go to one plain pytest run instead
#   DIST_FACE_MATRIX=1 bash tests/run.sh   # also every case of the reduced parametrisations
#   DIST_FACE_SOAK=1 bash tests/run.sh     # also the 300-epoch-boundary soak
set -euo pipefail
case "${1:-}" in -h | --help)  # the comment block above is the usage
  sed -n '2,/^set -/{/^#SBATCH/d;s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;; esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=launch/setup_env.sh
source launch/setup_env.sh "dev,dali,deepspeed"
# DeepSpeed compiles a C++ op on first use (~30 s); keep it next to the environment
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}"
# promtool and prometheus (Debian's prometheus package) check the exposition and the alert rules
# and run the real-server test; those tests skip without them. Tolerant of failure (offline).
if ! { command -v promtool && command -v prometheus; } >/dev/null 2>&1 \
  && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[tests] installing promtool (Debian package prometheus)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends prometheus; } >/dev/null 2>&1 || echo "[tests] promtool not installed"
fi
# ip (iproute2) makes the network namespaces of tests/dist/test_node_loss.py (two "nodes" on
# this machine); that test skips without it. Tolerant of failure (offline).
if ! command -v ip >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[tests] installing ip (Debian package iproute2)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends iproute2; } >/dev/null 2>&1 || echo "[tests] iproute2 not installed"
fi
echo "[tests] ruff check"
ruff check .
echo "[tests] ruff format --check"
ruff format --check .
if [ $# -gt 0 ]; then
  echo "[tests] pytest $*"
  exec python -m pytest "$@"
fi
# The single-process tests share the cores (pytest-xdist); the multi-process ones start 2-4
# ranks each, so they run one at a time. Both always run; the status is the worse of the two.
status=0
echo "[tests] pytest tests/unit on ${DIST_FACE_TEST_WORKERS:-2} workers"
python -m pytest -n "${DIST_FACE_TEST_WORKERS:-2}" tests/unit || status=$?
echo "[tests] pytest tests/dist tests/gpu"
python -m pytest tests/dist tests/gpu || status=$?
exit "$status"
