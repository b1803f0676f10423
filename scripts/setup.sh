#!/usr/bin/env bash
# Create or update .venv with vlmserve and its extras (default: gpu,test — the same vLLM, torch
# and torchvision a GPU node gets). Idempotent: when pyproject.toml and the extras have not changed
# since the last run, it returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${VLMSERVE_EXTRAS:-gpu,test}"
stamp=".venv/.vlmserve-setup"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"

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
VIRTUAL_ENV="$PWD/.venv" uv pip install --quiet -e ".[$extras]"
echo "$want" > "$stamp"
