"""The reliability run: fuzzing, bad inputs, load with disconnects, and SIGTERM under load.

Starts its own tiny-model servers on loopback ports (default media settings: private and
link-local image URLs are refused before any connection), prints its figures, and exits 1 when a
rule is broken. Run it with ``python scripts/reliability.py``; it takes a few minutes on 2 cores.
These are figures, not tests: nothing here is timed against a threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bad_inputs import CostlyCase, corpus, costly_cases  # noqa: E402
from tests.helpers import ServerProcess, image_data_url, start_server, tiny_checkpoint  # noqa: E402


def fuzz(server: ServerProcess, examples: int) -> tuple[int, collections.Counter[int], list[str]]:
    """Schemathesis over ``/openapi.json``, positive and negative: (cases, statuses, 5xx cases)."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        for result in schema.get_all_operations():
            operation = result.ok()
            if mode == schemathesis.GenerationMode.NEGATIVE and operation.method.upper() == "GET":
                continue  # nothing to break: the GET routes take no input

            @hypothesis.settings(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[hypothesis.Phase.generate],
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                aim_at_the_model(case, server.model, sum(statuses.values()))
                response = case.call(base_url=server.url, timeout=180)
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.path} -> {response.status_code}")

            run()
    return sum(statuses.values()), statuses, failures


def aim_at_the_model(case: object, model: str, count: int) -> None:
    """Every other body names the served model (else nearly all are 404s), output capped at 32.

    Random model names only exercise the 404; with the real one the fuzzer reaches image
    handling and the engine. The cap keeps one case from generating for minutes.
    """
    body = getattr(case, "body", None)
    if not isinstance(body, dict) or count % 2:
        return
    body["model"] = model
    for knob in ("max_tokens", "max_completion_tokens", "min_tokens"):
        if isinstance(body.get(knob), int) and body[knob] > 32:
            body[knob] = 32


def bad_inputs(server: ServerProcess) -> tuple[int, list[str]]:
    """Send the corpus; every answer must be a 4xx in OpenAI's error shape."""
    problems = []
    cases = corpus(server.model)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for name, method, path, headers, body in cases:
            response = client.request(method, path, headers=headers, content=body)
            if not 400 <= response.status_code < 500 or not _openai_shaped(response):
                problems.append(f"{name}: {response.status_code} {response.text[:120]}")
    return len(cases), problems


def _openai_shaped(response: httpx.Response) -> bool:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return set(error) == {"message", "type", "param", "code"} and bool(error["message"])


@dataclass
class LoadResult:
    """What a batch of streaming clients saw."""

    sent: int = 0
    completed: int = 0
    aborted: int = 0
    accepted: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    broken: list[str] = field(default_factory=list)


def chat_body(model: str, i: int, max_tokens: int) -> dict:
    image = image_data_url(200 + 7 * (i % 40), 150 + 5 * (i % 30), "JPEG" if i % 2 else "PNG")
    content = [{"type": "text", "text": f"Client {i}: describe."}]
    content.append({"type": "image_url", "image_url": {"url": image}})  # type: ignore[dict-item]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }


async def one_client(
    client: httpx.AsyncClient, body: dict, leave_early: bool, result: LoadResult
) -> None:
    """One streaming request; ``leave_early`` closes the connection after three events."""
    result.sent += 1
    accepted = False
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                result.refused[str(response.status_code)] += 1
                return
            accepted = True
            result.accepted += 1
            outcome = await _read_stream(response, leave_early)
    except httpx.TransportError as exc:
        outcome = ("broken: " if accepted else "refused: ") + type(exc).__name__
    if outcome == "completed":
        result.completed += 1
    elif outcome == "aborted":
        result.aborted += 1
    elif outcome.startswith("refused: "):
        result.refused[outcome[9:]] += 1
    else:
        result.broken.append(outcome)


async def _read_stream(response: httpx.Response, leave_early: bool) -> str:
    """completed, aborted (left on purpose) or what went wrong."""
    events, finished = 0, False
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        events += 1
        if leave_early and events == 3:
            return "aborted"
        if line == "data: [DONE]":
            return "completed" if finished else "broken: no finish reason"
        chunk = json.loads(line[6:])
        if "error" in chunk:
            return "broken: " + chunk["error"]["message"]
        finished = finished or any(c.get("finish_reason") for c in chunk["choices"])
    return "broken: stream ended without [DONE]"


async def load(
    server: ServerProcess,
    requests: int,
    concurrency: int,
    early_share: float,
    max_tokens: int,
    sigterm_after: int | None = None,
) -> LoadResult:
    """``requests`` streams, ``concurrency`` at a time; SIGTERM once ``sigterm_after`` started."""
    result = LoadResult()
    gate = asyncio.Semaphore(concurrency)
    every = round(1 / early_share) if early_share else 0

    async def run(client: httpx.AsyncClient, i: int) -> None:
        async with gate:
            body = chat_body(server.model, i, max_tokens)
            await one_client(client, body, bool(every) and i % every == every - 1, result)

    async def terminate() -> None:
        while sigterm_after is not None and result.accepted < sigterm_after:
            await asyncio.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(300, connect=10)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=timeout) as client:
        jobs = [run(client, i) for i in range(requests)]
        if sigterm_after is not None:
            jobs.append(terminate())
        await asyncio.gather(*jobs)
    return result


async def _refusal(client: httpx.AsyncClient, case: CostlyCase) -> tuple[int, float, float, str]:
    """(status, seconds in all, seconds after the last byte was sent, error code).

    httpx, like most clients, reads the answer only once it has sent the whole body, so for the
    300 MB bodies the time in all is mostly the upload; the time after the last byte is the
    server's part.
    """
    sent = [0.0]

    async def body() -> AsyncIterator[bytes]:
        for chunk in case.body():
            yield chunk
        sent[0] = time.perf_counter()

    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", content=body(), headers=case.headers)
    done = time.perf_counter()
    code = response.json()["error"]["code"] if _openai_shaped(response) else "not shaped"
    return response.status_code, done - started, done - (sent[0] or started), str(code)


async def costly_under_load(server: ServerProcess, concurrency: int) -> bool:
    """Each costly case sent while ``concurrency`` normal clients stream; refusals are timed."""
    cases = costly_cases(server.model)
    done = asyncio.Event()
    result = LoadResult()

    async def normal_load() -> None:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=300) as client:

            async def keep_going(worker: int) -> None:
                i = worker
                while not done.is_set():
                    await one_client(client, chat_body(server.model, i, 16), False, result)
                    i += concurrency

            await asyncio.gather(*(keep_going(w) for w in range(concurrency)))

    loader = asyncio.ensure_future(normal_load())
    await asyncio.sleep(2)  # the normal load is running
    ok = True
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        for case in cases:
            completed_before = result.completed
            status, seconds, after_upload, code = await _refusal(client, case)
            good = status == case.status and after_upload < 1
            ok = ok and good
            print(
                f"  {case.name}: {status} {code} {after_upload:.2f} s after the last byte sent, "
                f"{seconds:.2f} s in all ({'ok' if good else f'WANTED {case.status} in < 1 s'}); "
                f"normal requests completed meanwhile: {result.completed - completed_before}"
            )
    await asyncio.sleep(2)  # and it still is
    done.set()
    await loader
    fivexx = sum(n for code, n in result.refused.items() if code.startswith("5"))
    print(
        f"  normal load alongside: {result.completed} completed, refused {dict(result.refused)}, "
        f"broken {len(result.broken)}"
    )
    return ok and result.completed > 0 and not fivexx and not result.broken


def engine_gauges(server: ServerProcess) -> tuple[float, float]:
    """(running, waiting) once the engine has settled (a few seconds at most)."""
    for _ in range(100):
        running = server.metric("vlmserve_requests_running")
        waiting = server.metric("vlmserve_requests_waiting")
        if running == waiting == 0:
            break
        time.sleep(0.1)
    return running, waiting


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(root: Path, name: str, env: dict[str, str] | None = None) -> ServerProcess:
    """A tiny LLaVA server with default limits (a long request timeout for slow machines)."""
    model = tiny_checkpoint("llava", root)
    settings = {"VLMSERVE_REQUEST_TIMEOUT_SECONDS": "300", **(env or {})}
    return start_server(["--model", str(model)], root / f"{name}.log", env=settings)


def run_fuzz_and_corpus(server: ServerProcess, examples: int) -> bool:
    cases, statuses, failures = fuzz(server, examples)
    codes = ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items()))
    print(f"schemathesis: {cases} cases over /openapi.json ({codes}); 5xx: {len(failures)}")
    for failure in failures[:10]:
        print(f"  5xx: {failure}")
    count, problems = bad_inputs(server)
    print(f"bad inputs: {count} sent, {count - len(problems)} answered 4xx in OpenAI's shape")
    for problem in problems:
        print(f"  not a shaped 4xx: {problem}")
    return not failures and not problems


def run_costly(server: ServerProcess) -> bool:
    print("costly inputs, each refused while 4 normal clients stream:")
    return asyncio.run(costly_under_load(server, 4))


def run_load(server: ServerProcess, requests: int, concurrency: int) -> bool:
    asyncio.run(load(server, concurrency, concurrency, 0.2, 16))  # warm-up
    before = rss_mib(server.process.pid)
    started = time.perf_counter()
    result = asyncio.run(load(server, requests, concurrency, 0.2, 48))
    seconds = time.perf_counter() - started
    after = rss_mib(server.process.pid)
    running, waiting = engine_gauges(server)
    # A second, identical round: growth that repeats is a leak, growth that does not is warm-up.
    again = asyncio.run(load(server, requests, concurrency, 0.2, 48))
    after_again = rss_mib(server.process.pid)
    settled_again = engine_gauges(server) == (0, 0)
    refusals = [*result.refused.items(), *again.refused.items()]
    fivexx = sum(n for code, n in refusals if code.startswith("5"))
    print(
        f"load: {result.sent} streaming requests at concurrency {concurrency} in {seconds:.1f} s: "
        f"{result.completed} completed + {result.aborted} left early = "
        f"{result.completed + result.aborted}; refused {dict(result.refused)}; 5xx {fivexx}; "
        f"broken {len(result.broken)}"
    )
    print(f"  engine after the load: {running:g} running, {waiting:g} waiting")
    print(
        f"  server memory: {before:.0f} MiB after warm-up, {after:.0f} MiB after the load "
        f"({after - before:+.0f} MiB), {after_again:.0f} MiB after a second round of "
        f"{again.sent} ({after_again - after:+.0f} MiB; {again.completed} completed + "
        f"{again.aborted} left early)"
    )
    for problem in result.broken[:10]:
        print(f"  broken: {problem}")
    complete = all(r.completed + r.aborted == r.sent and not r.broken for r in (result, again))
    return complete and not fivexx and running == waiting == 0 and settled_again


def run_sigterm(root: Path, requests: int, concurrency: int) -> bool:
    server = start(root, "sigterm", {"VLMSERVE_SHUTDOWN_GRACE_SECONDS": "120"})
    try:
        result = asyncio.run(load(server, requests, concurrency, 0, 48, concurrency // 2))
        code = server.process.wait(180)
    finally:
        server.stop()
    print(
        f"SIGTERM during load: {result.sent} sent, {result.accepted} accepted before or while "
        f"draining, {result.completed} of them completed, refused {dict(result.refused)}, "
        f"broken {len(result.broken)}; exit code {code}"
    )
    for problem in result.broken[:10]:
        print(f"  broken: {problem}")
    return result.completed == result.accepted and not result.broken and code == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--fuzz-examples", type=int, default=60, help="per operation and mode")
    parser.add_argument(
        "--only-costly", action="store_true", help="Run only the costly-input section."
    )
    args = parser.parse_args()
    if args.only_costly:
        with tempfile.TemporaryDirectory(prefix="vlmserve-reliability-") as tmp:
            server = start(Path(tmp), "costly")
            try:
                ok = run_costly(server)
            finally:
                server.stop()
        print("reliability (costly inputs only): " + ("all rules held" if ok else "RULES BROKEN"))
        return 0 if ok else 1
    with tempfile.TemporaryDirectory(prefix="vlmserve-reliability-") as tmp:
        root = Path(tmp)
        server = start(root, "main")
        try:
            ok = run_fuzz_and_corpus(server, args.fuzz_examples)
            ok = run_costly(server) and ok
            ok = run_load(server, args.requests, args.concurrency) and ok
        finally:
            server.stop()
        ok = run_sigterm(root, args.requests // 2, args.concurrency) and ok
    print("reliability: " + ("all rules held" if ok else "RULES BROKEN"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
