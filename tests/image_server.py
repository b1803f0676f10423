"""A loopback HTTP server for image-URL tests: images (``?cache=`` sets their Cache-Control),
redirects, a stalled URL, an endless body.

It listens on 127.0.0.1 only, and tests point the server under test at it with
``allow_private_media_urls`` (or a stubbed resolver); nothing here reaches another address.
"""

from __future__ import annotations

import http.server
import io
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from PIL import Image


def png_bytes(width: int = 64, height: int = 48, color: str = "orange") -> bytes:
    """A solid PNG."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Seen:
    """What the server was asked: (path, Host header) per request, and a hold for /stall."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    stalled: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    release: threading.Event = field(default_factory=threading.Event)


def _handler(seen: Seen) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            seen.requests.append((parts.path, self.headers.get("Host", "")))
            if parts.path == "/image.png":
                size = int(query.get("w", 64)), int(query.get("h", 48))
                headers = {"Cache-Control": query["cache"]} if "cache" in query else {}
                self._send(200, png_bytes(*size), headers)
            elif parts.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", query["to"])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif parts.path == "/stall":
                seen.stalled.release()
                seen.release.wait(60)
                self._send(200, png_bytes())
            elif parts.path == "/endless":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                chunk = b"\0" * 65536
                try:
                    while True:
                        self.wfile.write(chunk)
                except OSError:
                    return
            else:
                self._send(404, b"not found")

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass

    return Handler


@dataclass
class ImageServer:
    """A running loopback image server."""

    port: int
    seen: Seen

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@contextmanager
def image_server(tls: ssl.SSLContext | None = None) -> Iterator[ImageServer]:
    """Serve on a free loopback port for the duration of the block (HTTPS with ``tls``)."""
    seen = Seen()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(seen))
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield ImageServer(httpd.server_address[1], seen)
    finally:
        seen.release.set()
        httpd.shutdown()
        httpd.server_close()
