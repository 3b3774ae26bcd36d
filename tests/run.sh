#!/usr/bin/env bash
# The whole test suite: environment, lint, format, then every test tier this machine can run.
#   bash tests/run.sh              # everything
#   bash tests/run.sh -m unit      # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=launch/setup_env.sh
source launch/setup_env.sh "dev,dali,deepspeed"
echo "[tests] ruff check"
ruff check .
echo "[tests] ruff format --check"
ruff format --check .
echo "[tests] pytest"
exec python -m pytest "$@"
