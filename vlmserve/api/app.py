"""The FastAPI application: routes, lifespan (model loading), access, request ids and metrics.

Routes stay thin: they fetch the handler and choose the response type. The model loads in the
background after the server starts listening, so ``/health`` can answer 503 until it is ready,
and again from the moment the server starts draining for shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmserve.api.access import KeyChecker, RateLimiter, load_api_keys
from vlmserve.api.admission import Admission, AdmissionMiddleware
from vlmserve.api.batches import FILES_PATH
from vlmserve.api.batches import router as batch_router
from vlmserve.api.body_limit import BodyLimitMiddleware
from vlmserve.api.chat import CHAT_PATH, ChatHandler, ChatJob
from vlmserve.api.completions import COMPLETIONS_PATH, CompletionHandler
from vlmserve.api.errors import OverloadedError, error_response, install_error_handlers
from vlmserve.api.json_body import JsonRoute
from vlmserve.api.metrics import Metrics
from vlmserve.api.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    now,
)
from vlmserve.api.protocol_completions import Completion, CompletionRequest
from vlmserve.api.protocol_responses import Response as ResponseObject
from vlmserve.api.protocol_responses import ResponsesRequest
from vlmserve.api.responses import RESPONSES_PATH, ResponsesHandler
from vlmserve.api.serving import deadline_scope
from vlmserve.batch.service import BatchService
from vlmserve.cache.lookup import ResponseCache, engine_request_key
from vlmserve.config import BODY_SLACK_BYTES, Settings
from vlmserve.engine.base import Engine
from vlmserve.logs import request_id_var
from vlmserve.state.limits import SharedRateLimiter
from vlmserve.state.link import RedisLink

logger = logging.getLogger(__name__)

#: The endpoints that generate: admission, rate limits and per-endpoint metrics apply to each.
GENERATION_PATHS = (CHAT_PATH, COMPLETIONS_PATH, RESPONSES_PATH)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 500, 503, 504)
}
_bearer = HTTPBearer(auto_error=False, description="One of the server's API keys, if it has any.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


class Handler(Protocol):
    """What each generation endpoint supplies: its own prepare, collect and stream edges."""

    async def prepare(self, body: Any, request_id: str) -> Any:
        """Validate ``body`` and have the engine prepare it; returns the endpoint's job."""
        ...

    async def complete(self, job: Any, deadline: float, on_usage: Callable[[int], None]) -> Any:
        """Run the job to the end; the whole answer."""
        ...

    async def open_stream(
        self, job: Any, deadline: float, on_usage: Callable[[int], None]
    ) -> AsyncIterator[str]:
        """Start the job; its server-sent events."""
        ...


class ServerState:
    """What the routes share: the engine, the handler, readiness."""

    def __init__(self, settings: Settings, engine: Engine, model_id: str) -> None:
        self.settings = settings
        self.engine = engine
        self.model_id = model_id
        self.ready = False
        self.metrics = Metrics(lambda: engine.stats() if self.ready else None)
        self.chat = ChatHandler(engine, settings, model_id, self.metrics)
        self.completions = CompletionHandler(engine, model_id, self.metrics)
        self.responses = ResponsesHandler(engine, model_id, self.metrics, self.chat.reader)
        self.created = now()
        self.admission = Admission(settings.max_queued_requests)
        self.keys = KeyChecker(load_api_keys(settings))
        self.link = RedisLink.from_settings(settings)
        self.cache = ResponseCache(settings, self.link, self.metrics.registry)
        self.limiter = SharedRateLimiter(
            RateLimiter(
                settings.rate_limit_requests_per_minute, settings.rate_limit_tokens_per_minute
            ),
            self.link,
        )
        #: Called when the model cannot be loaded (the CLI stops the server).
        self.on_fatal: Callable[[BaseException], None] = lambda exc: None

    def unavailable(self) -> OverloadedError | None:
        """Why the server is not ready for requests (loading, draining), if it is not."""
        if self.admission.draining:
            return OverloadedError("The server is shutting down.", code="shutting_down")
        if not self.ready:
            return OverloadedError("The model is still loading.", retry_after=5, code="loading")
        return None


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
                if scope["path"] in GENERATION_PATHS:
                    status = str(message["status"])
                    self.metrics.requests.labels(scope["path"], status).inc()
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


class EventStreamResponse(StreamingResponse):
    """Server-sent events whose generator is closed as soon as the response ends.

    Starlette leaves an unfinished body iterator to the garbage collector; closing it here aborts
    the engine request at once when the client goes away mid-stream.
    """

    def __init__(self, events: AsyncIterator[str], headers: dict[str, str] | None = None) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()  # type: ignore[attr-defined]


# Dependencies are ``async def`` though they do not wait: FastAPI runs a plain ``def`` one in a
# worker thread, a thread hop per request (about 1 ms of CPU in a profile at concurrency 1).
async def _caller(request: Request, credentials: Credentials) -> str:
    """The caller's id from its bearer token (401 when keys are set and it has none)."""
    state: ServerState = request.app.state.vlm
    return state.keys.caller(credentials.credentials if credentials else None)


Caller = Annotated[str, Depends(_caller)]


async def _admitted_caller(request: Request, who: Caller) -> str:
    """The caller, once its rate limits admit one more request (else 429)."""
    await request.app.state.vlm.limiter.admit(who)
    return who


async def _metrics_access(request: Request, credentials: Credentials) -> None:
    """Metrics need a key only with ``protect_metrics``."""
    if request.app.state.vlm.settings.protect_metrics:
        await _caller(request, credentials)


AdmittedCaller = Annotated[str, Depends(_admitted_caller)]
MetricsAccess = Annotated[None, Depends(_metrics_access)]


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
            batches.runner.start()

        state.chat.reader.images.start()
        loader = asyncio.create_task(load())
        yield
        loader.cancel()
        state.chat.reader.images.close()
        state.ready = False
        # Before the engine: lines cut here stay pending, rather than failing as "shutting down".
        await batches.runner.stop()
        batches.store.close()
        await engine.shutdown()
        await state.limiter.settle()
        if state.link is not None:
            await state.link.close()

    app = FastAPI(title="vlmserve", version="0.1.0", lifespan=lifespan)
    app.router.route_class = JsonRoute
    app.state.vlm = state
    app.state.batches = batches = BatchService(settings, state.chat, state.admission)
    app.include_router(batch_router)
    install_error_handlers(app)
    app.add_middleware(AdmissionMiddleware, admission=state.admission, paths=GENERATION_PATHS)
    # Batch input files are bounded by their own limit (and the multipart framing around them).
    upload_limit = settings.batch_max_file_bytes + BODY_SLACK_BYTES
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.request_body_limit(),
        path_limits={FILES_PATH: upload_limit},
    )
    app.add_middleware(RequestIdMiddleware, metrics=state.metrics)

    def ready_state() -> ServerState:
        problem = state.unavailable()
        if problem is not None:
            raise problem
        return state

    async def serve(
        handler: Handler,
        body: Any,
        stream: bool,
        request: Request,
        who: str,
        cacheable: bool = False,
    ) -> Any:
        """validate -> prepare -> collect or stream, the same for every generation endpoint."""
        deadline = asyncio.get_running_loop().time() + settings.request_timeout_seconds
        charge = functools.partial(state.limiter.charge, who)
        async with deadline_scope(deadline):
            job = await handler.prepare(body, request_id_var.get())
        if cacheable:
            return await serve_cached(handler, job, stream, request, deadline, charge)
        if stream:
            events = await with_cancellation(request, handler.open_stream(job, deadline, charge))
            if isinstance(events, Response):
                return events
            return EventStreamResponse(events)
        return await with_cancellation(request, handler.complete(job, deadline, charge))

    async def serve_cached(
        handler: Handler,
        job: ChatJob,
        stream: bool,
        request: Request,
        deadline: float,
        charge: Callable[[int], None],
    ) -> Any:
        """A chat answer from the response cache, or made and recorded there as it goes."""
        key = engine_request_key(model_id, job.prepared)
        cached = await state.cache.lookup(key, request.headers.get("cache-control"))
        wants_usage = job.include_usage
        if cached.answer is not None:
            return cached.replay(stream, wants_usage)
        if stream:
            job.include_usage = True  # the cache stores usage; record_stream drops it unless asked
            events = await with_cancellation(request, handler.open_stream(job, deadline, charge))
            if isinstance(events, Response):
                return events
            return EventStreamResponse(cached.record_stream(events, wants_usage), cached.headers)
        result = await with_cancellation(request, handler.complete(job, deadline, charge))
        if isinstance(result, ChatCompletion):
            await cached.record(result.model_dump())
            return JSONResponse(result.model_dump(), headers=cached.headers)
        return result

    @app.post(CHAT_PATH, response_model=ChatCompletion, responses=_ERRORS)
    async def chat_completions(
        body: ChatCompletionRequest, request: Request, who: AdmittedCaller
    ) -> Any:
        return await serve(ready_state().chat, body, body.stream, request, who, cacheable=True)

    @app.post(COMPLETIONS_PATH, response_model=Completion, responses=_ERRORS)
    async def completions(body: CompletionRequest, request: Request, who: AdmittedCaller) -> Any:
        return await serve(ready_state().completions, body, body.stream, request, who)

    @app.post(RESPONSES_PATH, response_model=ResponseObject, responses=_ERRORS)
    async def responses(body: ResponsesRequest, request: Request, who: AdmittedCaller) -> Any:
        return await serve(ready_state().responses, body, body.stream, request, who)

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def list_models(_: Caller) -> ModelList:
        return ModelList(data=[ModelCard(id=model_id, created=state.created)])

    @app.get("/health", responses={503: {"model": ErrorResponse}})
    async def health() -> Response:
        problem = state.unavailable()
        if problem is not None:
            return error_response(problem)
        return JSONResponse({"status": "ok", "model": model_id, "engine": engine.name})

    @app.get("/metrics", response_class=Response, responses={401: {"model": ErrorResponse}})
    async def metrics(_: MetricsAccess) -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
