"""The record kept for every benchmark request, measured or not."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestRecord:
    """What one streamed chat completion request did, with client-side timings in seconds.

    ``start`` is relative to the start of its level. ``ttft`` runs from sending the request to the
    first chunk that carries generated text, ``first_chunk`` to the first chunk with any choice
    (a role-only chunk counts: what ``vllm bench serve`` calls TTFT); ``itl`` holds the gaps
    between later text chunks;
    ``e2el`` runs to the end of the stream. ``error`` is a short type (``http_400``, ``timeout``,
    ``stream_error``...) or ``None`` for a request that completed.
    """

    index: int
    target: str
    images: int
    start: float = 0.0
    ttft: float | None = None
    first_chunk: float | None = None
    e2el: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    content_chunks: int = 0
    tokens_from_usage: bool = False
    finish_reason: str | None = None
    status_code: int | None = None
    error: str | None = None
    error_message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)
