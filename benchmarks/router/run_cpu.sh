#!/usr/bin/env bash
# The router's overhead and the response cache on CPU: a tiny LLaVA vlmserve backend (ENGINE,
# default vllm: vLLM's CPU build), `vlmserve route` in front of it, and `vlmserve bench` against
# both. Writes bench reports under OUT.
#   bash benchmarks/router/run_cpu.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:?usage: run_cpu.sh OUT_DIR}"
mkdir -p "$OUT"
PY=.venv/bin/python
CKPT="${VLMSERVE_TEST_CACHE:-/tmp/router-tiny}/llava-v2"
[[ -f "$CKPT/config.json" ]] || $PY -m vlmserve.cli.main tiny-model llava "$CKPT"
BACKEND_PORT=18601 ROUTER_PORT=18602
ENGINE="${ENGINE:-vllm}"
# Job control: each server in a process group of its own, inside this session (cpu_vllm.sh says why).
set -m
pids=()
trap 'for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done' EXIT
$PY -m vlmserve.cli.main serve --model "$CKPT" --served-model-name tiny-llava --engine "$ENGINE" \
  --cpu-kv-cache-gib 1 --max-model-len 4096 --port $BACKEND_PORT >"$OUT/backend.log" 2>&1 &
pids+=($!)
cat >"$OUT/router.yaml" <<YAML
tiers: [cheap]
backends:
  - model: tiny-llava
    tier: cheap
    api_base: http://127.0.0.1:$BACKEND_PORT/v1
    price: {per_1k_images: 0.25}
YAML
$PY -m vlmserve.cli.main route --config "$OUT/router.yaml" --port $ROUTER_PORT \
  >"$OUT/router.log" 2>&1 &
pids+=($!)
for port in $BACKEND_PORT $ROUTER_PORT; do
  until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 1; done
done
ROUTER="http://127.0.0.1:$ROUTER_PORT/v1" BACKEND="http://127.0.0.1:$BACKEND_PORT/v1"
COMMON=(--model tiny-llava --compare-model tiny-llava --image-size 336x336 --output-tokens 16
  --warmup 4 --no-progress)

# 1. Throughput: A = through the router, B = the backend directly, at concurrency 8 (sampled
#    requests: nothing is cached).
$PY -m vlmserve.cli.main bench --base-url "$ROUTER" --compare "$BACKEND" "${COMMON[@]}" \
  --concurrency 8 --num-requests 160 --out "$OUT/throughput"

# 2. Cache: A = the router with temperature 0 and one image (after the warm-up's miss, every
#    request is a hit), B = the backend with sampled requests (every request runs the model).
$PY -m vlmserve.cli.main bench --base-url "$ROUTER" --compare "$BACKEND" "${COMMON[@]}" \
  --distinct-images 1 --extra-body '{"temperature": 0}' --concurrency 1 --num-requests 40 \
  --out "$OUT/cache"

# 3. Cache misses as the cache sees them: the router with temperature 0 and a new image on every
#    request (42 distinct for 40 requests and the warm-up), so neither the response cache nor
#    vLLM's prefix cache has seen it. Its TTFT p50 against step 2's hits is the cache's effect.
$PY -m vlmserve.cli.main bench --base-url "$ROUTER" --model tiny-llava --image-size 336x336 \
  --output-tokens 16 --warmup 2 --no-progress --distinct-images 42 --seed 3 \
  --extra-body '{"temperature": 0}' --concurrency 1 --num-requests 40 --out "$OUT/cache-miss"
