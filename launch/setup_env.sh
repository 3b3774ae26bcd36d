#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and print nothing but progress.
#
# Usage:  source launch/setup_env.sh [EXTRAS]      # e.g. "dev,dali,deepspeed"
#   or:   bash launch/setup_env.sh [EXTRAS]        # just build it
#
# Environment:
#   DIST_FACE_VENV    where the environment lives (default: <repo>/.venv)
#   DIST_FACE_PYTHON  interpreter to build it with (default: python3.11, else python3)
#   DIST_FACE_TORCH   torch requirement when no NVIDIA GPU is present (default: torch==2.13.0,
#                     a CPU build; an unpinned torch pulls a multi-GB CUDA build)
#
# The environment is reused while pyproject.toml, this script and the extras are unchanged:
# a stamp file holds their hash, and a changed hash re-runs the install in place.
set -euo pipefail
case "${1:-}" in -h | --help)  # the comment block above is the usage; sourced: return
  sed -n '2,/^set -/{/^#SBATCH/d;s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; return 0 2>/dev/null || exit 0 ;; esac
_df_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_df_extras="${1:-dev}"
_df_venv="${DIST_FACE_VENV:-$_df_root/.venv}"
_df_py="${DIST_FACE_PYTHON:-$(command -v python3.11 || command -v python3)}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  _df_torch="${DIST_FACE_TORCH:-torch>=2.8}"
else
  _df_torch="${DIST_FACE_TORCH:-torch==2.13.0}"
fi
_df_hash="$(cat "$_df_root/pyproject.toml" "$_df_root/launch/setup_env.sh" \
  | { cat; echo "$_df_torch"; } | sha256sum | cut -c1-16)"
_df_stamp="$_df_venv/.dist_face_stamp"
# The stamp holds "<hash> <extras>"; an environment with more extras than asked for is reused.
_df_have_hash="" _df_have_extras=""
if [ -f "$_df_stamp" ]; then read -r _df_have_hash _df_have_extras <"$_df_stamp" || true; fi
_df_missing=""
for _df_e in ${_df_extras//,/ }; do
  case ",${_df_have_extras:-}," in *",$_df_e,"*) ;; *) _df_missing="$_df_missing $_df_e" ;; esac
done
if [ -n "${_df_have_extras:-}" ]; then  # never drop extras this environment already has
  _df_extras="$(echo "$_df_have_extras,$_df_extras" | tr ',' '\n' | sort -u | paste -sd, -)"
fi

if [ ! -x "$_df_venv/bin/python" ]; then
  echo "[setup_env] creating $_df_venv with $_df_py"
  "$_df_py" -m venv "$_df_venv"
fi
if [ "${_df_have_hash:-}" != "$_df_hash" ] || [ -n "$_df_missing" ]; then
  echo "[setup_env] installing dist_face[$_df_extras] with $_df_torch (this takes a minute)"
  # install output goes to a log that is shown only when the install fails
  _df_log="$_df_venv/install.log"
  _df_pip() {
    if ! "$_df_venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >>"$_df_log" 2>&1; then
      cat "$_df_log" >&2
      echo "[setup_env] pip install $* failed (log: $_df_log)" >&2
      return 1
    fi
  }
  : >"$_df_log"
  _df_pip "$_df_torch"
  _df_pip -e "$_df_root[$_df_extras]" "$_df_torch"
  echo "$_df_hash $_df_extras" >"$_df_stamp"
else
  echo "[setup_env] reusing $_df_venv"
fi
export PATH="$_df_venv/bin:$PATH"
export VIRTUAL_ENV="$_df_venv"
# DeepSpeed compiles C++ ops on first use; keep them across runs.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$_df_venv/torch_extensions}"
