#!/usr/bin/env bash
# Download the wheels the GPU check installs on an image without network (run where pip works):
#
#   bash tools/gpu_wheels.sh DIR [--python PYTHON]
#
# Exactly the pins of tools/gpu_wheels.txt, for CPython 3.12 on manylinux x86-64, no
# dependencies pulled in beyond them (the list holds them). antlr4-python3-runtime 4.9.3 (the
# version omegaconf 2.3 needs) is published as a source archive only: its pure-Python wheel is
# built here. The folder must stay under 20 MiB; then copy it next to the checkout and run
#
#   bash tools/gpu_check.sh --wheels DIR --out REPORT_DIR

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --python) PYTHON="$2"; shift 2 ;;
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        -*) echo "gpu_wheels: unknown argument $1 (see --help)" >&2; exit 2 ;;
        *) DIR="$1"; shift ;;
    esac
done
[ -z "$DIR" ] && { echo "gpu_wheels: give the folder to fill (see --help)" >&2; exit 2; }
LIMIT_MIB=20
mkdir -p "$DIR"
mapfile -t PINS < <(sed 's/#.*//; /^[[:space:]]*$/d; s/[[:space:]]//g' "$ROOT/tools/gpu_wheels.txt")
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --platform manylinux2014_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)
for pin in "${PINS[@]}"; do
    case "$pin" in
        antlr4-python3-runtime==*) # source only on PyPI: build its pure-Python wheel
            "$PYTHON" -m pip wheel -q --no-deps -w "$DIR" "$pin" ;;
        *)
            "$PYTHON" -m pip download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d "$DIR" "$pin" ;;
    esac
done
# exactly the list: one wheel per pin, nothing else
count=$(find "$DIR" -maxdepth 1 -name '*.whl' | wc -l)
if [ "$count" -ne "${#PINS[@]}" ]; then
    echo "gpu_wheels: $DIR holds $count wheels for ${#PINS[@]} pins (remove what is not listed)" >&2
    exit 1
fi
size_kib=$(du -sk "$DIR" | cut -f1)
if [ "$size_kib" -gt $((LIMIT_MIB * 1024)) ]; then
    echo "gpu_wheels: $DIR is $((size_kib / 1024)) MiB, over the ${LIMIT_MIB} MiB limit" >&2
    exit 1
fi
echo "gpu_wheels: ${#PINS[@]} wheels, $((size_kib / 1024 + 1)) MiB at most, in $DIR"
