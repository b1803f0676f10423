"""The backends behind LiteLLM's Router: deployments, fallbacks, cooldowns, and error mapping.

Each backend model is one LiteLLM model group with a deployment per endpoint (its replicas), so
LiteLLM picks among replicas with the configured strategy and cools down an endpoint that fails;
a failed request is retried, then walks the fallback list: the same tier by price, then the tiers
above.

Two ways to call, one outcome. LiteLLM's whole call path (``acompletion``: its retries and
fallbacks, protocol translation for hosted providers, a typed object per streamed chunk) costs
about 30 ms of CPU per request, which caps one router core near 30 requests/s, below what one GPU
node serves. So where every backend a request may reach speaks OpenAI's protocol (vlmserve, vLLM,
OpenAI itself) and the strategy is simple-shuffle, the router *relays*: LiteLLM still picks the
endpoint (``select``) and keeps the cooldowns (``record_failure``), while the request goes out as
its own bytes over one pooled aiohttp session, and retries and fallbacks follow the same order
as LiteLLM's. aiohttp rather than httpx: in a profile of the relay at concurrency 8, httpx's read
path (anyio cancel scopes and timeouts per read) was a third of the router's CPU. Other
strategies (least-busy and latency routing need LiteLLM to see each call) and other providers
take LiteLLM's path. Both return OpenAI-shaped dicts.
"""

from __future__ import annotations

import os

# LiteLLM fetches its price table from the internet at import unless told to use its bundled copy;
# the router must start offline and quickly, and keeps its own prices in router.yaml.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import codecs  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import urllib.parse  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import AsyncIterator, Mapping  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import litellm  # noqa: E402
import openai  # noqa: E402
from openai.types.chat.completion_create_params import CompletionCreateParamsBase  # noqa: E402

from vlmserve.api.errors import APIError, OverloadedError  # noqa: E402
from vlmserve.api.json_body import parse_json  # noqa: E402
from vlmserve.api.serving import sse  # noqa: E402
from vlmserve.router.config import Backend, RouterConfig  # noqa: E402

logger = logging.getLogger(__name__)
litellm.telemetry = False

#: Chat parameters the OpenAI SDK knows: passed to LiteLLM by name. Anything else (vlmserve's
#: ``min_tokens``, ``ignore_eos``...) travels in ``extra_body``, untouched. ``metadata`` is
#: LiteLLM's own keyword, so the client's goes in the body too.
_NAMED = {*CompletionCreateParamsBase.__annotations__, "stream"} - {"model", "messages", "metadata"}


#: LiteLLM's prefix for OpenAI-protocol endpoints, and where OpenAI's own is.
OPENAI_PREFIX = "openai/"
OPENAI_BASE = "https://api.openai.com/v1"
#: A relayed backend answer that is a failure to retry or fall back from, not the client's error.
_FAILURE_STATUS = {408, 429}

#: An answer: the completion as OpenAI's JSON, or its stream of server-sent events.
Answer = dict[str, Any] | AsyncIterator[str]
#: What a relayed request can fail with before any answer: refused, reset, timed out.
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)


def deployment_id(backend: Backend, index: int) -> str:
    """LiteLLM's id for a backend's ``index``-th endpoint."""
    return f"{backend.model}#{index}"


def speaks_openai(backend: Backend) -> bool:
    """Whether the backend takes OpenAI's requests as they are (no provider translation)."""
    return backend.litellm_model is None or backend.litellm_model.startswith(OPENAI_PREFIX)


@dataclass(frozen=True)
class Endpoint:
    """Where a relayed request for one deployment goes."""

    backend: Backend
    base_url: str
    headers: dict[str, str]
    upstream_model: str
    #: The proxy the environment names for it (HTTP(S)_PROXY, NO_PROXY), as httpx and the OpenAI
    #: SDK under LiteLLM honour; read once here rather than per request.
    proxy: str | None = None


def env_proxy(url: str) -> str | None:
    """The proxy ``HTTP_PROXY``/``HTTPS_PROXY`` set for ``url``, unless ``NO_PROXY`` covers it."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class Backends:
    """LiteLLM's Router over the configured backends."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.by_deployment: dict[str, Backend] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self._http: aiohttp.ClientSession | None = None  # made on first use, in the event loop
        model_list = []
        for backend in config.backends:
            # The OpenAI client needs some key; a vlmserve without keys ignores it.
            key = backend.resolved_api_key() or "none"
            for index, base in enumerate(backend.api_bases):
                params: dict[str, Any] = {
                    "model": backend.litellm_model or f"openai/{backend.model}",
                    "api_key": key,
                    "timeout": backend.timeout_seconds,
                    "max_retries": 0,  # the Router retries and falls back, not the SDK
                }
                if base:
                    params["api_base"] = base
                ident = deployment_id(backend, index)
                self.by_deployment[ident] = backend
                if speaks_openai(backend):
                    url = (base or OPENAI_BASE).rstrip("/")
                    self.endpoints[ident] = Endpoint(
                        backend,
                        url,
                        {"Authorization": f"Bearer {key}"},
                        (backend.litellm_model or backend.model).removeprefix(OPENAI_PREFIX),
                        env_proxy(url),
                    )
                model_list.append(
                    {
                        "model_name": backend.model,
                        "litellm_params": params,
                        "model_info": {"id": ident},
                    }
                )
        self.router = litellm.Router(
            model_list=model_list,
            fallbacks=[
                {b.model: config.fallbacks(b)} for b in config.backends if config.fallbacks(b)
            ],
            max_fallbacks=len(config.backends),
            num_retries=config.num_retries,
            allowed_fails=config.allowed_fails,
            cooldown_time=config.cooldown_seconds,
            routing_strategy=config.routing_strategy,
            # Simple-shuffle re-picks another replica of the group before any fallback.
            enable_weighted_failover=config.routing_strategy == "simple-shuffle",
        )

    async def chat(self, backend: Backend, body: dict[str, Any]) -> tuple[Backend, Answer]:
        """Send a chat request to ``backend`` (or its fallbacks): the one that answered, and its
        answer (a stream of chunks when ``body['stream']``, with usage at the end)."""
        if body.get("stream"):
            # Usage always: it is counted and cached; the app drops it unless the client asked.
            options = {**(body.get("stream_options") or {}), "include_usage": True}
            body = {**body, "stream_options": options}
        if not self.relays(backend):
            return await self._litellm(backend, body)
        answered, ident, response = await self.relay(backend, "chat/completions", body)
        if body.get("stream"):
            return answered, self._events(response, ident)
        return answered, parse_json(await response.read())

    def chain(self, backend: Backend) -> list[Backend]:
        """The backend, then its fallbacks in order."""
        fallbacks = (self.config.backend(name) for name in self.config.fallbacks(backend))
        return [backend, *(b for b in fallbacks if b is not None)]

    def relays(self, backend: Backend) -> bool:
        """Whether requests for ``backend`` take the relay (see the module's docstring)."""
        return self.config.routing_strategy == "simple-shuffle" and all(
            speaks_openai(b) for b in self.chain(backend)
        )

    async def relay(
        self, backend: Backend, path: str, body: dict[str, Any]
    ) -> tuple[Backend, str, aiohttp.ClientResponse]:
        """The relay: LiteLLM picks each endpoint and keeps cooldowns, the bytes go out here.

        Returns the backend that answered, its endpoint's id, and its successful response (read
        whole, or open to stream from when ``body['stream']``). A backend's own 4xx is raised as
        a :class:`BackendError`; when every endpoint and fallback failed, a 503.
        """
        for candidate in self.chain(backend):
            # Each replica once (a failed one cools down, so the next pick is another), plus the
            # configured retries, before the next fallback.
            for _ in range(len(candidate.api_bases) + self.config.num_retries):
                try:
                    picked = await self.router.select(candidate.model)
                except Exception:  # noqa: BLE001 (every endpoint of the model is cooling down)
                    break
                assert isinstance(picked, dict)
                ident = str(picked["model_info"]["id"])
                endpoint = self.endpoints[ident]
                sent = {**body, "model": endpoint.upstream_model}
                # To connect and between reads, never on the whole answer: long streams are fine.
                timeout = aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=candidate.timeout_seconds,
                    sock_read=candidate.timeout_seconds,
                )
                try:
                    response = await self.session().post(
                        f"{endpoint.base_url}/{path}",
                        data=json.dumps(sent).encode(),
                        headers={**endpoint.headers, "Content-Type": "application/json"},
                        timeout=timeout,
                        proxy=endpoint.proxy,
                    )
                    if response.status >= 400 or not body.get("stream"):
                        await response.read()  # kept by the response: read() again returns it
                except _TRANSPORT_ERRORS as exc:
                    self._failed(ident, 503, type(exc).__name__)
                    continue
                status = response.status
                if status < 400:
                    return candidate, ident, response
                text = (await response.read()).decode(errors="replace")
                if status < 500 and status not in _FAILURE_STATUS:
                    error = _passed_through(status, text, response.headers)
                    error.routed_to = backend.model
                    raise error
                self._failed(ident, status, f"{status} {text[:200]}")
        raise self._unavailable(backend)

    def session(self) -> aiohttp.ClientSession:
        """The relay's pooled session, no limit on connections. Not ``trust_env``: that reads
        ``~/.netrc`` in a thread on every request (proxies come from :func:`env_proxy`)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._http

    async def raw(self, response: aiohttp.ClientResponse, ident: str) -> AsyncIterator[bytes]:
        """A relayed stream's bytes as they come (a backend that breaks mid-stream is reported)."""
        try:
            async for data in response.content.iter_any():
                yield data
        except _TRANSPORT_ERRORS as exc:
            self._failed(ident, 503, type(exc).__name__)
            raise
        finally:
            response.release()

    async def _events(self, response: aiohttp.ClientResponse, ident: str) -> AsyncIterator[str]:
        """A relayed stream's events (see :func:`sse_events`); a backend that breaks mid-stream
        is reported, then raised."""
        chunks = self.raw(response, ident)
        try:
            async for event in sse_events(_text(chunks)):
                yield event
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    def _failed(self, ident: str, status: int, reason: str) -> None:
        """Tell LiteLLM an endpoint failed, in its own exception types, so it cools the endpoint
        down as on its own path. An endpoint that cannot be reached counts as unavailable (503)."""
        backend = self.by_deployment[ident]
        logger.warning("endpoint %s failed: %s", ident, reason)
        kind = litellm.RateLimitError if status == 429 else litellm.ServiceUnavailableError
        error = kind(message=reason, llm_provider="openai", model=backend.model)
        self.router.health().record_failure(ident, error, status)

    async def _litellm(self, backend: Backend, body: dict[str, Any]) -> tuple[Backend, Answer]:
        """LiteLLM's whole path: its retries, fallbacks and provider translation."""
        named = {k: v for k, v in body.items() if k in _NAMED}
        extra = {
            k: v for k, v in body.items() if k not in _NAMED and k not in ("model", "messages")
        }
        if extra:
            named["extra_body"] = extra
        try:
            response = await self.router.acompletion(
                model=backend.model, messages=body["messages"], **named
            )
        except openai.APIError as exc:
            raise self.client_error(exc, backend) from None
        answered = self.answered_by(response, backend)
        if body.get("stream"):
            return answered, _dumped(response, answered.model)
        return answered, response.model_dump(exclude_none=True)

    async def aclose(self) -> None:
        """Close the relay's connections."""
        if self._http is not None:
            await self._http.close()

    def answered_by(self, response: Any, asked: Backend) -> Backend:
        """The backend whose endpoint produced ``response`` (maybe a fallback, not ``asked``)."""
        hidden = getattr(response, "_hidden_params", None) or {}
        return self.by_deployment.get(str(hidden.get("model_id")), asked)

    def client_error(self, exc: openai.APIError, backend: Backend) -> APIError:
        """What the client gets when every endpoint and fallback failed.

        A backend's own 4xx answer passes through in OpenAI's shape (its message, type, param,
        code); failures (5xx, timeouts, refused connections) become one 503 with Retry-After.
        """
        status = getattr(exc, "status_code", None)
        logger.warning("model %s: %s (%s)", backend.model, type(exc).__name__, str(exc)[:300])
        if isinstance(status, int) and 400 <= status < 500 and status != 408:
            response = getattr(exc, "response", None)
            text = response.text if response is not None else ""
            headers = response.headers if response is not None else {}
            error = _passed_through(status, text, headers, exc.message)
            error.routed_to = backend.model
            return error
        return self._unavailable(backend)

    def _unavailable(self, backend: Backend) -> OverloadedError:
        """The 503 when every endpoint and fallback failed."""
        return OverloadedError(
            f"No backend could answer for '{backend.model}' now: it and its fallbacks are "
            "failing or overloaded.",
            retry_after=self.config.retry_after_seconds,
            code="backends_unavailable",
        )

    def cooling_down(self) -> set[str]:
        """Deployment ids LiteLLM holds back after failures right now."""
        cooldowns = self.router.health().cooldowns
        return {
            ident for ident, _ in cooldowns.get_active_cooldowns(list(self.by_deployment), None)
        }


class BackendError(APIError):
    """A backend's own 4xx answer, passed on with its status and fields."""

    def __init__(self, status: int, error_type: str, message: str, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.status_code = status
        self.error_type = error_type
        #: The backend the request was routed to (``auto``'s choice, before any fallback).
        self.routed_to: str | None = None

    def headers(self) -> dict[str, str]:
        """``Retry-After`` as the backend gave it, and the backend's name."""
        routed = {"X-Vlmserve-Backend": self.routed_to} if self.routed_to else {}
        return {**super().headers(), **routed}


async def sse_events(texts: AsyncIterator[str]) -> AsyncIterator[str]:
    """Server-sent events as they came, each ending in a blank line, up to ``[DONE]`` (left out).

    Cut from the text at blank lines, not parsed: the router parses only the events it must read
    or change.
    """
    pending = ""
    async for text in texts:
        pending += text
        if "\r" in pending:  # CRLF line ends (a CR left at the end waits for its LF)
            pending = pending.replace("\r\n", "\n")
        *events, pending = pending.split("\n\n")
        for event in events:
            if event.startswith("data:") and event[5:].strip() == "[DONE]":
                return
            if event:
                yield event + "\n\n"


async def _dumped(stream: Any, model: str) -> AsyncIterator[str]:
    """A LiteLLM stream's chunks as OpenAI's server-sent events, naming ``model`` (so the app
    passes them on without parsing them again)."""
    async for chunk in stream:
        yield sse({**chunk.model_dump(exclude_none=True), "model": model})


def _passed_through(
    status: int, text: str, headers: Mapping[str, str], message: str = ""
) -> BackendError:
    """A backend's 4xx error (its body ``text``) with its own fields when it sent OpenAI's shape."""
    detail: dict[str, Any] = {}
    try:
        detail = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        detail = {}
    retry_after = None
    if status == 429:
        given = headers.get("retry-after", "")
        retry_after = float(given) if given.isdigit() else 1.0
    return BackendError(
        status,
        str(detail.get("type") or "invalid_request_error"),
        str(detail.get("message") or message or text[:500]).split("\nLiteLLM:")[0],
        param=detail.get("param"),
        code=detail.get("code"),
        retry_after=retry_after,
    )


async def _text(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """UTF-8 bytes as text (a character split between two reads is kept whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    async for chunk in chunks:
        yield decoder.decode(chunk)
