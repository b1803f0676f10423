#!/usr/bin/env bash
# Create or update .venv with vlmserve and its extras. On a machine with an NVIDIA GPU the default
# extras are gpu,test (vLLM's CUDA build); elsewhere cpu,test (vLLM's CPU build, installed with
# scripts/cpu-overrides.txt). VLMSERVE_EXTRAS overrides the choice. Idempotent: when
# pyproject.toml, the overrides and the extras have not changed since the last run, it returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${VLMSERVE_EXTRAS:-}" ]]; then
  if [[ -e /dev/nvidiactl ]] || nvidia-smi -L >/dev/null 2>&1; then
    VLMSERVE_EXTRAS="gpu,test"
  else
    VLMSERVE_EXTRAS="cpu,test"
  fi
fi
extras="$VLMSERVE_EXTRAS"
overrides=()
if [[ ",$extras," == *",cpu,"* ]]; then
  overrides=(--override scripts/cpu-overrides.txt)
fi
stamp=".venv/.vlmserve-setup"
want="$(cat pyproject.toml scripts/cpu-overrides.txt | sha256sum | cut -d' ' -f1) $extras"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv" >&2
  python3 -m pip install --quiet uv
fi
if [[ ! -x .venv/bin/python ]]; then
  uv venv --quiet --python ">=3.11" .venv
fi
echo "setup: installing vlmserve[$extras] into .venv" >&2
VIRTUAL_ENV="$PWD/.venv" uv pip install --quiet -e ".[$extras]" "${overrides[@]}"
echo "$want" > "$stamp"
