"""Test helpers: tiny checkpoints built once, and the real server run as a subprocess."""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
#: Tiny checkpoints are rebuilt when this changes (bump with the builders).
TINY_VERSION = 4


def tiny_checkpoint(family: str, root: Path) -> Path:
    """The tiny checkpoint of ``family`` under ``root``, built on first use."""
    from vlmserve.models.families import get_family

    path = root / f"{family}-v{TINY_VERSION}"
    if not (path / "config.json").exists():
        get_family(family).build_tiny(path)
    return path


def resaved_by_transformers(checkpoint: Path, out: Path) -> Path:
    """``checkpoint``'s weights in a model built by transformers from its config and saved with
    ``save_pretrained``, as a model trained with transformers 5 is saved (for LLaVA, the CLIP tower
    one level flatter than the hub layout the tiny builders write)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if not (out / "config.json").exists():
        loaded = AutoModelForImageTextToText.from_pretrained(checkpoint)
        model = AutoModelForImageTextToText.from_config(loaded.config)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(out)
        AutoProcessor.from_pretrained(checkpoint).save_pretrained(out)
    return out


def hf_cache_snapshot(hf_home: Path, repo_id: str, checkpoint: Path) -> Path:
    """Lay ``checkpoint`` out as the Hugging Face cache keeps a downloaded snapshot."""
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo_dir / "snapshots" / revision
    shutil.copytree(checkpoint, snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def image_data_url(width: int, height: int, fmt: str = "PNG", color: str = "teal") -> str:
    """A solid-color image of the given size as a base64 ``data:`` URL."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def image_question(text: str = "What is in this image?") -> list[dict]:
    """Chat messages: one user turn with ``text`` and a small image."""
    image = {"type": "image_url", "image_url": {"url": image_data_url(64, 48)}}
    return [{"role": "user", "content": [{"type": "text", "text": text}, image]}]


@dataclass
class ServerProcess:
    """A ``vlmserve serve`` subprocess on a loopback port."""

    process: subprocess.Popen[bytes]
    port: int
    model: str
    log_path: Path
    #: The engine ``/health`` reports ("vllm" or "transformers").
    engine: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str) -> float:
        """The value of an unlabelled metric on ``/metrics``."""
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()


def start_server(
    args: list[str], log_path: Path, env: dict[str, str] | None = None, timeout: float = 180
) -> ServerProcess:
    """Start ``vlmserve serve ARGS`` and wait until ``/health`` says the model is ready.

    Without ``--engine`` in ``args`` the server runs the transformers engine (``auto`` would pick
    vLLM's CPU build here, a minute's start-up that most tests do not need).
    """
    if "--engine" not in args:
        args = ["--engine", "transformers", *args]
    port = free_port()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vlmserve.cli.main",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
        ],
        cwd=REPO,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        # Its own process group: a server that never gets ready is killed with its engine
        # processes (vLLM's engine core and worker), whatever interrupts the wait. Not its own
        # session: with the kernel's autogroup scheduling a new session is a new CPU group, and
        # on 2 cores vLLM's busy engine then starved this test process for seconds at a time
        # (1-2 /metrics polls in 7 s, against 29 in the same session).
        process_group=0,
    )
    try:
        return _wait_until_ready(process, port, log_path, timeout)
    except BaseException:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        raise


def _wait_until_ready(
    process: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float
) -> ServerProcess:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            if health.status_code == 200:
                body = health.json()
                return ServerProcess(process, port, body["model"], log_path, body.get("engine", ""))
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"server not ready in {timeout}s:\n{log_path.read_text()}")
