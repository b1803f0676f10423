"""The backends behind LiteLLM's Router: deployments, fallbacks, cooldowns, and error mapping.

Each backend model is one LiteLLM model group with a deployment per endpoint (its replicas), so
LiteLLM picks among replicas with the configured strategy, cools down an endpoint that fails,
retries on another replica of the group, then walks the fallback list: the same tier by price,
then the tiers above. The router only turns a request into LiteLLM's call and the outcome back
into OpenAI's shape.
"""

from __future__ import annotations

import os

# LiteLLM fetches its price table from the internet at import unless told to use its bundled copy;
# the router must start offline and quickly, and keeps its own prices in router.yaml.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import logging  # noqa: E402
from typing import Any  # noqa: E402

import litellm  # noqa: E402
import openai  # noqa: E402
from openai.types.chat.completion_create_params import CompletionCreateParamsBase  # noqa: E402

from vlmserve.api.errors import APIError, OverloadedError  # noqa: E402
from vlmserve.router.config import Backend, RouterConfig  # noqa: E402

logger = logging.getLogger(__name__)
litellm.telemetry = False

#: Chat parameters the OpenAI SDK knows: passed to LiteLLM by name. Anything else (vlmserve's
#: ``min_tokens``, ``ignore_eos``...) travels in ``extra_body``, untouched. ``metadata`` is
#: LiteLLM's own keyword, so the client's goes in the body too.
_NAMED = {*CompletionCreateParamsBase.__annotations__, "stream"} - {"model", "messages", "metadata"}


def deployment_id(backend: Backend, index: int) -> str:
    """LiteLLM's id for a backend's ``index``-th endpoint."""
    return f"{backend.model}#{index}"


class Backends:
    """LiteLLM's Router over the configured backends."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.by_deployment: dict[str, Backend] = {}
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

    async def chat(self, backend: Backend, body: dict[str, Any]) -> tuple[Backend, Any]:
        """Send a chat request to ``backend`` (or its fallbacks): the one that answered, and its
        answer (a LiteLLM response, or its stream when ``body['stream']``)."""
        named = {k: v for k, v in body.items() if k in _NAMED}
        extra = {
            k: v for k, v in body.items() if k not in _NAMED and k not in ("model", "messages")
        }
        if body.get("stream"):
            # Usage always: it is counted and cached; the app drops it unless the client asked.
            named["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        if extra:
            named["extra_body"] = extra
        try:
            response = await self.router.acompletion(
                model=backend.model, messages=body["messages"], **named
            )
        except openai.APIError as exc:
            raise self.client_error(exc, backend) from None
        return self.answered_by(response, backend), response

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
            error = _passed_through(exc, status)
            error.routed_to = backend.model
            return error
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


def _passed_through(exc: openai.APIError, status: int) -> BackendError:
    """A backend's 4xx error with its own fields when it sent OpenAI's shape."""
    detail: dict[str, Any] = {}
    response = getattr(exc, "response", None)
    try:
        detail = response.json()["error"] if response is not None else {}
    except (ValueError, KeyError, TypeError):
        detail = {}
    retry_after = None
    if status == 429:
        given = response.headers.get("retry-after", "") if response is not None else ""
        retry_after = float(given) if given.isdigit() else 1.0
    return BackendError(
        status,
        str(detail.get("type") or "invalid_request_error"),
        str(detail.get("message") or exc.message).split("\nLiteLLM:")[0],
        param=detail.get("param"),
        code=detail.get("code"),
        retry_after=retry_after,
    )
