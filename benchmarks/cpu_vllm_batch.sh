#!/usr/bin/env bash
# Issue 17's two figures on vLLM's CPU build, one run: interactive TTFT without and with a Batch
# API batch running (benchmarks/batch_runs.py ttft), then `vlmserve batch` (the engine in its own
# process, no HTTP) against `vlmserve bench` over HTTP at the same concurrency, alternating.
# Tiny LLaVA, one 336x336 JPEG per request. Writes under OUT (default /tmp/cpu-vllm-batch).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/cpu-vllm-batch}"
ROUNDS="${ROUNDS:-3}"
LINES="${LINES:-500}"
CONCURRENCY="${CONCURRENCY:-8}"
PY=.venv/bin/python
VLM=($PY -m vlmserve.cli.main)
PORT=8201
mkdir -p "$OUT"
MODEL="$OUT/llava"
[[ -f "$MODEL/config.json" ]] || "${VLM[@]}" tiny-model llava "$MODEL"
export VLMSERVE_CPU_KV_CACHE_GIB=1 VLMSERVE_MAX_MODEL_LEN=4096
ENGINE=(--model "$MODEL" --served-model-name llava --engine vllm)

# Job control: each server gets a process group of its own inside this session (cpu_vllm.sh says why).
set -m
SERVER=
stop_server() { [[ -z "$SERVER" ]] || kill -TERM -- "-$SERVER" 2>/dev/null || true; wait "$SERVER" || true; SERVER=; }
start_server() {  # LOG: a fresh engine, so no run starts with another's caches warm
  "${VLM[@]}" serve "${ENGINE[@]}" --port $PORT --batch-dir "$OUT/batches" >"$1" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return; sleep 1; done
}
trap stop_server EXIT

# 1. Interactive TTFT (c=1, 16 tokens) alone and with a 3,000-line batch of 64-token lines running.
[[ -f "$OUT/big.jsonl" ]] || $PY benchmarks/batch_runs.py input "$OUT/big.jsonl" --lines 3000 \
  --model llava --output-tokens 64
start_server "$OUT/server-ttft.log"
$PY benchmarks/batch_runs.py ttft --base-url "http://127.0.0.1:$PORT/v1" --model llava \
  --input "$OUT/big.jsonl" --rounds "$ROUNDS" | tee "$OUT/ttft.md"
stop_server

# 2. `vlmserve batch` against `vlmserve bench` on a fresh server, LINES requests each at
#    CONCURRENCY, 64 tokens, the same 64 images in turn (so both find the same caches).
[[ -f "$OUT/b$LINES.jsonl" ]] || $PY benchmarks/batch_runs.py input "$OUT/b$LINES.jsonl" \
  --lines "$LINES" --model llava --output-tokens 64
for round in $(seq 1 "$ROUNDS"); do
  rm -f "$OUT/cli-$round.jsonl"
  echo "round $round: vlmserve batch" | tee -a "$OUT/batch-vs-bench.txt"
  "${VLM[@]}" batch "$OUT/b$LINES.jsonl" -o "$OUT/cli-$round.jsonl" "${ENGINE[@]}" \
    --concurrency "$CONCURRENCY" --gpu-price 1.0 --no-progress 2>>"$OUT/batch.log" \
    | grep -v " INFO \| WARNING " | tee -a "$OUT/batch-vs-bench.txt"
  echo "round $round: vlmserve bench" | tee -a "$OUT/batch-vs-bench.txt"
  start_server "$OUT/server-bench-$round.log"
  "${VLM[@]}" bench --base-url "http://127.0.0.1:$PORT/v1" --model llava \
    --concurrency "$CONCURRENCY" --num-requests "$LINES" --output-tokens 64 \
    --image-size 336x336 --gpu-price 1.0 --warmup 4 --no-progress --out "$OUT/bench-$round" \
    | tee -a "$OUT/batch-vs-bench.txt"
  stop_server
done
