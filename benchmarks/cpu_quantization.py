"""Which quantizations vLLM's CPU build runs: each one the planner may choose, on the tiny LLaVA.

Run from the repository root, one server at a time (each vLLM start is 1-2 minutes on 2 cores):

    .venv/bin/python -m benchmarks.cpu_quantization --out benchmarks/results/DATE-cpu-quantization

Cases: the AWQ and GPTQ variants of the tiny checkpoint (tests/quantized_checkpoint.py) and
bitsandbytes through ``vlmserve serve --engine vllm``; fp8 weights and bitsandbytes without its
package through vlmserve (which refuses them) and fp8 weights through vLLM's own OpenAI server
(to record the failure vlmserve's refusal stands for); fp8 KV cache (e4m3 and e5m2) through
vLLM's own server, as vlmserve has no KV-cache dtype setting on the CPU build. bitsandbytes is
not a vlmserve dependency: ``--bitsandbytes-path`` names a folder it is installed in
(``uv pip install --target DIR 'bitsandbytes>=0.48.1'``), added to PYTHONPATH for that case only.

For each case: whether it started (and how long it took), its answer to one image request, and
the log lines naming the kernel or the failure. Writes ``OUT/summary.json``, one log per case and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from openai import OpenAI

from tests.helpers import free_port, image_question, tiny_checkpoint
from tests.quantized_checkpoint import quantized_checkpoint

#: Log lines worth keeping: the kernel vLLM picked, the quantization and KV dtype it started
#: with, how many tokens 1 GiB of KV cache holds, and the error that stopped it (not the ulimit
#: warning vLLM's server prints, which quotes an OSError in backticks).
EVIDENCE = re.compile(
    r"Using \S+ for \S+|Selected \S+ for \S+|Loading weights with BitsAndBytes"
    r"|Using \S+ data type to store kv cache|KV cache size: [\d,]+ tokens"
    r"|quantization=\S+|kv_cache_dtype=\S+|(?<!`)\b\w+Error: .*|^vlmserve: .*"
)
VLMSERVE_ARGS = ["--engine", "vllm", "--max-model-len", "2048", "--enforce-eager"]
VLLM_ARGS = [
    "--max-model-len",
    "2048",
    "--enforce-eager",
    "--skip-mm-profiling",
    "--limit-mm-per-prompt",
    '{"image": 1, "video": 0}',
]


@dataclass
class Case:
    """One quantization started one way, and what came of it."""

    name: str
    server: str  # "vlmserve" or "vllm"
    model: str  # "plain", "awq" or "gptq": which tiny checkpoint
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    command: str = ""
    started: bool = False
    start_seconds: float | None = None
    exit_code: int | None = None
    answer: str | None = None
    evidence: list[str] = field(default_factory=list)


def cases(bitsandbytes_path: Path | None) -> list[Case]:
    """Every case, cheapest first."""
    found = [
        Case("fp8 weights", "vlmserve", "plain", ["--quantization", "fp8"]),
        Case(
            "bitsandbytes, package missing", "vlmserve", "plain", ["--quantization", "bitsandbytes"]
        ),
        Case("awq", "vlmserve", "awq", []),
        Case("gptq", "vlmserve", "gptq", []),
        Case("fp8 weights", "vllm", "plain", ["--quantization", "fp8"]),
        Case("fp8 KV cache (e4m3)", "vllm", "plain", ["--kv-cache-dtype", "fp8"]),
        Case("fp8 KV cache (e5m2)", "vllm", "plain", ["--kv-cache-dtype", "fp8_e5m2"]),
    ]
    if bitsandbytes_path is not None:
        env = {"PYTHONPATH": str(bitsandbytes_path)}
        found.insert(
            4, Case("bitsandbytes", "vlmserve", "plain", ["--quantization", "bitsandbytes"], env)
        )
    return found


def command(case: Case, model: Path, port: int) -> list[str]:
    """The command line that starts ``case`` on ``port``."""
    if case.server == "vlmserve":
        base = [sys.executable, "-m", "vlmserve.cli.main", "serve", *VLMSERVE_ARGS]
        return [
            *base,
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *case.args,
        ]
    base = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *VLLM_ARGS]
    return [*base, "--model", str(model), "--host", "127.0.0.1", "--port", str(port), *case.args]


def wait_ready(process: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """Whether the server answers ``/health`` with 200 before it exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    return False


def ask(port: int) -> str:
    """The server's greedy 8-token answer to one image question."""
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120)
    model = client.models.list().data[0].id
    response = client.chat.completions.create(
        model=model,
        max_tokens=8,
        temperature=0,
        messages=image_question(),
    )
    return response.choices[0].message.content or ""


def run_case(case: Case, model: Path, log_path: Path, timeout: float) -> None:
    """Start ``case``, ask once if it starts, stop it, and fill in what happened."""
    port = free_port()
    argv = command(case, model, port)
    case.command = " ".join(f"{k}={v}" for k, v in case.env.items()) + " " * bool(case.env)
    case.command += " ".join(argv[1:]).replace(str(model.parent) + "/", "")
    # vLLM's own server would otherwise claim most of the machine's memory for its KV cache.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLMSERVE_CPU_KV_CACHE_GIB": "1"}
    env.update(case.env)
    began = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, process_group=0
        )
        try:
            case.started = wait_ready(process, port, timeout)
            case.start_seconds = round(time.monotonic() - began, 1)
            if case.started:
                case.answer = ask(port)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                case.exit_code = process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                case.exit_code = process.wait()
    case.evidence = evidence(log_path.read_text(errors="replace"))


def evidence(log: str) -> list[str]:
    """The log's kernel, configuration and error lines, each once, in order."""
    found: list[str] = []
    for line in log.splitlines():
        for match in EVIDENCE.finditer(line):
            text = match.group(0).rstrip(",")
            if text not in found:
                found.append(text)
    return found


def table(results: list[Case]) -> str:
    """The results as a Markdown table."""
    header = (
        "| case | server | started | seconds to ready or exit | exit code | answer | evidence |"
    )
    rows = [header, "|" + "---|" * 7]
    for c in results:
        answer = "" if c.answer is None else f"`{c.answer!r}`"
        shown = "<br>".join(f"`{e[:160]}`" for e in c.evidence)
        started = "yes" if c.started else "no"
        rows.append(
            f"| {c.name} | {c.server} | {started} | {c.start_seconds} | {c.exit_code} "
            f"| {answer} | {shown} |"
        )
    return "\n".join(rows)


def main() -> int:
    """Build the checkpoints, run every case (or those named), write the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for logs and summary.")
    parser.add_argument("--bitsandbytes-path", type=Path, help="A folder bitsandbytes is in.")
    parser.add_argument("--only", nargs="*", help="Run only the cases with these names.")
    parser.add_argument("--timeout", type=float, default=600, help="Seconds to wait per start.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    plain = tiny_checkpoint("llava", args.out / "checkpoints")
    models = {"plain": plain, **{m: quantized_checkpoint(plain, m) for m in ("awq", "gptq")}}
    results = []
    for i, case in enumerate(cases(args.bitsandbytes_path)):
        if args.only and case.name not in args.only:
            continue
        log = args.out / f"{i}-{case.server}-{re.sub(r'[^a-z0-9]+', '-', case.name.lower())}.log"
        run_case(case, models[case.model], log, args.timeout)
        print(f"{case.name} ({case.server}): started={case.started} answer={case.answer!r}")
        results.append(case)
    (args.out / "summary.json").write_text(json.dumps([asdict(c) for c in results], indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
