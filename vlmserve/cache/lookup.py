"""The response cache as the HTTP layer uses it: look up, replay a hit, record a miss.

Used by vlmserve's server (one namespace per model) and by the router. ``Cache-Control:
no-cache`` on a request skips the lookup (the fresh answer is still stored); ``no-store`` skips
both. Every answer to a chat request says what the cache did in ``X-Vlmserve-Cache``: ``hit``,
``miss`` (run, then stored) or ``skip`` (not cacheable, or the client said so).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry
from starlette.responses import JSONResponse, Response, StreamingResponse

from vlmserve.cache.answer import CachedAnswer
from vlmserve.cache.keys import image_digest, is_deterministic, request_key
from vlmserve.cache.store import AnswerStore, CacheMetrics
from vlmserve.config import Settings
from vlmserve.engine.base import PreparedRequest
from vlmserve.state.link import RedisLink

logger = logging.getLogger(__name__)

CACHE_HEADER = "X-Vlmserve-Cache"
Status = Literal["hit", "miss", "skip"]


@dataclass
class CacheLookup:
    """What the cache did for one request, and how to store its answer when it was a miss."""

    status: Status
    key: str | None
    answer: CachedAnswer | None
    store: AnswerStore | None
    write: bool

    @property
    def headers(self) -> dict[str, str]:
        """The response header naming the outcome."""
        return {CACHE_HEADER: self.status}

    def replay(
        self, stream: bool, include_usage: bool, headers: dict[str, str] | None = None
    ) -> Response:
        """The cached answer, whole or as a stream (with ``headers`` besides the cache's)."""
        assert self.answer is not None
        headers = {**self.headers, **(headers or {})}
        if stream:
            return StreamingResponse(
                self.answer.events(include_usage), media_type="text/event-stream", headers=headers
            )
        return JSONResponse(self.answer.completion().model_dump(), headers=headers)

    async def record(self, completion: dict[str, Any]) -> None:
        """Store a whole answer (a chat completion dict) if this request may be stored."""
        if not self.write or self.key is None or self.store is None:
            return
        answer = CachedAnswer.of(completion)
        if answer is not None and answer.finish_reason in ("stop", "length"):
            await self.store.put(self.key, answer.encode())

    async def record_stream(
        self, events: AsyncIterator[str], include_usage: bool
    ) -> AsyncIterator[str]:
        """Pass ``events`` (opened with usage) through, and store the answer once it is whole.

        The usage chunk is dropped when the client did not ask for it; an error event or an
        early close means nothing is stored.
        """
        text: list[str] = []
        whole: dict[str, Any] = {"choices": [{"message": {}, "finish_reason": None}]}
        try:
            async for event in events:
                # Parse only what must be read: every event when storing, else the usage chunk.
                if not self.write and (include_usage or '"usage"' not in event):
                    yield event
                    continue
                payload = event_payload(event)
                if payload is not None and self.write:
                    _fold(whole, payload, text)
                if payload is not None and payload.get("usage") and not payload.get("choices"):
                    if not include_usage:
                        continue
                yield event
            if "error" not in whole and whole.get("usage") is not None:
                whole["choices"][0]["message"]["content"] = "".join(text)
                await self.record(whole)
        finally:
            await events.aclose()  # type: ignore[attr-defined]


def event_payload(event: str) -> dict[str, Any] | None:
    """The JSON of a ``data:`` event; None for ``[DONE]`` and anything else."""
    data = event[5:].strip() if event.startswith("data:") else ""
    if not data.startswith("{"):
        return None
    value = json.loads(data)
    return value if isinstance(value, dict) else None


def _fold(whole: dict[str, Any], chunk: dict[str, Any], text: list[str]) -> None:
    """Add one streamed chunk to the answer being assembled."""
    if "error" in chunk:
        whole["error"] = chunk["error"]
        return
    whole["model"] = chunk.get("model")
    if chunk.get("usage"):
        whole["usage"] = chunk["usage"]
    for choice in chunk.get("choices") or []:
        if choice.get("index", 0) != 0:
            whole["error"] = "more than one choice"
            continue
        text.append((choice.get("delta") or {}).get("content") or "")
        if choice.get("finish_reason"):
            whole["choices"][0]["finish_reason"] = choice["finish_reason"]


class ResponseCache:
    """One cache of answers per server (memory, or Redis through ``link``) with its metrics."""

    def __init__(
        self,
        settings: Settings,
        link: RedisLink | None,
        registry: CollectorRegistry,
        metric_prefix: str = "vlmserve",
    ) -> None:
        self.enabled = settings.response_cache
        self.metrics = CacheMetrics(registry, metric_prefix)
        self.store = AnswerStore(settings, link, self.metrics)

    async def lookup(self, key: str | None, cache_control: str | None) -> CacheLookup:
        """Look ``key`` up (None: the request is not cacheable), as ``Cache-Control`` allows."""
        directives = {d.strip().lower() for d in (cache_control or "").split(",")}
        if not self.enabled or key is None or "no-store" in directives:
            return CacheLookup("skip", None, None, None, False)
        if "no-cache" in directives:
            return CacheLookup("skip", key, None, self.store, True)
        data = await self.store.get(key)
        if data is not None:
            self.metrics.hits.inc()
            return CacheLookup("hit", key, CachedAnswer.decode(data), self.store, False)
        self.metrics.misses.inc()
        return CacheLookup("miss", key, None, self.store, True)


def engine_request_key(model_id: str, prepared: PreparedRequest) -> str | None:
    """The cache key of a prepared request (sampling as resolved with the checkpoint's defaults);
    None when it is not deterministic or wants logprobs."""
    sampling, request = prepared.sampling, prepared.request
    options = sampling.options
    if not is_deterministic(sampling.temperature, options.seed, options.n) or options.logprobs:
        return None
    canonical = {
        "messages": request.messages,
        "prompt": request.prompt,
        "details": [image.detail for image in request.images],
        "sampling": dataclasses.asdict(sampling),
    }
    return request_key(model_id, canonical, (image_digest(i.image) for i in request.images))
