"""The FastAPI application: routes, lifespan (model loading), request ids and metrics.

Routes stay thin: they fetch the handler and choose the response type. The model loads in the
background after the server starts listening, so ``/health`` can answer 503 until it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.config import Settings
from server.engine.base import Engine
from server.errors import OverloadedError, error_response, install_error_handlers
from server.logs import request_id_var
from server.metrics import Metrics
from server.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    now,
)
from server.serving import ChatHandler

logger = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 429, 500, 503, 504)
}


class ServerState:
    """What the routes share: the engine, the handler, readiness."""

    def __init__(self, settings: Settings, engine: Engine, model_id: str) -> None:
        self.settings = settings
        self.engine = engine
        self.model_id = model_id
        self.ready = False
        self.metrics = Metrics(lambda: engine.stats() if self.ready else None)
        self.chat = ChatHandler(engine, settings, model_id, self.metrics)
        self.created = now()
        #: Called when the model cannot be loaded (the CLI stops the server).
        self.on_fatal: Callable[[BaseException], None] = lambda exc: None


class RequestIdMiddleware:
    """Gives each request an id (or takes ``X-Request-Id``), returns it, and counts chat statuses.

    A plain ASGI middleware, so streaming responses and disconnects pass through untouched.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")[:128]
        request_id = given if given.isprintable() and given else uuid.uuid4().hex
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
                if scope["path"] == CHAT_PATH:
                    self.metrics.requests.labels(str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


async def with_cancellation(request: Request, work: Awaitable[Any]) -> Any:
    """Run ``work`` unless the client disconnects first; then cancel it (aborting the engine).

    The body has already been read, so the next ASGI message can only be the disconnect.
    """

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    logger.info("client disconnected; request aborted")
    return Response(status_code=499)


def create_app(settings: Settings, engine: Engine, model_id: str) -> FastAPI:
    """The application serving ``engine`` as ``model_id``."""
    state = ServerState(settings, engine, model_id)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            try:
                await engine.start()
            except Exception as exc:
                logger.exception("could not load the model")
                state.on_fatal(exc)
                return
            state.ready = True
            logger.info("model %s is ready on the %s engine", model_id, engine.name)

        loader = asyncio.create_task(load())
        yield
        loader.cancel()
        state.ready = False
        await engine.shutdown()

    app = FastAPI(title="vlmserve", version="0.1.0", lifespan=lifespan)
    app.state.vlm = state
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware, metrics=state.metrics)

    def ready_state() -> ServerState:
        if not state.ready:
            raise OverloadedError("The model is still loading.", retry_after=5, code="loading")
        return state

    @app.post(CHAT_PATH, response_model=ChatCompletion, responses=_ERRORS)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        handler = ready_state().chat
        engine_request = await handler.build(body, request_id_var.get())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = await with_cancellation(
                request, handler.open_stream(engine_request, include_usage)
            )
            if isinstance(events, Response):
                return events
            return StreamingResponse(events, media_type="text/event-stream")
        return await with_cancellation(request, handler.complete(engine_request))

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_id, created=state.created)])

    @app.get("/health", responses={503: {"model": ErrorResponse}})
    async def health() -> Response:
        if not state.ready:
            return error_response(OverloadedError("The model is still loading.", code="loading"))
        return JSONResponse({"status": "ok", "model": model_id, "engine": engine.name})

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
