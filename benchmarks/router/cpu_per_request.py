"""The router's own CPU cost per request, apart from any model: `vlmserve route` in front of a
stub OpenAI backend that answers at once (a streamed content chunk per ``max_tokens`` and a usage
chunk), driven by
`vlmserve bench --compare` (router as A, the stub directly as B, ``--rounds`` interleaved batches),
reading each process's CPU time from /proc before and after. Prints one table row: direct and
router req/s, their ratio, router ms of CPU per request, stub ms of CPU per request.

On a machine where router and backends share cores, this cost is taken from the backends; on a
GPU node it is what one router core can carry (1000 / ms per request = requests/s per core).
With ``--step-ms`` the stub waits that long before each chunk, like a backend whose time goes to
a GPU rather than to these cores: the req/s ratio is then the router's overhead on such a node.

    .venv/bin/python benchmarks/router/cpu_per_request.py [--requests 400] [--concurrency 8]
        [--step-ms 0] [--output-tokens 64] [--rounds 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.helpers import free_port  # noqa: E402

WARMUP = 8
PROMPT_TOKENS = 600


def usage(completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
    }


def stub_app(step_s: float) -> object:
    """An OpenAI-shaped chat endpoint that does no work (what the router adds is all that costs);
    each chunk waits ``step_s`` first."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    def event(choices: list[dict[str, object]], **extra: object) -> str:
        data = {"id": "stub", "object": "chat.completion.chunk", "created": 0, "model": "stub"}
        return f"data: {json.dumps({**data, 'choices': choices, **extra})}\n\n"

    async def chat(request: Request) -> Response:
        body = await request.json()
        tokens = int(body.get("max_tokens") or 16)  # a chunk per token
        if not body.get("stream"):
            message = {"role": "assistant", "content": " tok" * tokens}
            choice = {"index": 0, "message": message, "finish_reason": "length"}
            answer = {"id": "stub", "object": "chat.completion", "created": 0, "model": "stub"}
            return JSONResponse({**answer, "choices": [choice], "usage": usage(tokens)})

        async def events():  # type: ignore[no-untyped-def]
            yield event([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}])
            for _ in range(tokens):
                await asyncio.sleep(step_s)
                yield event([{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}])
            yield event([{"index": 0, "delta": {}, "finish_reason": "length"}])
            yield event([], usage=usage(tokens))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
            Route("/health", health),
        ]
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_healthy(url: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"not healthy: {url}")


def bench(router_url: str, stub_url: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """`vlmserve bench` through the router (A) against the stub directly (B), interleaved."""
    command = [
        sys.executable, "-m", "vlmserve.cli.main", "bench", "--base-url", router_url,
        "--model", "stub", "--compare", stub_url, "--compare-model", "stub",
        "--image-size", "336x336", "--output-tokens", str(args.output_tokens),
        "--concurrency", str(args.concurrency), "--num-requests", str(args.requests),
        "--rounds", str(args.rounds), "--warmup", str(WARMUP), "--no-progress", "--out", str(out),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    document: dict[str, Any] = json.loads((out / "bench.json").read_text())
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--step-ms", type=float, default=0.0, help="stub's wait per chunk")
    parser.add_argument("--output-tokens", type=int, default=64, help="bench's default: 64")
    parser.add_argument("--rounds", type=int, default=8, help="A,B / B,A batches per run")
    parser.add_argument("--out", type=Path, help="Keep the bench report in this folder.")
    parser.add_argument("--stub", type=int, help=argparse.SUPPRESS)  # internal: serve the stub
    args = parser.parse_args()
    if args.stub:
        import uvicorn

        app = stub_app(args.step_ms / 1000)
        uvicorn.run(app, host="127.0.0.1", port=args.stub, log_level="warning")  # type: ignore[arg-type]
        return
    stub_port, router_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "router.yaml"
        config.write_text(
            "tiers: [cheap]\nbackends:\n  - model: stub\n    tier: cheap\n"
            f"    api_base: http://127.0.0.1:{stub_port}/v1\n    price: {{per_1k_images: 0.25}}\n"
        )
        stub = subprocess.Popen(
            [sys.executable, __file__, "--stub", str(stub_port), "--step-ms", str(args.step_ms)]
        )
        router = subprocess.Popen(
            [sys.executable, "-m", "vlmserve.cli.main", "route", "--config", str(config)]
            + ["--port", str(router_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(f"http://127.0.0.1:{stub_port}/health")
            wait_healthy(f"http://127.0.0.1:{router_port}/health")
            before = cpu_seconds(router.pid), cpu_seconds(stub.pid)
            document = bench(
                f"http://127.0.0.1:{router_port}/v1",
                f"http://127.0.0.1:{stub_port}/v1",
                args,
                args.out or Path(tmp) / "bench",
            )
            after = cpu_seconds(router.pid), cpu_seconds(stub.pid)
            # Warm-up requests ran too: divide by everything each process served.
            router_ms = (after[0] - before[0]) * 1000 / (args.requests + WARMUP)
            stub_ms = (after[1] - before[1]) * 1000 / (2 * (args.requests + WARMUP))
            router_rps, direct_rps = (s["requests_per_second"] for s in document["summary"])
            print(
                "| run | direct req/s | router req/s | router / direct | router ms CPU/request "
                "| stub ms CPU/request |\n|---|---|---|---|---|---|"
            )
            print(
                f"| {args.rounds} rounds, c={args.concurrency}, {args.output_tokens} chunks "
                f"of {args.step_ms:g} ms "
                f"| {direct_rps:.1f} | {router_rps:.1f} | {router_rps / direct_rps:.3f} "
                f"| {router_ms:.2f} | {stub_ms:.2f} |",
                flush=True,
            )
        finally:
            for process in (router, stub):
                process.terminate()
                process.wait(30)


if __name__ == "__main__":
    main()
