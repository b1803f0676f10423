#!/usr/bin/env bash
# Set up (once) and start the server. With no --model on a machine without a GPU it serves the
# tiny built-in demo model. Any flag of `vlmserve serve` may follow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vlmserve serve "$@"
