#!/usr/bin/env bash
# SAELens interop check, both directions: SAEs we save and push load with SAELens 6.x
# `SAE.load_from_disk` and `SAE.from_pretrained` unchanged, with equal weights and outputs; SAEs that
# SAELens saves (every architecture it registers) load with `SAE.load` bit-close or are refused by name.
#
# SAELens pins (transformer-lens, transformers, datasets, ...) clash with the project's, so it gets
# its own virtual environment, cached between runs (about 4 min to build on 2 cores, ~2 GB; reused
# when SAELens is already at the pinned version). The CPU torch wheel goes in first so that pip
# never pulls a CUDA build. Stage 1 (export) runs in the project's Python, stage 2 (check) in the
# SAELens venv against the stdlib test Hub server of tests/hub_server.py; nothing touches the internet
# besides PyPI for the venv.
#
# Usage: bash scripts/saelens_interop.sh
#   PYTHON=python3                      the project's interpreter (with interventions installed)
#   SAELENS_VENV=~/.cache/interventions/saelens-venv
#   SAELENS_VERSION=6.54.12  TORCH_VERSION=2.13.0
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
SAELENS_VERSION="${SAELENS_VERSION:-6.54.12}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VENV="${SAELENS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/interventions/saelens-venv}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

start=$(date +%s)
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('sae-lens') != '$SAELENS_VERSION')" 2>/dev/null; then
  echo "== building the SAELens venv in $VENV (sae-lens==$SAELENS_VERSION, torch==$TORCH_VERSION)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" "sae-lens==$SAELENS_VERSION"
fi
echo "== SAELens venv ready after $(( $(date +%s) - start ))s"

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
"$PY" scripts/saelens_interop.py export "$OUT"
"$VENV/bin/python" scripts/saelens_interop.py check "$OUT"
"$PY" scripts/saelens_interop.py import "$OUT"
echo "== SAELens interop done in $(( $(date +%s) - start ))s"
