"""Phone photos, side by side: vlmserve's image path against itself switched off and against vLLM.

Three A/B pairs on one tiny LLaVA-1.5 checkpoint, each run by ``vlmserve bench --compare`` (the
two servers interleaved per level, so drift hits both alike), with 4032x3024 photo-like JPEGs,
one per request:

1. ``image-path``: vlmserve with its image path (worker pool, shrink, cache) against vlmserve
   with it off (``IMAGE_WORKERS=0 IMAGE_DOWNSCALE=false IMAGE_CACHE_BYTES=0``);
2. ``vs-vllm``: vlmserve against raw vLLM's OpenAI server (``--with-vllm``; vLLM gets
   ``VLLM_CPU_KVCACHE_SPACE=1``). With ``--vlmserve-engine vllm`` the two run one after the other
   (never two vLLM instances at once) as two single-server benches, ``--rounds`` times
   alternating, each round with images of its own;
3. ``multi-turn``: the multi-turn workload against vlmserve with and without its cache.

Prints images/s per pair and the ratio; the benches' full reports go under ``--out``. Figures,
not tests: they depend on the machine. Run: ``.venv/bin/python scripts/compare_photos.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import REPO, free_port, start_server, tiny_checkpoint  # noqa: E402

OFF = {"VLMSERVE_IMAGE_WORKERS": "0", "VLMSERVE_IMAGE_DOWNSCALE": "false"}
NO_CACHE = {"VLMSERVE_IMAGE_CACHE_BYTES": "0"}
BIN = Path(sys.executable).parent
#: ``vlmserve bench``'s default warm-up requests per server.
WARMUP = 2


@contextmanager
def vlmserve(model: Path, logs: Path, name: str, env: dict[str, str], engine: str) -> Iterator[str]:
    """A vlmserve server; yields its base URL."""
    server = start_server(["--model", str(model), "--engine", engine], logs / f"{name}.log", env)
    try:
        yield server.base_url
    finally:
        server.stop()


@contextmanager
def raw_vllm(model: Path, logs: Path) -> Iterator[str]:
    """vLLM's own OpenAI server on the checkpoint; yields its base URL."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    command = [
        str(BIN / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        model.name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "4096",
        "--limit-mm-per-prompt",
        '{"image": 1}',
    ]
    with (logs / "vllm.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            try:
                _wait_healthy(f"http://127.0.0.1:{port}", process, 900)
            except (RuntimeError, TimeoutError):
                print((logs / "vllm.log").read_text(errors="replace")[-4000:], file=sys.stderr)
                raise
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise TimeoutError("vLLM did not become healthy")


def bench(
    out: Path, a: str, b: str | None, args: argparse.Namespace, distinct: int, *extra: str
) -> list[dict]:
    """Run ``vlmserve bench`` (A against B when given); the level summaries of its bench.json."""
    command = [
        str(BIN / "vlmserve"),
        "bench",
        "--base-url",
        a,
        "--image-preset",
        args.preset,
        "--distinct-images",
        str(distinct),
        "--concurrency",
        str(args.concurrency),
        "--num-requests",
        str(args.num_requests),
        "--output-tokens",
        str(args.output_tokens),
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]
    if b is not None:
        command += ["--compare", b]
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    return list(json.loads((out / "bench.json").read_text())["summary"])


def images_per_second(summaries: list[dict], target: str = "A") -> float:
    return float(next(s["images_per_second"] for s in summaries if s["target"] == target))


def report(name: str, a_label: str, a: float, b_label: str, b: float) -> None:
    ratio = a / b if b else float("nan")
    print(f"{name}: {a_label} {a:.2f} img/s, {b_label} {b:.2f} img/s, ratio {ratio:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("compare-photos"))
    parser.add_argument("--preset", default="phone")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--num-requests", type=int, default=48)
    parser.add_argument(
        "--conversations", type=int, default=8, help="Multi-turn: conversations (one image each)."
    )
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--with-vllm", action="store_true", help="Also run raw vLLM (pair 2).")
    parser.add_argument(
        "--rounds", type=int, default=1, help="With --vlmserve-engine vllm: alternating rounds."
    )
    parser.add_argument(
        "--vlmserve-engine", choices=["transformers", "vllm"], default="transformers"
    )
    parser.add_argument("--checkpoints", type=Path, help="Where tiny checkpoints are built/kept.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # Single-image pairs: no image is sent twice to a server (warm-up included), so neither
    # vlmserve's cache nor vLLM's processor cache ever hits.
    distinct = args.num_requests + WARMUP
    with tempfile.TemporaryDirectory(prefix="vlmserve-photos-") as tmp:
        model = tiny_checkpoint("llava", args.checkpoints or Path(tmp))
        logs, engine = Path(tmp), args.vlmserve_engine
        if engine == "transformers":
            with (
                vlmserve(model, logs, "on", {}, engine) as on,
                vlmserve(model, logs, "off", {**OFF, **NO_CACHE}, engine) as off,
            ):
                pair = bench(args.out / "image-path", on, off, args, distinct)
            report("image path", "on", images_per_second(pair), "off", images_per_second(pair, "B"))
        if args.with_vllm and engine == "transformers":
            with vlmserve(model, logs, "vs", {}, engine) as ours, raw_vllm(model, logs) as theirs:
                pair = bench(args.out / "vs-vllm", ours, theirs, args, distinct)
            ours_rate, theirs_rate = images_per_second(pair), images_per_second(pair, "B")
            report("vs vLLM", "vlmserve", ours_rate, "raw vLLM", theirs_rate)
        elif args.with_vllm:
            # Rounds alternate the two servers, so drift on a shared machine hits both alike;
            # each round sends images of its own (a new seed), so no cache has seen them.
            ours_rates, theirs_rates = [], []
            for n in range(1, args.rounds + 1):
                seed = ["--seed", str(n)]
                with vlmserve(model, logs, "vs", {}, engine) as ours:
                    out = args.out / f"round-{n}" / "vlmserve-vllm"
                    ours_rates.append(
                        images_per_second(bench(out, ours, None, args, distinct, *seed))
                    )
                with raw_vllm(model, logs) as theirs:
                    out = args.out / f"round-{n}" / "raw-vllm"
                    theirs_rates.append(
                        images_per_second(bench(out, theirs, None, args, distinct, *seed))
                    )
                report(
                    f"vs vLLM, round {n}",
                    "vlmserve (vllm engine)",
                    ours_rates[-1],
                    "raw vLLM",
                    theirs_rates[-1],
                )
            ours_rate = sum(ours_rates) / len(ours_rates)
            theirs_rate = sum(theirs_rates) / len(theirs_rates)
            report(
                "vs vLLM, mean of rounds",
                "vlmserve (vllm engine)",
                ours_rate,
                "raw vLLM",
                theirs_rate,
            )
        with (
            vlmserve(model, logs, "cache", {}, engine) as cached,
            vlmserve(model, logs, "nocache", NO_CACHE, engine) as uncached,
        ):
            turns = ["--workload", "multi-turn", "--turns", str(args.turns)]
            pair = bench(
                args.out / "multi-turn", cached, uncached, args, args.conversations, *turns
            )
        report(
            "multi-turn", "cache", images_per_second(pair), "no cache", images_per_second(pair, "B")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
