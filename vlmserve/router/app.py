"""The router's HTTP app: OpenAI's chat endpoint in front of the backends, plus models, health
and metrics.

Requests name a backend model, or ``auto`` (the config's rules choose). The answer's ``model``
field and ``X-Vlmserve-Backend`` / ``X-Vlmserve-Tier`` headers say which backend answered, after
any fallback. Deterministic requests go through the same response cache as vlmserve's server,
keyed here by the request as sent (model included) and the decoded images.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cachetools import LRUCache
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, generate_latest

from vlmserve.api.app import EventStreamResponse
from vlmserve.api.errors import APIError, BadRequestError, NotFoundError, install_error_handlers
from vlmserve.api.json_body import parse_json
from vlmserve.api.protocol import ModelCard, ModelList, now
from vlmserve.api.serving import sse
from vlmserve.cache.keys import image_digest, is_deterministic, request_key
from vlmserve.cache.lookup import ResponseCache, event_payload
from vlmserve.config import Settings
from vlmserve.images.codec import ImageLimits
from vlmserve.images.fetch import MediaFetcher, MediaPolicy
from vlmserve.images.pipeline import ImagePipeline, ImageRef
from vlmserve.router import auto
from vlmserve.router.backends import Backends
from vlmserve.router.config import Backend, RouterConfig
from vlmserve.router.stats import RouterStats
from vlmserve.state.link import RedisLink

logger = logging.getLogger(__name__)

AUTO = "auto"
#: Fields that change how an answer is delivered, not what it is: left out of cache keys.
_DELIVERY = {"stream", "stream_options", "user"}
#: Bytes of decoded images the router keeps for cache keys (a resent http image skips the decode).
IMAGE_CACHE_BYTES = 64 << 20
#: Data URLs whose image digest the router remembers (about 100 bytes each).
DATA_URL_DIGESTS = 4096


class RouterState:
    """What the routes share."""

    def __init__(self, settings: Settings, config: RouterConfig) -> None:
        self.settings = settings
        self.config = config
        self.backends = Backends(config)
        self.registry = CollectorRegistry()
        self.stats = RouterStats(config, self.registry)
        self.link = RedisLink.from_settings(settings)
        self.cache = ResponseCache(settings, self.link, self.registry, "vlmserve_router")
        # No model family here: images are only decoded to be hashed for cache keys.
        self.images = ImagePipeline(
            ImageLimits.from_settings(settings),
            MediaFetcher(MediaPolicy.from_settings(settings)),
            None,
            workers=0,  # a few decodes for cache keys: a thread, no worker processes
            cache_bytes=IMAGE_CACHE_BYTES,
        )
        #: SHA-256 of a data URL -> the digest of its decoded image: a data URL holds its bytes,
        #: so a resent one (a conversation's history, a cache hit) is not decoded again.
        self.data_url_digests: LRUCache[bytes, str] = LRUCache(DATA_URL_DIGESTS)
        self.created = now()

    def backend_for(self, body: dict[str, Any]) -> Backend:
        """The backend a request names, or the one ``auto`` chooses (404 for an unknown name)."""
        name = body.get("model")
        if name == AUTO:
            return auto.choose(self.config, body)
        backend = self.config.backend(str(name))
        if backend is None:
            known = ", ".join([AUTO, *(b.model for b in self.config.backends)])
            raise NotFoundError(
                f"The model '{name}' does not exist; this router serves {known}.",
                param="model",
                code="model_not_found",
            )
        return backend

    async def cache_key(self, body: dict[str, Any]) -> str | None:
        """The request's cache key; None when it is not deterministic or an image will not load."""
        if body.get("logprobs") or not is_deterministic(
            body.get("temperature"), body.get("seed"), body.get("n")
        ):
            return None
        canonical = {k: v for k, v in body.items() if k not in _DELIVERY}
        urls = [
            str((part.get("image_url") or {}).get("url", ""))
            for message in body["messages"]
            if isinstance(message, dict) and isinstance(message.get("content"), list)
            for part in message["content"]
            if isinstance(part, dict) and part.get("type") == "image_url"
        ]
        try:
            digests = await self.image_digests(urls)
        except APIError:
            return None  # the backend will say what is wrong with the image
        canonical["messages"] = _without_image_urls(canonical.get("messages") or [])
        return request_key("router", canonical, digests)

    async def image_digests(self, urls: list[str]) -> list[str]:
        """The digest of each URL's decoded image; data URLs seen before are not decoded."""
        memo = self.data_url_digests
        keys = [hashlib.sha256(u.encode()).digest() if u[:5] == "data:" else None for u in urls]
        known = [memo.get(k) if k is not None else None for k in keys]
        if all(known):
            return [d for d in known if d is not None]
        images = await self.images.load([ImageRef(u, "auto", "image_url") for u in urls])
        digests = [image_digest(image) for image in images]
        for key, digest in zip(keys, digests, strict=True):
            if key is not None:
                memo[key] = digest
        return digests


def _without_image_urls(messages: list[Any]) -> list[Any]:
    """Messages with each image URL blanked (the images enter the key by their digest)."""
    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = [
                {**p, "image_url": {**(p.get("image_url") or {}), "url": None}}
                if isinstance(p, dict) and p.get("type") == "image_url"
                else p
                for p in content
            ]
            message = {**message, "content": content}
        out.append(message)
    return out


async def _body(request: Request, field: str = "messages") -> dict[str, Any]:
    """The JSON body, with at least a model and ``field`` (the messages, prompt or input) given
    (else a 400)."""
    try:
        body = parse_json(await request.body())
    except ValueError:
        raise BadRequestError("The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise BadRequestError("'model' is required.", param="model", code="invalid_value")
    given = body.get(field)
    kinds = (list,) if field == "messages" else (list, str)
    if not isinstance(given, kinds) or not given:
        kind = "a non-empty list" if field == "messages" else "a non-empty string or list"
        raise BadRequestError(f"'{field}' must be {kind}.", param=field)
    return body


async def _events(
    state: RouterState, stream: AsyncIterator[str], backend: Backend, images: int
) -> AsyncIterator[str]:
    """A backend's server-sent events with the answering backend as ``model``.

    Most events go out as they came: those that already name the backend, without usage. Only
    the others (another model name, the usage chunk, an error) are parsed and written again.
    """
    usage = None
    name = json.dumps(backend.model)
    named = (f'"model":{name}', f'"model": {name}')  # compact JSON, or Python's default
    try:
        async for event in stream:
            if (named[0] in event or named[1] in event) and '"usage"' not in event:
                yield event
                continue
            data = event_payload(event)
            if data is None:
                continue  # a comment or a field other than data: nothing for an OpenAI client
            if "error" not in data:
                data["model"] = backend.model
            usage = data.get("usage") or usage
            yield sse(data)
        state.stats.answered(backend, images, usage)
    except Exception as exc:  # a backend that dies mid-stream: the error event, then [DONE]
        logger.warning("stream from %s broke: %s", backend.model, exc)
        state.stats.failed(backend)
        yield sse(APIError("The backend failed while streaming.").body())
    yield "data: [DONE]\n\n"


def create_router_app(settings: Settings, config: RouterConfig) -> FastAPI:
    """The router's application."""
    state = RouterState(settings, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await state.backends.aclose()

    app = FastAPI(title="vlmserve router", version="0.1.0", lifespan=lifespan)
    app.state.router = state
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await _body(request)
        backend = state.backend_for(body)
        images = auto.features(body, measure=False).images
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        cached = await state.cache.lookup(
            await state.cache_key(body), request.headers.get("cache-control")
        )
        if cached.answer is not None:
            served = {"X-Vlmserve-Backend": cached.answer.model}
            return cached.replay(bool(body.get("stream")), include_usage, served)
        try:
            answered, response = await state.backends.chat(backend, body)
        except APIError:
            state.stats.failed(backend)
            raise
        headers = {
            **cached.headers,
            "X-Vlmserve-Backend": answered.model,
            "X-Vlmserve-Tier": answered.tier,
        }
        if isinstance(response, dict):
            data = response
        else:
            events = _events(state, response, answered, images)
            return EventStreamResponse(cached.record_stream(events, include_usage), headers)
        data["model"] = answered.model
        state.stats.answered(answered, images, data.get("usage"))
        await cached.record(data)
        return JSONResponse(data, headers=headers)

    async def relayed(request: Request, path: str, field: str) -> Response:
        """Completions and the Responses API: relayed as the backend answers them (no cache)."""
        body = await _body(request, field)
        backend = state.backend_for(body)
        if not state.backends.relays(backend):
            raise BadRequestError(
                f"/v1/{path} is routed only to backends that speak OpenAI's protocol, with "
                f"routing_strategy simple-shuffle; '{backend.model}' or one of its fallbacks "
                "does not.",
                param="model",
                code="endpoint_not_routed",
            )
        images = auto.features(body, measure=False).images
        try:
            answered, ident, response = await state.backends.relay(backend, path, body)
        except APIError:
            state.stats.failed(backend)
            raise
        headers = {"X-Vlmserve-Backend": answered.model, "X-Vlmserve-Tier": answered.tier}
        if body.get("stream"):
            state.stats.answered(answered, images, None)  # a relayed stream is not parsed
            return StreamingResponse(
                state.backends.raw(response, ident),
                media_type=response.headers.get("content-type", "text/event-stream"),
                headers=headers,
            )
        data = parse_json(await response.read())
        data["model"] = answered.model
        state.stats.answered(answered, images, data.get("usage"))
        return JSONResponse(data, headers=headers)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await relayed(request, "completions", "prompt")

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        return await relayed(request, "responses", "input")

    @app.get("/v1/models")
    async def list_models() -> ModelList:
        names = [AUTO, *(b.model for b in config.by_cost())]
        return ModelList(data=[ModelCard(id=n, created=state.created) for n in names])

    @app.get("/health")
    async def health() -> JSONResponse:
        report = state.stats.health(state.backends.cooling_down(), state.backends.by_deployment)
        up = any(b["state"] != "cooling_down" for b in report["backends"])
        return JSONResponse(
            {"status": "ok" if up else "unavailable", **report}, status_code=200 if up else 503
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type="text/plain; version=0.0.4")

    return app
