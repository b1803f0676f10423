#!/usr/bin/env bash
# Serve a model with the vLLM engine on a GPU node, or benchmark a full-size model without weights.
#
#   scripts/serve_gpu.sh MODEL_DIR [vlmserve serve flags...]
#       Serve a local checkpoint with vLLM on 0.0.0.0:${PORT:-8000}.
#   scripts/serve_gpu.sh --dummy NAME [vlmserve serve flags...]
#       Write the full-size configuration of catalogue model NAME (vlmserve full-config; no
#       weights) under ${VLMSERVE_CACHE_DIR:-~/.cache/vlmserve}/full-config/NAME and serve it with
#       random weights (load_format=dummy): real memory use and speed, meaningless answers.
#   scripts/serve_gpu.sh --bench NAME_OR_DIR
#       Load a server started as above with vLLM's benchmark client (random images and text).
#
# Needs an NVIDIA GPU and the gpu extra: pip install -e '.[gpu]'
set -euo pipefail

PORT="${PORT:-8000}"
CACHE="${VLMSERVE_CACHE_DIR:-$HOME/.cache/vlmserve}"

need_gpu() {
    if ! nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; then
        echo "serve_gpu.sh: no NVIDIA GPU visible (nvidia-smi failed)" >&2
        exit 2
    fi
}

case "${1:-}" in
    "" | -h | --help)
        sed -n '2,12p' "$0"
        exit 0
        ;;
    --dummy)
        name="${2:?--dummy needs a catalogue name, e.g. llava-1.5-7b}"
        shift 2
        need_gpu
        dir="$CACHE/full-config/$name"
        [ -f "$dir/config.json" ] || vlmserve full-config "$name" "$dir"
        exec vlmserve serve --engine vllm --load-format dummy --model "$dir" \
            --served-model-name "$name" --host 0.0.0.0 --port "$PORT" "$@"
        ;;
    --bench)
        target="${2:?--bench needs the served model name or its folder}"
        name="$(basename "$target")"
        tokenizer="$target"
        [ -d "$tokenizer" ] || tokenizer="$CACHE/full-config/$name"
        exec vllm bench serve --backend openai-chat --endpoint /v1/chat/completions \
            --base-url "http://127.0.0.1:$PORT" --model "$name" --tokenizer "$tokenizer" \
            --dataset-name random-mm --num-prompts "${NUM_PROMPTS:-200}" \
            --max-concurrency "${CONCURRENCY:-16}" \
            --random-input-len 64 --random-output-len 128 \
            --random-mm-base-items-per-request 1 --random-mm-limit-mm-per-prompt '{"image": 1}' \
            --random-mm-bucket-config '{(336, 336, 1): 0.5, (720, 1280, 1): 0.5}'
        ;;
    *)
        model="$1"
        shift
        need_gpu
        exec vlmserve serve --engine vllm --model "$model" --host 0.0.0.0 --port "$PORT" "$@"
        ;;
esac
