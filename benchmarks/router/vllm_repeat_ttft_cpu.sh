#!/usr/bin/env bash
# vLLM's own caches on its CPU build: time to first token when every request brings a new image
# (run "fresh") against the same image and prompt prefix every time (run "repeat"). The response
# cache and vlmserve's decoded-image cache are off, so every request decodes and runs the model;
# what the repeat saves is vLLM's prefix cache (KV blocks of the shared prefix, image included)
# and its multimodal processor cache.
#   bash benchmarks/router/vllm_repeat_ttft_cpu.sh CHECKPOINT OUT_DIR
# CHECKPOINT: a tiny checkpoint that vLLM's CPU build serves (vlmserve tiny-model FAMILY DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
CKPT="${1:?usage: vllm_repeat_ttft_cpu.sh CHECKPOINT OUT_DIR}"
OUT="${2:?usage: vllm_repeat_ttft_cpu.sh CHECKPOINT OUT_DIR}"
mkdir -p "$OUT"
PY=.venv/bin/python
PORT=18611
VLLM_CPU_KVCACHE_SPACE=1 VLMSERVE_RESPONSE_CACHE=false VLMSERVE_IMAGE_CACHE_BYTES=0 \
  $PY -m vlmserve.cli.main serve --engine vllm --model "$CKPT" --served-model-name tiny \
  --port $PORT >"$OUT/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
  kill -0 $pid || { tail -30 "$OUT/server.log"; exit 1; }
  sleep 2
done
COMMON=(--base-url "http://127.0.0.1:$PORT/v1" --model tiny --image-size 336x336
  --output-tokens 8 --concurrency 1 --num-requests 24 --no-progress)
# Fresh: 25 distinct images (warm-up included), so no request finds its image in a cache.
$PY -m vlmserve.cli.main bench "${COMMON[@]}" --distinct-images 25 --warmup 1 --out "$OUT/fresh"
# Repeat: one image; the warm-up request is the first sight of it, every measured one a repeat.
$PY -m vlmserve.cli.main bench "${COMMON[@]}" --distinct-images 1 --warmup 1 --out "$OUT/repeat"
grep -h "TTFT" "$OUT/fresh/summary.md" "$OUT/repeat/summary.md"
