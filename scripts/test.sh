#!/usr/bin/env bash
# Set up (once) and run the whole test suite and the linters. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The shared-state tests run a real Redis server (Debian's package).
command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
