#!/usr/bin/env bash
# vlmserve --engine vllm against vLLM's own OpenAI server, then against vlmserve's transformers
# engine, on vLLM's CPU build: the same tiny LLaVA, the same engine arguments, one 336x336 image
# and 64 output tokens per request, concurrency 1, 4, 8 and 16, interleaved by `vlmserve bench
# --compare`. Writes under OUT (default /tmp/cpu-vllm-bench); see
# benchmarks/results/2026-12-02-cpu-vllm-vs-vlmserve.md for a run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/cpu-vllm-bench}"
REQUESTS="${REQUESTS:-32}"  # per level; LEVELS (default 1,4,8,16) the concurrencies, ROUNDS
# (default 2) the A,B / B,A batches each level is cut into
PY=.venv/bin/python
mkdir -p "$OUT"
MODEL="$OUT/llava"
[[ -f "$MODEL/config.json" ]] || $PY -m vlmserve.cli.main tiny-model llava "$MODEL"

# The engine arguments vlmserve derives on the CPU build (engine_args_from_settings with
# --cpu-kv-cache-gib 1), passed to vLLM's server as flags.
VLLM_ARGS=(--max-model-len 4096 --kv-cache-memory-bytes 1073741824 --skip-mm-profiling
  --limit-mm-per-prompt '{"image": 8, "video": 0}')
# Job control puts each server in a process group of its own (killed whole by cleanup) inside
# this session: a server in a new session (setsid) is a CPU group of its own under the kernel's
# autogroup scheduling, and on 2 cores a busy vLLM engine then starves the benchmark client.
set -m
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_ready() {  # URL
  for _ in $(seq 1 1800); do curl -sf "$1" >/dev/null && return 0; sleep 1; done
  echo "not ready: $1" >&2
  return 1
}

start() {  # NAME PORT COMMAND...  (returns at once; `ready NAME PORT` waits)
  local name=$1 port=$2
  shift 2
  "$@" --port "$port" >"$OUT/$name.log" 2>&1 &
  pids+=($!)
}

ready() {  # NAME PORT
  wait_ready "http://127.0.0.1:$2/health"
  echo "$1 ready $((SECONDS - T0)) s after the start" | tee -a "$OUT/startup.txt"
}

bench() {  # A_PORT B_PORT OUTDIR
  $PY -m vlmserve.cli.main bench --base-url "http://127.0.0.1:$1/v1" \
    --compare "http://127.0.0.1:$2/v1" --image-size 336x336 --output-tokens 64 \
    --concurrency "${LEVELS:-1,4,8,16}" --num-requests "$REQUESTS" \
    --rounds "${ROUNDS:-2}" --warmup 4 --no-progress --out "$3"
}

# Both vLLM servers start together (each worker binds to core 0, so only one is busy at a time
# once the benchmark runs: --compare interleaves them).
T0=$SECONDS
start vllm 8101 $PY -m vllm.entrypoints.openai.api_server --model "$MODEL" "${VLLM_ARGS[@]}"
start vlmserve-vllm 8102 $PY -m vlmserve.cli.main serve --engine vllm --model "$MODEL" \
  --cpu-kv-cache-gib 1 --max-model-len 4096
ready vllm 8101
ready vlmserve-vllm 8102
bench 8102 8101 "$OUT/vlmserve-vs-vllm"
kill -TERM -- "-${pids[0]}"
[[ -n "${VLLM_ONLY:-}" ]] && exit 0
T0=$SECONDS
start vlmserve-transformers 8103 $PY -m vlmserve.cli.main serve --engine transformers \
  --model "$MODEL"
ready vlmserve-transformers 8103
bench 8102 8103 "$OUT/vllm-vs-transformers-engine"
